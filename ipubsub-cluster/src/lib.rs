//! Who owns which stream: node identity, membership and the ring that maps a stream to the
//! node that serves it.
//!
//! Every request names a stream; the HTTP adapter asks [`Cluster::route`] whether this node
//! owns it. On a single node the answer is always [`Route::Local`]. (Gossip membership, the
//! consistent-hash ring with virtual nodes and forwarding fill this crate in as the cluster
//! grows beyond one node; the question the adapter asks stays the same.)
//!
//! # Layout
//! - [`node`]: [`NodeId`] and [`Node`], a member's identity and advertised address.
//! - [`ring`]: [`Ring`], consistent hashing with virtual nodes on a stable hash.
//! - [`forward`]: [`Forwarder`], the one-hop HTTP client to a stream's owner.
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

pub mod forward;
pub mod node;
pub mod ring;

pub use forward::{DEADLINE_HEADER, FORWARDED_HEADER, ForwardError, Forwarder};
use ipubsub_core::StreamId;
pub use node::{Node, NodeId, NodeIdError};
pub use ring::{DEFAULT_VIRTUAL_NODES, Ring};

/// Where a request for a stream is served.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route<'a> {
    /// This node owns the stream: serve it here.
    Local,
    /// Another node owns it: forward the request there.
    Forward(&'a Node),
}

/// This node's view of the cluster: itself and the ring of live members.
#[derive(Debug, Clone)]
pub struct Cluster {
    local: Node,
    ring: Ring,
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
        let members = members.into_iter().chain([local.clone()]);
        Self {
            ring: Ring::new(members, virtual_nodes),
            local,
        }
    }

    /// This node.
    pub fn local(&self) -> &Node {
        &self.local
    }

    /// Every live member this node knows of, itself included, sorted by id.
    pub fn members(&self) -> &[Node] {
        self.ring.members()
    }

    /// Which node serves `stream`.
    pub fn route(&self, stream: &StreamId) -> Route<'_> {
        match self.ring.owner(stream) {
            Some(owner) if owner.id() != self.local.id() => Route::Forward(owner),
            // This node, or a ring that does not list it yet: serve here.
            _ => Route::Local,
        }
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
        Ok(())
    }
}
