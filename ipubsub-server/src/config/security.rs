//! The security sections of the configuration: `auth:` tokens, the `cluster.secret` and
//! `tls:`, and how they become the HTTP adapter's [`Auth`], [`ClusterSecret`] and TLS settings.

use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Format, Yaml};
use ipubsub_cluster::ClusterSecret;
use ipubsub_http::{Auth, Credentials, HttpConfig, TokenGrant};
use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, one_line};

/// A configured secret: read and written as a plain string, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `auth:` bearer tokens. Auth is on when any token is configured, here or in the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// The tokens.
    pub tokens: Vec<TokenSection>,
    /// A YAML file with more tokens, under a `tokens:` key in the same shape, read at start
    /// (so that the tokens can live apart from the rest of the configuration).
    pub tokens_file: Option<PathBuf>,
}

impl AuthSection {
    /// Whether any token is configured, here or in the tokens file.
    fn is_on(&self) -> bool {
        !self.tokens.is_empty() || self.tokens_file.is_some()
    }
}

/// One entry of `auth.tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    /// Names the token in logs and errors.
    pub name: String,
    /// The bearer token itself (16 to 1024 visible ASCII characters).
    pub token: Secret,
    /// May send.
    #[serde(default = "yes")]
    pub publish: bool,
    /// May receive.
    #[serde(default = "yes")]
    pub subscribe: bool,
    /// Only streams whose id starts with this.
    #[serde(default)]
    pub stream_prefix: String,
    /// Requests per second on one node; 0: no limit.
    #[serde(default)]
    pub requests_per_second: u32,
    /// Requests above the rate at once; 0: one second's worth.
    #[serde(default)]
    pub burst: u32,
}

fn yes() -> bool {
    true
}

/// `tls:` HTTPS for the API, and between members. On when `cert_file` is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// The certificate chain, PEM, leaf first.
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM.
    pub key_file: Option<PathBuf>,
    /// The certificates this node trusts when it forwards to members (PEM: their CA, or
    /// their self-signed certificates); `cert_file` when unset.
    pub peer_ca_file: Option<PathBuf>,
    /// The name members' certificates are checked for; unset: the IP address each advertises.
    pub peer_server_name: Option<String>,
}

impl Config {
    /// Checks the security settings that need no file read.
    pub(super) fn validate_security(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let tls = &self.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return invalid("tls.cert_file and tls.key_file go together".into());
        }
        if tls.cert_file.is_none() && (tls.peer_ca_file.is_some() || tls.peer_server_name.is_some())
        {
            return invalid(
                "tls.peer_ca_file and tls.peer_server_name need tls.cert_file: members listen the way this node does"
                    .into(),
            );
        }
        if cfg!(not(feature = "tls")) && tls.cert_file.is_some() {
            return invalid("tls: this build has no TLS (cargo feature `tls`)".into());
        }
        if self.auth.is_on()
            && self.cluster.secret.is_none()
            && !self.cluster.static_bootstrap_node_addr_ports.is_empty()
        {
            return invalid(
                "cluster.secret is needed in a cluster with auth on: without it, no node could prove the requests it forwards"
                    .into(),
            );
        }
        if let Some(secret) = &self.cluster.secret
            && let Err(e) = ClusterSecret::new(&secret.0)
        {
            return invalid(format!("cluster.secret: {e}"));
        }
        if let Some(Err(e)) = self
            .cluster
            .accepted_secrets
            .iter()
            .map(|s| ClusterSecret::new(&s.0))
            .find(Result::is_err)
        {
            return invalid(format!("cluster.accepted_secrets: {e}"));
        }
        Ok(())
    }

    /// Sets `c`'s tokens, cluster secrets and members' TLS.
    pub(super) fn apply_security(&self, c: &mut HttpConfig) -> Result<(), ConfigError> {
        let credentials = self.credentials()?;
        c.auth = credentials.auth;
        c.cluster_secret = credentials.cluster_secret;
        c.accepted_cluster_secrets = credentials.accepted_cluster_secrets;
        #[cfg(feature = "tls")]
        if let Some(cert) = &self.tls.cert_file {
            let roots = self.tls.peer_ca_file.as_ref().unwrap_or(cert);
            let peer = ipubsub_http::tls::PeerTls::from_pem_file(
                roots,
                self.tls.peer_server_name.as_deref(),
            )
            .map_err(|e| ConfigError::Invalid(format!("tls: {e}")))?;
            c.peer_tls = Some(peer);
        }
        Ok(())
    }

    /// The tokens (`auth.tokens` and `auth.tokens_file`, read now) and the cluster secrets:
    /// what a reload replaces.
    pub fn credentials(&self) -> Result<Credentials, ConfigError> {
        let secret = |s: &Secret, key: &str| {
            ClusterSecret::new(&s.0).map_err(|e| ConfigError::Invalid(format!("{key}: {e}")))
        };
        let cluster = &self.cluster;
        Ok(Credentials::new(
            self.auth()?,
            cluster
                .secret
                .as_ref()
                .map(|s| secret(s, "cluster.secret"))
                .transpose()?,
            cluster
                .accepted_secrets
                .iter()
                .map(|s| secret(s, "cluster.accepted_secrets"))
                .collect::<Result<_, _>>()?,
        ))
    }

    /// The listener's certificate and key, when TLS is on.
    #[cfg(feature = "tls")]
    pub fn server_tls(&self) -> Result<Option<ipubsub_http::tls::ServerTls>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.tls.cert_file, &self.tls.key_file) else {
            return Ok(None);
        };
        ipubsub_http::tls::ServerTls::from_pem_files(cert, key)
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("tls: {e}")))
    }

    /// The tokens of `auth.tokens` and `auth.tokens_file`; `None` when there are none.
    fn auth(&self) -> Result<Option<Auth>, ConfigError> {
        if !self.auth.is_on() {
            return Ok(None);
        }
        let mut tokens = self.auth.tokens.clone();
        if let Some(file) = &self.auth.tokens_file {
            if !file.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "auth.tokens_file {} does not exist",
                    file.display()
                )));
            }
            let listed: Vec<TokenSection> = Figment::from(Yaml::file_exact(file))
                .extract_inner("tokens")
                .map_err(|e| {
                    ConfigError::Invalid(format!(
                        "auth.tokens_file {}: {}",
                        file.display(),
                        one_line(&e)
                    ))
                })?;
            tokens.extend(listed);
        }
        let grants = tokens.into_iter().map(|t| {
            let mut grant = TokenGrant::new(t.name, t.token.0);
            grant.publish = t.publish;
            grant.subscribe = t.subscribe;
            grant.stream_prefix = t.stream_prefix;
            grant.requests_per_second = t.requests_per_second;
            grant.burst = t.burst;
            grant
        });
        Auth::new(grants)
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("auth: {e}")))
    }
}
