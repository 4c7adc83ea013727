//! [`PostgresStore`]: the persistent log in PostgreSQL.
//!
//! An append is one `INSERT … SELECT FROM UNNEST(…)` of the whole group commit: one statement,
//! one round trip, atomic on its own. Only when it hits a primary-key violation (a batch
//! retried after an ambiguous failure) does the store take the slow path: in one transaction it
//! compares each stored row with the record at its position, fails with
//! [`StoreError::Conflict`] if one differs, and inserts the records that are missing.

use async_trait::async_trait;
use ipubsub_core::{LogRecord, MessageStore, Seq, StoreError, StreamId, Timestamp};
use sqlx::postgres::PgPool;
use sqlx::{Executor, Postgres, Transaction};

use super::{OpenError, Row, RowTuple, SqlConfig, is_duplicate, to_i64, to_u64, unavailable};

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

const INSERT: &str = "
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

    /// Inserts the batch: the fast path.
    async fn insert<'e, E: Executor<'e, Database = Postgres>>(
        executor: E,
        batch: &[&LogRecord],
    ) -> Result<(), sqlx::Error> {
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
        sqlx::query(INSERT)
            .bind(streams)
            .bind(seqs)
            .bind(ids)
            .bind(accepted)
            .bind(expires)
            .bind(payloads)
            .execute(executor)
            .await?;
        Ok(())
    }

    /// The slow path, after a duplicate key: compare, then insert what is missing.
    async fn append_checked(&self, batch: &[LogRecord]) -> Result<(), StoreError> {
        let mut tx: Transaction<'_, Postgres> = self.pool.begin().await.map_err(unavailable)?;
        let mut missing = Vec::new();
        for record in batch {
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
            Self::insert(&mut *tx, &missing)
                .await
                .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)
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
    if super::needs_v1(found, BACKEND)? {
        sqlx::raw_sql(SCHEMA_V1)
            .execute(&mut *tx)
            .await
            .map_err(schema)?;
        sqlx::query("INSERT INTO ipubsub_schema (version) VALUES (1)")
            .execute(&mut *tx)
            .await
            .map_err(schema)?;
        tracing::info!(version = 1, "PostgreSQL schema created");
    }
    tx.commit().await.map_err(schema)
}

#[async_trait]
impl MessageStore for PostgresStore {
    async fn append(&self, batch: &[LogRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let all: Vec<&LogRecord> = batch.iter().collect();
        match Self::insert(&self.pool, &all).await {
            Ok(()) => Ok(()),
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
