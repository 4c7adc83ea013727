//! The cluster under test: real `ipubsub-server` processes on fixed loopback ports (so that
//! a restarted node comes back where it was), each with its own config file, and the faults
//! the nemesis injects into them: SIGTERM, SIGKILL, SIGSTOP/SIGCONT, and a shifted clock
//! (libfaketime preloaded into one node). For partitions every node runs in a network
//! namespace of its own (`net.rs`).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::net;

/// Where Debian's libfaketime lives.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// How to start every node.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The server binary.
    pub server: PathBuf,
    /// The `storage:` section of every node's config, as YAML.
    pub storage_yaml: String,
    /// Where config files and logs go.
    pub dir: PathBuf,
    /// A node whose clock is shifted, and by how many seconds (negative: behind).
    pub skewed: Option<(usize, i64)>,
    /// With a prefix, every node runs in a network namespace of its own (see `net.rs`).
    pub netns: Option<String>,
}

/// One node: its ports and, while it runs, its process.
#[derive(Debug)]
pub struct NodeProc {
    pub index: usize,
    pub http: SocketAddr,
    config: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

impl NodeProc {
    /// True while the process runs and is not paused.
    pub fn is_serving(&self) -> bool {
        self.child.is_some() && !self.stopped
    }

    fn pid(&self) -> Option<String> {
        self.child.as_ref().map(|c| c.id().to_string())
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let status = Command::new("kill").args([signal, &pid]).status()?;
        if !status.success() {
            bail!("kill {signal} {pid} failed");
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `within` for a clean exit (then SIGKILL).
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<()> {
        self.signal("-TERM")?;
        let deadline = Instant::now() + within;
        while let Some(child) = &mut self.child {
            if child.try_wait()?.is_some() {
                self.child = None;
                return Ok(());
            }
            if Instant::now() >= deadline {
                return self.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL, and reaps the process.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait()?;
        }
        self.stopped = false;
        Ok(())
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal("-STOP")?;
        self.stopped = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.signal("-CONT")?;
        self.stopped = false;
        Ok(())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if self.stopped {
            self.resume().ok();
        }
        self.kill().ok();
    }
}

/// A node's HTTP (TCP) and gossip (UDP) addresses on loopback.
fn free_ports() -> anyhow::Result<(SocketAddr, SocketAddr)> {
    Ok((free_port()?, free_port()?))
}

/// A loopback port free for both TCP and UDP, below the kernel's ephemeral range.
///
/// A node killed by the nemesis comes back on the same ports. A port the kernel handed out
/// for `bind(0)` lies in the range it also gives outgoing connections, and one of the many
/// connections the load makes could take it while the node is down (seen as "Address already
/// in use" on restart). Ports below that range are only ever taken by an explicit bind.
fn free_port() -> anyhow::Result<SocketAddr> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16.min(ephemeral_low / 2);
    let span = u64::from(ephemeral_low.saturating_sub(low).max(1));
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for attempt in 0u64..10_000 {
        // Any spread will do; a hasher seeded by the OS gives one without a random crate.
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            (std::process::id(), attempt),
        );
        let port = low + u16::try_from(seed % span).unwrap_or(0);
        if given.contains(&port) {
            continue;
        }
        let at = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(at).is_ok() && UdpSocket::bind(at).is_ok() {
            given.push(port);
            return Ok(at);
        }
    }
    bail!("no loopback port free for TCP and UDP below {ephemeral_low}")
}

/// Writes the config files of `n` nodes and returns them, not started.
pub fn plan(setup: &Setup, n: usize, cluster: &str) -> anyhow::Result<Vec<NodeProc>> {
    let ports = (0..n)
        .map(|_| free_ports())
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Inside namespaces a node binds its namespace's address; its clients still use a
    // loopback address here, which `net::Net` relays to it.
    let inner = |index: usize, (http, gossip): (SocketAddr, SocketAddr)| match setup.netns {
        Some(_) => (
            SocketAddr::from((net::node_ip(index), net::HTTP_PORT)),
            SocketAddr::from((net::node_ip(index), net::GOSSIP_PORT)),
        ),
        None => (http, gossip),
    };
    let seeds: Vec<String> = (ports.iter().copied().enumerate())
        .map(|(index, p)| format!("\"{}\"", inner(index, p).1))
        .collect();
    let mut nodes = Vec::new();
    for (index, (http, gossip)) in ports.into_iter().enumerate() {
        let config = setup.dir.join(format!("node-{index}.yaml"));
        let (bind, gossip) = inner(index, (http, gossip));
        let yaml = format!(
            "node:\n  name: \"n{index}\"\n  http_bind_addr_port: \"{bind}\"\n  gossip_bind_addr_port: \"{gossip}\"\n\
             cluster:\n  name: \"{cluster}\"\n  static_bootstrap_node_addr_ports: [{}]\n  gossip_interval_ms: 100\n  join_timeout_seconds: 3\n\
             http:\n  shutdown_grace_seconds: 5\n\
             log:\n  level: \"warn\"\n\
             {}\n",
            seeds.join(", "),
            setup.storage_yaml
        );
        std::fs::write(&config, yaml).with_context(|| format!("write {}", config.display()))?;
        nodes.push(NodeProc {
            index,
            http,
            config,
            child: None,
            stopped: false,
        });
    }
    Ok(nodes)
}

/// Starts `node` and waits (up to `within`) until it prints that it listens.
pub fn start(setup: &Setup, node: &mut NodeProc, within: Duration) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(setup.dir.join(format!("node-{}.log", node.index)))?;
    let mut command = match &setup.netns {
        // `ip netns exec` execs the server: the child's pid is the server's.
        Some(prefix) => {
            let mut command = Command::new("ip");
            let ns = net::namespace(prefix, node.index);
            command.args(["netns", "exec", &ns]).arg(&setup.server);
            command
        }
        None => Command::new(&setup.server),
    };
    command
        .arg("--config")
        .arg(&node.config)
        .stdout(Stdio::piped())
        .stderr(log);
    if let Some((index, seconds)) = setup.skewed
        && index == node.index
    {
        require(Path::new(LIBFAKETIME))?;
        command
            .env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME", format!("{seconds:+}s"))
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("start {}", setup.server.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        tx.send(first).ok();
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(within) {
        Ok(Some(Ok(line))) if line.contains("listening on") => {
            node.child = Some(child);
            node.stopped = false;
            Ok(())
        }
        other => {
            child.kill().ok();
            child.wait().ok();
            bail!("node {} did not start: {other:?}", node.index)
        }
    }
}

fn require(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        bail!(
            "{} is missing: apt-get install faketime (a clock offset needs it)",
            path.display()
        );
    }
    Ok(())
}
