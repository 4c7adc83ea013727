//! A member's identity: [`NodeId`] and [`Node`].

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// Why a string was refused as a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeIdError {
    /// Empty, longer than 128 bytes, or with a character outside `[A-Za-z0-9._:-]`.
    #[error("a node id is 1 to 128 characters of A-Z a-z 0-9 . _ : -")]
    Invalid,
}

/// A node's name in the cluster, unique among its members: 1 to 128 characters of
/// `[A-Za-z0-9._:-]`, so it is safe in logs, headers and metrics labels.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Box<str>);

impl NodeId {
    /// Validates `value`.
    pub fn new(value: impl AsRef<str>) -> Result<Self, NodeIdError> {
        let value = value.as_ref();
        let ok = !value.is_empty()
            && value.len() <= 128
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(Self(value.into()))
        } else {
            Err(NodeIdError::Invalid)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A member of the cluster: its id and the HTTP address other nodes and clients reach it at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    id: NodeId,
    http_addr: SocketAddr,
}

impl Node {
    /// A member named `id`, serving HTTP at `http_addr`.
    pub fn new(id: NodeId, http_addr: SocketAddr) -> Self {
        Self { id, http_addr }
    }

    /// The node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The HTTP address the node advertises.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_restricted_to_a_safe_alphabet() {
        assert!(NodeId::new("node-1.eu_west:a").is_ok());
        assert_eq!(NodeId::new(""), Err(NodeIdError::Invalid));
        assert_eq!(NodeId::new("a b"), Err(NodeIdError::Invalid));
        assert_eq!(NodeId::new("x".repeat(129)), Err(NodeIdError::Invalid));
    }
}
