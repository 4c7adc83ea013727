//! The persistent log's storage contract: [`MessageStore`] and the types it speaks.
//!
//! The owner node of a stream assigns each persisted message the next [`Seq`] of its stream
//! and hands batches of [`LogRecord`]s to a store. Stores keep them, return them in order,
//! hide expired ones and purge them. Every implementation in `ipubsub-storage` (and any a user
//! writes) is held to the contract below by that crate's conformance suite.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::id::StreamId;
use crate::message::Message;
use crate::time::Timestamp;

/// A position in one stream's log. The first message of a stream has sequence 1; `Seq::ZERO`
/// is the position before it, where a reader without a resume token starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(u64);

impl Seq {
    /// The position before the first message.
    pub const ZERO: Self = Self(0);

    /// The position `n`.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// The position as a number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The position after this one.
    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// When a message accepted at `accepted_at` with a time-to-live of `ttl` expires. Every store
/// uses this one rule, so that all backends agree to the microsecond.
pub fn expiry(accepted_at: Timestamp, ttl: Duration) -> Timestamp {
    accepted_at.saturating_add(ttl)
}

/// One message of a stream's log, as written and as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The stream whose log holds it.
    pub stream: StreamId,
    /// Its position in that log.
    pub seq: Seq,
    /// The message; its timestamp is the time it was accepted.
    pub message: Message,
    /// The first instant at which it is no longer returned.
    pub expires_at: Timestamp,
}

impl LogRecord {
    /// True from `expires_at` on.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or did not answer; the operation may be retried.
    #[error("the message store is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An append found a different message already at one of its positions. The batch was
    /// not written (see [`MessageStore::append`]).
    #[error("position {seq} of stream {stream} already holds a different message")]
    Conflict {
        /// The stream.
        stream: StreamId,
        /// The position.
        seq: Seq,
    },
    /// The store returned data it could not decode.
    #[error("the message store returned corrupt data")]
    Corrupt(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where persistent messages live. Implementations must be safe to share between tasks.
///
/// The contract, which the conformance suite in `ipubsub-storage` checks:
/// - **Ordering.** Records of a stream are returned in increasing `seq`; `seq` is assigned
///   by the caller (the stream's owner), never by the store.
/// - **Atomicity.** An `append` is all or nothing: when it returns `Ok`, every record of the
///   batch is durable; when it returns `Err`, a reader may see none or all of them, never a
///   part, once the store is reachable again. A store without multi-partition transactions
///   (Cassandra, a standalone MongoDB) may instead leave part of a failed batch visible,
///   whole streams at a time where it can; it must say so. The log treats every failed append
///   as ambiguous (its senders get an error, its positions are never reused), so a partial
///   batch looks to readers like messages whose senders timed out.
/// - **Retries.** Appending a record at a `(stream, seq)` that already holds the *same*
///   message (same id, payload, timestamp and expiry) succeeds without writing a second copy,
///   so a batch retried after an ambiguous error never duplicates a position. A *different*
///   message there is [`StoreError::Conflict`].
/// - **Expiry.** A record is never returned at or after its `expires_at`, whatever the state
///   of purging; `purge_expired` removes expired records for good. A store may index expiry
///   coarsely and purge a record up to one second after its `expires_at`.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Writes a batch of records, possibly of several streams, atomically and durably.
    async fn append(&self, batch: &[LogRecord]) -> Result<(), StoreError>;

    /// Up to `limit` unexpired records of `stream` with `seq > after`, in order. An `after`
    /// before the oldest retained record starts at the oldest unexpired one.
    async fn read_after(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<LogRecord>, StoreError>;

    /// The highest `seq` of `stream` still stored (expired or not), or [`Seq::ZERO`] for a
    /// stream with no records. The owner continues above it (and above the current time in
    /// microseconds, so positions keep growing even after a purge emptied the stream).
    async fn last_seq(&self, stream: &StreamId) -> Result<Seq, StoreError>;

    /// Deletes up to `limit` records expired at `now` and returns how many it deleted;
    /// fewer than `limit` means none are left (but those a coarse expiry index holds back for
    /// at most a second, see the contract above). Callers loop in bounded batches.
    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError>;
}

#[async_trait]
impl<T: MessageStore + ?Sized> MessageStore for std::sync::Arc<T> {
    async fn append(&self, batch: &[LogRecord]) -> Result<(), StoreError> {
        (**self).append(batch).await
    }

    async fn read_after(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<LogRecord>, StoreError> {
        (**self).read_after(stream, after, limit, now).await
    }

    async fn last_seq(&self, stream: &StreamId) -> Result<Seq, StoreError> {
        (**self).last_seq(stream).await
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        (**self).purge_expired(now, limit).await
    }
}
