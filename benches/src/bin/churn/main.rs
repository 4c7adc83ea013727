//! `ipubsub-churn`: runs a cluster of real `ipubsub-server` processes on one shared database
//! while a nemesis restarts (SIGTERM), kills (`kill -9`) and pauses (SIGSTOP beyond the
//! suspicion timeout) its nodes, optionally with one node's clock shifted; producers send
//! persistent messages and live readers follow their streams by resume token, both through
//! random nodes. Before the load, 40 TTL probes (messages whose TTL outlives the run, sent
//! through the first and the last node, whose clock is the shifted one) go to a stream of
//! their own. Afterwards every stream is read from its start through two nodes, the probes
//! through every node, and the checker counts what the cluster promised and did not keep
//! (see `check.rs`).
//!
//! ```text
//! ipubsub-churn --server target/release/ipubsub-server --backend postgres --seconds 40
//! ```
//! Prints the counts as one JSON line; with `--check`, exits 1 if any is not zero.

mod check;
mod follow;
mod memory;
mod net;
mod nodes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use check::{Followed, Produced};
use ipubsub_core::{ResumeToken, StreamId};
use nodes::{NodeProc, Setup};

#[derive(Debug, Parser)]
#[command(about = "Churn test: real nodes, a nemesis, and a checker of what the cluster promised")]
struct Args {
    /// The server binary.
    #[arg(long, default_value = "target/release/ipubsub-server")]
    server: PathBuf,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The shared store: postgres, mysql, mongodb or cassandra.
    #[arg(long, default_value = "postgres")]
    backend: String,
    /// The store's URL (or Cassandra node); the one scripts/services.sh starts by default.
    #[arg(long)]
    store: Option<String>,
    /// How long the load and the nemesis run.
    #[arg(long, default_value_t = 40)]
    seconds: u64,
    /// Streams, each with one producer and one live reader.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Faults, in turn, one every `--every` seconds: term, kill, stop, cut (a partition: the
    /// node loses the other nodes for 10 s but keeps its clients and the store; needs root,
    /// as it runs every node in a network namespace of its own).
    #[arg(long, value_delimiter = ',', default_value = "term,kill,stop")]
    nemesis: Vec<String>,
    /// Seconds between faults.
    #[arg(long, default_value_t = 6)]
    every: u64,
    /// Shift one node's clock by this many seconds (libfaketime); 0: none.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    clock_offset: i64,
    /// Exit 1 when any count is not zero.
    #[arg(long)]
    check: bool,
    /// `log`: the persistent log under the nemesis (the default); `memory`: in-memory queues
    /// and sync-match streams under graceful restarts (`--backend memory`); `follow`: how
    /// long receivers waiting on in-memory streams take to follow their stream to a joining
    /// node (no nemesis, `--backend memory`).
    #[arg(long, default_value = "log")]
    scenario: String,
    /// Internal: serve these relays (`LISTEN=TO`) and nothing else; how the harness reaches
    /// into a node's network namespace (see `net.rs`).
    #[arg(long, hide = true)]
    relay: Vec<net::Relay>,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn storage_yaml(backend: &str, store: Option<&str>) -> anyhow::Result<String> {
    let yaml = match backend {
        "postgres" => format!(
            "storage:\n  backend: postgres\n  postgres:\n    url: \"{}\"",
            store.unwrap_or("postgres://ipubsub:ipubsub@127.0.0.1:5432/ipubsub")
        ),
        "mysql" => format!(
            "storage:\n  backend: mysql\n  mysql:\n    url: \"{}\"",
            store.unwrap_or("mysql://ipubsub:ipubsub@127.0.0.1:3306/ipubsub")
        ),
        "mongodb" => format!(
            "storage:\n  backend: mongodb\n  mongodb:\n    url: \"{}\"",
            store.unwrap_or("mongodb://127.0.0.1:27017/")
        ),
        "cassandra" => format!(
            "storage:\n  backend: cassandra\n  cassandra:\n    nodes: [\"{}\"]",
            store.unwrap_or("127.0.0.1:9042")
        ),
        "memory" => "storage:\n  backend: memory".to_owned(),
        other => anyhow::bail!("unknown backend {other}"),
    };
    Ok(yaml)
}

/// The store's address in `backend`'s URL (the default one unless `store` is given).
fn store_addr(backend: &str, store: Option<&str>) -> anyhow::Result<SocketAddr> {
    let default = match backend {
        "postgres" => "127.0.0.1:5432",
        "mysql" => "127.0.0.1:3306",
        "mongodb" => "127.0.0.1:27017",
        "cassandra" => "127.0.0.1:9042",
        other => anyhow::bail!("{other} has no store to reach from a namespace"),
    };
    let url = store.unwrap_or(default);
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = rest.split('/').next().unwrap_or(rest);
    host.parse()
        .with_context(|| format!("the store's address in {url} (an IP address and a port)"))
}

/// The nodes' HTTP addresses and which of them serve now (shared with the clients).
#[derive(Clone)]
struct Live {
    addrs: Arc<Vec<SocketAddr>>,
    serving: Arc<Mutex<Vec<bool>>>,
}

impl Live {
    /// A node to talk to: a random one, serving or not (a client does not know).
    fn any(&self, salt: u64) -> SocketAddr {
        let n = self.addrs.len() as u64;
        self.addrs[(pseudo_random(salt) % n) as usize]
    }

    /// The index of the node at `addr`.
    fn index(&self, addr: SocketAddr) -> usize {
        self.addrs
            .iter()
            .position(|a| *a == addr)
            .unwrap_or(usize::MAX)
    }

    /// Records which of `nodes` serve now.
    fn set_serving(&self, nodes: &[NodeProc]) {
        if let Ok(mut serving) = self.serving.lock() {
            for (s, n) in serving.iter_mut().zip(nodes) {
                *s = n.is_serving();
            }
        }
    }

    /// The serving nodes, with their index.
    fn serving(&self) -> Vec<(usize, SocketAddr)> {
        let Ok(serving) = self.serving.lock() else {
            return Vec::new();
        };
        self.addrs
            .iter()
            .copied()
            .enumerate()
            .zip(serving.iter())
            .filter(|(_, s)| **s)
            .map(|(a, _)| a)
            .collect()
    }

    /// Two different serving nodes, for the final reads.
    fn two_serving(&self) -> Option<(SocketAddr, SocketAddr)> {
        let serving = self.serving.lock().ok()?;
        let up: Vec<_> = self
            .addrs
            .iter()
            .zip(serving.iter())
            .filter(|(_, s)| **s)
            .map(|(a, _)| *a)
            .collect();
        Some((*up.first()?, *up.get(1).or(up.first())?))
    }
}

/// A cheap, seedless spread of request targets (the harness needs variety, not quality).
fn pseudo_random(salt: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    (nanos ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 17
}

async fn call(
    client: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Option<(u16, Value)> {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .ok()?;
    let exchange = async {
        let response = client.request(request).await.ok()?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.ok()?.to_bytes();
        Some((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}

/// `GET path` from `addr`, waiting up to `timeout`.
async fn get(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Option<(u16, Value)> {
    call(client, addr, Method::GET, path, Bytes::new(), timeout).await
}

/// `POST /api/v1/streams/send` of `body` to `addr`, waiting up to 5 s.
async fn send(client: &HttpClient, addr: SocketAddr, body: &Value) -> Option<(u16, Value)> {
    let body = Bytes::from(body.to_string());
    let path = "/api/v1/streams/send";
    call(
        client,
        addr,
        Method::POST,
        path,
        body,
        Duration::from_secs(5),
    )
    .await
}

/// Sends `writeToDB` messages to `stream` one at a time until `stop`, through random nodes.
async fn produce(
    client: HttpClient,
    live: Live,
    stream: String,
    producer: usize,
    stop: Arc<AtomicBool>,
    started: Instant,
) -> (Produced, usize) {
    let mut produced = Produced {
        stream: stream.clone(),
        ..Produced::default()
    };
    let mut failed = 0;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("p{producer}-{n}");
        let body =
            json!({"streamId": stream, "messageUuid": id, "message": {"n": n}, "writeToDB": true});
        let addr = live.any(n ^ (producer as u64) << 32);
        match send(&client, addr, &body).await {
            Some((200, answer)) => {
                produced.acked.push(id);
                let node = live.index(addr);
                let at = started.elapsed().as_millis();
                let told = answer["dbResumeToken"]
                    .as_str()
                    .map_or_else(|| "?".to_owned(), |t| position(&stream, t));
                produced
                    .via
                    .push(format!("n{node} at {at} ms, told {told}"));
            }
            _ => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (produced, failed)
}

/// Sends `count` `writeToDB` messages with a TTL of `ttl` to `stream`, alternately through
/// the first and the last node (the one whose clock is off, in a clock-offset run), before
/// the nemesis starts; returns the ids acknowledged. Read back at the end through every node,
/// none may be missing: their TTL has not run out on any clock that accepted them.
async fn send_probes(
    client: &HttpClient,
    live: &Live,
    stream: &str,
    count: usize,
    ttl: Duration,
) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0..count {
        let id = format!("probe-{i}");
        let body = json!({
            "streamId": stream, "messageUuid": id, "message": {"probe": i},
            "writeToDB": true, "dbTTLSeconds": ttl.as_secs(),
        });
        let addr = live.addrs[if i % 2 == 0 { 0 } else { live.addrs.len() - 1 }];
        if let Some((200, _)) = send(client, addr, &body).await {
            acked.push(id);
        }
    }
    acked
}

/// The position a resume token of `stream` stands for, as `epoch:counter`.
fn position(stream: &str, token: &str) -> String {
    let seq = StreamId::new(stream)
        .ok()
        .and_then(|s| ResumeToken::decode(token, &s).ok())
        .map(ResumeToken::seq);
    seq.map_or_else(
        || "?".to_owned(),
        |seq| format!("{}:{}", seq.epoch(), seq.counter()),
    )
}

/// Follows `stream` from its start by resume token, through random nodes, until `stop`.
async fn follow(
    client: HttpClient,
    live: Live,
    stream: String,
    stop: Arc<AtomicBool>,
    started: Instant,
) -> Followed {
    let mut followed = Followed {
        stream: stream.clone(),
        ..Followed::default()
    };
    let mut token: Option<String> = None;
    let mut turn = 0u64;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        let mut path = format!(
            "/api/v1/streams/receive?streamId={stream}&readFromDB=true&timeoutSeconds=1&maxMessages=100"
        );
        if let Some(token) = &token {
            path.push_str("&dbResumeToken=");
            path.push_str(token);
        }
        let addr = live.any(turn.wrapping_mul(7919) ^ stream.len() as u64);
        let asked = started.elapsed().as_millis();
        let answer = get(&client, addr, &path, Duration::from_secs(5)).await;
        let Some((200, body)) = answer else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let node = live.index(addr);
        let answered = started.elapsed().as_millis();
        let after = token
            .as_deref()
            .map_or_else(|| "the start".to_owned(), |t| position(&stream, t));
        for message in body["messages"].as_array().into_iter().flatten() {
            if let (Some(id), Some(t)) = (
                message["messageUuid"].as_str(),
                message["dbResumeToken"].as_str(),
            ) {
                followed.received.push(id.to_owned());
                followed.via.push(format!(
                    "n{node} (asked after {after} at {asked} ms, answered at {answered} ms)"
                ));
                token = Some(t.to_owned());
            }
        }
    }
    followed
}

/// Every message of `stream` from its start, through `addr`, with its position, or `None` if
/// a read failed.
async fn read_all(
    client: &HttpClient,
    addr: SocketAddr,
    stream: &str,
) -> Option<Vec<(String, String)>> {
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = format!(
            "/api/v1/streams/receive?streamId={stream}&readFromDB=true&timeoutSeconds=0&maxMessages=1000"
        );
        if let Some(token) = &token {
            path.push_str("&dbResumeToken=");
            path.push_str(token);
        }
        match get(client, addr, &path, Duration::from_secs(10)).await? {
            (200, body) => {
                let messages = body["messages"].as_array()?;
                for message in messages {
                    let id = message["messageUuid"].as_str()?.to_owned();
                    let at = message["dbResumeToken"].as_str()?.to_owned();
                    ids.push((id, position(stream, &at)));
                    token = Some(at);
                }
            }
            (424, _) => return Some(ids),
            _ => return None,
        }
    }
}

/// [`read_all`] of `stream` through `addr`, tried up to three times, 2 s apart: the last
/// faults may still be settling (an acquisition waiting out a lock the store holds for a
/// paused or restarted node). Counts the retries in `retried`; fails after the third.
async fn settled_read(
    client: &HttpClient,
    addr: SocketAddr,
    stream: &str,
    retried: &mut usize,
) -> anyhow::Result<Vec<(String, String)>> {
    for attempt in 1..=3 {
        if let Some(ids) = read_all(client, addr, stream).await {
            return Ok(ids);
        }
        if attempt < 3 {
            *retried += 1;
            eprintln!("final read of {stream} through {addr} failed; retrying in 2 s");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    anyhow::bail!("final read of {stream} through {addr} failed three times")
}

/// The nemesis: one fault at a time, every `every`, on a node other than the last one hit.
fn nemesis(
    setup: &Setup,
    net: Option<&net::Net>,
    nodes: &mut [NodeProc],
    live: &Live,
    faults: &[String],
    every: Duration,
    (run_started, until): (Instant, Instant),
) -> anyhow::Result<Vec<String>> {
    let mut log = Vec::new();
    let mut turn = 0usize;
    while Instant::now() + every < until {
        std::thread::sleep(every);
        let fault = &faults[turn % faults.len()];
        let victim = turn % nodes.len();
        turn += 1;
        let started = Instant::now();
        let node = &mut nodes[victim];
        match fault.as_str() {
            "term" => {
                node.terminate(Duration::from_secs(15))?;
                live.set_serving(nodes);
                std::thread::sleep(Duration::from_secs(1));
                nodes::start(setup, &mut nodes[victim], Duration::from_secs(20))?;
            }
            "kill" => {
                node.kill()?;
                live.set_serving(nodes);
                std::thread::sleep(Duration::from_secs(1));
                nodes::start(setup, &mut nodes[victim], Duration::from_secs(20))?;
            }
            "stop" => {
                node.pause()?;
                live.set_serving(nodes);
                // Well beyond the 10 s a suspected owner is routed around, and gossip's
                // failure detection at 100 ms rounds.
                std::thread::sleep(Duration::from_secs(6));
                nodes[victim].resume()?;
            }
            "cut" => {
                let net = net.context("a cut needs the nodes in network namespaces")?;
                net.cut(victim)?;
                // The node still serves its clients: it is cut off from the other nodes
                // only, long enough for both sides to declare the other dead.
                std::thread::sleep(Duration::from_secs(10));
                net.heal(victim)?;
            }
            other => anyhow::bail!("unknown fault {other}"),
        }
        live.set_serving(nodes);
        log.push(format!(
            "{fault} n{victim} at {} ms ({} ms)",
            started.duration_since(run_started).as_millis(),
            started.elapsed().as_millis()
        ));
    }
    Ok(log)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.relay.is_empty() {
        return net::serve_all(args.relay).await;
    }
    let dir = tempfile_dir()?;
    let partitioned = args.nemesis.iter().any(|f| f == "cut");
    let setup = Setup {
        server: args.server.clone(),
        storage_yaml: storage_yaml(&args.backend, args.store.as_deref())?,
        dir: dir.clone(),
        skewed: (args.clock_offset != 0).then_some((args.nodes - 1, args.clock_offset)),
        netns: partitioned.then(|| format!("ipc{}", std::process::id())),
    };
    let run = format!("churn-{}", std::process::id());
    let mut nodes = nodes::plan(&setup, args.nodes, &run)?;
    let net = match &setup.netns {
        Some(prefix) => {
            let clients: Vec<_> = nodes.iter().map(|n| n.http).collect();
            let store = (args.backend != "memory")
                .then(|| store_addr(&args.backend, args.store.as_deref()))
                .transpose()?;
            Some(net::Net::create(prefix, &clients, store, &dir)?)
        }
        None => None,
    };
    if args.scenario != "log" {
        let result = match args.scenario.as_str() {
            "follow" => follow::run(&setup, nodes, &run).await,
            "memory" => {
                let every = Duration::from_secs(args.every);
                memory::run(&setup, nodes, &run, args.seconds, every).await
            }
            other => Err(anyhow::anyhow!("unknown scenario {other}")),
        };
        if result.is_ok() {
            std::fs::remove_dir_all(&dir).ok();
        } else {
            eprintln!("node logs kept in {}", dir.display());
        }
        return result;
    }
    for node in &mut nodes {
        nodes::start(&setup, node, Duration::from_secs(30))?;
    }
    let live = Live {
        addrs: Arc::new(nodes.iter().map(|n| n.http).collect()),
        serving: Arc::new(Mutex::new(vec![true; nodes.len()])),
    };
    // Let gossip settle, so the run starts on a stable cluster.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http();
    // Messages whose TTL outlives the run by 50 s: none may be missing at the end.
    let probe_stream = format!("{run}-ttl");
    let probe_ttl = Duration::from_secs(args.seconds + 50);
    let probes = send_probes(&client, &live, &probe_stream, 40, probe_ttl).await;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let streams: Vec<String> = (0..args.streams).map(|i| format!("{run}-s{i}")).collect();
    let producers: Vec<_> = streams
        .iter()
        .enumerate()
        .map(|(p, s)| {
            tokio::spawn(produce(
                client.clone(),
                live.clone(),
                s.clone(),
                p,
                stop.clone(),
                started,
            ))
        })
        .collect();
    let readers: Vec<_> = streams
        .iter()
        .map(|s| {
            tokio::spawn(follow(
                client.clone(),
                live.clone(),
                s.clone(),
                stop.clone(),
                started,
            ))
        })
        .collect();

    let until = Instant::now() + Duration::from_secs(args.seconds);
    let faults = args.nemesis.clone();
    let every = Duration::from_secs(args.every);
    let (nemesis_live, nemesis_setup) = (live.clone(), setup.clone());
    let nemesis = tokio::task::spawn_blocking(move || {
        let log = if faults.is_empty() || faults == ["none"] {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            Ok(Vec::new())
        } else {
            nemesis(
                &nemesis_setup,
                net.as_ref(),
                &mut nodes,
                &nemesis_live,
                &faults,
                every,
                (started, until),
            )
        };
        (nodes, net, log)
    });
    let (nodes, net, faults_done) = nemesis.await.context("nemesis")?;
    let faults_done = faults_done?;
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::Relaxed);
    let mut produced = Vec::new();
    let mut failed_sends = 0;
    for producer in producers {
        let (p, failed) = producer.await?;
        failed_sends += failed;
        produced.push(p);
    }
    let mut followed = Vec::new();
    for reader in readers {
        followed.push(reader.await?);
    }
    // Readers were stopped mid-poll; the cluster settles before the final reads.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a, b) = live.two_serving().context("no serving node left")?;
    let mut finals = HashMap::new();
    let mut positions = HashMap::new();
    let mut retried_reads = 0;
    for stream in &streams {
        let first = settled_read(&client, a, stream, &mut retried_reads).await?;
        let second = settled_read(&client, b, stream, &mut retried_reads).await?;
        positions.insert(
            stream.clone(),
            first.iter().cloned().collect::<HashMap<_, _>>(),
        );
        let ids = |read: Vec<(String, String)>| read.into_iter().map(|(id, _)| id).collect();
        finals.insert(stream.clone(), [ids(first), ids(second)]);
    }
    let mut counts = check::check(&produced, &followed, &finals);
    let mut probe_reads = Vec::new();
    for (_, addr) in live.serving() {
        let read = settled_read(&client, addr, &probe_stream, &mut retried_reads).await?;
        probe_reads.push(read.into_iter().map(|(id, _)| id).collect());
    }
    counts.expired_early = check::missing(&probes, &probe_reads);
    let acked: usize = produced.iter().map(|p| p.acked.len()).sum();
    let given: usize = followed.iter().map(|f| f.received.len()).sum();
    let report = json!({
        "backend": args.backend,
        "nodes": args.nodes,
        "seconds": args.seconds,
        "clock_offset_seconds": args.clock_offset,
        "faults": faults_done,
        "acknowledged": acked,
        "failed_sends": failed_sends,
        "given_to_live_readers": given,
        "lost": counts.lost,
        "duplicated": counts.duplicated,
        "skipped": counts.skipped,
        "reordered": counts.reordered,
        "disagreeing": counts.disagreeing,
        "vanished": counts.vanished,
        "ttl_probes": probes.len(),
        "expired_early": counts.expired_early,
        "retried_final_reads": retried_reads,
    });
    println!("{report}");
    drop(nodes);
    drop(net);
    if counts.clean() {
        std::fs::remove_dir_all(&dir).ok();
    } else {
        for line in check::lost(&produced, &finals).iter().take(20) {
            eprintln!("lost: {line}");
        }
        for line in check::skipped(&produced, &followed, &finals, &positions)
            .iter()
            .take(20)
        {
            eprintln!("skipped: {line}");
        }
        eprintln!("node logs kept in {}", dir.display());
    }
    if args.check && !counts.clean() {
        std::process::exit(1);
    }
    if acked == 0 || probes.is_empty() {
        anyhow::bail!("no send (or no TTL probe) was acknowledged: the run measured nothing");
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ipubsub-churn-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
