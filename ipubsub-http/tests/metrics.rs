//! `GET /metrics`: what each kind of request, limit hit and store failure does to the numbers.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use ipubsub_cluster::{Cluster, Node, NodeId};
use ipubsub_core::{Engine, Log, LogConfig};
use ipubsub_http::{App, Auth, HttpConfig, TokenGrant};
use ipubsub_storage::MemoryStore;
use ipubsub_storage::faults::FailingStore;

type Error = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), Error>;

async fn status(app: &App, method: Method, uri: &str, body: &str) -> Result<StatusCode, Error> {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", "Bearer metrics-test-token-0123")
        .body(Full::new(Bytes::from(body.to_owned())))?;
    let response = app.handle(request).await;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

/// The scraped samples, by series (`name{labels}`), and the content type.
async fn scrape(app: &App) -> Result<(BTreeMap<String, f64>, String), Error> {
    let response = app
        .handle(Request::get("/metrics").body(Full::new(Bytes::new()))?)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?;
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').ok_or(line.to_owned())?;
        samples.insert(series.to_owned(), value.parse()?);
    }
    Ok((samples, content_type))
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples
        .get(series)
        .copied()
        .unwrap_or_else(|| panic!("no {series} in {:#?}", samples.keys().collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_requests_limits_and_the_store() -> TestResult {
    // The second store write fails.
    let store = Arc::new(FailingStore::new(MemoryStore::new(), [2]));
    let log = Log::new(store, LogConfig::default());
    tokio::spawn({
        let log = log.clone();
        async move { log.run_commit_worker().await }
    });
    let mut config = HttpConfig::default();
    config.max_body_bytes = 200;
    let mut token = TokenGrant::new("metrics", "metrics-test-token-0123");
    token.requests_per_second = 1;
    token.burst = 1000;
    config.auth = Some(Auth::new([token])?);
    let engine = Engine::default();
    let cluster = Cluster::single(Node::new(NodeId::new("n1")?, "127.0.0.1:1".parse()?));
    let app = App::new(engine.clone(), Some(log), cluster, config);

    let send = |stream: &str, extra: &str| {
        format!(r#"{{"streamId":"{stream}","messageUuid":"m","message":1{extra}}}"#)
    };
    let post = "/api/v1/streams/send";
    for stream in ["a", "a", "b"] {
        assert_eq!(
            status(&app, Method::POST, post, &send(stream, "")).await?,
            StatusCode::OK
        );
    }
    // Two durable sends: the first is stored, the second's commit fails.
    let durable = send("log", r#","writeToDB":true"#);
    assert_eq!(
        status(&app, Method::POST, post, &durable).await?,
        StatusCode::OK
    );
    assert_eq!(
        status(&app, Method::POST, post, &durable).await?,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Limit hits: body size, stream id length, timeout, messages per stream.
    let big = send("a", &format!(r#","x":"{}""#, "y".repeat(300)));
    assert_eq!(
        status(&app, Method::POST, post, &big).await?,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let long_id = "i".repeat(257);
    let receive = format!("/api/v1/streams/receive?streamId={long_id}");
    assert_eq!(
        status(&app, Method::GET, &receive, "").await?,
        StatusCode::BAD_REQUEST
    );
    let receive = "/api/v1/streams/receive?streamId=a&timeoutSeconds=100000";
    assert_eq!(
        status(&app, Method::GET, receive, "").await?,
        StatusCode::BAD_REQUEST
    );
    let huge = send("a", r#","inMemoryStreamSize":100000000"#);
    assert_eq!(
        status(&app, Method::POST, post, &huge).await?,
        StatusCode::BAD_REQUEST
    );
    // Auth: no token.
    let unauthenticated = Request::post(post).body(Full::new(Bytes::from(send("a", ""))))?;
    assert_eq!(
        app.handle(unauthenticated).await.status(),
        StatusCode::UNAUTHORIZED
    );
    engine.sweep_idle();

    let (samples, content_type) = scrape(&app).await?;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let s = |series: &str| sample(&samples, series);
    assert_eq!(
        s(r#"ipubsub_http_requests_total{route="send",status="200"}"#),
        4.0
    );
    assert_eq!(
        s(r#"ipubsub_http_requests_total{route="send",status="503"}"#),
        1.0
    );
    assert_eq!(
        s(r#"ipubsub_http_requests_total{route="send",status="413"}"#),
        1.0
    );
    assert_eq!(
        s(r#"ipubsub_http_requests_total{route="send",status="401"}"#),
        1.0
    );
    assert_eq!(
        s(r#"ipubsub_http_requests_total{route="receive",status="400"}"#),
        2.0
    );
    assert_eq!(
        s(r#"ipubsub_http_request_duration_seconds_count{route="send"}"#),
        8.0
    );
    assert_eq!(
        s(r#"ipubsub_http_request_duration_seconds_bucket{le="+Inf",route="send"}"#),
        8.0
    );
    for limit in ["body_size", "stream_id_length", "timeout", "stream_size"] {
        assert_eq!(
            s(&format!(r#"ipubsub_limit_hits_total{{limit="{limit}"}}"#)),
            1.0,
            "{limit}"
        );
    }
    assert_eq!(
        s(r#"ipubsub_auth_refusals_total{reason="unauthenticated"}"#),
        1.0
    );
    assert_eq!(s(r#"ipubsub_store_errors_total{operation="append"}"#), 1.0);
    assert_eq!(s("ipubsub_streams"), 2.0);
    assert_eq!(s("ipubsub_buffered_messages"), 3.0);
    assert_eq!(s("ipubsub_waiting_requests"), 0.0);
    assert_eq!(s("ipubsub_cluster_members"), 1.0);
    assert_eq!(s("ipubsub_log_appended_messages_total"), 1.0);
    assert_eq!(s("ipubsub_log_failed_messages_total"), 1.0);
    assert_eq!(s("ipubsub_log_commits_total"), 1.0);
    assert_eq!(s("ipubsub_log_commit_size_count"), 2.0);
    assert_eq!(s("ipubsub_log_commit_size_sum"), 2.0);
    assert_eq!(s(r#"ipubsub_log_commit_size_bucket{le="1.0"}"#), 2.0);
    Ok(())
}

#[tokio::test]
async fn a_token_over_its_rate_is_a_limit_hit() -> TestResult {
    let mut config = HttpConfig::default();
    let mut token = TokenGrant::new("metrics", "metrics-test-token-0123");
    token.requests_per_second = 1;
    token.burst = 1;
    config.auth = Some(Auth::new([token])?);
    let cluster = Cluster::single(Node::new(NodeId::new("n1")?, "127.0.0.1:1".parse()?));
    let app = App::new(Engine::default(), None, cluster, config);
    let receive = "/api/v1/streams/receive?streamId=a&timeoutSeconds=0";
    assert_eq!(
        status(&app, Method::GET, receive, "").await?,
        StatusCode::FAILED_DEPENDENCY
    );
    assert_eq!(
        status(&app, Method::GET, receive, "").await?,
        StatusCode::TOO_MANY_REQUESTS
    );
    let (samples, _) = scrape(&app).await?;
    assert_eq!(
        sample(&samples, r#"ipubsub_limit_hits_total{limit="token_rate"}"#),
        1.0
    );
    // No log configured: no log series.
    assert!(!samples.keys().any(|k| k.starts_with("ipubsub_log_")));
    Ok(())
}
