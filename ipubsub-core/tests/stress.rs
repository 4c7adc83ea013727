//! A randomised stress test of matching under real threads: senders in all three modes with
//! give-ups and retries, receivers that time out, abandon or simply drop their receive. Every
//! accepted message must be received exactly once.
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
use ipubsub_core::{Engine, Message, MessageId, SendOptions, StreamId};

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

#[test]
fn every_accepted_message_is_received_exactly_once() {
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
            thread::spawn(move || {
                for n in 0..MESSAGES_PER_SENDER {
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
            })
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
