//! Network namespaces for the partition fault (`--nemesis cut`).
//!
//! Each node runs in a namespace of its own, `<prefix>n<i>`, with one veth link to a bridge
//! in a hub namespace, `<prefix>h`; its address there is `10.213.0.<i+1>`, and that is where
//! it binds HTTP and gossip and what it advertises. Cutting node i sets its link down on the
//! hub side: it no longer reaches the other nodes, nor they it, while it still reaches its
//! clients and the store. Those two paths bypass the bridge through Unix sockets, which live
//! in the file system and so in every namespace at once:
//! - the store: a relay inside each node's namespace listens where the store's URL points
//!   (for example `127.0.0.1:5432`) and passes each connection to a Unix socket, where this
//!   process listens and connects to the real store;
//! - the clients: this process listens on the node's loopback address in the harness's own
//!   namespace (the address the clients use) and passes each connection to a Unix socket,
//!   where a relay inside the node's namespace connects to the node.
//!
//! The relays inside namespaces are this binary again (`ipubsub-churn --relay ...`). Only
//! addresses inside the namespaces created here are configured, and `Drop` removes them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// The port every node binds for HTTP inside its namespace.
pub const HTTP_PORT: u16 = 7000;
/// The port every node binds for gossip inside its namespace.
pub const GOSSIP_PORT: u16 = 7001;

/// Node `index`'s address inside the namespaces.
pub fn node_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, 0, u8::try_from(index + 1).unwrap_or(u8::MAX))
}

/// The name of node `index`'s namespace.
pub fn namespace(prefix: &str, index: usize) -> String {
    format!("{prefix}n{index}")
}

/// One end of a relay: a TCP address or a Unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for End {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<End> {
        if let Some(addr) = s.strip_prefix("tcp:") {
            return Ok(End::Tcp(addr.parse().context("a relay's TCP address")?));
        }
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(End::Unix(PathBuf::from(path)));
        }
        bail!("a relay end is tcp:ADDR or unix:PATH, not {s}")
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Tcp(addr) => write!(f, "tcp:{addr}"),
            End::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A relay: what it listens on, and where it passes each connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    pub listen: End,
    pub to: End,
}

impl std::str::FromStr for Relay {
    type Err = anyhow::Error;

    /// `LISTEN=TO`, for example `tcp:127.0.0.1:5432=unix:/tmp/x/store.sock`.
    fn from_str(s: &str) -> anyhow::Result<Relay> {
        let (listen, to) = s.split_once('=').context("a relay is LISTEN=TO")?;
        Ok(Relay {
            listen: listen.parse()?,
            to: to.parse()?,
        })
    }
}

impl std::fmt::Display for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.listen, self.to)
    }
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

async fn connect(to: &End) -> std::io::Result<Box<dyn Conn>> {
    Ok(match to {
        End::Tcp(addr) => Box::new(TcpStream::connect(addr).await?),
        End::Unix(path) => Box::new(UnixStream::connect(path).await?),
    })
}

/// Serves `relay` until the task is dropped: each accepted connection is passed on to a new
/// connection to `relay.to`, both ways, until either side closes.
pub async fn serve(relay: Relay) -> anyhow::Result<()> {
    enum Listener {
        Tcp(TcpListener),
        Unix(UnixListener),
    }
    let listener = match &relay.listen {
        End::Tcp(addr) => Listener::Tcp(TcpListener::bind(addr).await?),
        End::Unix(path) => {
            std::fs::remove_file(path).ok();
            Listener::Unix(UnixListener::bind(path)?)
        }
    };
    loop {
        let mut inbound: Box<dyn Conn> = match &listener {
            Listener::Tcp(l) => Box::new(l.accept().await?.0),
            Listener::Unix(l) => Box::new(l.accept().await?.0),
        };
        let to = relay.to.clone();
        tokio::spawn(async move {
            // A refused connection closes the inbound one, as the target would have.
            if let Ok(mut outbound) = connect(&to).await {
                copy_bidirectional(&mut inbound, &mut outbound).await.ok();
            }
        });
    }
}

/// Serves every relay until one fails (`ipubsub-churn --relay ...`, run inside a namespace).
pub async fn serve_all(relays: Vec<Relay>) -> anyhow::Result<()> {
    let tasks: Vec<_> = relays.into_iter().map(|r| tokio::spawn(serve(r))).collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// The namespaces of one run, the links between them and the relays.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    nodes: usize,
    relays: Vec<Child>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

impl Net {
    /// Creates the hub, one namespace per node in `clients` (the loopback address its clients
    /// use here), the links, and the relays for the clients and for `store` if there is one
    /// (the store's address, reached from inside every namespace at the same address).
    /// Sockets go to `dir`.
    pub fn create(
        prefix: &str,
        clients: &[SocketAddr],
        store: Option<SocketAddr>,
        dir: &Path,
    ) -> anyhow::Result<Net> {
        let mut net = Net {
            prefix: prefix.to_owned(),
            nodes: 0,
            relays: Vec::new(),
            tasks: Vec::new(),
        };
        let hub = net.hub();
        ip(&["netns", "add", &hub]).context("network namespaces need root")?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        let store_sock = dir.join("store.sock");
        if let Some(store) = store {
            let relay = Relay {
                listen: End::Unix(store_sock.clone()),
                to: End::Tcp(store),
            };
            net.tasks.push(tokio::spawn(serve(relay)));
        }
        let me = std::env::current_exe().context("this binary's path")?;
        for (index, client) in clients.iter().enumerate() {
            let ns = namespace(prefix, index);
            ip(&["netns", "add", &ns])?;
            net.nodes = index + 1;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let (inner, outer) = (format!("v{index}"), format!("h{index}"));
            ip(&[
                "-n", &hub, "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &outer, "master", "br0", "up"])?;
            let address = format!("{}/24", node_ip(index));
            ip(&["-n", &ns, "addr", "add", &address, "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            let client_sock = dir.join(format!("node-{index}.sock"));
            let mut inside = vec![Relay {
                listen: End::Unix(client_sock.clone()),
                to: End::Tcp(SocketAddr::from((node_ip(index), HTTP_PORT))),
            }];
            inside.extend(store.map(|store| Relay {
                listen: End::Tcp(store),
                to: End::Unix(store_sock.clone()),
            }));
            let mut command = Command::new("ip");
            command.args(["netns", "exec", &ns]).arg(&me);
            for relay in &inside {
                command.arg("--relay").arg(relay.to_string());
            }
            let child = command
                .stdin(Stdio::null())
                .spawn()
                .context("start a relay")?;
            net.relays.push(child);
            let outside = Relay {
                listen: End::Tcp(*client),
                to: End::Unix(client_sock),
            };
            net.tasks.push(tokio::spawn(serve(outside)));
        }
        Ok(net)
    }

    fn hub(&self) -> String {
        format!("{}h", self.prefix)
    }

    /// Cuts node `index` off from the other nodes (not from its clients or the store).
    pub fn cut(&self, index: usize) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.hub(),
            "link",
            "set",
            &format!("h{index}"),
            "down",
        ])
    }

    /// Undoes [`Net::cut`].
    pub fn heal(&self, index: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.hub(), "link", "set", &format!("h{index}"), "up"])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for child in &mut self.relays {
            child.kill().ok();
            child.wait().ok();
        }
        for index in 0..self.nodes {
            ip(&["netns", "del", &namespace(&self.prefix, index)]).ok();
        }
        ip(&["netns", "del", &self.hub()]).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_reads_back_as_it_was_written() {
        let relay: Relay = "tcp:127.0.0.1:5432=unix:/tmp/a b/store.sock"
            .parse()
            .expect("a relay");
        let store: SocketAddr = "127.0.0.1:5432".parse().expect("an address");
        assert_eq!(relay.listen, End::Tcp(store));
        assert_eq!(relay.to, End::Unix(PathBuf::from("/tmp/a b/store.sock")));
        let again: Relay = relay.to_string().parse().expect("the relay again");
        assert_eq!(again, relay);
        assert!("tcp:127.0.0.1:5432".parse::<Relay>().is_err());
        assert!("udp:1=unix:/x".parse::<Relay>().is_err());
    }
}
