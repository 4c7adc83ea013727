//! [`PostgresStore`]: the persistent log in PostgreSQL.
//!
//! An append is one statement for the whole group commit, one round trip, atomic on its own:
//! an `INSERT … SELECT FROM UNNEST(…)` of the records whose streams this process holds at
//! their epochs, guarded by the process's write lease (module `lease`): the statement takes
//! the lease's barrier lock shared and checks that the lease is alive, two operations on the
//! server's lock table and no row read. An acquisition moves a stream to the next epoch under
//! the acquirer's lease, once the previous holder has released it or its lease is dead and
//! its appends under way have ended; the position it reports is then above everything the
//! old holder wrote or will ever write. Only when the insert hits a primary-key violation (a
//! batch retried after an ambiguous failure) does the store take the slow path: in one
//! transaction it passes the same lease check, compares each stored row with the record at
//! its position, fails with [`StoreError::Conflict`] if one differs, and inserts the records
//! that are missing.

mod lease;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipubsub_core::{
    Appended, LogRecord, MessageId, MessageStore, Seq, StoreError, StreamId, Tenure, Timestamp,
};
use sqlx::postgres::PgPool;
use sqlx::{Executor, Postgres, Transaction};

pub use lease::lease_lock_keys;
use lease::{LeaseId, Leases, REVOKE_WAIT, UnderWay, unknown_outcome};

use super::{OpenError, Row, RowTuple, SqlConfig, is_duplicate, to_i64, to_u64, unavailable};

const BACKEND: &str = "PostgreSQL";

/// The schema version this backend writes and understands.
pub const SCHEMA_VERSION: i32 = 4;

/// How long an acquisition keeps asking a live holder to release its stream (it ends the
/// holder's lease after [`REVOKE_WAIT`]) before it fails as unavailable.
const ACQUIRE_WAIT: Duration = Duration::from_secs(5);

/// How long an acquisition waiting for a release sleeps between its attempts.
const ACQUIRE_RETRY: Duration = Duration::from_millis(20);

/// Version 1 of the schema. `stream_id` is `TEXT` (stream ids hold no NUL), `message_id` is
/// `BYTEA` (a message id may hold any JSON string character, NUL included).
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS ipubsub_messages (
    stream_id   TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    message_id  BYTEA  NOT NULL,
    accepted_at BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    payload     BYTEA  NOT NULL,
    PRIMARY KEY (stream_id, seq)
);
CREATE INDEX IF NOT EXISTS ipubsub_messages_expires_at ON ipubsub_messages (expires_at);
";

/// Version 2: each acquired stream's epoch.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS ipubsub_epochs (
    stream_id TEXT   NOT NULL PRIMARY KEY,
    epoch     BIGINT NOT NULL
);
";

/// Version 3: write leases. `ipubsub_epochs.lease` is the lease the stream's epoch was
/// acquired under (`NULL` once released); a revocation asks a lease's holder to release a
/// stream, `requested_at` in microseconds of the database's clock.
const SCHEMA_V3: &str = "
ALTER TABLE ipubsub_epochs ADD COLUMN IF NOT EXISTS lease BIGINT;
CREATE SEQUENCE IF NOT EXISTS ipubsub_lease_ids MAXVALUE 4294967295;
CREATE TABLE IF NOT EXISTS ipubsub_revocations (
    lease        BIGINT NOT NULL,
    stream_id    TEXT   NOT NULL,
    requested_at BIGINT NOT NULL,
    PRIMARY KEY (lease, stream_id)
);
";

/// Version 4: the message id index, for `find_message` (the idempotent sends of the log).
/// `seq` last, so that an id's latest position is the index's last entry for it.
const SCHEMA_V4: &str = "
CREATE INDEX IF NOT EXISTS ipubsub_messages_message_id
    ON ipubsub_messages (stream_id, message_id, seq);
";

/// The records of the batch, written only while the lease is alive: the guard (`$7` the
/// lease's barrier key, `$8` its alive key) takes the barrier lock first, shared and held to
/// the commit (`CASE` evaluates its condition before its result), then finds the alive lock
/// held by the lease's keeper (a shared try-lock fails). A scalar subquery, so that it runs
/// once per statement, before any row is written.
const INSERT: &str = "
INSERT INTO ipubsub_messages (stream_id, seq, message_id, accepted_at, expires_at, payload)
SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BYTEA[], $4::BIGINT[], $5::BIGINT[], $6::BYTEA[])
WHERE (SELECT CASE WHEN pg_advisory_xact_lock_shared($7) IS NOT NULL
    THEN NOT pg_try_advisory_xact_lock_shared($8) END)";

/// The plain insert, for the slow path (whose transaction passed the lease check already).
const INSERT_UNFENCED: &str = "
INSERT INTO ipubsub_messages (stream_id, seq, message_id, accepted_at, expires_at, payload)
SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BYTEA[], $4::BIGINT[], $5::BIGINT[], $6::BYTEA[])";

/// The same lease check alone, first in the slow path's transaction (`$1` barrier, `$2`
/// alive).
const LEASE_CHECK: &str = "SELECT CASE WHEN pg_advisory_xact_lock_shared($1) IS NOT NULL
    THEN NOT pg_try_advisory_xact_lock_shared($2) END";

/// Asks lease `$1` to release stream `$2` (once: a repeated request keeps the first time);
/// answers how many microseconds of the database's clock ago it was first asked.
const REVOKE: &str = "
INSERT INTO ipubsub_revocations AS r (lease, stream_id, requested_at)
VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
ON CONFLICT (lease, stream_id) DO UPDATE SET requested_at = r.requested_at
RETURNING (extract(epoch FROM clock_timestamp()) * 1000000)::bigint - requested_at";

/// Ends the session of the keeper holding lease `classid = $1, objid = $2` alive.
const END_KEEPER: &str = "
SELECT pg_terminate_backend(pid) FROM pg_locks
WHERE locktype = 'advisory' AND classid = $1::oid AND objid = $2::oid AND objsubid = 1
  AND mode = 'ExclusiveLock' AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// The persistent log in a PostgreSQL database. Cheap to clone (a connection pool and the
/// process's write lease).
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    leases: Arc<Leases>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// A batch's columns, as the statements bind them.
struct Columns<'a> {
    streams: Vec<&'a str>,
    seqs: Vec<i64>,
    ids: Vec<&'a [u8]>,
    accepted: Vec<i64>,
    expires: Vec<i64>,
    payloads: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    fn of(batch: &[&'a LogRecord]) -> Result<Self, StoreError> {
        let mut columns = Self {
            streams: Vec::with_capacity(batch.len()),
            seqs: Vec::with_capacity(batch.len()),
            ids: Vec::with_capacity(batch.len()),
            accepted: Vec::with_capacity(batch.len()),
            expires: Vec::with_capacity(batch.len()),
            payloads: Vec::with_capacity(batch.len()),
        };
        for record in batch {
            columns.streams.push(record.stream.as_str());
            columns.seqs.push(to_i64(record.seq.get())?);
            columns.ids.push(record.message.id().as_str().as_bytes());
            columns
                .accepted
                .push(to_i64(record.message.timestamp().as_micros())?);
            columns.expires.push(to_i64(record.expires_at.as_micros())?);
            columns.payloads.push(record.message.payload().as_ref());
        }
        Ok(columns)
    }
}

impl PostgresStore {
    /// Connects to `config.url`, checks that the server answers, and creates or migrates the
    /// schema (under an advisory lock, so nodes starting together do not race). The write
    /// lease is opened by the first acquisition.
    pub async fn connect(config: &SqlConfig) -> Result<Self, OpenError> {
        let pool = super::open_pool(config, BACKEND).await?;
        migrate(&pool).await?;
        let leases = Leases::new(pool.clone());
        Ok(Self { pool, leases })
    }

    /// Inserts `columns`, under the lease of `lease` when given; answers how many rows it
    /// wrote (none when the lease is dead).
    async fn insert<'e, E: Executor<'e, Database = Postgres>>(
        executor: E,
        columns: Columns<'_>,
        lease: Option<LeaseId>,
    ) -> Result<u64, sqlx::Error> {
        let query = sqlx::query(if lease.is_some() {
            INSERT
        } else {
            INSERT_UNFENCED
        })
        .bind(columns.streams)
        .bind(columns.seqs)
        .bind(columns.ids)
        .bind(columns.accepted)
        .bind(columns.expires)
        .bind(columns.payloads);
        let query = match lease {
            Some(lease) => query.bind(lease.barrier_key()).bind(lease.alive_key()),
            None => query,
        };
        Ok(query.execute(executor).await?.rows_affected())
    }

    /// The records of `batch` that an append under way lets go ahead.
    fn going<'b>(batch: &'b [LogRecord], under_way: &UnderWay<'_>) -> Vec<&'b LogRecord> {
        batch
            .iter()
            .filter(|r| under_way.going.contains(&r.stream))
            .collect()
    }

    /// What an append wrote when the lease turned out dead: nothing.
    fn all_fenced(&self, under_way: UnderWay<'_>) -> Appended {
        self.leases
            .lose(under_way.id, "the database found the write lease dead");
        let mut fenced = under_way.fenced.clone();
        fenced.extend(under_way.going.iter().cloned());
        under_way.settle();
        Appended::fenced(fenced)
    }

    /// The slow path, after a duplicate key: the lease check, then compare, then insert what
    /// is missing.
    async fn append_checked(
        &self,
        batch: &[LogRecord],
        under_way: UnderWay<'_>,
    ) -> Result<Appended, StoreError> {
        let going: Vec<LogRecord> = Self::going(batch, &under_way)
            .into_iter()
            .cloned()
            .collect();
        let (pool, lease) = (self.pool.clone(), under_way.id);
        let checked =
            super::to_the_end(
                async move { Ok(Self::compare_and_insert(&pool, &going, lease).await) },
            );
        // A task that did not finish (the runtime is shutting down) has an unknown outcome:
        // the guard goes unsettled.
        match checked.await? {
            Ok(Some(())) => {
                let fenced = Appended::fenced(under_way.fenced.clone());
                under_way.settle();
                Ok(fenced)
            }
            Ok(None) => Ok(self.all_fenced(under_way)),
            Err(Checked::Store(e)) => {
                under_way.settle();
                Err(e)
            }
            Err(Checked::Sql(e)) => {
                if !unknown_outcome(&e) {
                    under_way.settle();
                }
                Err(unavailable(e))
            }
        }
    }

    /// The slow path's transaction, for the records that passed the in-process check, run to
    /// its end (see [`to_the_end`](super::to_the_end)); `None` when the lease is dead.
    async fn compare_and_insert(
        pool: &PgPool,
        going: &[LogRecord],
        lease: LeaseId,
    ) -> Result<Option<()>, Checked> {
        let mut tx: Transaction<'_, Postgres> = pool.begin().await?;
        let held: Option<bool> = sqlx::query_scalar(LEASE_CHECK)
            .bind(lease.barrier_key())
            .bind(lease.alive_key())
            .fetch_one(&mut *tx)
            .await?;
        if held != Some(true) {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut missing = Vec::new();
        for record in going {
            let row = sqlx::query_as::<_, RowTuple>(
                "SELECT seq, message_id, accepted_at, expires_at, payload FROM ipubsub_messages
                 WHERE stream_id = $1 AND seq = $2 FOR UPDATE",
            )
            .bind(record.stream.as_str())
            .bind(to_i64(record.seq.get())?)
            .fetch_optional(&mut *tx)
            .await?;
            match row.map(Row::from) {
                Some(row) if row.holds(record) => {}
                Some(_) => {
                    tx.rollback().await?;
                    return Err(Checked::Store(StoreError::Conflict {
                        stream: record.stream.clone(),
                        seq: record.seq,
                    }));
                }
                None => missing.push(record),
            }
        }
        if !missing.is_empty() {
            Self::insert(&mut *tx, Columns::of(&missing)?, None).await?;
        }
        tx.commit().await?;
        Ok(Some(()))
    }

    /// [`MessageStore::acquire`], run to its end (see [`to_the_end`](super::to_the_end)).
    async fn acquire_in(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
        let started = tokio::time::Instant::now();
        loop {
            let lease = self.leases.current().await?;
            if let Some(tenure) = self.try_acquire(stream, lease).await? {
                return Ok(tenure);
            }
            if started.elapsed() >= ACQUIRE_WAIT {
                return Err(StoreError::Unavailable(
                    format!(
                        "stream {} is held by a write lease that neither released it nor \
                         ended within {ACQUIRE_WAIT:?}",
                        stream.as_str()
                    )
                    .into(),
                ));
            }
            tokio::time::sleep(ACQUIRE_RETRY).await;
        }
    }

    /// One attempt at acquiring `stream` under `lease`: the tenure, or `None` when a live
    /// holder has been asked to release it (and, when it was asked long enough ago, had its
    /// lease ended) and the caller should try again.
    async fn try_acquire(
        &self,
        stream: &StreamId,
        lease: LeaseId,
    ) -> Result<Option<Tenure>, StoreError> {
        let _move = self.leases.move_lock(stream).lock().await;
        // Whatever this process still writes of the stream ends before the position is read.
        self.leases.let_go(stream).await;
        let mut tx: Transaction<'_, Postgres> = self.pool.begin().await.map_err(unavailable)?;
        // The row lock is held by acquisitions only: none waits long for it, and a session
        // that stops half-way (its process paused) is ended by the server.
        sqlx::query(
            "SELECT set_config('lock_timeout', '2s', true),
                    set_config('idle_in_transaction_session_timeout', '2s', true)",
        )
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO ipubsub_epochs (stream_id, epoch) VALUES ($1, 0)
             ON CONFLICT (stream_id) DO NOTHING",
        )
        .bind(stream.as_str())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        let (current, holder): (i64, Option<i64>) = sqlx::query_as(
            "SELECT epoch, lease FROM ipubsub_epochs WHERE stream_id = $1 FOR UPDATE",
        )
        .bind(stream.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        if let Some(holder) = holder.map(LeaseId).filter(|h| *h != lease) {
            let dead: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock_shared($1)")
                .bind(holder.alive_key())
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
            if dead {
                // Waits out the dead lease's appends still running; those after it find the
                // lease dead.
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(holder.barrier_key())
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            } else {
                let asked_us: i64 = sqlx::query_scalar(REVOKE)
                    .bind(holder.0)
                    .bind(stream.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                if u128::try_from(asked_us).unwrap_or(0) > REVOKE_WAIT.as_micros() {
                    let (classid, objid) = lease::alive_lock_columns(holder);
                    let ended: Vec<bool> = sqlx::query_scalar(END_KEEPER)
                        .bind(classid)
                        .bind(objid)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                    tracing::warn!(
                        stream = stream.as_str(),
                        lease = holder.0,
                        ended = ended.iter().any(|e| *e),
                        "a write lease did not release a stream within {REVOKE_WAIT:?}: ending it"
                    );
                }
                tx.commit().await.map_err(unavailable)?;
                return Ok(None);
            }
        }
        // A new statement: in READ COMMITTED it sees everything committed before it started,
        // which is everything the previous holder wrote.
        let last: Option<i64> =
            sqlx::query_scalar("SELECT max(seq) FROM ipubsub_messages WHERE stream_id = $1")
                .bind(stream.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
        let tenure = super::next_tenure(stream, current, last)?;
        sqlx::query(
            "WITH moved AS (
                 UPDATE ipubsub_epochs SET epoch = $2, lease = $3 WHERE stream_id = $1
             )
             DELETE FROM ipubsub_revocations WHERE stream_id = $1",
        )
        .bind(stream.as_str())
        .bind(i64::from(tenure.epoch.get()))
        .bind(lease.0)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        self.leases.hold(lease, stream, tenure.epoch)?;
        Ok(Some(tenure))
    }
}

/// How the slow path fails: a store error of its own, or the database's.
enum Checked {
    Store(StoreError),
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for Checked {
    fn from(e: sqlx::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<StoreError> for Checked {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

async fn migrate(pool: &PgPool) -> Result<(), OpenError> {
    let schema = |source| OpenError::Schema {
        backend: BACKEND,
        source,
    };
    let mut tx = pool.begin().await.map_err(schema)?;
    // `IF NOT EXISTS` on existing objects is not news: keep the server's notices out of the log.
    sqlx::query("SET LOCAL client_min_messages = warning")
        .execute(&mut *tx)
        .await
        .map_err(schema)?;
    // One migrator at a time across every node sharing the database; released at commit.
    sqlx::query("SELECT pg_advisory_xact_lock(7262793482647826433)")
        .execute(&mut *tx)
        .await
        .map_err(schema)?;
    sqlx::query("CREATE TABLE IF NOT EXISTS ipubsub_schema (version INTEGER NOT NULL)")
        .execute(&mut *tx)
        .await
        .map_err(schema)?;
    let found: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM ipubsub_schema")
        .fetch_one(&mut *tx)
        .await
        .map_err(schema)?;
    for version in super::missing_versions(found, SCHEMA_VERSION, BACKEND)? {
        let ddl = match version {
            1 => SCHEMA_V1,
            2 => SCHEMA_V2,
            3 => SCHEMA_V3,
            _ => SCHEMA_V4,
        };
        sqlx::raw_sql(ddl).execute(&mut *tx).await.map_err(schema)?;
        sqlx::query("INSERT INTO ipubsub_schema (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(schema)?;
        tracing::info!(version, "PostgreSQL schema created");
    }
    tx.commit().await.map_err(schema)
}

#[async_trait]
impl MessageStore for PostgresStore {
    async fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
        let (this, stream) = (self.clone(), stream.clone());
        super::to_the_end(async move { this.acquire_in(&stream).await }).await
    }

    async fn append(&self, batch: &[LogRecord]) -> Result<Appended, StoreError> {
        if batch.is_empty() {
            return Ok(Appended::all());
        }
        // Without a live lease (its keeper's session failed: the database is likely down)
        // nothing can be written; the log acquires the streams again, under a new lease.
        let Some(under_way) = self.leases.begin(batch) else {
            return Err(StoreError::Unavailable(
                "this process holds no live PostgreSQL write lease".into(),
            ));
        };
        let going = Self::going(batch, &under_way);
        if going.is_empty() {
            let fenced = Appended::fenced(under_way.fenced.clone());
            under_way.settle();
            return Ok(fenced);
        }
        let columns = match Columns::of(&going) {
            Ok(columns) => columns,
            Err(e) => {
                under_way.settle();
                return Err(e);
            }
        };
        match Self::insert(&self.pool, columns, Some(under_way.id)).await {
            Ok(0) => Ok(self.all_fenced(under_way)),
            Ok(_) => {
                let fenced = Appended::fenced(under_way.fenced.clone());
                under_way.settle();
                Ok(fenced)
            }
            Err(e) if is_duplicate(&e) => self.append_checked(batch, under_way).await,
            Err(e) => {
                // Dropped unsettled, an append whose outcome is unknown gives the lease up.
                if !unknown_outcome(&e) {
                    under_way.settle();
                }
                Err(unavailable(e))
            }
        }
    }

    async fn read_after(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let Ok(after) = i64::try_from(after.get()) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query_as::<_, RowTuple>(
            "SELECT seq, message_id, accepted_at, expires_at, payload FROM ipubsub_messages
             WHERE stream_id = $1 AND seq > $2 AND expires_at > $3
             ORDER BY seq LIMIT $4",
        )
        .bind(stream.as_str())
        .bind(after)
        .bind(to_i64(now.as_micros())?)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.into_iter()
            .map(|row| Row::from(row).into_record(stream))
            .collect()
    }

    async fn find_message(
        &self,
        stream: &StreamId,
        id: &MessageId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Seq>, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM ipubsub_messages
             WHERE stream_id = $1 AND message_id = $2 AND accepted_at >= $3 AND expires_at > $4
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(stream.as_str())
        .bind(id.as_str().as_bytes())
        .bind(to_i64(since.as_micros())?)
        .bind(to_i64(now.as_micros())?)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        found.map(|seq| to_u64(seq).map(Seq::new)).transpose()
    }

    async fn last_seq(&self, stream: &StreamId) -> Result<Seq, StoreError> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT max(seq) FROM ipubsub_messages WHERE stream_id = $1")
                .bind(stream.as_str())
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(Seq::new(last.map(to_u64).transpose()?.unwrap_or(0)))
    }

    async fn server_time(&self) -> Result<Option<Timestamp>, StoreError> {
        let micros: i64 =
            sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(Some(Timestamp::from_micros(to_u64(micros)?)))
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        // The subquery walks the expiry index from its start and stops at `limit`; SKIP
        // LOCKED lets two nodes purge side by side without waiting on each other.
        let deleted = sqlx::query(
            "DELETE FROM ipubsub_messages WHERE (stream_id, seq) IN (
                 SELECT stream_id, seq FROM ipubsub_messages
                 WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2
                 FOR UPDATE SKIP LOCKED)",
        )
        .bind(to_i64(now.as_micros())?)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?
        .rows_affected();
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }
}
