//! Starting and stopping the servers under comparison, each a fresh process (nginx: a master
//! and its workers) on loopback ports, so that its peak memory and CPU time belong to one run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ipubsub_benches::{ProcStats, proc_stats};

use crate::nchan;

/// What serves the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// ipubsub, in-memory circular buffers, no persistent store configured.
    Memory,
    /// ipubsub, persistent log on the embedded store (`durability: buffer`, the default).
    Persistent,
    /// Redis lists: `RPUSH` and `BLPOP` (`BLMPOP … COUNT n` for batched receives).
    Redis,
    /// Nchan (nginx with Debian's `libnginx-mod-nchan`, two workers, messages in shared
    /// memory): `POST /pub?id=`, long-poll `GET /sub?id=` with `If-Modified-Since` and
    /// `If-None-Match`, Server-Sent Events on `GET /events?id=`. Nchan broadcasts, so every
    /// pattern it runs gives each stream one receiver.
    Nchan,
    /// A hyper server that answers 200 to every request: this machine's HTTP ceiling.
    BareHyper,
}

impl Target {
    /// The name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Target::Memory => "ipubsub in-memory",
            Target::Persistent => "ipubsub persistent",
            Target::Redis => "Redis RPUSH/BLPOP",
            Target::Nchan => "Nchan (nginx)",
            Target::BareHyper => "bare hyper (200 to all)",
        }
    }

    /// The name in the table for `pattern`: Redis runs the acknowledged patterns (`1a`,
    /// `2a`) on a stream with a consumer group instead of a list.
    pub fn label_in(self, pattern: &str) -> &'static str {
        match self {
            Target::Redis if pattern.ends_with('a') => "Redis Streams XREADGROUP/XACK",
            Target::Memory if pattern.ends_with('a') => "ipubsub acked in-memory",
            other => other.label(),
        }
    }

    /// Whether the target serves HTTP (Redis speaks RESP).
    pub fn is_http(self) -> bool {
        self != Target::Redis
    }
}

/// Where the server programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `ipubsub-server`.
    pub ipubsub: PathBuf,
    /// `bare-hyper`.
    pub bare_hyper: PathBuf,
    /// `redis-server`.
    pub redis: PathBuf,
    /// `nginx`, with the Nchan module at [`nchan::MODULE`].
    pub nginx: PathBuf,
    /// Environment variables for the ipubsub server (`TOKIO_WORKER_THREADS=1`, …).
    pub ipubsub_env: Vec<(String, String)>,
}

/// A running server process; killed and its files removed when dropped.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it speaks HTTP/2 with prior knowledge: `addr` for ipubsub, which tells the two
    /// apart on one port; a second port for nginx, whose cleartext HTTP/2 port speaks only that.
    pub h2_addr: SocketAddr,
    target: Target,
    dir: PathBuf,
}

fn free_port() -> std::io::Result<SocketAddr> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

impl Server {
    /// Starts `target` on a free loopback port and waits until it accepts connections.
    pub fn start(target: Target, programs: &Programs, run: usize) -> anyhow::Result<Self> {
        let addr = free_port()?;
        let port = addr.port();
        let h2_addr = if target == Target::Nchan {
            free_port()?
        } else {
            addr
        };
        let dir = std::env::temp_dir().join(format!(
            "ipubsub-compare-{}-{run}-{target:?}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let mut command = match target {
            Target::Memory | Target::Persistent => {
                let config = dir.join("ipubsub.yaml");
                std::fs::write(&config, ipubsub_config(target, addr, &dir))?;
                let mut c = Command::new(&programs.ipubsub);
                c.arg("--config").arg(&config);
                c.envs(programs.ipubsub_env.iter().map(|(k, v)| (k, v)));
                c
            }
            Target::Redis => {
                let mut c = Command::new(&programs.redis);
                c.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                    .args(["--maxclients", "10000", "--loglevel", "warning"])
                    .arg("--dir")
                    .arg(&dir);
                c
            }
            Target::Nchan => {
                let config = dir.join("nginx.conf");
                std::fs::write(&config, nchan::config(addr, h2_addr, &dir))?;
                let mut c = Command::new(&programs.nginx);
                c.arg("-p").arg(&dir).arg("-c").arg(&config);
                c.args(["-g", "daemon off;"]);
                c
            }
            Target::BareHyper => {
                let mut c = Command::new(&programs.bare_hyper);
                c.arg(addr.to_string());
                c
            }
        };
        let child = command
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {target:?} ({command:?})"))?;
        let mut server = Self {
            child,
            addr,
            h2_addr,
            target,
            dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let target = self.target;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                anyhow::bail!("{target:?} exited at start-up ({status}):\n{log}");
            }
            let accepts = |addr| {
                std::net::TcpStream::connect_timeout(addr, Duration::from_millis(100)).is_ok()
            };
            if accepts(&self.addr) && accepts(&self.h2_addr) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{target:?} did not listen on {} within 30 s",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its memory and CPU time so far, its child processes' (nginx's workers) included.
    pub fn stats(&self) -> anyhow::Result<ProcStats> {
        let pid = self.child.id();
        let mut total = proc_stats(pid)?;
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            // A worker that exited meanwhile has nothing more to add.
            if let Ok(s) = proc_stats(child) {
                total.rss_bytes += s.rss_bytes;
                total.peak_rss_bytes += s.peak_rss_bytes;
                total.cpu_seconds += s.cpu_seconds;
            }
        }
        Ok(total)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // nginx's workers outlive a killed master (holding its ports and memory): SIGTERM
        // makes the master stop them first. The others are single processes, killed below.
        if self.target == Target::Nchan {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A single node on `addr`; the persistent target keeps its log under `dir`.
fn ipubsub_config(target: Target, addr: SocketAddr, dir: &Path) -> String {
    let backend = if target == Target::Persistent {
        "embedded"
    } else {
        "none"
    };
    format!(
        "node:\n  name: compare\n  http_bind_addr_port: \"{addr}\"\n\
         engine:\n  max_waiting_requests: 200000\n\
         log:\n  level: warn\n\
         storage:\n  backend: {backend}\n  embedded:\n    path: \"{}\"\n",
        dir.join("data").display()
    )
}
