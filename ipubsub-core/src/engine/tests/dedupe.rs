//! Idempotent sends, on a manual clock: a stream's dedupe window, its expiry, waiting
//! senders, the engine's cap and a hand-off.

use std::time::Duration;

use super::*;

const WINDOW: Duration = Duration::from_secs(10);

fn ids_of(e: &Engine, stream: &str) -> Vec<String> {
    e.try_receive_many(&sid(stream), 100)
        .iter()
        .map(|m| id_of(m).to_owned())
        .collect()
}

#[test]
fn a_send_of_an_id_accepted_within_the_window_adds_no_copy() {
    let (e, clock) = engine_with(EngineConfig::default());
    e.set_dedupe_window(&sid("s"), WINDOW).expect("window");
    assert_eq!(
        ready(e.send(sid("s"), msg("a"), circular(10))),
        Ok(SendOutcome::Buffered { evicted: 0 })
    );
    assert_eq!(
        ready(e.send(sid("s"), msg("a"), circular(10))),
        Ok(SendOutcome::Duplicate)
    );
    assert_eq!(ids_of(&e, "s"), ["a"]);
    // Taken or not, the id is remembered for the window.
    clock.advance(WINDOW - Duration::from_micros(1));
    assert_eq!(
        ready(e.send(sid("s"), msg("a"), circular(10))),
        Ok(SendOutcome::Duplicate)
    );
    clock.advance(Duration::from_micros(1));
    assert_eq!(
        ready(e.send(sid("s"), msg("a"), circular(10))),
        Ok(SendOutcome::Buffered { evicted: 0 })
    );
    let stats = e.stats();
    assert_eq!((stats.duplicates, stats.dedupe_entries), (2, 1));
    // The first window stays.
    e.set_dedupe_window(&sid("s"), Duration::from_secs(1))
        .expect("window");
    clock.advance(Duration::from_secs(5));
    assert_eq!(
        ready(e.send(sid("s"), msg("a"), circular(10))),
        Ok(SendOutcome::Duplicate)
    );
}

#[test]
fn without_a_window_every_send_is_a_message() {
    let e = engine();
    for _ in 0..2 {
        ready(e.send(sid("s"), msg("a"), circular(10))).expect("sent");
    }
    assert_eq!(ids_of(&e, "s"), ["a", "a"]);
    assert_eq!(e.stats().dedupe_entries, 0);
}

#[test]
fn a_sync_match_and_a_waiting_sender_are_deduplicated_when_accepted() {
    let e = engine();
    e.set_dedupe_window(&sid("q"), WINDOW).expect("window");
    ready(e.send(sid("q"), msg("a"), waiting(1))).expect("a");
    // Two waiting sends of the same id: the first admitted is the message, the second its
    // duplicate.
    let mut first = e.send(sid("q"), msg("b"), waiting(1));
    let mut second = e.send(sid("q"), msg("b"), waiting(1));
    assert!(poll(&mut first).is_pending() && poll(&mut second).is_pending());
    assert_eq!(ids_of(&e, "q"), ["a", "b"]);
    assert_eq!(ready(first), Ok(SendOutcome::Buffered { evicted: 0 }));
    assert_eq!(ready(second), Ok(SendOutcome::Duplicate));
    assert_eq!(ids_of(&e, "q"), Vec::<String>::new());

    // A sync match remembers what a receiver took.
    e.set_dedupe_window(&sid("sync"), WINDOW).expect("window");
    let mut receive = e.receive(sid("sync"));
    assert!(poll(&mut receive).is_pending());
    assert_eq!(
        ready(e.send(sid("sync"), msg("m"), waiting(0))),
        Ok(SendOutcome::Delivered)
    );
    assert_eq!(
        ready(e.send(sid("sync"), msg("m"), waiting(0))),
        Ok(SendOutcome::Duplicate)
    );
}

#[test]
fn past_the_cap_an_accepted_message_is_not_remembered_and_counted() {
    let (e, clock) = engine_with(EngineConfig {
        max_dedupe_entries: 2,
        ..EngineConfig::default()
    });
    e.set_dedupe_window(&sid("s"), WINDOW).expect("window");
    for id in ["a", "b", "c"] {
        ready(e.send(sid("s"), msg(id), circular(10))).expect("sent");
    }
    let stats = e.stats();
    assert_eq!((stats.dedupe_entries, stats.dedupe_unremembered), (2, 1));
    assert_eq!(
        ready(e.send(sid("s"), msg("c"), circular(10))),
        Ok(SendOutcome::Buffered { evicted: 0 }),
        "c was never remembered"
    );
    // Entries expire with the window, at the next sweep, and give their places back.
    clock.advance(WINDOW);
    e.sweep_idle();
    assert_eq!(e.stats().dedupe_entries, 0);
}

#[test]
fn a_stream_that_remembers_ids_is_not_dropped_idle_until_they_expire() {
    let (e, clock) = engine_with(EngineConfig {
        stream_idle_timeout: Duration::from_secs(1),
        ..EngineConfig::default()
    });
    e.set_dedupe_window(&sid("s"), Duration::from_secs(30))
        .expect("window");
    ready(e.send(sid("s"), msg("a"), circular(10))).expect("sent");
    assert_eq!(ids_of(&e, "s"), ["a"]);
    clock.advance(Duration::from_secs(20));
    assert_eq!(e.sweep_idle(), 0);
    assert_eq!(
        ready(e.send(sid("s"), msg("a"), circular(10))),
        Ok(SendOutcome::Duplicate)
    );
    clock.advance(Duration::from_secs(40));
    assert_eq!(e.sweep_idle(), 1, "dropped once its ids expired");
    assert_eq!(e.stats().dedupe_entries, 0);
}

#[test]
fn a_drained_stream_takes_its_ids_along_with_the_time_they_have_left() {
    let (e, clock) = engine_with(EngineConfig::default());
    let (there, _) = engine_with(EngineConfig::default());
    e.set_dedupe_window(&sid("s"), WINDOW).expect("window");
    ready(e.send(sid("s"), msg("a"), circular(10))).expect("sent");
    assert_eq!(ids_of(&e, "s"), ["a"]);
    clock.advance(Duration::from_secs(4));
    let drained = e.drain_stream(&sid("s")).expect("ids to move");
    let (window, ids) = drained.dedupe.clone().expect("a window");
    assert_eq!(window, WINDOW);
    let ids: Vec<_> = ids.iter().map(|(id, left)| (id.as_str(), *left)).collect();
    assert_eq!(ids, [("a", Duration::from_secs(6))]);
    assert_eq!(e.stats().dedupe_entries, 0);
    let (window, ids) = drained.dedupe.expect("a window");
    there.adopt_dedupe(&sid("s"), window, ids).expect("adopted");
    assert_eq!(
        ready(there.send(sid("s"), msg("a"), circular(10))),
        Ok(SendOutcome::Duplicate)
    );
    assert_eq!(there.stats().dedupe_entries, 1);
}
