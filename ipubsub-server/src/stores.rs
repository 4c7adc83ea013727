//! Opening the configured message store: the embedded one, or a database behind its cargo
//! feature (a build without it says which feature the backend needs).

use std::error::Error as _;
use std::sync::Arc;

use ipubsub_core::MessageStore;
use ipubsub_storage::{Durability, EmbeddedConfig, EmbeddedStore, MemoryStore};

use crate::config::{self, Backend, Config, DurabilitySetting};

/// Opens the configured store; `None` when persistence is off.
pub(crate) async fn open_store(config: &Config) -> anyhow::Result<Option<Arc<dyn MessageStore>>> {
    Ok(match config.storage.backend {
        Backend::None => None,
        Backend::Memory => Some(Arc::new(MemoryStore::new())),
        Backend::Embedded => {
            let section = &config.storage.embedded;
            let mut embedded = EmbeddedConfig::new(&section.path);
            embedded.durability = match section.durability {
                DurabilitySetting::Buffer => Durability::Buffer,
                DurabilitySetting::Sync => Durability::Sync,
            };
            let store = EmbeddedStore::open(&embedded).map_err(|e| {
                anyhow::anyhow!(
                    "{e}: {}",
                    e.source().map_or_else(String::new, ToString::to_string)
                )
            })?;
            tracing::info!(path = %section.path.display(), durability = ?section.durability, "embedded store opened");
            Some(Arc::new(store))
        }
        Backend::Postgres => Some(bounded(
            config,
            open_postgres(&config.storage.postgres).await?,
        )),
        Backend::Mysql => Some(bounded(config, open_mysql(&config.storage.mysql).await?)),
        Backend::Cassandra => Some(bounded(
            config,
            open_cassandra(&config.storage.cassandra).await?,
        )),
        Backend::Mongodb => Some(bounded(
            config,
            open_mongodb(&config.storage.mongodb).await?,
        )),
    })
}

/// How many store timeouts a single call of a database store may take before it is given
/// up: room for a slow commit, a lock wait and a takeover's rescue, while a database that
/// stopped answering frees the commit workers within seconds, not TCP's quarter of an hour.
const CALL_LIMIT_IN_STORE_TIMEOUTS: u64 = 3;

/// `store`, a database's, each call of which ends within [`CALL_LIMIT_IN_STORE_TIMEOUTS`]
/// store timeouts (`ipubsub_storage::Bounded`).
fn bounded(config: &Config, store: Arc<dyn MessageStore>) -> Arc<dyn MessageStore> {
    #[cfg(any(
        feature = "postgres",
        feature = "mysql",
        feature = "cassandra",
        feature = "mongodb"
    ))]
    {
        let limit = std::time::Duration::from_secs(
            config
                .storage
                .store_timeout_seconds
                .saturating_mul(CALL_LIMIT_IN_STORE_TIMEOUTS),
        );
        Arc::new(ipubsub_storage::Bounded::new(store, limit))
    }
    #[cfg(not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "cassandra",
        feature = "mongodb"
    )))]
    {
        let _ = config;
        store
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
fn sql_config(section: &config::SqlSection) -> ipubsub_storage::SqlConfig {
    let mut sql = ipubsub_storage::SqlConfig::new(&section.url);
    sql.pool_size = section.pool_size;
    sql.connect_timeout = std::time::Duration::from_secs(section.connect_timeout_seconds);
    sql
}

/// One line for a start-up error: the error and its first cause (the driver's words).
#[cfg(any(
    feature = "postgres",
    feature = "mysql",
    feature = "cassandra",
    feature = "mongodb"
))]
fn one_line(e: &dyn std::error::Error) -> anyhow::Error {
    match e.source() {
        Some(cause) if !e.to_string().contains(&cause.to_string()) => {
            anyhow::anyhow!("{e}: {cause}")
        }
        _ => anyhow::anyhow!("{e}"),
    }
}

#[cfg(feature = "postgres")]
async fn open_postgres(section: &config::SqlSection) -> anyhow::Result<Arc<dyn MessageStore>> {
    let store = ipubsub_storage::PostgresStore::connect(&sql_config(section))
        .await
        .map_err(|e| one_line(&e))?;
    tracing::info!(url = %ipubsub_storage::redacted_url(&section.url), pool = section.pool_size, "PostgreSQL store opened");
    Ok(Arc::new(store))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_: &config::SqlSection) -> anyhow::Result<Arc<dyn MessageStore>> {
    anyhow::bail!("storage.backend: postgres needs a build with the cargo feature `postgres`")
}

#[cfg(feature = "mysql")]
async fn open_mysql(section: &config::SqlSection) -> anyhow::Result<Arc<dyn MessageStore>> {
    let store = ipubsub_storage::MySqlStore::connect(&sql_config(section))
        .await
        .map_err(|e| one_line(&e))?;
    tracing::info!(url = %ipubsub_storage::redacted_url(&section.url), pool = section.pool_size, "MySQL store opened");
    Ok(Arc::new(store))
}

#[cfg(feature = "cassandra")]
async fn open_cassandra(
    section: &config::CassandraSection,
) -> anyhow::Result<Arc<dyn MessageStore>> {
    use config::CassandraConsistency as C;
    use scylla::statement::Consistency;
    let mut cassandra = ipubsub_storage::CassandraConfig::new("");
    cassandra.nodes = section.nodes.clone();
    cassandra.keyspace = section.keyspace.clone();
    cassandra.replication = section.replication.clone();
    cassandra.connect_timeout = std::time::Duration::from_secs(section.connect_timeout_seconds);
    cassandra.consistency = match section.consistency {
        C::Any => Consistency::Any,
        C::One => Consistency::One,
        C::Two => Consistency::Two,
        C::Three => Consistency::Three,
        C::Quorum => Consistency::Quorum,
        C::All => Consistency::All,
        C::LocalQuorum => Consistency::LocalQuorum,
        C::EachQuorum => Consistency::EachQuorum,
        C::LocalOne => Consistency::LocalOne,
    };
    let store = ipubsub_storage::CassandraStore::connect(&cassandra)
        .await
        .map_err(|e| one_line(&e))?;
    tracing::info!(nodes = ?section.nodes, keyspace = %section.keyspace, consistency = ?section.consistency, "Cassandra store opened");
    Ok(Arc::new(store))
}

#[cfg(feature = "mongodb")]
async fn open_mongodb(section: &config::MongoSection) -> anyhow::Result<Arc<dyn MessageStore>> {
    let mut mongo = ipubsub_storage::MongoConfig::new(&section.url);
    mongo.database = section.database.clone();
    mongo.pool_size = section.pool_size;
    mongo.connect_timeout = std::time::Duration::from_secs(section.connect_timeout_seconds);
    let store = ipubsub_storage::MongoStore::connect(&mongo)
        .await
        .map_err(|e| one_line(&e))?;
    tracing::info!(url = %ipubsub_storage::redacted_url(&section.url), database = %section.database, "MongoDB store opened");
    Ok(Arc::new(store))
}

#[cfg(not(feature = "mongodb"))]
async fn open_mongodb(_: &config::MongoSection) -> anyhow::Result<Arc<dyn MessageStore>> {
    anyhow::bail!("storage.backend: mongodb needs a build with the cargo feature `mongodb`")
}

#[cfg(not(feature = "cassandra"))]
async fn open_cassandra(_: &config::CassandraSection) -> anyhow::Result<Arc<dyn MessageStore>> {
    anyhow::bail!("storage.backend: cassandra needs a build with the cargo feature `cassandra`")
}

#[cfg(not(feature = "mysql"))]
async fn open_mysql(_: &config::SqlSection) -> anyhow::Result<Arc<dyn MessageStore>> {
    anyhow::bail!("storage.backend: mysql needs a build with the cargo feature `mysql`")
}
