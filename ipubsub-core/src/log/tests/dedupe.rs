//! Deduplicating appends ([`Log::append_once`]) on a manual clock: the window, the store
//! asked only while the window reaches back past the acquisition, racing and failed
//! originals, and the cap.

use super::*;

const WINDOW: Duration = Duration::from_secs(30);

/// Appends `id` to `s` with the test window, driving `worker` until it is answered.
#[track_caller]
fn once<W: Future>(
    log: &Log,
    worker: Pin<&mut W>,
    s: &str,
    id: &str,
) -> Result<Written, AppendError> {
    let now = log.inner.clock.now();
    let mut append = pin!(log.append_once(sid(s), msg(id, now), TTL, WINDOW));
    if let Poll::Ready(answer) = poll(append.as_mut()) {
        return answer;
    }
    assert!(poll(worker).is_pending());
    ready(append)
}

fn new_at(seq: Seq) -> Written {
    Written {
        seq,
        duplicate: false,
    }
}

fn duplicate_of(seq: Seq) -> Written {
    Written {
        seq,
        duplicate: true,
    }
}

fn stored(store: &TestStore) -> usize {
    lock(&store.records).len()
}

#[test]
fn a_duplicate_within_the_window_writes_nothing_and_answers_the_first_position()
-> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let (log, clock) = setup(store.clone());
    let mut worker = pin!(log.run_commit_worker());
    assert_eq!(once(&log, worker.as_mut(), "s", "a")?, new_at(at(1)));
    clock.advance(Duration::from_secs(29));
    assert_eq!(once(&log, worker.as_mut(), "s", "a")?, duplicate_of(at(1)));
    assert_eq!(once(&log, worker.as_mut(), "other", "a")?, new_at(at(1)));
    // A plain append of the same id is written, whatever the window.
    assert_eq!(write(&log, worker.as_mut(), "s", "a")?, at(2));
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        once(&log, worker.as_mut(), "s", "a")?,
        new_at(at(3)),
        "out of the window: a message"
    );
    assert_eq!(stored(&store), 4);
    assert_eq!(log.stats().duplicates, 1);
    // The store was told which records it must find: those of sends with a window.
    assert_eq!(*lock(&store.findable), [at(1), at(1), at(3)]);
    Ok(())
}

#[test]
fn after_a_restart_the_store_is_asked_only_while_the_window_reaches_past_the_acquisition()
-> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let (log, clock) = setup(store.clone());
    let mut worker = pin!(log.run_commit_worker());
    assert_eq!(once(&log, worker.as_mut(), "s", "a")?, new_at(at(1)));
    assert_eq!(
        log.stats().id_lookups,
        0,
        "a new stream: the store held nothing of it, there is nothing to ask"
    );

    // Another node (or this one restarted) takes the stream over the same store.
    let now = clock.now();
    let clock = Arc::new(ManualClock::new(
        now.saturating_add(Duration::from_secs(10)),
    ));
    let log = Log::with_clock(store.clone(), LogConfig::default(), clock.clone());
    let mut worker = pin!(log.run_commit_worker());
    assert_eq!(
        once(&log, worker.as_mut(), "s", "a")?,
        duplicate_of(at(1)),
        "the store remembers what the earlier owner wrote"
    );
    assert_eq!(once(&log, worker.as_mut(), "s", "b")?, new_at(pos(2, 1)));
    assert_eq!(log.stats().id_lookups, 2, "a and b");
    // This node's own ids are answered from memory, without the store.
    assert_eq!(
        once(&log, worker.as_mut(), "s", "b")?,
        duplicate_of(pos(2, 1))
    );
    assert_eq!(log.stats().id_lookups, 2);

    // Once the window no longer reaches before the acquisition, every id this node has not
    // written is new without asking.
    clock.advance(WINDOW);
    assert_eq!(once(&log, worker.as_mut(), "s", "c")?, new_at(pos(2, 2)));
    assert_eq!(
        once(&log, worker.as_mut(), "s", "c")?,
        duplicate_of(pos(2, 2))
    );
    assert_eq!(log.stats().id_lookups, 2);
    assert_eq!(stored(&store), 3);
    Ok(())
}

/// A node (or this one restarted) taking `s` over from `store` 10 s after the present.
fn take_over(store: &Arc<TestStore>, clock: &ManualClock) -> (Log, Arc<ManualClock>) {
    let later = clock.now().saturating_add(Duration::from_secs(10));
    let clock = Arc::new(ManualClock::new(later));
    let log = Log::with_clock(store.clone(), LogConfig::default(), clock.clone());
    (log, clock)
}

#[test]
fn a_store_that_lists_is_asked_once_per_stream_and_acquisition()
-> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    store.lists.store(true, Ordering::SeqCst);
    let (log, clock) = setup(store.clone());
    let mut worker = pin!(log.run_commit_worker());
    for id in ["a", "b", "c"] {
        once(&log, worker.as_mut(), "s", id)?;
    }
    write(&log, worker.as_mut(), "s", "plain")?;
    assert_eq!(store.listings.load(Ordering::SeqCst), 0, "a new stream");

    let (log, clock) = take_over(&store, &clock);
    let mut worker = pin!(log.run_commit_worker());
    assert_eq!(once(&log, worker.as_mut(), "s", "b")?, duplicate_of(at(2)));
    assert_eq!(
        once(&log, worker.as_mut(), "s", "plain")?,
        new_at(pos(2, 1))
    );
    assert_eq!(once(&log, worker.as_mut(), "s", "c")?, duplicate_of(at(3)));
    assert_eq!(
        once(&log, worker.as_mut(), "s", "plain")?,
        duplicate_of(pos(2, 1))
    );
    assert_eq!(once(&log, worker.as_mut(), "s", "a")?, duplicate_of(at(1)));
    let stats = log.stats();
    assert_eq!(
        (
            store.listings.load(Ordering::SeqCst),
            stats.id_listings,
            stats.id_lookups
        ),
        (1, 1, 0),
        "one listing, no lookup"
    );
    assert_eq!(stats.remembered_ids, 4, "a, b, c listed; plain written");
    // Listed ids are forgotten with their window like this node's own.
    clock.advance(WINDOW);
    assert_eq!(once(&log, worker.as_mut(), "s", "a")?, new_at(pos(2, 2)));
    assert_eq!(stored(&store), 6);

    // A listing that does not fit the cap (here: none) is refused: each id is asked for.
    let (log, _) = take_over(&store, &clock);
    let config = LogConfig {
        max_remembered_ids: 0,
        ..LogConfig::default()
    };
    let log = Log::with_clock(store.clone(), config, log.inner.clock.clone());
    let mut worker = pin!(log.run_commit_worker());
    assert_eq!(
        once(&log, worker.as_mut(), "s", "a")?,
        duplicate_of(pos(2, 2))
    );
    assert_eq!(once(&log, worker.as_mut(), "s", "z")?, new_at(pos(3, 1)));
    assert_eq!((log.stats().id_listings, log.stats().id_lookups), (1, 2));
    Ok(())
}

#[test]
fn of_two_racing_appends_of_one_id_the_second_waits_and_is_the_duplicate()
-> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let (log, clock) = setup(store.clone());
    let mut worker = pin!(log.run_commit_worker());
    let now = clock.now();
    let mut first = pin!(log.append_once(sid("s"), msg("a", now), TTL, WINDOW));
    let mut second = pin!(log.append_once(sid("s"), msg("a", now), TTL, WINDOW));
    assert!(poll(first.as_mut()).is_pending());
    assert!(
        poll(second.as_mut()).is_pending(),
        "waits for the first to settle"
    );
    assert!(poll(worker.as_mut()).is_pending());
    assert_eq!(ready(first)?, new_at(at(1)));
    assert_eq!(ready(second)?, duplicate_of(at(1)));
    assert_eq!(stored(&store), 1);
    Ok(())
}

/// Two appends of one id, the first failed by the store: the waiting second is written. With
/// `reader`, a read loads the stream again (a new epoch) before the second looks: no commit
/// of the new epoch will pass the failed position, and none must be needed.
fn a_failed_original(reader: bool) -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let (log, clock) = setup(store.clone());
    let mut worker = pin!(log.run_commit_worker());
    let now = clock.now();
    let mut first = pin!(log.append_once(sid("s"), msg("a", now), TTL, WINDOW));
    let mut second = pin!(log.append_once(sid("s"), msg("a", now), TTL, WINDOW));
    assert!(poll(first.as_mut()).is_pending());
    assert!(poll(second.as_mut()).is_pending());
    store.fail.store(true, Ordering::SeqCst);
    assert!(poll(worker.as_mut()).is_pending());
    store.fail.store(false, Ordering::SeqCst);
    assert!(matches!(ready(first), Err(AppendError::Store(_))));
    if reader {
        let read = ready(log.read(&sid("s"), Seq::ZERO, 10))?;
        assert!(read.records.is_empty());
    }
    // The failed write did not land: the second finds nothing (the stream was acquired
    // empty) and is written.
    assert!(poll(second.as_mut()).is_pending());
    assert!(poll(worker.as_mut()).is_pending());
    assert_eq!(ready(second)?, new_at(pos(2, 1)));
    assert_eq!(stored(&store), 1);
    Ok(())
}

#[test]
fn when_the_first_append_fails_its_waiting_duplicate_is_written()
-> Result<(), Box<dyn std::error::Error>> {
    a_failed_original(false)
}

#[test]
fn a_duplicate_waiting_on_a_failed_append_goes_on_when_the_stream_is_loaded_again()
-> Result<(), Box<dyn std::error::Error>> {
    a_failed_original(true)
}

#[test]
fn an_append_abandoned_unwritten_is_no_original() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let (log, clock) = setup(store.clone());
    let mut worker = pin!(log.run_commit_worker());
    {
        let mut gone = pin!(log.append_once(sid("s"), msg("a", clock.now()), TTL, WINDOW));
        assert!(poll(gone.as_mut()).is_pending());
    }
    // The retry waits for the abandoned append to settle, finds it withdrawn, and writes.
    let mut retry = pin!(log.append_once(sid("s"), msg("a", clock.now()), TTL, WINDOW));
    assert!(poll(retry.as_mut()).is_pending());
    assert!(poll(worker.as_mut()).is_pending());
    assert_eq!(log.stats().abandoned, 1);
    assert!(poll(retry.as_mut()).is_pending());
    assert!(poll(worker.as_mut()).is_pending());
    assert_eq!(ready(retry)?, new_at(at(2)));
    assert_eq!(stored(&store), 1);
    Ok(())
}

#[test]
fn past_the_cap_ids_are_found_in_the_store_instead() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    let config = LogConfig {
        max_remembered_ids: 1,
        ..LogConfig::default()
    };
    let (log, clock) = setup_with(store.clone(), config);
    let mut worker = pin!(log.run_commit_worker());
    clock.advance(WINDOW);
    write(&log, worker.as_mut(), "s", "load")?;
    clock.advance(WINDOW);
    let lookups = log.stats().id_lookups;
    assert_eq!(once(&log, worker.as_mut(), "s", "a")?, new_at(at(2)));
    assert_eq!(once(&log, worker.as_mut(), "s", "b")?, new_at(at(3)));
    assert_eq!(log.stats().unremembered_ids, 1);
    assert_eq!(log.stats().remembered_ids, 1);
    assert_eq!(
        log.stats().id_lookups,
        lookups,
        "memory was complete so far"
    );
    assert_eq!(once(&log, worker.as_mut(), "s", "b")?, duplicate_of(at(3)));
    assert!(log.stats().id_lookups > lookups, "asked the store for b");
    assert_eq!(stored(&store), 3);
    // Forgetting the stream gives the places back.
    assert_eq!(log.release(|_| false), 1);
    assert_eq!(log.stats().remembered_ids, 0);
    Ok(())
}

#[test]
fn an_idle_stream_is_kept_while_it_remembers_ids() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(TestStore::default());
    store.lists.store(true, Ordering::SeqCst);
    let (log, clock) = setup(store.clone());
    let mut worker = pin!(log.run_commit_worker());
    once(&log, worker.as_mut(), "ids", "a")?;
    write(&log, worker.as_mut(), "plain", "a")?;
    let idle = Duration::from_secs(10);
    clock.advance(idle);
    assert_eq!(log.sweep_idle(idle), 1, "the stream without ids");
    // Kept, so its ids are answered from memory: nothing listed, nothing looked up.
    clock.advance(WINDOW - idle);
    assert_eq!(
        once(&log, worker.as_mut(), "ids", "a")?,
        duplicate_of(at(1))
    );
    assert_eq!((log.stats().id_listings, log.stats().id_lookups), (0, 0));
    clock.advance(idle);
    assert_eq!(log.sweep_idle(idle), 1, "idle again, and past its window");
    assert_eq!(log.stats().remembered_ids, 0);
    Ok(())
}
