//! Acknowledged receives against the real server binary: leases, `ack`, `nack` and `extend`,
//! redelivery when a worker never answers, `maxDeliveries` with a dead-letter stream, the
//! room they take in blocking queues, each error, and all of it through a non-owner.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::{TestResult, TestServer, code};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// `POST` of an `ack`, `nack` or `extend` with `body`; the answer's per-handle results.
async fn settle(server: &TestServer, verb: &str, body: Value) -> (StatusCode, Value) {
    let path = format!("/api/v1/streams/{verb}");
    server.call(Method::POST, &path, &body.to_string()).await
}

/// The statuses and codes of an `ack`, `nack` or `extend` answer, in order.
fn outcomes(answer: &Value) -> Vec<(u64, &str)> {
    let results = answer["results"].as_array().map_or(&[][..], Vec::as_slice);
    results
        .iter()
        .map(|r| {
            let code = r["error"]["code"].as_str().unwrap_or("");
            (r["status"].as_u64().unwrap_or(0), code)
        })
        .collect()
}

async fn send(server: &TestServer, stream: &str, id: &str, extra: Value) {
    let mut body = json!({"streamId": stream, "messageUuid": id, "message": {"job": id}});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let (status, answer) = server.send(body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// An acknowledged receive of one message; its id, receipt handle and delivery count.
async fn take(server: &TestServer, stream: &str, lease: u64) -> (String, String, u64) {
    let query = format!("streamId={stream}&timeoutSeconds=2&ackTimeoutSeconds={lease}");
    let (status, body) = server.receive(&query).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (
        body["messageUuid"].as_str().unwrap_or_default().to_owned(),
        body["receiptHandle"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["deliveryCount"].as_u64().unwrap_or(0),
    )
}

async fn metric(server: &TestServer, name: &str) -> f64 {
    server
        .client()
        .metric(&format!("{name} "))
        .await
        .unwrap_or(-1.0)
}

#[tokio::test]
async fn a_worker_queue_takes_a_batch_and_acknowledges_it_in_one_request() -> TestResult {
    let server = TestServer::start();
    for id in ["a", "b", "c"] {
        send(&server, "jobs", id, json!({})).await;
    }
    let (status, body) = server
        .receive("streamId=jobs&timeoutSeconds=1&maxMessages=10&ackTimeoutSeconds=30")
        .await;
    assert_eq!(status, StatusCode::OK);
    let taken = body["messages"].as_array().ok_or("a batch")?;
    let ids: Vec<_> = taken.iter().map(|m| m["messageUuid"].as_str()).collect();
    assert_eq!(ids, [Some("a"), Some("b"), Some("c")]);
    assert!(taken.iter().all(|m| m["deliveryCount"] == 1));
    let handles: Vec<_> = taken.iter().map(|m| m["receiptHandle"].clone()).collect();
    assert_eq!(metric(&server, "ipubsub_in_flight_messages").await, 3.0);

    let (status, answer) = settle(
        &server,
        "ack",
        json!({"streamId": "jobs", "receiptHandles": handles}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(outcomes(&answer), [(200, ""), (200, ""), (200, "")]);
    assert_eq!(answer["results"][1]["receiptHandle"], handles[1]);
    // Acknowledged: gone for good, and a second ack says so.
    let (_, again) = settle(
        &server,
        "ack",
        json!({"streamId": "jobs", "receiptHandles": [handles[0]]}),
    )
    .await;
    assert_eq!(outcomes(&again), [(410, "NOT_IN_FLIGHT")]);
    let (status, _) = server.receive("streamId=jobs&timeoutSeconds=0").await;
    assert_eq!(status, StatusCode::FAILED_DEPENDENCY);
    assert_eq!(metric(&server, "ipubsub_in_flight_messages").await, 0.0);
    assert_eq!(metric(&server, "ipubsub_acked_total").await, 3.0);
    assert_eq!(metric(&server, "ipubsub_lease_refusals_total").await, 1.0);
    Ok(())
}

#[tokio::test]
async fn a_message_its_worker_never_acknowledges_comes_back_first_after_the_lease() -> TestResult {
    let server = TestServer::start();
    send(&server, "crash", "a", json!({})).await;
    send(&server, "crash", "b", json!({})).await;
    let (id, handle, count) = take(&server, "crash", 1).await;
    assert_eq!((id.as_str(), count), ("a", 1));
    // Not before its lease ends: the next receive gets the newer message.
    let (id, b_handle, _) = take(&server, "crash", 30).await;
    assert_eq!(id, "b");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (id, again, count) = take(&server, "crash", 30).await;
    assert_eq!((id.as_str(), count), ("a", 2));
    let body = json!({"streamId": "crash", "receiptHandles": [handle, again, b_handle]});
    let (_, answer) = settle(&server, "ack", body).await;
    assert_eq!(
        outcomes(&answer),
        [(410, "NOT_IN_FLIGHT"), (200, ""), (200, "")]
    );
    assert_eq!(metric(&server, "ipubsub_redelivered_total").await, 1.0);
    Ok(())
}

#[tokio::test]
async fn a_returned_message_comes_back_now_or_after_its_delay_and_a_lease_can_be_extended()
-> TestResult {
    let server = TestServer::start();
    send(&server, "n", "a", json!({})).await;
    let (_, handle, _) = take(&server, "n", 30).await;
    let (_, answer) = settle(
        &server,
        "nack",
        json!({"streamId": "n", "receiptHandles": [handle]}),
    )
    .await;
    assert_eq!(outcomes(&answer), [(200, "")]);
    let (_, handle, count) = take(&server, "n", 30).await;
    assert_eq!(count, 2);
    let body = json!({"streamId": "n", "receiptHandles": [handle], "delaySeconds": 1});
    assert_eq!(
        outcomes(&settle(&server, "nack", body).await.1),
        [(200, "")]
    );
    let (status, _) = server.receive("streamId=n&timeoutSeconds=0").await;
    assert_eq!(status, StatusCode::FAILED_DEPENDENCY, "held for its delay");
    let (_, handle, count) = take(&server, "n", 1).await;
    assert_eq!(count, 3, "back after its delay");

    // Extended past its first deadline: not delivered again meanwhile.
    let body = json!({"streamId": "n", "receiptHandles": [handle], "ackTimeoutSeconds": 5});
    assert_eq!(
        outcomes(&settle(&server, "extend", body).await.1),
        [(200, "")]
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _) = server.receive("streamId=n&timeoutSeconds=0").await;
    assert_eq!(
        status,
        StatusCode::FAILED_DEPENDENCY,
        "the lease was extended"
    );
    let (_, answer) = settle(
        &server,
        "ack",
        json!({"streamId": "n", "receiptHandles": [handle]}),
    )
    .await;
    assert_eq!(outcomes(&answer), [(200, "")]);
    Ok(())
}

#[tokio::test]
async fn after_max_deliveries_a_message_moves_to_the_dead_letter_stream() -> TestResult {
    let server = TestServer::start();
    let redrive = json!({"maxDeliveries": 2, "deadLetterStreamId": "orders-dlq"});
    send(&server, "orders", "o-1", redrive).await;
    for _ in 0..2 {
        let (_, handle, _) = take(&server, "orders", 30).await;
        settle(
            &server,
            "nack",
            json!({"streamId": "orders", "receiptHandles": [handle]}),
        )
        .await;
    }
    let (status, _) = server.receive("streamId=orders&timeoutSeconds=0").await;
    assert_eq!(status, StatusCode::FAILED_DEPENDENCY);
    let (status, letter) = server.receive("streamId=orders-dlq&timeoutSeconds=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(letter["messageUuid"], "o-1");
    assert_eq!(
        letter["message"],
        json!({"streamId": "orders", "deliveryCount": 2, "message": {"job": "o-1"}})
    );

    // Without a dead-letter stream, an expired last delivery is dropped and counted.
    send(&server, "once", "x", json!({"maxDeliveries": 1})).await;
    take(&server, "once", 1).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, _) = server.receive("streamId=once&timeoutSeconds=0").await;
    assert_eq!(status, StatusCode::FAILED_DEPENDENCY);
    assert_eq!(metric(&server, "ipubsub_dead_lettered_total").await, 1.0);
    assert_eq!(
        metric(&server, "ipubsub_dropped_after_max_deliveries_total").await,
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn a_blocking_queue_counts_the_messages_in_flight_against_its_size() -> TestResult {
    let server = TestServer::start();
    let queue = json!({"inMemoryStreamSize": 1, "blockingSendTimeoutSeconds": 1});
    send(&server, "bq", "a", queue.clone()).await;
    let (_, handle, _) = take(&server, "bq", 30).await;
    let body = json!({"streamId": "bq", "messageUuid": "b", "message": 1, "inMemoryStreamSize": 1, "blockingSendTimeoutSeconds": 1});
    let (status, answer) = server.send(body.clone()).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::FAILED_DEPENDENCY, "STREAM_FULL")
    );
    settle(
        &server,
        "ack",
        json!({"streamId": "bq", "receiptHandles": [handle]}),
    )
    .await;
    assert_eq!(server.send(body).await.0, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn every_handle_is_answered_on_its_own_and_malformed_requests_as_a_whole() -> TestResult {
    let server = TestServer::start();
    send(&server, "e1", "a", json!({})).await;
    let (_, handle, _) = take(&server, "e1", 30).await;
    let body = json!({"streamId": "e2", "receiptHandles": [handle, "nope"]});
    let (status, answer) = settle(&server, "ack", body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        outcomes(&answer),
        [
            (400, "RECEIPT_HANDLE_OF_OTHER_STREAM"),
            (400, "INVALID_RECEIPT_HANDLE")
        ]
    );
    for (verb, body, expected) in [
        (
            "ack",
            json!({"streamId": "e1", "receiptHandles": []}),
            "INVALID_FIELD",
        ),
        ("ack", json!({"streamId": "e1"}), "MISSING_FIELD"),
        (
            "ack",
            json!({"streamId": "e1", "receiptHandles": [handle], "delaySeconds": 1}),
            "UNKNOWN_FIELD",
        ),
        (
            "nack",
            json!({"streamId": "e1", "receiptHandles": [handle], "delaySeconds": 43201}),
            "INVALID_FIELD",
        ),
        (
            "extend",
            json!({"streamId": "e1", "receiptHandles": [handle]}),
            "MISSING_FIELD",
        ),
        (
            "extend",
            json!({"streamId": "e1", "receiptHandles": [handle], "ackTimeoutSeconds": 0}),
            "INVALID_FIELD",
        ),
    ] {
        let (status, answer) = settle(&server, verb, body.clone()).await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::BAD_REQUEST, expected),
            "{verb} {body}"
        );
    }
    let (status, answer) = server.call(Method::GET, "/api/v1/streams/ack", "").await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
    );
    for query in [
        "streamId=e1&ackTimeoutSeconds=0",
        "streamId=e1&ackTimeoutSeconds=43201",
        "streamId=e1&ackTimeoutSeconds=5&readFromDB=true",
    ] {
        let (status, answer) = server.receive(query).await;
        assert_eq!(
            (status, code(&answer)),
            (StatusCode::BAD_REQUEST, "INVALID_PARAMETER"),
            "{query}"
        );
    }
    let bad_redrive =
        json!({"streamId": "e3", "messageUuid": "m", "message": 1, "deadLetterStreamId": "d"});
    let (status, answer) = server.send(bad_redrive).await;
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::BAD_REQUEST, "INVALID_FIELD")
    );
    // The handle still acknowledges on its own stream.
    let (_, answer) = settle(
        &server,
        "ack",
        json!({"streamId": "e1", "receiptHandles": [handle]}),
    )
    .await;
    assert_eq!(outcomes(&answer), [(200, "")]);
    Ok(())
}

#[tokio::test]
async fn settling_needs_the_permission_to_receive_from_the_stream() -> TestResult {
    const READER: &str = "reader-token-0123456789";
    const WRITER: &str = "writer-token-0123456789";
    let server = TestServer::start_with(
        &format!(
            "auth:\n  tokens:\n    - {{name: reader, token: {READER}, publish: false}}\n    - {{name: writer, token: {WRITER}, subscribe: false}}\n"
        ),
        &[],
    );
    let client = server.client();
    let bearer = |token: &str| format!("Bearer {token}");
    let send = json!({"streamId": "auth", "messageUuid": "a", "message": 1}).to_string();
    let (status, _) = client
        .raw(
            Method::POST,
            "/api/v1/streams/send",
            send,
            &[("authorization", &bearer(WRITER))],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let path = "/api/v1/streams/receive?streamId=auth&timeoutSeconds=1&ackTimeoutSeconds=30";
    let (status, body) = client
        .raw(
            Method::GET,
            path,
            String::new(),
            &[("authorization", &bearer(READER))],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body)?;
    let ack = json!({"streamId": "auth", "receiptHandles": [body["receiptHandle"]]}).to_string();
    let (status, _) = client
        .raw(
            Method::POST,
            "/api/v1/streams/ack",
            ack.clone(),
            &[("authorization", &bearer(WRITER))],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = client
        .raw(
            Method::POST,
            "/api/v1/streams/ack",
            ack,
            &[("authorization", &bearer(READER))],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn an_event_stream_delivers_each_message_under_its_own_lease() -> TestResult {
    let server = TestServer::start();
    let path = "/api/v1/streams/receive?streamId=ev&timeoutSeconds=5&ackTimeoutSeconds=30";
    let mut events = server.client().events(path, &[]).await;
    assert_eq!(events.status, StatusCode::OK);
    for id in ["a", "b"] {
        send(&server, "ev", id, json!({})).await;
    }
    let mut handles = Vec::new();
    for id in ["a", "b"] {
        let event = events
            .next_event(Duration::from_secs(3))
            .await
            .ok_or("no event")?;
        let data = event.json();
        assert_eq!(
            (data["messageUuid"].as_str(), data["deliveryCount"].as_u64()),
            (Some(id), Some(1))
        );
        handles.push(data["receiptHandle"].clone());
    }
    let (_, answer) = settle(
        &server,
        "ack",
        json!({"streamId": "ev", "receiptHandles": handles}),
    )
    .await;
    assert_eq!(outcomes(&answer), [(200, ""), (200, "")]);
    Ok(())
}

/// Through either node of two, whichever owns the stream: the receive, the ack, the nack and
/// the extend are served by the owner, which holds the leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_works_through_any_node() -> TestResult {
    let cluster = Cluster::start(2);
    cluster.converge(2, Duration::from_secs(15)).await;
    let (n0, n1) = (cluster.node(0), cluster.node(1));
    for i in 0..4 {
        let stream = format!("anywhere-{i}");
        send(
            n0,
            &stream,
            "m",
            json!({"maxDeliveries": 2, "deadLetterStreamId": format!("anywhere-dlq-{i}")}),
        )
        .await;
        let (_, handle, _) = take(n1, &stream, 30).await;
        let extend =
            json!({"streamId": stream, "receiptHandles": [handle], "ackTimeoutSeconds": 60});
        assert_eq!(outcomes(&settle(n0, "extend", extend).await.1), [(200, "")]);
        let nack = json!({"streamId": stream, "receiptHandles": [handle]});
        assert_eq!(outcomes(&settle(n1, "nack", nack).await.1), [(200, "")]);
        let (_, handle, count) = take(n0, &stream, 30).await;
        assert_eq!(count, 2);
        let nack = json!({"streamId": stream, "receiptHandles": [handle]});
        assert_eq!(outcomes(&settle(n1, "nack", nack).await.1), [(200, "")]);
        // The dead letter reaches its stream's owner, wherever it was made (a stray moved on).
        let query = format!("streamId=anywhere-dlq-{i}&timeoutSeconds=5");
        let (status, letter) = n0.receive(&query).await;
        assert_eq!(status, StatusCode::OK, "dead letter {i}: {letter}");
        assert_eq!(letter["message"]["deliveryCount"], 2);
    }
    let forwarded = n0
        .client()
        .metric("ipubsub_forwards_total{")
        .await
        .unwrap_or(0.0)
        + n1.client()
            .metric("ipubsub_forwards_total{")
            .await
            .unwrap_or(0.0);
    assert!(
        forwarded > 0.0,
        "no step was forwarded: the test proves nothing"
    );
    Ok(())
}

/// A graceful leave hands the leaving node's deliveries in flight over with their leases:
/// their receipt handles act on the new owners, their delivery counts and the streams'
/// redrive policies go along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_hands_leases_over_and_their_handles_act_on_the_new_owner() -> TestResult {
    const STREAMS: usize = 12;
    let mut cluster = Cluster::start(3);
    cluster.converge(3, Duration::from_secs(15)).await;
    let mut leases = Vec::new();
    for i in 0..STREAMS {
        let stream = format!("moving-{i}");
        let redrive = json!({"maxDeliveries": 2, "deadLetterStreamId": format!("moving-dlq-{i}")});
        send(cluster.node(0), &stream, "a", redrive.clone()).await;
        send(cluster.node(0), &stream, "b", redrive).await;
        let (_, a, _) = take(cluster.node(2), &stream, 60).await;
        let (_, b, _) = take(cluster.node(2), &stream, 60).await;
        leases.push((stream, a, b));
    }
    let leaving_held = metric(cluster.node(1), "ipubsub_in_flight_messages").await;
    assert!(
        leaving_held >= 2.0,
        "node 1 holds no lease: the test proves nothing"
    );
    let mut leaving = cluster.nodes[1].take().ok_or("node 1")?;
    assert!(leaving.terminate(Duration::from_secs(15)).success());
    cluster.converge(2, Duration::from_secs(10)).await;
    for (stream, a, b) in &leases {
        let ack = json!({"streamId": stream, "receiptHandles": [a]});
        assert_eq!(
            outcomes(&settle(cluster.node(0), "ack", ack).await.1),
            [(200, "")],
            "{stream}"
        );
        let nack = json!({"streamId": stream, "receiptHandles": [b]});
        assert_eq!(
            outcomes(&settle(cluster.node(2), "nack", nack).await.1),
            [(200, "")],
            "{stream}"
        );
        let (id, again, count) = take(cluster.node(0), stream, 60).await;
        assert_eq!(
            (id.as_str(), count),
            ("b", 2),
            "{stream}: its count went along"
        );
        let nack = json!({"streamId": stream, "receiptHandles": [again]});
        settle(cluster.node(2), "nack", nack).await;
    }
    for i in 0..STREAMS {
        let query = format!("streamId=moving-dlq-{i}&timeoutSeconds=5");
        let (status, letter) = cluster.node(0).receive(&query).await;
        assert_eq!(status, StatusCode::OK, "{i}: the redrive policy went along");
        assert_eq!(letter["message"]["deliveryCount"], 2);
    }
    println!("{leaving_held} deliveries in flight handed over by the leaving node");
    Ok(())
}
