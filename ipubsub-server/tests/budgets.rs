//! The budgets that bound what outside requests can make a node hold, each pushed past on real
//! server processes with small limits: the node answers 503 for what does not fit, its memory
//! stays within the budget plus a stated overhead, and it keeps serving. (The in-memory byte
//! budget has its test in `limits.rs`, the log's append queue on a frozen database in
//! `database_outage.rs`.)

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::databases::Database;
use common::{Client, TestResult, TestServer, code};
use hyper::StatusCode;
use serde_json::json;

/// A send and its receive on `stream` answered at once.
async fn still_serves(client: &Client, stream: &str) {
    let started = Instant::now();
    let body = json!({"streamId": stream, "messageUuid": "ok", "message": 1});
    let (status, answer) = client.send(body).await;
    assert_eq!(status, StatusCode::OK, "send: {answer}");
    let (status, answer) = client
        .receive(&format!("streamId={stream}&timeoutSeconds=1"))
        .await;
    assert_eq!(status, StatusCode::OK, "receive: {answer}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

/// A stream node `client` owns itself: a send to it is not forwarded.
async fn local_stream(client: &Client, prefix: &str) -> String {
    let forwarded = async || client.metric("ipubsub_forwards_total").await.unwrap_or(0.0);
    for i in 0.. {
        let stream = format!("{prefix}-{i}");
        let before = forwarded().await;
        let body = json!({"streamId": stream, "messageUuid": "probe", "message": 0});
        assert_eq!(client.send(body).await.0, StatusCode::OK);
        if forwarded().await == before {
            let (status, _) = client
                .receive(&format!("streamId={stream}&timeoutSeconds=0"))
                .await;
            assert_eq!(status, StatusCode::OK, "the probe taken back");
            return stream;
        }
    }
    unreachable!("some stream is local")
}

/// How many of `answers` had `status` and the error `code`.
fn count(
    answers: &std::collections::BTreeMap<(u16, String), usize>,
    status: u16,
    code: &str,
) -> usize {
    answers
        .get(&(status, code.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// Runs `requests` on `concurrency` tasks; each answer's status and error code, counted.
async fn run_all(
    client: &Client,
    concurrency: usize,
    paths: Vec<String>,
) -> Result<
    std::collections::BTreeMap<(u16, String), usize>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    let paths = std::sync::Arc::new(std::sync::Mutex::new(paths));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, paths) = (client.clone(), std::sync::Arc::clone(&paths));
            tokio::spawn(async move {
                let mut seen = std::collections::BTreeMap::new();
                loop {
                    let next = paths.lock().map(|mut p| p.pop()).ok().flatten();
                    let Some(path) = next else { break seen };
                    let (status, body) = client.receive(&path).await;
                    *seen
                        .entry((status.as_u16(), code(&body).to_owned()))
                        .or_insert(0) += 1;
                }
            })
        })
        .collect();
    let mut total = std::collections::BTreeMap::new();
    for task in tasks {
        for (key, n) in task.await? {
            *total.entry(key).or_insert(0) += n;
        }
    }
    Ok(total)
}

/// `storage.max_log_streams`: 20,000 log reads on streams nobody wrote (each costs the node a
/// stream's positions) leave at most 1,000 of them held, the idle ones forgotten to make room,
/// and memory flat; then 1,200 readers waiting on as many streams (a waiting stream is not
/// idle) get the room there is, the rest 503 TOO_MANY_STREAMS at once, and the node serves
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_reads_on_random_streams_stay_within_max_log_streams() -> TestResult {
    const MAX: usize = 1_000;
    const READS: usize = 20_000;
    const WAITING: usize = 1_200;
    /// What the node may grow by: the 1,000 streams' positions (~500 B each), the buffers of
    /// the requests in flight, allocator slack, and the embedded store's own caches, which
    /// grow with the epoch record each first read of a stream writes (its per-stream cache
    /// is cleared past 2^20 entries). Measured here: +12.0 MB after 20,000 reads and +16.4 MB
    /// after 40,000 with the bound; +23.5 MB and +33.2 MB without it.
    const OVERHEAD: u64 = 24 << 20;
    let server = TestServer::start_with(&format!("storage:\n  max_log_streams: {MAX}\n"), &[]);
    let client = server.client().clone();
    still_serves(&client, "warm-up").await;
    let before = server.rss_bytes();
    let reads = (0..READS)
        .map(|i| format!("streamId=random-{i:05}&readFromDB=true&timeoutSeconds=0"))
        .collect();
    let answers = run_all(&client, 32, reads).await?;
    let empty = count(&answers, 424, "NO_MESSAGE");
    assert_eq!(empty, READS, "every read finds nothing: {answers:?}");
    let evicted = client
        .metric("ipubsub_log_evicted_streams_total")
        .await
        .unwrap_or(0.0);
    let grown = server.rss_bytes().saturating_sub(before);
    println!(
        "{READS} log reads on new streams: {evicted} streams forgotten to make room, RSS +{:.1} MB",
        grown as f64 / 1e6
    );
    // Each of the log's shards holds its share of MAX, rounded up.
    assert!(
        evicted >= (READS - 2 * MAX) as f64,
        "{evicted} streams forgotten"
    );
    assert!(grown < OVERHEAD, "RSS grew by {grown} bytes");

    let started = Instant::now();
    let waiting = (0..WAITING)
        .map(|i| format!("streamId=waiting-{i:05}&readFromDB=true&timeoutSeconds=3"))
        .collect();
    // Over one HTTP/2 connection: what grows is the readers' state, not 1,200 connections'
    // buffers (those are bounded by `http.max_connections`, tested in limits.rs).
    let waiters = tokio::spawn({
        let client = common::h2_client(server.addr);
        async move { run_all(&client, WAITING, waiting).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    still_serves(&client, "while-readers-wait").await;
    let answers = waiters.await??;
    let refused = count(&answers, 503, "TOO_MANY_STREAMS");
    let timed_out = count(&answers, 424, "NO_MESSAGE");
    println!(
        "{WAITING} waiting log readers: {timed_out} waited their 3 s, {refused} refused at once ({:?} in all)",
        started.elapsed()
    );
    assert_eq!(refused + timed_out, WAITING, "{answers:?}");
    assert!(refused >= WAITING - MAX, "{refused} refused");
    assert!(timed_out <= MAX, "{timed_out} streams held at once");
    assert!(timed_out >= MAX / 2, "only {timed_out} readers waited");
    let grown = server.rss_bytes().saturating_sub(before);
    println!(
        "RSS +{:.1} MB after the waiting readers",
        grown as f64 / 1e6
    );
    assert!(grown < OVERHEAD, "RSS grew by {grown} bytes");
    still_serves(&client, "after").await;
    Ok(())
}

/// `cluster.max_forwarded_per_member`: 400 long-polls through node 0, about half of them for
/// streams node 1 owns. Node 0 forwards 50 of those at a time; the others are refused at once
/// with 503 TOO_MANY_WAITERS and counted, the ones it owns itself wait as usual, and node 0
/// serves meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_past_max_forwarded_per_member_are_refused_at_once() -> TestResult {
    const CAP: usize = 50;
    const POLLS: usize = 400;
    let cluster = Cluster::start_configured(
        2,
        2,
        "http:\n  max_connections: 5000\n",
        &[(
            "IPUBSUB_CLUSTER__MAX_FORWARDED_PER_MEMBER",
            &CAP.to_string(),
        )],
    );
    cluster.converge(2, Duration::from_secs(15)).await;
    let node = cluster.node(0);
    let client = node.client().clone();
    let (during, after) = (
        local_stream(&client, "during").await,
        local_stream(&client, "after").await,
    );
    let forwarded_before = client
        .metric(r#"ipubsub_forwards_total{outcome="answered"}"#)
        .await
        .unwrap_or(0.0);
    let before = node.rss_bytes();
    let polls = (0..POLLS)
        .map(|i| format!("streamId=poll-{i:04}&timeoutSeconds=3"))
        .collect();
    let started = Instant::now();
    let answers = tokio::spawn({
        let client = client.clone();
        async move { run_all(&client, POLLS, polls).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let busy = client
        .metric(r#"ipubsub_forwards_total{outcome="busy"}"#)
        .await
        .unwrap_or(0.0);
    still_serves(&client, &during).await;
    let answers = answers.await??;
    let refused = count(&answers, 503, "TOO_MANY_WAITERS");
    let timed_out = count(&answers, 424, "NO_MESSAGE");
    let forwarded = client
        .metric(r#"ipubsub_forwards_total{outcome="answered"}"#)
        .await
        .unwrap_or(0.0)
        - forwarded_before;
    println!(
        "{POLLS} long-polls through node 0 in {:?}: {timed_out} waited (of which {forwarded} forwarded), {refused} refused; {busy} busy within 1.5 s; RSS +{:.1} MB",
        started.elapsed(),
        node.rss_bytes().saturating_sub(before) as f64 / 1e6
    );
    assert_eq!(refused + timed_out, POLLS, "{answers:?}");
    assert!(refused >= POLLS / 4, "{refused} refused");
    assert_eq!(busy, refused as f64, "every refusal came at once");
    assert_eq!(forwarded, CAP as f64, "forwarded");
    assert_eq!(
        client
            .metric(r#"ipubsub_limit_hits_total{limit="forwarded"}"#)
            .await,
        Some(refused as f64)
    );
    still_serves(&client, &after).await;
    Ok(())
}

/// `storage.max_queued_bytes`: with the database frozen, 800 persistent sends of 256 KiB
/// (200 MiB), 48 at a time, meet an append queue of 8 MiB. What fits waits and times out
/// (503 STORE_UNAVAILABLE; it stays queued while the worker is stuck on the database), the
/// rest is refused at once (503 LOG_QUEUE_FULL); memory grows by the queue's budget plus the
/// bodies in flight, in-memory streams are served throughout, and persistent sends go
/// through again after the thaw. The pool waits for a connection longer than the test runs
/// (its default, 5 s, fails the worker's write and frees the queue every 5 s, so that a run
/// slowed down by a busy machine queued 168 and 333 sends where 32 fit at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_sends_past_max_queued_bytes_are_503_and_memory_stays_bounded() -> TestResult {
    const BUDGET: u64 = 8 << 20;
    const PAYLOAD: usize = 256 << 10;
    const SENDS: usize = 800;
    const CONCURRENT: usize = 48;
    /// The requests in flight, ~1 MB each at this size (hyper's read buffer, the body and the
    /// parsed message: measured +53 to +57 MB in all with 48 at once), and allocator slack.
    const OVERHEAD: u64 = CONCURRENT as u64 * (1 << 20) + (8 << 20);
    let db = common::databases::Postgres::new();
    let server = TestServer::start_with(
        &format!(
            "storage:\n  backend: postgres\n  store_timeout_seconds: 5\n  commit_workers: 1\n  max_queued_appends: 100000\n  max_queued_bytes: {BUDGET}\n  postgres:\n    url: \"{}\"\n    connect_timeout_seconds: 300\n",
            db.url()
        ),
        &[],
    );
    let client = server.client().clone();
    let persistent = |id: String, payload: &str| json!({"streamId": "big", "messageUuid": id, "message": payload, "writeToDB": true});
    let (status, body) = client.send(persistent("before".into(), "x")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = server.rss_bytes();
    db.signal_all("STOP")?;

    let payload = std::sync::Arc::new("p".repeat(PAYLOAD));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let (client, payload, next) = (client.clone(), payload.clone(), next.clone());
            tokio::spawn(async move {
                let mut seen = std::collections::BTreeMap::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= SENDS {
                        break seen;
                    }
                    let body = persistent(format!("m{i}"), &payload);
                    let (status, answer) = client.send(body).await;
                    *seen
                        .entry((status.as_u16(), code(&answer).to_owned()))
                        .or_insert(0usize) += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    still_serves(&client, "in-memory-while-frozen").await;
    let mut answers = std::collections::BTreeMap::new();
    for task in tasks {
        for (key, n) in task.await? {
            *answers.entry(key).or_insert(0) += n;
        }
    }
    let grown = server.rss_bytes().saturating_sub(before);
    let full = count(&answers, 503, "LOG_QUEUE_FULL");
    let queued = count(&answers, 503, "STORE_UNAVAILABLE");
    println!(
        "{SENDS} sends of {} KiB into a {} MiB queue, the database frozen: {queued} queued and timed out, {full} refused at once; RSS +{:.1} MB",
        PAYLOAD >> 10,
        BUDGET >> 20,
        grown as f64 / 1e6
    );
    assert_eq!(full + queued, SENDS, "{answers:?}");
    let fits = (BUDGET / PAYLOAD as u64) as usize;
    assert!(
        (fits - 2..=fits).contains(&queued),
        "{queued} queued, about {fits} fit"
    );
    assert!(grown < BUDGET + OVERHEAD, "RSS grew by {grown} bytes");
    still_serves(&client, "in-memory-after").await;

    db.signal_all("CONT")?;
    let thawed = Instant::now();
    loop {
        let (status, body) = client.send(persistent("after".into(), "y")).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            thawed.elapsed() < Duration::from_secs(30),
            "no persistent send accepted 30 s after the thaw: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// `http.max_body_bytes_in_flight`: 40 clients each start a 512 KiB body, send 100 KiB of it
/// and stall. The node holds what arrived up to its 2 MiB budget and answers the others 503
/// MEMORY_LIMIT at once; a small send still fits, and when the stalled clients go the budget
/// is whole again. Declared lengths hold nothing: 40 bodies declared and never sent do not
/// keep a send out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_max_body_bytes_in_flight_are_503_and_given_back() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const BUDGET: usize = 2 << 20;
    const CLIENTS: usize = 40;
    const SENT: usize = 100 << 10;
    let server = TestServer::start_with(
        &format!("http:\n  max_body_bytes_in_flight: {BUDGET}\n"),
        &[],
    );
    let client = server.client().clone();
    let head = format!(
        "POST /api/v1/streams/send HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        512 << 10
    );
    let start = |sent: usize| {
        let head = head.clone();
        let addr = server.addr;
        tokio::spawn(async move {
            let mut socket = tokio::net::TcpStream::connect(addr).await?;
            socket.write_all(head.as_bytes()).await?;
            let mut body = br#"{"streamId":"big","messageUuid":"m","message":""#.to_vec();
            body.resize(sent, b'x');
            socket.write_all(&body[..sent]).await?;
            Ok::<_, std::io::Error>(socket)
        })
    };

    // Declared and never sent: nothing held.
    let mut silent = Vec::new();
    for _ in 0..CLIENTS {
        silent.push(start(0).await??);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        client.metric("ipubsub_body_bytes_in_flight ").await,
        Some(0.0)
    );
    still_serves(&client, "past-silent-bodies").await;
    drop(silent);

    let mut stalled = Vec::new();
    for _ in 0..CLIENTS {
        stalled.push(start(SENT).await??);
    }
    // The refused are answered at once; the others wait for the rest of their body.
    let mut refused = 0;
    let mut waiting = Vec::new();
    for mut socket in stalled {
        let mut answer = vec![0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(300), socket.read(&mut answer)).await {
            Ok(Ok(n)) if n > 0 => {
                let text = String::from_utf8_lossy(&answer[..n]);
                assert!(
                    text.starts_with("HTTP/1.1 503") && text.contains("MEMORY_LIMIT"),
                    "{text}"
                );
                refused += 1;
            }
            _ => waiting.push(socket),
        }
    }
    let held = client
        .metric("ipubsub_body_bytes_in_flight ")
        .await
        .unwrap_or(0.0);
    println!(
        "{CLIENTS} bodies stalled after {} KiB: {} held ({held} bytes of {BUDGET}), {refused} refused",
        SENT >> 10,
        waiting.len()
    );
    assert_eq!(refused + waiting.len(), CLIENTS);
    assert!(held <= BUDGET as f64, "{held} bytes held");
    assert!(
        (BUDGET / SENT - 2..=BUDGET / SENT).contains(&waiting.len()),
        "{} bodies held",
        waiting.len()
    );
    assert_eq!(
        client
            .metric(r#"ipubsub_limit_hits_total{limit="bodies"}"#)
            .await,
        Some(refused as f64)
    );
    still_serves(&client, "beside-stalled-bodies").await;
    drop(waiting);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client.metric("ipubsub_body_bytes_in_flight ").await,
        Some(0.0),
        "given back when the clients went"
    );
    Ok(())
}

/// Large answers count in `http.max_body_bytes_in_flight` until they are read: two receivers
/// take 32 messages of 256 KiB each (8 MiB answers) and stop reading. Their answers stay
/// counted (16 MiB against a budget of 8 MiB), so the next request body is refused with 503
/// MEMORY_LIMIT instead of the node taking in more while it cannot get rid of what it holds;
/// when the stalled clients go, the budget is whole again and sends go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_nobody_reads_count_in_the_body_budget() -> TestResult {
    use tokio::io::AsyncWriteExt;

    const BUDGET: usize = 8 << 20;
    const PAYLOAD: usize = 256 << 10;
    let server = TestServer::start_with(
        &format!("http:\n  max_body_bytes_in_flight: {BUDGET}\n  default_stream_size: 100\n"),
        &[],
    );
    let client = server.client().clone();
    let payload = "a".repeat(PAYLOAD);
    for i in 0..64 {
        let body = json!({"streamId": "big", "messageUuid": format!("m{i}"), "message": payload});
        let (status, answer) = client.send(body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut socket = tokio::net::TcpStream::connect(server.addr).await?;
        socket
            .write_all(
                b"GET /api/v1/streams/receive?streamId=big&maxMessages=32&timeoutSeconds=1 HTTP/1.1\r\nhost: x\r\n\r\n",
            )
            .await?;
        stalled.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = client
        .metric("ipubsub_body_bytes_in_flight ")
        .await
        .unwrap_or(0.0);
    let small = json!({"streamId": "small", "messageUuid": "s", "message": 1});
    let (status, answer) = client.send(small.clone()).await;
    println!("two unread answers of 8 MiB: {held} bytes held; a send meanwhile: {status}");
    assert!(held >= (2 * 32 * PAYLOAD) as f64, "{held} bytes held");
    assert_eq!(
        (status, code(&answer)),
        (StatusCode::SERVICE_UNAVAILABLE, "MEMORY_LIMIT"),
        "{answer}"
    );
    drop(stalled);
    let started = Instant::now();
    loop {
        let held = client
            .metric("ipubsub_body_bytes_in_flight ")
            .await
            .unwrap_or(-1.0);
        if held == 0.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{held} bytes still held after the clients went"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, answer) = client.send(small).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    Ok(())
}
