//! A cluster of real server processes forming a ring by gossip, each on its own ephemeral
//! ports, for the tests of membership, forwarding and hand-offs.

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::TestServer;

/// A free UDP port on loopback for a node's gossip, never one this process handed out before:
/// the port is released before the node binds it, and the kernel may offer it again to a
/// test running beside this one.
pub fn free_udp_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp bind");
        let port = socket.local_addr().expect("addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A cluster name of its own for every cluster a test starts: nodes of two clusters that
/// find each other (a port reused by the kernel) refuse each other's gossip.
fn cluster_name() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("test-{}-{n}", std::process::id())
}

pub struct Cluster {
    pub nodes: Vec<Option<TestServer>>,
    pub ports: Vec<u16>,
    pub yaml: String,
    /// Extra environment of every node.
    env: Vec<(String, String)>,
}

impl Cluster {
    /// `n` nodes that all know each other's gossip address as seeds.
    pub fn start(n: usize) -> Self {
        Self::start_some(n, n)
    }

    /// Starts the first `running` of `n` nodes; all list all `n` gossip addresses as seeds.
    pub fn start_some(n: usize, running: usize) -> Self {
        Self::start_configured(n, running, "", &[])
    }

    /// [`Cluster::start_some`], each node's config file adding `yaml` and its environment `env`.
    pub fn start_configured(n: usize, running: usize, yaml: &str, env: &[(&str, &str)]) -> Self {
        let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
        let seeds: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let yaml = format!(
            // Each node's own memory store: the log works through forwarding while the ring
            // stands still, which is what these tests need (and say so explicitly).
            "cluster:\n  name: {}\n  gossip_interval_ms: 100\n  static_bootstrap_node_addr_ports: [{}]\nstorage:\n  backend: memory\n  node_local_log_in_cluster: true\n{yaml}",
            cluster_name(),
            seeds.join(", ")
        );
        let mut cluster = Self {
            nodes: (0..n).map(|_| None).collect(),
            ports,
            yaml,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        // Started together: each waits at start to hear from the others.
        let started = Instant::now();
        let nodes: Vec<TestServer> = std::thread::scope(|scope| {
            let starting: Vec<_> = (0..running)
                .map(|i| {
                    let cluster = &cluster;
                    scope.spawn(move || cluster.spawn_node(i))
                })
                .collect();
            starting
                .into_iter()
                .map(|s| s.join().expect("node started"))
                .collect()
        });
        for (i, node) in nodes.into_iter().enumerate() {
            cluster.nodes[i] = Some(node);
        }
        println!(
            "{running} of {n} nodes started and joined in {:?}",
            started.elapsed()
        );
        cluster
    }

    pub fn spawn_node(&self, i: usize) -> TestServer {
        let name = format!("node-{i}");
        let gossip = format!("127.0.0.1:{}", self.ports[i]);
        // TEST_SERVER_LOG=info shows the nodes' logs when a test needs looking into.
        let log = std::env::var("TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into());
        let mut env = vec![
            ("IPUBSUB_NODE__NAME", name.as_str()),
            ("IPUBSUB_NODE__GOSSIP_BIND_ADDR_PORT", gossip.as_str()),
            ("RUST_LOG", log.as_str()),
        ];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        TestServer::start_with(&self.yaml, &env)
    }

    /// Starts node `i`, which joins the running ones.
    pub fn add(&mut self, i: usize) {
        self.nodes[i] = Some(self.spawn_node(i));
    }

    pub fn node(&self, i: usize) -> &TestServer {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub fn live(&self) -> impl Iterator<Item = &TestServer> {
        self.nodes.iter().flatten()
    }

    /// Takes the one message of each stream `{prefix}{i}` (`i < streams`) through node
    /// `via(i)`, checking that it is message `i`; returns how many were there.
    pub async fn take_numbered(
        &self,
        prefix: &str,
        streams: usize,
        via: impl Fn(usize) -> usize,
    ) -> usize {
        let mut received = 0;
        for i in 0..streams {
            let query = format!("streamId={prefix}{i}&timeoutSeconds=0");
            let (status, body) = self.node(via(i)).receive(&query).await;
            if status == StatusCode::OK {
                assert_eq!(body["message"], json!(i));
                received += 1;
            }
        }
        received
    }

    /// Waits until every running node sees exactly `n` members; returns how long it took.
    pub async fn converge(&self, n: usize, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let mut all = true;
            for node in self.live() {
                let (_, view) = node.call(Method::GET, "/api/v1/cluster", "").await;
                all &= view["members"].as_array().map(Vec::len) == Some(n);
            }
            if all {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "no convergence to {n} members within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn owner_of(view: &Value) -> Vec<String> {
    view["members"].as_array().map_or_else(Vec::new, |m| {
        m.iter()
            .filter_map(|x| x["id"].as_str().map(str::to_owned))
            .collect()
    })
}
