//! The persistent log end to end, against the real server binary on each store: the embedded
//! one, and PostgreSQL, MariaDB, Cassandra and MongoDB (SecantusDB) as `scripts/services.sh` runs them (these fail, never
//! skip, when their server is missing). Replay with resume tokens, tail long-polls, TTL,
//! batches, and survival of `kill -9`.

mod common;

use std::time::{Duration, Instant};

use common::{TestResult, TestServer, code};
use hyper::StatusCode;
use serde_json::{Value, json};

/// The store a server runs on, and stream names of its own: the SQL databases outlive the
/// tests, so every run writes to streams no earlier run used.
struct Store {
    yaml: String,
    prefix: String,
}

impl Store {
    fn embedded() -> Self {
        Self::with_yaml(String::new())
    }

    fn sql(backend: &str, variable: &str, default: &str) -> Self {
        let url = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
        Self::with_yaml(format!(
            "storage:\n  backend: {backend}\n  {backend}:\n    url: \"{url}\"\n"
        ))
    }

    fn postgres() -> Self {
        Self::sql(
            "postgres",
            "IPUBSUB_TEST_POSTGRES_URL",
            "postgres://ipubsub:ipubsub@127.0.0.1:5432/ipubsub",
        )
    }

    fn mysql() -> Self {
        Self::sql(
            "mysql",
            "IPUBSUB_TEST_MYSQL_URL",
            "mysql://ipubsub:ipubsub@127.0.0.1:3306/ipubsub",
        )
    }

    fn cassandra() -> Self {
        let node = std::env::var("IPUBSUB_TEST_CASSANDRA_NODE")
            .unwrap_or_else(|_| "127.0.0.1:9042".to_owned());
        Self::with_yaml(format!(
            "storage:\n  backend: cassandra\n  cassandra:\n    nodes: [\"{node}\"]\n    keyspace: ipubsub_http_tests\n"
        ))
    }

    fn mongodb() -> Self {
        let url = std::env::var("IPUBSUB_TEST_MONGODB_URL")
            .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/".to_owned());
        Self::with_yaml(format!(
            "storage:\n  backend: mongodb\n  mongodb:\n    url: \"{url}\"\n    database: ipubsub_http_tests\n"
        ))
    }

    fn with_yaml(yaml: String) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            yaml,
            prefix: format!("t{}-{nanos}", std::process::id()),
        }
    }

    #[track_caller]
    fn start(&self) -> TestServer {
        TestServer::start_with(&self.yaml, &[])
    }

    fn stream(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
}

/// Each case, once per store.
macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test]
            async fn $case() -> super::TestResult {
                super::$case(&super::Store::embedded()).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $case() -> super::TestResult {
                super::$case(&super::Store::postgres()).await
            })*
        }
        mod mysql {
            $(#[tokio::test]
            async fn $case() -> super::TestResult {
                super::$case(&super::Store::mysql()).await
            })*
        }
        mod cassandra {
            $(#[tokio::test]
            async fn $case() -> super::TestResult {
                super::$case(&super::Store::cassandra()).await
            })*
        }
        mod mongodb {
            $(#[tokio::test]
            async fn $case() -> super::TestResult {
                super::$case(&super::Store::mongodb()).await
            })*
        }
    };
}

on_every_store!(
    readers_replay_the_log_independently_with_their_tokens,
    a_reader_at_the_tail_is_woken_by_the_next_append,
    tokens_are_bound_to_their_stream,
    expired_messages_are_never_returned,
    acknowledged_messages_and_tokens_survive_kill_9,
    a_deduplicated_send_stays_one_message_across_kill_9,
);

fn persistent(stream: &str, id: &str, ttl: Option<u64>) -> Value {
    let mut body =
        json!({"streamId": stream, "messageUuid": id, "message": {"id": id}, "writeToDB": true});
    if let Some(ttl) = ttl {
        body["dbTTLSeconds"] = json!(ttl);
    }
    body
}

async fn send_persistent(server: &TestServer, stream: &str, id: &str) -> String {
    let (status, body) = server.send(persistent(stream, id, None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["dbResumeToken"].as_str().expect("a token").to_owned()
}

fn ids(body: &Value) -> Vec<String> {
    body["messages"].as_array().map_or_else(Vec::new, |items| {
        items
            .iter()
            .map(|m| m["messageUuid"].as_str().unwrap_or("?").to_owned())
            .collect()
    })
}

async fn readers_replay_the_log_independently_with_their_tokens(store: &Store) -> TestResult {
    let server = store.start();
    let log = store.stream("log");
    let mut tokens = Vec::new();
    for i in 0..5 {
        tokens.push(send_persistent(&server, &log, &format!("m{i}")).await);
    }
    // Two readers from the start, each following its own tokens: nothing is consumed.
    for _reader in 0..2 {
        let mut query = format!("streamId={log}&readFromDB=true&timeoutSeconds=0");
        for (i, token) in tokens.iter().enumerate() {
            let (status, body) = server.receive(&query).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body["messageUuid"], format!("m{i}"));
            assert_eq!(body["message"], json!({"id": format!("m{i}")}));
            assert_eq!(
                body["dbResumeToken"], *token,
                "the read token is the send token"
            );
            query =
                format!("streamId={log}&readFromDB=true&timeoutSeconds=0&dbResumeToken={token}");
        }
        let (status, body) = server.receive(&query).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::FAILED_DEPENDENCY, "NO_MESSAGE")
        );
    }
    // The same token always yields the same next message; batches carry a token each.
    let (_, body) = server
        .receive(&format!(
            "streamId={log}&readFromDB=true&dbResumeToken={}&maxMessages=2",
            tokens[1]
        ))
        .await;
    assert_eq!(ids(&body), ["m2", "m3"]);
    assert_eq!(body["messages"][1]["dbResumeToken"], tokens[3]);
    let (_, body) = server
        .receive(&format!(
            "streamId={log}&readFromDB=true&maxMessages=1000&timeoutSeconds=0"
        ))
        .await;
    assert_eq!(ids(&body), ["m0", "m1", "m2", "m3", "m4"]);
    // A persistent message goes to the log only.
    let (status, _) = server
        .receive(&format!("streamId={log}&timeoutSeconds=0"))
        .await;
    assert_eq!(status, StatusCode::FAILED_DEPENDENCY);
    Ok(())
}

async fn a_reader_at_the_tail_is_woken_by_the_next_append(store: &Store) -> TestResult {
    let server = std::sync::Arc::new(store.start());
    let tail = store.stream("tail");
    let token = send_persistent(&server, &tail, "first").await;
    let reader = tokio::spawn({
        let (server, tail) = (server.clone(), tail.clone());
        async move {
            let started = Instant::now();
            let result = server
                .receive(&format!(
                    "streamId={tail}&readFromDB=true&timeoutSeconds=10&dbResumeToken={token}"
                ))
                .await;
            (result, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_persistent(&server, &tail, "second").await;
    let ((status, body), waited) = reader.await?;
    assert_eq!(
        (status, &body["messageUuid"]),
        (StatusCode::OK, &json!("second"))
    );
    assert!(
        waited < Duration::from_secs(3),
        "woken by the append, not the timeout: {waited:?}"
    );
    Ok(())
}

async fn tokens_are_bound_to_their_stream(store: &Store) -> TestResult {
    let server = store.start();
    let token = send_persistent(&server, &store.stream("a"), "m").await;
    let b = store.stream("b");
    let (status, body) = server
        .receive(&format!(
            "streamId={b}&readFromDB=true&dbResumeToken={token}"
        ))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "INVALID_PARAMETER")
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("another stream")),
        "{body}"
    );
    Ok(())
}

async fn expired_messages_are_never_returned(store: &Store) -> TestResult {
    let server = store.start();
    let ttl = store.stream("ttl");
    assert_eq!(
        server.send(persistent(&ttl, "short", Some(1))).await.0,
        StatusCode::OK
    );
    assert_eq!(
        server.send(persistent(&ttl, "long", Some(3600))).await.0,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, body) = server
        .receive(&format!(
            "streamId={ttl}&readFromDB=true&maxMessages=10&timeoutSeconds=0"
        ))
        .await;
    assert_eq!(ids(&body), ["long"]);
    Ok(())
}

#[tokio::test]
async fn in_memory_receives_take_batches_too() -> TestResult {
    let server = TestServer::start();
    for i in 0..3 {
        server
            .send(json!({"streamId": "mem", "messageUuid": format!("m{i}"), "message": i}))
            .await;
    }
    let (status, body) = server
        .receive("streamId=mem&maxMessages=10&timeoutSeconds=1")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&body), ["m0", "m1", "m2"]);
    assert!(body["messages"][0].get("dbResumeToken").is_none());
    Ok(())
}

async fn acknowledged_messages_and_tokens_survive_kill_9(store: &Store) -> TestResult {
    let server = std::sync::Arc::new(store.start());
    let durable = store.stream("durable");
    let everything =
        format!("streamId={durable}&readFromDB=true&maxMessages=1000&timeoutSeconds=0");
    // Concurrent senders, so that appends are group-committed.
    let senders: Vec<_> = (0..10)
        .map(|t| {
            let (server, durable) = (server.clone(), durable.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..10 {
                    let id = format!("t{t}-{i}");
                    acked.push((id.clone(), send_persistent(&server, &durable, &id).await));
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await?);
    }
    let (_, before) = server.receive(&everything).await;
    let order_before = ids(&before);
    assert_eq!(order_before.len(), 100);

    let server = std::sync::Arc::into_inner(server).ok_or("server still shared")?;
    let dir = server.kill9();
    let config = dir.path().join("config.yaml");
    let data = dir.path().join("data");
    let server = TestServer::spawn(dir, &config, &data, &[]);

    let (_, after) = server.receive(&everything).await;
    assert_eq!(
        ids(&after),
        order_before,
        "every acknowledged message, in the same order"
    );
    for (id, token) in &acked {
        let position = order_before
            .iter()
            .position(|m| m == id)
            .ok_or("acknowledged message missing")?;
        let (status, body) = server
            .receive(&format!(
                "streamId={durable}&readFromDB=true&timeoutSeconds=0&dbResumeToken={token}"
            ))
            .await;
        match order_before.get(position + 1) {
            Some(next) => assert_eq!(
                (status, &body["messageUuid"]),
                (StatusCode::OK, &json!(next))
            ),
            None => assert_eq!(status, StatusCode::FAILED_DEPENDENCY),
        }
    }
    let last = send_persistent(&server, &durable, "after-restart").await;
    let (_, body) = server.receive(&everything).await;
    assert_eq!(ids(&body).last().map(String::as_str), Some("after-restart"));
    assert_eq!(body["messages"][100]["dbResumeToken"], json!(last));
    Ok(())
}

/// A persistent send with a dedupe window: its status, whether it was answered as a
/// duplicate (the header), and its body.
async fn send_once(server: &TestServer, stream: &str, id: &str) -> (StatusCode, bool, Value) {
    let mut body = persistent(stream, id, None);
    body["dedupeWindowSeconds"] = json!(300);
    let (status, headers, bytes) = server
        .client()
        .exchange(
            hyper::Method::POST,
            "/api/v1/streams/send",
            body.to_string(),
            &[],
        )
        .await;
    let duplicate = headers
        .get("x-ipubsub-duplicate")
        .is_some_and(|v| v == "true");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, duplicate, body)
}

async fn a_deduplicated_send_stays_one_message_across_kill_9(store: &Store) -> TestResult {
    let server = store.start();
    let stream = store.stream("once");
    let (status, duplicate, first) = send_once(&server, &stream, "d-1").await;
    assert_eq!((status, duplicate), (StatusCode::OK, false), "{first}");
    let token = first["dbResumeToken"].clone();
    let (status, duplicate, again) = send_once(&server, &stream, "d-1").await;
    assert_eq!(
        (status, duplicate, again),
        (
            StatusCode::OK,
            true,
            json!({"dbResumeToken": token, "duplicate": true})
        ),
        "a retry is answered as the first send was"
    );
    let item = |id: &str| {
        json!({"streamId": stream, "messageUuid": id, "message": 1, "writeToDB": true,
               "dedupeWindowSeconds": 300})
    };
    let batch = json!({"messages": [item("d-1"), item("d-2"), item("d-2")]});
    let (status, answer) = server
        .call(
            hyper::Method::POST,
            "/api/v1/streams/sendBatch",
            &batch.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let results = &answer["results"];
    assert_eq!(
        (&results[0]["duplicate"], &results[0]["dbResumeToken"]),
        (&json!(true), &token)
    );
    assert_eq!(results[1].get("duplicate"), None, "{answer}");
    assert_eq!(results[2]["duplicate"], json!(true), "{answer}");
    assert_eq!(results[2]["dbResumeToken"], results[1]["dbResumeToken"]);

    // The node dies and comes back (a new process; the same store): it does not remember
    // the ids itself, the store does.
    let dir = server.kill9();
    let config = dir.path().join("config.yaml");
    let data = dir.path().join("data");
    let server = TestServer::spawn(dir, &config, &data, &[]);
    let (status, duplicate, again) = send_once(&server, &stream, "d-1").await;
    assert_eq!(
        (status, duplicate, &again["dbResumeToken"]),
        (StatusCode::OK, true, &token),
        "after kill -9: {again}"
    );
    // Asked for the id, or (a store that lists) for the stream's recent ids.
    let client = server.client();
    let lookups = client.metric("ipubsub_log_id_lookups_total ").await;
    let listings = client.metric("ipubsub_log_id_listings_total ").await;
    let asked = lookups.unwrap_or(0.0) + listings.unwrap_or(0.0);
    assert!(asked >= 1.0, "{lookups:?} {listings:?}");
    // Without a window, the same id is a message like any other (v1).
    send_persistent(&server, &stream, "d-1").await;
    let everything = format!("streamId={stream}&readFromDB=true&maxMessages=100&timeoutSeconds=0");
    let (_, body) = server.receive(&everything).await;
    assert_eq!(ids(&body), ["d-1", "d-2", "d-1"]);
    Ok(())
}

#[tokio::test]
async fn without_persistence_log_requests_are_400() -> TestResult {
    let server = TestServer::start_with("storage:\n  backend: none", &[]);
    let (status, body) = server.send(persistent("s", "m", None)).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "PERSISTENCE_NOT_CONFIGURED")
    );
    let (status, body) = server.receive("streamId=s&readFromDB=true").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "PERSISTENCE_NOT_CONFIGURED")
    );
    Ok(())
}
