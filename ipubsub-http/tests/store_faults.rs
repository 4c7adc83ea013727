//! Fault injection through the HTTP API: a store that fails some appends. A failed append is
//! answered with a 5xx and never acknowledged; every acknowledged message stays readable, in
//! order; the API recovers when the store does.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use ipubsub_cluster::{Cluster, Node, NodeId};
use ipubsub_core::{Engine, Log, LogConfig};
use ipubsub_http::{App, HttpConfig};
use ipubsub_storage::MemoryStore;
use ipubsub_storage::faults::FailingStore;
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn call(
    app: &App,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Value), Box<dyn std::error::Error + Send + Sync>> {
    let response = app.handle(request).await;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body)?))
}

fn send(i: usize) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    let body =
        format!(r#"{{"streamId":"faulty","messageUuid":"m{i}","message":{i},"writeToDB":true}}"#);
    Request::post("/api/v1/streams/send").body(Full::new(Bytes::from(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_appends_are_5xx_and_acknowledged_ones_are_never_lost() -> TestResult {
    // Every third store write fails.
    let store = Arc::new(FailingStore::new(
        MemoryStore::new(),
        (1..100).map(|n| n * 3),
    ));
    let log = Log::new(store.clone(), LogConfig::default());
    let worker = tokio::spawn({
        let log = log.clone();
        async move { log.run_commit_worker().await }
    });
    let cluster = Cluster::single(Node::new(NodeId::new("n1")?, "127.0.0.1:1".parse()?));
    let app = App::new(
        Engine::default(),
        Some(log.clone()),
        cluster,
        HttpConfig::default(),
    );

    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for i in 0..30 {
        let (status, body) = call(&app, send(i)?).await?;
        match status {
            StatusCode::OK => acknowledged.push(format!("m{i}")),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error"]["code"], "STORE_UNAVAILABLE", "{body}");
                failed += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(failed, 10, "one write in three failed");
    assert_eq!(store.appends(), 30);

    let read = Request::get(
        "/api/v1/streams/receive?streamId=faulty&readFromDB=true&maxMessages=1000&timeoutSeconds=0",
    )
    .body(Full::new(Bytes::new()))?;
    let (status, body) = call(&app, read).await?;
    assert_eq!(status, StatusCode::OK);
    let read_ids: Vec<_> = body["messages"]
        .as_array()
        .ok_or("messages")?
        .iter()
        .map(|m| m["messageUuid"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(
        read_ids, acknowledged,
        "exactly the acknowledged messages, in order"
    );

    // The store goes away and comes back: the API follows without a restart.
    store.set_down(true);
    assert_eq!(
        call(&app, send(100)?).await?.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    store.set_down(false);
    assert_eq!(call(&app, send(101)?).await?.0, StatusCode::OK);

    log.close();
    worker.await?;
    Ok(())
}
