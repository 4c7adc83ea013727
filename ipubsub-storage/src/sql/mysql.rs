//! [`MySqlStore`]: the persistent log in MySQL or MariaDB (InnoDB).
//!
//! An append is one multi-row `INSERT` of the whole group commit (one statement, atomic on its
//! own); a batch too large for one statement's placeholders is split inside a transaction.
//! A primary-key violation (a batch retried after an ambiguous failure) takes the slow path
//! of the PostgreSQL store: compare row by row in a transaction, conflict or insert the rest.
//!
//! Ids are `VARBINARY`: MySQL's default collations compare text case- and
//! trailing-space-insensitively, which would make `Orders` and `orders ` one stream.

use async_trait::async_trait;
use ipubsub_core::{LogRecord, MessageStore, Seq, StoreError, StreamId, Timestamp};
use sqlx::mysql::MySqlPool;
use sqlx::{AssertSqlSafe, Executor, MySql};

use super::{OpenError, Row, RowTuple, SqlConfig, is_duplicate, to_i64, to_u64, unavailable};

const BACKEND: &str = "MySQL";

/// Version 1 of the schema (ids up to the protocol's 256 bytes, messages up to 4 GiB).
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS ipubsub_messages (
    stream_id   VARBINARY(256) NOT NULL,
    seq         BIGINT         NOT NULL,
    message_id  VARBINARY(256) NOT NULL,
    accepted_at BIGINT         NOT NULL,
    expires_at  BIGINT         NOT NULL,
    payload     LONGBLOB       NOT NULL,
    PRIMARY KEY (stream_id, seq),
    KEY ipubsub_messages_expires_at (expires_at)
) ENGINE = InnoDB";

/// Placeholders per row, and rows per statement (the protocol allows 65,535 placeholders).
const COLUMNS: usize = 6;
const MAX_ROWS: usize = 65_535 / COLUMNS;

/// The persistent log in a MySQL or MariaDB database. Cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
}

impl MySqlStore {
    /// Connects to `config.url`, checks that the server answers, and creates or migrates the
    /// schema (under a named lock, so nodes starting together do not race).
    pub async fn connect(config: &SqlConfig) -> Result<Self, OpenError> {
        let pool = super::open_pool(config, BACKEND).await?;
        migrate(&pool).await?;
        Ok(Self { pool })
    }

    /// Inserts up to [`MAX_ROWS`] records in one statement.
    async fn insert<'e, E: Executor<'e, Database = MySql>>(
        executor: E,
        rows: &[&LogRecord],
    ) -> Result<(), StoreError> {
        let mut sql = String::with_capacity(100 + rows.len() * 15);
        sql.push_str(
            "INSERT INTO ipubsub_messages \
             (stream_id, seq, message_id, accepted_at, expires_at, payload) VALUES ",
        );
        for i in 0..rows.len() {
            sql.push_str(if i == 0 {
                "(?,?,?,?,?,?)"
            } else {
                ",(?,?,?,?,?,?)"
            });
        }
        // Each batch size is its own statement text: do not fill the statement cache.
        let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for record in rows {
            query = query
                .bind(record.stream.as_str().as_bytes())
                .bind(to_i64(record.seq.get())?)
                .bind(record.message.id().as_str().as_bytes())
                .bind(to_i64(record.message.timestamp().as_micros())?)
                .bind(to_i64(record.expires_at.as_micros())?)
                .bind(record.message.payload().as_ref());
        }
        query.execute(executor).await.map_err(|e| {
            if is_duplicate(&e) {
                StoreError::Conflict {
                    stream: rows[0].stream.clone(),
                    seq: rows[0].seq,
                }
            } else {
                unavailable(e)
            }
        })?;
        Ok(())
    }

    /// Appends without the fast path: in one transaction, each record is compared with what
    /// its position holds, and the missing ones are inserted.
    async fn append_checked(&self, batch: &[LogRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let mut missing = Vec::new();
        for record in batch {
            let row = sqlx::query_as::<_, RowTuple>(
                "SELECT seq, message_id, accepted_at, expires_at, payload FROM ipubsub_messages
                 WHERE stream_id = ? AND seq = ? FOR UPDATE",
            )
            .bind(record.stream.as_str().as_bytes())
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
        for chunk in missing.chunks(MAX_ROWS) {
            Self::insert(&mut *tx, chunk).await?;
        }
        tx.commit().await.map_err(unavailable)
    }
}

async fn migrate(pool: &MySqlPool) -> Result<(), OpenError> {
    let schema = |source| OpenError::Schema {
        backend: BACKEND,
        source,
    };
    // DDL commits implicitly in MySQL: a named lock, held by this connection, serialises
    // migrators instead of a transaction.
    let mut conn = pool.acquire().await.map_err(schema)?;
    let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('ipubsub_schema', 30)")
        .fetch_one(&mut *conn)
        .await
        .map_err(schema)?;
    if locked != Some(1) {
        return Err(schema(sqlx::Error::Protocol(
            "timed out waiting for the schema lock `ipubsub_schema`".into(),
        )));
    }
    let result = async {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS ipubsub_schema (version INT NOT NULL) ENGINE = InnoDB",
        )
        .execute(&mut *conn)
        .await
        .map_err(schema)?;
        let found: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM ipubsub_schema")
            .fetch_one(&mut *conn)
            .await
            .map_err(schema)?;
        if super::needs_v1(found, BACKEND)? {
            sqlx::query(SCHEMA_V1)
                .execute(&mut *conn)
                .await
                .map_err(schema)?;
            sqlx::query("INSERT INTO ipubsub_schema (version) VALUES (1)")
                .execute(&mut *conn)
                .await
                .map_err(schema)?;
            tracing::info!(version = 1, "MySQL schema created");
        }
        Ok(())
    }
    .await;
    sqlx::query("SELECT RELEASE_LOCK('ipubsub_schema')")
        .execute(&mut *conn)
        .await
        .map_err(schema)?;
    result
}

#[async_trait]
impl MessageStore for MySqlStore {
    async fn append(&self, batch: &[LogRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let all: Vec<&LogRecord> = batch.iter().collect();
        if all.len() > MAX_ROWS {
            // Too many placeholders for one statement: fall back to one transaction.
            return self.append_checked(batch).await;
        }
        match Self::insert(&self.pool, &all).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict { .. }) => self.append_checked(batch).await,
            Err(e) => Err(e),
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
             WHERE stream_id = ? AND seq > ? AND expires_at > ?
             ORDER BY seq LIMIT ?",
        )
        .bind(stream.as_str().as_bytes())
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
            sqlx::query_scalar("SELECT max(seq) FROM ipubsub_messages WHERE stream_id = ?")
                .bind(stream.as_str().as_bytes())
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(Seq::new(last.map(to_u64).transpose()?.unwrap_or(0)))
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        // A single-table DELETE with ORDER BY and LIMIT walks the expiry index and stops.
        let deleted = sqlx::query(
            "DELETE FROM ipubsub_messages WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
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
