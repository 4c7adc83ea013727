//! Acknowledged receives, on a manual clock: leases, acknowledgements, returns, extensions,
//! expiry and redrive.

use std::time::Duration;

use super::*;

const LEASE: Duration = Duration::from_secs(30);

fn leased(e: &Engine, stream: &str) -> Leased {
    ready(e.receive_leased(sid(stream), LEASE)).expect("a leased message")
}

fn ids(messages: &[Leased]) -> Vec<&str> {
    messages.iter().map(|l| id_of(&l.message)).collect()
}

#[test]
fn an_acknowledged_delivery_is_done_and_its_handle_is_spent() {
    let e = engine();
    ready(e.send(sid("s"), msg("a"), circular(10))).expect("send");
    let got = leased(&e, "s");
    assert_eq!((id_of(&got.message), got.deliveries), ("a", 1));
    assert_eq!(e.stats().in_flight, 1);
    assert_eq!(e.buffered(&sid("s")), Some(0));
    assert_eq!(e.ack(&sid("s"), &[got.handle]), [Ok(())]);
    assert_eq!(
        e.ack(&sid("s"), &[got.handle]),
        [Err(LeaseError::NotInFlight)]
    );
    assert_eq!(
        e.ack(&sid("t"), &[got.handle]),
        [Err(LeaseError::OtherStream)]
    );
    let stats = e.stats();
    assert_eq!(
        (stats.in_flight, stats.acked, stats.lease_refusals),
        (0, 1, 2)
    );
    assert_eq!(
        stats.buffered_bytes, 0,
        "an acknowledged message is not held"
    );
}

#[test]
fn a_handle_reads_back_as_it_was_written_and_names_its_stream() {
    let e = engine();
    ready(e.send(sid("orders"), msg("a"), circular(10))).expect("send");
    let got = leased(&e, "orders");
    let text = got.handle.to_string();
    assert_eq!(text.len(), 40);
    assert_eq!(text.as_bytes(), got.handle.encode());
    assert_eq!(ReceiptHandle::parse(&text), Ok(got.handle));
    assert!(got.handle.is_for(&sid("orders")) && !got.handle.is_for(&sid("order")));
    for bad in [
        "",
        "xyz",
        &text[..39],
        &text.to_uppercase(),
        &format!("{text}0"),
    ] {
        assert_eq!(ReceiptHandle::parse(bad), Err(HandleError), "{bad:?}");
    }
}

#[test]
fn an_unacknowledged_message_comes_back_first_after_its_lease_only() {
    let (e, clock) = engine_with(EngineConfig::default());
    for id in ["a", "b"] {
        ready(e.send(sid("s"), msg(id), circular(10))).expect("send");
    }
    let first = leased(&e, "s");
    clock.advance(LEASE - Duration::from_micros(1));
    assert_eq!(
        e.expire_leases(),
        Expired::default(),
        "not before its deadline"
    );
    clock.advance(Duration::from_micros(1));
    assert_eq!(e.expire_leases().redelivered, 1);
    assert_eq!(e.stats().in_flight, 0);
    // Back at the head, ahead of the newer message, one delivery more.
    let again = leased(&e, "s");
    assert_eq!((id_of(&again.message), again.deliveries), ("a", 2));
    assert_ne!(again.handle, first.handle);
    assert_eq!(
        e.ack(&sid("s"), &[first.handle]),
        [Err(LeaseError::NotInFlight)]
    );
    assert_eq!(e.ack(&sid("s"), &[again.handle]), [Ok(())]);
    assert_eq!(id_of(&leased(&e, "s").message), "b");
    assert_eq!(e.stats().redelivered, 1);
}

#[test]
fn an_expired_lease_wakes_a_waiting_receiver() {
    let (e, clock) = engine_with(EngineConfig::default());
    ready(e.send(sid("s"), msg("a"), circular(10))).expect("send");
    let _first = leased(&e, "s");
    let mut waiting = e.receive_leased(sid("s"), LEASE);
    assert!(poll(&mut waiting).is_pending());
    clock.advance(LEASE);
    e.expire_leases();
    let again = ready(waiting).expect("handed on expiry");
    assert_eq!((id_of(&again.message), again.deliveries), ("a", 2));
    assert_eq!(e.stats().in_flight, 1, "handed under a new lease");
}

#[test]
fn an_extended_lease_ends_at_its_new_deadline() {
    let (e, clock) = engine_with(EngineConfig::default());
    ready(e.send(sid("s"), msg("a"), circular(10))).expect("send");
    let got = leased(&e, "s");
    clock.advance(LEASE / 2);
    assert_eq!(e.extend(&sid("s"), &[got.handle], LEASE), [Ok(())]);
    clock.advance(LEASE / 2);
    assert_eq!(
        e.expire_leases().redelivered,
        0,
        "the first deadline is gone"
    );
    clock.advance(LEASE / 2);
    assert_eq!(e.expire_leases().redelivered, 1);
    assert_eq!(
        e.extend(&sid("s"), &[got.handle], LEASE),
        [Err(LeaseError::NotInFlight)]
    );
}

#[test]
fn a_returned_message_comes_back_now_or_after_its_delay() {
    let (e, clock) = engine_with(EngineConfig::default());
    for id in ["a", "b"] {
        ready(e.send(sid("s"), msg(id), circular(10))).expect("send");
    }
    let a = leased(&e, "s");
    assert_eq!(e.nack(&sid("s"), &[a.handle], Duration::ZERO), [Ok(None)]);
    let a = leased(&e, "s");
    assert_eq!((id_of(&a.message), a.deliveries), ("a", 2));
    // With a delay: held, its handle spent, then back at the head.
    let delay = Duration::from_secs(5);
    assert_eq!(e.nack(&sid("s"), &[a.handle], delay), [Ok(None)]);
    assert_eq!(
        e.ack(&sid("s"), &[a.handle]),
        [Err(LeaseError::NotInFlight)]
    );
    assert_eq!(e.stats().in_flight, 1, "held until its delay passes");
    let b = leased(&e, "s");
    assert_eq!(id_of(&b.message), "b");
    clock.advance(delay);
    assert_eq!(e.expire_leases().redelivered, 1);
    let a = leased(&e, "s");
    assert_eq!((id_of(&a.message), a.deliveries), ("a", 3));
    assert_eq!(e.stats().nacked, 2);
}

#[test]
fn max_deliveries_moves_a_message_to_its_dead_letter_stream_or_drops_it() {
    let (e, clock) = engine_with(EngineConfig::default());
    let redrive = Redrive::new(2, Some(sid("dlq")));
    e.set_redrive(&sid("s"), redrive).expect("redrive");
    // The first policy stays.
    e.set_redrive(&sid("s"), Redrive::new(9, None))
        .expect("redrive");
    ready(e.send(sid("s"), msg("a"), circular(10))).expect("send");
    let first = leased(&e, "s");
    assert_eq!(
        e.nack(&sid("s"), &[first.handle], Duration::ZERO),
        [Ok(None)]
    );
    let second = leased(&e, "s");
    assert_eq!(second.deliveries, 2);
    clock.advance(LEASE);
    let expired = e.expire_leases();
    assert_eq!(expired.redelivered, 0);
    let [letter] = expired.dead_letters.as_slice() else {
        panic!("one dead letter: {expired:?}");
    };
    assert_eq!(
        (
            letter.stream.as_str(),
            letter.dead_letter.as_str(),
            letter.deliveries
        ),
        ("s", "dlq", 2)
    );
    assert_eq!(id_of(&letter.message), "a");
    assert_eq!(e.buffered(&sid("s")), Some(0));
    assert_eq!((e.stats().in_flight, e.stats().buffered_bytes), (0, 0));

    // Without a dead-letter stream, dropped and counted; a nack can be the last delivery.
    e.set_redrive(&sid("t"), Redrive::new(1, None))
        .expect("redrive");
    ready(e.send(sid("t"), msg("b"), circular(10))).expect("send");
    let b = leased(&e, "t");
    assert_eq!(e.nack(&sid("t"), &[b.handle], Duration::ZERO), [Ok(None)]);
    let stats = e.stats();
    assert_eq!(
        (stats.dead_lettered, stats.dropped_after_max_deliveries),
        (1, 1)
    );
    assert_eq!(e.buffered(&sid("t")), Some(0));
}

#[test]
fn a_blocking_queue_counts_its_messages_in_flight() {
    let e = engine();
    for id in ["a", "b"] {
        ready(e.send(sid("q"), msg(id), waiting(2))).expect("send");
    }
    let a = leased(&e, "q");
    // One buffered, one in flight: the queue of 2 is full.
    let mut third = e.send(sid("q"), msg("c"), waiting(2));
    assert!(poll(&mut third).is_pending());
    assert_eq!(e.ack(&sid("q"), &[a.handle]), [Ok(())]);
    assert_eq!(ready(third), Ok(SendOutcome::Buffered { evicted: 0 }));
    assert_eq!(e.buffered(&sid("q")), Some(2));
    // A plain receive leaves nothing in flight: room at once.
    let b = ready(e.receive(sid("q"))).expect("b");
    assert_eq!(id_of(&b), "b");
    assert_eq!(
        ready(e.send(sid("q"), msg("d"), waiting(2))),
        Ok(SendOutcome::Buffered { evicted: 0 })
    );
}

#[test]
fn a_leased_receive_dropped_after_its_hand_over_gives_the_message_back_uncounted() {
    let e = engine();
    let mut receive = e.receive_leased(sid("s"), LEASE);
    assert!(poll(&mut receive).is_pending());
    ready(e.send(sid("s"), msg("a"), circular(10))).expect("handed over");
    assert_eq!(e.stats().in_flight, 1);
    drop(receive);
    assert_eq!(e.stats().in_flight, 0);
    let again = leased(&e, "s");
    assert_eq!((id_of(&again.message), again.deliveries), ("a", 1));
}

#[test]
fn an_abandoned_leased_receive_keeps_the_lease_it_was_handed() {
    let e = engine();
    let mut receive = e.receive_leased(sid("s"), LEASE);
    assert!(poll(&mut receive).is_pending());
    ready(e.send(sid("s"), msg("a"), circular(10))).expect("handed over");
    let got = receive.abandon().expect("the message handed over");
    assert_eq!(e.ack(&sid("s"), &[got.handle]), [Ok(())]);
}

#[test]
fn in_flight_messages_count_against_the_memory_budget() {
    let e = engine();
    ready(e.send(sid("s"), msg("a"), circular(10))).expect("send");
    let held = e.stats().buffered_bytes;
    let got = leased(&e, "s");
    assert_eq!(e.stats().buffered_bytes, held, "still held while in flight");
    e.ack(&sid("s"), &[got.handle]);
    assert_eq!(e.stats().buffered_bytes, 0);
}

#[test]
fn a_drained_stream_takes_its_leases_along_and_they_act_where_it_lands() {
    let (e, clock) = engine_with(EngineConfig::default());
    let (there, there_clock) = engine_with(EngineConfig::default());
    e.set_redrive(&sid("s"), Redrive::new(5, Some(sid("dlq"))))
        .expect("redrive");
    for id in ["a", "b", "c"] {
        ready(e.send(sid("s"), msg(id), circular(10))).expect("send");
    }
    let a = leased(&e, "s");
    let b = leased(&e, "s");
    assert_eq!(
        e.nack(&sid("s"), &[b.handle], Duration::from_secs(5)),
        [Ok(None)]
    );
    clock.advance(Duration::from_secs(10));
    let drained = e.drain_stream(&sid("s")).expect("drained");
    let ids: Vec<_> = drained.messages.iter().map(id_of).collect();
    assert_eq!(ids, ["c"]);
    assert_eq!(drained.redrive, Redrive::new(5, Some(sid("dlq"))));
    let moving: Vec<_> = drained
        .in_flight
        .iter()
        .map(|f| (id_of(&f.message), f.remaining, f.delayed, f.deliveries))
        .collect();
    assert_eq!(
        moving,
        [
            ("a", LEASE - Duration::from_secs(10), false, 1),
            ("b", Duration::ZERO, true, 1)
        ]
    );
    // Gone from here: nothing in flight, no deadline left behind.
    assert_eq!(
        e.ack(&sid("s"), &[a.handle]),
        [Err(LeaseError::NotInFlight)]
    );
    assert_eq!((e.stats().in_flight, e.stats().buffered_bytes), (0, 0));
    assert_eq!(e.expire_leases(), Expired::default());

    // Where it lands, a's handle acts, taken once however often it comes.
    for f in &drained.in_flight {
        there
            .adopt_in_flight(&sid("s"), drained.size, f.clone())
            .expect("adopted");
        there
            .adopt_in_flight(&sid("s"), drained.size, f.clone())
            .expect("adopted again");
    }
    assert_eq!(there.stats().in_flight, 2);
    assert_eq!(there.expire_leases().redelivered, 1, "b's delay was over");
    let b = leased(&there, "s");
    assert_eq!((id_of(&b.message), b.deliveries), ("b", 2));
    there_clock.advance(LEASE - Duration::from_secs(10));
    assert_eq!(
        there.ack(&sid("s"), &[a.handle, b.handle]),
        [Ok(()), Ok(())]
    );
    assert_eq!(there.expire_leases(), Expired::default());
}

#[test]
fn returned_messages_keep_their_counts_through_eviction_and_batches() {
    let (e, clock) = engine_with(EngineConfig::default());
    for id in ["a", "b"] {
        ready(e.send(sid("s"), msg(id), circular(2))).expect("send");
    }
    let taken = e.try_receive_leased(&sid("s"), LEASE, 10);
    assert_eq!(ids(&taken), ["a", "b"]);
    clock.advance(LEASE);
    assert_eq!(e.expire_leases().redelivered, 2);
    // A circular send evicts the oldest, a returned message, and its count goes with it.
    ready(e.send(sid("s"), msg("c"), circular(2))).expect("send");
    let taken = e.try_receive_leased(&sid("s"), LEASE, 10);
    let counts: Vec<_> = taken
        .iter()
        .map(|l| (id_of(&l.message), l.deliveries))
        .collect();
    assert_eq!(counts, [("b", 2), ("c", 1)]);
}

#[test]
fn a_stream_with_leases_is_never_idle_and_a_policy_alone_does_not_keep_one() {
    let (e, clock) = engine_with(EngineConfig::default());
    e.set_redrive(&sid("policy"), Redrive::new(3, None))
        .expect("redrive");
    ready(e.send(sid("s"), msg("a"), circular(10))).expect("send");
    let got = leased(&e, "s");
    clock.advance(Duration::from_secs(120));
    e.extend(&sid("s"), &[got.handle], Duration::from_secs(600));
    clock.advance(Duration::from_secs(120));
    assert_eq!(
        e.sweep_idle(),
        1,
        "only the stream with a policy and nothing else"
    );
    assert_eq!(e.ack(&sid("s"), &[got.handle]), [Ok(())]);
}

#[test]
fn a_plain_receive_and_a_leased_one_share_the_queue_in_order() {
    let e = engine();
    let mut plain = e.receive(sid("s"));
    let mut acked = e.receive_leased(sid("s"), LEASE);
    assert!(poll(&mut plain).is_pending() && poll(&mut acked).is_pending());
    ready(e.send(sid("s"), msg("a"), circular(10))).expect("send");
    ready(e.send(sid("s"), msg("b"), circular(10))).expect("send");
    assert_eq!(id_of(&ready(plain).expect("a")), "a");
    let b = ready(acked).expect("b");
    assert_eq!((id_of(&b.message), b.deliveries), ("b", 1));
    assert_eq!(e.stats().in_flight, 1);
}
