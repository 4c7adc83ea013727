//! SIGHUP: the configuration is read again (file and environment, as at start) and its
//! credentials replace the running ones: `auth.tokens` and `auth.tokens_file`, the cluster
//! secrets (for forwarded requests and for sealed gossip), and the listener's TLS certificate
//! and key. Connections and waiting requests are
//! untouched. A reload that fails (a bad file, a key that does not match its certificate)
//! changes nothing and logs why; other settings apply at the next start.

use std::path::PathBuf;

use ipubsub_cluster::{ClusterSecret, GossipSecrets};
use ipubsub_http::App;

use crate::config::Config;

/// What a reload replaces.
pub(crate) struct Reloadable {
    /// The configuration file, as given at start.
    pub(crate) config_file: Option<PathBuf>,
    pub(crate) app: App,
    /// `None`: no gossip (a single node); `Some(None)`: gossip without a secret;
    /// `Some(Some(_))`: sealed gossip, whose secrets a reload replaces.
    pub(crate) gossip: Option<Option<GossipSecrets>>,
    /// The listener's certificate, when it speaks HTTPS.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<ipubsub_http::tls::ServerTls>,
}

/// Listens for SIGHUP from now on (its default action ends the process): made at the start
/// of `run`, before the node says it listens.
pub(crate) fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Every cluster secret, the one sent first: gossip seals with the first and opens with all.
pub(crate) fn cluster_secrets(
    sent: Option<&ClusterSecret>,
    accepted: &[ClusterSecret],
) -> Vec<ClusterSecret> {
    sent.into_iter().chain(accepted).cloned().collect()
}

impl Reloadable {
    /// Reloads on every one of `hangups`, until the task is aborted.
    pub(crate) async fn run(self, mut hangups: tokio::signal::unix::Signal) {
        while hangups.recv().await.is_some() {
            match self.reload() {
                Ok(summary) => tracing::info!("reloaded on SIGHUP: {summary}"),
                Err(e) => tracing::error!(
                    "reload on SIGHUP failed, the running credentials are kept: {e}"
                ),
            }
        }
    }

    /// Reads the configuration and applies its credentials, all or nothing.
    fn reload(&self) -> Result<String, String> {
        let config = Config::load(self.config_file.as_deref()).map_err(|e| e.to_string())?;
        let credentials = config.credentials().map_err(|e| e.to_string())?;
        #[cfg(feature = "tls")]
        let tls = match (&self.tls, &config.tls.cert_file, &config.tls.key_file) {
            (Some(tls), Some(cert), Some(key)) => Some((tls, cert, key)),
            (None, None, _) => None,
            _ => return Err("turning TLS on or off needs a restart".into()),
        };
        let secrets = cluster_secrets(
            credentials.cluster_secret.as_ref(),
            &credentials.accepted_cluster_secrets,
        );
        match (&self.gossip, secrets.is_empty()) {
            (Some(Some(_)), true) => {
                return Err(
                    "taking the cluster secret away from sealed gossip needs a restart".into(),
                );
            }
            (Some(None), false) => {
                return Err("sealing the gossip of a running cluster (a first cluster.secret) needs a restart of every node".into());
            }
            _ => {}
        }
        // Every file was read and checked: nothing below can fail half-way but the
        // certificate, which goes first.
        #[cfg(feature = "tls")]
        if let Some((tls, cert, key)) = tls {
            tls.reload_pem_files(cert, key)
                .map_err(|e| format!("tls: {e}"))?;
        }
        let summary = format!(
            "{} tokens, {} cluster secrets{}",
            credentials.auth.as_ref().map_or(0, ipubsub_http::Auth::len),
            usize::from(credentials.cluster_secret.is_some())
                + credentials.accepted_cluster_secrets.len(),
            if cfg!(feature = "tls") && config.tls.cert_file.is_some() {
                ", the TLS certificate"
            } else {
                ""
            }
        );
        if let Some(Some(gossip)) = &self.gossip {
            gossip.set(&secrets);
        }
        self.app.reload_credentials(credentials);
        Ok(summary)
    }
}
