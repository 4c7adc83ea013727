//! Membership under a network partition, over chitchat's in-process transport that can cut
//! links: each side settles on its own members, nothing crashes, and the cluster converges
//! again once the partition heals.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chitchat::transport::ChannelTransport;
use ipubsub_cluster::{Cluster, DEFAULT_VIRTUAL_NODES, Membership, MembershipConfig, Node, NodeId};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn ids(cluster: &Cluster) -> Vec<String> {
    cluster
        .members()
        .iter()
        .map(|m| m.id().to_string())
        .collect()
}

/// Waits until every cluster in `expect` sees exactly the given members.
async fn settle(expect: &[(&Cluster, &[&str])], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if expect.iter().all(|(c, want)| ids(c) == *want) {
            return started.elapsed();
        }
        let seen: Vec<_> = expect.iter().map(|(c, _)| ids(c)).collect();
        assert!(
            started.elapsed() < within,
            "not settled within {within:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_splits_the_views_and_healing_joins_them() -> TestResult {
    let transport = ChannelTransport::with_mtu(65_507);
    let gossip: Vec<SocketAddr> = (1..=3)
        .map(|i| format!("127.0.0.1:{}", 17_000 + i).parse())
        .collect::<Result<_, _>>()?;
    let seeds: Vec<String> = gossip.iter().map(ToString::to_string).collect();
    let mut clusters = Vec::new();
    let mut members = Vec::new();
    for (i, addr) in gossip.iter().enumerate() {
        let node = Node::new(
            NodeId::new(format!("n{i}"))?,
            format!("127.0.0.1:{}", 18_000 + i).parse()?,
        );
        let cluster = Cluster::with_members(node.clone(), [], DEFAULT_VIRTUAL_NODES);
        let mut config = MembershipConfig::new("partition-test", *addr, seeds.clone());
        config.interval = Duration::from_millis(50);
        members.push(Membership::start_with_transport(cluster.clone(), config, &transport).await?);
        clusters.push(cluster);
    }
    let all: &[&str] = &["n0", "n1", "n2"];
    let joined = settle(
        &[
            (&clusters[0], all),
            (&clusters[1], all),
            (&clusters[2], all),
        ],
        Duration::from_secs(10),
    )
    .await;
    println!("joined in {joined:?}");

    // n0 alone on one side, n1 and n2 on the other.
    transport.remove_link(gossip[0], gossip[1]).await;
    transport.remove_link(gossip[0], gossip[2]).await;
    let split = settle(
        &[
            (&clusters[0], &["n0"]),
            (&clusters[1], &["n1", "n2"]),
            (&clusters[2], &["n1", "n2"]),
        ],
        Duration::from_secs(20),
    )
    .await;
    println!("partition detected in {split:?}");

    transport.add_link(gossip[0], gossip[1]).await;
    transport.add_link(gossip[0], gossip[2]).await;
    let healed = settle(
        &[
            (&clusters[0], all),
            (&clusters[1], all),
            (&clusters[2], all),
        ],
        Duration::from_secs(30),
    )
    .await;
    println!("healed in {healed:?}");
    for membership in members {
        membership.leave(Duration::ZERO).await;
    }
    Ok(())
}
