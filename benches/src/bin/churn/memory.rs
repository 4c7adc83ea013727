//! `--scenario memory`: in-memory streams while nodes leave and come back gracefully.
//!
//! Producers send to blocking queues (size 1000) and to sync-match streams, one message at a
//! time each, through random nodes; receivers long-poll every stream through random nodes;
//! meanwhile the nemesis restarts one node at a time with SIGTERM (graceful: an in-memory
//! message lives on one node, and `kill -9` loses it by design). Afterwards the load stops,
//! the cluster settles, and every queue is read empty through every node. Counts:
//! - **lost**: a queued message answered 200 and never received;
//! - **duplicated**: a message received more than once;
//! - **phantom**: a sync-match send answered 200 whose message no receiver got.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::nodes::{self, NodeProc, Setup};
use crate::{HttpClient, Live, get, send};

/// Streams of each kind.
const STREAMS: usize = 4;

/// What one run counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub lost: usize,
    pub duplicated: usize,
    pub phantom: usize,
}

/// The counts of acknowledged queued messages, acknowledged sync-match messages, and every
/// message any receiver got.
pub fn count(queued: &[String], synced: &[String], received: &[String]) -> Counts {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in received {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    Counts {
        lost: queued
            .iter()
            .filter(|id| !seen.contains_key(id.as_str()))
            .count(),
        duplicated: seen.values().map(|n| n - 1).sum(),
        phantom: synced
            .iter()
            .filter(|id| !seen.contains_key(id.as_str()))
            .count(),
    }
}

/// Sends to `stream` until `stop`, one at a time, through random nodes; returns the ids
/// answered 200.
async fn produce(
    client: HttpClient,
    live: Live,
    stream: String,
    size: u32,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("{stream}-{n}");
        let body = json!({"streamId": stream, "messageUuid": id, "message": n,
            "inMemoryStreamSize": size, "blockingSendTimeoutSeconds": 1});
        match send(&client, live.any(n ^ stream.len() as u64), &body).await {
            Some((200, _)) => acked.push(id),
            // Refused or timed out: not accepted. Pace the retry.
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    acked
}

/// Receives from `stream` until `stop`, through random nodes, pausing `pause` after each
/// message (so that sync-match senders spend most of their time waiting, where a move
/// finds them); returns the ids received.
async fn consume(
    client: HttpClient,
    live: Live,
    stream: String,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let mut got = Vec::new();
    let mut turn = 0u64;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        let path = format!("/api/v1/streams/receive?streamId={stream}&timeoutSeconds=1");
        let addr = live.any(turn.wrapping_mul(31) ^ stream.len() as u64);
        match get(&client, addr, &path, Duration::from_secs(5)).await {
            Some((200, body)) => {
                got.extend(id_of(&body));
                tokio::time::sleep(pause).await;
            }
            Some((424, _)) => {}
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    got
}

fn id_of(body: &Value) -> Option<String> {
    body["messageUuid"].as_str().map(str::to_owned)
}

/// Reads `stream` empty through each serving node.
async fn drain(client: &HttpClient, live: &Live, stream: &str) -> Vec<String> {
    let mut got = Vec::new();
    for (_, addr) in live.serving() {
        let path = format!("/api/v1/streams/receive?streamId={stream}&timeoutSeconds=0");
        while let Some((200, body)) = get(client, addr, &path, Duration::from_secs(5)).await {
            got.extend(id_of(&body));
        }
    }
    got
}

/// Runs the scenario: `nodes` all started, `seconds` of load with a graceful restart every
/// `every`. Prints the counts as one JSON line; fails if any is not zero.
pub async fn run(
    setup: &Setup,
    mut nodes: Vec<NodeProc>,
    run: &str,
    seconds: u64,
    every: Duration,
) -> anyhow::Result<()> {
    for node in &mut nodes {
        nodes::start(setup, node, Duration::from_secs(30))?;
    }
    let live = Live {
        addrs: Arc::new(nodes.iter().map(|n| n.http).collect()),
        serving: Arc::new(std::sync::Mutex::new(vec![true; nodes.len()])),
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<(String, u32)> = (0..STREAMS)
        .flat_map(|i| [(format!("{run}-q{i}"), 1000), (format!("{run}-sync{i}"), 0)])
        .collect();
    let producers: Vec<_> = streams
        .iter()
        .map(|(s, size)| {
            let task = produce(client.clone(), live.clone(), s.clone(), *size, stop.clone());
            (*size, tokio::spawn(task))
        })
        .collect();
    let consumers: Vec<_> = streams
        .iter()
        .map(|(s, size)| {
            let pause = Duration::from_millis(if *size == 0 { 100 } else { 0 });
            let task = consume(client.clone(), live.clone(), s.clone(), pause, stop.clone());
            tokio::spawn(task)
        })
        .collect();

    let until = Instant::now() + Duration::from_secs(seconds);
    let nemesis_live = live.clone();
    let nemesis_setup = setup.clone();
    let restarts =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<NodeProc>, usize)> {
            let mut restarts = 0;
            while Instant::now() + every < until {
                std::thread::sleep(every);
                let victim = restarts % nodes.len();
                nodes[victim].terminate(Duration::from_secs(15))?;
                nemesis_live.set_serving(&nodes);
                std::thread::sleep(Duration::from_secs(1));
                nodes::start(&nemesis_setup, &mut nodes[victim], Duration::from_secs(20))?;
                nemesis_live.set_serving(&nodes);
                restarts += 1;
            }
            Ok((nodes, restarts))
        });
    let (nodes, restarts) = restarts.await??;
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::Relaxed);
    let (mut queued, mut synced) = (Vec::new(), Vec::new());
    for (size, producer) in producers {
        let acked = producer.await?;
        if size == 0 {
            synced.extend(acked)
        } else {
            queued.extend(acked)
        }
    }
    let mut received = Vec::new();
    for consumer in consumers {
        received.extend(consumer.await?);
    }
    // Let hand-offs and strays settle, then read what is left.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (stream, _) in &streams {
        received.extend(drain(&client, &live, stream).await);
    }
    let counts = count(&queued, &synced, &received);
    println!(
        "{}",
        json!({
            "scenario": "memory", "nodes": nodes.len(), "seconds": seconds,
            "graceful_restarts": restarts, "queued_acknowledged": queued.len(),
            "sync_acknowledged": synced.len(), "received": received.len(),
            "lost": counts.lost, "duplicated": counts.duplicated, "phantom": counts.phantom,
        })
    );
    drop(nodes);
    if counts != Counts::default() {
        anyhow::bail!("in-memory promises broken: {counts:?}");
    }
    if queued.is_empty() || synced.is_empty() {
        anyhow::bail!("nothing was acknowledged: the run measured nothing");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn lost_duplicated_and_phantom_are_counted() {
        let c = count(&ids("a b c"), &ids("x y"), &ids("a a c x"));
        assert_eq!(
            c,
            Counts {
                lost: 1,
                duplicated: 1,
                phantom: 1
            }
        );
        assert_eq!(count(&ids("a"), &ids("x"), &ids("x a")), Counts::default());
    }
}
