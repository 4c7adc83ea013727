//! The server binary over HTTP/2 (cleartext, prior knowledge) and receives as Server-Sent
//! Events.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestResult, TestServer, code, h2_client};
use hyper::{Method, StatusCode, Version};
use serde_json::{Value, json};

const RECEIVE: &str = "/api/v1/streams/receive";

#[tokio::test]
async fn every_mode_answers_over_http2() -> TestResult {
    let server = TestServer::start();
    let h2 = Arc::new(h2_client(server.addr));
    let (status, headers, _) = h2
        .exchange(Method::GET, "/health", String::new(), &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.contains_key("x-request-id"));

    // Circular buffer: the newest two of three.
    for i in 0..3 {
        let send = json!({"streamId": "ring", "messageUuid": format!("r{i}"), "message": i, "inMemoryStreamSize": 2});
        assert_eq!(h2.send(send).await.0, StatusCode::OK);
    }
    let (_, body) = h2
        .receive("streamId=ring&timeoutSeconds=0&maxMessages=5")
        .await;
    assert_eq!(common::messages(&body), [&json!(1), &json!(2)]);

    // Blocking queue: a full one answers 424 after its wait.
    let blocking = |id: &str| json!({"streamId": "block", "messageUuid": id, "message": 0, "inMemoryStreamSize": 1, "blockingSendTimeoutSeconds": 1});
    assert_eq!(h2.send(blocking("b1")).await.0, StatusCode::OK);
    let (status, body) = h2.send(blocking("b2")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FAILED_DEPENDENCY, "STREAM_FULL")
    );

    // Sync match: a waiting receiver and a sender meet on the same connection.
    let receiver = tokio::spawn({
        let h2 = Arc::clone(&h2);
        async move { h2.receive("streamId=sync&timeoutSeconds=5").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sync = json!({"streamId": "sync", "messageUuid": "s", "message": "met", "inMemoryStreamSize": 0, "blockingSendTimeoutSeconds": 2});
    assert_eq!(h2.send(sync).await.0, StatusCode::OK);
    assert_eq!(receiver.await?.1["message"], "met");

    // The log: written, then read back with its token.
    let (status, body) = h2
        .send(json!({"streamId": "log", "messageUuid": "l1", "message": "kept", "writeToDB": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, read) = h2
        .receive("streamId=log&readFromDB=true&timeoutSeconds=0")
        .await;
    assert_eq!(
        (&read["message"], &read["dbResumeToken"]),
        (&json!("kept"), &body["dbResumeToken"])
    );

    // A batch.
    let batch = json!({"messages": [{"streamId": "b", "messageUuid": "x", "message": 1}, {"streamId": "", "messageUuid": "y", "message": 2}]});
    let (status, body) = h2
        .raw(
            Method::POST,
            "/api/v1/streams/sendBatch",
            batch.to_string(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body)?;
    assert_eq!(
        body["results"],
        json!([{"status": 200}, {"status": 400, "error": body["results"][1]["error"]}])
    );
    Ok(())
}

/// A hundred long-polls wait side by side on one HTTP/2 connection: the node counts one
/// connection, and a message sent to each stream answers its receive.
#[tokio::test]
async fn many_waiting_receives_share_one_connection() -> TestResult {
    const WAITING: usize = 100;
    let server = TestServer::start();
    let h2 = Arc::new(h2_client(server.addr));
    let receives: Vec<_> = (0..WAITING)
        .map(|i| {
            let h2 = Arc::clone(&h2);
            tokio::spawn(async move {
                h2.receive(&format!("streamId=w{i}&timeoutSeconds=10"))
                    .await
            })
        })
        .collect();
    let plain = server.client();
    let waiting = async {
        while plain.metric("ipubsub_waiting_requests").await != Some(WAITING as f64) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        plain.metric("ipubsub_http_connections").await
    };
    let connections = tokio::time::timeout(Duration::from_secs(5), waiting).await?;
    // This plain client's own connection, and the one HTTP/2 connection.
    assert_eq!(connections, Some(2.0));
    for i in 0..WAITING {
        let send = json!({"streamId": format!("w{i}"), "messageUuid": "m", "message": i});
        assert_eq!(plain.send(send).await.0, StatusCode::OK);
    }
    for (i, receive) in receives.into_iter().enumerate() {
        let (status, body) = receive.await?;
        assert_eq!((status, &body["message"]), (StatusCode::OK, &json!(i)));
    }
    Ok(())
}

#[tokio::test]
async fn an_event_stream_delivers_queue_messages_in_turn_with_long_polls() -> TestResult {
    let server = TestServer::start_with("http:\n  sse:\n    heartbeat_seconds: 1\n", &[]);
    let client = server.client();
    let path = format!("{RECEIVE}?streamId=q&timeoutSeconds=5");
    let mut events = client.events(&path, &[]).await;
    assert_eq!(events.status, StatusCode::OK);
    assert_eq!(events.headers["content-type"], "text/event-stream");
    assert_eq!(events.headers["cache-control"], "no-cache");
    let first = events
        .next(Duration::from_secs(2))
        .await
        .ok_or("no preamble")?;
    assert!(first.data.is_empty() && !first.comment, "{first:?}");

    // A heartbeat while nothing comes.
    let beat = events
        .next(Duration::from_secs(3))
        .await
        .ok_or("no heartbeat")?;
    assert!(beat.comment, "{beat:?}");

    for i in 0..3 {
        let send = json!({"streamId": "q", "messageUuid": format!("m{i}"), "message": {"n": i}});
        assert_eq!(client.send(send).await.0, StatusCode::OK);
        let event = events
            .next_event(Duration::from_secs(2))
            .await
            .ok_or("no event")?;
        assert_eq!(event.json()["message"], json!({"n": i}), "{event:?}");
        assert_eq!(event.id, None, "in-memory events carry no id");
    }

    // A long-poll that arrives later waits behind the stream: the stream, waiting first,
    // takes the next message, and the long-poll the one after.
    let server = Arc::new(server);
    let late = tokio::spawn({
        let server = Arc::clone(&server);
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            server.receive("streamId=q&timeoutSeconds=5").await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 3..5 {
        let send = json!({"streamId": "q", "messageUuid": format!("m{i}"), "message": {"n": i}});
        assert_eq!(server.send(send).await.0, StatusCode::OK);
    }
    let event = events
        .next_event(Duration::from_secs(2))
        .await
        .ok_or("no event")?;
    assert_eq!(event.json()["messageUuid"], "m3");
    assert_eq!(late.await?.1["messageUuid"], "m4");

    // Five seconds without a message end the stream with an `end` event.
    let end = events
        .next_event(Duration::from_secs(8))
        .await
        .ok_or("no end")?;
    assert_eq!(end.kind.as_deref(), Some("end"));
    assert_eq!(end.json()["error"]["code"], "NO_MESSAGE");
    assert!(
        events.next(Duration::from_secs(1)).await.is_none(),
        "the stream stays open"
    );
    Ok(())
}

#[tokio::test]
async fn an_event_stream_follows_a_log_and_resumes_after_its_last_event_id() -> TestResult {
    let server = TestServer::start();
    let h2 = h2_client(server.addr);
    for i in 0..3 {
        let send = json!({"streamId": "log", "messageUuid": format!("l{i}"), "message": i, "writeToDB": true});
        assert_eq!(h2.send(send).await.0, StatusCode::OK);
    }
    let path = format!("{RECEIVE}?streamId=log&readFromDB=true&timeoutSeconds=5");
    let mut events = h2.events(&path, &[]).await;
    assert_eq!(events.version, Version::HTTP_2);
    let mut ids = Vec::new();
    for i in 0..3 {
        let event = events
            .next_event(Duration::from_secs(2))
            .await
            .ok_or("no event")?;
        assert_eq!(event.json()["message"], json!(i));
        assert_eq!(
            Some(&event.json()["dbResumeToken"]),
            event.id.as_ref().map(|id| json!(id)).as_ref()
        );
        ids.push(event.id.ok_or("no id")?);
    }
    // Followed live: a message written now arrives on the open stream.
    let send = json!({"streamId": "log", "messageUuid": "l3", "message": 3, "writeToDB": true});
    assert_eq!(h2.send(send).await.0, StatusCode::OK);
    let live = events
        .next_event(Duration::from_secs(2))
        .await
        .ok_or("no live event")?;
    assert_eq!(live.json()["message"], json!(3));
    drop(events);

    // A reconnect names the last event it saw; a dbResumeToken in the URL (as an
    // EventSource repeats its first URL) gives way to it.
    let first = ids[0].as_str();
    let path =
        format!("{RECEIVE}?streamId=log&readFromDB=true&timeoutSeconds=1&dbResumeToken={first}");
    let mut resumed = server
        .client()
        .events(&path, &[("last-event-id", &ids[1])])
        .await;
    let mut got = Vec::new();
    while let Some(event) = resumed.next_event(Duration::from_secs(3)).await {
        if event.kind.is_some() {
            break;
        }
        got.push(event.json()["message"].clone());
    }
    assert_eq!(got, [json!(2), json!(3)]);

    // A Last-Event-ID that is no token of this stream is a 400 before any stream opens.
    let bad = server
        .client()
        .events(&path, &[("last-event-id", "garbage")])
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test]
async fn a_shutdown_ends_open_event_streams() -> TestResult {
    let mut server = TestServer::start();
    let client = common::Client::new(server.addr);
    let path = format!("{RECEIVE}?streamId=bye&timeoutSeconds=60");
    let mut events = client.events(&path, &[]).await;
    events
        .next(Duration::from_secs(2))
        .await
        .ok_or("no preamble")?;
    let reader = tokio::spawn(async move { events.next_event(Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let status =
        tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(10))).await?;
    assert!(status.success(), "{status:?}");
    let end = reader
        .await?
        .ok_or("the stream was cut without an end event")?;
    assert_eq!(end.kind.as_deref(), Some("end"));
    assert_eq!(end.json()["error"]["code"], "SHUTTING_DOWN");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the shutdown waited for the stream"
    );
    Ok(())
}

/// An event stream over HTTP/1.1 whose client stops reading takes no more messages than its
/// connection can write: the rest stay buffered in the stream, counted in the memory budget,
/// for the next receiver. Before, hyper buffered every event the stream made (it copies what
/// a body yields without limit with `pipeline_flush`): 300 messages of 64 KiB were all taken
/// by a client that read nothing, and the node's memory grew with each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_nobody_reads_takes_no_more_than_its_socket_holds() -> TestResult {
    use tokio::io::AsyncWriteExt;

    const MESSAGES: usize = 300;
    const PAYLOAD: usize = 64 << 10;
    let server = TestServer::start();
    let client = server.client().clone();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stalled = socket.connect(server.addr).await?;
    stalled
        .write_all(
            format!(
                "GET {RECEIVE}?streamId=unread&timeoutSeconds=60 HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let payload = "x".repeat(PAYLOAD);
    for i in 0..MESSAGES {
        let send = json!({"streamId": "unread", "messageUuid": format!("m{i}"), "message": payload, "inMemoryStreamSize": 1000});
        assert_eq!(client.send(send).await.0, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let buffered = client
        .metric("ipubsub_buffered_bytes ")
        .await
        .unwrap_or(0.0);
    let left = (buffered / (PAYLOAD as f64)).round() as usize;
    println!(
        "{MESSAGES} messages of 64 KiB to an event stream nobody reads: {left} left in the stream"
    );
    // The connection's window (256 KiB) and the kernel's socket buffers hold the rest.
    assert!(
        left >= MESSAGES - 100,
        "only {left} messages left in the stream"
    );
    // The next receiver gets them, in order, from where the stalled stream stopped.
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = client
        .receive("streamId=unread&maxMessages=1000&timeoutSeconds=1")
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = body["messages"].as_array().map_or(0, Vec::len);
    assert_eq!(got, left, "what was left, for the next receiver");
    Ok(())
}
