//! A randomised stress test of matching under real threads: senders in all three modes with
//! give-ups and retries, receivers that time out, abandon or simply drop their receive. Every
//! accepted message must be received exactly once.
//!
//! The second test does the same with acknowledged receives: receivers that acknowledge,
//! return (now or after a delay), forget or drop what they took, on a clock that a third
//! party moves and expires leases on. Every message must be acknowledged exactly once, and
//! delivered again only after its lease ended.
//!
//! The seed is printed; rerun one with `IPUBSUB_STRESS_SEED=<seed>`.
#![cfg(not(loom))]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipubsub_core::{
    Clock, DeadLetter, Engine, EngineConfig, ManualClock, Message, MessageId, Redrive, SendOptions,
    StreamId, Timestamp,
};

const SENDERS: usize = 4;
const RECEIVERS: usize = 4;
const MESSAGES_PER_SENDER: usize = 2_000;
const STREAMS: usize = 6;
const TIME_LIMIT: Duration = Duration::from_secs(30);

/// xorshift64*: small, seedable, good enough to vary schedules.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `f` on this thread until it completes or `deadline` passes.
fn run_until<F: Future + Unpin>(f: &mut F, deadline: Instant) -> Option<F::Output> {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = Pin::new(&mut *f).poll(&mut cx) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::park_timeout(deadline - now);
    }
}

/// Stream `i`'s mode: circular (large enough never to evict), blocking queue, sync match.
fn options(stream: usize) -> SendOptions {
    match stream % 3 {
        0 => SendOptions {
            stream_size: 1_000_000,
            wait: false,
        },
        1 => SendOptions {
            stream_size: 3,
            wait: true,
        },
        _ => SendOptions {
            stream_size: 0,
            wait: true,
        },
    }
}

fn stream_id(i: usize) -> StreamId {
    StreamId::new(format!("stress-{i}")).expect("valid id")
}

/// The seed of this run: `IPUBSUB_STRESS_SEED`, else made up and printed.
fn seed() -> u64 {
    let seed = std::env::var("IPUBSUB_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ u64::from(std::process::id())
        });
    println!("stress seed: {seed} (rerun with IPUBSUB_STRESS_SEED={seed})");
    seed
}

/// Sends `count` messages from sender `p`, ids `{p}-{n}`, to random streams, retrying each
/// until it is accepted.
fn send_all(engine: &Engine, p: usize, count: usize, rng: &mut Rng, started: Instant) {
    for n in 0..count {
        let stream = rng.below(STREAMS as u64) as usize;
        let id = format!("{p}-{n}");
        // Retry until accepted: a give-up is definitive, so a retry never duplicates.
        loop {
            assert!(started.elapsed() < TIME_LIMIT, "senders stuck");
            let message = Message::new(
                MessageId::new(id.clone()).expect("id"),
                Bytes::from_static(b"0"),
                engine.now(),
            );
            let mut send = engine.send(stream_id(stream), message, options(stream));
            let deadline = Instant::now() + Duration::from_micros(rng.below(2_000));
            let result = match run_until(&mut send, deadline) {
                Some(result) => result,
                None => send.abandon(),
            };
            if result.is_ok() {
                break;
            }
        }
    }
}

#[test]
fn every_accepted_message_is_received_exactly_once() {
    let seed = seed();

    let engine = Engine::default();
    let received = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let received_count = Arc::new(AtomicUsize::new(0));
    let senders_done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let total = SENDERS * MESSAGES_PER_SENDER;
    let (requeued_drops, abandoned_with_message) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));

    let senders: Vec<_> = (0..SENDERS)
        .map(|p| {
            let engine = engine.clone();
            let mut rng = Rng(seed.wrapping_add(p as u64 + 1) | 1);
            thread::spawn(move || send_all(&engine, p, MESSAGES_PER_SENDER, &mut rng, started))
        })
        .collect();

    let receivers: Vec<_> = (0..RECEIVERS)
        .map(|r| {
            let engine = engine.clone();
            let received = received.clone();
            let received_count = received_count.clone();
            let senders_done = senders_done.clone();
            let requeued_drops = requeued_drops.clone();
            let abandoned_with_message = abandoned_with_message.clone();
            let mut rng = Rng(seed.wrapping_mul(31).wrapping_add(r as u64 + 101) | 1);
            thread::spawn(move || {
                while !(senders_done.load(Ordering::SeqCst)
                    && received_count.load(Ordering::SeqCst) >= total)
                {
                    assert!(started.elapsed() < TIME_LIMIT, "receivers stuck");
                    let stream = rng.below(STREAMS as u64) as usize;
                    let mut receive = engine.receive(stream_id(stream));
                    let deadline = Instant::now() + Duration::from_micros(rng.below(3_000));
                    let got = match run_until(&mut receive, deadline) {
                        Some(result) => Some(result.expect("receive")),
                        None if rng.below(2) == 0 => {
                            let got = receive.abandon();
                            if got.is_some() {
                                abandoned_with_message.fetch_add(1, Ordering::Relaxed);
                            }
                            got
                        }
                        None => {
                            // Dropped while waiting: anything handed to it must be requeued.
                            drop(receive);
                            requeued_drops.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                    };
                    if let Some(message) = got {
                        *received
                            .lock()
                            .expect("lock")
                            .entry(message.id().to_string())
                            .or_default() += 1;
                        received_count.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();

    for s in senders {
        s.join().expect("sender thread");
    }
    senders_done.store(true, Ordering::SeqCst);
    for r in receivers {
        r.join().expect("receiver thread");
    }

    let received = received.lock().expect("lock");
    let duplicates: Vec<_> = received.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "seed {seed}: duplicated {duplicates:?}"
    );
    assert_eq!(
        received.len(),
        total,
        "seed {seed}: lost {} messages",
        total - received.len()
    );
    for i in 0..STREAMS {
        assert!(
            engine.try_receive(&stream_id(i)).is_none(),
            "seed {seed}: a message was left behind"
        );
    }
    assert_eq!(engine.stats().waiters, 0);
    assert_eq!(
        engine.stats().buffered_bytes,
        0,
        "seed {seed}: the memory budget still counts messages nobody holds"
    );
    println!(
        "{total} messages, {} dropped receives, {} abandoned receives that got a message, {:?}",
        requeued_drops.load(Ordering::Relaxed),
        abandoned_with_message.load(Ordering::Relaxed),
        started.elapsed()
    );
}

/// What a receiver of the acknowledged stress test did with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Acknowledged: whether the acknowledgement was taken.
    Acked(bool),
    Returned,
    Forgotten,
}

/// One delivery, as its receiver saw it.
#[derive(Debug)]
struct Delivery {
    deliveries: u32,
    /// The clock before the receive was made, and after it returned.
    before: Timestamp,
    after: Timestamp,
    outcome: Outcome,
}

/// The lease of the acknowledged stress test, on its manual clock.
const LEASE: Duration = Duration::from_millis(50);

#[test]
fn every_message_is_acknowledged_exactly_once_and_redelivered_only_after_its_lease() {
    run_acknowledged(0);
}

/// With `maxDeliveries` 3 and a dead-letter stream: every message is acknowledged once or
/// dead-lettered once after its third delivery, never both, never delivered a fourth time.
#[test]
fn every_message_is_acknowledged_or_dead_lettered_exactly_once() {
    run_acknowledged(3);
}

/// The acknowledged stress test, with `max_deliveries` (0: no limit) on every stream.
fn run_acknowledged(max_deliveries: u32) {
    let seed = seed();
    let clock = Arc::new(ManualClock::new(Timestamp::from_micros(1_000_000)));
    let engine = Engine::with_clock(EngineConfig::default(), clock.clone());
    let dlq = StreamId::new("stress-dlq").expect("id");
    for i in 0..STREAMS {
        let redrive = Redrive::new(max_deliveries, Some(dlq.clone()));
        engine.set_redrive(&stream_id(i), redrive).expect("redrive");
    }
    let log = Arc::new(Mutex::new(HashMap::<String, Vec<Delivery>>::new()));
    // Dead letters by message id.
    let dead = Arc::new(Mutex::new(HashMap::<String, Vec<u32>>::new()));
    // Messages acknowledged or dead-lettered.
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let total = SENDERS * MESSAGES_PER_SENDER / 4;
    let note_dead = {
        let (dead, acked) = (dead.clone(), acked.clone());
        move |letter: &DeadLetter| {
            assert_eq!(letter.dead_letter, StreamId::new("stress-dlq").expect("id"));
            let id = letter.message.id().to_string();
            dead.lock()
                .expect("lock")
                .entry(id)
                .or_default()
                .push(letter.deliveries);
            acked.fetch_add(1, Ordering::SeqCst);
        }
    };

    // Time moves in 1 ms steps, and every step ends the leases that are due.
    let ticker = {
        let (engine, clock, stop) = (engine.clone(), clock.clone(), stop.clone());
        let note_dead = note_dead.clone();
        thread::spawn(move || {
            let mut redelivered = 0;
            while !stop.load(Ordering::SeqCst) {
                clock.advance(Duration::from_millis(1));
                let expired = engine.expire_leases();
                redelivered += expired.redelivered;
                expired.dead_letters.iter().for_each(&note_dead);
                thread::sleep(Duration::from_micros(100));
            }
            redelivered
        })
    };
    let senders: Vec<_> = (0..SENDERS)
        .map(|p| {
            let engine = engine.clone();
            let mut rng = Rng(seed.wrapping_add(p as u64 + 7) | 1);
            thread::spawn(move || send_all(&engine, p, total / SENDERS, &mut rng, started))
        })
        .collect();
    let receivers: Vec<_> = (0..RECEIVERS)
        .map(|r| {
            let (engine, clock, log, acked) =
                (engine.clone(), clock.clone(), log.clone(), acked.clone());
            let note_dead = note_dead.clone();
            let mut rng = Rng(seed.wrapping_mul(17).wrapping_add(r as u64 + 3) | 1);
            thread::spawn(move || {
                while acked.load(Ordering::SeqCst) < total {
                    assert!(
                        started.elapsed() < TIME_LIMIT,
                        "seed {seed}: receivers stuck"
                    );
                    let stream = stream_id(rng.below(STREAMS as u64) as usize);
                    let before = clock.now();
                    let mut receive = engine.receive_leased(stream.clone(), LEASE);
                    let deadline = Instant::now() + Duration::from_micros(rng.below(3_000));
                    let got = match run_until(&mut receive, deadline) {
                        Some(result) => Some(result.expect("receive")),
                        None if rng.below(2) == 0 => receive.abandon(),
                        None => None, // dropped: a message handed to it goes back
                    };
                    drop(receive);
                    let Some(got) = got else { continue };
                    let after = clock.now();
                    let outcome = match rng.below(10) {
                        0 => Outcome::Forgotten,
                        1 => {
                            let delay = Duration::from_millis(rng.below(3) * 10);
                            let back = engine.nack(&stream, &[got.handle], delay);
                            // Refused only when the lease ended first (a slow receiver).
                            match &back[0] {
                                Ok(letter) => {
                                    letter.iter().for_each(&note_dead);
                                    Outcome::Returned
                                }
                                Err(_) => Outcome::Forgotten,
                            }
                        }
                        _ => {
                            let taken = engine.ack(&stream, &[got.handle])[0].is_ok();
                            if taken {
                                acked.fetch_add(1, Ordering::SeqCst);
                            }
                            Outcome::Acked(taken)
                        }
                    };
                    let delivery = Delivery {
                        deliveries: got.deliveries,
                        before,
                        after,
                        outcome,
                    };
                    let mut log = log.lock().expect("lock");
                    log.entry(got.message.id().to_string())
                        .or_default()
                        .push(delivery);
                }
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender thread");
    }
    for r in receivers {
        r.join().expect("receiver thread");
    }
    stop.store(true, Ordering::SeqCst);
    let redelivered = ticker.join().expect("ticker");

    let mut log = log.lock().expect("lock");
    assert_eq!(log.len(), total, "seed {seed}: lost messages");
    for (id, deliveries) in log.iter_mut() {
        deliveries.sort_by_key(|d| d.deliveries);
        let numbers: Vec<_> = deliveries.iter().map(|d| d.deliveries).collect();
        let expected: Vec<_> = (1..=deliveries.len() as u32).collect();
        assert_eq!(numbers, expected, "seed {seed}: {id}'s delivery counts");
        let acks: Vec<_> = deliveries
            .iter()
            .map(|d| d.outcome == Outcome::Acked(true))
            .collect();
        let acked = acks.iter().filter(|a| **a).count();
        let letters = dead
            .lock()
            .expect("lock")
            .get(id.as_str())
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            acked + letters.len(),
            1,
            "seed {seed}: {id}: {deliveries:?} {letters:?}"
        );
        if acked == 1 {
            assert!(
                acks[acks.len() - 1],
                "seed {seed}: {id} delivered after its ack"
            );
        } else {
            assert_eq!(
                letters,
                [max_deliveries],
                "seed {seed}: {id} dead too soon or late"
            );
        }
        if max_deliveries > 0 {
            assert!(
                deliveries.len() <= max_deliveries as usize,
                "seed {seed}: {id} past its limit"
            );
        }
        for pair in deliveries.windows(2) {
            if pair[0].outcome != Outcome::Returned {
                let gap = pair[1].after.saturating_since(pair[0].before);
                assert!(gap >= LEASE, "seed {seed}: {id} redelivered after {gap:?}");
            }
        }
    }
    let stats = engine.stats();
    assert_eq!(
        (stats.in_flight, stats.buffered_bytes),
        (0, 0),
        "seed {seed}"
    );
    assert!(
        redelivered > 0 && stats.nacked > 0,
        "seed {seed}: no lease ever ended"
    );
    let again = log.values().filter(|d| d.len() > 1).count();
    let dead = dead.lock().expect("lock").len();
    assert_eq!(dead > 0, max_deliveries > 0, "seed {seed}: dead letters");
    println!(
        "max deliveries {max_deliveries}: {total} messages, {dead} dead-lettered, the rest acknowledged once each; {again} delivered more than once ({redelivered} leases ended, {} returned), {:?}",
        stats.nacked,
        started.elapsed()
    );
}
