use std::collections::BTreeMap;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::id::MessageId;
use crate::time::ManualClock;

/// A minimal store for the log's own tests: a map, plus a gate that can hold the first append
/// and a switch that fails appends.
#[derive(Default)]
struct TestStore {
    records: Mutex<BTreeMap<(String, u64), LogRecord>>,
    appends: AtomicUsize,
    hold_first: AtomicBool,
    released: AtomicBool,
    fail: AtomicBool,
    gate_waker: Mutex<Option<Waker>>,
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
    async fn append(&self, batch: &[LogRecord]) -> Result<(), StoreError> {
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
        let mut records = lock(&self.records);
        for r in batch {
            records.insert((r.stream.to_string(), r.seq.get()), r.clone());
        }
        Ok(())
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
    let clock = Arc::new(ManualClock::new(Timestamp::from_micros(1_000_000)));
    (
        Log::with_clock(store, LogConfig::default(), clock.clone()),
        clock,
    )
}

const TTL: Duration = Duration::from_secs(60);

/// The clock's start in microseconds: positions start there (see `StreamLog::assign`).
const T: u64 = 1_000_000;

/// The `i`-th position (from 1) handed out while the clock stands still at `T`.
fn at(i: u64) -> Seq {
    Seq::new(T + i - 1)
}

fn n(seqs: &[u64]) -> Vec<u64> {
    seqs.iter().map(|&i| at(i).get()).collect()
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
    // A new log over the same store continues from the store's last position.
    let (log, clock) = setup(store);
    let mut worker = pin!(log.run_commit_worker());
    let mut append = pin!(log.append(sid("s"), msg("m4", clock.now()), TTL));
    assert!(poll(append.as_mut()).is_pending());
    assert!(poll(worker.as_mut()).is_pending());
    assert_eq!(ready(append)?, at(4));
    assert_eq!(
        seqs(&ready(log.read(&sid("s"), Seq::ZERO, 10))?),
        n(&[1, 2, 3, 4])
    );
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
fn a_failed_batch_is_not_acknowledged_and_its_positions_are_skipped()
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
    let mut ok = pin!(log.append(sid("s"), msg("kept", clock.now()), TTL));
    assert!(poll(ok.as_mut()).is_pending());
    assert!(poll(worker.as_mut()).is_pending());
    assert_eq!(ready(ok)?, at(2), "position 1 is never reused");
    let read = ready(log.read(&sid("s"), Seq::ZERO, 10))?;
    assert_eq!((seqs(&read), read.watermark), (n(&[2]), at(2)));
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
    let mut append = pin!(log.append(sid("s"), msg("b", clock.now()), TTL));
    assert!(poll(append.as_mut()).is_pending());
    assert!(poll(worker.as_mut()).is_pending());
    assert_eq!(
        ready(append)?,
        Seq::new(T + 10_000_000),
        "the clock moved on"
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
