//! The ipubsub HTTP load generator.
//!
//! N publishers and M long-polling receivers over keep-alive HTTP/1.1 against one or more
//! node URLs, spread over S streams. Publishers stop after `--duration` seconds or `--count`
//! messages; receivers then drain until every accepted message arrived (or `--drain` seconds
//! pass). Prints delivered messages/s, send and end-to-end latency percentiles (HDR
//! histograms, microseconds), errors by status, and whether every message was delivered
//! exactly once.
//!
//! ```text
//! cargo run --release -p ipubsub-benches --bin ipubsub-loadgen -- \
//!     --url http://127.0.0.1:16681 --publishers 16 --receivers 16 --streams 16 --duration 10
//! ```

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ipubsub_benches::{latency_histogram as histogram, now_micros};

mod pipelined;
mod routing;
mod waiters;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// In-memory circular buffers (`writeToDB: false`), competing receivers.
    Memory,
    /// Persistent sends (`writeToDB: true`); each stream's log is followed live by one
    /// receiver with resume tokens.
    Persistent,
    /// Persistent sends first; then receivers replay every stream's log from the start, timed
    /// on their own.
    Replay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RouteChoice {
    /// Round robin over `--url`.
    Any,
    /// Straight to each stream's owner.
    Owner,
    /// To a node that does not own the stream: every request is forwarded once.
    Other,
}

/// Load generator for ipubsub's HTTP API.
#[derive(Debug, Clone, Parser)]
#[command(name = "ipubsub-loadgen")]
struct Args {
    /// Node URLs, comma separated; requests are spread over them round robin.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:16681")]
    url: Vec<String>,
    /// Concurrent publishers, each sending one message at a time.
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// Concurrent long-polling receivers; receiver j polls streams j, j+M, j+2M, ...
    #[arg(long, default_value_t = 16)]
    receivers: usize,
    /// Streams the messages are spread over.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Size of each message's JSON text, in bytes (at least 24).
    #[arg(long, default_value_t = 100)]
    message_size: usize,
    /// Seconds to publish for (ignored with --count).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Messages to publish in total.
    #[arg(long)]
    count: Option<u64>,
    /// Delivery mode.
    #[arg(long, value_enum, default_value = "memory")]
    mode: Mode,
    /// `inMemoryStreamSize` of the streams (large, so that nothing is evicted).
    #[arg(long, default_value_t = 100_000)]
    stream_size: u32,
    /// `timeoutSeconds` of each receive.
    #[arg(long, default_value_t = 1)]
    receive_timeout: u64,
    /// Requests each publisher pipelines on its connection (HTTP/1.1 pipelining): it writes
    /// this many sends at once, then reads their answers. 1 sends one at a time.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Which node each request goes to: `any` spreads requests over `--url` round robin;
    /// `owner` sends each to its stream's owner and `other` to a node that is not, using the
    /// ring of the cluster that `/api/v1/cluster` of the first URL describes (to measure what
    /// forwarding costs).
    #[arg(long, value_enum, default_value = "any")]
    route: RouteChoice,
    /// The cluster's `virtual_nodes`, to compute its ring with `--route`.
    #[arg(long, default_value_t = ipubsub_cluster::DEFAULT_VIRTUAL_NODES)]
    virtual_nodes: usize,
    /// With `--route owner|other`: only streams that this member (its node name) owns, so
    /// that one node serves every request and, with `other`, another node forwards them all
    /// (what a forwarding hop costs when the nodes do not share CPUs).
    #[arg(long)]
    owned_by: Option<String>,
    /// With `--route owner`: send every request to this URL instead of the stream's owner
    /// (a reverse proxy in front of it), to compare a proxy's hop with a forwarding one.
    #[arg(long)]
    via_proxy: Option<String>,
    /// `maxMessages` of each receive (1: the v1 single-message receive).
    #[arg(long, default_value_t = 1)]
    max_messages: usize,
    /// Seconds receivers keep draining after publishers stop.
    #[arg(long, default_value_t = 10)]
    drain: u64,
    /// Prefix of stream ids; the default is unique per run.
    #[arg(long)]
    stream_prefix: Option<String>,
    /// Exit with status 1 unless every accepted message was delivered exactly once.
    #[arg(long)]
    check: bool,
    /// Instead of a load: hold this many receives waiting at once (one connection each, on
    /// distinct streams) for `--receive-timeout` seconds, and check that every one is answered
    /// 424 within its timeout + 1 s. Raise `ulimit -n` first.
    #[arg(long)]
    hold_waiters: Option<usize>,
    /// With --hold-waiters: the server's pid, to report its resident memory per waiter.
    #[arg(long)]
    server_pid: Option<u32>,
    /// With --hold-waiters: spread the waiting receives over this many HTTP/2 connections
    /// (cleartext, prior knowledge) instead of one HTTP/1.1 connection each.
    #[arg(long)]
    h2_connections: Option<usize>,
    /// Send the load over HTTP/2 (cleartext, prior knowledge): every publisher and receiver
    /// multiplexed over one connection per node, instead of HTTP/1.1 connections of their own.
    #[arg(long)]
    http2: bool,
    /// With --hold-waiters: hold event streams (`Accept: text/event-stream`) instead of
    /// long-polls; each is checked to end with its `end` event after the timeout.
    #[arg(long)]
    sse: bool,
    /// Acknowledged receives: each receive takes its messages under leases of this many
    /// seconds (`ackTimeoutSeconds`), and the receiver acknowledges them in one `ack` before
    /// its next receive (with `--max-messages 1`: a receive and an ack per message). A message
    /// counts as delivered once its ack is answered.
    #[arg(long)]
    ack_timeout: Option<u64>,
    /// Sends ask for a dedupe window of this many seconds (`dedupeWindowSeconds`): every
    /// send's id is checked against, and remembered by, its stream (or its log).
    #[arg(long)]
    dedupe_window: Option<u64>,
}

#[derive(Default)]
struct Shared {
    /// With `--route owner|other`: the base URL for each stream index.
    stream_urls: Vec<String>,
    /// The id of each stream index (`{prefix}-{index}`, or those `--owned-by` chose).
    stream_names: Vec<String>,
    next_seq: AtomicU64,
    sent_ok: AtomicU64,
    received: AtomicU64,
    publishing: AtomicBool,
    last_receive_micros: AtomicU64,
}

struct PublisherReport {
    send_latency: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
}

struct ReceiverReport {
    e2e_latency: Histogram<u64>,
    ids: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    /// With `--ack-timeout`: the status of each handle's acknowledgement (0: the ack
    /// request itself failed).
    acks: BTreeMap<u16, u64>,
}

fn stream_name(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index}")
}

/// `{"t":<send time µs>,"p":"xxx…"}` padded to `size` bytes.
fn payload(size: usize) -> String {
    let head = format!("{{\"t\":{},\"p\":\"", now_micros());
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(size);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// The JSON body of send number `seq`, to `stream`.
fn send_body(args: &Args, stream: &str, seq: u64) -> String {
    let dedupe = args
        .dedupe_window
        .map(|w| format!(",\"dedupeWindowSeconds\":{w}"))
        .unwrap_or_default();
    if args.mode == Mode::Memory {
        format!(
            "{{\"streamId\":\"{stream}\",\"messageUuid\":\"{seq}\",\"inMemoryStreamSize\":{}{dedupe},\"message\":{}}}",
            args.stream_size,
            payload(args.message_size)
        )
    } else {
        format!(
            "{{\"streamId\":\"{stream}\",\"messageUuid\":\"{seq}\",\"writeToDB\":true{dedupe},\"message\":{}}}",
            payload(args.message_size)
        )
    }
}

async fn publisher(
    index: usize,
    args: Arc<Args>,
    client: HttpClient,
    shared: Arc<Shared>,
    deadline: Instant,
) -> anyhow::Result<PublisherReport> {
    let mut report = PublisherReport {
        send_latency: histogram()?,
        statuses: BTreeMap::new(),
        transport_errors: 0,
    };
    let mut url_index = index;
    loop {
        if args.count.is_none() && Instant::now() >= deadline {
            break;
        }
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        if args.count.is_some_and(|count| seq >= count) {
            break;
        }
        let body = send_body(
            &args,
            &shared.stream_names[(seq % args.streams as u64) as usize],
            seq,
        );
        url_index = (url_index + 1) % args.url.len();
        let base = shared
            .stream_urls
            .get((seq % args.streams as u64) as usize)
            .unwrap_or(&args.url[url_index]);
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{base}/api/v1/streams/send"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let started = Instant::now();
        match client.request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.into_body().collect().await;
                report
                    .send_latency
                    .saturating_record(started.elapsed().as_micros() as u64);
                *report.statuses.entry(status).or_default() += 1;
                if status == 200 {
                    shared.sent_ok.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => report.transport_errors += 1,
        }
    }
    Ok(report)
}

async fn receiver(
    index: usize,
    args: Arc<Args>,
    client: HttpClient,
    shared: Arc<Shared>,
    start: Instant,
) -> anyhow::Result<ReceiverReport> {
    let mut report = ReceiverReport {
        e2e_latency: histogram()?,
        ids: Vec::new(),
        statuses: BTreeMap::new(),
        transport_errors: 0,
        acks: BTreeMap::new(),
    };
    let persistent = args.mode != Mode::Memory;
    let mut owned: Vec<usize> = (0..args.streams)
        .filter(|s| s % args.receivers == index % args.receivers)
        .collect();
    // Competing consumers may double up on a queue; a log is read by exactly one receiver
    // here, so that "exactly once" can be checked.
    if owned.is_empty() {
        if persistent {
            return Ok(report);
        }
        owned.push(index % args.streams);
    }
    let mut tokens: Vec<Option<String>> = vec![None; owned.len()];
    let mut drain_deadline = None;
    let mut turn = 0;
    loop {
        if !shared.publishing.load(Ordering::Acquire) {
            let deadline = *drain_deadline
                .get_or_insert_with(|| Instant::now() + Duration::from_secs(args.drain));
            if shared.received.load(Ordering::Acquire) >= shared.sent_ok.load(Ordering::Acquire)
                || Instant::now() >= deadline
            {
                break;
            }
        }
        let slot = turn % owned.len();
        let stream = &shared.stream_names[owned[slot]];
        let url = shared
            .stream_urls
            .get(owned[slot])
            .unwrap_or(&args.url[(index + turn) % args.url.len()]);
        turn += 1;
        let mut uri = format!(
            "{url}/api/v1/streams/receive?streamId={stream}&timeoutSeconds={}",
            args.receive_timeout
        );
        if args.max_messages > 1 {
            uri.push_str(&format!("&maxMessages={}", args.max_messages));
        }
        if let Some(lease) = args.ack_timeout {
            uri.push_str(&format!("&ackTimeoutSeconds={lease}"));
        }
        if persistent {
            uri.push_str("&readFromDB=true");
            if let Some(token) = &tokens[slot] {
                uri.push_str(&format!("&dbResumeToken={token}"));
            }
        }
        let request = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .body(Full::new(Bytes::new()))?;
        let response = match client.request(request).await {
            Ok(response) => response,
            Err(_) => {
                report.transport_errors += 1;
                continue;
            }
        };
        let status = response.status().as_u16();
        *report.statuses.entry(status).or_default() += 1;
        let Ok(body) = response.into_body().collect().await else {
            report.transport_errors += 1;
            continue;
        };
        if status != 200 {
            continue;
        }
        let arrived = now_micros();
        let json: serde_json::Value =
            serde_json::from_slice(&body.to_bytes()).context("receive body")?;
        let messages = match json.get("messages").and_then(|m| m.as_array()) {
            Some(batch) => batch.clone(),
            None => vec![json],
        };
        for message in &messages {
            let id = message["messageUuid"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .context("messageUuid")?;
            let sent_at = message["message"]["t"].as_u64().context("message.t")?;
            report
                .e2e_latency
                .saturating_record(arrived.saturating_sub(sent_at).max(1));
            report.ids.push(id);
            if let Some(token) = message["dbResumeToken"].as_str() {
                tokens[slot] = Some(token.to_owned());
            }
        }
        if args.ack_timeout.is_some() {
            let handles: Vec<_> = messages
                .iter()
                .map(|m| m["receiptHandle"].clone())
                .collect();
            let body = serde_json::json!({"streamId": stream, "receiptHandles": handles});
            let request = Request::builder()
                .method(Method::POST)
                .uri(format!("{url}/api/v1/streams/ack"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))?;
            let answer = match client.request(request).await {
                Ok(answer) if answer.status() == 200 => answer.into_body().collect().await.ok(),
                _ => None,
            };
            let answer: Option<serde_json::Value> =
                answer.and_then(|body| serde_json::from_slice(&body.to_bytes()).ok());
            match answer.as_ref().and_then(|a| a["results"].as_array()) {
                Some(results) => {
                    for result in results {
                        let status = result["status"].as_u64().unwrap_or(0) as u16;
                        *report.acks.entry(status).or_default() += 1;
                    }
                }
                None => *report.acks.entry(0).or_default() += messages.len() as u64,
            }
        }
        shared
            .received
            .fetch_add(messages.len() as u64, Ordering::AcqRel);
        shared
            .last_receive_micros
            .store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
    Ok(report)
}

fn percentiles(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "n/a".into();
    }
    format!(
        "p50={}µs p90={}µs p99={}µs p99.9={}µs max={}µs",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    if let Some(count) = args.hold_waiters {
        if let Some(connections) = args.h2_connections {
            return waiters::hold_waiters_h2(&args, count, connections).await;
        }
        anyhow::ensure!(!args.sse, "--sse needs --h2-connections");
        return waiters::hold_waiters(&args, count).await;
    }
    anyhow::ensure!(
        args.message_size >= 24,
        "--message-size must be at least 24"
    );
    anyhow::ensure!(
        args.streams > 0 && args.publishers > 0,
        "--streams and --publishers must be above 0 (--receivers 0 measures sends alone)"
    );
    let prefix: Arc<str> = args
        .stream_prefix
        .clone()
        .unwrap_or_else(|| format!("loadgen-{}-{}", std::process::id(), now_micros()))
        .into();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(args.http2)
        .build(connector);
    let (stream_names, stream_urls) = if args.route == RouteChoice::Any {
        anyhow::ensure!(
            args.owned_by.is_none(),
            "--owned-by needs --route owner|other"
        );
        let names = (0..args.streams).map(|i| stream_name(&prefix, i)).collect();
        (names, Vec::new())
    } else {
        routing::route_streams(&client, &args, &prefix).await?
    };
    let shared = Arc::new(Shared {
        stream_urls,
        stream_names,
        ..Shared::default()
    });
    shared.publishing.store(true, Ordering::Release);

    println!(
        "ipubsub-loadgen: mode={:?} urls={} publishers={} receivers={} streams={} message_size={}B {}",
        args.mode,
        args.url.join(","),
        args.publishers,
        args.receivers,
        args.streams,
        args.message_size,
        args.count
            .map_or(format!("duration={}s", args.duration), |c| format!(
                "count={c}"
            ))
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let spawn_receivers = |start: Instant| -> Vec<_> {
        (0..args.receivers)
            .map(|j| {
                tokio::spawn(receiver(
                    j,
                    args.clone(),
                    client.clone(),
                    shared.clone(),
                    start,
                ))
            })
            .collect()
    };
    let live = args.mode != Mode::Replay;
    let mut receivers = if live {
        spawn_receivers(start)
    } else {
        Vec::new()
    };
    let publishers: Vec<_> = (0..args.publishers)
        .map(|i| {
            if args.pipeline > 1 {
                tokio::spawn(pipelined::pipelined_publisher(
                    i,
                    args.clone(),
                    shared.clone(),
                    deadline,
                ))
            } else {
                tokio::spawn(publisher(
                    i,
                    args.clone(),
                    client.clone(),
                    shared.clone(),
                    deadline,
                ))
            }
        })
        .collect();

    let mut send_latency = histogram()?;
    let mut statuses = BTreeMap::<String, u64>::new();
    for p in publishers {
        let report = p.await??;
        send_latency.add(&report.send_latency)?;
        for (status, n) in report.statuses {
            *statuses.entry(format!("send {status}")).or_default() += n;
        }
        if report.transport_errors > 0 {
            *statuses.entry("send transport-error".into()).or_default() += report.transport_errors;
        }
    }
    let publish_time = start.elapsed();
    shared.publishing.store(false, Ordering::Release);
    if !live {
        // Replay: the log is complete; now time reading all of it back from the start.
        receivers = spawn_receivers(Instant::now());
    }

    let mut e2e = histogram()?;
    let mut seen = HashSet::new();
    let mut duplicates = 0u64;
    for r in receivers {
        let report = r.await??;
        e2e.add(&report.e2e_latency)?;
        for id in report.ids {
            if !seen.insert(id) {
                duplicates += 1;
            }
        }
        for (status, n) in report.statuses {
            *statuses.entry(format!("receive {status}")).or_default() += n;
        }
        if report.transport_errors > 0 {
            *statuses
                .entry("receive transport-error".into())
                .or_default() += report.transport_errors;
        }
        for (status, n) in report.acks {
            *statuses.entry(format!("ack {status}")).or_default() += n;
        }
    }
    let sent_ok = shared.sent_ok.load(Ordering::Acquire);
    let delivered = seen.len() as u64;
    let delivery_time = Duration::from_micros(shared.last_receive_micros.load(Ordering::Relaxed))
        .max(Duration::from_millis(1));
    let missing = sent_ok.saturating_sub(delivered);

    println!(
        "sent:      {sent_ok} accepted in {:.2}s = {:.0} msg/s",
        publish_time.as_secs_f64(),
        sent_ok as f64 / publish_time.as_secs_f64()
    );
    println!(
        "delivered: {delivered} in {:.2}s = {:.0} msg/s",
        delivery_time.as_secs_f64(),
        delivered as f64 / delivery_time.as_secs_f64()
    );
    println!("send latency: {}", percentiles(&send_latency));
    println!("end-to-end latency: {}", percentiles(&e2e));
    println!(
        "responses: {}",
        statuses
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if args.receivers == 0 {
        println!("exactly once: not checked (no receivers)");
        return Ok(());
    }
    let exact = duplicates == 0 && missing == 0;
    println!(
        "exactly once: {} (duplicates={duplicates}, missing={missing})",
        if exact { "yes" } else { "NO" }
    );
    if args.check && !exact {
        std::process::exit(1);
    }
    Ok(())
}
