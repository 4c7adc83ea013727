//! Sealed gossip between real server processes: with `cluster.secret` set, a cluster with
//! another secret or a node with none cannot join, captured datagrams sent again, altered or
//! not, change nothing, garbage costs nothing lasting, and the secret rotates by reloads.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::{Client, TestResult, TestServer};
use hyper::Method;
use serde_json::Value;

const SECRET: &str = "gossip-test-secret-0123456789";
const OTHER: &str = "another-cluster-secret-0123456789";

/// Members `node` sees.
async fn members(node: &TestServer) -> usize {
    let (_, view): (_, Value) = node.call(Method::GET, "/api/v1/cluster", "").await;
    view["members"].as_array().map_or(0, Vec::len)
}

/// Two clusters on one machine with the same name and the same seeds, one sealed with one
/// secret (nodes 0 and 1), the other with another (nodes 2 and 3), and a node with none
/// (node 4): for several seconds each cluster keeps its own two members, the node without a
/// secret stays alone, and what the members rejected is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_with_another_secret_or_none_never_merge() -> TestResult {
    let mut cluster = Cluster::start_configured(5, 2, "", &[("IPUBSUB_CLUSTER__SECRET", SECRET)]);
    let took = cluster.converge(2, Duration::from_secs(15)).await;
    println!("2 sealed nodes converged in {took:?}");
    let outsider = |i: usize, secret: Option<&str>| {
        let name = format!("node-{i}");
        let gossip = format!("127.0.0.1:{}", cluster.ports[i]);
        let mut env = vec![
            ("IPUBSUB_NODE__NAME", name.as_str()),
            ("IPUBSUB_NODE__GOSSIP_BIND_ADDR_PORT", gossip.as_str()),
            ("IPUBSUB_CLUSTER__JOIN_TIMEOUT_SECONDS", "2"),
        ];
        if let Some(secret) = secret {
            env.push(("IPUBSUB_CLUSTER__SECRET", secret));
        }
        TestServer::start_with(&cluster.yaml, &env)
    };
    let (other_a, other_b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| outsider(2, Some(OTHER)));
        let b = scope.spawn(|| outsider(3, Some(OTHER)));
        (a.join(), b.join())
    });
    let (other_a, other_b) = (
        other_a.map_err(|_| "node 2")?,
        other_b.map_err(|_| "node 3")?,
    );
    let none = outsider(4, None);
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (name, node, expected) in [
        ("node-0", cluster.node(0), 2),
        ("node-1", cluster.node(1), 2),
        ("node-2 (another secret)", &other_a, 2),
        ("node-3 (another secret)", &other_b, 2),
        ("node-4 (no secret)", &none, 1),
    ] {
        assert_eq!(members(node).await, expected, "{name}'s members");
    }
    let (_, view): (_, Value) = other_a.call(Method::GET, "/api/v1/cluster", "").await;
    let names: Vec<&str> = view["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["node-2", "node-3"], "the other cluster's ring");
    let rejected = Client::new(cluster.node(0).addr)
        .metric("ipubsub_gossip_rejected_total")
        .await
        .unwrap_or(0.0);
    println!("node-0 rejected {rejected} gossip datagrams from the other cluster and node 4");
    assert!(rejected > 0.0, "no datagram was rejected");
    // The members still see each other as before.
    cluster.nodes[1] = None;
    cluster.converge(1, Duration::from_secs(10)).await;
    Ok(())
}

/// Every datagram node 1 sends to node 0 passes through a relay that keeps a copy (node 0
/// advertises the relay as its gossip address). The copies sent again, then altered, are all
/// rejected, and node 0's ring does not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_gossip_sent_again_or_altered_is_rejected() -> TestResult {
    let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let relay_addr = relay.local_addr()?;
    let cluster = Cluster::start_some(2, 0);
    let node0_gossip: std::net::SocketAddr = format!("127.0.0.1:{}", cluster.ports[0]).parse()?;
    let advertised = relay_addr.to_string();
    let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let capturing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (kept, keeping) = (
        std::sync::Arc::clone(&captured),
        std::sync::Arc::clone(&capturing),
    );
    let relay = std::sync::Arc::new(relay);
    let relaying = {
        let relay = std::sync::Arc::clone(&relay);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = relay.recv_from(&mut buf).await {
                if keeping.load(std::sync::atomic::Ordering::SeqCst) {
                    kept.lock().map(|mut k| k.push(buf[..n].to_vec())).ok();
                }
                let _ = relay.send_to(&buf[..n], node0_gossip).await;
            }
        })
    };
    let start = |i: usize, extra: &[(&str, &str)]| {
        let name = format!("node-{i}");
        let gossip = format!("127.0.0.1:{}", cluster.ports[i]);
        let mut env = vec![
            ("IPUBSUB_NODE__NAME", name.as_str()),
            ("IPUBSUB_NODE__GOSSIP_BIND_ADDR_PORT", gossip.as_str()),
            ("IPUBSUB_CLUSTER__SECRET", SECRET),
        ];
        env.extend_from_slice(extra);
        TestServer::start_with(&cluster.yaml, &env)
    };
    let (node0, node1) = std::thread::scope(|scope| {
        let zero = scope.spawn(|| {
            start(
                0,
                &[("IPUBSUB_NODE__GOSSIP_ADVERTISE_ADDR_PORT", &advertised)],
            )
        });
        let one = scope.spawn(|| start(1, &[]));
        (zero.join(), one.join())
    });
    let (node0, node1) = (node0.map_err(|_| "node 0")?, node1.map_err(|_| "node 1")?);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!((members(&node0).await, members(&node1).await), (2, 2));
    // Copies of what node 0 received (and accepted) for a second, both nodes up.
    capturing.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    capturing.store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let copies = captured.lock().map_err(|_| "lock")?.clone();
    assert!(copies.len() >= 5, "{} datagrams captured", copies.len());
    let client = Client::new(node0.addr);
    let rejected_before = client
        .metric("ipubsub_gossip_rejected_total")
        .await
        .unwrap_or(0.0);
    // Sent again from the relay, as they came; then each altered in one byte.
    for copy in &copies {
        relay.send_to(copy, node0_gossip).await?;
    }
    for (i, copy) in copies.iter().enumerate() {
        let mut altered = copy.clone();
        let at = 2 + i % (altered.len() - 2);
        altered[at] ^= 0x01;
        relay.send_to(&altered, node0_gossip).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rejected = client
        .metric("ipubsub_gossip_rejected_total")
        .await
        .unwrap_or(0.0)
        - rejected_before;
    println!(
        "{} captured datagrams sent again and {} altered: {rejected} rejected",
        copies.len(),
        copies.len()
    );
    assert_eq!(rejected, (2 * copies.len()) as f64);
    assert_eq!(members(&node0).await, 2, "node 0's ring is unchanged");
    relaying.abort();
    drop(node1);
    Ok(())
}

/// Garbage at full rate on a sealed node's gossip port for three seconds: random bytes, and
/// datagrams shaped like sealed gossip (right version, a fresh time, random senders and key
/// ids) that cost the node a key derivation and a failed tag check each. The node keeps its
/// ring and serves, its memory does not grow, and what it rejected is counted, not written
/// line by line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_at_full_rate_changes_nothing_and_costs_no_memory() -> TestResult {
    let cluster = Cluster::start_configured(2, 2, "", &[("IPUBSUB_CLUSTER__SECRET", SECRET)]);
    cluster.converge(2, Duration::from_secs(15)).await;
    let node = cluster.node(0);
    let client = Client::new(node.addr);
    let port = cluster.ports[0];
    let rss_before = node.rss_bytes();

    let flood = std::thread::spawn(move || -> std::io::Result<u64> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let started = std::time::Instant::now();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            // xorshift: cheap, and every datagram differs.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut sent = 0u64;
        let mut datagram = vec![0u8; 1400];
        while started.elapsed() < Duration::from_secs(3) {
            let len = 16 + (next() % 1384) as usize;
            for chunk in datagram[..len].chunks_mut(8) {
                let bytes = next().to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
            if sent.is_multiple_of(2) {
                // Shaped like sealed gossip: version 1, a key id, a sender, a counter, now.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                datagram[0] = 1;
                datagram[26..34].copy_from_slice(&now.to_be_bytes());
            }
            if socket
                .send_to(&datagram[..len], ("127.0.0.1", port))
                .is_ok()
            {
                sent += 1;
            }
        }
        Ok(sent)
    });
    still_serves(&client).await;
    let sent = flood.join().map_err(|_| "flood thread")??;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let rss_after = node.rss_bytes();
    let rejected = client
        .metric("ipubsub_gossip_rejected_total")
        .await
        .unwrap_or(0.0);
    let left_out = client
        .metric("ipubsub_log_lines_suppressed_total")
        .await
        .unwrap_or(0.0);
    println!(
        "{sent} garbage datagrams in 3 s: {rejected} rejected (the rest dropped by the kernel), \
         {left_out} log lines left out; RSS {:.1} -> {:.1} MB",
        rss_before as f64 / 1e6,
        rss_after as f64 / 1e6
    );
    assert!(rejected >= 1000.0, "{rejected} datagrams rejected");
    assert!(left_out >= 900.0, "{left_out} log lines left out");
    assert!(
        rss_after < rss_before + (8 << 20),
        "RSS grew from {rss_before} to {rss_after} bytes"
    );
    assert_eq!(members(node).await, 2, "node 0's ring");
    assert_eq!(members(cluster.node(1)).await, 2, "node 1's ring");
    still_serves(&client).await;
    Ok(())
}

/// The gossip secret of a running two-node cluster is rotated in three reloads of each node
/// (accept the new one too, seal with it, drop the old one): the ring holds throughout, no
/// datagram between the members is rejected on the way, and at the end a node that has only
/// the old secret cannot join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gossip_secret_is_rotated_by_reloads_without_a_gap() -> TestResult {
    let cluster = Cluster::start_some(3, 0);
    let config = |i: usize, secret: &str, accepted: &[&str]| {
        let yaml = cluster.yaml.replacen(
            "cluster:\n",
            &format!(
                "cluster:\n  secret: {secret}\n  accepted_secrets: [{}]\n",
                accepted.join(", ")
            ),
            1,
        );
        format!(
            "node:\n  name: node-{i}\n  http_bind_addr_port: \"127.0.0.1:0\"\n  gossip_bind_addr_port: \"127.0.0.1:{}\"\n{yaml}",
            cluster.ports[i]
        )
    };
    let start = |i: usize, secret: &str| -> Result<TestServer, std::io::Error> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, config(i, secret, &[]))?;
        let data = dir.path().join("data");
        Ok(TestServer::spawn(dir, &file, &data, &[]))
    };
    let nodes = std::thread::scope(|scope| {
        let zero = scope.spawn(|| start(0, SECRET));
        let one = scope.spawn(|| start(1, SECRET));
        (zero.join(), one.join())
    });
    let nodes = [
        nodes.0.map_err(|_| "node 0")??,
        nodes.1.map_err(|_| "node 1")??,
    ];
    let rejected = async || {
        let mut total = 0.0;
        for node in &nodes {
            total += Client::new(node.addr)
                .metric("ipubsub_gossip_rejected_total")
                .await
                .unwrap_or(0.0);
        }
        total
    };
    for step in [
        (SECRET, &[OTHER][..]),
        (OTHER, &[SECRET][..]),
        (OTHER, &[][..]),
    ] {
        for (i, node) in nodes.iter().enumerate() {
            std::fs::write(
                node.dir.path().join("config.yaml"),
                config(i, step.0, step.1),
            )?;
            let hang_up = std::process::Command::new("kill")
                .args(["-HUP", &node.pid().to_string()])
                .status()?;
            assert!(hang_up.success(), "kill -HUP");
            // Gossip rounds of 100 ms go both ways between two reloads.
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        for node in &nodes {
            assert_eq!(members(node).await, 2, "after the reloads to {step:?}");
        }
    }
    assert_eq!(
        rejected().await,
        0.0,
        "datagrams rejected during the rotation"
    );
    let stale = start(2, SECRET)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(members(&stale).await, 1, "the node with the old secret");
    for node in &nodes {
        assert_eq!(members(node).await, 2, "a member's ring");
    }
    let refused = rejected().await;
    println!(
        "rotated in 3 reloads with no rejection; then {refused} datagrams of the old secret rejected"
    );
    assert!(
        refused > 0.0,
        "the old secret's datagrams were not rejected"
    );
    Ok(())
}

/// A send and its receive go through.
async fn still_serves(client: &Client) {
    let body =
        serde_json::json!({"streamId": "still-serves", "messageUuid": "m-1", "message": "m"});
    let (status, answer) = client.send(body).await;
    assert_eq!(status, hyper::StatusCode::OK, "send: {answer}");
    let (status, answer) = client
        .receive("streamId=still-serves&timeoutSeconds=1")
        .await;
    assert_eq!(status, hyper::StatusCode::OK, "receive");
    assert_eq!(answer["message"], "m");
}
