//! The [`Engine`]: a sharded registry of in-memory streams and the matching of senders with
//! receivers.

mod acking;
mod buffer;
mod dedupe;
mod handoff;
mod lease;
mod receive;
mod send;
mod slot;
mod stream;

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use crate::id_cap::IdCap;
pub use acking::Expired;
pub use handoff::Drained;
use lease::{Change, Ctx, Deadlines, LeaseIds};
pub use lease::{
    DeadLetter, HandleError, InFlight, LeaseError, LeaseId, Leased, ReceiptHandle, Redrive,
};
pub use receive::{LeasedReceiveFuture, ReceiveFuture};
pub use send::{SendFuture, SendOptions, SendOutcome};
use stream::Stream;

use crate::error::SendError;
use crate::id::StreamId;
use crate::message::Message;
use crate::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::sync::{Arc, Mutex};
use crate::time::{Clock, SystemClock, Timestamp};

/// Limits and tuning of an [`Engine`]. `Default` gives the production defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Number of registry shards, each with its own lock. Rounded up to a power of two.
    pub shards: usize,
    /// Most streams this engine holds at once; creating one more fails.
    pub max_streams: usize,
    /// Most receives and blocking sends waiting at once.
    pub max_waiters: usize,
    /// The memory budget of the messages the engine holds: buffered ones and those of
    /// waiting senders, each counted as its payload, its id and its record
    /// (`size_of::<Message>()`). A send that would pass it is refused with
    /// [`SendError::MemoryLimit`], and so is a hand-off
    /// ([`Engine::adopt`]); nothing already accepted is dropped for it, and messages put back
    /// ([`Engine::restore`], a receive given up after it was handed one) count but are never
    /// refused. Checked without a lock across streams: concurrent sends may pass it by up to
    /// one message each.
    pub max_buffered_bytes: usize,
    /// How long an empty stream nobody waits on survives before [`Engine::sweep_idle`] drops it
    /// (idle time is kept in whole seconds: up to a second more, never less).
    pub stream_idle_timeout: Duration,
    /// Most message ids the streams' dedupe windows remember at once
    /// ([`Engine::set_dedupe_window`]); past it an accepted message is not remembered (and
    /// counted in [`EngineStats::dedupe_unremembered`]), so a retry of it may add a copy.
    pub max_dedupe_entries: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            shards: 256,
            max_streams: 10_000_000,
            max_waiters: 200_000,
            max_buffered_bytes: 1 << 30,
            stream_idle_timeout: Duration::from_secs(60),
            max_dedupe_entries: 1_000_000,
        }
    }
}

/// Counts an [`Engine`] keeps as it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct EngineStats {
    /// Streams held.
    pub streams: usize,
    /// Receives and blocking sends waiting.
    pub waiters: usize,
    /// Messages buffered in all streams, as counted by the last [`Engine::sweep_idle`] (which
    /// visits every stream anyway).
    pub buffered_at_last_sweep: usize,
    /// What the held messages count against
    /// [`EngineConfig::max_buffered_bytes`], now.
    pub buffered_bytes: usize,
    /// Sends and hand-offs refused for the memory budget.
    pub memory_refusals: u64,
    /// Messages delivered under a lease and not yet acknowledged, now.
    pub in_flight: usize,
    /// Deliveries acknowledged.
    pub acked: u64,
    /// Deliveries returned by their receivers ([`Engine::nack`]).
    pub nacked: u64,
    /// Leases extended.
    pub extended: u64,
    /// Acknowledgements, returns and extensions refused: the handle named another stream
    /// or a delivery no longer in flight.
    pub lease_refusals: u64,
    /// Messages whose lease ended unacknowledged and went back to their stream.
    pub redelivered: u64,
    /// Messages taken off their stream after `maxDeliveries`, for a dead-letter stream.
    pub dead_lettered: u64,
    /// Messages dropped after `maxDeliveries`: their stream has no dead-letter stream.
    pub dropped_after_max_deliveries: u64,
    /// Message ids the dedupe windows remember, now.
    pub dedupe_entries: usize,
    /// Accepted messages not remembered for [`EngineConfig::max_dedupe_entries`].
    pub dedupe_unremembered: u64,
    /// Sends answered as duplicates of a message accepted within the window.
    pub duplicates: u64,
}

/// The in-memory streaming engine: streams created on first use, three delivery modes, FIFO
/// matching of waiting receivers and senders.
///
/// Cheap to clone: clones share one registry. All waiting happens in the futures returned by
/// [`Engine::receive`] and [`Engine::send`]; the engine itself never sleeps, so the caller
/// applies timeouts (and calls `abandon` on the future when one fires).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Shard]>,
    hasher: RandomState,
    clock: std::sync::Arc<dyn Clock>,
    config: EngineConfig,
    streams: AtomicUsize,
    waiters: AtomicUsize,
    /// [`EngineStats::buffered_at_last_sweep`].
    buffered: AtomicUsize,
    /// [`EngineStats::buffered_bytes`]: the sum of every stream's [`Stream::bytes`], kept
    /// by [`Inner::account`] around each change.
    bytes: AtomicUsize,
    /// [`EngineStats::memory_refusals`].
    memory_refusals: AtomicU64,
    /// Set once by [`Engine::close`], before it visits the shards. Every registration checks it
    /// under its shard lock, so no waiter can slip in behind the close.
    closed: AtomicBool,
    lease_ids: LeaseIds,
    dedupe: IdCap,
    /// [`EngineStats::in_flight`].
    in_flight: AtomicUsize,
    counts: LeaseCounts,
}

/// The lease counters of [`EngineStats`].
#[derive(Default)]
struct LeaseCounts {
    acked: AtomicU64,
    nacked: AtomicU64,
    extended: AtomicU64,
    refusals: AtomicU64,
    redelivered: AtomicU64,
    dead_lettered: AtomicU64,
    dropped: AtomicU64,
}

/// One lock and its part of the registry, padded to its own cache lines so that shards that
/// are hit from different cores do not share a line. The deadlines of its streams' leases
/// have a lock of their own, taken inside the table's and only by streams that lease.
#[repr(align(128))]
struct Shard {
    table: Mutex<HashTable<Box<Stream>>>,
    deadlines: Mutex<Deadlines>,
}

/// A reservation of one waiting place, given back on drop.
struct WaitPermit(Arc<Inner>);

impl Drop for WaitPermit {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A limit that stopped a stream from being created or a request from waiting.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    TooManyStreams(usize),
    TooManyWaiters(usize),
    ShuttingDown,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Default for Engine {
    fn default() -> Self {
        Self::new(EngineConfig::default())
    }
}

impl Engine {
    /// An engine on the system clock.
    pub fn new(config: EngineConfig) -> Self {
        Self::with_clock(config, std::sync::Arc::new(SystemClock))
    }

    /// An engine reading time from `clock`.
    pub fn with_clock(config: EngineConfig, clock: std::sync::Arc<dyn Clock>) -> Self {
        let shards = config.shards.max(1).next_power_of_two();
        let max_dedupe_entries = config.max_dedupe_entries;
        let shards = (0..shards)
            .map(|_| Shard {
                table: Mutex::new(HashTable::new()),
                deadlines: Mutex::new(Deadlines::new()),
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                shards,
                hasher: RandomState::new(),
                clock,
                config,
                streams: AtomicUsize::new(0),
                waiters: AtomicUsize::new(0),
                buffered: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
                memory_refusals: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                lease_ids: LeaseIds::new(),
                dedupe: IdCap::new(max_dedupe_entries),
                in_flight: AtomicUsize::new(0),
                counts: LeaseCounts::default(),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The current time on the engine's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Counts of streams and waiters.
    pub fn stats(&self) -> EngineStats {
        let counts = &self.inner.counts;
        EngineStats {
            streams: self.inner.streams.load(Ordering::Relaxed),
            waiters: self.inner.waiters.load(Ordering::Relaxed),
            buffered_at_last_sweep: self.inner.buffered.load(Ordering::Relaxed),
            buffered_bytes: self.inner.bytes.load(Ordering::Relaxed),
            memory_refusals: self.inner.memory_refusals.load(Ordering::Relaxed),
            in_flight: self.inner.in_flight.load(Ordering::Relaxed),
            acked: counts.acked.load(Ordering::Relaxed),
            nacked: counts.nacked.load(Ordering::Relaxed),
            extended: counts.extended.load(Ordering::Relaxed),
            lease_refusals: counts.refusals.load(Ordering::Relaxed),
            redelivered: counts.redelivered.load(Ordering::Relaxed),
            dead_lettered: counts.dead_lettered.load(Ordering::Relaxed),
            dropped_after_max_deliveries: counts.dropped.load(Ordering::Relaxed),
            dedupe_entries: self.inner.dedupe.entries(),
            dedupe_unremembered: self.inner.dedupe.unremembered(),
            duplicates: self.inner.dedupe.duplicates(),
        }
    }

    /// Messages buffered in `stream`, or `None` if the engine holds no such stream.
    pub fn buffered(&self, stream: &StreamId) -> Option<usize> {
        let (hash, shard) = self.inner.locate(stream);
        let table = shard.table.lock();
        table.find(hash, |s| s.id() == stream).map(|s| s.len())
    }

    /// Sends `message` to `stream`, creating the stream if needed. See [`SendFuture`] for how
    /// the send completes and how to give it up.
    pub fn send(&self, stream: StreamId, message: Message, options: SendOptions) -> SendFuture {
        SendFuture::new(self.clone(), stream, message, options)
    }

    /// Receives the next message of `stream`, waiting for one if it is empty. See
    /// [`ReceiveFuture`] for giving up.
    pub fn receive(&self, stream: StreamId) -> ReceiveFuture {
        ReceiveFuture::new(self.clone(), stream)
    }

    /// Takes the next message of `stream` if there is one, without waiting (a receive with a
    /// zero timeout). Creates no stream.
    pub fn try_receive(&self, stream: &StreamId) -> Option<Message> {
        let now = self.now();
        let (hash, shard) = self.inner.locate(stream);
        let mut table = shard.table.lock();
        let entry = Inner::find_mut(&mut table, hash, stream)?;
        entry.touch(now);
        let ctx = self.inner.ctx();
        self.inner
            .metered(shard, entry, |s| s.take(None, &ctx))
            .map(|handed| handed.message)
    }

    /// Takes up to `max` messages of `stream` that are there now, oldest first, without
    /// waiting (after a receive returned the first, to fill a batch). Creates no stream.
    pub fn try_receive_many(&self, stream: &StreamId, max: usize) -> Vec<Message> {
        let now = self.now();
        let (hash, shard) = self.inner.locate(stream);
        let mut table = shard.table.lock();
        let Some(entry) = Inner::find_mut(&mut table, hash, stream) else {
            return Vec::new();
        };
        entry.touch(now);
        let ctx = self.inner.ctx();
        self.inner.metered(shard, entry, |entry| {
            std::iter::from_fn(|| entry.take(None, &ctx))
                .take(max)
                .map(|handed| handed.message)
                .collect()
        })
    }

    /// Drops every stream that is empty, has no waiters and has been idle for the configured
    /// `stream_idle_timeout` (up to a second more), and counts the messages buffered in the
    /// others ([`EngineStats::buffered_at_last_sweep`]). Returns how many were dropped. Call it
    /// periodically; it locks one shard at a time.
    pub fn sweep_idle(&self) -> usize {
        let now = self.now();
        let idle =
            u64::try_from(self.inner.config.stream_idle_timeout.as_micros()).unwrap_or(u64::MAX);
        let mut dropped = 0;
        let mut buffered = 0;
        for shard in self.inner.shards.iter() {
            let mut table = shard.table.lock();
            let before = table.len();
            table.retain(|stream| {
                buffered += stream.len();
                !self
                    .inner
                    .metered(shard, stream, |s| s.is_idle(now, idle, &self.inner.dedupe))
            });
            let gone = before - table.len();
            if gone > 0 {
                self.inner.streams.fetch_sub(gone, Ordering::Relaxed);
            }
            // A table that lost most of its entries keeps its memory; give it back.
            if table.capacity() > 64 && table.len() * 4 < table.capacity() {
                table.shrink_to_fit(|s| self.inner.hasher.hash_one(s.id()));
            }
            dropped += gone;
        }
        self.inner.buffered.store(buffered, Ordering::Relaxed);
        dropped
    }

    /// Shuts the engine down: every waiting receive completes with
    /// [`ReceiveError::ShuttingDown`](crate::ReceiveError::ShuttingDown), every waiting send with
    /// [`SendError::ShuttingDown`] (its message not accepted),
    /// and new sends and receives are refused. Buffered messages stay readable by
    /// [`Engine::try_receive`] and [`Engine::drain`].
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        for shard in self.inner.shards.iter() {
            for stream in shard.table.lock().iter_mut() {
                self.inner.metered(shard, stream, Stream::close_waiters);
            }
        }
    }

    /// True once [`Engine::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// Fixes `stream`'s dedupe window, unless one is fixed already: like the stream's size, the
    /// first stays for as long as the stream. A send to a stream with a window whose message's
    /// id was accepted within the window before adds no copy and answers
    /// [`SendOutcome::Duplicate`]. Creates the stream (within the limit) if needed.
    pub fn set_dedupe_window(&self, stream: &StreamId, window: Duration) -> Result<(), SendError> {
        if window.is_zero() {
            return Ok(());
        }
        self.with_stream(stream, |s, _| s.set_dedupe_window(window))
            .map_err(SendError::from)
    }

    /// Runs `f` on `stream` under its shard lock, creating the stream within the limits.
    /// This is the entry of all new work, so it is refused once the engine is closed.
    fn with_stream<R>(
        &self,
        id: &StreamId,
        f: impl FnOnce(&mut Stream, &Arc<Inner>) -> R,
    ) -> Result<R, Refusal> {
        self.with_stream_as(id, Create::WithinLimit, f)
    }

    /// [`with_stream`](Self::with_stream), creating a missing stream as `create` allows.
    fn with_stream_as<R>(
        &self,
        id: &StreamId,
        create: Create,
        f: impl FnOnce(&mut Stream, &Arc<Inner>) -> R,
    ) -> Result<R, Refusal> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let (hash, shard) = inner.locate(id);
        let mut table = shard.table.lock();
        // Checked under the shard lock: this is what makes [`Engine::close`] race-free.
        if inner.closed.load(Ordering::SeqCst) {
            return Err(Refusal::ShuttingDown);
        }
        let stream = inner.stream_mut(&mut table, hash, id, now, create)?;
        Ok(inner.metered(shard, stream, |stream| f(stream, inner)))
    }
}

/// How [`Inner::stream_mut`] may create the stream it looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    /// New work: within the stream limit.
    WithinLimit,
    /// Putting back an acknowledged message: whatever the limits.
    Always,
}

impl Inner {
    /// The stream's hash and its shard. Keyed hashing: stream ids are chosen by clients, who
    /// must not be able to pile streams onto one shard or one bucket. The top bits pick the
    /// shard, the table inside it uses the whole hash.
    fn locate(&self, id: &StreamId) -> (u64, &Shard) {
        let hash = self.hasher.hash_one(id);
        let index = (hash >> 40) as usize & (self.shards.len() - 1);
        (hash, &self.shards[index])
    }

    /// The stream in `table` (the shard of `hash`), touched at `now`, created if missing.
    fn stream_mut<'t>(
        &self,
        table: &'t mut HashTable<Box<Stream>>,
        hash: u64,
        id: &StreamId,
        now: Timestamp,
        create: Create,
    ) -> Result<&'t mut Stream, Refusal> {
        let entry = table.entry(hash, |s| s.id() == id, |s| self.hasher.hash_one(s.id()));
        let stream = match entry {
            Entry::Occupied(occupied) => occupied.into_mut(),
            Entry::Vacant(vacant) => {
                if create == Create::WithinLimit {
                    let max = self.config.max_streams;
                    if self.streams.fetch_add(1, Ordering::Relaxed) >= max {
                        self.streams.fetch_sub(1, Ordering::Relaxed);
                        return Err(Refusal::TooManyStreams(max));
                    }
                } else {
                    self.streams.fetch_add(1, Ordering::Relaxed);
                }
                vacant
                    .insert(Box::new(Stream::new(id.clone(), now)))
                    .into_mut()
            }
        };
        stream.touch(now);
        Ok(stream)
    }

    /// The stream if it exists, without touching it.
    fn find_mut<'t>(
        table: &'t mut HashTable<Box<Stream>>,
        hash: u64,
        id: &StreamId,
    ) -> Option<&'t mut Stream> {
        table.find_mut(hash, |s| s.id() == id).map(|s| &mut **s)
    }

    /// Runs `f` on `stream` (under the lock of `shard`, its shard) and accounts for what it
    /// changed: the bytes it added or removed, the deliveries it put in flight or ended, the
    /// lease deadlines it set.
    fn metered<R>(
        &self,
        shard: &Shard,
        stream: &mut Stream,
        f: impl FnOnce(&mut Stream) -> R,
    ) -> R {
        let (before, flying) = (stream.bytes(), stream.in_flight());
        let result = f(stream);
        self.account(before, stream.bytes());
        let now_flying = stream.in_flight();
        if now_flying != flying {
            if now_flying > flying {
                self.in_flight
                    .fetch_add(now_flying - flying, Ordering::Relaxed);
            } else {
                self.in_flight
                    .fetch_sub(flying - now_flying, Ordering::Relaxed);
            }
        }
        let mut deadlines = None;
        stream.drain_changes(|stream, change| {
            let (deadlines, hash) = deadlines
                .get_or_insert_with(|| (shard.deadlines.lock(), self.hasher.hash_one(stream)));
            match change {
                Change::Add(at, id) => {
                    deadlines.insert((at, id), *hash);
                }
                Change::Remove(at, id) => {
                    deadlines.remove(&(at, id));
                }
            }
        });
        result
    }

    /// What stream code needs to lease.
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            clock: &*self.clock,
            ids: &self.lease_ids,
            dedupe: &self.dedupe,
        }
    }

    /// Moves [`Inner::bytes`] by a stream's change from `before` to `after`.
    fn account(&self, before: usize, after: usize) {
        if after > before {
            self.bytes.fetch_add(after - before, Ordering::Relaxed);
        } else if before > after {
            self.bytes.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Whether taking in `adding` bytes while letting go of `freeing` stays within the
    /// memory budget; a refusal is counted.
    fn fits(&self, adding: usize, freeing: usize) -> bool {
        let held = self.bytes.load(Ordering::Relaxed).saturating_sub(freeing);
        let fits = held.saturating_add(adding) <= self.config.max_buffered_bytes;
        if !fits {
            self.memory_refusals.fetch_add(1, Ordering::Relaxed);
        }
        fits
    }

    /// The refusal of a message that does not fit the memory budget.
    fn over_budget(&self) -> SendError {
        SendError::MemoryLimit {
            max: self.config.max_buffered_bytes,
        }
    }

    /// Reserves a waiting place, or refuses at the limit.
    fn try_wait(this: &Arc<Self>) -> Result<WaitPermit, Refusal> {
        let max = this.config.max_waiters;
        if this.waiters.fetch_add(1, Ordering::Relaxed) >= max {
            this.waiters.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::TooManyWaiters(max));
        }
        Ok(WaitPermit(Arc::clone(this)))
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
