//! [`CassandraStore`]: the persistent log in Apache Cassandra (or ScyllaDB), with the scylla
//! driver and prepared statements throughout.
//!
//! # Layout (schema version 3)
//! - `log`: partition key `(stream_id, bucket)`, clustering key `seq` ascending; `bucket` is
//!   `seq >> 16`, so a partition holds at most 65,536 consecutive positions of one epoch of a
//!   stream (positions are counters, not clock readings: no clock, jumping or skewed, can
//!   grow a partition). Each row carries its own `USING TTL`, so Cassandra drops expired
//!   messages by itself.
//! - `log_buckets`: partition key `stream_id`, clustering key `bucket`: which buckets of a
//!   stream hold messages, so that a reader walks only non-empty partitions. Each entry is
//!   written `USING TTL` until the latest expiry of its messages, with that expiry as the
//!   write timestamp, so the longest-lived write always wins.
//! - `log_ids` (version 3): partition key `(stream_id, message_id)`, clustering key `seq`
//!   descending, with `accepted_at` and `expires_at`: where each findable message id of a
//!   stream is ([`MessageStore::append_findable`]), for [`MessageStore::find_message`].
//!   Written with the row's own TTL, *before* the records (see "Appends"). A lookup reads the id's one partition, then checks its latest
//!   qualifying position against the fence and the `log` row itself, so an entry whose
//!   records were fenced off or never written is not an answer.
//! - `epochs`: partition key `stream_id`: the stream's current `epoch` and its `seals`, a map
//!   from each earlier epoch to the last position of it that counts.
//!
//! Schema version 1 kept clock-based positions in `messages` and `buckets`; those tables are
//! left as they are and not read.
//!
//! # The fence
//! Cassandra has no transaction across partitions, so an append cannot check the epoch in the
//! step that writes. Instead:
//! - An acquisition moves `epoch` with a lightweight transaction (Paxos, `IF epoch = ?`), once
//!   per takeover. Then it finds, for every earlier epoch not sealed yet, the highest position
//!   stored, and records it in `seals` (another lightweight transaction, conditional on the
//!   new epoch). A record of a sealed epoch above its seal is a write that landed after the
//!   takeover: no read returns it and no position counts it, as if it had been refused.
//! - An append writes its records (unlogged batches per partition), then reads its streams'
//!   `epochs` rows at `SERIAL` consistency, which no lightweight transaction can overtake. If
//!   the epoch is still the records' own, any later takeover will find them and seal above
//!   them: they are acknowledged. If it moved and the seal is known, records at or below it
//!   are in the log and the rest are fenced; a seal not yet written makes the outcome unknown,
//!   and the append fails as ambiguous.
//! - A read filters records with a fence that is whole: its previous epoch is sealed. One
//!   caught between a takeover's two steps cannot tell which of that epoch's records count
//!   (it would hide them all, acknowledged ones too), so it is never kept nor used: the read
//!   waits a little for the seal, then fails as unavailable (an acquisition whose node died
//!   half-way leaves the stream unreadable until the next one seals).
//!
//! The cost is one `SERIAL` read per stream per group commit, and two lightweight
//! transactions per takeover.
//!
//! # Appends
//! Records are grouped by partition, and each partition's records go in one unlogged batch
//! (atomic and isolated within a partition, no batch log); the partitions of a group commit are
//! written concurrently, each after the unlogged batch of the `log_ids` entries of its
//! findable records (one partition per record: twice the rows for the records of idempotent
//! sends, the cost of finding ids without a secondary index; other records write none).
//! Entries first: a findable record never exists without its entry, so a sender's retry
//! after an ambiguous failure finds its message if it landed. A failed
//! append may therefore leave some streams' records written and
//! others not: the log treats every failed append as ambiguous already. Inserts are upserts, so
//! a retried batch rewrites the same rows and never duplicates a position. A record at or
//! below the highest position this store has seen for its stream is compared with what is
//! stored first, so a different message there is a [`StoreError::Conflict`]; above it, the
//! epoch's single writer is the only one assigning positions.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ipubsub_core::{
    Appended, LogRecord, Message, MessageId, MessageStore, Seq, StoreError, StreamId, Tenure,
    Timestamp,
};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use crate::convert::{corrupt, to_i64, to_u64};
use crate::high_water::HighWater;

mod fence;
mod schema;

use fence::Fence;

/// How many bits of a position a partition spans: 65,536 consecutive positions.
pub const BUCKET_BITS: u32 = 16;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i32 = 3;

/// How long a bucket's index entry outlives the latest expiry of its messages.
const INDEX_MARGIN_SECONDS: i32 = 600;

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
    read_epoch: PreparedStatement,
    create_epoch: PreparedStatement,
    move_epoch: PreparedStatement,
    seal: PreparedStatement,
    insert: PreparedStatement,
    insert_bucket: PreparedStatement,
    insert_id: PreparedStatement,
    select_ids: PreparedStatement,
    select_one: PreparedStatement,
    select_after: PreparedStatement,
    select_last: PreparedStatement,
    buckets_from: PreparedStatement,
    buckets_last: PreparedStatement,
    /// Appends above a stream's known high-water mark skip the conflict check.
    high: HighWater,
    /// The fences this store last saw per stream, for filtering reads and for refusing, before
    /// writing, the records of an epoch it knows has moved on.
    fences: Mutex<HashMap<StreamId, Fence>>,
}

type Row = (i64, Vec<u8>, i64, i64, Vec<u8>);

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

fn bucket_of(seq: u64) -> i64 {
    // u64::MAX >> BUCKET_BITS fits in an i64.
    (seq >> BUCKET_BITS) as i64
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
        schema::create(&session, config).await?;
        let inner = schema::prepare(session, config).await?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }
}

impl Inner {
    /// The stored row at `seq` of `stream`, if any.
    async fn stored(&self, stream: &StreamId, seq: Seq) -> Result<Option<Row>, StoreError> {
        let seq = seq.get();
        self.session
            .execute_unpaged(
                &self.select_one,
                (stream.as_str(), bucket_of(seq), to_i64(seq)?),
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
}

/// Writes one partition's records in one unlogged batch (after the `log_ids` entries of
/// those of them that are `findable`), then the partition's entry in `buckets`.
async fn write_partition(
    inner: Arc<Inner>,
    stream: StreamId,
    bucket: i64,
    records: Vec<LogRecord>,
    findable: Vec<bool>,
) -> Result<(), StoreError> {
    // The id entries first: a findable record is never stored without its entry.
    let mut entries = Batch::new(BatchType::Unlogged);
    let mut values = Vec::new();
    for (record, _) in records.iter().zip(&findable).filter(|(_, f)| **f) {
        entries.append_statement(inner.insert_id.clone());
        values.push((
            stream.as_str(),
            record.message.id().as_str().as_bytes(),
            to_i64(record.seq.get())?,
            to_i64(record.message.timestamp().as_micros())?,
            to_i64(record.expires_at.as_micros())?,
            ttl_seconds(record.expires_at, record.message.timestamp()),
        ));
    }
    if !values.is_empty() {
        entries.set_consistency(inner.consistency);
        inner
            .session
            .batch(&entries, values)
            .await
            .map_err(unavailable)?;
    }
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
            ttl_seconds(record.expires_at, record.message.timestamp()),
        ));
    }
    statements.set_consistency(inner.consistency);
    inner
        .session
        .batch(&statements, values)
        .await
        .map_err(unavailable)?;
    let latest = records.iter().map(|r| r.expires_at).max();
    let earliest = records.iter().map(|r| r.message.timestamp()).min();
    let (Some(latest), Some(earliest)) = (latest, earliest) else {
        return Ok(());
    };
    // Outlive the partition's messages by a margin, so that a reader never misses a
    // partition whose messages are still alive.
    let ttl = ttl_seconds(latest, earliest).saturating_add(INDEX_MARGIN_SECONDS);
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

/// A TTL for Cassandra that never removes a row before `expires_at`: the seconds from the
/// message's acceptance (`accepted`, on the clock that stamped `expires_at`, not this process's
/// clock, which may be off) to its expiry, rounded up, plus one, because Cassandra counts a
/// TTL from the write's whole second (it may expire a row up to a second early). The time
/// between acceptance and the write only makes the row outlive its expiry; reads filter on
/// `expires_at` to the microsecond anyway.
fn ttl_seconds(expires_at: Timestamp, accepted: Timestamp) -> i32 {
    let micros = expires_at.as_micros().saturating_sub(accepted.as_micros());
    i32::try_from(micros.div_ceil(1_000_000).saturating_add(1)).unwrap_or(i32::MAX)
}

impl CassandraStore {
    /// [`MessageStore::append_findable`], `findable` empty for a plain append.
    async fn append_marked(
        &self,
        batch: &[LogRecord],
        findable: &[bool],
    ) -> Result<Appended, StoreError> {
        let inner = &*self.inner;
        // Records of an epoch this store knows has moved on are refused unwritten.
        let mut fenced: Vec<StreamId> = Vec::new();
        let mut checked: HashSet<&StreamId> = HashSet::new();
        for record in batch {
            if checked.insert(&record.stream)
                && inner.epoch(&record.stream).await? != record.seq.epoch()
            {
                fenced.push(record.stream.clone());
            }
        }
        let flags = findable.iter().copied().chain(std::iter::repeat(false));
        let (batch, findable): (Vec<&LogRecord>, Vec<bool>) = batch
            .iter()
            .zip(flags)
            .filter(|(r, _)| !fenced.contains(&r.stream))
            .unzip();
        // Check first, write after: a conflict anywhere writes nothing.
        for &record in &batch {
            let known = match inner.high.get(&record.stream) {
                Some(high) => high,
                None => {
                    let high = inner.top(&record.stream).await?;
                    inner.high.raise(&record.stream, high);
                    high
                }
            };
            if record.seq <= known
                && let Some(row) = inner.stored(&record.stream, record.seq).await?
                && !holds(&row, record)
            {
                return Err(StoreError::Conflict {
                    stream: record.stream.clone(),
                    seq: record.seq,
                });
            }
        }
        // One unlogged batch per partition, written concurrently.
        type Partition = (Vec<LogRecord>, Vec<bool>);
        let mut partitions: HashMap<(StreamId, i64), Partition> = HashMap::new();
        for (&record, &findable) in batch.iter().zip(&findable) {
            let partition = partitions
                .entry((record.stream.clone(), bucket_of(record.seq.get())))
                .or_default();
            partition.0.push(record.clone());
            partition.1.push(findable);
        }
        let mut writes = tokio::task::JoinSet::new();
        for ((stream, bucket), (records, findable)) in partitions {
            let inner = self.inner.clone();
            writes.spawn(write_partition(inner, stream, bucket, records, findable));
        }
        while let Some(written) = writes.join_next().await {
            written.map_err(unavailable)??;
        }
        fenced.extend(fence::confirm(&self.inner, &batch).await?);
        Ok(Appended::fenced(fenced))
    }
}

#[async_trait]
impl MessageStore for CassandraStore {
    async fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
        self.inner.acquire(stream).await
    }

    async fn append(&self, batch: &[LogRecord]) -> Result<Appended, StoreError> {
        self.append_marked(batch, &[]).await
    }

    async fn append_findable(
        &self,
        batch: &[LogRecord],
        findable: &[bool],
    ) -> Result<Appended, StoreError> {
        self.append_marked(batch, findable).await
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
        let fence = inner.fence(stream).await?;
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
                        // Cassandra's TTL counts whole seconds: filter to the microsecond. A
                        // row a takeover fenced off is not in the log.
                        let seq = Seq::new(to_u64(row.0)?);
                        if to_u64(row.3)? > now.as_micros() && fence.counts(seq) {
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
        let inner = &*self.inner;
        let fence = inner.whole_fence(stream).await?;
        inner.last_counted(stream, &fence).await
    }

    async fn find_message(
        &self,
        stream: &StreamId,
        id: &MessageId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Seq>, StoreError> {
        let inner = &*self.inner;
        let entries: Vec<(i64, i64, i64)> = inner
            .session
            .execute_unpaged(&inner.select_ids, (stream.as_str(), id.as_str().as_bytes()))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(corrupt)?
            .rows::<(i64, i64, i64)>()
            .map_err(corrupt)?
            .collect::<Result<_, _>>()
            .map_err(corrupt)?;
        let mut fence = None;
        // Latest first (the clustering order); the few an id has.
        for (seq, accepted_at, expires_at) in entries {
            if to_u64(accepted_at)? < since.as_micros() || to_u64(expires_at)? <= now.as_micros() {
                continue;
            }
            let seq = Seq::new(to_u64(seq)?);
            let fence = match &fence {
                Some(fence) => fence,
                None => fence.insert(inner.fence(stream).await?),
            };
            if !fence.counts(seq) {
                continue; // written after a takeover sealed its epoch below it
            }
            if inner.stored(stream, seq).await?.is_some() {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    async fn server_time(&self) -> Result<Option<Timestamp>, StoreError> {
        // The coordinator's clock, to the millisecond: the one its replicas count TTLs by.
        // toUnixTimestamp is a bigint of milliseconds.
        let (millis,): (i64,) = self
            .inner
            .session
            .query_unpaged("SELECT toUnixTimestamp(now()) FROM system.local", &[])
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(corrupt)?
            .single_row()
            .map_err(corrupt)?;
        let micros = u64::try_from(millis).map_err(corrupt)? * 1000;
        Ok(Some(Timestamp::from_micros(micros)))
    }

    async fn purge_expired(&self, _now: Timestamp, _limit: usize) -> Result<usize, StoreError> {
        // Every row was written with its TTL: Cassandra removes expired rows itself (reads
        // never see them, compaction reclaims the space), so there is nothing to delete.
        Ok(0)
    }
}
