//! Forwarding between two real HTTP nodes in one process: every request is served by the
//! stream's owner, whichever node the client talks to, and never takes a second hop.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ipubsub_cluster::{
    Cluster, DEFAULT_VIRTUAL_NODES, FORWARDED_HEADER, Node, NodeId, REQUEST_ID_HEADER, Route,
};
use ipubsub_core::{Engine, Log, LogConfig, StreamId};
use ipubsub_http::{App, HttpConfig};
use ipubsub_storage::MemoryStore;
use serde_json::{Value, json};
use tokio::net::TcpListener;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

struct TestNode {
    addr: SocketAddr,
    app: App,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn node(name: &str, addr: SocketAddr) -> Result<Node, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Node::new(NodeId::new(name)?, addr))
}

async fn start(me: Node, members: Vec<Node>, listener: TcpListener) -> TestNode {
    let log = Log::new(Arc::new(MemoryStore::new()), LogConfig::default());
    tokio::spawn({
        let log = log.clone();
        async move { log.run_commit_worker().await }
    });
    let cluster = Cluster::with_members(me.clone(), members, DEFAULT_VIRTUAL_NODES);
    let app = App::new(Engine::default(), Some(log), cluster, HttpConfig::default());
    let stop = common::serve(listener, app.clone());
    TestNode {
        addr: me.http_addr(),
        app,
        _stop: stop,
    }
}

/// Two nodes that know each other.
async fn pair() -> Result<(TestNode, TestNode, Cluster), Box<dyn std::error::Error + Send + Sync>> {
    let (l1, l2) = (
        TcpListener::bind("127.0.0.1:0").await?,
        TcpListener::bind("127.0.0.1:0").await?,
    );
    let (n1, n2) = (node("n1", l1.local_addr()?)?, node("n2", l2.local_addr()?)?);
    let view = Cluster::with_members(n1.clone(), [n2.clone()], DEFAULT_VIRTUAL_NODES);
    let one = start(n1.clone(), vec![n2.clone()], l1).await;
    let two = start(n2, vec![n1], l2).await;
    Ok((one, two, view))
}

/// A stream that `view`'s ring gives to another node than its own.
fn stream_owned_elsewhere(view: &Cluster) -> StreamId {
    (0..)
        .map(|i| StreamId::new(format!("fwd-{i}")).expect("id"))
        .find(|s| matches!(view.route(s), Route::Forward(_)))
        .expect("some stream is owned elsewhere")
}

async fn call(
    to: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{to}{path}"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let response = client.request(request).await.expect("response");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_either_node_are_served_by_the_owner() -> TestResult {
    let (one, two, view) = pair().await?;
    let stream = stream_owned_elsewhere(&view);
    let send = json!({"streamId": stream.as_str(), "messageUuid": "m1", "message": {"via": "n1"}})
        .to_string();
    let (status, _) = call(one.addr, Method::POST, "/api/v1/streams/send", &send, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        two.app.engine().buffered(&stream),
        Some(1),
        "the owner holds the message"
    );
    assert_eq!(
        one.app.engine().buffered(&stream),
        None,
        "the entry node holds nothing"
    );

    let (status, body) = call(
        one.addr,
        Method::GET,
        &format!("/api/v1/streams/receive?streamId={stream}&timeoutSeconds=1"),
        "",
        &[],
    )
    .await;
    assert_eq!(
        (status, &body["message"]),
        (StatusCode::OK, &json!({"via": "n1"}))
    );

    // Persistent: written through one node, replayed through the other.
    let persistent =
        json!({"streamId": stream.as_str(), "messageUuid": "p1", "message": 1, "writeToDB": true})
            .to_string();
    let (status, body) = call(
        one.addr,
        Method::POST,
        "/api/v1/streams/send",
        &persistent,
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["dbResumeToken"].as_str().ok_or("token")?.to_owned();
    let (status, body) = call(
        two.addr,
        Method::GET,
        &format!("/api/v1/streams/receive?streamId={stream}&readFromDB=true&timeoutSeconds=0"),
        "",
        &[],
    )
    .await;
    assert_eq!(
        (status, body["dbResumeToken"].as_str()),
        (StatusCode::OK, Some(token.as_str()))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_long_poll_is_woken_and_keeps_its_deadline() -> TestResult {
    let (one, two, view) = pair().await?;
    let stream = stream_owned_elsewhere(&view);
    let receiver = tokio::spawn({
        let (addr, path) = (
            one.addr,
            format!("/api/v1/streams/receive?streamId={stream}&timeoutSeconds=10"),
        );
        async move { call(addr, Method::GET, &path, "", &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let send =
        json!({"streamId": stream.as_str(), "messageUuid": "late", "message": 2}).to_string();
    assert_eq!(
        call(two.addr, Method::POST, "/api/v1/streams/send", &send, &[])
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = receiver.await?;
    assert_eq!(
        (status, &body["messageUuid"]),
        (StatusCode::OK, &json!("late"))
    );

    // The owner waits what the caller asked for, not a fresh default.
    let started = Instant::now();
    let (status, body) = call(
        one.addr,
        Method::GET,
        &format!("/api/v1/streams/receive?streamId={stream}&timeoutSeconds=1"),
        "",
        &[],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FAILED_DEPENDENCY, Some("NO_MESSAGE"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_answers_forwarded_requests_before_its_grace_ends() -> TestResult {
    let (one, _two, view) = pair().await?;
    let mut elsewhere = (0..)
        .map(|i| StreamId::new(format!("cut-{i}")).expect("id"))
        .filter(|s| matches!(view.route(s), Route::Forward(_)));
    let (stream, sync) = (elsewhere.next(), elsewhere.next());
    let (Some(stream), Some(sync)) = (stream, sync) else {
        return Err("no streams owned elsewhere".into());
    };
    // Both wait on the owner far longer than node one's 1 s shutdown grace.
    let receive = tokio::spawn({
        let path = format!("/api/v1/streams/receive?streamId={stream}&timeoutSeconds=30");
        async move { call(one.addr, Method::GET, &path, "", &[]).await }
    });
    let send = tokio::spawn({
        let body = json!({"streamId": sync.as_str(), "messageUuid": "s", "message": 1,
            "inMemoryStreamSize": 0, "blockingSendTimeoutSeconds": 30})
        .to_string();
        async move { call(one.addr, Method::POST, "/api/v1/streams/send", &body, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = Instant::now();
    drop(one._stop);
    for (what, answer) in [("receive", receive.await?), ("send", send.await?)] {
        assert_eq!(
            (answer.0, answer.1["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("SHUTTING_DOWN")),
            "{what}: {}",
            answer.1
        );
    }
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopped.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_is_served_where_it_lands() -> TestResult {
    let (one, two, view) = pair().await?;
    let stream = stream_owned_elsewhere(&view);
    let send = json!({"streamId": stream.as_str(), "messageUuid": "m", "message": 3}).to_string();
    let (status, _) = call(
        one.addr,
        Method::POST,
        "/api/v1/streams/send",
        &send,
        &[(FORWARDED_HEADER, "n2")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one.app.engine().buffered(&stream), Some(1), "no second hop");
    assert_eq!(two.app.engine().buffered(&stream), None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_owner_is_suspected_and_the_request_routed_again() -> TestResult {
    let l1 = TcpListener::bind("127.0.0.1:0").await?;
    let gone = TcpListener::bind("127.0.0.1:0").await?;
    let gone_addr = gone.local_addr()?;
    drop(gone); // nobody listens there any more
    let (n1, dead) = (node("n1", l1.local_addr()?)?, node("dead", gone_addr)?);
    let view = Cluster::with_members(n1.clone(), [dead.clone()], DEFAULT_VIRTUAL_NODES);
    let one = start(n1, vec![dead], l1).await;
    let stream = stream_owned_elsewhere(&view);
    let send = json!({"streamId": stream.as_str(), "messageUuid": "m", "message": 4}).to_string();
    let (status, body) = call(one.addr, Method::POST, "/api/v1/streams/send", &send, &[]).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "served by the next owner, this node: {body}"
    );
    assert_eq!(one.app.engine().buffered(&stream), Some(1));
    assert_eq!(
        one.app.cluster().members().len(),
        1,
        "the dead owner is suspected"
    );
    // Bad input is still answered locally, without a hop.
    let (status, _) = call(one.addr, Method::POST, "/api/v1/streams/send", "{}", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_unreachable_owners_in_a_row_are_a_424() -> TestResult {
    let l1 = TcpListener::bind("127.0.0.1:0").await?;
    let mut dead = Vec::new();
    for name in ["dead-a", "dead-b"] {
        let gone = TcpListener::bind("127.0.0.1:0").await?;
        dead.push(node(name, gone.local_addr()?)?);
    } // both listeners dropped here
    let n1 = node("n1", l1.local_addr()?)?;
    let view = Cluster::with_members(n1.clone(), dead.clone(), DEFAULT_VIRTUAL_NODES);
    let one = start(n1.clone(), dead.clone(), l1).await;
    // A stream whose owner, and whose owner once that one is gone, are both dead.
    let stream = (0..)
        .map(|i| StreamId::new(format!("dd-{i}")).expect("id"))
        .find(|s| {
            let Route::Forward(first) = view.route(s) else {
                return false;
            };
            let without: Vec<Node> = dead
                .iter()
                .filter(|d| d.id() != first.id())
                .cloned()
                .collect();
            matches!(
                Cluster::with_members(n1.clone(), without, DEFAULT_VIRTUAL_NODES).route(s),
                Route::Forward(_)
            )
        })
        .expect("such a stream");
    let send = json!({"streamId": stream.as_str(), "messageUuid": "m", "message": 5}).to_string();
    let started = Instant::now();
    let (status, body) = call(one.addr, Method::POST, "/api/v1/streams/send", &send, &[]).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no request hangs on dead owners: {:?}",
        started.elapsed()
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FAILED_DEPENDENCY, Some("OWNER_UNAVAILABLE")),
        "{body}"
    );
    Ok(())
}

/// Answers one request with `200 {}` and returns its head, lower-cased.
async fn fake_owner(listener: TcpListener) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut socket, _) = listener.accept().await?;
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    socket
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await?;
    Ok(String::from_utf8_lossy(&head).to_lowercase())
}

fn get(path: &str, id: Option<&str>) -> Request<Full<Bytes>> {
    let mut request = Request::get(path);
    if let Some(id) = id {
        request = request.header(REQUEST_ID_HEADER, id);
    }
    request.body(Full::new(Bytes::new())).expect("request")
}

fn id_of<B>(response: &hyper::Response<B>) -> String {
    response
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .expect("every answer has a request id")
        .to_owned()
}

#[tokio::test]
async fn every_answer_carries_a_request_id_the_callers_when_valid() -> TestResult {
    let app = App::new(
        Engine::default(),
        None,
        Cluster::single(node("n1", "127.0.0.1:1".parse()?)?),
        HttpConfig::default(),
    );
    let first = app.handle(get("/health", None)).await;
    let second = app.handle(get("/nowhere", None)).await;
    assert_eq!(second.status(), StatusCode::NOT_FOUND);
    assert_ne!(id_of(&first), id_of(&second), "made-up ids differ");
    // Made-up ids: one random prefix per process, then a counter in hex.
    let first_id = id_of(&first);
    let (prefix, counter) = first_id.rsplit_once('-').ok_or("no dash")?;
    assert_eq!(counter, "0");
    assert!(prefix.len() == 16 && prefix.bytes().all(|b| b.is_ascii_hexdigit()));
    for n in 2..=300u32 {
        let id = id_of(&app.handle(get("/health", None)).await);
        assert_eq!(id, format!("{prefix}-{n:x}"));
    }
    let kept = app.handle(get("/health", Some("trace-42.a:b_c"))).await;
    assert_eq!(id_of(&kept), "trace-42.a:b_c");
    for bad in ["two words", "", &"x".repeat(129), "quote\"d"] {
        let replaced = app.handle(get("/health", Some(bad))).await;
        assert_ne!(id_of(&replaced), bad, "{bad:?} is not echoed");
        assert!(!id_of(&replaced).is_empty());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarded_hop_keeps_the_request_id() -> TestResult {
    let owner_listener = TcpListener::bind("127.0.0.1:0").await?;
    let (n1, n2) = (
        node("n1", "127.0.0.1:1".parse()?)?,
        node("n2", owner_listener.local_addr()?)?,
    );
    let owner = tokio::spawn(fake_owner(owner_listener));
    let cluster = Cluster::with_members(n1, [n2], DEFAULT_VIRTUAL_NODES);
    let stream = stream_owned_elsewhere(&cluster);
    // The fake owner speaks HTTP/1.1, as members of builds before HTTP/2 do.
    let mut config = HttpConfig::default();
    config.peer_http = ipubsub_http::PeerHttp::Http1;
    let app = App::new(Engine::default(), None, cluster, config);
    let path = format!("/api/v1/streams/receive?streamId={stream}&timeoutSeconds=1");
    let answer = app.handle(get(&path, Some("trace-fwd-1"))).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(id_of(&answer), "trace-fwd-1");
    let head = owner.await??;
    assert!(head.contains("x-request-id: trace-fwd-1"), "{head}");
    Ok(())
}

/// Hands messages over for real, then reports the first attempt at each as failed (its answer
/// "lost") after a receiver on the new owner has taken the message: the handing node must try
/// again, and the owner must not take the same copy over twice.
struct AnswerLost {
    forwarder: ipubsub_cluster::Forwarder,
    owner: SocketAddr,
    tried: std::sync::Mutex<std::collections::HashSet<String>>,
    taken_between: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl ipubsub_http::HandOff for AnswerLost {
    async fn hand_off(
        &self,
        owner: &Node,
        moving: &ipubsub_http::Moving<'_>,
        request_id: &str,
    ) -> Result<(), String> {
        let stream = moving.stream;
        let handed = <ipubsub_cluster::Forwarder as ipubsub_http::HandOff>::hand_off(
            &self.forwarder,
            owner,
            moving,
            request_id,
        )
        .await;
        let Some(message) = moving.item.message() else {
            return handed;
        };
        let first = self
            .tried
            .lock()
            .expect("lock")
            .insert(message.id().as_str().to_owned());
        if handed.is_ok() && first {
            for taken in receive_all_here(self.owner, stream).await {
                self.taken_between.lock().expect("lock").push(taken);
            }
            return Err("the answer was lost".to_owned());
        }
        handed
    }
}

/// Every message `stream` holds on the node at `at`, served there (marked as forwarded).
async fn receive_all_here(at: SocketAddr, stream: &StreamId) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let (status, body) = call(
            at,
            Method::GET,
            &format!("/api/v1/streams/receive?streamId={stream}&timeoutSeconds=0"),
            "",
            &[(FORWARDED_HEADER, "test")],
        )
        .await;
        match body["messageUuid"].as_str() {
            Some(id) if status == StatusCode::OK => ids.push(id.to_owned()),
            _ => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_tried_again_after_its_answer_was_lost_is_delivered_once() -> TestResult {
    let (one, two, view) = pair().await?;
    let stream = (0..)
        .map(|i| StreamId::new(format!("here-{i}")).expect("id"))
        .find(|s| matches!(view.route(s), Route::Local))
        .expect("some stream is owned here");
    let ids = ["m1", "m2", "m3"];
    for id in ids {
        let send = json!({"streamId": stream.as_str(), "messageUuid": id, "message": {"id": id}})
            .to_string();
        let (status, _) = call(one.addr, Method::POST, "/api/v1/streams/send", &send, &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let hand_off = Arc::new(AnswerLost {
        forwarder: one.app.forwarder().clone(),
        owner: two.addr,
        tried: Default::default(),
        taken_between: Default::default(),
    });
    let rebalancer = ipubsub_http::Rebalancer::new(
        one.app.engine().clone(),
        one.app.cluster().clone(),
        hand_off.clone(),
        ipubsub_http::Strays::default(),
    );
    let counts = rebalancer.leave(Duration::from_secs(10)).await;
    assert_eq!((counts.handed, counts.lost), (3, 0), "{counts:?}");

    let mut delivered = hand_off.taken_between.lock().expect("lock").clone();
    delivered.extend(receive_all_here(two.addr, &stream).await);
    assert_eq!(delivered, ids, "each message exactly once, in order");
    Ok(())
}
