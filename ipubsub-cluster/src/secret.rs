//! [`ClusterSecret`]: what proves that a forwarded request comes from a member.
//!
//! A forwarded request is served where it lands, without routing and without the client
//! checks of the node that forwarded it (that node made them). Without proof of origin, any
//! client could add [`FORWARDED_HEADER`](crate::FORWARDED_HEADER) to skip both. With a secret
//! configured, the [`Forwarder`](crate::Forwarder) sends it in [`CLUSTER_SECRET_HEADER`] and
//! the receiving node serves a forwarded request only when the header matches.

use std::fmt;

use hyper::header::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Carries the cluster secret on node-to-node requests.
pub const CLUSTER_SECRET_HEADER: &str = "x-ipubsub-cluster-secret";

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Why a string was refused as a cluster secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Shorter than [`MIN_SECRET_LEN`], longer than 1024 bytes, or with a character outside
    /// visible ASCII (it travels in a header).
    #[error("a cluster secret is {MIN_SECRET_LEN} to 1024 visible ASCII characters")]
    Invalid,
}

/// The secret every member of a cluster shares. Its `Debug` output never shows it.
#[derive(Clone)]
pub struct ClusterSecret {
    /// The header value the forwarder sends, marked sensitive.
    header: HeaderValue,
    /// SHA-256 of the secret: presented secrets are compared by digest, in constant time,
    /// so neither their content nor their length shows in the time a check takes.
    digest: [u8; 32],
}

impl ClusterSecret {
    /// Validates `secret`.
    pub fn new(secret: &str) -> Result<Self, SecretError> {
        let visible = secret.bytes().all(|b| b.is_ascii_graphic());
        if !(MIN_SECRET_LEN..=1024).contains(&secret.len()) || !visible {
            return Err(SecretError::Invalid);
        }
        let mut header = HeaderValue::from_str(secret).map_err(|_| SecretError::Invalid)?;
        header.set_sensitive(true);
        Ok(Self {
            header,
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// Whether `presented` (the value of [`CLUSTER_SECRET_HEADER`], if any) is this secret.
    pub fn verify(&self, presented: Option<&HeaderValue>) -> bool {
        let Some(presented) = presented else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(self.digest.ct_eq(&digest))
    }

    /// The value to send in [`CLUSTER_SECRET_HEADER`].
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl PartialEq for ClusterSecret {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.digest.ct_eq(&other.digest))
    }
}

impl Eq for ClusterSecret {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_verifies() -> Result<(), Box<dyn std::error::Error>> {
        let secret = ClusterSecret::new("correct-horse-battery")?;
        let header = |s: &str| HeaderValue::from_str(s);
        assert!(secret.verify(Some(&header("correct-horse-battery")?)));
        assert!(!secret.verify(Some(&header("correct-horse-batterY")?)));
        assert!(!secret.verify(Some(&header("correct-horse-battery-")?)));
        assert!(!secret.verify(Some(&header("")?)));
        assert!(!secret.verify(None));
        Ok(())
    }

    #[test]
    fn short_or_invisible_secrets_are_refused_and_debug_hides_the_secret() {
        assert_eq!(
            ClusterSecret::new("too-short").err(),
            Some(SecretError::Invalid)
        );
        assert!(ClusterSecret::new("has a space in it, sixteen+").is_err());
        assert!(ClusterSecret::new("tab\tseparated-0123456789").is_err());
        assert!(ClusterSecret::new(&"x".repeat(1025)).is_err());
        let secret = ClusterSecret::new("correct-horse-battery").ok();
        let shown = format!("{secret:?}");
        assert!(!shown.contains("horse"), "{shown}");
    }
}
