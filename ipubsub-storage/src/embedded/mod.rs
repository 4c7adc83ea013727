//! [`EmbeddedStore`]: the default store, on the fjall LSM engine, in a local directory.
//!
//! # Layout
//! Three keyspaces; an append writes the first two together in one atomic batch:
//! - `log`: key = `len(stream) u16 | stream | seq u64`, big-endian, so that one stream's
//!   records are one contiguous, ordered key range and a read is a single range scan; value =
//!   `expires_at u64 | timestamp u64 | len(id) u16 | id | payload`, the top bit of `len(id)`
//!   set when the record is findable ([`MessageStore::append_findable`]; ids are at most 256
//!   bytes). Findable records are not indexed by id until the log looks one up: the log lists
//!   a stream's findable records once per acquisition ([`MessageStore::list_findable`], a
//!   scan of the stream) and remembers them, so an idempotent send writes what a plain one
//!   does (an index entry per record cost such sends 9% of their rate). It looks ids up one
//!   by one ([`MessageStore::find_message`]) only when its memory cannot hold a stream's
//!   window; the first lookup indexes the stream (every findable record stored, then the
//!   stream marked in `epochs`), and from then on its findable appends write an index entry
//!   each, in the same keyspace right after the stream's records: key = `len(stream) u16 |
//!   stream | 0xff × 8 | hash(id) u64 | seq u64` (64-bit FNV-1a of the message id), empty
//!   value, so that one id's positions in one stream are one range, the latest last (with
//!   those of any other id of the same hash, which a lookup tells apart by the record's own
//!   id). A read of the stream never meets an entry, and a lookup checks each position it
//!   finds against the record, so an entry never outlives what it indexes in an answer.
//! - `expiry`: the expiry index, one entry per append and expiry second: key = `bucket u64 |
//!   first log key`, where `bucket` is the end of the second in which its records expire;
//!   value = the log keys of those records, each as `len u16 | key` (a key with the top bit
//!   of `len` set is followed by its record's index entry's key the same way, which the
//!   purge removes too; the entries written when a stream is indexed are listed on their
//!   own, in the second their records expire in, and the purge counts each like a record).
//!   A purge scans it from the
//!   start up to `now`, so it touches expired records only, never live data. One entry per
//!   group commit rather than one per record halves what an append inserts into the LSM (its
//!   skiplist inserts were a third of an append's CPU); the cost is that a record may outlive
//!   its expiry on disk by up to a second (never in a read, which filters on `expires_at`).
//!   An entry with an empty value (the first layout) names its one record in its key.
//! - `epochs`: key = `len(stream) u16 | stream`, value = the stream's current epoch (`u32`),
//!   then `1` once its ids are indexed; written by each acquisition and never purged. fjall locks its directory to one process,
//!   so the store is its only writer: appends and acquisitions take one lock, and the fence
//!   check is a comparison with the cached epoch under it.
//!
//! Durability is the journal's: [`Durability::Buffer`] hands each batch to the OS before the
//! append returns (it survives `kill -9` of the process), [`Durability::Sync`] also
//! `fdatasync`s it (it survives a power loss).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use ipubsub_core::{
    Appended, Epoch, FoundId, LogRecord, MessageId, MessageStore, Seq, StoreError, StreamId,
    Tenure, Timestamp,
};

mod layout;

use layout::{
    ExpiryEntries, Findable, corrupt, decode, encode_value, id_key, id_key_of, id_len, listed,
    log_key, push_listed, stream_prefix, u64_at,
};

/// How far an append is flushed before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Written to the OS: survives the process being killed, not a power loss.
    #[default]
    Buffer,
    /// Written and `fdatasync`ed: survives a power loss.
    Sync,
}

/// Where and how the embedded store keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmbeddedConfig {
    /// The data directory; created if missing.
    pub path: PathBuf,
    /// How far appends are flushed.
    pub durability: Durability,
}

impl EmbeddedConfig {
    /// Data under `path`, with the default durability.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::default(),
        }
    }
}

/// Why the embedded store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The directory could not be created or the database not opened (in use by another
    /// process, unreadable, or corrupt).
    #[error("cannot open the embedded store at {path}")]
    Open {
        /// The data directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: fjall::Error,
    },
}

/// The default [`MessageStore`]: fjall in a local directory. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    /// Store calls running on blocking threads at once (see [`blocking_calls`]).
    calls: Arc<tokio::sync::Semaphore>,
}

/// How many store calls run at once, each on a blocking thread: twice the cores, at least 8.
/// More would not go faster (appends and acquisitions take one lock, the rest is CPU and the
/// disk), and without a bound a burst of requests makes tokio start a thread per call, up
/// to 512, whose stacks and per-thread heaps stay in the process's memory: 1,200 log readers
/// of new streams at once grew a node by 50 MB.
fn blocking_calls() -> usize {
    std::thread::available_parallelism()
        .map_or(8, |n| n.get() * 2)
        .max(8)
}

struct Inner {
    db: Database,
    log: Keyspace,
    expiry: Keyspace,
    epochs: Keyspace,
    mode: PersistMode,
    /// What this store knows of streams it wrote; serialises appends and acquisitions.
    known: Mutex<Known>,
}

/// Per-stream facts cached from the keyspaces. fjall locks its directory to one process, so
/// nothing changes behind this store's back.
#[derive(Default)]
struct Known {
    /// A position at or above every position stored for the stream: an append above it
    /// needs no conflict check, which saves a point lookup per record on the common path
    /// (the log only ever appends above).
    high: HashMap<StreamId, Seq>,
    /// The stream's current epoch and whether its ids are indexed, as in the `epochs`
    /// keyspace.
    epochs: HashMap<StreamId, Facts>,
}

/// What the `epochs` keyspace holds of a stream: `epoch u32`, then `1` once its findable
/// records are indexed ([`Inner::index_ids`]).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Facts {
    epoch: Epoch,
    indexed: bool,
}

impl Facts {
    fn decode(value: &[u8]) -> Result<Self, StoreError> {
        let bad = || corrupt("epoch entry");
        let (epoch, indexed) = match value {
            [a, b, c, d] => ([*a, *b, *c, *d], false),
            [a, b, c, d, 1] => ([*a, *b, *c, *d], true),
            _ => return Err(bad()),
        };
        let epoch = Epoch::new(u64::from(u32::from_be_bytes(epoch))).ok_or_else(bad)?;
        Ok(Self { epoch, indexed })
    }

    fn encode(self) -> Vec<u8> {
        let mut value = self.epoch.get().to_be_bytes().to_vec();
        if self.indexed {
            value.push(1);
        }
        value
    }
}

/// Entries of each `Known` map kept before it is cleared (it refills on demand).
const KNOWN_ENTRIES: usize = 1 << 20;

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `config.path`, recovering its journal.
    pub fn open(config: &EmbeddedConfig) -> Result<Self, OpenError> {
        let wrap = |source| OpenError::Open {
            path: config.path.clone(),
            source,
        };
        std::fs::create_dir_all(&config.path).map_err(|e| wrap(fjall::Error::Io(e)))?;
        let db = Database::builder(&config.path).open().map_err(wrap)?;
        let log = db
            .keyspace("log", KeyspaceCreateOptions::default)
            .map_err(wrap)?;
        let expiry = db
            .keyspace("expiry", KeyspaceCreateOptions::default)
            .map_err(wrap)?;
        let epochs = db
            .keyspace("epochs", KeyspaceCreateOptions::default)
            .map_err(wrap)?;
        let mode = match config.durability {
            Durability::Buffer => PersistMode::Buffer,
            Durability::Sync => PersistMode::SyncData,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                log,
                expiry,
                epochs,
                mode,
                known: Mutex::new(Known::default()),
            }),
            calls: Arc::new(tokio::sync::Semaphore::new(blocking_calls())),
        })
    }

    /// Runs blocking engine work off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        // Held until the call is done, also when the caller stops waiting for it.
        let call = Arc::clone(&self.calls)
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        tokio::task::spawn_blocking(move || {
            let _call = call;
            f(&inner)
        })
        .await
        .map_err(|e| StoreError::Unavailable(Box::new(e)))?
    }
}

impl Inner {
    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.high.len() > KNOWN_ENTRIES || known.epochs.len() > KNOWN_ENTRIES {
            *known = Known::default();
        }
        known
    }

    /// The stream's current epoch and index state, from the cache or the `epochs` keyspace.
    fn facts(&self, known: &mut Known, stream: &StreamId) -> Result<Facts, StoreError> {
        if let Some(&facts) = known.epochs.get(stream) {
            return Ok(facts);
        }
        let facts = match self
            .epochs
            .get(stream_prefix(stream))
            .map_err(unavailable)?
        {
            Some(value) => Facts::decode(&value)?,
            None => Facts::default(),
        };
        known.epochs.insert(stream.clone(), facts);
        Ok(facts)
    }

    /// Moves `stream` to its next epoch, journaled before it returns.
    fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
        let mut known = self.known();
        let current = self.facts(&mut known, stream)?;
        let last = self.last_stored(stream)?;
        let epoch =
            Epoch::after(current.epoch, last).ok_or_else(|| StoreError::EpochsExhausted {
                stream: stream.clone(),
            })?;
        let facts = Facts { epoch, ..current };
        let mut write = self.db.batch().durability(Some(self.mode));
        write.insert(&self.epochs, stream_prefix(stream), facts.encode());
        write.commit().map_err(unavailable)?;
        known.epochs.insert(stream.clone(), facts);
        known.high.insert(stream.clone(), last);
        Ok(Tenure { epoch, last })
    }

    /// Writes a batch in one atomic, journaled commit, but for the records of streams that
    /// moved to another epoch; the records flagged in `findable` (empty: none) marked so,
    /// and, in a stream whose ids are indexed, with their index entries.
    fn append(&self, batch: &[LogRecord], findable: &[bool]) -> Result<Appended, StoreError> {
        let mut known = self.known();
        let (mut fenced, mut indexed) = (Vec::new(), Vec::new());
        for record in batch {
            if fenced.contains(&record.stream) || indexed.contains(&&record.stream) {
                continue;
            }
            let facts = self.facts(&mut known, &record.stream)?;
            if facts.epoch != record.seq.epoch() {
                fenced.push(record.stream.clone());
            } else if facts.indexed {
                indexed.push(&record.stream);
            }
        }
        let high = &mut known.high;
        let mut write = self.db.batch().durability(Some(self.mode));
        let mut raised: Vec<(&StreamId, Seq)> = Vec::new();
        let mut expiring = ExpiryEntries::default();
        let flags = findable.iter().copied().chain(std::iter::repeat(false));
        for (record, findable) in batch.iter().zip(flags) {
            if fenced.contains(&record.stream) {
                continue;
            }
            let key = log_key(&record.stream, record.seq);
            let value = encode_value(record, findable);
            let above = match high.get(&record.stream) {
                Some(&h) => h,
                None => {
                    let h = self.last_stored(&record.stream)?;
                    high.insert(record.stream.clone(), h);
                    h
                }
            };
            if record.seq <= above {
                // A retried append finds its own records: skip them; anything else conflicts.
                match self.log.get(&key).map_err(unavailable)? {
                    Some(existing) if existing.as_ref() == value.as_slice() => continue,
                    Some(_) => {
                        return Err(StoreError::Conflict {
                            stream: record.stream.clone(),
                            seq: record.seq,
                        });
                    }
                    None => {}
                }
            }
            raised.push((&record.stream, record.seq));
            let id_key = (findable && indexed.contains(&&record.stream))
                .then(|| id_key(&record.stream, record.message.id(), record.seq));
            expiring.add(record.expires_at, &key, id_key.as_deref());
            if let Some(id_key) = id_key {
                write.insert(&self.log, id_key, []);
            }
            write.insert(&self.log, key, value);
        }
        for (key, value) in expiring.entries {
            write.insert(&self.expiry, key, value);
        }
        write.commit().map_err(unavailable)?;
        for (stream, seq) in raised {
            if let Some(h) = high.get_mut(stream) {
                *h = (*h).max(seq);
            }
        }
        Ok(Appended::fenced(fenced))
    }

    /// From now on, indexes the findable records of `stream` by id: writes an index entry
    /// for each one stored (in batches, each listed for the purge with its record's expiry
    /// second), then marks the stream so that appends write one for each new findable
    /// record. The records are indexed without the store's lock, then those appended
    /// meanwhile under it, with the mark, so that no append slips between. A crash part way
    /// leaves the stream unmarked, and the next call writes the same entries again.
    fn index_ids(&self, stream: &StreamId) -> Result<(), StoreError> {
        if self.facts(&mut self.known(), stream)?.indexed {
            return Ok(());
        }
        let mut write = self.db.batch().durability(Some(self.mode));
        let seen = self.index_after(stream, Seq::ZERO, &mut write)?;
        let mut known = self.known();
        let facts = self.facts(&mut known, stream)?;
        if facts.indexed {
            return Ok(()); // by a racing call
        }
        self.index_after(stream, seen, &mut write)?;
        let facts = Facts {
            indexed: true,
            ..facts
        };
        write.insert(&self.epochs, stream_prefix(stream), facts.encode());
        write.commit().map_err(unavailable)?;
        known.epochs.insert(stream.clone(), facts);
        Ok(())
    }

    /// Adds an index entry for each findable record of `stream` after `after` to `write`,
    /// committing it every few thousand; returns the last position it saw.
    fn index_after(
        &self,
        stream: &StreamId,
        after: Seq,
        write: &mut fjall::OwnedWriteBatch,
    ) -> Result<Seq, StoreError> {
        const BATCH: usize = 4096;
        let (mut expiring, mut pending, mut seen) = (ExpiryEntries::default(), 0, after);
        let range = self
            .log
            .range(log_key(stream, after.next())..=log_key(stream, Seq::new(u64::MAX)));
        for item in range {
            let (key, value) = item.into_inner().map_err(unavailable)?;
            seen = Seq::new(u64_at(&key, key.len().saturating_sub(8))?);
            let Some(record) = Findable::of(seen, &value)? else {
                continue;
            };
            let entry = id_key_of(stream, record.id, seen);
            // Listed alone: the purge removes it in the second its record expires in.
            expiring.add(record.expires_at, &entry, None);
            write.insert(&self.log, entry, []);
            pending += 1;
            if pending == BATCH {
                for (key, value) in std::mem::take(&mut expiring.entries) {
                    write.insert(&self.expiry, key, value);
                }
                let fresh = self.db.batch().durability(Some(self.mode));
                std::mem::replace(write, fresh)
                    .commit()
                    .map_err(unavailable)?;
                pending = 0;
            }
        }
        for (key, value) in expiring.entries {
            write.insert(&self.expiry, key, value);
        }
        Ok(seen)
    }

    /// Calls `each` with `(seq, id, accepted, expires_at)` of every findable record of
    /// `stream` accepted at or after `since` and unexpired at `now`, latest first, while it
    /// answers true; answers whether it was given them all. Acceptance times need not rise
    /// with positions (each owner stamps by its own clock), so the whole stream is scanned.
    fn findable(
        &self,
        stream: &StreamId,
        since: Timestamp,
        now: Timestamp,
        mut each: impl FnMut(Seq, &[u8], Timestamp, Timestamp) -> bool,
    ) -> Result<bool, StoreError> {
        let range = self
            .log
            .range(log_key(stream, Seq::ZERO)..=log_key(stream, Seq::new(u64::MAX)));
        for item in range.rev() {
            let (key, value) = item.into_inner().map_err(unavailable)?;
            let seq = Seq::new(u64_at(&key, key.len().saturating_sub(8))?);
            let Some(r) = Findable::of(seq, &value)? else {
                continue;
            };
            if r.accepted < since || r.expires_at <= now {
                continue;
            }
            if !each(r.seq, r.id, r.accepted, r.expires_at) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The highest position stored for `stream`, or zero.
    fn last_stored(&self, stream: &StreamId) -> Result<Seq, StoreError> {
        let last = self
            .log
            .range(log_key(stream, Seq::ZERO)..=log_key(stream, Seq::new(u64::MAX)))
            .next_back();
        match last {
            None => Ok(Seq::ZERO),
            Some(item) => {
                let key = item.key().map_err(unavailable)?;
                Ok(Seq::new(u64_at(&key, key.len().saturating_sub(8))?))
            }
        }
    }
}

fn unavailable(e: fjall::Error) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

#[async_trait]
impl MessageStore for EmbeddedStore {
    async fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
        let stream = stream.clone();
        self.blocking(move |inner| inner.acquire(&stream)).await
    }

    async fn append(&self, batch: &[LogRecord]) -> Result<Appended, StoreError> {
        // Off the async workers: besides the journal write (and an fdatasync in sync mode),
        // fjall stalls writers with sleeps of 10 to 100 ms when flushes fall behind, which
        // must never freeze a runtime thread and every connection on it.
        let batch = batch.to_vec();
        self.blocking(move |inner| inner.append(&batch, &[])).await
    }

    async fn append_findable(
        &self,
        batch: &[LogRecord],
        findable: &[bool],
    ) -> Result<Appended, StoreError> {
        let (batch, findable) = (batch.to_vec(), findable.to_vec());
        self.blocking(move |inner| inner.append(&batch, &findable))
            .await
    }

    async fn read_after(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<LogRecord>, StoreError> {
        // A bounded range scan, mostly served from the memtable and the block cache: inline.
        let Some(from) = after.get().checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        let range = self
            .inner
            .log
            .range(log_key(stream, Seq::new(from))..=log_key(stream, Seq::new(u64::MAX)));
        for item in range {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.into_inner().map_err(unavailable)?;
            // Expired records are skipped until the purge removes them.
            if u64_at(&value, 0)? <= now.as_micros() {
                continue;
            }
            out.push(decode(stream, &key, &value)?);
        }
        Ok(out)
    }

    async fn last_seq(&self, stream: &StreamId) -> Result<Seq, StoreError> {
        self.inner.last_stored(stream)
    }

    async fn find_message(
        &self,
        stream: &StreamId,
        id: &MessageId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Seq>, StoreError> {
        // The log asks for ids one by one only when its memory cannot hold a stream's window
        // (see the module's layout notes): from then on the stream is indexed. The first
        // call writes its index, off the async workers like an append.
        let (stream, id) = (stream.clone(), id.clone());
        self.blocking(move |inner| {
            inner.index_ids(&stream)?;
            // A short range scan of the id's positions, latest first, and a point read of
            // each until one qualifies.
            let (first, last) = (
                id_key(&stream, &id, Seq::ZERO),
                id_key(&stream, &id, Seq::new(u64::MAX)),
            );
            for item in inner.log.range(first..=last).rev() {
                let key = item.key().map_err(unavailable)?;
                let seq = Seq::new(u64_at(&key, key.len().saturating_sub(8))?);
                let Some(value) = inner.log.get(log_key(&stream, seq)).map_err(unavailable)? else {
                    continue; // purged since the index was read
                };
                let (expires_at, accepted) = (u64_at(&value, 0)?, u64_at(&value, 8)?);
                let (len, _) = id_len(&value)?;
                if value.get(18..18 + len) != Some(id.as_str().as_bytes()) {
                    continue; // another id of the same hash
                }
                // Acceptance times need not fall with positions (each owner stamps by its
                // own clock).
                if accepted >= since.as_micros() && expires_at > now.as_micros() {
                    return Ok(Some(seq));
                }
            }
            Ok(None)
        })
        .await
    }

    async fn list_findable(
        &self,
        stream: &StreamId,
        since: Timestamp,
        now: Timestamp,
        limit: usize,
    ) -> Result<Option<Vec<FoundId>>, StoreError> {
        let stream = stream.clone();
        self.blocking(move |inner| {
            let (mut found, mut bad) = (Vec::new(), None);
            let whole = inner.findable(&stream, since, now, |seq, id, accepted, expires_at| {
                if found.len() == limit {
                    return false; // one more than fits
                }
                match std::str::from_utf8(id).map(MessageId::new) {
                    Ok(Ok(id)) => found.push(FoundId {
                        id,
                        seq,
                        accepted,
                        expires_at,
                    }),
                    _ => bad = Some(corrupt("an invalid message id")),
                }
                bad.is_none()
            })?;
            if let Some(bad) = bad {
                return Err(bad);
            }
            found.reverse();
            Ok(whole.then_some(found))
        })
        .await
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        self.blocking(move |inner| {
            let mut write = inner.db.batch().durability(Some(inner.mode));
            let mut purged = 0;
            let end = now.as_micros().saturating_add(1).to_be_bytes();
            for item in inner.expiry.range(..end.as_slice()) {
                if purged >= limit {
                    break;
                }
                let (key, value) = item.into_inner().map_err(unavailable)?;
                let listed = if value.is_empty() {
                    let log_key = key.get(8..).ok_or_else(|| corrupt("short expiry key"))?;
                    vec![(log_key, None)]
                } else {
                    listed(&value)?
                };
                let take = listed.len().min(limit - purged);
                for (log_key, id_key) in &listed[..take] {
                    write.remove(&inner.log, *log_key);
                    if let Some(id_key) = id_key {
                        write.remove(&inner.log, *id_key);
                    }
                }
                if take == listed.len() {
                    write.remove(&inner.expiry, key.clone());
                } else {
                    // The limit falls inside this entry: keep the rest for the next call.
                    let mut rest = Vec::new();
                    for (log_key, id_key) in &listed[take..] {
                        push_listed(&mut rest, log_key, *id_key);
                    }
                    write.insert(&inner.expiry, key, rest);
                }
                purged += take;
            }
            write.commit().map_err(unavailable)?;
            Ok(purged)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
