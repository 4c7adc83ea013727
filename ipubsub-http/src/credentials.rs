//! [`Credentials`]: the bearer tokens requests are checked against and the cluster secrets
//! that prove forwarded requests, which a running node can replace
//! ([`App::reload_credentials`](crate::App::reload_credentials)) without dropping a
//! connection or a waiting request.

use std::sync::{Arc, PoisonError, RwLock};

use hyper::header::HeaderValue;
use ipubsub_cluster::ClusterSecret;

use crate::auth::Auth;

/// Tokens and cluster secrets in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Credentials {
    /// The bearer tokens sends and receives need; `None`: no auth.
    pub auth: Option<Auth>,
    /// Sent on this node's forwarded requests, and accepted on those it serves.
    pub cluster_secret: Option<ClusterSecret>,
    /// Also accepted on forwarded requests, not sent: the secrets of a rotation under way
    /// (every member first accepts the new secret, then sends it, then stops accepting the
    /// old one, each step a reload).
    pub accepted_cluster_secrets: Vec<ClusterSecret>,
}

impl Credentials {
    /// Credentials of `auth` and the cluster secrets.
    pub fn new(
        auth: Option<Auth>,
        cluster_secret: Option<ClusterSecret>,
        accepted_cluster_secrets: Vec<ClusterSecret>,
    ) -> Self {
        Self {
            auth,
            cluster_secret,
            accepted_cluster_secrets,
        }
    }

    /// Whether forwarded requests must prove themselves with a secret.
    pub(crate) fn has_secret(&self) -> bool {
        self.cluster_secret.is_some() || !self.accepted_cluster_secrets.is_empty()
    }

    /// Whether `presented` (the cluster-secret header of a forwarded request) is one of the
    /// secrets accepted. Each is compared in constant time.
    pub(crate) fn accepts(&self, presented: Option<&HeaderValue>) -> bool {
        let mut accepted = false;
        for secret in self
            .cluster_secret
            .iter()
            .chain(&self.accepted_cluster_secrets)
        {
            accepted |= secret.verify(presented);
        }
        accepted
    }
}

/// The credentials in force, replaced whole: a request works with the ones it started with.
#[derive(Debug, Default)]
pub(crate) struct Current(RwLock<Arc<Credentials>>);

impl Current {
    pub(crate) fn new(credentials: Credentials) -> Self {
        Self(RwLock::new(Arc::new(credentials)))
    }

    pub(crate) fn get(&self) -> Arc<Credentials> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn set(&self, credentials: Credentials) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(credentials);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_request_may_carry_the_secret_or_an_accepted_one()
    -> Result<(), Box<dyn std::error::Error>> {
        let (new, old) = (
            ClusterSecret::new("new-secret-0123456789")?,
            ClusterSecret::new("old-secret-0123456789")?,
        );
        let header = |s: &str| HeaderValue::from_str(s);
        let rotating = Credentials::new(None, Some(new.clone()), vec![old]);
        assert!(rotating.has_secret());
        assert!(rotating.accepts(Some(&header("new-secret-0123456789")?)));
        assert!(rotating.accepts(Some(&header("old-secret-0123456789")?)));
        assert!(!rotating.accepts(Some(&header("other-secret-0123456789")?)));
        assert!(!rotating.accepts(None));
        let current = Current::new(rotating);
        current.set(Credentials::new(None, Some(new), Vec::new()));
        assert!(
            !current
                .get()
                .accepts(Some(&header("old-secret-0123456789")?))
        );
        assert!(!Credentials::default().has_secret());
        Ok(())
    }
}
