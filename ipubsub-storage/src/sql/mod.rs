//! What the SQL backends ([`postgres`], [`mysql`]) share: their configuration, start-up
//! errors, how a row becomes a [`LogRecord`] and how a record is compared with a stored row.
//!
//! # Schema
//! - `ipubsub_messages` (version 1), keyed by `(stream_id, seq)` so that a read of one stream
//!   is one range of the primary key, with an index on `expires_at` so that a purge reads
//!   expired rows only. Times are microseconds since the Unix epoch in `BIGINT`s (exactly the
//!   core's `Timestamp`); the message is its raw JSON bytes.
//! - `ipubsub_epochs` (version 2): `(stream_id, epoch)`, one row per acquired stream, never
//!   purged. MySQL's fence (its schema stays at version 2): an append takes a shared lock on
//!   its streams' rows and writes only where the row holds its records' epoch; an acquisition
//!   takes the exclusive lock, so it waits for appends under way, and the appends behind it
//!   see the new epoch. Both are short transactions on the database's own locks, so no clock
//!   or process on the nodes takes part.
//! - PostgreSQL's version 3: the fence moves off the rows onto a lease per process
//!   (`ipubsub_epochs.lease`, the sequence `ipubsub_lease_ids`, `ipubsub_revocations` and
//!   two advisory locks per lease; see [`postgres`]), because a row read and locked on
//!   every commit cost a quarter of PostgreSQL's append rate.
//! - An index on `(stream_id, message_id, seq)` (PostgreSQL's version 4, MySQL's version 3),
//!   for `find_message`: one index probe per lookup, one more index entry per append.
//!
//! `ipubsub_schema` holds the schema version, so that a later version can migrate the tables
//! it finds.

#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;

use std::time::Duration;

use ipubsub_core::{Epoch, LogRecord, Message, MessageId, Seq, StoreError, StreamId, Timestamp};

/// How to reach a SQL database.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqlConfig {
    /// `postgres://user:password@host:port/database` or `mysql://…`.
    pub url: String,
    /// Most connections the pool opens.
    pub pool_size: u32,
    /// How long a store call waits for a connection (and a connection attempt for the
    /// server) before it fails as unavailable.
    pub connect_timeout: Duration,
}

impl SqlConfig {
    /// `url` with a pool of 16 connections and a 5 s connect timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for SqlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlConfig")
            .field("url", &crate::redacted_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Why a SQL store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL is not one the driver understands.
    #[error("bad {backend} URL {url}: {source}")]
    Url {
        /// `PostgreSQL` or `MySQL`.
        backend: &'static str,
        /// The URL, password hidden.
        url: String,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// The server could not be reached, refused the credentials, or has no such database.
    #[error("cannot connect to {backend} at {url}: {source}")]
    Connect {
        /// `PostgreSQL` or `MySQL`.
        backend: &'static str,
        /// The URL, password hidden.
        url: String,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// The schema could not be created or migrated.
    #[error("cannot set up the {backend} schema: {source}")]
    Schema {
        /// `PostgreSQL` or `MySQL`.
        backend: &'static str,
        /// What the database said.
        #[source]
        source: sqlx::Error,
    },
    /// The database holds a schema newer than this build knows.
    #[error(
        "the {backend} schema is at version {found}, newer than this build's {latest}: upgrade ipubsub"
    )]
    NewerSchema {
        /// `PostgreSQL` or `MySQL`.
        backend: &'static str,
        /// The version found.
        found: i32,
        /// The newest version this build knows.
        latest: i32,
    },
}

/// Parses `config.url`, makes one direct connection (a pool would retry until its timeout and
/// then report only that, hiding the reason: refused, bad password, no such database), then
/// returns a pool that connects on demand.
async fn open_pool<DB: sqlx::Database>(
    config: &SqlConfig,
    backend: &'static str,
) -> Result<sqlx::Pool<DB>, OpenError> {
    use sqlx::ConnectOptions as _;
    use sqlx::Connection as _;
    use std::str::FromStr as _;

    let url = crate::redacted_url(&config.url);
    let options = <<DB::Connection as sqlx::Connection>::Options>::from_str(&config.url).map_err(
        |source| OpenError::Url {
            backend,
            url: url.clone(),
            source,
        },
    )?;
    let probe = match tokio::time::timeout(config.connect_timeout, options.connect()).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {:?}", config.connect_timeout),
        ))),
    }
    .map_err(|source| OpenError::Connect {
        backend,
        url,
        source,
    })?;
    probe.close().await.ok();
    Ok(sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(config.pool_size.max(1))
        .acquire_timeout(config.connect_timeout)
        .connect_lazy_with(options))
}

/// A store error from a driver error: everything but a broken row is "unavailable" (the
/// caller answers 503 and the pool reconnects behind it).
fn unavailable(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(Box::new(e))
        }
        e => StoreError::Unavailable(Box::new(e)),
    }
}

/// Runs `work`, which holds a transaction open while it runs, to its end on a task of its
/// own: a caller that goes away (a dropped request, a timeout) stops waiting for it without
/// stopping it half-way. sqlx cannot end a transaction whose `BEGIN` was cut short (it
/// counts the transaction only once the server has answered), so it hands the connection
/// back to the pool inside it; the next autocommit statement on that connection is then
/// acknowledged but not committed, and its locks are held, until some later statement ends
/// that transaction. The conformance case `cancelled-acquisition` caught it on PostgreSQL.
async fn to_the_end<T: Send + 'static>(
    work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::spawn(work)
        .await
        .map_err(|e| StoreError::Unavailable(Box::new(e)))?
}

/// True when `e` is a primary-key violation: a record of the batch is already stored.
fn is_duplicate(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(feature = "mysql")]
use crate::convert::{appended, streams_of, wanted_epochs};
use crate::convert::{to_i64, to_u64};

/// The schema versions a database at version `found` (`None`: no version yet) still needs to
/// reach `latest`, in order; an error when it is newer than this build.
fn missing_versions(
    found: Option<i32>,
    latest: i32,
    backend: &'static str,
) -> Result<std::ops::RangeInclusive<i32>, OpenError> {
    let found = found.unwrap_or(0);
    if found > latest {
        return Err(OpenError::NewerSchema {
            backend,
            found,
            latest,
        });
    }
    Ok(found + 1..=latest)
}

/// The epoch a row of `ipubsub_epochs` holds.
fn to_epoch(epoch: i64) -> Result<Epoch, StoreError> {
    Epoch::new(to_u64(epoch)?).ok_or_else(|| StoreError::Corrupt("epoch out of range".into()))
}

/// The tenure an acquisition of `stream` takes, from the epoch its `ipubsub_epochs` row held
/// (`current`) and its highest stored position (`last`, `None` for none), both read under
/// the row's exclusive lock.
fn next_tenure(
    stream: &StreamId,
    current: i64,
    last: Option<i64>,
) -> Result<ipubsub_core::Tenure, StoreError> {
    let current = to_epoch(current)?;
    let last = Seq::new(last.map(to_u64).transpose()?.unwrap_or(0));
    let epoch = Epoch::after(current, last).ok_or_else(|| StoreError::EpochsExhausted {
        stream: stream.clone(),
    })?;
    Ok(ipubsub_core::Tenure { epoch, last })
}

/// The columns both backends select, in order: `seq, message_id, accepted_at, expires_at,
/// payload`.
type RowTuple = (i64, Vec<u8>, i64, i64, Vec<u8>);

/// One stored row, as both backends read it.
struct Row {
    seq: i64,
    message_id: Vec<u8>,
    accepted_at: i64,
    expires_at: i64,
    payload: Vec<u8>,
}

impl From<RowTuple> for Row {
    fn from((seq, message_id, accepted_at, expires_at, payload): RowTuple) -> Self {
        Self {
            seq,
            message_id,
            accepted_at,
            expires_at,
            payload,
        }
    }
}

impl Row {
    fn into_record(self, stream: &StreamId) -> Result<LogRecord, StoreError> {
        let id =
            String::from_utf8(self.message_id).map_err(|e| StoreError::Corrupt(Box::new(e)))?;
        let id = MessageId::new(id).map_err(|e| StoreError::Corrupt(Box::new(e)))?;
        Ok(LogRecord {
            stream: stream.clone(),
            seq: Seq::new(to_u64(self.seq)?),
            message: Message::new(
                id,
                bytes::Bytes::from(self.payload),
                Timestamp::from_micros(to_u64(self.accepted_at)?),
            ),
            expires_at: Timestamp::from_micros(to_u64(self.expires_at)?),
        })
    }

    /// True when this row holds exactly `record` (a retried append finding its own write).
    fn holds(&self, record: &LogRecord) -> bool {
        self.message_id == record.message.id().as_str().as_bytes()
            && self.payload == record.message.payload().as_ref()
            && to_u64(self.accepted_at).ok() == Some(record.message.timestamp().as_micros())
            && to_u64(self.expires_at).ok() == Some(record.expires_at.as_micros())
    }
}

#[cfg(test)]
mod tests {
    use crate::redacted_url as redacted;

    #[test]
    fn urls_lose_their_password_only() {
        assert_eq!(
            redacted("postgres://ipubsub:s3cr:et@db.local:5432/ipubsub"),
            "postgres://ipubsub:***@db.local:5432/ipubsub"
        );
        assert_eq!(
            redacted("mysql://root@127.0.0.1/x"),
            "mysql://root@127.0.0.1/x"
        );
        assert_eq!(redacted("not a url"), "not a url");
    }
}
