//! Idempotent sends against the real server binary: a send of an id its stream accepted
//! within its dedupe window adds no copy and says so, alone, in a batch, through any node,
//! across a graceful leave, and (the persistent log) when a stream's owner is killed.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::{TestResult, TestServer, code};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// A send with `extra` fields; its status, whether it was answered as a duplicate (header),
/// and its body.
async fn send(
    server: &TestServer,
    stream: &str,
    id: &str,
    extra: Value,
) -> (StatusCode, bool, Value) {
    let mut body = json!({"streamId": stream, "messageUuid": id, "message": id});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let (status, headers, bytes) = server
        .client()
        .exchange(Method::POST, "/api/v1/streams/send", body.to_string(), &[])
        .await;
    let duplicate = headers
        .get("x-ipubsub-duplicate")
        .is_some_and(|v| v == "true");
    (
        status,
        duplicate,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn all_ids(server: &TestServer, stream: &str) -> Vec<String> {
    let query = format!("streamId={stream}&timeoutSeconds=0&maxMessages=100");
    let (status, body) = server.receive(&query).await;
    if status != StatusCode::OK {
        return Vec::new();
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    messages
        .iter()
        .filter_map(|m| m["messageUuid"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_retried_send_within_the_window_adds_no_copy_and_says_so() -> TestResult {
    let server = TestServer::start();
    let window = json!({"dedupeWindowSeconds": 60});
    let (status, duplicate, body) = send(&server, "orders", "o-1", window.clone()).await;
    assert_eq!(
        (status, duplicate, body),
        (StatusCode::OK, false, json!({}))
    );
    let (status, duplicate, body) = send(&server, "orders", "o-1", window.clone()).await;
    assert_eq!(
        (status, duplicate, body),
        (StatusCode::OK, true, json!({"duplicate": true}))
    );
    assert_eq!(all_ids(&server, "orders").await, ["o-1"]);
    // Taken or not, the id is remembered for the window; without one, v1 behaviour.
    let (_, duplicate, _) = send(&server, "orders", "o-1", json!({})).await;
    assert!(duplicate, "the stream's window holds for every send to it");
    for _ in 0..2 {
        assert!(!send(&server, "plain", "p-1", json!({})).await.1);
    }
    assert_eq!(all_ids(&server, "plain").await, ["p-1", "p-1"]);
    let duplicates = server.client().metric("ipubsub_duplicates_total ").await;
    assert_eq!(duplicates, Some(2.0));
    assert_eq!(
        server.client().metric("ipubsub_dedupe_entries ").await,
        Some(1.0)
    );

    let (status, _, body) =
        send(&server, "big", "b-1", json!({"dedupeWindowSeconds": 86401})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "INVALID_FIELD")
    );
    Ok(())
}

#[tokio::test]
async fn a_batch_is_deduplicated_item_by_item() -> TestResult {
    let server = TestServer::start_with("http:\n  default_dedupe_window_seconds: 60\n", &[]);
    let item = |id: &str| json!({"streamId": "batch", "messageUuid": id, "message": 1});
    let body = json!({"messages": [item("a"), item("a"), item("b")]});
    let (status, answer) = server
        .call(Method::POST, "/api/v1/streams/sendBatch", &body.to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer["results"],
        json!([{"status": 200}, {"status": 200, "duplicate": true}, {"status": 200}])
    );
    assert_eq!(all_ids(&server, "batch").await, ["a", "b"]);
    Ok(())
}

/// Through any node, and across a graceful leave: the ids a leaving node's streams remember
/// go to their next owners with the time they had left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_holds_through_any_node_and_across_a_graceful_leave() -> TestResult {
    const STREAMS: usize = 12;
    let mut cluster = Cluster::start(3);
    cluster.converge(3, Duration::from_secs(15)).await;
    let window = json!({"dedupeWindowSeconds": 300});
    for i in 0..STREAMS {
        let stream = format!("idem-{i}");
        assert!(!send(cluster.node(0), &stream, "m", window.clone()).await.1);
        assert!(
            send(cluster.node(2), &stream, "m", window.clone()).await.1,
            "{stream} via node 2"
        );
        assert_eq!(all_ids(cluster.node(1), &stream).await, ["m"]);
    }
    let remembered = cluster
        .node(1)
        .client()
        .metric("ipubsub_dedupe_entries ")
        .await;
    assert!(
        remembered.is_some_and(|n| n >= 1.0),
        "node 1 owns no stream: the test proves nothing"
    );
    let mut leaving = cluster.nodes[1].take().ok_or("node 1")?;
    assert!(leaving.terminate(Duration::from_secs(15)).success());
    cluster.converge(2, Duration::from_secs(10)).await;
    for i in 0..STREAMS {
        let stream = format!("idem-{i}");
        let (status, duplicate, _) = send(cluster.node(0), &stream, "m", window.clone()).await;
        assert_eq!(
            (status, duplicate),
            (StatusCode::OK, true),
            "{stream} after the leave"
        );
        assert_eq!(
            all_ids(cluster.node(2), &stream).await,
            Vec::<String>::new()
        );
    }
    println!("{remembered:?} ids remembered by the leaving node");
    Ok(())
}

/// The log's window holds across ownership moves on a shared store: the owner of each
/// stream is killed with `kill -9`, and retries through the survivors (the streams' new
/// owners, which never saw the ids) are answered with the first send's token; each log holds
/// one copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_window_holds_when_an_owner_is_killed() -> TestResult {
    const STREAMS: usize = 12;
    let url = std::env::var("IPUBSUB_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://ipubsub:ipubsub@127.0.0.1:5432/ipubsub".to_owned());
    let env = [
        ("IPUBSUB_STORAGE__BACKEND", "postgres"),
        ("IPUBSUB_STORAGE__POSTGRES__URL", url.as_str()),
    ];
    let mut cluster = Cluster::start_configured(3, 3, "", &env);
    cluster.converge(3, Duration::from_secs(15)).await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let window = json!({"writeToDB": true, "dedupeWindowSeconds": 300});
    let mut tokens = Vec::new();
    for i in 0..STREAMS {
        let stream = format!("log-idem-{nanos}-{i}");
        let (status, duplicate, body) = send(cluster.node(0), &stream, "m", window.clone()).await;
        assert_eq!((status, duplicate), (StatusCode::OK, false), "{body}");
        tokens.push((stream, body["dbResumeToken"].clone()));
    }
    let lookups_before = cluster
        .node(2)
        .client()
        .metric("ipubsub_log_id_lookups_total ")
        .await
        .unwrap_or(0.0);
    let killed = cluster.nodes[1].take().ok_or("node 1")?;
    drop(killed.kill9());
    cluster.converge(2, Duration::from_secs(15)).await;
    for (stream, token) in &tokens {
        for via in [0, 2] {
            let (status, duplicate, body) =
                send(cluster.node(via), stream, "m", window.clone()).await;
            assert_eq!(
                (status, duplicate, &body["dbResumeToken"]),
                (StatusCode::OK, true, token),
                "{stream} via node {via}: {body}"
            );
        }
        let query = format!("streamId={stream}&readFromDB=true&maxMessages=10&timeoutSeconds=0");
        let (_, body) = cluster.node(2).receive(&query).await;
        assert_eq!(body["messages"].as_array().map(Vec::len), Some(1), "{body}");
    }
    let lookups = cluster
        .node(0)
        .client()
        .metric("ipubsub_log_id_lookups_total ")
        .await
        .unwrap_or(0.0)
        + cluster
            .node(2)
            .client()
            .metric("ipubsub_log_id_lookups_total ")
            .await
            .unwrap_or(0.0);
    println!("{lookups} id lookups on the survivors (node 2 had {lookups_before})");
    assert!(lookups > lookups_before, "the new owners asked the store");
    Ok(())
}
