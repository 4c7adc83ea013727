//! `storage:`: which store keeps the persistent log, and each store's settings.

use serde::{Deserialize, Serialize};

/// `storage:`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// `embedded` (default: fjall in a local directory), `postgres`, `mysql` (MySQL or
    /// MariaDB), `memory` (lost on restart; for tests), or `none` (no persistence:
    /// `writeToDB` and `readFromDB` are 400s).
    pub backend: Backend,
    /// The embedded store.
    pub embedded: EmbeddedSection,
    /// The PostgreSQL store.
    pub postgres: SqlSection,
    /// The MySQL / MariaDB store.
    pub mysql: SqlSection,
    /// The Cassandra store.
    pub cassandra: CassandraSection,
    /// The MongoDB store.
    pub mongodb: MongoSection,
    /// `dbTTLSeconds` of a persistent send that gives none.
    pub default_ttl_seconds: u64,
    /// Largest `dbTTLSeconds` accepted.
    pub max_ttl_seconds: u64,
    /// Concurrent group-commit writers.
    pub commit_workers: usize,
    /// Most messages written by one store call.
    pub max_batch: usize,
    /// Most persistent sends queued for a commit worker; more answer `503 LOG_QUEUE_FULL`.
    pub max_queued_appends: usize,
    /// Most bytes (message ids and payloads) of the persistent sends queued that way.
    pub max_queued_bytes: usize,
    /// Most log streams whose positions a node keeps; beyond it an idle one is forgotten,
    /// and with none idle a persistent request answers `503 TOO_MANY_STREAMS`.
    pub max_log_streams: usize,
    /// Most message ids of deduplicating persistent sends a node remembers at once (all
    /// streams together); past it, their streams ask the store instead.
    pub max_remembered_ids: usize,
    /// How often expired messages are purged.
    pub purge_interval_seconds: u64,
    /// Most messages deleted by one purge call (purges loop in batches of this size).
    pub purge_batch: usize,
    /// How long a request waits for the store before answering 503.
    pub store_timeout_seconds: u64,
    /// How often the store is probed for `GET /ready`.
    pub ready_probe_seconds: u64,
    /// Lets a node of a multi-node cluster keep its log in a node-local store (`embedded`,
    /// `memory`). Off by default: a stream that moves to another node would leave its log
    /// behind, so such a node refuses `writeToDB` and `readFromDB` with a 400 naming the fix.
    pub node_local_log_in_cluster: bool,
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            backend: Backend::Embedded,
            embedded: EmbeddedSection::default(),
            postgres: SqlSection::new("postgres://ipubsub:ipubsub@127.0.0.1:5432/ipubsub"),
            mysql: SqlSection::new("mysql://ipubsub:ipubsub@127.0.0.1:3306/ipubsub"),
            cassandra: CassandraSection::default(),
            mongodb: MongoSection::default(),
            default_ttl_seconds: 86_400,
            max_ttl_seconds: 30 * 86_400,
            commit_workers: 4,
            max_batch: 1024,
            max_queued_appends: 100_000,
            max_queued_bytes: 64 << 20,
            max_log_streams: 1_000_000,
            max_remembered_ids: 1_000_000,
            purge_interval_seconds: 10,
            purge_batch: 1000,
            store_timeout_seconds: 10,
            ready_probe_seconds: 5,
            node_local_log_in_cluster: false,
        }
    }
}

/// Which store keeps the persistent log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// fjall in `storage.embedded.path`.
    Embedded,
    /// PostgreSQL at `storage.postgres.url`.
    Postgres,
    /// MySQL or MariaDB at `storage.mysql.url`.
    Mysql,
    /// Apache Cassandra (or ScyllaDB) at `storage.cassandra.nodes`.
    Cassandra,
    /// MongoDB (or a server of its wire protocol) at `storage.mongodb.url`.
    Mongodb,
    /// Process memory; lost on restart.
    Memory,
    /// No persistent log.
    None,
}

/// `storage.embedded:`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedSection {
    /// The data directory; a relative path resolves against the working directory.
    pub path: std::path::PathBuf,
    /// `buffer`: a 200 means the message survives the process being killed; `sync`: it also
    /// survives a power loss (an fdatasync per group commit).
    pub durability: DurabilitySetting,
}

impl Default for EmbeddedSection {
    fn default() -> Self {
        Self {
            path: "./data".into(),
            durability: DurabilitySetting::Buffer,
        }
    }
}

/// `storage.postgres:` and `storage.mysql:`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlSection {
    /// `postgres://user:password@host:port/database` (or `mysql://…`).
    pub url: String,
    /// Most connections the node opens to the database.
    pub pool_size: u32,
    /// How long a store call waits for a connection before it fails (503).
    pub connect_timeout_seconds: u64,
}

impl SqlSection {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            pool_size: 16,
            connect_timeout_seconds: 5,
        }
    }
}

impl Default for SqlSection {
    fn default() -> Self {
        Self::new("")
    }
}

impl std::fmt::Debug for SqlSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it whole.
        f.debug_struct("SqlSection")
            .field("url", &ipubsub_storage::redacted_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_seconds", &self.connect_timeout_seconds)
            .finish()
    }
}

/// `storage.cassandra:`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CassandraSection {
    /// Contact points, `host:port`; the driver discovers the rest of the cluster.
    pub nodes: Vec<String>,
    /// The keyspace, created if missing.
    pub keyspace: String,
    /// The keyspace's replication, as CQL, used when the keyspace is created.
    pub replication: String,
    /// Consistency of reads and writes: `local_quorum`, `quorum`, `one`, `local_one`, `all`…
    pub consistency: CassandraConsistency,
    /// How long the first connection may take.
    pub connect_timeout_seconds: u64,
}

impl Default for CassandraSection {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "ipubsub".into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            consistency: CassandraConsistency::LocalQuorum,
            connect_timeout_seconds: 5,
        }
    }
}

/// `storage.mongodb:`
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoSection {
    /// `mongodb://user:password@host:port/?options`.
    pub url: String,
    /// The database holding the `messages` collection.
    pub database: String,
    /// Most connections the node opens.
    pub pool_size: u32,
    /// How long an operation waits for a usable server before it fails (503).
    pub connect_timeout_seconds: u64,
}

impl Default for MongoSection {
    fn default() -> Self {
        Self {
            url: "mongodb://127.0.0.1:27017/".into(),
            database: "ipubsub".into(),
            pool_size: 16,
            connect_timeout_seconds: 5,
        }
    }
}

impl std::fmt::Debug for MongoSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoSection")
            .field("url", &ipubsub_storage::redacted_url(&self.url))
            .field("database", &self.database)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_seconds", &self.connect_timeout_seconds)
            .finish()
    }
}

/// `storage.cassandra.consistency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)] // Cassandra's own levels
pub enum CassandraConsistency {
    Any,
    One,
    Two,
    Three,
    Quorum,
    All,
    LocalQuorum,
    EachQuorum,
    LocalOne,
}

/// `storage.embedded.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    /// Handed to the OS before the 200.
    Buffer,
    /// fdatasync'ed before the 200.
    Sync,
}
