mod dedupe;
mod leases;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use super::*;
use crate::error::{ReceiveError, SendError};
use crate::id::MessageId;
use crate::time::ManualClock;

fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

#[track_caller]
fn ready<F: Future + Unpin>(mut f: F) -> F::Output {
    match poll(&mut f) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("future was pending"),
    }
}

fn engine_with(config: EngineConfig) -> (Engine, std::sync::Arc<ManualClock>) {
    let clock = std::sync::Arc::new(ManualClock::new(Timestamp::from_micros(1_000_000)));
    (Engine::with_clock(config, clock.clone()), clock)
}

fn engine() -> Engine {
    engine_with(EngineConfig::default()).0
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).expect("valid stream id")
}

fn msg(id: &str) -> Message {
    Message::new(
        MessageId::new(id).expect("valid message id"),
        Bytes::copy_from_slice(format!("\"{id}\"").as_bytes()),
        Timestamp::from_micros(7),
    )
}

fn circular(size: u32) -> SendOptions {
    SendOptions {
        stream_size: size,
        wait: false,
    }
}

fn waiting(size: u32) -> SendOptions {
    SendOptions {
        stream_size: size,
        wait: true,
    }
}

fn id_of(m: &Message) -> &str {
    m.id().as_str()
}

#[test]
fn circular_buffer_evicts_oldest() {
    let e = engine();
    assert_eq!(
        ready(e.send(sid("s"), msg("a"), circular(2))),
        Ok(SendOutcome::Buffered { evicted: 0 })
    );
    ready(e.send(sid("s"), msg("b"), circular(2))).expect("send b");
    assert_eq!(
        ready(e.send(sid("s"), msg("c"), circular(2))),
        Ok(SendOutcome::Buffered { evicted: 1 })
    );
    assert_eq!(id_of(&ready(e.receive(sid("s"))).expect("b")), "b");
    assert_eq!(id_of(&ready(e.receive(sid("s"))).expect("c")), "c");
    assert!(e.try_receive(&sid("s")).is_none());
}

#[test]
fn send_serves_waiting_receivers_in_arrival_order() {
    let e = engine();
    let mut first = e.receive(sid("s"));
    let mut second = e.receive(sid("s"));
    assert!(poll(&mut first).is_pending());
    assert!(poll(&mut second).is_pending());
    assert_eq!(e.stats().waiters, 2);
    assert_eq!(
        ready(e.send(sid("s"), msg("1"), circular(10))),
        Ok(SendOutcome::Delivered)
    );
    ready(e.send(sid("s"), msg("2"), circular(10))).expect("send 2");
    assert_eq!(id_of(&ready(first).expect("first")), "1");
    assert_eq!(id_of(&ready(second).expect("second")), "2");
    assert_eq!(e.stats().waiters, 0);
}

#[test]
fn blocking_send_waits_for_room_then_is_buffered() {
    let e = engine();
    ready(e.send(sid("s"), msg("a"), waiting(1))).expect("room for a");
    let mut b = e.send(sid("s"), msg("b"), waiting(1));
    let mut c = e.send(sid("s"), msg("c"), waiting(1));
    assert!(poll(&mut b).is_pending());
    assert!(poll(&mut c).is_pending());
    assert_eq!(id_of(&ready(e.receive(sid("s"))).expect("a")), "a");
    assert_eq!(ready(b), Ok(SendOutcome::Buffered { evicted: 0 }));
    assert!(poll(&mut c).is_pending(), "c is still behind b");
    assert_eq!(id_of(&ready(e.receive(sid("s"))).expect("b")), "b");
    assert_eq!(id_of(&ready(e.receive(sid("s"))).expect("c")), "c");
    assert_eq!(ready(c), Ok(SendOutcome::Buffered { evicted: 0 }));
}

#[test]
fn abandoned_blocking_send_is_never_delivered() {
    let e = engine();
    ready(e.send(sid("s"), msg("a"), waiting(1))).expect("room for a");
    let mut b = e.send(sid("s"), msg("b"), waiting(1));
    assert!(poll(&mut b).is_pending());
    assert_eq!(b.abandon(), Err(SendError::StreamFull));
    assert_eq!(id_of(&ready(e.receive(sid("s"))).expect("a")), "a");
    assert!(e.try_receive(&sid("s")).is_none());
    assert_eq!(e.stats().waiters, 0);
}

#[test]
fn abandon_after_acceptance_reports_success() {
    let e = engine();
    ready(e.send(sid("s"), msg("a"), waiting(1))).expect("room for a");
    let mut b = e.send(sid("s"), msg("b"), waiting(1));
    assert!(poll(&mut b).is_pending());
    ready(e.receive(sid("s"))).expect("a");
    // The timeout fires after b was let in but before b was polled again.
    assert_eq!(b.abandon(), Ok(SendOutcome::Buffered { evicted: 0 }));
    assert_eq!(id_of(&ready(e.receive(sid("s"))).expect("b")), "b");
}

#[test]
fn sync_match_hands_over_directly() {
    let e = engine();
    let mut send = e.send(sid("s"), msg("x"), waiting(0));
    assert!(poll(&mut send).is_pending());
    assert_eq!(id_of(&ready(e.receive(sid("s"))).expect("x")), "x");
    assert_eq!(ready(send), Ok(SendOutcome::Delivered));

    let mut recv = e.receive(sid("s"));
    assert!(poll(&mut recv).is_pending());
    assert_eq!(
        ready(e.send(sid("s"), msg("y"), waiting(0))),
        Ok(SendOutcome::Delivered)
    );
    assert_eq!(id_of(&ready(recv).expect("y")), "y");
}

#[test]
fn sync_match_without_receiver_gives_up_with_no_receiver() {
    let e = engine();
    let mut send = e.send(sid("s"), msg("x"), waiting(0));
    assert!(poll(&mut send).is_pending());
    assert_eq!(send.abandon(), Err(SendError::NoReceiver));
    assert!(e.try_receive(&sid("s")).is_none());
}

#[test]
fn bufferless_stream_refuses_a_non_waiting_send_without_receiver() {
    let e = engine();
    assert_eq!(
        ready(e.send(sid("s"), msg("x"), circular(0))),
        Err(SendError::NoReceiver)
    );
}

#[test]
fn dropped_receiver_puts_its_message_back_in_front() {
    let e = engine();
    let mut lost = e.receive(sid("s"));
    assert!(poll(&mut lost).is_pending());
    assert_eq!(
        ready(e.send(sid("s"), msg("1"), circular(10))),
        Ok(SendOutcome::Delivered)
    );
    ready(e.send(sid("s"), msg("2"), circular(10))).expect("send 2");
    drop(lost);
    assert_eq!(id_of(&ready(e.receive(sid("s"))).expect("1")), "1");
    assert_eq!(id_of(&ready(e.receive(sid("s"))).expect("2")), "2");
}

#[test]
fn dropped_receiver_passes_its_message_to_the_next_waiter() {
    let e = engine();
    let mut lost = e.receive(sid("s"));
    let mut next = e.receive(sid("s"));
    assert!(poll(&mut lost).is_pending());
    assert!(poll(&mut next).is_pending());
    ready(e.send(sid("s"), msg("1"), circular(10))).expect("send");
    drop(lost);
    assert_eq!(id_of(&ready(next).expect("1")), "1");
}

#[test]
fn abandon_returns_a_message_handed_over_in_the_race() {
    let e = engine();
    let mut r = e.receive(sid("s"));
    assert!(poll(&mut r).is_pending());
    ready(e.send(sid("s"), msg("1"), circular(10))).expect("send");
    assert_eq!(r.abandon().as_ref().map(id_of), Some("1"));
    assert!(e.try_receive(&sid("s")).is_none());
}

#[test]
fn abandoned_receivers_leave_no_trace() {
    let (e, _) = engine_with(EngineConfig::default());
    for _ in 0..1000 {
        let mut r = e.receive(sid("s"));
        assert!(poll(&mut r).is_pending());
        assert!(r.abandon().is_none());
    }
    let mut held: Vec<_> = (0..100).map(|_| e.receive(sid("s"))).collect();
    for r in &mut held {
        assert!(poll(r).is_pending());
    }
    drop(held);
    assert_eq!(e.stats().waiters, 0);
    let (hash, shard) = e.inner.locate(&sid("s"));
    let mut table = shard.table.lock();
    let stream = Inner::find_mut(&mut table, hash, &sid("s")).expect("stream");
    assert!(!stream.has_waiting_queues(), "waiter queues freed");
}

#[test]
fn buffer_grows_with_content_not_with_declared_size() {
    let e = engine();
    ready(e.send(sid("s"), msg("1"), circular(1_000_000))).expect("send");
    let (hash, shard) = e.inner.locate(&sid("s"));
    let mut table = shard.table.lock();
    let stream = Inner::find_mut(&mut table, hash, &sid("s")).expect("stream");
    assert_eq!(stream.buffer_capacity(), 1);
}

#[test]
fn first_send_fixes_the_size_of_a_stream_a_receiver_created() {
    let e = engine();
    let mut r = e.receive(sid("s"));
    assert!(poll(&mut r).is_pending());
    assert!(r.abandon().is_none());
    ready(e.send(sid("s"), msg("a"), circular(1))).expect("a");
    ready(e.send(sid("s"), msg("b"), circular(50))).expect("b");
    assert_eq!(e.buffered(&sid("s")), Some(1), "size stays 1");
    assert_eq!(id_of(&ready(e.receive(sid("s"))).expect("b")), "b");
}

#[test]
fn idle_streams_are_swept_after_the_timeout_only() {
    let (e, clock) = engine_with(EngineConfig {
        stream_idle_timeout: Duration::from_secs(60),
        ..EngineConfig::default()
    });
    ready(e.send(sid("empty"), msg("a"), circular(5))).expect("send");
    ready(e.receive(sid("empty"))).expect("receive");
    ready(e.send(sid("full"), msg("b"), circular(5))).expect("send");
    let mut waiter = e.receive(sid("waited"));
    assert!(poll(&mut waiter).is_pending());
    assert_eq!(e.stats().streams, 3);

    clock.advance(Duration::from_secs(59));
    assert_eq!(e.sweep_idle(), 0);
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        e.sweep_idle(),
        1,
        "only the empty stream without waiters goes"
    );
    assert_eq!(e.stats().streams, 2);
    assert_eq!(e.buffered(&sid("empty")), None);
    assert_eq!(e.buffered(&sid("full")), Some(1));

    assert!(waiter.abandon().is_none());
    assert_eq!(e.sweep_idle(), 1);
}

#[test]
fn the_sweep_counts_buffered_messages() {
    let e = engine();
    assert_eq!(e.stats().buffered_at_last_sweep, 0);
    for (stream, id) in [("a", "1"), ("a", "2"), ("b", "3")] {
        ready(e.send(sid(stream), msg(id), circular(5))).expect("send");
    }
    assert_eq!(
        e.stats().buffered_at_last_sweep,
        0,
        "counted by sweeps only"
    );
    e.sweep_idle();
    assert_eq!(e.stats().buffered_at_last_sweep, 3);
    ready(e.receive(sid("a"))).expect("receive");
    e.sweep_idle();
    assert_eq!(e.stats().buffered_at_last_sweep, 2);
}

#[test]
fn idle_time_is_kept_in_seconds_rounded_so_a_stream_never_goes_early() {
    let (e, clock) = engine_with(EngineConfig {
        stream_idle_timeout: Duration::from_secs(60),
        ..EngineConfig::default()
    });
    clock.advance(Duration::from_millis(500));
    ready(e.send(sid("s"), msg("a"), circular(5))).expect("send");
    ready(e.receive(sid("s"))).expect("receive");
    // Last used at 1.5 s: idle for 59.6 s is not yet 60.
    clock.advance(Duration::from_millis(59_600));
    assert_eq!(e.sweep_idle(), 0);
    // 60.6 s: gone (at most a second after the timeout).
    clock.advance(Duration::from_secs(1));
    assert_eq!(e.sweep_idle(), 1);
}

#[test]
fn a_size_of_u32_max_still_fixes_the_stream() {
    let e = engine();
    ready(e.send(sid("s"), msg("a"), circular(u32::MAX))).expect("a");
    ready(e.send(sid("s"), msg("b"), circular(1))).expect("b");
    assert_eq!(
        e.buffered(&sid("s")),
        Some(2),
        "the first send's size holds"
    );
}

#[test]
fn stream_limit_refuses_new_streams_only() {
    let (e, _) = engine_with(EngineConfig {
        max_streams: 2,
        ..EngineConfig::default()
    });
    ready(e.send(sid("a"), msg("1"), circular(5))).expect("a");
    ready(e.send(sid("b"), msg("1"), circular(5))).expect("b");
    assert_eq!(
        ready(e.send(sid("c"), msg("1"), circular(5))),
        Err(SendError::TooManyStreams { max: 2 })
    );
    assert_eq!(
        ready(e.receive(sid("c"))),
        Err(ReceiveError::TooManyStreams { max: 2 })
    );
    ready(e.send(sid("a"), msg("2"), circular(5))).expect("existing stream still works");
}

#[test]
fn waiter_limit_refuses_the_next_waiter() {
    let (e, _) = engine_with(EngineConfig {
        max_waiters: 1,
        ..EngineConfig::default()
    });
    let mut r1 = e.receive(sid("a"));
    assert!(poll(&mut r1).is_pending());
    assert_eq!(
        ready(e.receive(sid("b"))),
        Err(ReceiveError::TooManyWaiters { max: 1 })
    );
    ready(e.send(sid("full"), msg("1"), waiting(1))).expect("room");
    assert_eq!(
        ready(e.send(sid("full"), msg("2"), waiting(1))),
        Err(SendError::TooManyWaiters { max: 1 })
    );
    drop(r1);
    let mut r2 = e.receive(sid("b"));
    assert!(poll(&mut r2).is_pending(), "the place was given back");
}

#[test]
fn close_answers_every_waiter_and_refuses_new_work() {
    let e = engine();
    let mut r = e.receive(sid("r"));
    assert!(poll(&mut r).is_pending());
    ready(e.send(sid("s"), msg("a"), waiting(1))).expect("room");
    let mut s = e.send(sid("s"), msg("b"), waiting(1));
    assert!(poll(&mut s).is_pending());

    e.close();
    assert_eq!(ready(r), Err(ReceiveError::ShuttingDown));
    assert_eq!(ready(s), Err(SendError::ShuttingDown));
    assert_eq!(
        ready(e.send(sid("s"), msg("c"), circular(5))),
        Err(SendError::ShuttingDown)
    );
    assert_eq!(ready(e.receive(sid("s"))), Err(ReceiveError::ShuttingDown));
    let drained = e.drain();
    assert_eq!(drained.len(), 1);
    assert_eq!(
        drained[0].messages.iter().map(id_of).collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(drained[0].size, Some(1));
    assert_eq!(e.stats().waiters, 0);
}

#[test]
fn try_receive_many_takes_what_is_there_in_order() {
    let e = engine();
    for id in ["a", "b", "c"] {
        ready(e.send(sid("s"), msg(id), circular(10))).expect("send");
    }
    let got = e.try_receive_many(&sid("s"), 2);
    assert_eq!(got.iter().map(id_of).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(e.try_receive_many(&sid("s"), 10).len(), 1);
    assert!(e.try_receive_many(&sid("none"), 10).is_empty());
}

#[test]
fn an_idle_stream_record_fits_mimallocs_96_byte_class() {
    // 1,000,000 streams of one message each must fit in 400 MB (issue 7): the record holds
    // the id, the one message inline and the bookkeeping; one byte more and every stream
    // pays for the next allocator size class (112 B).
    assert!(
        std::mem::size_of::<super::stream::Stream>() <= 96,
        "{}",
        std::mem::size_of::<super::stream::Stream>()
    );
}

#[test]
fn a_drained_stream_answers_its_waiting_requests_moved_and_takes_nothing_from_them() {
    let e = engine();
    // Sync match: a sender waits for a receiver that never comes here.
    let mut sync = e.send(sid("sync"), msg("x"), waiting(0));
    assert!(poll(&mut sync).is_pending());
    // Blocking queue of one: "a" is accepted, "b" waits for room.
    ready(e.send(sid("queue"), msg("a"), waiting(1))).expect("a is accepted");
    let mut blocked = e.send(sid("queue"), msg("b"), waiting(1));
    assert!(poll(&mut blocked).is_pending());
    // A receiver waits on an empty stream.
    let mut receiver = e.receive(sid("empty"));
    assert!(poll(&mut receiver).is_pending());

    let drained = e.drain_streams(|_| true);
    let taken: Vec<(&str, Vec<&str>)> = drained
        .iter()
        .map(|d| (d.stream.as_str(), d.messages.iter().map(id_of).collect()))
        .collect();
    assert_eq!(
        taken,
        [("queue", vec!["a"])],
        "only what was accepted leaves"
    );
    assert_eq!(
        ready(sync),
        Err(SendError::Moved),
        "never 'delivered' to nobody"
    );
    assert_eq!(
        ready(blocked),
        Err(SendError::Moved),
        "never admitted, then evicted"
    );
    assert_eq!(ready(receiver), Err(ReceiveError::Moved));
    assert_eq!(e.stats().waiters, 0);
    // The streams work as before for whoever comes next.
    ready(e.send(sid("queue"), msg("c"), waiting(1))).expect("room again");
    assert_eq!(
        ready(e.receive(sid("queue"))).map(|m| id_of(&m).to_owned()),
        Ok("c".into())
    );
}

#[test]
fn an_adopted_message_goes_to_a_waiting_receiver_or_past_the_buffers_room_never_evicting() {
    let e = engine();
    let mut receiver = e.receive(sid("s"));
    assert!(poll(&mut receiver).is_pending());
    e.adopt(&sid("s"), Some(2), msg("a")).expect("adopt");
    assert_eq!(
        ready(receiver).map(|m| id_of(&m).to_owned()),
        Ok("a".into())
    );
    for id in ["b", "c", "d", "c"] {
        e.adopt(&sid("s"), Some(2), msg(id)).expect("adopt");
    }
    // A blocking queue of two holds three accepted messages: none is evicted or doubled.
    let got = e.try_receive_many(&sid("s"), 10);
    assert_eq!(got.iter().map(id_of).collect::<Vec<_>>(), ["b", "c", "d"]);
    // The stream kept the size it was handed with.
    ready(e.send(sid("s"), msg("e"), waiting(2))).expect("e");
    ready(e.send(sid("s"), msg("f"), waiting(2))).expect("f");
    let mut third = e.send(sid("s"), msg("g"), waiting(2));
    assert!(
        poll(&mut third).is_pending(),
        "a queue of two is full at two"
    );
    assert_eq!(e.drain_stream(&sid("s")).map(|d| d.size), Some(Some(2)));
    assert_eq!(ready(third), Err(SendError::Moved));
}

/// The bytes one `msg(id)` counts against the memory budget.
fn cost(id: &str) -> usize {
    super::buffer::charge(&msg(id))
}

#[test]
fn the_memory_budget_refuses_what_would_pass_it_and_frees_what_leaves() {
    // Room for exactly three one-letter messages.
    let (e, _) = engine_with(EngineConfig {
        max_buffered_bytes: 3 * cost("a"),
        ..EngineConfig::default()
    });
    let over = SendError::MemoryLimit { max: 3 * cost("a") };
    for id in ["a", "b", "c"] {
        ready(e.send(sid("s"), msg(id), circular(3))).expect("within the budget");
    }
    assert_eq!(e.stats().buffered_bytes, 3 * cost("a"));
    assert_eq!(
        ready(e.send(sid("t"), msg("d"), waiting(10))),
        Err(over.clone())
    );
    assert_eq!(
        ready(e.send(sid("t"), msg("d"), circular(10))),
        Err(over.clone())
    );
    // A full circular stream that evicts as much as it takes in still takes it.
    assert_eq!(
        ready(e.send(sid("s"), msg("d"), circular(3))),
        Ok(SendOutcome::Buffered { evicted: 1 })
    );
    // A sync-match send handed straight to a receiver holds nothing.
    let mut receiver = e.receive(sid("u"));
    assert!(poll(&mut receiver).is_pending());
    assert_eq!(
        ready(e.send(sid("u"), msg("x"), waiting(0))),
        Ok(SendOutcome::Delivered)
    );
    assert_eq!(
        ready(receiver).map(|m| id_of(&m).to_owned()),
        Ok("x".into())
    );
    // A hand-off is refused like a send; what this node drained is restored regardless.
    assert_eq!(e.adopt(&sid("v"), Some(5), msg("h")), Err(over));
    let drained = e.drain_stream(&sid("s")).expect("three messages");
    assert_eq!(e.stats().buffered_bytes, 0);
    for message in drained.messages {
        e.restore(&sid("s"), drained.size, message)
            .expect("restored");
    }
    e.restore(&sid("s"), None, msg("r"))
        .expect("past the budget");
    assert_eq!(e.stats().buffered_bytes, 4 * cost("a"));
    assert_eq!(e.stats().memory_refusals, 3);
    // Receives free the room.
    assert_eq!(e.try_receive_many(&sid("s"), 2).len(), 2);
    ready(e.send(sid("t"), msg("d"), waiting(10))).expect("room again");
    assert_eq!(e.try_receive_many(&sid("s"), 10).len(), 2);
    assert_eq!(e.try_receive_many(&sid("t"), 10).len(), 1);
    assert_eq!(e.stats().buffered_bytes, 0);
}

#[test]
fn waiting_senders_count_against_the_budget_until_they_leave() {
    let (e, _) = engine_with(EngineConfig {
        max_buffered_bytes: 2 * cost("a"),
        ..EngineConfig::default()
    });
    // A sync-match sender waits holding its message.
    let mut first = e.send(sid("s"), msg("a"), waiting(0));
    assert!(poll(&mut first).is_pending());
    let mut second = e.send(sid("s"), msg("b"), waiting(0));
    assert!(poll(&mut second).is_pending());
    assert_eq!(e.stats().buffered_bytes, 2 * cost("a"));
    assert_eq!(
        ready(e.send(sid("s"), msg("c"), waiting(0))),
        Err(SendError::MemoryLimit { max: 2 * cost("a") })
    );
    // One gives up: its message is held (and counted) until its dead entry is reached or
    // swept out, which happens once dead entries are half of the queue.
    assert_eq!(first.abandon(), Err(SendError::NoReceiver));
    assert_eq!(e.stats().buffered_bytes, 2 * cost("a"));
    // A receiver takes the other's.
    assert_eq!(
        ready(e.receive(sid("s"))).map(|m| id_of(&m).to_owned()),
        Ok("b".into())
    );
    assert_eq!(ready(second), Ok(SendOutcome::Delivered));
    assert_eq!(e.stats().buffered_bytes, 0);
    // A receive given up after it was handed a message puts it back, counted.
    let mut receiver = e.receive(sid("s"));
    assert!(poll(&mut receiver).is_pending());
    ready(e.send(sid("s"), msg("d"), waiting(0))).expect("delivered");
    drop(receiver);
    assert_eq!(e.stats().buffered_bytes, cost("a"));
    // A blocking queue's waiting sender, then shutdown: the unaccepted message is let go.
    assert!(e.try_receive(&sid("s")).is_some());
    ready(e.send(sid("q"), msg("e"), waiting(1))).expect("buffered");
    let mut blocked = e.send(sid("q"), msg("f"), waiting(1));
    assert!(poll(&mut blocked).is_pending());
    assert_eq!(e.stats().buffered_bytes, 2 * cost("a"));
    e.close();
    assert_eq!(ready(blocked), Err(SendError::ShuttingDown));
    assert_eq!(
        e.stats().buffered_bytes,
        cost("a"),
        "the accepted one stays"
    );
    assert_eq!(e.drain().len(), 1);
    assert_eq!(e.stats().buffered_bytes, 0);
}
