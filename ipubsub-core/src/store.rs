//! The persistent log's storage contract: [`MessageStore`] and the types it speaks.
//!
//! A node that writes a stream first *acquires* it ([`MessageStore::acquire`]): the store
//! moves the stream to a new write [`Epoch`], which refuses every later append of an older
//! epoch (a fencing token, checked by the store in the same atomic step as the write), and
//! reports the last position written before the move. The node then assigns positions
//! `(epoch, 1)`, `(epoch, 2)`, … ([`Seq::at`]) and hands batches of [`LogRecord`]s to the
//! store. Positions of a newer epoch are above every position of an older one, so a new
//! owner's positions order after everything its predecessors could ever have committed, and
//! no clock takes part. Every implementation in `ipubsub-storage` (and any a user writes) is
//! held to the contract below by that crate's conformance suite.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::id::{MessageId, StreamId};
use crate::message::Message;
use crate::time::Timestamp;

/// A stream's write epoch: the fencing token of one acquisition of the stream by one node.
/// Epochs only grow; the store refuses appends whose epoch is not the stream's current one.
/// An epoch fits in the top [`Epoch::BITS`] bits of a [`Seq`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(u32);

impl Epoch {
    /// How many bits of a position hold its epoch.
    pub const BITS: u32 = 64 - Seq::COUNTER_BITS;
    /// The highest epoch a position can hold.
    pub const MAX: Self = Self((1 << Self::BITS) - 1);
    /// The epoch of a stream nobody acquired yet.
    pub const ZERO: Self = Self(0);

    /// The epoch `n`, if a position can hold it.
    pub const fn new(n: u64) -> Option<Self> {
        if n <= Self::MAX.0 as u64 {
            Some(Self(n as u32))
        } else {
            None
        }
    }

    /// The epoch as a number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The epoch an acquisition moves a stream to: one above both the epoch the store holds
    /// for it (`current`, [`Epoch::ZERO`] if none) and the epoch of its last stored position
    /// (which covers logs written before epochs were kept). `None` when the epochs are used
    /// up, after 16.7 million acquisitions of one stream. Every store uses this one rule.
    pub fn after(current: Self, last: Seq) -> Option<Self> {
        Self::new(u64::from(current.0.max(last.epoch().0)) + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A position in one stream's log: an [`Epoch`] in the top bits and a counter within the
/// epoch below. `Seq::ZERO` is the position before everything, where a reader without a
/// resume token starts; the first message of an epoch is at counter 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(u64);

impl Seq {
    /// The position before the first message.
    pub const ZERO: Self = Self(0);
    /// How many bits of a position count within its epoch (a trillion messages per epoch).
    pub const COUNTER_BITS: u32 = 40;
    const COUNTER_MASK: u64 = (1 << Self::COUNTER_BITS) - 1;

    /// The position `n`, as stored.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// The position `counter` of `epoch`, if the counter fits in [`Seq::COUNTER_BITS`].
    pub const fn at(epoch: Epoch, counter: u64) -> Option<Self> {
        if counter <= Self::COUNTER_MASK {
            Some(Self(((epoch.0 as u64) << Self::COUNTER_BITS) | counter))
        } else {
            None
        }
    }

    /// The position as a number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The epoch that assigned this position.
    pub const fn epoch(self) -> Epoch {
        Epoch((self.0 >> Self::COUNTER_BITS) as u32)
    }

    /// The position's counter within its epoch.
    pub const fn counter(self) -> u64 {
        self.0 & Self::COUNTER_MASK
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

/// What an acquisition of a stream gives its new writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenure {
    /// The epoch the stream was moved to; the writer's positions are `Seq::at(epoch, 1..)`.
    pub epoch: Epoch,
    /// The highest position stored for the stream when the move took effect. Every append
    /// of an older epoch that the store will ever accept is at or below it.
    pub last: Seq,
}

/// What an append wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Appended {
    /// The streams of the batch whose records were refused because the stream has moved to
    /// another epoch since they were assigned: nothing of these streams was written. Every
    /// record of the other streams is durable.
    pub fenced: Vec<StreamId>,
}

impl Appended {
    /// Every record of the batch was written.
    pub fn all() -> Self {
        Self::default()
    }

    /// The records of `fenced` were refused, every other record was written.
    pub fn fenced(fenced: Vec<StreamId>) -> Self {
        Self { fenced }
    }

    /// True if the records of `stream` were refused.
    pub fn is_fenced(&self, stream: &StreamId) -> bool {
        self.fenced.contains(stream)
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

/// A findable record as [`MessageStore::list_findable`] lists it: what deduplication needs
/// of it, without its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundId {
    /// Its message id.
    pub id: MessageId,
    /// Its position.
    pub seq: Seq,
    /// When it was accepted (its [`Message::timestamp`]).
    pub accepted: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
}

impl From<&LogRecord> for FoundId {
    fn from(record: &LogRecord) -> Self {
        Self {
            id: record.message.id().clone(),
            seq: record.seq,
            accepted: record.message.timestamp(),
            expires_at: record.expires_at,
        }
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
    /// A stream was acquired [`Epoch::MAX`] times; it cannot be acquired again.
    #[error("stream {stream} has used up its write epochs")]
    EpochsExhausted {
        /// The stream.
        stream: StreamId,
    },
}

/// Where persistent messages live. Implementations must be safe to share between tasks.
///
/// The contract, which the conformance suite in `ipubsub-storage` checks:
/// - **Fencing.** [`acquire`](Self::acquire) moves a stream to a new epoch. From the moment
///   it returns, the store refuses every append of that stream whose records carry another
///   epoch, and the position it reports is at or above every record of an older epoch that
///   will ever be stored: an append of the old epoch that raced the acquisition either took
///   effect before it (and is counted in [`Tenure::last`]) or is refused. This must hold
///   between processes on different machines with no clock in common, so the check belongs
///   in the same atomic step as the write (a row lock, a conditional write, a lightweight
///   transaction). A record's epoch is [`Seq::epoch`] of its position.
/// - **Ordering.** Records of a stream are returned in increasing `seq`; `seq` is assigned
///   by the caller (the stream's writer), never by the store.
/// - **Atomicity.** An `append` is all or nothing per stream: when it returns `Ok`, every
///   record of the streams not listed in [`Appended::fenced`] is durable, and nothing of the
///   listed ones was written; when it returns `Err`, a reader may see none or all of a
///   stream's records of the batch, never a part, once the store is reachable again. A store
///   without multi-partition transactions may instead leave part of a failed batch visible;
///   it must say so. The log treats every failed append as ambiguous (its senders get an
///   error, and the stream is acquired again before its next use, which settles whether the
///   failed write landed), so a partial batch looks to readers like messages whose senders
///   timed out.
/// - **Retries.** Appending a record at a `(stream, seq)` that already holds the *same*
///   message (same id, payload, timestamp and expiry) succeeds without writing a second copy,
///   so a batch retried after an ambiguous error never duplicates a position. A *different*
///   message there is [`StoreError::Conflict`].
/// - **Expiry.** A record is never returned at or after its `expires_at`, whatever the state
///   of purging; `purge_expired` removes expired records for good. A store may index expiry
///   coarsely and purge a record up to one second after its `expires_at`. A stream's epoch
///   outlives its records: purging never lowers the epoch an acquisition starts from.
/// - **Finding a message id.** [`find_message`](Self::find_message) finds every record
///   appended *findable* ([`append_findable`](Self::append_findable)) that a read would
///   return (unexpired, and on a store that fences after writing, not fenced off), written
///   before the call by any process; it may find other records too. The log marks the
///   records of idempotent sends, and asks only in the window after it acquires a stream
///   (for each such send whose id this node did not append itself since), so it should be
///   an index lookup, not a scan; a store may index the marked records only, so that other
///   appends pay nothing for it. A store may instead *list* them
///   ([`list_findable`](Self::list_findable)): the log then asks once per acquisition and
///   window, and remembers the answer, so that a store with no index pays nothing per append
///   and one scan per stream.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Moves `stream` to the next epoch ([`Epoch::after`] the stored one and the epoch of
    /// the last stored position), fencing off every writer of an older epoch, and returns
    /// the new epoch with the last position stored when the move took effect.
    async fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError>;

    /// Writes a batch of records, possibly of several streams, durably and atomically per
    /// stream. The records of a stream whose current epoch is not theirs are refused and
    /// listed in [`Appended::fenced`]; the rest is written.
    async fn append(&self, batch: &[LogRecord]) -> Result<Appended, StoreError>;

    /// Appends `batch` as [`append`](Self::append) does, and makes the records whose flag in
    /// `findable` (one per record, in order) is set findable by
    /// [`find_message`](Self::find_message): their senders asked for deduplication. The log
    /// calls it instead of `append` for a batch that holds any such record.
    ///
    /// The default appends with `append`: right for a store whose `find_message` finds every
    /// record (the default walk, or an index of every record).
    async fn append_findable(
        &self,
        batch: &[LogRecord],
        findable: &[bool],
    ) -> Result<Appended, StoreError> {
        let _ = findable;
        self.append(batch).await
    }

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
    /// stream with no records. A read with no side effect (the readiness probe uses it);
    /// writers learn their starting point from [`acquire`](Self::acquire) instead.
    async fn last_seq(&self, stream: &StreamId) -> Result<Seq, StoreError>;

    /// The highest position of `stream` whose record holds a message with id `id`, accepted
    /// at or after `since` (its [`Message::timestamp`]) and unexpired at `now`; `None` when no
    /// record does. See the contract above.
    ///
    /// The default walks the stream with [`read_after`](Self::read_after): correct, and
    /// linear in the stream's length. Every store in `ipubsub-storage` answers it from an
    /// index; a store of your own should too.
    async fn find_message(
        &self,
        stream: &StreamId,
        id: &MessageId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Seq>, StoreError> {
        const PAGE: usize = 1024;
        let (mut after, mut found) = (Seq::ZERO, None);
        loop {
            let page = self.read_after(stream, after, PAGE, now).await?;
            for record in &page {
                if record.message.id() == id && record.message.timestamp() >= since {
                    found = Some(record.seq);
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = last.seq,
                _ => return Ok(found),
            }
        }
    }

    /// Every record of `stream` that [`find_message`](Self::find_message) with `since` and
    /// `now` would find for its id (it may list other records too, as `find_message` may
    /// find them), in increasing `seq`; `None` when there are more than `limit`, or when the
    /// store does not list.
    ///
    /// The log asks it when a deduplicating send's window first reaches back before the
    /// stream's acquisition, and answers that window's later sends from what it lists
    /// instead of asking `find_message` for each. The default, `None`, leaves every such send
    /// to `find_message`: right for a store that answers it from an index. A store that
    /// would have to scan for each id should list instead (the embedded store does).
    async fn list_findable(
        &self,
        stream: &StreamId,
        since: Timestamp,
        now: Timestamp,
        limit: usize,
    ) -> Result<Option<Vec<FoundId>>, StoreError> {
        let _ = (stream, since, now, limit);
        Ok(None)
    }

    /// Deletes up to `limit` records expired at `now` and returns how many it deleted;
    /// fewer than `limit` means none are left (but those a coarse expiry index holds back for
    /// at most a second, see the contract above). Callers loop in bounded batches.
    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError>;

    /// The store's own clock, for the nodes that share it to agree on the time that TTLs
    /// are stamped and judged by (see [`OffsetClock`](crate::OffsetClock)); `None` (the
    /// default) for a store one process opens, whose node's clock is the only one involved.
    /// A shared store answers its server's current time.
    async fn server_time(&self) -> Result<Option<Timestamp>, StoreError> {
        Ok(None)
    }
}

#[async_trait]
impl<T: MessageStore + ?Sized> MessageStore for std::sync::Arc<T> {
    async fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
        (**self).acquire(stream).await
    }

    async fn append(&self, batch: &[LogRecord]) -> Result<Appended, StoreError> {
        (**self).append(batch).await
    }

    async fn append_findable(
        &self,
        batch: &[LogRecord],
        findable: &[bool],
    ) -> Result<Appended, StoreError> {
        (**self).append_findable(batch, findable).await
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

    async fn find_message(
        &self,
        stream: &StreamId,
        id: &MessageId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Seq>, StoreError> {
        (**self).find_message(stream, id, since, now).await
    }

    async fn list_findable(
        &self,
        stream: &StreamId,
        since: Timestamp,
        now: Timestamp,
        limit: usize,
    ) -> Result<Option<Vec<FoundId>>, StoreError> {
        (**self).list_findable(stream, since, now, limit).await
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        (**self).purge_expired(now, limit).await
    }

    async fn server_time(&self) -> Result<Option<Timestamp>, StoreError> {
        (**self).server_time().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_epoch_orders_above_every_position_of_an_earlier_one() {
        let (one, two) = (Epoch(1), Epoch(2));
        let last_of_one = Seq::at(one, (1 << Seq::COUNTER_BITS) - 1).expect("fits");
        let first_of_two = Seq::at(two, 1).expect("fits");
        assert!(first_of_two > last_of_one);
        assert_eq!(first_of_two.epoch(), two);
        assert_eq!(first_of_two.counter(), 1);
        assert_eq!(Seq::at(one, 1 << Seq::COUNTER_BITS), None);
    }

    #[test]
    fn an_acquisition_moves_above_the_stored_epoch_and_the_last_position() {
        assert_eq!(Epoch::after(Epoch::ZERO, Seq::ZERO), Some(Epoch(1)));
        assert_eq!(
            Epoch::after(Epoch(7), Seq::at(Epoch(3), 9).expect("fits")),
            Some(Epoch(8))
        );
        // A log written before epochs were kept: its positions were clock microseconds.
        let legacy = Seq::new(1_764_614_400_000_000);
        let next = Epoch::after(Epoch::ZERO, legacy).expect("room");
        assert!(Seq::at(next, 1).expect("fits") > legacy);
        assert_eq!(Epoch::after(Epoch::MAX, Seq::ZERO), None);
        assert_eq!(Epoch::new(u64::from(Epoch::MAX.get()) + 1), None);
    }
}
