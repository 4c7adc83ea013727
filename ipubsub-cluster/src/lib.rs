//! Who owns which stream: node identity, membership and the ring that maps a stream to the
//! node that serves it.
//!
//! Every request names a stream; the HTTP adapter asks [`Cluster::route`] whether this node
//! owns it, and forwards the request once, with the [`Forwarder`], when another node does.
//! The member set behind the ring is replaced as members come and go.
//!
//! # Layout
//! - [`node`]: [`NodeId`] and [`Node`], a member's identity and advertised address.
//! - [`ring`]: [`Ring`], consistent hashing with virtual nodes on a stable hash.
//! - [`forward`]: [`Forwarder`], the one-hop HTTP client to a stream's owner.
//! - [`coalesce`]: [`Coalesce`], gathered writes for multiplexed connections between members.
//! - [`membership`]: [`Membership`], gossip (chitchat) keeping the member set current.
//! - [`secret`]: [`ClusterSecret`], the proof that a forwarded request comes from a member.
//! - [`Cluster`] and [`Route`]: ownership lookup.
//!
//! # Example
//! ```
//! use ipubsub_cluster::{Cluster, Node, NodeId, Route};
//! use ipubsub_core::StreamId;
//!
//! let me = Node::new(NodeId::new("node-1")?, "127.0.0.1:16681".parse()?);
//! let cluster = Cluster::single(me);
//! let stream: StreamId = "orders".parse()?;
//! assert!(matches!(cluster.route(&stream), Route::Local));
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

pub mod coalesce;
pub mod forward;
pub mod in_flight;
pub mod membership;
pub mod node;
pub mod ring;
pub mod sealed;
pub mod secret;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

pub use coalesce::Coalesce;
pub use forward::{
    CLUSTER_SECRET_NAME, DEADLINE_HEADER, DEADLINE_NAME, DEFAULT_MAX_IN_FLIGHT, FORWARDED_HEADER,
    FORWARDED_NAME, ForwardError, Forwarder, HANDOFF_HEADER, HANDOFF_NAME, PeerHttp,
    REQUEST_ID_HEADER, REQUEST_ID_NAME,
};
pub use in_flight::Relayed;
use ipubsub_core::StreamId;
pub use membership::{GossipSecrets, Membership, MembershipConfig, MembershipError};
pub use node::{Node, NodeId, NodeIdError};
pub use ring::{DEFAULT_VIRTUAL_NODES, Ring};
pub use secret::{CLUSTER_SECRET_HEADER, ClusterSecret, SecretError};

/// Where a request for a stream is served.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// This node owns the stream: serve it here.
    Local,
    /// Another node owns it: forward the request there.
    Forward(Node),
}

/// This node's view of the cluster: itself and the ring of live members. Cheap to clone;
/// clones share the view, which membership replaces as members come and go.
#[derive(Debug, Clone)]
pub struct Cluster {
    local: Node,
    virtual_nodes: usize,
    view: Arc<RwLock<Arc<View>>>,
    /// Members this node could not reach, left out of its ring until the time given or until
    /// gossip decides about them (see [`Cluster::suspect`]).
    suspects: Arc<Mutex<Vec<Suspect>>>,
    /// Whether `suspects` is non-empty: keeps `route` from taking that lock on the hot path.
    any_suspect: Arc<AtomicBool>,
    /// Gossip datagrams rejected by the sealed transport ([`sealed`]).
    gossip_rejected: Arc<std::sync::atomic::AtomicU64>,
}

/// A member this node could not reach.
#[derive(Debug)]
struct Suspect {
    id: NodeId,
    /// The life of it that gossip reported when the suspicion began.
    life: Option<u64>,
    until: Instant,
}

/// One version of the member set and its ring.
#[derive(Debug)]
pub struct View {
    /// The members as membership last reported them, suspects included, each with its life
    /// (see [`Cluster::set_lives`]) when membership tells it.
    reported: Vec<(Node, Option<u64>)>,
    ring: Ring,
    version: u64,
}

impl View {
    /// The live members, sorted by id.
    pub fn members(&self) -> &[Node] {
        self.ring.members()
    }

    /// Increases by one each time the member set changes.
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl Cluster {
    /// A cluster of one: this node owns every stream.
    pub fn single(local: Node) -> Self {
        Self::with_members(local.clone(), [local], DEFAULT_VIRTUAL_NODES)
    }

    /// This node's view of a cluster of `members` (this node is added if missing), each at
    /// `virtual_nodes` points of the ring.
    pub fn with_members(
        local: Node,
        members: impl IntoIterator<Item = Node>,
        virtual_nodes: usize,
    ) -> Self {
        let reported: Vec<Node> = members.into_iter().chain([local.clone()]).collect();
        let view = View {
            ring: Ring::new(reported.clone(), virtual_nodes),
            reported: reported.into_iter().map(|m| (m, None)).collect(),
            version: 1,
        };
        Self {
            local,
            virtual_nodes,
            view: Arc::new(RwLock::new(Arc::new(view))),
            suspects: Arc::new(Mutex::new(Vec::new())),
            any_suspect: Arc::new(AtomicBool::new(false)),
            gossip_rejected: Arc::default(),
        }
    }

    /// Gossip datagrams this node rejected: not sealed with the cluster secret, altered,
    /// replayed or too old (with `cluster.secret` set).
    pub fn gossip_rejected(&self) -> u64 {
        self.gossip_rejected
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This node.
    pub fn local(&self) -> &Node {
        &self.local
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every live member this node knows of, sorted by id.
    pub fn members(&self) -> Vec<Node> {
        self.view().members().to_vec()
    }

    /// Replaces the member set; returns whether it changed. Every node computes the same ring
    /// from the same members.
    pub fn set_members(&self, members: impl IntoIterator<Item = Node>) -> bool {
        self.rebuild(Some(members.into_iter().map(|m| (m, None)).collect()))
    }

    /// [`set_members`](Self::set_members), each member with its *life*: a number that
    /// changes when the node restarts (gossip's generation). A suspicion of a member ends as
    /// soon as gossip reports another life of it (see [`suspect`](Self::suspect)).
    pub fn set_lives(&self, members: impl IntoIterator<Item = (Node, u64)>) -> bool {
        self.rebuild(Some(
            members
                .into_iter()
                .map(|(m, life)| (m, Some(life)))
                .collect(),
        ))
    }

    /// Leaves `node` out of this node's ring after it could not be reached, for `duration` or
    /// until gossip decides about it, whichever comes first: gossip reports the member set
    /// without it (dead: out for good, until it comes back) or with another life of it (it
    /// restarted; the process that could not be reached is gone). Without that, a node
    /// killed and restarted within a second (a new life under the same name, so the member
    /// set never changes) stayed out of the suspecting node's ring for the whole `duration`,
    /// while every other node routed to it: two owners of its streams. Returns whether the
    /// ring changed.
    pub fn suspect(&self, node: &NodeId, duration: Duration) -> bool {
        {
            let life = self
                .view()
                .reported
                .iter()
                .find(|(m, _)| m.id() == node)
                .and_then(|(_, life)| *life);
            let mut suspects = self.suspects.lock().unwrap_or_else(PoisonError::into_inner);
            suspects.retain(|s| s.id != *node);
            suspects.push(Suspect {
                id: node.clone(),
                life,
                until: Instant::now() + duration,
            });
            self.any_suspect.store(true, Ordering::Release);
        }
        self.rebuild(None)
    }

    /// Rebuilds the ring from `reported` members (or the last reported ones), leaving out
    /// current suspects; bumps the version if it changed.
    fn rebuild(&self, reported: Option<Vec<(Node, Option<u64>)>>) -> bool {
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        let suspects: Vec<NodeId> = {
            let mut suspects = self.suspects.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            suspects.retain(|s| s.until > now);
            if let Some(reported) = &reported {
                // Gossip decided: the same life still reported keeps its suspicion.
                suspects.retain(|s| {
                    reported
                        .iter()
                        .any(|(m, life)| *m.id() == s.id && *life == s.life)
                });
            }
            self.any_suspect
                .store(!suspects.is_empty(), Ordering::Release);
            suspects.iter().map(|s| s.id.clone()).collect()
        };
        let reported = reported.unwrap_or_else(|| view.reported.clone());
        let ring = Ring::new(
            reported
                .iter()
                .map(|(m, _)| m)
                .filter(|m| !suspects.contains(m.id()))
                .cloned(),
            self.virtual_nodes,
        );
        if view.ring == ring {
            if view.reported != reported {
                let version = view.version;
                *view = Arc::new(View {
                    reported,
                    ring,
                    version,
                });
            }
            return false;
        }
        let version = view.version + 1;
        *view = Arc::new(View {
            reported,
            ring,
            version,
        });
        true
    }

    /// Which node serves `stream`.
    pub fn route(&self, stream: &StreamId) -> Route {
        if self.any_suspect.load(Ordering::Acquire) {
            // Suspicions end by themselves: give an expired one its streams back.
            let expired = self
                .suspects
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|s| s.until <= Instant::now());
            if expired {
                self.rebuild(None);
            }
        }
        let view = self.view();
        match view.ring.owner(stream) {
            Some(owner) if owner.id() != self.local.id() => Route::Forward(owner.clone()),
            // This node, or an empty ring (this node is leaving): serve here.
            _ => Route::Local,
        }
    }

    /// Which node would serve `stream` if this node were gone: where a leaving node hands its
    /// buffered messages. `None` when no other member is known.
    pub fn successor(&self, stream: &StreamId) -> Option<Node> {
        let view = self.view();
        let others = view
            .members()
            .iter()
            .filter(|m| m.id() != self.local.id())
            .cloned();
        Ring::new(others, self.virtual_nodes).owner(stream).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_node_owns_every_stream() -> Result<(), Box<dyn std::error::Error>> {
        let cluster = Cluster::single(Node::new(NodeId::new("n1")?, "127.0.0.1:1".parse()?));
        for i in 0..1000 {
            let stream = StreamId::new(format!("s{i}"))?;
            assert_eq!(cluster.route(&stream), Route::Local);
        }
        assert_eq!(cluster.members().len(), 1);
        assert_eq!(cluster.successor(&StreamId::new("s")?), None);
        Ok(())
    }

    #[test]
    fn the_view_follows_the_member_set() -> Result<(), Box<dyn std::error::Error>> {
        let me = Node::new(NodeId::new("a")?, "127.0.0.1:1".parse()?);
        let other = Node::new(NodeId::new("b")?, "127.0.0.1:2".parse()?);
        let cluster = Cluster::single(me.clone());
        let shared = cluster.clone();
        assert!(cluster.set_members([me.clone(), other.clone()]));
        assert!(
            !cluster.set_members([other.clone(), me.clone()]),
            "same set, same ring"
        );
        assert_eq!(shared.view().version(), 2, "clones share the view");
        let forwarded = (0..200)
            .map(|i| StreamId::new(format!("s{i}")))
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .filter(|s| shared.route(s) == Route::Forward(other.clone()))
            .count();
        assert!(
            forwarded > 50 && forwarded < 150,
            "{forwarded} of 200 forwarded"
        );
        assert_eq!(
            cluster.successor(&StreamId::new("s1")?),
            Some(other.clone())
        );

        // A suspect is left out until its suspicion ends.
        assert!(cluster.suspect(other.id(), Duration::from_millis(200)));
        assert_eq!(cluster.members(), std::slice::from_ref(&me));
        assert_eq!(cluster.view().members().len(), 1);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            cluster.route(&StreamId::new("s1")?),
            Route::Forward(other),
            "back after expiry"
        );
        assert_eq!(cluster.members().len(), 2);
        Ok(())
    }

    #[test]
    fn gossip_ends_a_suspicion_when_it_reports_another_life_or_none()
    -> Result<(), Box<dyn std::error::Error>> {
        let me = Node::new(NodeId::new("a")?, "127.0.0.1:1".parse()?);
        let other = Node::new(NodeId::new("b")?, "127.0.0.1:2".parse()?);
        let cluster = Cluster::single(me.clone());
        let both = |other_life| [(me.clone(), 1), (other.clone(), other_life)];
        assert!(cluster.set_lives(both(7)));
        let long = Duration::from_secs(3600);

        // The same life reported again (a heartbeat, another member's change): still out.
        assert!(cluster.suspect(other.id(), long));
        assert!(!cluster.set_lives(both(7)));
        assert_eq!(cluster.members(), std::slice::from_ref(&me));

        // It restarted: another life under the same name and address is back at once.
        assert!(cluster.set_lives(both(8)), "the new life is routed to");
        assert_eq!(cluster.members().len(), 2);

        // Gossip declared it dead, then alive again (a paused node woke): back too.
        assert!(cluster.suspect(other.id(), long));
        assert!(!cluster.set_lives([(me.clone(), 1)]), "out either way");
        assert!(cluster.set_lives(both(8)));
        assert_eq!(cluster.members().len(), 2);

        // Without lives (set_members), only dying in gossip ends it.
        cluster.set_members([me.clone(), other.clone()]);
        assert_eq!(cluster.members().len(), 2);
        assert!(cluster.suspect(other.id(), long));
        assert!(!cluster.set_members([me.clone(), other.clone()]));
        assert_eq!(cluster.members(), std::slice::from_ref(&me));
        Ok(())
    }
}
