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
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::{Transport, UdpTransport};
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, ProtocolVersion,
    spawn_chitchat,
};
use tokio::task::JoinHandle;

use crate::Cluster;
use crate::node::{Node, NodeId};
use crate::sealed::{GossipKeys, SealedTransport, Sealer};
use crate::secret::ClusterSecret;

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
    /// The cluster secrets: with any, every gossip datagram is sealed with the first and
    /// opened with any ([`sealed`](crate::sealed)); without, gossip is plain chitchat.
    pub secrets: Vec<ClusterSecret>,
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
            secrets: Vec::new(),
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
    /// Another live member already gossips under this node's name (`node.name`): two nodes
    /// of one name would share a place on the ring.
    #[error(
        "node.name {name:?} is already used by the member gossiping from {by}: give every node its own name"
    )]
    NameTaken {
        /// The name.
        name: String,
        /// The other member's gossip address.
        by: SocketAddr,
    },
}

/// How many gossip rounds the member set must stay unchanged before a joining node takes it
/// as the whole cluster.
const SETTLED_ROUNDS: u32 = 3;

/// This node's membership in the cluster: gossip, and the task that keeps the [`Cluster`]
/// view in step with it.
pub struct Membership {
    handle: ChitchatHandle,
    follower: JoinHandle<()>,
    /// The gossip interval.
    interval: Duration,
    /// Seals the gossip, when the cluster has a secret.
    sealer: Option<Arc<Sealer>>,
    cluster_name: String,
}

/// Replaces the cluster secrets a running node's gossip is sealed with (a reload). Cheap to
/// clone.
#[derive(Clone)]
pub struct GossipSecrets {
    sealer: Arc<Sealer>,
    cluster_name: String,
}

impl GossipSecrets {
    /// Seals with the first of `secrets` from now on, opens with any; `false` (nothing
    /// changes) without any secret.
    pub fn set(&self, secrets: &[ClusterSecret]) -> bool {
        match GossipKeys::new(secrets, &self.cluster_name) {
            Some(keys) => {
                self.sealer.set_keys(keys);
                true
            }
            None => false,
        }
    }
}

impl std::fmt::Debug for GossipSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipSecrets").finish_non_exhaustive()
    }
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
        match GossipKeys::new(&config.secrets, &config.cluster_name) {
            Some(keys) => {
                let sealer = Arc::new(Sealer::new(keys));
                let transport =
                    SealedTransport::new(Arc::clone(&sealer), Arc::clone(&cluster.gossip_rejected));
                let mut membership =
                    Self::start_with_transport(cluster, config, &transport).await?;
                membership.sealer = Some(sealer);
                Ok(membership)
            }
            None => Self::start_with_transport(cluster, config, &UdpTransport).await,
        }
    }

    /// What replaces the secrets gossip is sealed with, for a node that started with some
    /// (sealing cannot be turned on or off while it runs).
    pub fn gossip_secrets(&self) -> Option<GossipSecrets> {
        self.sealer.as_ref().map(|sealer| GossipSecrets {
            sealer: Arc::clone(sealer),
            cluster_name: self.cluster_name.clone(),
        })
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
                if cluster.set_lives(members) {
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
        Ok(Self {
            handle,
            follower,
            interval: config.interval,
            sealer: None,
            cluster_name: config.cluster_name,
        })
    }

    /// Waits until this node has the cluster's membership before it serves: until gossip shows
    /// another member and the member set then stays the same for three gossip rounds (a seed
    /// passes on every member it knows in one exchange), or until `timeout` (logged: then this
    /// node serves with what it has, alone if it is the first). Fails if another live member
    /// gossips under this node's name.
    pub async fn join(&self, cluster: &Cluster, timeout: Duration) -> Result<(), MembershipError> {
        let started = tokio::time::Instant::now();
        let round = self.interval;
        let mut settled_since: Option<(u64, tokio::time::Instant)> = None;
        loop {
            self.refuse_a_taken_name().await?;
            let now = tokio::time::Instant::now();
            let view = cluster.view();
            if view.members().len() >= 2 {
                match settled_since {
                    Some((version, since)) if version == view.version() => {
                        if now.duration_since(since) >= round * SETTLED_ROUNDS {
                            tracing::info!(members = view.members().len(), took = ?started.elapsed(), "joined the cluster");
                            return Ok(());
                        }
                    }
                    _ => settled_since = Some((view.version(), now)),
                }
            }
            if now.duration_since(started) >= timeout {
                if view.members().len() >= 2 {
                    tracing::warn!(
                        ?timeout,
                        members = view.members().len(),
                        "the membership did not settle: serving with the members known now"
                    );
                } else {
                    tracing::info!(
                        ?timeout,
                        "no other member answered: serving as the first node of the cluster"
                    );
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An error if a live member other than this node gossips under this node's name.
    async fn refuse_a_taken_name(&self) -> Result<(), MembershipError> {
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        let me = chitchat.self_chitchat_id().clone();
        let taken = chitchat
            .live_nodes()
            .find(|id| {
                id.node_id == me.node_id && id.gossip_advertise_addr != me.gossip_advertise_addr
            })
            .map(|id| id.gossip_advertise_addr);
        match taken {
            Some(by) => Err(MembershipError::NameTaken {
                name: me.node_id.to_string(),
                by,
            }),
            None => Ok(()),
        }
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

/// The members to route to, each with its life (its gossip generation): live nodes that
/// gossip a valid id and HTTP address and are `up`. Of two live nodes with one name, the one
/// that started first keeps its place (chitchat orders ids by name, then generation); the
/// other refuses to join ([`MembershipError::NameTaken`]).
fn members_of(live: &BTreeMap<ChitchatId, NodeState>) -> Vec<(Node, u64)> {
    let mut members: Vec<(Node, u64)> = Vec::new();
    for (id, state) in live {
        if state.get(STATUS_KEY) != Some(UP) {
            continue;
        }
        let (Some(http), Ok(node_id)) = (
            state.get(HTTP_KEY).and_then(|h| h.parse().ok()),
            NodeId::new(&*id.node_id),
        ) else {
            continue;
        };
        if members.last().is_none_or(|(last, _)| *last.id() != node_id) {
            members.push((Node::new(node_id, http), id.generation_id));
        }
    }
    members
}
