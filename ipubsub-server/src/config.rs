//! The server's configuration: a YAML file overridden by `IPUBSUB_<SECTION>__<KEY>` variables.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Yaml};
use ipubsub_core::EngineConfig;
use ipubsub_http::{Cors, HttpConfig};
use serde::{Deserialize, Serialize};

mod memory;
mod security;
mod storage;
mod transport;

pub use security::{AuthSection, Secret, TlsSection};
pub use storage::{
    Backend, CassandraConsistency, CassandraSection, DurabilitySetting, MongoSection, SqlSection,
    StorageSection,
};
pub use transport::{Http2Section, SseSection};

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable could not be read or does not fit the schema.
    #[error("{}", one_line(.0))]
    Load(#[source] Box<figment::Error>),
    /// A value is out of its allowed range.
    #[error("{0}")]
    Invalid(String),
}

fn one_line(e: &figment::Error) -> String {
    e.to_string().replace('\n', "; ")
}

/// The whole configuration. Every key has a default; unknown keys are errors, so that a typo
/// never silently falls back to a default.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node.
    pub node: NodeSection,
    /// The cluster it belongs to.
    pub cluster: ClusterSection,
    /// HTTP limits and defaults.
    pub http: HttpSection,
    /// Who may send and receive.
    pub auth: AuthSection,
    /// HTTPS.
    pub tls: TlsSection,
    /// The in-memory engine.
    pub engine: EngineSection,
    /// The persistent log's storage.
    pub storage: StorageSection,
    /// Logging.
    pub log: LogSection,
}

/// `node:`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// The node's id in the cluster.
    pub name: String,
    /// Where the HTTP API listens. Port 0 picks a free port (printed at start-up).
    pub http_bind_addr_port: SocketAddr,
    /// The address other nodes and clients reach the API at; the bind address if unset.
    pub http_advertise_addr_port: Option<SocketAddr>,
    /// Where gossip listens (UDP). Unset: a single node that gossips with nobody.
    pub gossip_bind_addr_port: Option<SocketAddr>,
    /// The gossip address other nodes use; the bind address if unset.
    pub gossip_advertise_addr_port: Option<SocketAddr>,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            name: "node-1".into(),
            http_bind_addr_port: SocketAddr::from(([127, 0, 0, 1], 16681)),
            http_advertise_addr_port: None,
            gossip_bind_addr_port: None,
            gossip_advertise_addr_port: None,
        }
    }
}

/// `cluster:`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// The cluster's name; nodes only join a cluster of the same name.
    pub name: String,
    /// Gossip addresses of nodes to contact at start (this node's own may be listed).
    pub static_bootstrap_node_addr_ports: Vec<String>,
    /// Points of each member on the consistent-hash ring.
    pub virtual_nodes: usize,
    /// Time between gossip rounds, in milliseconds.
    pub gossip_interval_ms: u64,
    /// At start, how long to wait to hear from another member before serving alone (the
    /// first node of a cluster): a node never routes as if alone while its seeds answer.
    pub join_timeout_seconds: u64,
    /// Shared by every member: proves forwarded requests. Needed in a cluster with auth on.
    pub secret: Option<Secret>,
    /// Also accepted on forwarded requests, not sent: for rotating `secret` with reloads.
    pub accepted_secrets: Vec<Secret>,
    /// Requests this node has in flight to one member at most; more get a 503.
    pub max_forwarded_per_member: usize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            name: "ipubsub".into(),
            static_bootstrap_node_addr_ports: Vec::new(),
            virtual_nodes: ipubsub_cluster::DEFAULT_VIRTUAL_NODES,
            gossip_interval_ms: 500,
            join_timeout_seconds: 5,
            secret: None,
            accepted_secrets: Vec::new(),
            max_forwarded_per_member: ipubsub_cluster::DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// `http:`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Wait of a receive without `timeoutSeconds`.
    pub receive_default_timeout_seconds: u64,
    /// Longest `timeoutSeconds` / `blockingSendTimeoutSeconds` accepted.
    pub max_timeout_seconds: u64,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Bytes of request bodies held at once, all connections together; unset: an eighth of
    /// the memory this process may use, at most 256 MiB.
    pub max_body_bytes_in_flight: Option<u64>,
    /// Longest stream id, in bytes (1 to 256).
    pub max_stream_id_bytes: usize,
    /// `inMemoryStreamSize` of a send without one.
    pub default_stream_size: u32,
    /// Largest `inMemoryStreamSize` accepted.
    pub max_stream_size: u32,
    /// On SIGTERM, how long open connections get to finish.
    pub shutdown_grace_seconds: u64,
    /// How long a client may take to send a request's body.
    pub body_read_timeout_seconds: u64,
    /// How long a connection may stay idle between requests, or take to send a request's
    /// headers, before it is closed.
    pub idle_timeout_seconds: u64,
    /// Client connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Most sends one `POST /api/v1/streams/sendBatch` may hold.
    pub max_batch_items: usize,
    /// Longest lease an acknowledged receive (`ackTimeoutSeconds`) or an extension may ask
    /// for, and longest `delaySeconds` of a return.
    pub max_ack_timeout_seconds: u64,
    /// Most receipt handles one `ack`, `nack` or `extend` may hold.
    pub max_receipt_handles: usize,
    /// The dedupe window of an in-memory send that gives no `dedupeWindowSeconds`; 0: none.
    pub default_dedupe_window_seconds: u64,
    /// Longest `dedupeWindowSeconds` a send may ask for.
    pub max_dedupe_window_seconds: u64,
    /// Browsers: which pages of other origins may call the API.
    pub cors: CorsSection,
    /// HTTP/2 connections, and forwarding to members over HTTP/2.
    pub http2: Http2Section,
    /// Receives as Server-Sent Events.
    pub sse: SseSection,
}

/// `http.cors:`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsSection {
    /// Origins (`https://app.example`, `http://localhost:8080`) whose pages may call the API,
    /// or `["*"]` for every origin; empty (the default): no CORS headers.
    pub allowed_origins: Vec<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        let d = HttpConfig::default();
        Self {
            receive_default_timeout_seconds: d.default_receive_timeout.as_secs(),
            max_timeout_seconds: d.max_timeout.as_secs(),
            max_body_bytes: d.max_body_bytes,
            max_body_bytes_in_flight: None,
            max_stream_id_bytes: d.max_stream_id_bytes,
            default_stream_size: d.default_stream_size,
            max_stream_size: d.max_stream_size,
            shutdown_grace_seconds: 5,
            body_read_timeout_seconds: d.body_read_timeout.as_secs(),
            idle_timeout_seconds: d.idle_timeout.as_secs(),
            max_connections: d.max_connections,
            max_batch_items: d.max_batch_items,
            max_ack_timeout_seconds: d.max_ack_timeout.as_secs(),
            max_receipt_handles: d.max_receipt_handles,
            default_dedupe_window_seconds: d.default_dedupe_window.as_secs(),
            max_dedupe_window_seconds: d.max_dedupe_window.as_secs(),
            cors: CorsSection::default(),
            http2: Http2Section::default(),
            sse: SseSection::default(),
        }
    }
}

/// `engine:`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Registry shards (rounded up to a power of two).
    pub shards: usize,
    /// Most streams held at once.
    pub max_streams: usize,
    /// Most receives and blocking sends waiting at once; more get a 503.
    pub max_waiting_requests: usize,
    /// The memory budget of in-memory messages (buffered, and held by waiting senders); a
    /// send past it gets a 503. Unset: a quarter of the memory this process may use.
    pub max_buffered_bytes: Option<u64>,
    /// An empty stream nobody waits on is dropped after this long.
    pub stream_idle_timeout_seconds: u64,
    /// How often idle streams are looked for (and expired dedupe entries forgotten).
    pub sweep_interval_seconds: u64,
    /// Most message ids the streams' dedupe windows remember at once, all streams together.
    pub max_dedupe_entries: usize,
}

impl Default for EngineSection {
    fn default() -> Self {
        let d = EngineConfig::default();
        Self {
            shards: d.shards,
            max_streams: d.max_streams,
            max_waiting_requests: d.max_waiters,
            max_buffered_bytes: None,
            stream_idle_timeout_seconds: d.stream_idle_timeout.as_secs(),
            sweep_interval_seconds: 5,
            max_dedupe_entries: d.max_dedupe_entries,
        }
    }
}

/// `log:`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `ipubsub_http=debug,info`. `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object a line.
    Json,
}

impl Config {
    /// Every key with its default, as a YAML file that [`Config::load`] reads back to
    /// `Config::default()`: what `ipubsub-server --print-default-config` prints. Generated
    /// from the structs, so it cannot drift from them.
    pub fn default_yaml() -> String {
        let mut out = String::from(
            "# ipubsub-server's configuration with every key at its default.\n\
             # Each key is described in README.md (Configuration reference); any key can be\n\
             # overridden by an environment variable IPUBSUB_<SECTION>__<KEY>.\n",
        );
        // The config is plain data: serializing it cannot fail.
        let value = serde_json::to_value(Config::default()).unwrap_or_default();
        write_yaml(&value, 0, &mut out);
        out
    }

    /// Defaults, then the YAML file if given, then `IPUBSUB_*` variables; checked.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Yaml::file_exact(file));
        }
        let config: Config = figment
            .merge(Env::prefixed("IPUBSUB_").split("__"))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let http = &self.http;
        if http.max_stream_id_bytes == 0 || http.max_stream_id_bytes > ipubsub_core::MAX_ID_LEN {
            return invalid(format!(
                "http.max_stream_id_bytes must be 1 to 256, is {}",
                http.max_stream_id_bytes
            ));
        }
        if http.receive_default_timeout_seconds > http.max_timeout_seconds {
            return invalid(format!(
                "http.receive_default_timeout_seconds ({}) exceeds http.max_timeout_seconds ({})",
                http.receive_default_timeout_seconds, http.max_timeout_seconds
            ));
        }
        if http.default_stream_size > http.max_stream_size {
            return invalid(format!(
                "http.default_stream_size ({}) exceeds http.max_stream_size ({})",
                http.default_stream_size, http.max_stream_size
            ));
        }
        if let Some(in_flight) = http.max_body_bytes_in_flight
            && in_flight < http.max_body_bytes as u64
        {
            return invalid(format!(
                "http.max_body_bytes_in_flight ({in_flight}) is below http.max_body_bytes ({}): no body of the largest size could be received",
                http.max_body_bytes
            ));
        }
        if http.max_body_bytes == 0
            || http.body_read_timeout_seconds == 0
            || http.idle_timeout_seconds == 0
            || http.max_connections == 0
            || http.max_batch_items == 0
            || http.max_ack_timeout_seconds == 0
            || http.max_receipt_handles == 0
        {
            return invalid(
                "http.max_body_bytes, http.body_read_timeout_seconds, http.idle_timeout_seconds, http.max_connections, http.max_batch_items, http.max_ack_timeout_seconds and http.max_receipt_handles must be above 0"
                    .into(),
            );
        }
        if let Err(e) = Cors::new(&http.cors.allowed_origins) {
            return invalid(format!("http.cors.allowed_origins: {e}"));
        }
        http.validate_transport()?;
        self.validate_security()?;
        let storage = &self.storage;
        if storage.default_ttl_seconds == 0 || storage.default_ttl_seconds > storage.max_ttl_seconds
        {
            return invalid(format!(
                "storage.default_ttl_seconds ({}) must be above 0 and at most storage.max_ttl_seconds ({})",
                storage.default_ttl_seconds, storage.max_ttl_seconds
            ));
        }
        if storage.commit_workers == 0
            || storage.max_batch == 0
            || storage.purge_batch == 0
            || storage.max_queued_appends == 0
            || storage.max_queued_bytes == 0
            || storage.max_log_streams == 0
        {
            return invalid(
                "storage.commit_workers, storage.max_batch, storage.purge_batch, \
                 storage.max_queued_appends, storage.max_queued_bytes and \
                 storage.max_log_streams must be above 0"
                    .into(),
            );
        }
        if storage.purge_interval_seconds == 0
            || storage.store_timeout_seconds == 0
            || storage.ready_probe_seconds == 0
        {
            return invalid(
                "storage.purge_interval_seconds, storage.store_timeout_seconds and storage.ready_probe_seconds must be above 0"
                    .into(),
            );
        }
        if self.cluster.virtual_nodes == 0 || self.cluster.gossip_interval_ms == 0 {
            return invalid(
                "cluster.virtual_nodes and cluster.gossip_interval_ms must be above 0".into(),
            );
        }
        if !self.cluster.static_bootstrap_node_addr_ports.is_empty()
            && self.node.gossip_bind_addr_port.is_none()
        {
            return invalid(
                "cluster.static_bootstrap_node_addr_ports needs node.gossip_bind_addr_port".into(),
            );
        }
        for (backend, name, sql) in [
            (Backend::Postgres, "postgres", &self.storage.postgres),
            (Backend::Mysql, "mysql", &self.storage.mysql),
        ] {
            if self.storage.backend != backend {
                continue;
            }
            if sql.url.is_empty() {
                return invalid(format!(
                    "storage.{name}.url is needed with storage.backend: {name}"
                ));
            }
            if sql.pool_size == 0 || sql.connect_timeout_seconds == 0 {
                return invalid(format!(
                    "storage.{name}.pool_size and storage.{name}.connect_timeout_seconds must be above 0"
                ));
            }
        }
        if self.storage.backend == Backend::Cassandra {
            let c = &self.storage.cassandra;
            if c.nodes.is_empty() || c.keyspace.is_empty() || c.connect_timeout_seconds == 0 {
                return invalid(
                    "storage.cassandra needs nodes, a keyspace and a connect_timeout_seconds above 0"
                        .into(),
                );
            }
        }
        if self.storage.backend == Backend::Mongodb {
            let m = &self.storage.mongodb;
            if m.url.is_empty()
                || m.database.is_empty()
                || m.pool_size == 0
                || m.connect_timeout_seconds == 0
            {
                return invalid(
                    "storage.mongodb needs a url, a database, and a pool_size and connect_timeout_seconds above 0"
                        .into(),
                );
            }
        }
        if self.engine.sweep_interval_seconds == 0 {
            return invalid("engine.sweep_interval_seconds must be above 0".into());
        }
        if self.cluster.max_forwarded_per_member == 0 {
            return invalid("cluster.max_forwarded_per_member must be above 0".into());
        }
        if self.engine.max_buffered_bytes == Some(0) {
            return invalid("engine.max_buffered_bytes must be above 0 (or unset)".into());
        }
        if let Err(e) = ipubsub_cluster::NodeId::new(&self.node.name) {
            return invalid(format!("node.name {:?}: {e}", self.node.name));
        }
        Ok(())
    }

    /// The HTTP adapter's part, with the tokens of `auth.tokens_file` read and every token
    /// checked.
    pub fn http_config(&self) -> Result<HttpConfig, ConfigError> {
        let mut c = HttpConfig::default();
        c.max_body_bytes = self.http.max_body_bytes;
        let in_flight = self
            .http
            .max_body_bytes_in_flight
            .unwrap_or_else(memory::default_body_budget)
            .max(self.http.max_body_bytes as u64);
        c.max_body_bytes_in_flight = usize::try_from(in_flight).unwrap_or(usize::MAX);
        c.max_forwarded_per_member = self.cluster.max_forwarded_per_member;
        c.max_stream_id_bytes = self.http.max_stream_id_bytes;
        c.default_receive_timeout = Duration::from_secs(self.http.receive_default_timeout_seconds);
        c.max_timeout = Duration::from_secs(self.http.max_timeout_seconds);
        c.default_stream_size = self.http.default_stream_size;
        c.max_stream_size = self.http.max_stream_size;
        c.default_ttl = Duration::from_secs(self.storage.default_ttl_seconds);
        c.max_ttl = Duration::from_secs(self.storage.max_ttl_seconds);
        c.store_timeout = Duration::from_secs(self.storage.store_timeout_seconds);
        c.body_read_timeout = Duration::from_secs(self.http.body_read_timeout_seconds);
        c.idle_timeout = Duration::from_secs(self.http.idle_timeout_seconds);
        c.max_connections = self.http.max_connections;
        c.max_batch_items = self.http.max_batch_items;
        c.max_ack_timeout = Duration::from_secs(self.http.max_ack_timeout_seconds);
        c.max_receipt_handles = self.http.max_receipt_handles;
        c.default_dedupe_window = Duration::from_secs(self.http.default_dedupe_window_seconds);
        c.max_dedupe_window = Duration::from_secs(self.http.max_dedupe_window_seconds);
        c.cors = Cors::new(&self.http.cors.allowed_origins)
            .map_err(|e| ConfigError::Invalid(format!("http.cors.allowed_origins: {e}")))?;
        self.http.apply_transport(&mut c);
        self.apply_security(&mut c)?;
        Ok(c)
    }

    /// Why this node keeps no log although a store is configured: a node-local store on a
    /// node of a multi-node cluster, without `storage.node_local_log_in_cluster`.
    pub fn node_local_refusal(&self) -> Option<String> {
        let node_local = matches!(self.storage.backend, Backend::Embedded | Backend::Memory);
        let own = self
            .node
            .gossip_advertise_addr_port
            .or(self.node.gossip_bind_addr_port)?;
        let others = self
            .cluster
            .static_bootstrap_node_addr_ports
            .iter()
            .any(|seed| seed.parse::<SocketAddr>().ok() != Some(own));
        (node_local && others && !self.storage.node_local_log_in_cluster).then(|| {
            format!(
                "this node is one of a multi-node cluster and its store ({}) keeps the log on this \
                 node only, so a stream that moves would leave its log behind; give every node one \
                 shared database (storage.backend: postgres, mysql, cassandra or mongodb), or set \
                 storage.node_local_log_in_cluster: true to accept that",
                if self.storage.backend == Backend::Memory {
                    "memory"
                } else {
                    "embedded"
                }
            )
        })
    }

    /// The log's part.
    pub fn log_config(&self) -> ipubsub_core::LogConfig {
        let mut c = ipubsub_core::LogConfig::default();
        c.max_batch = self.storage.max_batch;
        c.max_waiters = self.engine.max_waiting_requests;
        c.max_queued = self.storage.max_queued_appends;
        c.max_queued_bytes = self.storage.max_queued_bytes;
        c.max_streams = self.storage.max_log_streams;
        c.max_remembered_ids = self.storage.max_remembered_ids;
        c
    }

    /// The engine's part.
    pub fn engine_config(&self) -> EngineConfig {
        let mut c = EngineConfig::default();
        c.shards = self.engine.shards;
        c.max_streams = self.engine.max_streams;
        c.max_waiters = self.engine.max_waiting_requests;
        let budget = self
            .engine
            .max_buffered_bytes
            .unwrap_or_else(memory::default_budget);
        c.max_buffered_bytes = usize::try_from(budget).unwrap_or(usize::MAX);
        c.stream_idle_timeout = Duration::from_secs(self.engine.stream_idle_timeout_seconds);
        c.max_dedupe_entries = self.engine.max_dedupe_entries;
        c
    }
}

/// Writes the object `value` as YAML block mappings, leaves in JSON notation (a JSON scalar
/// or array is valid YAML), nested objects indented by two spaces.
fn write_yaml(value: &serde_json::Value, indent: usize, out: &mut String) {
    let serde_json::Value::Object(map) = value else {
        return;
    };
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(key);
        out.push(':');
        if value.is_object() {
            out.push('\n');
            write_yaml(value, indent + 2, out);
        } else {
            out.push(' ');
            out.push_str(&value.to_string());
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests;
