//! Three real server processes: what a graceful leave hands over, and what it answers the
//! requests waiting on it.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{Client, TestResult};
use hyper::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_hands_over_every_buffered_message() -> TestResult {
    let mut cluster = Cluster::start(3);
    cluster.converge(3, Duration::from_secs(15)).await;
    let streams = 60;
    for i in 0..streams {
        let (status, _) = cluster
            .node(i % 3)
            .send(
                json!({"streamId": format!("h{i}"), "messageUuid": format!("m{i}"), "message": i}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let mut leaving = cluster.nodes[1].take().ok_or("node 1")?;
    let started = Instant::now();
    assert!(
        leaving.terminate(Duration::from_secs(15)).success(),
        "a leaving node exits 0"
    );
    println!("node-1 left in {:?}", started.elapsed());
    cluster.converge(2, Duration::from_secs(10)).await;
    let received = cluster
        .take_numbered("h", streams, |i| if i % 2 == 0 { 0 } else { 2 })
        .await;
    assert_eq!(
        received,
        streams,
        "messages lost across the leave: {}",
        streams - received
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_answers_no_waiting_sync_match_send_200_and_hands_queues_over_in_order()
-> TestResult {
    let mut cluster = Cluster::start(3);
    cluster.converge(3, Duration::from_secs(15)).await;
    // Blocking queues of three, full, spread over every node.
    let streams = 30;
    for i in 0..streams {
        for m in 0..3 {
            let (status, body) = cluster
                .node(0)
                .send(
                    json!({"streamId": format!("q{i}"), "messageUuid": format!("q{i}-{m}"),
                    "message": m, "inMemoryStreamSize": 3, "blockingSendTimeoutSeconds": 1}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    // Sync-match sends that no receiver will ever take, waiting through node 1 (on it for
    // the streams it owns) when it leaves; longer than its 5 s shutdown grace, so that those
    // it forwarded to another owner are still waiting there when the grace ends: each must
    // still be answered (a reset would fail the client's request, and this test).
    let addr = cluster.node(1).addr;
    let mut waiting = tokio::task::JoinSet::new();
    for i in 0..streams {
        let client = Client::new(addr);
        waiting.spawn(async move {
            client
                .send(
                    json!({"streamId": format!("sync{i}"), "messageUuid": "x", "message": i,
                    "inMemoryStreamSize": 0, "blockingSendTimeoutSeconds": 30}),
                )
                .await
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut leaving = cluster.nodes[1].take().ok_or("node 1")?;
    assert!(leaving.terminate(Duration::from_secs(15)).success());
    let mut phantom = 0;
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    while let Some(answer) = waiting.join_next().await {
        let (status, body) = answer?;
        phantom += usize::from(status == StatusCode::OK);
        let code = body["error"]["code"].as_str().unwrap_or("-").to_owned();
        *answers
            .entry(format!("{} {code}", status.as_u16()))
            .or_default() += 1;
    }
    println!("sync-match sends answered: {answers:?}");
    assert_eq!(
        phantom, 0,
        "sync-match sends answered 200 with no receiver: {answers:?}"
    );
    assert!(
        answers.keys().all(|answer| answer.starts_with("503 ")),
        "every waiting send is told to retry: {answers:?}"
    );
    cluster.converge(2, Duration::from_secs(10)).await;
    for i in 0..streams {
        for m in 0..3 {
            let (status, body) = cluster
                .node(i % 2 * 2)
                .receive(&format!("streamId=q{i}&timeoutSeconds=0"))
                .await;
            assert_eq!(status, StatusCode::OK, "q{i} message {m}: {body}");
            assert_eq!(body["message"], json!(m), "q{i} in order");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_across_a_graceful_leave_under_load() -> TestResult {
    let mut cluster = Cluster::start(3);
    cluster.converge(3, Duration::from_secs(15)).await;
    // Two clients send continuously through the nodes that stay, while node 1 leaves.
    let senders: Vec<_> = [0usize, 2]
        .into_iter()
        .map(|n| {
            let client = common::Client::new(cluster.node(n).addr);
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let until = Instant::now() + Duration::from_secs(3);
                let mut i = 0;
                while Instant::now() < until {
                    let id = format!("c{n}-{i}");
                    let (status, _) = client.send(json!({"streamId": format!("load-{}", i % 40), "messageUuid": id, "message": i, "inMemoryStreamSize": 10000})).await;
                    if status == StatusCode::OK {
                        acked.push(id);
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut leaving = cluster.nodes[1].take().ok_or("node 1")?;
    assert!(leaving.terminate(Duration::from_secs(15)).success());
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await?);
    }
    cluster.converge(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut received = Vec::new();
    for k in 0..40 {
        loop {
            let (status, body) = cluster
                .node(k % 2 * 2)
                .receive(&format!(
                    "streamId=load-{k}&maxMessages=1000&timeoutSeconds=0"
                ))
                .await;
            if status != StatusCode::OK {
                break;
            }
            for m in body["messages"].as_array().ok_or("messages")? {
                received.push(m["messageUuid"].as_str().ok_or("id")?.to_owned());
            }
        }
    }
    // Nothing is stranded on a node that does not own its stream.
    let mut stranded = 0;
    for n in [0usize, 2] {
        let client = common::Client::new(cluster.node(n).addr);
        for k in 0..40 {
            let (status, body) = client
                .receive_local(&format!(
                    "streamId=load-{k}&maxMessages=1000&timeoutSeconds=0"
                ))
                .await;
            if status == StatusCode::OK {
                stranded += body["messages"].as_array().map_or(0, Vec::len);
            }
        }
    }
    assert_eq!(
        stranded, 0,
        "messages left on a node that does not own their stream"
    );
    let unique: std::collections::HashSet<&String> = received.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !unique.contains(id)).collect();
    println!(
        "graceful leave under load: {} acknowledged, {} received, {} lost, {} duplicated",
        acked.len(),
        received.len(),
        lost.len(),
        received.len() - unique.len()
    );
    assert!(lost.is_empty(), "lost across the leave: {lost:?}");
    assert_eq!(received.len(), unique.len(), "duplicates");
    Ok(())
}

/// A leaving node hands its messages to a node whose memory budget is full: the hand-offs
/// are refused (503 MEMORY_LIMIT), kept by the leaving node and tried again, and every
/// message either node accepted is received once receivers make room. None is dropped
/// because the destination was full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_into_a_full_node_waits_for_room_and_loses_nothing() -> TestResult {
    const BUDGET: usize = 1 << 20;
    let mut cluster = Cluster::start_configured(
        2,
        2,
        &format!("engine:\n  max_buffered_bytes: {BUDGET}\nhttp:\n  max_body_bytes: 100000\n"),
        &[],
    );
    cluster.converge(2, Duration::from_secs(15)).await;
    // Twice the two budgets, one 20 KiB message per stream, through both nodes: each node
    // ends up full of its own streams' messages.
    let payload = "y".repeat(20 << 10);
    let mut accepted = Vec::new();
    for i in 0..200 {
        let (status, body) = cluster
            .node(i % 2)
            .send(json!({"streamId": format!("full-{i}"), "messageUuid": format!("m{i}"), "message": payload}))
            .await;
        match status {
            StatusCode::OK => accepted.push(i),
            StatusCode::SERVICE_UNAVAILABLE => assert_eq!(common::code(&body), "MEMORY_LIMIT"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let stays = common::Client::new(cluster.node(1).addr);
    let held = stays.metric("ipubsub_buffered_bytes ").await.unwrap_or(0.0);
    println!(
        "{} of 200 accepted; node-1 holds {held} bytes of {BUDGET}",
        accepted.len()
    );
    assert!(held > (BUDGET - (40 << 10)) as f64, "node-1 is not full");
    let refusals_before = stays
        .metric("ipubsub_memory_refusals_total")
        .await
        .unwrap_or(0.0);

    // Node 0 leaves while node 1 is full; node 1's receivers catch up a second later.
    let mut leaving = cluster.nodes[0].take().ok_or("node 0")?;
    let left = std::thread::spawn(move || leaving.terminate(Duration::from_secs(20)).success());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused_hand_offs = stays
        .metric("ipubsub_memory_refusals_total")
        .await
        .unwrap_or(0.0)
        - refusals_before;
    let mut received = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.len() < accepted.len() && Instant::now() < deadline {
        for &i in &accepted {
            if received.contains_key(&i) {
                continue;
            }
            let (status, body) = stays
                .receive(&format!("streamId=full-{i}&timeoutSeconds=0"))
                .await;
            if status == StatusCode::OK {
                assert_eq!(body["messageUuid"], json!(format!("m{i}")));
                *received.entry(i).or_insert(0) += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        left.join().map_err(|_| "leave")?,
        "the leaving node exits 0"
    );
    let lost: Vec<_> = accepted
        .iter()
        .filter(|i| !received.contains_key(i))
        .collect();
    println!(
        "hand-offs refused for memory while node-1 was full: {refused_hand_offs}; received {} of {}, lost {lost:?}",
        received.len(),
        accepted.len()
    );
    assert!(refused_hand_offs > 0.0, "no hand-off met a full node");
    assert!(lost.is_empty(), "lost: {lost:?}");
    // Nothing twice: a second pass finds every stream empty.
    for &i in &accepted {
        let (status, _) = stays
            .receive(&format!("streamId=full-{i}&timeoutSeconds=0"))
            .await;
        assert_ne!(
            status,
            StatusCode::OK,
            "stream full-{i} gave a second message"
        );
    }
    Ok(())
}
