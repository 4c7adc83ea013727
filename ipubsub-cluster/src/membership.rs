//! [`Membership`]: who is in the cluster, by gossip.
//!
//! Built on chitchat (scuttlebutt gossip with a phi-accrual failure detector over UDP). Each
//! node gossips two keys: `http`, the address it serves the API at, and `status`, `up` or
//! `leaving`. Whenever the set of live nodes or their keys change, the [`Cluster`] view is
//! replaced by one whose ring holds exactly the live members whose status is `up`, so every
//! node computes the same ring from the same gossip.
//!
//! chitchat has no leave message of its own: a node leaves by gossiping `status: leaving`,
//! which takes it out of every ring within a gossip round or two, and then stops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::{Transport, UdpTransport};
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, ProtocolVersion,
    spawn_chitchat,
};
use tokio::task::JoinHandle;

use crate::Cluster;
use crate::node::{Node, NodeId};

const HTTP_KEY: &str = "http";
const STATUS_KEY: &str = "status";
const UP: &str = "up";
const LEAVING: &str = "leaving";

/// How this node gossips.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MembershipConfig {
    /// Nodes only gossip with nodes of the same cluster name.
    pub cluster_name: String,
    /// The UDP address gossip listens on.
    pub listen: SocketAddr,
    /// The UDP address other nodes gossip to.
    pub advertise: SocketAddr,
    /// Gossip addresses (`host:port`) to contact at start; this node's own is ignored.
    pub seeds: Vec<String>,
    /// Time between gossip rounds.
    pub interval: Duration,
    /// How long a dead node is remembered before it is forgotten.
    pub dead_node_grace: Duration,
}

impl MembershipConfig {
    /// Gossip on `listen` (advertised as is), with the given seeds and default timings.
    pub fn new(cluster_name: impl Into<String>, listen: SocketAddr, seeds: Vec<String>) -> Self {
        Self {
            cluster_name: cluster_name.into(),
            listen,
            advertise: listen,
            seeds,
            interval: Duration::from_millis(500),
            dead_node_grace: Duration::from_secs(60),
        }
    }
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The gossip socket could not be opened or chitchat not started.
    #[error("cannot start gossip on {listen}: {message}")]
    Start {
        /// The gossip address.
        listen: SocketAddr,
        /// chitchat's error, which is an `anyhow::Error` and kept as its text.
        message: String,
    },
}

/// This node's membership in the cluster: gossip, and the task that keeps the [`Cluster`]
/// view in step with it.
pub struct Membership {
    handle: ChitchatHandle,
    follower: JoinHandle<()>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("id", self.handle.chitchat_id())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Starts gossiping over UDP as `cluster`'s local node and keeps `cluster`'s view up to
    /// date.
    pub async fn start(
        cluster: Cluster,
        config: MembershipConfig,
    ) -> Result<Self, MembershipError> {
        Self::start_with_transport(cluster, config, &UdpTransport).await
    }

    /// [`Membership::start`] over another chitchat transport (tests use an in-process one that
    /// can cut links, to partition the cluster).
    pub async fn start_with_transport(
        cluster: Cluster,
        config: MembershipConfig,
        transport: &dyn Transport,
    ) -> Result<Self, MembershipError> {
        let local = cluster.local().clone();
        // A new generation each start: peers tell a restarted node from its previous life.
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let id = ChitchatId::new(local.id().to_string(), generation, config.advertise);
        let seeds = config
            .seeds
            .iter()
            .filter(|s| s.parse::<SocketAddr>().ok() != Some(config.advertise))
            .cloned()
            .collect();
        let chitchat_config = ChitchatConfig {
            chitchat_id: id,
            cluster_id: config.cluster_name.clone(),
            gossip_interval: config.interval,
            listen_addr: config.listen,
            seed_nodes: seeds,
            failure_detector_config: FailureDetectorConfig {
                initial_interval: config.interval,
                dead_node_grace_period: config.dead_node_grace,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let initial = vec![
            (HTTP_KEY.to_owned(), local.http_addr().to_string()),
            (STATUS_KEY.to_owned(), UP.to_owned()),
        ];
        let handle = spawn_chitchat(chitchat_config, initial, transport)
            .await
            .map_err(|e| MembershipError::Start {
                listen: config.listen,
                message: format!("{e:#}"),
            })?;
        let mut live = handle.chitchat().lock().await.live_nodes_watcher();
        let follower = tokio::spawn(async move {
            loop {
                let members = members_of(&live.borrow_and_update());
                if cluster.set_members(members) {
                    let view = cluster.view();
                    let ids: Vec<String> =
                        view.members().iter().map(|m| m.id().to_string()).collect();
                    tracing::info!(version = view.version(), members = ?ids, "cluster membership changed");
                }
                if live.changed().await.is_err() {
                    break;
                }
            }
        });
        Ok(Self { handle, follower })
    }

    /// Leaves the cluster: gossips `status: leaving`, gives the others `wait` to take this node
    /// out of their rings, and stops gossiping.
    pub async fn leave(self, wait: Duration) {
        self.announce_leaving().await;
        tokio::time::sleep(wait).await;
        self.follower.abort();
        if let Err(e) = self.handle.shutdown().await {
            tracing::warn!(error = %e, "gossip did not shut down cleanly");
        }
    }

    /// Marks this node as leaving in its own view and in gossip, at once: its ring no longer
    /// holds it, so new requests are forwarded to the members that stay.
    pub async fn announce_leaving(&self) {
        self.handle
            .with_chitchat(|chitchat| chitchat.self_node_state().set(STATUS_KEY, LEAVING))
            .await;
    }
}

/// The members to route to: live nodes that gossip a valid id and HTTP address and are `up`.
fn members_of(live: &BTreeMap<ChitchatId, NodeState>) -> Vec<Node> {
    live.iter()
        .filter(|(_, state)| state.get(STATUS_KEY) == Some(UP))
        .filter_map(|(id, state)| {
            let http = state.get(HTTP_KEY)?.parse().ok()?;
            Some(Node::new(NodeId::new(&*id.node_id).ok()?, http))
        })
        .collect()
}
