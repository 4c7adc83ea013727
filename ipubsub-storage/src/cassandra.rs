//! [`CassandraStore`]: the persistent log in Apache Cassandra (or ScyllaDB), with the scylla
//! driver and prepared statements throughout.
//!
//! # Layout
//! - `messages`: partition key `(stream_id, bucket)`, clustering key `seq` ascending; `bucket`
//!   is `seq / BUCKET_MICROS` (positions are microsecond clock readings, so a bucket is a ten
//!   minute window of a stream). A long-lived stream becomes a partition per ten minutes of its
//!   life instead of one partition that grows forever; a stream taking 1,000 messages/s makes
//!   partitions of 600,000 rows (~120 MB of 100-byte messages), at the edge of what Cassandra
//!   recommends, and a typical stream makes partitions of a few rows. Each row carries its own
//!   `USING TTL`, so Cassandra drops expired messages by itself.
//! - `buckets`: partition key `stream_id`, clustering key `bucket`: which buckets of a stream
//!   hold messages, so that a reader walks only non-empty partitions however sparse the stream.
//!   Each entry is written `USING TTL` until the latest expiry of its messages, with that expiry
//!   as the write timestamp, so the longest-lived write always wins (a later write with a
//!   shorter TTL cannot hide older, longer-lived messages).
//!
//! # Appends
//! Records are grouped by partition, and each partition's records go in one unlogged batch
//! (atomic and isolated within a partition, no batch log); the partitions of a group commit are
//! written concurrently. A failed append may therefore leave some streams' records written and
//! others not: the log treats every failed append as ambiguous already (its senders get a 503
//! and the positions are never reused), so this only widens what a 503 may leave behind.
//! Inserts are upserts, so a retried batch rewrites the same rows and never duplicates a
//! position. A record at or below the highest position this store has seen for its stream is
//! compared with what is stored first, so a different message there is a
//! [`StoreError::Conflict`]; positions above it cannot collide, because each stream's positions
//! are assigned by its owner and grow with the clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipubsub_core::{
    LogRecord, Message, MessageId, MessageStore, Seq, StoreError, StreamId, Timestamp,
};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use crate::convert::{corrupt, to_i64, to_u64};
use crate::high_water::HighWater;

/// The width of a partition of a stream: ten minutes of positions.
pub const BUCKET_MICROS: u64 = 600 * 1_000_000;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i32 = 1;

/// Buckets asked for per query when walking a stream.
const BUCKET_PAGE: i32 = 64;

/// How to reach a Cassandra cluster and where the log lives in it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CassandraConfig {
    /// Contact points, `host:port` (the driver discovers the rest of the cluster).
    pub nodes: Vec<String>,
    /// The keyspace, created if missing.
    pub keyspace: String,
    /// The keyspace's replication, as CQL: `{'class': 'NetworkTopologyStrategy', 'dc1': 3}`.
    pub replication: String,
    /// Consistency of every read and write.
    pub consistency: Consistency,
    /// How long the first connection may take.
    pub connect_timeout: Duration,
}

impl CassandraConfig {
    /// A node at `node`, keyspace `ipubsub` with one replica, `LOCAL_QUORUM`.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            nodes: vec![node.into()],
            keyspace: "ipubsub".into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            consistency: Consistency::LocalQuorum,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a Cassandra store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No contact point answered.
    #[error("cannot connect to Cassandra at {nodes}: {source}")]
    Connect {
        /// The contact points.
        nodes: String,
        /// What the driver said.
        #[source]
        source: scylla::errors::NewSessionError,
    },
    /// The keyspace name is not a plain CQL identifier.
    #[error("bad Cassandra keyspace name {0:?}: use letters, digits and underscores")]
    Keyspace(String),
    /// The schema could not be created or a statement not prepared.
    #[error("cannot set up the Cassandra schema: {0}")]
    Schema(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The keyspace holds a schema newer than this build knows.
    #[error(
        "the Cassandra schema is at version {0}, newer than this build's {SCHEMA_VERSION}: upgrade ipubsub"
    )]
    NewerSchema(i32),
}

/// The persistent log in Cassandra. Cheap to clone.
#[derive(Clone)]
pub struct CassandraStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CassandraStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraStore").finish_non_exhaustive()
    }
}

struct Inner {
    session: Session,
    consistency: Consistency,
    insert: PreparedStatement,
    insert_bucket: PreparedStatement,
    select_one: PreparedStatement,
    select_after: PreparedStatement,
    select_last: PreparedStatement,
    buckets_from: PreparedStatement,
    buckets_last: PreparedStatement,
    /// Appends above a stream's known high-water mark skip the conflict check.
    high: HighWater,
}

type Row = (i64, Vec<u8>, i64, i64, Vec<u8>);

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

fn bucket_of(seq: u64) -> i64 {
    // u64::MAX / BUCKET_MICROS fits in an i64.
    (seq / BUCKET_MICROS) as i64
}

impl CassandraStore {
    /// Connects, creates the keyspace and tables if missing, and prepares the statements.
    pub async fn connect(config: &CassandraConfig) -> Result<Self, OpenError> {
        let ks = &config.keyspace;
        if ks.is_empty() || !ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(OpenError::Keyspace(ks.clone()));
        }
        let session = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .connection_timeout(config.connect_timeout)
            .build()
            .await
            .map_err(|source| OpenError::Connect {
                nodes: config.nodes.join(","),
                source,
            })?;
        let schema = |e: scylla::errors::ExecutionError| OpenError::Schema(Box::new(e));
        let ddl = |cql: String| {
            let session = &session;
            async move { session.query_unpaged(cql, &[]).await.map(drop) }
        };
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
        if found < 1 {
            ddl(format!(
                "CREATE TABLE IF NOT EXISTS {ks}.messages (
                    stream_id text, bucket bigint, seq bigint,
                    message_id blob, accepted_at bigint, expires_at bigint, payload blob,
                    PRIMARY KEY ((stream_id, bucket), seq)
                 ) WITH CLUSTERING ORDER BY (seq ASC)"
            ))
            .await
            .map_err(schema)?;
            ddl(format!(
                "CREATE TABLE IF NOT EXISTS {ks}.buckets (
                    stream_id text, bucket bigint, PRIMARY KEY (stream_id, bucket)
                 ) WITH CLUSTERING ORDER BY (bucket ASC)"
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
        let inner = Inner {
            insert: prepare(format!(
                "INSERT INTO {ks}.messages (stream_id, bucket, seq, message_id, accepted_at, expires_at, payload)
                 VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?"
            ))
            .await?,
            insert_bucket: prepare(format!(
                "INSERT INTO {ks}.buckets (stream_id, bucket) VALUES (?, ?) USING TTL ? AND TIMESTAMP ?"
            ))
            .await?,
            select_one: prepare(format!(
                "SELECT {columns} FROM {ks}.messages WHERE stream_id = ? AND bucket = ? AND seq = ?"
            ))
            .await?,
            select_after: prepare(format!(
                "SELECT {columns} FROM {ks}.messages WHERE stream_id = ? AND bucket = ? AND seq > ? LIMIT ?"
            ))
            .await?,
            select_last: prepare(format!(
                "SELECT seq FROM {ks}.messages WHERE stream_id = ? AND bucket = ? ORDER BY seq DESC LIMIT 1"
            ))
            .await?,
            buckets_from: prepare(format!(
                "SELECT bucket FROM {ks}.buckets WHERE stream_id = ? AND bucket >= ? LIMIT ?"
            ))
            .await?,
            buckets_last: prepare(format!(
                "SELECT bucket FROM {ks}.buckets WHERE stream_id = ? AND bucket < ? ORDER BY bucket DESC LIMIT ?"
            ))
            .await?,
            session,
            consistency: config.consistency,
            high: HighWater::default(),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }
}

impl Inner {
    /// The stored row at `record`'s position, if any.
    async fn stored(&self, record: &LogRecord) -> Result<Option<Row>, StoreError> {
        let seq = record.seq.get();
        self.session
            .execute_unpaged(
                &self.select_one,
                (record.stream.as_str(), bucket_of(seq), to_i64(seq)?),
            )
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(corrupt)?
            .maybe_first_row::<Row>()
            .map_err(corrupt)
    }

    /// A page of `stream`'s buckets from `statement` (`buckets_from` or `buckets_last`),
    /// starting at (or below) `bound`.
    async fn buckets(
        &self,
        statement: &PreparedStatement,
        stream: &StreamId,
        bound: i64,
    ) -> Result<Vec<i64>, StoreError> {
        self.session
            .execute_unpaged(statement, (stream.as_str(), bound, BUCKET_PAGE))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(corrupt)?
            .rows::<(i64,)>()
            .map_err(corrupt)?
            .map(|row| row.map(|(b,)| b).map_err(corrupt))
            .collect()
    }

    async fn last_seq(&self, stream: &StreamId) -> Result<Seq, StoreError> {
        let mut below = i64::MAX;
        loop {
            let buckets = self.buckets(&self.buckets_last, stream, below).await?;
            for &bucket in &buckets {
                let last = self
                    .session
                    .execute_unpaged(&self.select_last, (stream.as_str(), bucket))
                    .await
                    .map_err(unavailable)?
                    .into_rows_result()
                    .map_err(corrupt)?
                    .maybe_first_row::<(i64,)>()
                    .map_err(corrupt)?;
                if let Some((seq,)) = last {
                    return Ok(Seq::new(to_u64(seq)?));
                }
            }
            match buckets.last() {
                Some(&last) if buckets.len() == BUCKET_PAGE as usize => below = last,
                _ => return Ok(Seq::ZERO),
            }
        }
    }
}

/// Writes one partition's records in one unlogged batch, then the partition's entry in
/// `buckets`.
async fn write_partition(
    inner: Arc<Inner>,
    stream: StreamId,
    bucket: i64,
    records: Vec<LogRecord>,
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut statements = Batch::new(BatchType::Unlogged);
    let mut values = Vec::with_capacity(records.len());
    for record in &records {
        statements.append_statement(inner.insert.clone());
        values.push((
            stream.as_str(),
            bucket,
            to_i64(record.seq.get())?,
            record.message.id().as_str().as_bytes(),
            to_i64(record.message.timestamp().as_micros())?,
            to_i64(record.expires_at.as_micros())?,
            record.message.payload().as_ref(),
            ttl_seconds(record.expires_at, now),
        ));
    }
    statements.set_consistency(inner.consistency);
    inner
        .session
        .batch(&statements, values)
        .await
        .map_err(unavailable)?;
    let latest = records.iter().map(|r| r.expires_at).max().unwrap_or(now);
    // Outlive the partition's messages by one bucket, so that a reader never misses a
    // partition whose messages are still alive.
    let ttl = ttl_seconds(latest, now).saturating_add((BUCKET_MICROS / 1_000_000) as i32);
    inner
        .session
        .execute_unpaged(
            &inner.insert_bucket,
            (stream.as_str(), bucket, ttl, to_i64(latest.as_micros())?),
        )
        .await
        .map_err(unavailable)?;
    Ok(())
}

fn holds(row: &Row, record: &LogRecord) -> bool {
    let (_, id, accepted_at, expires_at, payload) = row;
    id.as_slice() == record.message.id().as_str().as_bytes()
        && payload.as_slice() == record.message.payload().as_ref()
        && u64::try_from(*accepted_at).ok() == Some(record.message.timestamp().as_micros())
        && u64::try_from(*expires_at).ok() == Some(record.expires_at.as_micros())
}

fn into_record(stream: &StreamId, row: Row) -> Result<LogRecord, StoreError> {
    let (seq, id, accepted_at, expires_at, payload) = row;
    let id = String::from_utf8(id).map_err(corrupt)?;
    Ok(LogRecord {
        stream: stream.clone(),
        seq: Seq::new(to_u64(seq)?),
        message: Message::new(
            MessageId::new(id).map_err(corrupt)?,
            bytes::Bytes::from(payload),
            Timestamp::from_micros(to_u64(accepted_at)?),
        ),
        expires_at: Timestamp::from_micros(to_u64(expires_at)?),
    })
}

/// A TTL for Cassandra that never removes a row before `expires_at`: seconds from now, rounded
/// up, plus one, because Cassandra counts a TTL from the write's whole second (it may expire a
/// row up to a second early). Reads filter on `expires_at` to the microsecond anyway.
fn ttl_seconds(expires_at: Timestamp, now: Timestamp) -> i32 {
    let micros = expires_at.as_micros().saturating_sub(now.as_micros());
    i32::try_from(micros.div_ceil(1_000_000).saturating_add(1)).unwrap_or(i32::MAX)
}

#[async_trait]
impl MessageStore for CassandraStore {
    async fn append(&self, batch: &[LogRecord]) -> Result<(), StoreError> {
        let inner = &*self.inner;
        // Check first, write after: a conflict anywhere writes nothing.
        for record in batch {
            let known = match inner.high.get(&record.stream) {
                Some(high) => high,
                None => {
                    let high = inner.last_seq(&record.stream).await?;
                    inner.high.raise(&record.stream, high);
                    high
                }
            };
            if record.seq <= known
                && let Some(row) = inner.stored(record).await?
                && !holds(&row, record)
            {
                return Err(StoreError::Conflict {
                    stream: record.stream.clone(),
                    seq: record.seq,
                });
            }
        }
        let now = Timestamp::now();
        // One unlogged batch per partition, written concurrently.
        let mut partitions: HashMap<(StreamId, i64), Vec<LogRecord>> = HashMap::new();
        for record in batch {
            partitions
                .entry((record.stream.clone(), bucket_of(record.seq.get())))
                .or_default()
                .push(record.clone());
        }
        let mut writes = tokio::task::JoinSet::new();
        for ((stream, bucket), records) in partitions {
            writes.spawn(write_partition(
                self.inner.clone(),
                stream,
                bucket,
                records,
                now,
            ));
        }
        while let Some(written) = writes.join_next().await {
            written.map_err(unavailable)??;
        }
        for record in batch {
            inner.high.raise(&record.stream, record.seq);
        }
        Ok(())
    }

    async fn read_after(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let inner = &*self.inner;
        let Ok(after_i64) = i64::try_from(after.get()) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut from = bucket_of(after.get());
        'walk: loop {
            let buckets = inner.buckets(&inner.buckets_from, stream, from).await?;
            for &bucket in &buckets {
                let mut position = after_i64;
                loop {
                    let want = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
                    let rows: Vec<Row> = inner
                        .session
                        .execute_unpaged(
                            &inner.select_after,
                            (stream.as_str(), bucket, position, want),
                        )
                        .await
                        .map_err(unavailable)?
                        .into_rows_result()
                        .map_err(corrupt)?
                        .rows::<Row>()
                        .map_err(corrupt)?
                        .collect::<Result<_, _>>()
                        .map_err(corrupt)?;
                    let got = rows.len();
                    for row in rows {
                        position = row.0;
                        // Cassandra's TTL counts whole seconds: filter to the microsecond.
                        if to_u64(row.3)? > now.as_micros() {
                            out.push(into_record(stream, row)?);
                        }
                    }
                    if out.len() >= limit {
                        break 'walk;
                    }
                    if got < usize::try_from(want).unwrap_or(usize::MAX) {
                        break;
                    }
                }
            }
            match buckets.last() {
                Some(&last) if buckets.len() == BUCKET_PAGE as usize => from = last + 1,
                _ => break,
            }
        }
        Ok(out)
    }

    async fn last_seq(&self, stream: &StreamId) -> Result<Seq, StoreError> {
        self.inner.last_seq(stream).await
    }

    async fn purge_expired(&self, _now: Timestamp, _limit: usize) -> Result<usize, StoreError> {
        // Every row was written with its TTL: Cassandra removes expired rows itself (reads
        // never see them, compaction reclaims the space), so there is nothing to delete.
        Ok(0)
    }
}
