//! The persistent log: group-committed appends with per-stream sequence numbers, reads capped
//! at the committed watermark, and readers at the tail woken in memory by the next commit.
//!
//! A node holds each stream it serves in a write epoch it acquired from the store
//! ([`MessageStore::acquire`]); the store refuses appends of an epoch that another node has
//! since replaced. Whatever this node cached of a stream (its epoch, its watermark) is
//! dropped whenever it may be stale: an append was refused or failed, a reader brings a
//! position of a later epoch, or the caller [releases](Log::release) streams it no longer
//! owns. The next use acquires the stream again.
//!
//! The log is sans-io like the rest of the core: it drives a [`MessageStore`] through its
//! async methods and never spawns or sleeps. The caller runs one or more
//! [`Log::run_commit_worker`] futures on its runtime; each takes the pending appends as one
//! batch, writes it with one [`MessageStore::append`], and answers every sender of the batch.
//! With several workers, batches are written concurrently and may finish out of order; the
//! per-stream watermark makes sure readers never see a position before every earlier one of
//! its stream has been settled.

mod commit;
mod dedupe;
mod once;
mod state;
mod stats;
mod wait;

pub use once::{Append, Written};
pub use stats::{BATCH_SIZE_BOUNDS, LogStats};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use commit::{Pending, Queue, queued_bytes};
use dedupe::{IdBudget, Known};
use once::{Once, Step};
use state::StreamLog;
use wait::{Completion, LoadWait, Tail};

use crate::id::StreamId;
use crate::message::Message;
use crate::store::{Epoch, LogRecord, MessageStore, Seq, StoreError, Tenure, expiry};
use crate::time::{Clock, SystemClock, Timestamp};

/// Tuning and limits of a [`Log`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogConfig {
    /// Most records written by one store call.
    pub max_batch: usize,
    /// Most reads waiting at the tail at once.
    pub max_waiters: usize,
    /// Registry shards.
    pub shards: usize,
    /// How often, at most, caught-up readers of a stream make this node check that no other
    /// node has taken the stream since it acquired it (one read of one record past the
    /// watermark): how long a node that lost a stream without seeing it can serve its old
    /// end as the end of the log.
    pub tenure_check: Duration,
    /// Most appends accepted and not yet handed to a commit worker; beyond it an append
    /// fails with [`AppendError::QueueFull`] (a store that stalls cannot make the queue grow
    /// without bound while clients retry).
    pub max_queued: usize,
    /// Most bytes (message ids and payloads) of the appends queued that way.
    pub max_queued_bytes: usize,
    /// Most streams whose positions this node keeps at once (about 200 bytes each, besides
    /// the id), counted per shard (`max_streams / shards`, rounded up). A stream beyond it
    /// takes the place of the least recently used idle one (nothing in flight, nobody
    /// waiting), which is simply acquired again on its next use; with none idle, it fails
    /// with [`ReadError::TooManyStreams`].
    pub max_streams: usize,
    /// Most message ids of deduplicating appends ([`Log::append_once`]) this node remembers
    /// at once, over all streams (about 100 bytes each, besides the id). Past it, an id is
    /// not remembered and its stream asks the store about every deduplicating append until
    /// it is acquired again: slower, never wrong. Counted in [`LogStats::unremembered_ids`].
    pub max_remembered_ids: usize,
}

/// How many times an append acquires its stream before it gives up with
/// [`AppendError::Fenced`]: enough for a release or a used-up epoch, not for two nodes taking
/// the stream from each other on every write.
const APPEND_ATTEMPTS: usize = 4;

/// How many times a read acquires its stream again after finding a later epoch's record past
/// its watermark, before it answers with what this node holds (two nodes taking the stream
/// from each other on every read).
const READ_ATTEMPTS: usize = 3;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            max_waiters: 200_000,
            shards: 64,
            tenure_check: Duration::from_secs(1),
            max_queued: 100_000,
            max_queued_bytes: 64 << 20,
            max_streams: 1_000_000,
            max_remembered_ids: 1_000_000,
        }
    }
}

/// Why an append was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The store failed the batch that carried the message. The message may or may not be
    /// in the log (the failure may have been ambiguous); its position is never reused.
    #[error("the message store failed the write")]
    Store(#[source] Arc<StoreError>),
    /// Another node acquired the stream before the message was written, and the store refused
    /// it: the message is not in the log. Retrying (through the stream's owner) is safe.
    #[error("the stream moved to another writer; the message was not written")]
    Fenced,
    /// The node keeps the positions of its maximum of streams, none of them idle
    /// ([`LogConfig::max_streams`]). The message was not taken.
    #[error("this node keeps the positions of its maximum of {max} log streams, all in use")]
    TooManyStreams {
        /// The limit in force.
        max: usize,
    },
    /// The queue of appends waiting for a commit worker is full ([`LogConfig::max_queued`],
    /// [`LogConfig::max_queued_bytes`]): the store is slower than the appends. The message was
    /// not taken (no position was assigned); retrying later is safe.
    #[error(
        "the log's append queue is full ({queued} appends, {bytes} bytes waiting for the store)"
    )]
    QueueFull {
        /// Appends queued when this one was refused.
        queued: usize,
        /// Their bytes.
        bytes: usize,
    },
    /// The log is closed.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The store failed.
    #[error("the message store failed the read")]
    Store(#[source] StoreError),
    /// Waiting would pass the limit on waiting reads.
    #[error("this node holds its maximum of {max} waiting reads")]
    TooManyWaiters {
        /// The limit in force.
        max: usize,
    },
    /// The node keeps the positions of its maximum of streams, none of them idle
    /// ([`LogConfig::max_streams`]).
    #[error("this node keeps the positions of its maximum of {max} log streams, all in use")]
    TooManyStreams {
        /// The limit in force.
        max: usize,
    },
    /// The log is closed.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// What a read found: records in order, and the watermark it read under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBatch {
    /// Unexpired records after the requested position, at most the requested number.
    pub records: Vec<LogRecord>,
    /// The stream's committed watermark when the read ran; wait for a commit past it.
    pub watermark: Seq,
}

/// The persistent log of every stream this node owns. Cheap to clone.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn MessageStore>,
    clock: Arc<dyn Clock>,
    config: LogConfig,
    shards: Box<[Mutex<HashMap<StreamId, StreamLog>>]>,
    /// Picks a stream's shard. Keyed per process, like the engine's: with a fixed hash, a
    /// client could choose stream ids that all land on one shard's lock.
    hasher: std::hash::RandomState,
    queue: Mutex<Queue>,
    closed: AtomicBool,
    waiters: AtomicUsize,
    /// Numbers each load, so that a load overtaken by a release cannot install its result
    /// over a newer load's.
    loads: AtomicU64,
    counters: stats::Counters,
    /// The ids deduplicating appends remember, over all streams.
    ids: Arc<IdBudget>,
}

/// An append that failed to load its stream, in the append's words.
fn load_failed(e: ReadError) -> AppendError {
    match e {
        ReadError::Store(e) => AppendError::Store(Arc::new(e)),
        ReadError::TooManyStreams { max } => AppendError::TooManyStreams { max },
        _ => AppendError::ShuttingDown,
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Drops what this node knows of `stream` and wakes everyone waiting on it, so that each of
/// them looks again (and the next use acquires the stream again).
fn forget(shard: &mut HashMap<StreamId, StreamLog>, stream: &StreamId) {
    if let Some(mut log) = shard.remove(stream) {
        log.wake_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No critical section here calls out or panics half-way; a poisoned lock holds valid state.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Log {
    /// A log over `store`, on the system clock.
    pub fn new(store: Arc<dyn MessageStore>, config: LogConfig) -> Self {
        Self::with_clock(store, config, Arc::new(SystemClock))
    }

    /// A log over `store`, reading time from `clock` (for expiry).
    pub fn with_clock(
        store: Arc<dyn MessageStore>,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let shards = (0..config.shards.max(1))
            .map(|_| Mutex::new(HashMap::new()))
            .collect();
        let ids = Arc::new(IdBudget::new(config.max_remembered_ids));
        Self {
            inner: Arc::new(Inner {
                store,
                clock,
                config,
                shards,
                hasher: std::hash::RandomState::new(),
                queue: Mutex::new(Queue::default()),
                closed: AtomicBool::new(false),
                waiters: AtomicUsize::new(0),
                loads: AtomicU64::new(0),
                counters: stats::Counters::default(),
                ids,
            }),
        }
    }

    /// Appends `message` (stamped with its acceptance time) to `stream`'s log, to expire
    /// `ttl` after it was accepted. Resolves with its position once it is durable.
    ///
    /// Positions follow acceptance order: the order in which appends to one stream reach this
    /// call. Dropping the future does not withdraw an append that was already queued.
    pub async fn append(
        &self,
        stream: StreamId,
        message: Message,
        ttl: Duration,
    ) -> Result<Seq, AppendError> {
        let done = Arc::new(Completion::default());
        self.enqueue(&stream, message, ttl, &done).await?;
        done.wait().await
    }

    /// Queues `message` for `stream`, to be answered through `done`.
    async fn enqueue(
        &self,
        stream: &StreamId,
        message: Message,
        ttl: Duration,
        done: &Arc<Completion>,
    ) -> Result<(), AppendError> {
        let mut message = Some(message);
        // Each round either queues the record or drops a stale entry that the next round
        // acquires again; a stream taken back and forth faster than that gives up.
        for _ in 0..APPEND_ATTEMPTS {
            self.ensure_loaded(stream).await.map_err(load_failed)?;
            if let Step::Queued = self.queue(stream, &mut message, ttl, done, None)? {
                return Ok(());
            }
        }
        Err(AppendError::Fenced)
    }

    /// Assigns the next position of `stream` to the message and queues it:
    /// [`Step::Queued`]. Or, when the entry is gone or its epoch used up (dropping it),
    /// [`Step::Reload`]. With `once`, first looks whether the message is a duplicate.
    fn queue(
        &self,
        stream: &StreamId,
        message: &mut Option<Message>,
        ttl: Duration,
        done: &Arc<Completion>,
        once: Option<&Once>,
    ) -> Result<Step, AppendError> {
        let mut shard = lock(self.inner.shard(stream));
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(AppendError::ShuttingDown);
        }
        let now = self.inner.clock.now();
        let Some(log) = shard.get_mut(stream) else {
            return Ok(Step::Reload); // released since it was loaded
        };
        if let Some(once) = once {
            let (Some(epoch), Some(message)) = (log.epoch(), message.as_ref()) else {
                return Ok(Step::Reload);
            };
            match log.known(message.id(), once.window, now) {
                Known::At(seq) if log.committed().is_some_and(|c| seq <= c) => {
                    return Ok(Step::Duplicate(seq));
                }
                Known::At(seq) => return Ok(Step::Pending(seq)),
                // Listed once per send: if that did not do (a listing of an acquisition since,
                // or the clock went back), its id is asked for.
                Known::List if !once.listed => return Ok(Step::List(epoch)),
                Known::List | Known::AskStore => match once.asked {
                    Some((asked, Some(seq))) if asked == epoch => {
                        return Ok(Step::Duplicate(seq));
                    }
                    Some((asked, None)) if asked == epoch => {}
                    _ => return Ok(Step::AskStore(epoch)),
                },
                Known::Unseen => {}
            }
        }
        let size = message.as_ref().map_or(0, queued_bytes);
        // Taken before a position is assigned (shard, then queue: the order everywhere), so a
        // refused append leaves no gap.
        let mut queue = lock(&self.inner.queue);
        let config = &self.inner.config;
        if queue.pending.len() >= config.max_queued
            || queue.bytes.saturating_add(size) > config.max_queued_bytes
        {
            self.inner.counters.queue_full();
            return Err(AppendError::QueueFull {
                queued: queue.pending.len(),
                bytes: queue.bytes,
            });
        }
        let Some(seq) = log.assign(now) else {
            if log.is_ready() {
                // The epoch's counter is used up: move to the next epoch.
                forget(&mut shard, stream);
            }
            return Ok(Step::Reload);
        };
        let Some(message) = message.take() else {
            return Err(AppendError::ShuttingDown);
        };
        let expires_at = expiry(message.timestamp(), ttl);
        if let Some(once) = once {
            let lifetime = (message.timestamp(), expires_at);
            log.remember(message.id(), seq, lifetime, once.window, &self.inner.ids);
        }
        let record = LogRecord {
            stream: stream.clone(),
            seq,
            message,
            expires_at,
        };
        // Queued under the shard lock, so the queue holds each stream's records in position
        // order and batches are written in that order.
        queue.bytes += size;
        queue.pending.push_back(Pending {
            record,
            findable: once.is_some(),
            done: done.clone(),
        });
        if let Some(worker) = queue.idle_workers.pop() {
            worker.wake();
        }
        Ok(Step::Queued)
    }

    /// Up to `limit` unexpired records of `stream` after `after`, never past the stream's
    /// committed watermark. A position before the oldest retained record starts at the oldest.
    ///
    /// A read also checks that what this node holds is current: it looks one record past
    /// the watermark (a reader behind it does anyway; for caught-up readers of a stream, one
    /// small read per [`LogConfig::tenure_check`]), and a record there of a later epoch than
    /// this node's means another node acquired the stream since. Its
    /// cached state is then stale (the other node's appends never reach this node's
    /// watermark), so it is dropped and the stream acquired again, which takes in everything
    /// the other node committed. Without that, a node that lost a stream without seeing it
    /// (its view of the ring never changed: the other node's did, for a moment) would serve
    /// a prefix of the log as its end until its next append.
    pub async fn read(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
    ) -> Result<ReadBatch, ReadError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (watermark, epoch, check) = loop {
                self.ensure_loaded(stream).await?;
                if let Some(held) = self.watermark(stream, after) {
                    break held;
                }
            };
            let caught_up = after >= watermark;
            if limit == 0 || (caught_up && !check) {
                return Ok(ReadBatch {
                    records: Vec::new(),
                    watermark,
                });
            }
            let now = self.inner.clock.now();
            // A caught-up reader looks at the one position past the watermark.
            let want = if caught_up { 1 } else { limit };
            let mut records = self
                .inner
                .store
                .read_after(stream, after, want, now)
                .await
                .map_err(ReadError::Store)?;
            let overtaken = records
                .iter()
                .any(|r| r.seq > watermark && r.seq.epoch() > epoch);
            if overtaken && attempts < READ_ATTEMPTS {
                self.inner.counters.overtaken();
                self.forget_epoch(stream, epoch);
                continue;
            }
            // Records a later batch wrote before an earlier one settled stay hidden, and an
            // expired record is never returned whatever the store did.
            records.retain(|r| r.seq <= watermark && r.seq > after && !r.is_expired(now));
            return Ok(ReadBatch { records, watermark });
        }
    }

    /// Drops `stream`'s entry if it still holds `epoch` (a newer acquisition stays).
    fn forget_epoch(&self, stream: &StreamId, epoch: Epoch) {
        let mut shard = lock(self.inner.shard(stream));
        if shard.get(stream).and_then(StreamLog::epoch) == Some(epoch) {
            forget(&mut shard, stream);
        }
    }

    /// The watermark to read `stream` after `after` under, the epoch this node holds it in
    /// and whether a caught-up read should look past the watermark now; or `None` to load it
    /// again: it was released since it was loaded, or `after` is of a later epoch than this
    /// node's (another node wrote the stream after we acquired it, so what we know is stale).
    fn watermark(&self, stream: &StreamId, after: Seq) -> Option<(Seq, Epoch, bool)> {
        let mut shard = lock(self.inner.shard(stream));
        let log = shard.get_mut(stream)?;
        let (epoch, committed) = (log.epoch()?, log.committed()?);
        if after.epoch() > epoch {
            forget(&mut shard, stream);
            return None;
        }
        let check = after >= committed
            && log.check_due(self.inner.clock.now(), self.inner.config.tenure_check);
        Some((committed, epoch, check))
    }

    /// Resolves once `stream`'s committed watermark passes `watermark` (`Ok(true)`), or the
    /// log closes (`Ok(false)`). The caller bounds the wait with its timeout, and reads again
    /// at least once per [`tenure_check`](Self::tenure_check): only a read finds that another
    /// node took the stream unseen (its appends never move this node's watermark).
    pub async fn wait_past(&self, stream: &StreamId, watermark: Seq) -> Result<bool, ReadError> {
        let max = self.inner.config.max_waiters;
        if self.inner.waiters.fetch_add(1, Ordering::Relaxed) >= max {
            self.inner.waiters.fetch_sub(1, Ordering::Relaxed);
            return Err(ReadError::TooManyWaiters { max });
        }
        let result = Tail::new(self, stream.clone(), watermark).await;
        self.inner.waiters.fetch_sub(1, Ordering::Relaxed);
        Ok(result)
    }

    /// [`LogConfig::tenure_check`]: how often, at most, a caught-up read checks the store
    /// for another node's appends, and so how often a reader waiting at the tail should read
    /// again.
    pub fn tenure_check(&self) -> Duration {
        self.inner.config.tenure_check
    }

    /// Deletes up to `limit` expired records; see [`MessageStore::purge_expired`].
    pub async fn purge_expired(&self, limit: usize) -> Result<usize, StoreError> {
        self.inner
            .store
            .purge_expired(self.inner.clock.now(), limit)
            .await
    }

    /// Forgets what this node knows of every stream for which `keep` is false: its epoch, its
    /// watermark. Readers waiting at such a stream's tail are woken (their wait resolves as if
    /// the watermark had moved) and its next use acquires it again. Call it with "do I still
    /// own this stream" whenever ownership may have moved; appends already queued are still
    /// written (or refused by the store) and answered. Returns how many were dropped.
    pub fn release(&self, mut keep: impl FnMut(&StreamId) -> bool) -> usize {
        self.retain(|stream, _| keep(stream))
    }

    /// Forgets the positions of streams idle for `idle` (nothing in flight, nobody waiting)
    /// and remembering no message id within its window ([`append_once`](Self::append_once)):
    /// they are read back from the store on next use. Returns how many were dropped. (A
    /// stream forgotten with ids in its window would have the store asked for them again.)
    pub fn sweep_idle(&self, idle: Duration) -> usize {
        let now = self.inner.clock.now();
        self.retain(|_, log| !log.is_idle(now, idle) || log.remembers_ids(now))
    }

    /// Keeps the entries for which `keep` is true, one shard at a time; wakes everyone
    /// waiting on a dropped one. Returns how many were dropped.
    fn retain(&self, mut keep: impl FnMut(&StreamId, &mut StreamLog) -> bool) -> usize {
        self.inner
            .shards
            .iter()
            .map(|shard| {
                let mut shard = lock(shard);
                let before = shard.len();
                shard.retain(|stream, log| {
                    let kept = keep(stream, log);
                    if !kept {
                        log.wake_all();
                    }
                    kept
                });
                before - shard.len()
            })
            .sum()
    }

    /// Closes the log: new appends and waits are refused, waiting readers are released, and
    /// the workers stop once they have written every queued append.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        for worker in lock(&self.inner.queue).idle_workers.drain(..) {
            worker.wake();
        }
        for shard in self.inner.shards.iter() {
            for log in lock(shard).values_mut() {
                log.wake_tail();
            }
        }
    }

    /// What the group commits and the deduplicating appends did since the log started.
    pub fn stats(&self) -> LogStats {
        let mut stats = self.inner.counters.snapshot();
        let (remembered, unremembered, duplicates, lookups, listings) = self.inner.ids.snapshot();
        stats.remembered_ids = remembered as u64;
        stats.unremembered_ids = unremembered;
        stats.duplicates = duplicates;
        stats.id_lookups = lookups;
        stats.id_listings = listings;
        stats
    }

    /// Makes room in `shard` for one more stream ([`LogConfig::max_streams`]): when it is
    /// full, forgets its least recently used idle stream among the first few it finds (a
    /// sample, so that the cost stays bounded; the whole shard when the sample has none).
    fn make_room(
        &self,
        shard: &mut HashMap<StreamId, StreamLog>,
        now: Timestamp,
    ) -> Result<(), ReadError> {
        const SAMPLE: usize = 16;
        let config = &self.inner.config;
        let per_shard = config.max_streams.div_ceil(self.inner.shards.len()).max(1);
        if shard.len() < per_shard {
            return Ok(());
        }
        let idle = |log: &StreamLog| log.is_idle(now, Duration::ZERO);
        let mut victim: Option<(&StreamId, Timestamp)> = None;
        for (id, log) in shard.iter().take(SAMPLE) {
            if idle(log) && victim.is_none_or(|(_, used)| log.last_used() < used) {
                victim = Some((id, log.last_used()));
            }
        }
        let victim = victim
            .map(|(id, _)| id)
            .or_else(|| shard.iter().find(|(_, log)| idle(log)).map(|(id, _)| id))
            .cloned();
        let Some(victim) = victim else {
            return Err(ReadError::TooManyStreams {
                max: config.max_streams,
            });
        };
        self.inner.counters.evicted();
        forget(shard, &victim);
        Ok(())
    }

    /// Makes sure this node holds `stream` in an epoch, acquiring it from the store once
    /// (concurrent callers wait for that one acquisition).
    async fn ensure_loaded(&self, stream: &StreamId) -> Result<(), ReadError> {
        loop {
            let load = {
                let mut shard = lock(self.inner.shard(stream));
                if self.inner.closed.load(Ordering::SeqCst) {
                    return Err(ReadError::ShuttingDown);
                }
                let now = self.inner.clock.now();
                match shard.get_mut(stream) {
                    Some(log) if log.is_ready() => {
                        log.touch(now);
                        return Ok(());
                    }
                    Some(_) => None,
                    None => {
                        self.make_room(&mut shard, now)?;
                        let load = self.inner.loads.fetch_add(1, Ordering::Relaxed);
                        shard.insert(stream.clone(), StreamLog::loading(load, now));
                        Some(load)
                    }
                }
            };
            let Some(load) = load else {
                LoadWait::new(self, stream.clone()).await;
                continue;
            };
            // This call loads; if it is dropped half-way the guard gives the job back.
            let guard = LoadGuard {
                log: self,
                stream,
                load,
                armed: true,
            };
            let tenure = self.inner.store.acquire(stream).await;
            return guard.finish(tenure).map_err(ReadError::Store);
        }
    }
}

/// Ends a load: publishes the tenure, or on failure or cancellation removes the entry so
/// that the next caller loads again. Either way, everyone waiting on the load is woken. A
/// load whose entry was released meanwhile (and perhaps loaded anew) changes nothing.
struct LoadGuard<'a> {
    log: &'a Log,
    stream: &'a StreamId,
    load: u64,
    armed: bool,
}

impl LoadGuard<'_> {
    fn finish(mut self, tenure: Result<Tenure, StoreError>) -> Result<(), StoreError> {
        self.armed = false;
        let mut shard = lock(self.log.inner.shard(self.stream));
        let Some(log) = shard
            .get_mut(self.stream)
            .filter(|log| log.is_loading(self.load))
        else {
            return tenure.map(drop);
        };
        match tenure {
            Ok(tenure) => {
                log.loaded(tenure, self.log.inner.clock.now());
                Ok(())
            }
            Err(e) => {
                forget(&mut shard, self.stream);
                Err(e)
            }
        }
    }
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut shard = lock(self.log.inner.shard(self.stream));
            if shard
                .get(self.stream)
                .is_some_and(|log| log.is_loading(self.load))
            {
                forget(&mut shard, self.stream);
            }
        }
    }
}

impl Inner {
    fn shard(&self, stream: &StreamId) -> &Mutex<HashMap<StreamId, StreamLog>> {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one(stream);
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
