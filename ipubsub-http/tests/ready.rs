//! `GET /ready`: what the node's readiness says, for orchestrators.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use ipubsub_cluster::{Cluster, Node, NodeId};
use ipubsub_core::Engine;
use ipubsub_http::{App, HttpConfig};
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn ready(
    app: &App,
    method: Method,
) -> Result<(StatusCode, Option<String>, Value), Box<dyn std::error::Error + Send + Sync>> {
    let request = Request::builder()
        .method(method)
        .uri("/ready")
        .body(Full::new(Bytes::new()))?;
    let response = app.handle(request).await;
    let status = response.status();
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, retry, serde_json::from_slice(&body)?))
}

#[tokio::test]
async fn ready_follows_what_the_node_is_told() -> TestResult {
    let app = App::new(
        Engine::default(),
        None,
        Cluster::single(Node::new(NodeId::new("n1")?, "127.0.0.1:1".parse()?)),
        HttpConfig::default(),
    );
    let (status, _, body) = ready(&app, Method::GET).await?;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &Value::from("ready"))
    );

    app.readiness()
        .set_not_ready("the message store did not answer within 2s");
    let (status, retry, body) = ready(&app, Method::GET).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "NOT_READY");
    assert_eq!(
        body["error"]["message"],
        "the message store did not answer within 2s"
    );
    assert_eq!(retry.as_deref(), Some("1"));
    // Liveness is not readiness.
    let health = Request::get("/health").body(Full::new(Bytes::new()))?;
    assert_eq!(app.handle(health).await.status(), StatusCode::OK);

    app.readiness().set_ready();
    assert_eq!(ready(&app, Method::GET).await?.0, StatusCode::OK);
    assert_eq!(
        ready(&app, Method::POST).await?.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    Ok(())
}
