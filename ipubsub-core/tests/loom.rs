//! Loom models of the matching code's cancellation guarantees: whatever the interleaving, a
//! message is delivered exactly once, and a send that reports failure is never delivered.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p ipubsub-core --test loom --release`.
#![cfg(loom)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use std::time::Duration;

use ipubsub_core::{
    Engine, EngineConfig, Expired, LeaseError, Leased, ManualClock, Message, MessageId,
    ReceiveError, SendOptions, StreamId, Timestamp,
};
use loom::thread;

fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

fn engine() -> Engine {
    let mut config = EngineConfig::default();
    config.shards = 1;
    Engine::new(config)
}

fn sid() -> StreamId {
    StreamId::new("s").expect("valid id")
}

fn msg(id: &str) -> Message {
    Message::new(
        MessageId::new(id).expect("valid id"),
        Bytes::from_static(b"1"),
        Default::default(),
    )
}

const CIRCULAR: SendOptions = SendOptions {
    stream_size: 4,
    wait: false,
};

/// Takes every message left; then the memory budget must count nothing.
fn drain(e: &Engine) -> usize {
    let left = std::iter::from_fn(|| e.try_receive(&sid())).count();
    assert_eq!(
        e.stats().buffered_bytes,
        0,
        "the budget counts what nobody holds"
    );
    left
}

#[test]
fn a_dropped_receive_never_loses_its_message() {
    loom::model(|| {
        let e = engine();
        let rx = {
            let e = e.clone();
            thread::spawn(move || {
                let mut r = e.receive(sid());
                match poll(&mut r) {
                    Poll::Ready(Ok(_)) => 1,
                    Poll::Ready(Err(e)) => panic!("{e}"),
                    Poll::Pending => 0, // dropped here while waiting
                }
            })
        };
        let tx = {
            let e = e.clone();
            thread::spawn(move || {
                assert!(poll(&mut e.send(sid(), msg("m"), CIRCULAR)).is_ready());
            })
        };
        let got = rx.join().expect("receiver");
        tx.join().expect("sender");
        assert_eq!(got + drain(&e), 1);
    });
}

#[test]
fn an_abandoned_receive_returns_or_leaves_its_message() {
    loom::model(|| {
        let e = engine();
        let rx = {
            let e = e.clone();
            thread::spawn(move || {
                let mut r = e.receive(sid());
                match poll(&mut r) {
                    Poll::Ready(Ok(_)) => 1,
                    Poll::Ready(Err(e)) => panic!("{e}"),
                    Poll::Pending => usize::from(r.abandon().is_some()),
                }
            })
        };
        let tx = {
            let e = e.clone();
            thread::spawn(move || {
                assert!(poll(&mut e.send(sid(), msg("m"), CIRCULAR)).is_ready());
            })
        };
        let got = rx.join().expect("receiver");
        tx.join().expect("sender");
        assert_eq!(got + drain(&e), 1);
    });
}

#[test]
fn a_message_requeued_by_one_receiver_reaches_the_next_exactly_once() {
    loom::model(|| {
        let e = engine();
        // `first` is served first (FIFO) and is dropped while the send runs.
        let mut first = e.receive(sid());
        let mut second = e.receive(sid());
        assert!(poll(&mut first).is_pending());
        assert!(poll(&mut second).is_pending());
        let dropper = thread::spawn(move || drop(first));
        let tx = {
            let e = e.clone();
            thread::spawn(move || {
                assert!(poll(&mut e.send(sid(), msg("m"), CIRCULAR)).is_ready());
            })
        };
        dropper.join().expect("dropper");
        tx.join().expect("sender");
        let kept = match poll(&mut second) {
            Poll::Ready(Ok(_)) => 1,
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Pending => usize::from(second.abandon().is_some()),
        };
        assert_eq!(kept + drain(&e), 1);
    });
}

#[test]
fn an_abandoned_blocking_send_is_delivered_if_and_only_if_it_was_accepted() {
    loom::model(|| {
        let e = engine();
        let blocking = SendOptions {
            stream_size: 1,
            wait: true,
        };
        assert!(poll(&mut e.send(sid(), msg("a"), blocking)).is_ready());
        let tx = {
            let e = e.clone();
            thread::spawn(move || {
                let mut s = e.send(sid(), msg("b"), blocking);
                match poll(&mut s) {
                    Poll::Ready(result) => result.is_ok(),
                    Poll::Pending => s.abandon().is_ok(),
                }
            })
        };
        let rx = {
            let e = e.clone();
            thread::spawn(move || e.try_receive(&sid()).map(|m| m.id().to_string()))
        };
        let accepted = tx.join().expect("sender");
        let first = rx.join().expect("receiver");
        let mut ids: Vec<String> = first.into_iter().collect();
        ids.extend(std::iter::from_fn(|| e.try_receive(&sid())).map(|m| m.id().to_string()));
        let expected: &[&str] = if accepted { &["a", "b"] } else { &["a"] };
        assert_eq!(ids, expected);
        assert_eq!(
            e.stats().buffered_bytes,
            0,
            "the budget counts what nobody holds"
        );
    });
}

#[test]
fn close_never_leaves_a_receive_waiting() {
    loom::model(|| {
        let e = engine();
        let rx = {
            let e = e.clone();
            thread::spawn(move || {
                let mut r = e.receive(sid());
                if poll(&mut r).is_ready() {
                    return true;
                }
                // Wait for close, which must answer this receive.
                loop {
                    match poll(&mut r) {
                        Poll::Ready(result) => return result == Err(ReceiveError::ShuttingDown),
                        Poll::Pending => thread::yield_now(),
                    }
                }
            })
        };
        e.close();
        assert!(rx.join().expect("receiver"));
    });
}

/// An engine on a clock that the model moves past every lease.
fn leasing_engine() -> (Engine, std::sync::Arc<ManualClock>) {
    let mut config = EngineConfig::default();
    config.shards = 1;
    let clock = std::sync::Arc::new(ManualClock::new(Timestamp::from_micros(1_000_000)));
    (Engine::with_clock(config, clock.clone()), clock)
}

const LEASE: Duration = Duration::from_secs(10);

/// One message sent and taken under a lease whose deadline has passed.
fn one_leased(e: &Engine, clock: &ManualClock) -> Leased {
    assert!(poll(&mut e.send(sid(), msg("m"), CIRCULAR)).is_ready());
    let Poll::Ready(Ok(leased)) = poll(&mut e.receive_leased(sid(), LEASE)) else {
        panic!("a buffered message is taken at once");
    };
    clock.advance(LEASE);
    leased
}

/// The message once more, and how many times it was delivered, if it is on the stream.
fn left(e: &Engine) -> Option<u32> {
    let again = e.try_receive_leased(&sid(), LEASE, 10);
    assert!(again.len() <= 1, "one message at most");
    let deliveries = again.first().map(|l| l.deliveries);
    let handles: Vec<_> = again.iter().map(|l| l.handle).collect();
    assert!(e.ack(&sid(), &handles).iter().all(Result::is_ok));
    assert_eq!(e.stats().in_flight, 0, "nothing left in flight");
    assert_eq!(
        e.stats().buffered_bytes,
        0,
        "the budget counts what nobody holds"
    );
    deliveries
}

#[test]
fn an_ack_racing_the_deadline_either_completes_or_the_message_comes_back() {
    loom::model(|| {
        let (e, clock) = leasing_engine();
        let leased = one_leased(&e, &clock);
        let acker = {
            let e = e.clone();
            thread::spawn(move || e.ack(&sid(), &[leased.handle]).remove(0))
        };
        let redelivered = e.expire_leases().redelivered;
        let acked = acker.join().expect("acker");
        match acked {
            Ok(()) => assert_eq!((redelivered, left(&e)), (0, None)),
            Err(LeaseError::NotInFlight) => assert_eq!((redelivered, left(&e)), (1, Some(2))),
            Err(e) => panic!("{e}"),
        }
    });
}

#[test]
fn a_nack_racing_the_deadline_returns_the_message_once() {
    loom::model(|| {
        let (e, clock) = leasing_engine();
        let leased = one_leased(&e, &clock);
        let nacker = {
            let e = e.clone();
            thread::spawn(move || e.nack(&sid(), &[leased.handle], Duration::ZERO).remove(0))
        };
        let redelivered = e.expire_leases().redelivered;
        let nacked = nacker.join().expect("nacker");
        assert_eq!(usize::from(nacked.is_ok()) + redelivered, 1, "{nacked:?}");
        assert_eq!(left(&e), Some(2));
    });
}

#[test]
fn a_leased_receive_dropped_while_a_message_arrives_never_loses_it() {
    loom::model(|| {
        let (e, _clock) = leasing_engine();
        let rx = {
            let e = e.clone();
            thread::spawn(move || {
                let mut r = e.receive_leased(sid(), LEASE);
                match poll(&mut r) {
                    Poll::Ready(Ok(leased)) => Some(leased.handle),
                    Poll::Ready(Err(e)) => panic!("{e}"),
                    Poll::Pending => None, // dropped while waiting, or after a hand-over
                }
            })
        };
        assert!(poll(&mut e.send(sid(), msg("m"), CIRCULAR)).is_ready());
        let handle = rx.join().expect("receiver");
        if let Some(handle) = handle {
            assert_eq!(e.ack(&sid(), &[handle]), [Ok(())]);
            assert_eq!(left(&e), None);
        } else {
            // Never counted as a delivery: nobody answered with it.
            assert_eq!(left(&e), Some(1));
        }
    });
}

#[test]
fn an_ack_racing_a_drain_either_completes_or_the_message_moves() {
    loom::model(|| {
        let (e, clock) = leasing_engine();
        let leased = one_leased(&e, &clock);
        let acker = {
            let e = e.clone();
            thread::spawn(move || e.ack(&sid(), &[leased.handle]).remove(0))
        };
        let moved = e
            .drain_stream(&sid())
            .map_or(0, |d| d.messages.len() + d.in_flight.len());
        let acked = acker.join().expect("acker");
        assert_eq!(usize::from(acked.is_ok()) + moved, 1, "{acked:?}");
        assert_eq!(e.expire_leases(), Expired::default());
        assert_eq!(left(&e), None);
    });
}

#[test]
fn two_sends_of_one_id_racing_on_a_dedupe_stream_add_one_message() {
    loom::model(|| {
        let e = engine();
        e.set_dedupe_window(&sid(), Duration::from_secs(60))
            .expect("window");
        let senders: Vec<_> = (0..2)
            .map(|_| {
                let e = e.clone();
                thread::spawn(move || {
                    let Poll::Ready(sent) = poll(&mut e.send(sid(), msg("m"), CIRCULAR)) else {
                        panic!("a circular send completes at once");
                    };
                    sent.expect("accepted or a duplicate")
                })
            })
            .collect();
        let outcomes: Vec<_> = senders
            .into_iter()
            .map(|s| s.join().expect("sender"))
            .collect();
        let duplicates = outcomes
            .iter()
            .filter(|o| **o == ipubsub_core::SendOutcome::Duplicate)
            .count();
        assert_eq!(duplicates, 1, "{outcomes:?}");
        assert_eq!(drain(&e), 1);
    });
}
