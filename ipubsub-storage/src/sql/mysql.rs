//! [`MySqlStore`]: the persistent log in MySQL or MariaDB (InnoDB).
//!
//! An append is one transaction: a locking read (`LOCK IN SHARE MODE`) of the batch's rows in
//! `ipubsub_epochs` (the fence: InnoDB's locking reads see the latest committed version and
//! wait for an exclusive lock), then a multi-row `INSERT` of the records of the streams whose
//! row holds their epoch (split in statements of at most 4 MiB of SQL text). An acquisition locks
//! its stream's row `FOR UPDATE`, so it waits for the appends under way, and those behind it
//! see the new epoch. A primary-key violation (a batch retried after an ambiguous failure)
//! takes the slow path of the PostgreSQL store in the same transaction: compare row by row,
//! conflict or insert the rest.
//!
//! Ids are `VARBINARY`: MySQL's default collations compare text case- and
//! trailing-space-insensitively, which would make `Orders` and `orders ` one stream.

use async_trait::async_trait;
use ipubsub_core::{
    Appended, LogRecord, MessageId, MessageStore, Seq, StoreError, StreamId, Tenure, Timestamp,
};
use sqlx::mysql::MySqlPool;
use sqlx::{AssertSqlSafe, MySql, Transaction};

use super::{
    OpenError, Row, RowTuple, SqlConfig, appended, is_duplicate, streams_of, to_epoch, to_i64,
    to_u64, unavailable, wanted_epochs,
};

const BACKEND: &str = "MySQL";

/// The schema version this backend writes and understands.
pub const SCHEMA_VERSION: i32 = 3;

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

/// Version 2: each acquired stream's epoch, the fence every append passes.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS ipubsub_epochs (
    stream_id VARBINARY(256) NOT NULL PRIMARY KEY,
    epoch     BIGINT         NOT NULL
) ENGINE = InnoDB";

/// Version 3: the message id index, for `find_message` (the idempotent sends of the log),
/// `seq` last so that an id's latest position is its last entry. MySQL 8 has no `IF NOT
/// EXISTS` for indexes: the migration looks in `information_schema` first.
const SCHEMA_V3: &str = "
ALTER TABLE ipubsub_messages
    ADD INDEX ipubsub_messages_message_id (stream_id, message_id, seq)";

/// Most bytes of SQL text per insert statement (far below the default `max_allowed_packet`
/// of 16 MiB on MariaDB and 64 MiB on MySQL 8).
const TEXT_STATEMENT_BYTES: usize = 4 << 20;

/// Appends `bytes` as a hex literal (`X'…'`). The append path speaks the text protocol:
/// a prepared statement that is not cached ends with a `COM_STMT_CLOSE`, which has no reply,
/// and the next command then waits on Nagle's algorithm for the server's delayed ACK (sqlx
/// sets no `TCP_NODELAY`): 40 ms twice per group commit, which cut durable sends to a sixth.
/// Hex keeps any byte safe in SQL text.
fn hex(sql: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    sql.reserve(bytes.len() * 2 + 3);
    sql.push_str("X'");
    for &b in bytes {
        sql.push(char::from(DIGITS[usize::from(b >> 4)]));
        sql.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    sql.push('\'');
}

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

    /// Inserts `rows` in statements of at most [`TEXT_STATEMENT_BYTES`], in the text protocol
    /// (see [`hex`]).
    async fn insert(
        tx: &mut Transaction<'_, MySql>,
        rows: &[&LogRecord],
    ) -> Result<(), StoreError> {
        use std::fmt::Write as _;
        const HEAD: &str = "INSERT INTO ipubsub_messages \
                            (stream_id, seq, message_id, accepted_at, expires_at, payload) VALUES ";
        let mut sql = String::with_capacity(HEAD.len() + rows.len() * 300);
        let mut first = rows.first();
        for (i, record) in rows.iter().enumerate() {
            if sql.is_empty() {
                sql.push_str(HEAD);
                first = Some(record);
            } else {
                sql.push(',');
            }
            sql.push('(');
            hex(&mut sql, record.stream.as_str().as_bytes());
            let numbers = [
                to_i64(record.seq.get())?,
                to_i64(record.message.timestamp().as_micros())?,
                to_i64(record.expires_at.as_micros())?,
            ];
            // Writing to a String cannot fail.
            let _ = write!(sql, ",{},", numbers[0]);
            hex(&mut sql, record.message.id().as_str().as_bytes());
            let _ = write!(sql, ",{},{},", numbers[1], numbers[2]);
            hex(&mut sql, record.message.payload());
            sql.push(')');
            if sql.len() >= TEXT_STATEMENT_BYTES || i + 1 == rows.len() {
                let statement = std::mem::take(&mut sql);
                sqlx::raw_sql(AssertSqlSafe(statement))
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| match first {
                        Some(first) if is_duplicate(&e) => StoreError::Conflict {
                            stream: first.stream.clone(),
                            seq: first.seq,
                        },
                        _ => unavailable(e),
                    })?;
            }
        }
        Ok(())
    }

    /// The streams of `batch` whose epoch row holds their records' epoch, share-locked until
    /// `tx` ends.
    async fn fence(
        tx: &mut Transaction<'_, MySql>,
        batch: &[LogRecord],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        use sqlx::Row as _;
        let mut sql =
            String::from("SELECT stream_id, epoch FROM ipubsub_epochs WHERE stream_id IN (");
        for (i, stream) in streams_of(batch).into_iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            hex(&mut sql, stream.as_str().as_bytes());
        }
        sql.push_str(") LOCK IN SHARE MODE");
        let rows = sqlx::raw_sql(AssertSqlSafe(sql))
            .fetch_all(&mut **tx)
            .await
            .map_err(unavailable)?;
        let wanted = wanted_epochs(batch);
        let mut passed = Vec::with_capacity(rows.len());
        for row in rows {
            let stream: Vec<u8> = row.try_get(0).map_err(unavailable)?;
            let epoch = to_epoch(row.try_get(1).map_err(unavailable)?)?;
            if wanted.contains(&(stream.as_slice(), epoch)) {
                passed.push(stream);
            }
        }
        Ok(passed)
    }

    /// The slow path, inside the append's transaction: each record is compared with what its
    /// position holds, and the missing ones are inserted.
    async fn insert_checked(
        tx: &mut Transaction<'_, MySql>,
        records: &[&LogRecord],
    ) -> Result<(), StoreError> {
        let mut missing = Vec::new();
        for &record in records {
            let row = sqlx::query_as::<_, RowTuple>(
                "SELECT seq, message_id, accepted_at, expires_at, payload FROM ipubsub_messages
                 WHERE stream_id = ? AND seq = ? FOR UPDATE",
            )
            .bind(record.stream.as_str().as_bytes())
            .bind(to_i64(record.seq.get())?)
            .fetch_optional(&mut **tx)
            .await
            .map_err(unavailable)?;
            match row.map(Row::from) {
                Some(row) if row.holds(record) => {}
                Some(_) => {
                    return Err(StoreError::Conflict {
                        stream: record.stream.clone(),
                        seq: record.seq,
                    });
                }
                None => missing.push(record),
            }
        }
        Self::insert(tx, &missing).await?;
        Ok(())
    }

    /// [`MessageStore::acquire`]'s transaction (see [`to_the_end`](super::to_the_end)).
    async fn acquire_in(pool: &MySqlPool, stream: &StreamId) -> Result<Tenure, StoreError> {
        let id = stream.as_str().as_bytes();
        let mut tx = pool.begin().await.map_err(unavailable)?;
        sqlx::query("INSERT IGNORE INTO ipubsub_epochs (stream_id, epoch) VALUES (?, 0)")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        // The exclusive row lock waits for every append holding the shared one.
        let current: i64 =
            sqlx::query_scalar("SELECT epoch FROM ipubsub_epochs WHERE stream_id = ? FOR UPDATE")
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
        // A locking read, so that it sees what those appends committed whatever the
        // transaction's snapshot.
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT max(seq) FROM ipubsub_messages WHERE stream_id = ? LOCK IN SHARE MODE",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        let tenure = super::next_tenure(stream, current, last)?;
        sqlx::query("UPDATE ipubsub_epochs SET epoch = ? WHERE stream_id = ?")
            .bind(i64::from(tenure.epoch.get()))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(tenure)
    }

    /// [`MessageStore::append`]'s transaction (see [`to_the_end`](super::to_the_end)).
    async fn append_in(pool: &MySqlPool, batch: &[LogRecord]) -> Result<Appended, StoreError> {
        let mut tx = pool.begin().await.map_err(unavailable)?;
        let passed = Self::fence(&mut tx, batch).await?;
        let outcome = appended(batch, &passed);
        let records: Vec<&LogRecord> = batch
            .iter()
            .filter(|r| !outcome.is_fenced(&r.stream))
            .collect();
        match Self::insert(&mut tx, &records).await {
            Ok(()) => {}
            // A duplicate key undoes that statement only: compare row by row.
            Err(StoreError::Conflict { .. }) => Self::insert_checked(&mut tx, &records).await?,
            Err(e) => return Err(e),
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(outcome)
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
        for version in super::missing_versions(found, SCHEMA_VERSION, BACKEND)? {
            let ddl = match version {
                1 => SCHEMA_V1,
                2 => SCHEMA_V2,
                _ => SCHEMA_V3,
            };
            // A migrator that died between its DDL and its version row left the index.
            let indexed: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.statistics
                 WHERE table_schema = DATABASE() AND table_name = 'ipubsub_messages'
                   AND index_name = 'ipubsub_messages_message_id'",
            )
            .fetch_one(&mut *conn)
            .await
            .map_err(schema)?;
            if !(version == 3 && indexed > 0) {
                sqlx::query(ddl).execute(&mut *conn).await.map_err(schema)?;
            }
            sqlx::query("INSERT INTO ipubsub_schema (version) VALUES (?)")
                .bind(version)
                .execute(&mut *conn)
                .await
                .map_err(schema)?;
            tracing::info!(version, "MySQL schema created");
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
    async fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
        let (pool, stream) = (self.pool.clone(), stream.clone());
        super::to_the_end(async move { Self::acquire_in(&pool, &stream).await }).await
    }

    async fn append(&self, batch: &[LogRecord]) -> Result<Appended, StoreError> {
        if batch.is_empty() {
            return Ok(Appended::all());
        }
        let (pool, batch) = (self.pool.clone(), batch.to_vec());
        super::to_the_end(async move { Self::append_in(&pool, &batch).await }).await
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

    async fn find_message(
        &self,
        stream: &StreamId,
        id: &MessageId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Seq>, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM ipubsub_messages
             WHERE stream_id = ? AND message_id = ? AND accepted_at >= ? AND expires_at > ?
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(stream.as_str().as_bytes())
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
            sqlx::query_scalar("SELECT max(seq) FROM ipubsub_messages WHERE stream_id = ?")
                .bind(stream.as_str().as_bytes())
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(Seq::new(last.map(to_u64).transpose()?.unwrap_or(0)))
    }

    async fn server_time(&self) -> Result<Option<Timestamp>, StoreError> {
        let micros: i64 =
            sqlx::query_scalar("SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)")
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(Some(Timestamp::from_micros(to_u64(micros)?)))
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
