//! The suite's fence cases: an acquisition refuses the older epoch, stream by stream, and
//! writers racing an acquisition land before it or not at all.

use std::sync::Arc;
use std::time::Duration;

use ipubsub_core::{Appended, Epoch, MessageId, MessageStore, Seq, StreamId, Tenure, Timestamp};

use super::{Case, LONG, at, first, ok, seqs, wrote};

pub(super) async fn an_acquisition_fences_the_older_epoch(store: &impl MessageStore) {
    let name = "fence";
    let c = Case::new(name);
    let s = c.acquired(store, "s").await;
    wrote(name, store, &[c.record(&s, 1, LONG), c.record(&s, 2, LONG)]).await;
    let tenure = ok(name, "acquire", store.acquire(&s).await).await;
    let second = Epoch::new(2).expect("epoch 2");
    assert_eq!(
        tenure,
        Tenure {
            epoch: second,
            last: at(first(), 2)
        },
        "[{name}] the next epoch, and the last position of the old one"
    );
    let refused = ok(
        name,
        "append of the old epoch",
        store.append(&[c.record(&s, 3, LONG)]).await,
    )
    .await;
    assert_eq!(
        refused,
        Appended::fenced(vec![s.clone()]),
        "[{name}] the old epoch is refused"
    );
    let third = Epoch::new(3).expect("epoch 3");
    let refused = ok(
        name,
        "append of a later epoch",
        store.append(&[c.record_in(third, &s, 1, LONG)]).await,
    )
    .await;
    assert_eq!(
        refused,
        Appended::fenced(vec![s.clone()]),
        "[{name}] an epoch nobody acquired is refused too"
    );
    wrote(name, store, &[c.record_in(second, &s, 1, LONG)]).await;
    let read = ok(
        name,
        "read",
        store.read_after(&s, Seq::ZERO, 10, c.now).await,
    )
    .await;
    let positions: Vec<_> = read.iter().map(|r| r.seq).collect();
    assert_eq!(
        positions,
        [at(first(), 1), at(first(), 2), at(second, 1)],
        "[{name}] nothing refused was written, and the new epoch orders last"
    );
}

pub(super) async fn a_batch_is_fenced_stream_by_stream(store: &impl MessageStore) {
    let name = "fence-partial";
    let c = Case::new(name);
    let (moved, kept) = (
        c.acquired(store, "moved").await,
        c.acquired(store, "kept").await,
    );
    ok(name, "acquire", store.acquire(&moved).await).await;
    let appended = ok(
        name,
        "append",
        store
            .append(&[
                c.record(&kept, 1, LONG),
                c.record(&moved, 1, LONG),
                c.record(&kept, 2, LONG),
            ])
            .await,
    )
    .await;
    assert_eq!(
        appended,
        Appended::fenced(vec![moved.clone()]),
        "[{name}] only the moved stream is refused"
    );
    let read = |s| store.read_after(s, Seq::ZERO, 10, c.now);
    assert_eq!(seqs(&ok(name, "read", read(&kept).await).await), [1, 2]);
    assert!(ok(name, "read", read(&moved).await).await.is_empty());
}

/// Writers of an old epoch race an acquisition: whatever they wrote must be visible right
/// after the acquisition returns, and nothing of theirs may land later; every append that
/// was answered `Ok` unfenced is there, and nothing fenced is. An append that failed (the
/// contract lets a store answer a write it cannot settle as ambiguous) may or may not be.
pub(super) async fn racing_appends_land_before_the_fence_or_not_at_all<S: MessageStore>(
    store: &Arc<S>,
) {
    writers_race_an_acquisition("fence-race", store, &**store).await;
}

/// Another store on the same database (another node) takes each stream from the first while
/// its writers append: the same promises across processes.
pub(super) async fn another_store_takes_the_stream_while_the_first_writes<S: MessageStore>(
    first: &Arc<S>,
    second: &S,
) {
    writers_race_an_acquisition("fence-race-two-stores", first, second).await;
}

/// Writers on `store` append to a stream while `acquirer` acquires it.
async fn writers_race_an_acquisition<S: MessageStore>(
    name: &'static str,
    store: &Arc<S>,
    acquirer: &impl MessageStore,
) {
    let c = Arc::new(Case::new(name));
    for round in 0..3u64 {
        let s = c.acquired(&**store, &format!("r{round}")).await;
        let landed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let (store, c, s) = (store.clone(), c.clone(), s.clone());
                let landed = landed.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 1..=10_000 {
                        let record = c.record(&s, w * 100_000 + i, LONG);
                        let one = std::slice::from_ref(&record);
                        match store.append_findable(one, &[true]).await {
                            Ok(appended) if appended.is_fenced(&s) => {
                                return (acked, None, Some(record.seq));
                            }
                            Ok(_) => {
                                acked.push(record.seq);
                                landed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(_) => return (acked, Some(record.seq), None),
                        }
                    }
                    (acked, None, None)
                })
            })
            .collect();
        // Let the writers get going (a few appends each, however slow the store), then take
        // the stream from them while they write.
        let started = std::time::Instant::now();
        while landed.load(std::sync::atomic::Ordering::Relaxed) < 8 * (round as usize + 1) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "[{name}] round {round}: the writers landed nothing in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let tenure = ok(name, "acquire", acquirer.acquire(&s).await).await;
        let at_fence = read_all(name, acquirer, &s, c.now).await;
        let (mut acked, mut unknown, mut refused) = (Vec::new(), Vec::new(), Vec::new());
        for writer in writers {
            let (ok, failed, fenced) = writer
                .await
                .unwrap_or_else(|e| panic!("[{name}] writer panicked: {e}"));
            acked.extend(ok);
            unknown.extend(failed);
            refused.extend(fenced);
        }
        let after = read_all(name, &**store, &s, c.now).await;
        acked.sort();
        let after_known: Vec<Seq> = after
            .iter()
            .copied()
            .filter(|seq| !unknown.contains(seq))
            .collect();
        assert!(
            !acked.is_empty(),
            "[{name}] round {round}: no append landed before the fence"
        );
        assert_eq!(
            after.len(),
            at_fence.len(),
            "[{name}] round {round}: {} records of the old epoch landed after the fence",
            after.len().saturating_sub(at_fence.len())
        );
        assert_eq!(
            after_known, acked,
            "[{name}] round {round}: stored records differ from the acknowledged ones"
        );
        assert_eq!(
            tenure.last,
            after.last().copied().unwrap_or(Seq::ZERO),
            "[{name}] round {round}: the tenure's last position"
        );
        // An id lookup counts what reads count: the last acknowledged record of the round
        // is found, a refused one never (also where the store wrote it before fencing it).
        let since = Timestamp::from_micros(c.now.as_micros() - 1);
        // An append that failed may have landed or not: found exactly when a read has it.
        let mut probes: Vec<(Seq, Option<Seq>)> = refused.into_iter().map(|q| (q, None)).collect();
        probes.extend(
            unknown
                .iter()
                .map(|&q| (q, after.contains(&q).then_some(q))),
        );
        if let Some(&last) = acked.last() {
            probes.push((last, Some(last)));
        }
        for (seq, want) in probes {
            let id = MessageId::new(format!("m-{}", seq.counter())).expect("valid id");
            let found = acquirer.find_message(&s, &id, since, c.now).await;
            assert_eq!(
                ok(name, "find_message", found).await,
                want,
                "[{name}] round {round}: position {seq}"
            );
        }
    }
}

/// Two stores on one database take a stream from each other in turn: each acquisition
/// fences the other's epoch and reports the other's last position.
pub(super) async fn two_stores_take_a_stream_in_turn(a: &impl MessageStore, b: &impl MessageStore) {
    let name = "fence-two-stores";
    let c = Case::new(name);
    let s = c.acquired(a, "s").await;
    wrote(name, a, &[c.record(&s, 1, LONG), c.record(&s, 2, LONG)]).await;
    let second = Epoch::new(2).expect("epoch 2");
    let third = Epoch::new(3).expect("epoch 3");
    let tenure = ok(name, "acquire by the second", b.acquire(&s).await).await;
    assert_eq!(
        tenure,
        Tenure {
            epoch: second,
            last: at(first(), 2)
        },
        "[{name}] the second store's tenure"
    );
    let refused = a.append_findable(&[c.record(&s, 3, LONG)], &[true]).await;
    let refused = ok(name, "old epoch", refused).await;
    assert_eq!(
        refused,
        Appended::fenced(vec![s.clone()]),
        "[{name}] the first store's epoch is refused"
    );
    // Refused, perhaps after it was written (a store that fences after writing): never found.
    let id = MessageId::new("m-3").expect("valid id");
    let since = Timestamp::from_micros(c.now.as_micros() - 1);
    for (who, store) in [("second", b as &dyn MessageStore), ("first", a)] {
        let found = ok(
            name,
            "find_message",
            store.find_message(&s, &id, since, c.now).await,
        )
        .await;
        assert_eq!(
            found, None,
            "[{name}] the refused record, asked of the {who} store"
        );
    }
    wrote(name, b, &[c.record_in(second, &s, 1, LONG)]).await;
    let tenure = ok(name, "acquire by the first again", a.acquire(&s).await).await;
    assert_eq!(
        tenure,
        Tenure {
            epoch: third,
            last: at(second, 1)
        },
        "[{name}] the first store's new tenure"
    );
    let refused = ok(
        name,
        "second epoch",
        b.append(&[c.record_in(second, &s, 2, LONG)]).await,
    )
    .await;
    assert_eq!(
        refused,
        Appended::fenced(vec![s.clone()]),
        "[{name}] the second store's epoch is refused"
    );
    wrote(name, a, &[c.record_in(third, &s, 1, LONG)]).await;
    let positions = read_all(name, b, &s, c.now).await;
    assert_eq!(
        positions,
        [at(first(), 1), at(first(), 2), at(second, 1), at(third, 1)],
        "[{name}] nothing refused was written, epochs in order"
    );
}

/// Every position of `stream`, read in pages.
async fn read_all(
    name: &str,
    store: &impl MessageStore,
    stream: &StreamId,
    now: Timestamp,
) -> Vec<Seq> {
    let mut positions = Vec::new();
    loop {
        let after = positions.last().copied().unwrap_or(Seq::ZERO);
        let page = ok(
            name,
            "read",
            store.read_after(stream, after, 1000, now).await,
        )
        .await;
        if page.is_empty() {
            return positions;
        }
        positions.extend(page.iter().map(|r| r.seq));
    }
}

/// Calls given up half-way (a reader that went away, a timeout) leave nothing open: after
/// each acquisition cut short at a different moment, appends the store acknowledges are
/// visible at once through `other` (another store on the same database, as another node),
/// and the cut stream can be acquired again. A transaction left open on a pooled connection
/// fails it: the connection's next autocommit write is acknowledged but stays invisible
/// until something ends that transaction (a reader is shown later positions first: a skip),
/// and its row locks hold the next acquisition up.
pub(super) async fn cancelled_acquisitions_leave_nothing_open<S: MessageStore + 'static>(
    store: &Arc<S>,
    other: &impl MessageStore,
) {
    let name = "cancelled-acquisition";
    let c = Case::new(name);
    let s = c.acquired(&**store, "written").await;
    let mut counter = 0;
    // From before the first byte to past the answer, in steps finer than a round trip on
    // loopback (tokio's timers count milliseconds: the cut comes from a thread).
    for (i, micros) in (0..2_000u64).step_by(10).enumerate() {
        let cut = c.stream(&format!("cut{i}"));
        let acquisition = tokio::spawn({
            let (store, cut) = (store.clone(), cut.clone());
            async move { store.acquire(&cut).await }
        });
        let abort = acquisition.abort_handle();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_micros(micros) {
                std::hint::spin_loop();
            }
            abort.abort();
        })
        .await
        .expect("the cutting thread");
        drop(acquisition.await);
        for _ in 0..2 {
            counter += 1;
            let record = c.record(&s, counter, LONG);
            wrote(name, &**store, std::slice::from_ref(&record)).await;
            let read = ok(
                name,
                "read through the other store",
                other
                    .read_after(&s, at(first(), counter - 1), 1, c.now)
                    .await,
            )
            .await;
            assert!(
                read.first().is_some_and(|r| r.seq == record.seq),
                "[{name}] an acknowledged append is invisible to another store after an \
                 acquisition cut short at {micros} µs (a transaction left open on the \
                 connection that wrote it?)"
            );
        }
        ok(
            name,
            "acquisition of the cut stream",
            store.acquire(&cut).await,
        )
        .await;
    }
}
