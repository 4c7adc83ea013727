//! The schema: the keyspace and tables created if missing (and upgraded from an earlier
//! version), and the statements every call uses, prepared once.

use std::collections::HashMap;
use std::sync::Mutex;

use scylla::client::session::Session;
use scylla::statement::Consistency;

use super::{CassandraConfig, Inner, OpenError, SCHEMA_VERSION};
use crate::high_water::HighWater;

/// Creates the keyspace and the tables this build needs, unless they exist, and waits until
/// every node agrees on the schema. A keyspace of a newer schema version is refused.
pub(super) async fn create(session: &Session, config: &CassandraConfig) -> Result<(), OpenError> {
    let ks = &config.keyspace;
    let schema = |e: scylla::errors::ExecutionError| OpenError::Schema(Box::new(e));
    let ddl = |cql: String| async move { session.query_unpaged(cql, &[]).await.map(drop) };
    ddl(format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
        config.replication
    ))
    .await
    .map_err(schema)?;
    ddl(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.schema_version (id int PRIMARY KEY, version int)"
    ))
    .await
    .map_err(schema)?;
    let found = session
        .query_unpaged(
            format!("SELECT version FROM {ks}.schema_version WHERE id = 0"),
            &[],
        )
        .await
        .map_err(schema)?
        .into_rows_result()
        .map_err(|e| OpenError::Schema(Box::new(e)))?
        .maybe_first_row::<(Option<i32>,)>()
        .map_err(|e| OpenError::Schema(Box::new(e)))?
        .and_then(|(v,)| v)
        .unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema(found));
    }
    if found < 2 {
        ddl(format!(
            "CREATE TABLE IF NOT EXISTS {ks}.log (
                    stream_id text, bucket bigint, seq bigint,
                    message_id blob, accepted_at bigint, expires_at bigint, payload blob,
                    PRIMARY KEY ((stream_id, bucket), seq)
                 ) WITH CLUSTERING ORDER BY (seq ASC)"
        ))
        .await
        .map_err(schema)?;
        ddl(format!(
            "CREATE TABLE IF NOT EXISTS {ks}.log_buckets (
                    stream_id text, bucket bigint, PRIMARY KEY (stream_id, bucket)
                 ) WITH CLUSTERING ORDER BY (bucket ASC)"
        ))
        .await
        .map_err(schema)?;
        ddl(format!(
            "CREATE TABLE IF NOT EXISTS {ks}.epochs (
                    stream_id text PRIMARY KEY, epoch bigint, seals map<bigint, bigint>
                 )"
        ))
        .await
        .map_err(schema)?;
    }
    if found < 3 {
        ddl(format!(
            "CREATE TABLE IF NOT EXISTS {ks}.log_ids (
                    stream_id text, message_id blob, seq bigint,
                    accepted_at bigint, expires_at bigint,
                    PRIMARY KEY ((stream_id, message_id), seq)
                 ) WITH CLUSTERING ORDER BY (seq DESC)"
        ))
        .await
        .map_err(schema)?;
        ddl(format!(
            "INSERT INTO {ks}.schema_version (id, version) VALUES (0, {SCHEMA_VERSION})"
        ))
        .await
        .map_err(schema)?;
        tracing::info!(keyspace = %ks, version = SCHEMA_VERSION, "Cassandra schema created");
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|e| OpenError::Schema(Box::new(e)))?;
    Ok(())
}

/// Prepares every statement at the configured consistency (the epoch read at `SERIAL`), and
/// holds them with `session` in the store's state, whose caches start empty.
pub(super) async fn prepare(
    session: Session,
    config: &CassandraConfig,
) -> Result<Inner, OpenError> {
    let ks = &config.keyspace;
    let prepare = |cql: String| {
        let session = &session;
        async move {
            let mut prepared = session
                .prepare(cql)
                .await
                .map_err(|e| OpenError::Schema(Box::new(e)))?;
            prepared.set_consistency(config.consistency);
            Ok::<_, OpenError>(prepared)
        }
    };
    let columns = "seq, message_id, accepted_at, expires_at, payload";
    let mut read_epoch = prepare(format!(
        "SELECT epoch, seals FROM {ks}.epochs WHERE stream_id = ?"
    ))
    .await?;
    // A Paxos read: it sees every lightweight transaction that completed before it.
    read_epoch.set_consistency(Consistency::Serial);
    let inner = Inner {
            read_epoch,
            create_epoch: prepare(format!(
                "INSERT INTO {ks}.epochs (stream_id, epoch) VALUES (?, ?) IF NOT EXISTS"
            ))
            .await?,
            move_epoch: prepare(format!(
                "UPDATE {ks}.epochs SET epoch = ? WHERE stream_id = ? IF epoch = ?"
            ))
            .await?,
            seal: prepare(format!(
                "UPDATE {ks}.epochs SET seals = seals + ? WHERE stream_id = ? IF epoch = ?"
            ))
            .await?,
            insert: prepare(format!(
                "INSERT INTO {ks}.log (stream_id, bucket, seq, message_id, accepted_at, expires_at, payload)
                 VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?"
            ))
            .await?,
            insert_bucket: prepare(format!(
                "INSERT INTO {ks}.log_buckets (stream_id, bucket) VALUES (?, ?) USING TTL ? AND TIMESTAMP ?"
            ))
            .await?,
            insert_id: prepare(format!(
                "INSERT INTO {ks}.log_ids (stream_id, message_id, seq, accepted_at, expires_at)
                 VALUES (?, ?, ?, ?, ?) USING TTL ?"
            ))
            .await?,
            select_ids: prepare(format!(
                "SELECT seq, accepted_at, expires_at FROM {ks}.log_ids
                 WHERE stream_id = ? AND message_id = ? LIMIT 1000"
            ))
            .await?,
            select_one: prepare(format!(
                "SELECT {columns} FROM {ks}.log WHERE stream_id = ? AND bucket = ? AND seq = ?"
            ))
            .await?,
            select_after: prepare(format!(
                "SELECT {columns} FROM {ks}.log WHERE stream_id = ? AND bucket = ? AND seq > ? LIMIT ?"
            ))
            .await?,
            select_last: prepare(format!(
                "SELECT seq FROM {ks}.log WHERE stream_id = ? AND bucket = ? ORDER BY seq DESC LIMIT 1"
            ))
            .await?,
            buckets_from: prepare(format!(
                "SELECT bucket FROM {ks}.log_buckets WHERE stream_id = ? AND bucket >= ? LIMIT ?"
            ))
            .await?,
            buckets_last: prepare(format!(
                "SELECT bucket FROM {ks}.log_buckets WHERE stream_id = ? AND bucket < ? ORDER BY bucket DESC LIMIT ?"
            ))
            .await?,
            session,
            consistency: config.consistency,
            high: HighWater::default(),
            fences: Mutex::new(HashMap::new()),
        };
    Ok(inner)
}
