//! [`PostgresStore`]: the persistent log in PostgreSQL.
//!
//! An append is one statement for the whole group commit, one round trip, atomic on its own:
//! a `SELECT … FOR SHARE` of the batch's rows in `ipubsub_epochs` that hold the records'
//! epochs (the fence), and an `INSERT … SELECT FROM UNNEST(…)` of the records of the streams
//! that passed it. An acquisition locks its stream's epoch row `FOR UPDATE`, so it waits for
//! the appends that hold the shared lock; an append that reaches the row after it waits in
//! turn and, in `READ COMMITTED`, re-checks the row's new version, finds another epoch and
//! writes nothing for that stream. Only when the insert hits a primary-key violation (a batch
//! retried after an ambiguous failure) does the store take the slow path: in one transaction
//! it passes the same fence, compares each stored row with the record at its position, fails
//! with [`StoreError::Conflict`] if one differs, and inserts the records that are missing.

use async_trait::async_trait;
use ipubsub_core::{
    Appended, LogRecord, MessageStore, Seq, StoreError, StreamId, Tenure, Timestamp,
};
use sqlx::postgres::PgPool;
use sqlx::{Executor, Postgres, Transaction};

use super::{
    OpenError, Row, RowTuple, SqlConfig, appended, is_duplicate, to_i64, to_u64, unavailable,
};

const BACKEND: &str = "PostgreSQL";

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

/// Version 2: each acquired stream's epoch, the fence every append passes.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS ipubsub_epochs (
    stream_id TEXT   NOT NULL PRIMARY KEY,
    epoch     BIGINT NOT NULL
);
";

/// The fence and the insert in one statement; answers the streams that passed. A record's
/// epoch is the top bits of its position (`Seq::epoch`).
const INSERT: &str = "
WITH batch AS (
    SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BYTEA[], $4::BIGINT[], $5::BIGINT[],
                         $6::BYTEA[])
        AS b(stream_id, seq, message_id, accepted_at, expires_at, payload)
), fence AS (
    SELECT e.stream_id FROM ipubsub_epochs e
    JOIN (SELECT DISTINCT stream_id, seq >> 40 AS epoch FROM batch) wanted
        ON e.stream_id = wanted.stream_id AND e.epoch = wanted.epoch
    FOR SHARE OF e
), written AS (
    INSERT INTO ipubsub_messages (stream_id, seq, message_id, accepted_at, expires_at, payload)
    SELECT * FROM batch WHERE stream_id IN (SELECT stream_id FROM fence)
)
SELECT stream_id FROM fence";

/// The same fence alone, inside the slow path's transaction.
const FENCE: &str = "
SELECT e.stream_id FROM ipubsub_epochs e
JOIN (SELECT DISTINCT * FROM UNNEST($1::TEXT[], $2::BIGINT[]) AS w(stream_id, epoch)) wanted
    ON e.stream_id = wanted.stream_id AND e.epoch = wanted.epoch
FOR SHARE OF e";

/// The plain insert, for the slow path (whose records passed the fence already).
const INSERT_UNFENCED: &str = "
INSERT INTO ipubsub_messages (stream_id, seq, message_id, accepted_at, expires_at, payload)
SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BYTEA[], $4::BIGINT[], $5::BIGINT[], $6::BYTEA[])";

/// The persistent log in a PostgreSQL database. Cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `config.url`, checks that the server answers, and creates or migrates the
    /// schema (under an advisory lock, so nodes starting together do not race).
    pub async fn connect(config: &SqlConfig) -> Result<Self, OpenError> {
        let pool = super::open_pool(config, BACKEND).await?;
        migrate(&pool).await?;
        Ok(Self { pool })
    }

    /// Inserts the records of `batch` whose streams pass the fence (`fenced`), or all of
    /// them; answers the streams that passed (with `fenced`).
    async fn insert<'e, E: Executor<'e, Database = Postgres>>(
        executor: E,
        batch: &[&LogRecord],
        fenced: bool,
    ) -> Result<Vec<String>, sqlx::Error> {
        let mut streams = Vec::with_capacity(batch.len());
        let mut seqs = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        let mut accepted = Vec::with_capacity(batch.len());
        let mut expires = Vec::with_capacity(batch.len());
        let mut payloads = Vec::with_capacity(batch.len());
        for record in batch {
            let (Ok(seq), Ok(at), Ok(exp)) = (
                to_i64(record.seq.get()),
                to_i64(record.message.timestamp().as_micros()),
                to_i64(record.expires_at.as_micros()),
            ) else {
                return Err(sqlx::Error::Protocol(format!(
                    "position {} of stream {} is out of range",
                    record.seq, record.stream
                )));
            };
            streams.push(record.stream.as_str());
            seqs.push(seq);
            ids.push(record.message.id().as_str().as_bytes());
            accepted.push(at);
            expires.push(exp);
            payloads.push(record.message.payload().as_ref());
        }
        let query = |sql| {
            sqlx::query_scalar::<_, String>(sql)
                .bind(streams)
                .bind(seqs)
                .bind(ids)
                .bind(accepted)
                .bind(expires)
                .bind(payloads)
        };
        // The unfenced insert returns no rows.
        query(if fenced { INSERT } else { INSERT_UNFENCED })
            .fetch_all(executor)
            .await
    }

    /// The slow path, after a duplicate key: the fence, then compare, then insert what is
    /// missing.
    async fn append_checked(&self, batch: &[LogRecord]) -> Result<Appended, StoreError> {
        let mut tx: Transaction<'_, Postgres> = self.pool.begin().await.map_err(unavailable)?;
        let (streams, epochs): (Vec<&str>, Vec<i64>) = batch
            .iter()
            .map(|r| (r.stream.as_str(), i64::from(r.seq.epoch().get())))
            .unzip();
        let passed: Vec<String> = sqlx::query_scalar(FENCE)
            .bind(streams)
            .bind(epochs)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
        let outcome = appended(batch, &passed);
        let mut missing = Vec::new();
        for record in batch.iter().filter(|r| !outcome.is_fenced(&r.stream)) {
            let row = sqlx::query_as::<_, RowTuple>(
                "SELECT seq, message_id, accepted_at, expires_at, payload FROM ipubsub_messages
                 WHERE stream_id = $1 AND seq = $2 FOR UPDATE",
            )
            .bind(record.stream.as_str())
            .bind(to_i64(record.seq.get())?)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            match row.map(Row::from) {
                Some(row) if row.holds(record) => {}
                Some(_) => {
                    tx.rollback().await.map_err(unavailable)?;
                    return Err(StoreError::Conflict {
                        stream: record.stream.clone(),
                        seq: record.seq,
                    });
                }
                None => missing.push(record),
            }
        }
        if !missing.is_empty() {
            Self::insert(&mut *tx, &missing, false)
                .await
                .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(outcome)
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
    for version in super::missing_versions(found, BACKEND)? {
        let ddl = if version == 1 { SCHEMA_V1 } else { SCHEMA_V2 };
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
        let mut tx: Transaction<'_, Postgres> = self.pool.begin().await.map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO ipubsub_epochs (stream_id, epoch) VALUES ($1, 0)
             ON CONFLICT (stream_id) DO NOTHING",
        )
        .bind(stream.as_str())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        // The exclusive row lock waits for every append holding the shared one; in READ
        // COMMITTED the next statement then sees what they committed.
        let current: i64 =
            sqlx::query_scalar("SELECT epoch FROM ipubsub_epochs WHERE stream_id = $1 FOR UPDATE")
                .bind(stream.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
        let last: Option<i64> =
            sqlx::query_scalar("SELECT max(seq) FROM ipubsub_messages WHERE stream_id = $1")
                .bind(stream.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
        let tenure = super::next_tenure(stream, current, last)?;
        sqlx::query("UPDATE ipubsub_epochs SET epoch = $2 WHERE stream_id = $1")
            .bind(stream.as_str())
            .bind(i64::from(tenure.epoch.get()))
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(tenure)
    }

    async fn append(&self, batch: &[LogRecord]) -> Result<Appended, StoreError> {
        if batch.is_empty() {
            return Ok(Appended::all());
        }
        let all: Vec<&LogRecord> = batch.iter().collect();
        match Self::insert(&self.pool, &all, true).await {
            Ok(passed) => Ok(appended(batch, &passed)),
            Err(e) if is_duplicate(&e) => self.append_checked(batch).await,
            Err(e) => Err(unavailable(e)),
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
