//! The v1 API end to end, against the real server binary: every in-memory mode, the
//! timeouts, and each kind of bad input.

mod common;

use std::time::{Duration, Instant};

use common::{TestResult, TestServer, code};
use hyper::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn health_and_root_answer_200() -> TestResult {
    let server = TestServer::start();
    let (status, body) = server.call(Method::GET, "/health", "").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = server.call(Method::GET, "/", "").await;
    assert_eq!(
        (status, body["name"].as_str()),
        (StatusCode::OK, Some("ipubsub"))
    );
    Ok(())
}

#[tokio::test]
async fn circular_buffer_keeps_the_newest_messages() -> TestResult {
    let server = TestServer::start();
    for id in ["a", "b", "c"] {
        let (status, _) = server
            .send(json!({"streamId": "circ", "messageUuid": id, "message": id, "inMemoryStreamSize": 2}))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    for id in ["b", "c"] {
        let (status, body) = server.receive("streamId=circ&timeoutSeconds=0").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["messageUuid"], id);
        assert_eq!(body["message"], id);
        assert!(body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    let (status, body) = server.receive("streamId=circ&timeoutSeconds=0").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FAILED_DEPENDENCY, "NO_MESSAGE")
    );
    Ok(())
}

#[tokio::test]
async fn full_blocking_queue_times_out_with_424_then_admits_in_order() -> TestResult {
    let server = std::sync::Arc::new(TestServer::start());
    let send = |id: &'static str, timeout: u64| json!({"streamId": "bq", "messageUuid": id, "message": id, "inMemoryStreamSize": 1, "blockingSendTimeoutSeconds": timeout});
    assert_eq!(server.send(send("a", 1)).await.0, StatusCode::OK);

    let started = Instant::now();
    let (status, body) = server.send(send("b", 1)).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FAILED_DEPENDENCY, "STREAM_FULL")
    );
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "gave up early: {:?}",
        started.elapsed()
    );

    let waiting = tokio::spawn({
        let server = server.clone();
        async move { server.send(send("c", 10)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, body) = server.receive("streamId=bq&timeoutSeconds=0").await;
    assert_eq!(body["messageUuid"], "a");
    assert_eq!(waiting.await?.0, StatusCode::OK, "c was let in when a left");
    let (_, body) = server.receive("streamId=bq&timeoutSeconds=0").await;
    assert_eq!(body["messageUuid"], "c", "b was never accepted");
    Ok(())
}

#[tokio::test]
async fn sync_match_hands_over_to_a_waiting_receiver_and_424s_without_one() -> TestResult {
    let server = std::sync::Arc::new(TestServer::start());
    let sync = |id: &str| json!({"streamId": "sync", "messageUuid": id, "message": {"id": id}, "inMemoryStreamSize": 0, "blockingSendTimeoutSeconds": 1});

    let (status, body) = server.send(sync("lonely")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FAILED_DEPENDENCY, "NO_RECEIVER")
    );

    let receiver = tokio::spawn({
        let server = server.clone();
        async move { server.receive("streamId=sync&timeoutSeconds=5").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.send(sync("matched")).await.0, StatusCode::OK);
    let (status, body) = receiver.await?;
    assert_eq!(
        (status, &body["message"]),
        (StatusCode::OK, &json!({"id": "matched"}))
    );

    // A sender that waits first is matched by the next receiver.
    let sender = tokio::spawn({
        let server = server.clone();
        async move { server.send(sync("waited")).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, body) = server.receive("streamId=sync&timeoutSeconds=1").await;
    assert_eq!(body["messageUuid"], "waited");
    assert_eq!(sender.await?.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn long_poll_returns_a_message_sent_while_waiting() -> TestResult {
    let server = std::sync::Arc::new(TestServer::start());
    let receiver = tokio::spawn({
        let server = server.clone();
        async move { server.receive("streamId=lp&timeoutSeconds=10").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    server
        .send(json!({"streamId": "lp", "messageUuid": "m", "message": [1, 2]}))
        .await;
    let (status, body) = receiver.await?;
    assert_eq!((status, &body["message"]), (StatusCode::OK, &json!([1, 2])));
    assert!(started.elapsed() < Duration::from_secs(2));
    Ok(())
}

#[tokio::test]
async fn receive_timeouts_zero_explicit_and_default() -> TestResult {
    // The default wait comes from the environment, which overrides the file.
    let server = TestServer::start_with(
        "http:\n  receive_default_timeout_seconds: 30",
        &[("IPUBSUB_HTTP__RECEIVE_DEFAULT_TIMEOUT_SECONDS", "1")],
    );
    let started = Instant::now();
    let (status, _) = server.receive("streamId=t&timeoutSeconds=0").await;
    assert_eq!(status, StatusCode::FAILED_DEPENDENCY);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "timeoutSeconds=0 answers at once"
    );

    for query in ["streamId=t&timeoutSeconds=1", "streamId=t"] {
        let started = Instant::now();
        let (status, body) = server.receive(query).await;
        let waited = started.elapsed();
        assert_eq!(
            (status, code(&body)),
            (StatusCode::FAILED_DEPENDENCY, "NO_MESSAGE")
        );
        assert!(
            waited >= Duration::from_millis(950) && waited < Duration::from_secs(5),
            "{query}: {waited:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn competing_receivers_each_get_a_different_message() -> TestResult {
    let server = std::sync::Arc::new(TestServer::start());
    let receivers: Vec<_> = (0..10)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move { server.receive("streamId=fan&timeoutSeconds=10").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        server
            .send(json!({"streamId": "fan", "messageUuid": format!("m{i}"), "message": i}))
            .await;
    }
    let mut got = Vec::new();
    for r in receivers {
        let (status, body) = r.await?;
        assert_eq!(status, StatusCode::OK);
        got.push(body["message"].as_i64().ok_or("message")?);
    }
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn message_bytes_and_null_come_back_verbatim() -> TestResult {
    let server = TestServer::start();
    let raw = r#"{"streamId":"v","messageUuid":"not-a-uuid","message":{"big":12345678901234567890,"e":1.5e3,"s":"\u00e9"}}"#;
    assert_eq!(
        server
            .call_raw(Method::POST, "/api/v1/streams/send", raw)
            .await
            .0,
        StatusCode::OK
    );
    let (_, body) = server
        .call_raw(
            Method::GET,
            "/api/v1/streams/receive?streamId=v&timeoutSeconds=0",
            "",
        )
        .await;
    let text = std::str::from_utf8(&body)?;
    assert!(
        text.starts_with(r#"{"messageUuid":"not-a-uuid","message":{"big":12345678901234567890,"e":1.5e3,"s":"\u00e9"},"timestamp":""#),
        "{text}"
    );

    let null = r#"{"streamId":"v","messageUuid":"n","message":null}"#;
    assert_eq!(
        server
            .call_raw(Method::POST, "/api/v1/streams/send", null)
            .await
            .0,
        StatusCode::OK
    );
    let (_, body) = server.receive("streamId=v&timeoutSeconds=0").await;
    assert!(
        body.get("message").is_some_and(serde_json::Value::is_null),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_a_400_with_a_stable_code() -> TestResult {
    let server = TestServer::start();
    let send = "/api/v1/streams/send";
    let cases: &[(Method, &str, &str, StatusCode, &str)] = &[
        (
            Method::POST,
            send,
            "not json",
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
        ),
        (
            Method::POST,
            send,
            "[]",
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
        ),
        (
            Method::POST,
            send,
            r#"{"messageUuid":"m","message":1}"#,
            StatusCode::BAD_REQUEST,
            "MISSING_FIELD",
        ),
        (
            Method::POST,
            send,
            r#"{"streamId":"s","message":1}"#,
            StatusCode::BAD_REQUEST,
            "MISSING_FIELD",
        ),
        (
            Method::POST,
            send,
            r#"{"streamId":"s","messageUuid":"m"}"#,
            StatusCode::BAD_REQUEST,
            "MISSING_FIELD",
        ),
        (
            Method::POST,
            send,
            r#"{"streamId":"s","messageUuid":"m","message":1,"writeToDb":true}"#,
            StatusCode::BAD_REQUEST,
            "UNKNOWN_FIELD",
        ),
        (
            Method::POST,
            send,
            r#"{"streamId":"","messageUuid":"m","message":1}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            send,
            r#"{"streamId":"s","messageUuid":"","message":1}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            send,
            r#"{"streamId":"s","messageUuid":"m","message":1,"inMemoryStreamSize":-1}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            send,
            r#"{"streamId":"s","messageUuid":"m","message":1,"inMemoryStreamSize":0}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            send,
            r#"{"streamId":"s","messageUuid":"m","message":1,"blockingSendTimeoutSeconds":1000}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            send,
            r#"{"streamId":"s","messageUuid":"m","message":1,"writeToDB":true,"dbTTLSeconds":0}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
        ),
        (
            Method::POST,
            send,
            r#"{"streamId":"s","messageUuid":"m","message":1,"dbTTLSeconds":60}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
        ),
        (
            Method::GET,
            "/api/v1/streams/receive",
            "",
            StatusCode::BAD_REQUEST,
            "MISSING_PARAMETER",
        ),
        (
            Method::GET,
            "/api/v1/streams/receive?streamId=s&timeoutSeconds=301",
            "",
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
        ),
        (
            Method::GET,
            "/api/v1/streams/receive?streamId=s&timeoutSeconds=abc",
            "",
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
        ),
        (
            Method::GET,
            "/api/v1/streams/receive?streamId=s&dbResumeToken=x",
            "",
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
        ),
        (
            Method::GET,
            "/api/v1/streams/receive?streamId=s&readFromDB=true&dbResumeToken=garbage",
            "",
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
        ),
        (
            Method::GET,
            "/api/v1/streams/receive?streamId=s&maxMessages=0",
            "",
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
        ),
        (
            Method::GET,
            "/api/v1/streams/receive?streamId=s&bogus=1",
            "",
            StatusCode::BAD_REQUEST,
            "UNKNOWN_PARAMETER",
        ),
        (
            Method::GET,
            "/api/v1/streams/receive?streamId=%00",
            "",
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
        ),
        (
            Method::GET,
            send,
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
        (
            Method::GET,
            "/api/v2/anything",
            "",
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
    ];
    for (method, path, body, status, expected) in cases {
        let (got, json) = server.call(method.clone(), path, body).await;
        assert_eq!(
            (got, code(&json)),
            (*status, *expected),
            "{method} {path} {body}: {json}"
        );
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let long = "x".repeat(257);
    let (status, json) = server
        .send(json!({"streamId": long, "messageUuid": "m", "message": 1}))
        .await;
    assert_eq!(
        (status, code(&json)),
        (StatusCode::BAD_REQUEST, "INVALID_FIELD")
    );
    Ok(())
}

#[tokio::test]
async fn limits_answer_413_and_503() -> TestResult {
    let server = TestServer::start_with(
        "http:\n  max_body_bytes: 200\nengine:\n  max_waiting_requests: 2",
        &[],
    );
    let big = json!({"streamId": "s", "messageUuid": "m", "message": "x".repeat(300)});
    let (status, body) = server.send(big).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE")
    );

    let server = std::sync::Arc::new(server);
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move {
                server
                    .receive(&format!("streamId=w{i}&timeoutSeconds=2"))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = server.receive("streamId=w3&timeoutSeconds=2").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "TOO_MANY_WAITERS")
    );
    for w in waiting {
        assert_eq!(w.await?.0, StatusCode::FAILED_DEPENDENCY);
    }
    let (status, _) = server.receive("streamId=w3&timeoutSeconds=0").await;
    assert_eq!(
        status,
        StatusCode::FAILED_DEPENDENCY,
        "places are given back"
    );
    Ok(())
}

/// `sendBatch`: each send answered in order with the single send's answer, a bad one refused
/// on its own, and each mode's semantics kept (a full blocking queue 424s, a circular buffer
/// keeps the newest, a sync match without receiver 424s).
#[tokio::test]
async fn a_batch_answers_each_send_in_order() -> TestResult {
    let server = TestServer::start();
    let batch = json!({"messages": [
        {"streamId": "b-circ", "messageUuid": "c1", "message": 1, "inMemoryStreamSize": 2},
        {"streamId": "b-circ", "messageUuid": "c2", "message": 2, "inMemoryStreamSize": 2},
        {"streamId": "b-circ", "messageUuid": "c3", "message": 3, "inMemoryStreamSize": 2},
        {"streamId": "b-block", "messageUuid": "q1", "message": "a", "inMemoryStreamSize": 1, "blockingSendTimeoutSeconds": 1},
        {"streamId": "b-block", "messageUuid": "q2", "message": "b", "inMemoryStreamSize": 1, "blockingSendTimeoutSeconds": 1},
        {"streamId": "b-sync", "messageUuid": "s1", "message": 0, "inMemoryStreamSize": 0, "blockingSendTimeoutSeconds": 1},
        {"streamId": "", "messageUuid": "bad", "message": 0},
        {"streamId": "b-db", "messageUuid": "d1", "message": 0, "writeToDB": true},
        {"streamId": "b-circ", "messageUuid": "c4", "message": 4, "inMemoryStreamSize": 2, "typo": 1},
    ]});
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/streams/sendBatch",
            &batch.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().ok_or("results")?;
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 424, 424, 400, 200, 400],
        "{body}"
    );
    assert_eq!(code(&results[4]), "STREAM_FULL", "{body}");
    assert_eq!(code(&results[5]), "NO_RECEIVER", "{body}");
    assert_eq!(code(&results[6]), "INVALID_FIELD");
    assert_eq!(code(&results[8]), "UNKNOWN_FIELD");
    assert!(
        results[7]["dbResumeToken"].is_string(),
        "a persistent send's token: {body}"
    );
    assert_eq!(results[0], json!({"status": 200}));

    // The circular buffer kept the newest two, in order; the blocking queue its first.
    let (_, body) = server
        .receive("streamId=b-circ&timeoutSeconds=0&maxMessages=10")
        .await;
    let ids: Vec<&str> = body["messages"]
        .as_array()
        .ok_or("messages")?
        .iter()
        .filter_map(|m| m["messageUuid"].as_str())
        .collect();
    assert_eq!(ids, ["c2", "c3"]);
    let (_, body) = server.receive("streamId=b-block&timeoutSeconds=0").await;
    assert_eq!(body["messageUuid"], "q1");
    let (_, body) = server
        .receive("streamId=b-db&readFromDB=true&timeoutSeconds=0")
        .await;
    assert_eq!(body["messageUuid"], "d1");

    // Not a batch at all: a 400 for the whole request.
    for bad in [
        "[]",
        "{}",
        r#"{"messages":[]}"#,
        r#"{"messages":[{}],"more":1}"#,
    ] {
        let (status, body) = server
            .call(Method::POST, "/api/v1/streams/sendBatch", bad)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _) = server
        .call_raw(Method::GET, "/api/v1/streams/sendBatch", "")
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    Ok(())
}

/// A batch bigger than `http.max_batch_items` is refused as a whole.
#[tokio::test]
async fn a_batch_over_the_limit_is_refused() -> TestResult {
    let server = TestServer::start_with("http:\n  max_batch_items: 3\n", &[]);
    let send = |i: usize| json!({"streamId": "lim", "messageUuid": format!("m{i}"), "message": i});
    let three = json!({"messages": (0..3).map(send).collect::<Vec<_>>()});
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1/streams/sendBatch",
            &three.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let four = json!({"messages": (0..4).map(send).collect::<Vec<_>>()});
    let (status, body) = server
        .call(Method::POST, "/api/v1/streams/sendBatch", &four.to_string())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("the limit is 3")),
        "{body}"
    );
    Ok(())
}
