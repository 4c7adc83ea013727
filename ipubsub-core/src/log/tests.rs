use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::id::MessageId;
use crate::store::{Appended, Epoch, FoundId};
use crate::time::ManualClock;

/// A minimal store for the log's own tests: a map and each stream's epoch, plus a gate that
/// can hold the first append and a switch that fails appends.
#[derive(Default)]
struct TestStore {
    records: Mutex<BTreeMap<(String, u64), LogRecord>>,
    epochs: Mutex<HashMap<String, Epoch>>,
    appends: AtomicUsize,
    hold_first: AtomicBool,
    released: AtomicBool,
    fail: AtomicBool,
    gate_waker: Mutex<Option<Waker>>,
    /// The positions appended findable (`append_findable`).
    findable: Mutex<Vec<Seq>>,
    /// Whether `list_findable` lists (else it answers `None`, the default), and how many
    /// times it listed.
    lists: AtomicBool,
    listings: AtomicUsize,
}

impl TestStore {
    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
        if let Some(w) = lock(&self.gate_waker).take() {
            w.wake();
        }
    }
}

#[async_trait]
impl MessageStore for TestStore {
    async fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
        let last = self.last_seq(stream).await?;
        let mut epochs = lock(&self.epochs);
        let current = epochs.entry(stream.to_string()).or_default();
        *current = Epoch::after(*current, last).ok_or(StoreError::EpochsExhausted {
            stream: stream.clone(),
        })?;
        Ok(Tenure {
            epoch: *current,
            last,
        })
    }

    async fn append(&self, batch: &[LogRecord]) -> Result<Appended, StoreError> {
        let n = self.appends.fetch_add(1, Ordering::SeqCst);
        if n == 0 && self.hold_first.load(Ordering::SeqCst) {
            std::future::poll_fn(|cx| {
                if self.released.load(Ordering::SeqCst) {
                    Poll::Ready(())
                } else {
                    *lock(&self.gate_waker) = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected".into()));
        }
        let epochs = lock(&self.epochs);
        let mut records = lock(&self.records);
        let mut fenced = Vec::new();
        for r in batch {
            if epochs.get(r.stream.as_str()) == Some(&r.seq.epoch()) {
                records.insert((r.stream.to_string(), r.seq.get()), r.clone());
            } else if !fenced.contains(&r.stream) {
                fenced.push(r.stream.clone());
            }
        }
        Ok(Appended::fenced(fenced))
    }

    async fn append_findable(
        &self,
        batch: &[LogRecord],
        findable: &[bool],
    ) -> Result<Appended, StoreError> {
        assert_eq!(batch.len(), findable.len(), "a flag per record");
        let appended = self.append(batch).await?;
        let marked = batch.iter().zip(findable).filter(|(_, f)| **f);
        lock(&self.findable).extend(marked.map(|(r, _)| r.seq));
        Ok(appended)
    }

    async fn read_after(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let records = lock(&self.records);
        Ok(records
            .range((stream.to_string(), after.get() + 1)..(stream.to_string(), u64::MAX))
            .map(|(_, r)| r)
            .filter(|r| !r.is_expired(now))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn list_findable(
        &self,
        stream: &StreamId,
        since: Timestamp,
        now: Timestamp,
        limit: usize,
    ) -> Result<Option<Vec<FoundId>>, StoreError> {
        if !self.lists.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.listings.fetch_add(1, Ordering::SeqCst);
        let records = self.read_after(stream, Seq::ZERO, usize::MAX, now).await?;
        let findable = lock(&self.findable);
        let listed: Vec<_> = records
            .iter()
            .filter(|r| findable.contains(&r.seq) && r.message.timestamp() >= since)
            .map(FoundId::from)
            .collect();
        Ok((listed.len() <= limit).then_some(listed))
    }

    async fn last_seq(&self, stream: &StreamId) -> Result<Seq, StoreError> {
        let records = lock(&self.records);
        Ok(records
            .range((stream.to_string(), 0)..(stream.to_string(), u64::MAX))
            .next_back()
            .map_or(Seq::ZERO, |(_, r)| r.seq))
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        let mut records = lock(&self.records);
        let expired: Vec<_> = records
            .iter()
            .filter(|(_, r)| r.is_expired(now))
            .map(|(k, _)| k.clone())
            .take(limit)
            .collect();
        for k in &expired {
            records.remove(k);
        }
        Ok(expired.len())
    }
}

use crate::time::Timestamp;

mod dedupe;

fn poll<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

#[track_caller]
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match poll(f.as_mut()) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("pending"),
    }
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).expect("id")
}

fn msg(id: &str, at: Timestamp) -> Message {
    Message::new(
        MessageId::new(id).expect("id"),
        Bytes::from(format!("\"{id}\"")),
        at,
    )
}

fn setup(store: Arc<TestStore>) -> (Log, Arc<ManualClock>) {
    setup_with(store, LogConfig::default())
}

fn setup_with(store: Arc<TestStore>, config: LogConfig) -> (Log, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(Timestamp::from_micros(1_000_000)));
    (Log::with_clock(store, config, clock.clone()), clock)
}

const TTL: Duration = Duration::from_secs(60);

/// The `i`-th position (from 1) of the first epoch of a stream.
fn at(i: u64) -> Seq {
    pos(1, i)
}

/// The `i`-th position of `epoch`.
fn pos(epoch: u64, i: u64) -> Seq {
    Seq::at(Epoch::new(epoch).expect("epoch"), i).expect("position")
}

fn n(seqs: &[u64]) -> Vec<u64> {
    seqs.iter().map(|&i| at(i).get()).collect()
}

/// Appends `id` to stream `s` through `log`, driving `worker` until it is written.
#[track_caller]
fn write<W: Future>(log: &Log, worker: Pin<&mut W>, s: &str, id: &str) -> Result<Seq, AppendError> {
    let now = log.inner.clock.now();
    let mut append = pin!(log.append(sid(s), msg(id, now), TTL));
    assert!(poll(append.as_mut()).is_pending());
    assert!(poll(worker).is_pending());
    ready(append)
}

fn seqs(batch: &ReadBatch) -> Vec<u64> {
    batch.records.iter().map(|r| r.seq.get()).collect()
}

#[test]
fn appends_are_numbered_in_order_and_continue_after_a_restart()
-> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let (log, clock) = setup(store.clone());
    let mut worker = pin!(log.run_commit_worker());
    for i in 1..=3u64 {
        let mut append = pin!(log.append(sid("s"), msg(&format!("m{i}"), clock.now()), TTL));
        assert!(poll(append.as_mut()).is_pending());
        assert!(poll(worker.as_mut()).is_pending());
        assert_eq!(ready(append)?, at(i));
    }
    // A new log over the same store acquires the stream anew: the next epoch, above.
    let (log, _) = setup(store);
    let mut worker = pin!(log.run_commit_worker());
    assert_eq!(write(&log, worker.as_mut(), "s", "m4")?, pos(2, 1));
    let mut expected = n(&[1, 2, 3]);
    expected.push(pos(2, 1).get());
    assert_eq!(seqs(&ready(log.read(&sid("s"), Seq::ZERO, 10))?), expected);
    assert_eq!(seqs(&ready(log.read(&sid("s"), at(2), 1))?), n(&[3]));
    Ok(())
}

#[test]
fn a_later_batch_that_finishes_first_stays_hidden_until_the_earlier_one_settles()
-> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    store.hold_first.store(true, Ordering::SeqCst);
    let (log, clock) = setup(store.clone());
    let mut slow = pin!(log.run_commit_worker());
    let mut fast = pin!(log.run_commit_worker());

    let mut first = pin!(log.append(sid("s"), msg("first", clock.now()), TTL));
    assert!(poll(first.as_mut()).is_pending());
    assert!(
        poll(slow.as_mut()).is_pending(),
        "the first batch is held by the store"
    );

    let mut second = pin!(log.append(sid("s"), msg("second", clock.now()), TTL));
    assert!(poll(second.as_mut()).is_pending());
    assert!(poll(fast.as_mut()).is_pending());
    assert_eq!(
        ready(second.as_mut())?,
        at(2),
        "the second is durable and acknowledged"
    );

    let read = ready(log.read(&sid("s"), Seq::ZERO, 10))?;
    assert_eq!(
        (seqs(&read), read.watermark),
        (vec![], Seq::ZERO),
        "but not visible past the gap"
    );
    let s = sid("s");
    let mut tail = pin!(log.wait_past(&s, Seq::ZERO));
    assert!(poll(tail.as_mut()).is_pending());

    store.release();
    assert!(poll(slow.as_mut()).is_pending());
    assert_eq!(ready(first)?, at(1));
    assert!(
        ready(tail)?,
        "the tail reader is woken by the watermark moving"
    );
    assert_eq!(
        seqs(&ready(log.read(&sid("s"), Seq::ZERO, 10))?),
        n(&[1, 2])
    );
    Ok(())
}

#[test]
fn a_failed_batch_is_not_acknowledged_and_the_stream_is_acquired_again()
-> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let (log, clock) = setup(store.clone());
    let mut worker = pin!(log.run_commit_worker());
    store.fail.store(true, Ordering::SeqCst);
    let mut failed = pin!(log.append(sid("s"), msg("lost", clock.now()), TTL));
    assert!(poll(failed.as_mut()).is_pending());
    assert!(poll(worker.as_mut()).is_pending());
    assert!(matches!(ready(failed), Err(AppendError::Store(_))));

    store.fail.store(false, Ordering::SeqCst);
    // The failure may have been ambiguous: a new epoch fences the failed write off before
    // anything later is shown, so it cannot appear below a position a reader already has.
    assert_eq!(write(&log, worker.as_mut(), "s", "kept")?, pos(2, 1));
    let read = ready(log.read(&sid("s"), Seq::ZERO, 10))?;
    assert_eq!(
        (seqs(&read), read.watermark),
        (vec![pos(2, 1).get()], pos(2, 1))
    );
    Ok(())
}

#[test]
fn expired_records_are_never_returned() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let (log, clock) = setup(store);
    let mut worker = pin!(log.run_commit_worker());
    for (id, ttl) in [("short", 1), ("long", 100)] {
        let mut append = pin!(log.append(sid("s"), msg(id, clock.now()), Duration::from_secs(ttl)));
        assert!(poll(append.as_mut()).is_pending());
        assert!(poll(worker.as_mut()).is_pending());
        ready(append)?;
    }
    clock.advance(Duration::from_secs(1));
    assert_eq!(seqs(&ready(log.read(&sid("s"), Seq::ZERO, 10))?), n(&[2]));
    assert_eq!(ready(log.purge_expired(100))?, 1);
    Ok(())
}

#[test]
fn close_releases_tail_readers_and_stops_workers_after_draining()
-> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let (log, clock) = setup(store);
    let s = sid("s");
    assert!(ready(log.read(&s, Seq::ZERO, 10))?.records.is_empty());
    let mut tail = pin!(log.wait_past(&s, Seq::ZERO));
    assert!(poll(tail.as_mut()).is_pending());
    let mut append = pin!(log.append(sid("s"), msg("last", clock.now()), TTL));
    assert!(poll(append.as_mut()).is_pending());
    log.close();
    assert!(!ready(tail)?, "released without a commit");
    // The queued append is still written, then the worker stops.
    ready(log.run_commit_worker());
    assert_eq!(ready(append)?, at(1));
    assert!(matches!(
        ready(log.append(sid("s"), msg("late", clock.now()), TTL)),
        Err(AppendError::ShuttingDown)
    ));
    Ok(())
}

#[test]
fn idle_streams_are_forgotten_and_reloaded() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let (log, clock) = setup(store);
    let mut worker = pin!(log.run_commit_worker());
    let mut append = pin!(log.append(sid("s"), msg("a", clock.now()), TTL));
    assert!(poll(append.as_mut()).is_pending());
    assert!(poll(worker.as_mut()).is_pending());
    ready(append)?;
    assert_eq!(log.sweep_idle(Duration::from_secs(10)), 0);
    clock.advance(Duration::from_secs(10));
    assert_eq!(log.sweep_idle(Duration::from_secs(10)), 1);
    assert_eq!(
        write(&log, worker.as_mut(), "s", "b")?,
        pos(2, 1),
        "acquired again"
    );
    Ok(())
}

#[test]
fn positions_keep_growing_after_every_record_was_purged() -> Result<(), Box<dyn std::error::Error>>
{
    let store = Arc::new(TestStore::default());
    let (log, clock) = setup(store.clone());
    let mut worker = pin!(log.run_commit_worker());
    let mut first = pin!(log.append(sid("s"), msg("a", clock.now()), Duration::from_secs(1)));
    assert!(poll(first.as_mut()).is_pending());
    assert!(poll(worker.as_mut()).is_pending());
    let first = ready(first)?;
    clock.advance(Duration::from_secs(2));
    assert_eq!(ready(log.purge_expired(10))?, 1);
    assert_eq!(
        ready(store.last_seq(&sid("s")))?,
        Seq::ZERO,
        "the store forgot the stream"
    );

    let (log, clock) = setup(store);
    clock.advance(Duration::from_secs(2));
    let mut worker = pin!(log.run_commit_worker());
    let mut next = pin!(log.append(sid("s"), msg("b", clock.now()), TTL));
    assert!(poll(next.as_mut()).is_pending());
    assert!(poll(worker.as_mut()).is_pending());
    assert!(
        ready(next)? > first,
        "an old token never points past new messages"
    );
    Ok(())
}

#[test]
fn an_append_refused_by_the_store_is_not_acknowledged_and_the_next_one_takes_the_stream_back()
-> Result<(), Box<dyn std::error::Error>> {
    // Two nodes over one store, both believing they own "s" (views differ during a move).
    let store = Arc::new(TestStore::default());
    let (a, _) = setup(store.clone());
    let (b, _) = setup(store.clone());
    let mut worker_a = pin!(a.run_commit_worker());
    let mut worker_b = pin!(b.run_commit_worker());
    assert_eq!(write(&a, worker_a.as_mut(), "s", "a1")?, pos(1, 1));
    assert_eq!(write(&b, worker_b.as_mut(), "s", "b1")?, pos(2, 1));

    // A still holds epoch 1: the store refuses its write, and nothing of it is stored.
    assert!(matches!(
        write(&a, worker_a.as_mut(), "s", "a2"),
        Err(AppendError::Fenced)
    ));
    assert_eq!(a.stats().fenced, 1);
    // Its next append acquires epoch 3: above everything B wrote, and B is fenced now.
    assert_eq!(write(&a, worker_a.as_mut(), "s", "a3")?, pos(3, 1));
    assert!(matches!(
        write(&b, worker_b.as_mut(), "s", "b2"),
        Err(AppendError::Fenced)
    ));
    let read = ready(a.read(&sid("s"), Seq::ZERO, 10))?;
    let ids: Vec<_> = read
        .records
        .iter()
        .map(|r| r.message.id().as_str())
        .collect();
    assert_eq!(ids, ["a1", "b1", "a3"], "one order, no refused message");
    Ok(())
}

#[test]
fn a_reader_with_a_position_of_a_later_epoch_makes_the_node_acquire_the_stream_again()
-> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let (a, _) = setup(store.clone());
    let (b, _) = setup(store.clone());
    let mut worker_a = pin!(a.run_commit_worker());
    let mut worker_b = pin!(b.run_commit_worker());
    write(&a, worker_a.as_mut(), "s", "a1")?;
    let b1 = write(&b, worker_b.as_mut(), "s", "b1")?;
    write(&b, worker_b.as_mut(), "s", "b2")?;

    // A's watermark is from epoch 1; a token from B's epoch shows A it is stale.
    let read = ready(a.read(&sid("s"), b1, 10))?;
    let ids: Vec<_> = read
        .records
        .iter()
        .map(|r| r.message.id().as_str())
        .collect();
    assert_eq!(ids, ["b2"], "what B wrote after the token");
    assert_eq!(read.watermark, pos(2, 2));
    Ok(())
}

#[test]
fn a_release_wakes_tail_readers_and_forgets_the_streams_it_does_not_keep()
-> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let (log, _) = setup(store);
    let mut worker = pin!(log.run_commit_worker());
    write(&log, worker.as_mut(), "moved", "m")?;
    write(&log, worker.as_mut(), "kept", "k")?;
    let moved = sid("moved");
    let mut tail = pin!(log.wait_past(&moved, at(1)));
    assert!(poll(tail.as_mut()).is_pending());

    assert_eq!(log.release(|s| s.as_str() == "kept"), 1);
    assert!(ready(tail)?, "the waiting reader looks again at once");
    assert_eq!(
        write(&log, worker.as_mut(), "moved", "m2")?,
        pos(2, 1),
        "a released stream is acquired again on its next use"
    );
    assert_eq!(write(&log, worker.as_mut(), "kept", "k2")?, at(2));
    Ok(())
}

#[test]
fn a_caught_up_reader_on_a_node_that_lost_its_stream_unseen_gets_what_the_other_node_wrote()
-> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let (a, clock) = setup(store.clone());
    let (b, _) = setup(store.clone());
    let mut worker_a = pin!(a.run_commit_worker());
    let mut worker_b = pin!(b.run_commit_worker());
    let a1 = write(&a, worker_a.as_mut(), "s", "a1")?;
    // B takes the stream (A's view never changed) and writes; A is not told.
    write(&b, worker_b.as_mut(), "s", "b1")?;

    // Until its next check, A serves its own end; then a reader at A's end, and one from the
    // start, both reach what B wrote.
    assert!(ready(a.read(&sid("s"), a1, 10))?.records.is_empty());
    clock.advance(LogConfig::default().tenure_check);
    let tail = ready(a.read(&sid("s"), a1, 10))?;
    let ids: Vec<_> = tail
        .records
        .iter()
        .map(|r| r.message.id().as_str())
        .collect();
    assert_eq!(ids, ["b1"], "the reader at A's old end");
    let all = ready(a.read(&sid("s"), Seq::ZERO, 10))?;
    assert_eq!(all.records.len(), 2, "a read from the start");
    assert_eq!(a.stats().overtaken, 1);

    // Holding the stream again, A's own appends follow B's.
    assert_eq!(write(&a, worker_a.as_mut(), "s", "a2")?, pos(3, 1));
    Ok(())
}

#[test]
fn appends_queued_together_take_positions_in_their_order_and_one_store_call()
-> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let (log, clock) = setup(store.clone());
    let mut worker = pin!(log.run_commit_worker());
    // Load both streams first, so that only the batch's own writes are counted.
    write(&log, worker.as_mut(), "a", "a0")?;
    write(&log, worker.as_mut(), "b", "b0")?;
    let before = store.appends.load(Ordering::SeqCst);
    let now = clock.now();
    let items = ["a1", "b1", "a2", "a3", "b2"].map(|id| Append {
        stream: sid(&id[..1]),
        message: msg(id, now),
        ttl: TTL,
        dedupe_window: Duration::ZERO,
    });
    let mut all = pin!(log.append_all(items));
    assert!(poll(all.as_mut()).is_pending());
    assert!(poll(worker.as_mut()).is_pending());
    let answers: Vec<Seq> = ready(all)
        .into_iter()
        .map(|w| w.map(|w| w.seq))
        .collect::<Result<_, _>>()?;
    assert_eq!(answers, [at(2), at(2), at(3), at(4), at(3)]);
    assert_eq!(
        store.appends.load(Ordering::SeqCst) - before,
        1,
        "one store call for the five"
    );
    Ok(())
}

#[test]
fn a_full_queue_refuses_appends_and_an_abandoned_append_is_never_written()
-> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let config = LogConfig {
        max_queued: 2,
        ..LogConfig::default()
    };
    let (log, clock) = setup_with(store.clone(), config);
    // No worker has run yet: what is appended waits in the queue.
    let mut kept = Box::pin(log.append(sid("s"), msg("kept", clock.now()), TTL));
    assert!(poll(kept.as_mut()).is_pending());
    let mut gone = Box::pin(log.append(sid("s"), msg("gone", clock.now()), TTL));
    assert!(poll(gone.as_mut()).is_pending());
    let refused = ready(log.append(sid("s"), msg("refused", clock.now()), TTL));
    assert!(
        matches!(refused, Err(AppendError::QueueFull { queued: 2, .. })),
        "{refused:?}"
    );
    // The second sender stops waiting (its request timed out): taken out, never written.
    drop(gone);
    let mut worker = pin!(log.run_commit_worker());
    assert!(poll(worker.as_mut()).is_pending());
    assert_eq!(ready(kept)?, at(1));
    let written: Vec<String> = lock(&store.records)
        .values()
        .map(|r| r.message.id().as_str().to_owned())
        .collect();
    assert_eq!(written, ["kept"]);
    // The refused one took no position; the abandoned one's is passed like a written one.
    assert_eq!(write(&log, worker.as_mut(), "s", "next")?, at(3));
    let read = ready(log.read(&sid("s"), Seq::ZERO, 10))?;
    assert_eq!((seqs(&read), read.watermark), (n(&[1, 3]), at(3)));
    let stats = log.stats();
    assert_eq!((stats.queue_full, stats.abandoned), (1, 1));

    // The byte bound: each of these is 1 + 3 bytes (its id and `"x"`).
    let config = LogConfig {
        max_queued_bytes: 8,
        ..LogConfig::default()
    };
    let (log, clock) = setup_with(Arc::new(TestStore::default()), config);
    let mut first = Box::pin(log.append(sid("b"), msg("a", clock.now()), TTL));
    let mut second = Box::pin(log.append(sid("b"), msg("b", clock.now()), TTL));
    assert!(poll(first.as_mut()).is_pending() && poll(second.as_mut()).is_pending());
    let refused = ready(log.append(sid("b"), msg("c", clock.now()), TTL));
    assert!(
        matches!(refused, Err(AppendError::QueueFull { bytes: 8, .. })),
        "{refused:?}"
    );
    let mut worker = pin!(log.run_commit_worker());
    assert!(poll(worker.as_mut()).is_pending());
    assert_eq!((ready(first)?, ready(second)?), (at(1), at(2)));
    assert_eq!(write(&log, worker.as_mut(), "b", "d")?, at(3), "room again");
    Ok(())
}

#[test]
fn the_shard_of_a_stream_is_keyed_per_log() {
    let shards_of = |log: &Log| -> Vec<usize> {
        (0..64)
            .map(|i| {
                let shard = log.inner.shard(&sid(&format!("s{i}")));
                log.inner
                    .shards
                    .iter()
                    .position(|s| std::ptr::eq(s, shard))
                    .unwrap_or(usize::MAX)
            })
            .collect()
    };
    let (a, _) = setup(Arc::new(TestStore::default()));
    let (b, _) = setup(Arc::new(TestStore::default()));
    // Two logs agreeing on all 64 streams' shards by chance: 64^-64.
    assert_ne!(
        shards_of(&a),
        shards_of(&b),
        "ids a client picks cannot aim at one lock"
    );
}

#[test]
fn past_its_maximum_of_streams_the_log_forgets_an_idle_one_or_refuses()
-> Result<(), Box<dyn std::error::Error>> {
    let config = LogConfig {
        shards: 1,
        max_streams: 2,
        ..LogConfig::default()
    };
    let (log, clock) = setup_with(Arc::new(TestStore::default()), config);
    let mut worker = pin!(log.run_commit_worker());
    write(&log, worker.as_mut(), "old", "o1")?;
    clock.advance(Duration::from_secs(1));
    write(&log, worker.as_mut(), "recent", "r1")?;
    clock.advance(Duration::from_secs(1));
    // A third stream takes the place of the least recently used idle one.
    write(&log, worker.as_mut(), "third", "t1")?;
    assert_eq!(log.stats().evicted, 1);
    let held: Vec<bool> = ["old", "recent", "third"]
        .iter()
        .map(|s| lock(&log.inner.shards[0]).contains_key(&sid(s)))
        .collect();
    assert_eq!(held, [false, true, true]);
    // The forgotten one is acquired again on its next use, and continues above its past.
    let next = write(&log, worker.as_mut(), "old", "o2")?;
    assert_eq!(next, pos(2, 1));
    assert_eq!(
        seqs(&ready(log.read(&sid("old"), Seq::ZERO, 10))?),
        [at(1).get(), pos(2, 1).get()]
    );

    // Streams with readers waiting at their tail are not idle: with nothing to forget, a new
    // stream is refused.
    let (a, b) = (sid("third"), sid("old"));
    let mut tail_a = pin!(log.wait_past(&a, at(1)));
    let mut tail_b = pin!(log.wait_past(&b, pos(2, 1)));
    assert!(poll(tail_a.as_mut()).is_pending() && poll(tail_b.as_mut()).is_pending());
    let refused = ready(log.append(sid("fourth"), msg("f1", clock.now()), TTL));
    assert!(
        matches!(refused, Err(AppendError::TooManyStreams { max: 2 })),
        "{refused:?}"
    );
    let refused = ready(log.read(&sid("fifth"), Seq::ZERO, 10));
    assert!(
        matches!(refused, Err(ReadError::TooManyStreams { max: 2 })),
        "{refused:?}"
    );
    Ok(())
}
