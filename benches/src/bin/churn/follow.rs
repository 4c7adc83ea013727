//! `--scenario follow`: how long a receiver waiting on an in-memory stream takes to get a
//! message sent right after its stream moved to a joining node.
//!
//! All nodes but the last start; one receiver per stream long-polls (20 s) through the
//! first nodes, polling again at once on every `424`; then the last node joins, and once it
//! serves, one message per stream is sent through the first node. Each receiver's time is
//! from that send to its answer. A receiver left waiting on the old owner gets its message
//! only after its long-poll times out (20 s); one that is answered at the move and polls
//! again gets it within the rebalancer's tick. The run fails if a receiver missed its
//! message or took over a second.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::nodes::{self, NodeProc, Setup};
use crate::{HttpClient, get, send};

/// Streams, each with one waiting receiver.
const STREAMS: usize = 200;
/// Each receive's long-poll.
const POLL: Duration = Duration::from_secs(20);

/// Runs the scenario on `nodes` (none started yet) and prints its figures as one JSON line.
pub async fn run(setup: &Setup, mut nodes: Vec<NodeProc>, run: &str) -> anyhow::Result<()> {
    let (joining, first) = nodes
        .split_last_mut()
        .ok_or_else(|| anyhow::anyhow!("no nodes"))?;
    for node in first.iter_mut() {
        nodes::start(setup, node, Duration::from_secs(30))?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let first_addrs: Vec<_> = first.iter().map(|n| n.http).collect();
    // When each stream's message was sent; its receiver measures from it. (Measured from the
    // start of the 200 sequential sends, the last receivers' times were mostly the send loop.)
    let sent: Arc<Vec<OnceLock<Instant>>> =
        Arc::new((0..STREAMS).map(|_| OnceLock::new()).collect());
    let mut receivers = tokio::task::JoinSet::new();
    for i in 0..STREAMS {
        let (client, sent) = (client.clone(), sent.clone());
        let addr = first_addrs[i % first_addrs.len()];
        let path = format!(
            "/api/v1/streams/receive?streamId={run}-f{i}&timeoutSeconds={}",
            POLL.as_secs()
        );
        receivers.spawn(async move {
            let deadline = Instant::now() + POLL * 2;
            while Instant::now() < deadline {
                let answer = get(&client, addr, &path, POLL * 2).await;
                match answer {
                    Some((200, _)) => {
                        return sent[i].get().map(Instant::elapsed);
                    }
                    Some((424, _)) => {}
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            None
        });
    }
    // Every receiver waits; then the last node joins and takes its streams.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let join = Instant::now();
    nodes::start(setup, joining, Duration::from_secs(30))?;
    let joined_in = join.elapsed();
    let started = Instant::now();
    for (i, at) in sent.iter().enumerate() {
        let body = json!({"streamId": format!("{run}-f{i}"), "messageUuid": format!("f{i}"), "message": i});
        let _ = at.set(Instant::now());
        send(&client, first_addrs[0], &body).await;
    }
    let sending = started.elapsed();
    let mut took = Vec::new();
    let mut missed = 0;
    while let Some(joined) = receivers.join_next().await {
        match joined? {
            Some(t) => took.push(t),
            None => missed += 1,
        }
    }
    took.sort();
    let ms = |d: Option<&Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
    let over_a_second = took.iter().filter(|t| **t > Duration::from_secs(1)).count();
    let report = json!({
        "scenario": "follow",
        "nodes": nodes.len(),
        "receivers": STREAMS,
        "join_ms": joined_in.as_millis(),
        "sending_ms": sending.as_millis(),
        "median_ms": ms(took.get(took.len() / 2)),
        "p99_ms": ms(took.get(took.len() * 99 / 100)),
        "max_ms": ms(took.last()),
        "over_a_second": over_a_second,
        "missed": missed,
    });
    println!("{report}");
    drop(nodes);
    if missed + over_a_second > 0 {
        anyhow::bail!(
            "{missed} receivers never got their message, {over_a_second} took over a second"
        );
    }
    Ok(())
}
