//! The embedded store's own tests, besides the conformance suite: its layout on disk.

use super::*;

use ipubsub_core::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = EmbeddedConfig::new(dir.path());
    // Each open is a new process's view: the previous store is dropped before reopening.
    crate::testsuite::run(|| async { EmbeddedStore::open(&config).expect("open") }).await;
}

fn record(stream: &StreamId, seq: u64, expires_at: Timestamp) -> LogRecord {
    let message = Message::new(
        MessageId::new(format!("m{seq}")).expect("id"),
        bytes::Bytes::from_static(b"{}"),
        Timestamp::from_micros(1),
    );
    LogRecord {
        stream: stream.clone(),
        seq: Seq::new(seq),
        message,
        expires_at,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_expiry_entry_per_append_and_second_and_the_first_layout_still_purges() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).expect("open");
    let s: StreamId = "s".parse().expect("id");
    let second = |n: u64| Timestamp::from_micros(n * 1_000_000);
    // Two records expiring within one second, one in the next second.
    let batch = [
        record(&s, 1, Timestamp::from_micros(10_000_100)),
        record(&s, 2, Timestamp::from_micros(10_999_999)),
        record(&s, 3, Timestamp::from_micros(11_000_001)),
    ];
    store.append(&batch).await.expect("append");
    assert_eq!(store.inner.expiry.len().expect("len"), 2);
    // A record indexed the first way: key `expires_at | log key`, empty value.
    let old = record(&s, 4, second(5));
    let key = log_key(&s, old.seq);
    let mut index = second(5).as_micros().to_be_bytes().to_vec();
    index.extend_from_slice(&key);
    store
        .inner
        .log
        .insert(&key, encode_value(&old, false))
        .expect("insert");
    store.inner.expiry.insert(index, []).expect("insert");

    // At 11 s the first entry's second is over; the old one (5 s) is too.
    assert_eq!(
        store.purge_expired(second(11), 100).await.expect("purge"),
        3
    );
    let left = store
        .read_after(&s, Seq::ZERO, 10, second(0))
        .await
        .expect("read");
    assert_eq!(left.iter().map(|r| r.seq.get()).collect::<Vec<_>>(), [3]);
    assert_eq!(
        store.purge_expired(second(12), 100).await.expect("purge"),
        1
    );
    assert_eq!(store.inner.expiry.len().expect("len"), 0);
    assert_eq!(store.inner.log.len().expect("len"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findable_records_are_listed_and_indexed_only_once_looked_up_by_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).expect("open");
    let s: StreamId = "s".parse().expect("id");
    let at = |secs: u64| Timestamp::from_micros(secs * 1_000_000);
    let batch: Vec<_> = (1..=6).map(|n| record(&s, n, at(10))).collect();
    store.append(&batch[..2]).await.expect("append");
    let appended = store.append_findable(&batch[2..4], &[true, false]).await;
    appended.expect("append");
    let entries = || store.inner.log.len().expect("len");
    assert_eq!(entries(), 4, "four records and nothing else");
    let list = |limit| store.list_findable(&s, at(0), at(1), limit);
    let seqs = |found: Option<Vec<FoundId>>| {
        found.map(|f| f.iter().map(|f| f.seq.get()).collect::<Vec<_>>())
    };
    assert_eq!(seqs(list(1).await.expect("list")), Some(vec![3]));
    assert_eq!(seqs(list(0).await.expect("list")), None, "more than fit");
    let expired = store.list_findable(&s, at(0), at(10), 9).await;
    assert_eq!(expired.expect("list"), Some(vec![]), "expired");
    assert_eq!(entries(), 4, "listing writes nothing");

    // A lookup by id indexes the stream: an entry for record 3, and one for each findable
    // record appended from then on.
    let find = |n: u64| {
        let id = MessageId::new(format!("m{n}")).expect("id");
        let (store, s) = (store.clone(), s.clone());
        async move { store.find_message(&s, &id, at(0), at(1)).await }
    };
    assert_eq!(find(3).await.expect("find"), Some(Seq::new(3)));
    assert_eq!(find(4).await.expect("find"), None, "not findable");
    assert_eq!(entries(), 5);
    let appended = store.append_findable(&batch[4..], &[true, false]).await;
    appended.expect("append");
    assert_eq!(entries(), 8, "records 5 and 6, and an entry for 5");
    assert_eq!(find(5).await.expect("find"), Some(Seq::new(5)));
    // An acquisition keeps the stream indexed.
    let tenure = store.acquire(&s).await.expect("acquire");
    let facts = store.inner.facts(&mut Known::default(), &s).expect("facts");
    assert!(facts.indexed && facts.epoch == tenure.epoch);
    // An entry of another id under the same hash (as a collision makes): told apart.
    let m9 = MessageId::new("m9").expect("id");
    let entry = id_key(&s, &m9, Seq::new(2));
    store.inner.log.insert(&entry, []).expect("insert");
    assert_eq!(find(9).await.expect("find"), None, "record 2 holds m2");
    store.inner.log.remove(entry).expect("remove");
    // Entries go with their records: 6 records, and the entry written for record 3 listed
    // on its own (counted like one); the entry appended with record 5 listed with it.
    assert_eq!(store.purge_expired(at(11), 100).await.expect("purge"), 7);
    assert_eq!(entries(), 0);
    assert_eq!(store.inner.expiry.len().expect("len"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_index_entries_of_an_earlier_build_are_purged_with_their_records() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).expect("open");
    let s: StreamId = "s".parse().expect("id");
    let at = |secs: u64| Timestamp::from_micros(secs * 1_000_000);
    // Three findable records, each with an index entry after the stream's records
    // (`… | 0xff × 8 | hash | seq`), listed in one expiry entry the way that build did.
    let mut value = Vec::new();
    for n in 1..=3 {
        let r = record(&s, n, at(10));
        let key = log_key(&s, r.seq);
        let mut id_key = log_key(&s, Seq::new(u64::MAX));
        id_key.extend_from_slice(&n.to_be_bytes());
        id_key.extend_from_slice(&n.to_be_bytes());
        store
            .inner
            .log
            .insert(&key, encode_value(&r, true))
            .expect("insert");
        store.inner.log.insert(&id_key, []).expect("insert");
        push_listed(&mut value, &key, Some(&id_key));
    }
    let mut expiry_key = at(10).as_micros().to_be_bytes().to_vec();
    expiry_key.extend_from_slice(&log_key(&s, Seq::new(1)));
    store
        .inner
        .expiry
        .insert(expiry_key, value)
        .expect("insert");
    let read = store
        .read_after(&s, Seq::ZERO, 10, at(0))
        .await
        .expect("read");
    assert_eq!(read.len(), 3, "a read never meets an index entry");
    assert_eq!(
        store
            .list_findable(&s, at(0), at(1), 9)
            .await
            .expect("list")
            .map(|f| f.len()),
        Some(3)
    );
    // Part of the expiry entry at a time: the rest keeps its listed index entries.
    assert_eq!(store.purge_expired(at(11), 1).await.expect("purge"), 1);
    assert_eq!(store.inner.log.len().expect("len"), 4);
    assert_eq!(store.purge_expired(at(11), 100).await.expect("purge"), 2);
    assert_eq!(
        store.inner.log.len().expect("len"),
        0,
        "records and entries"
    );
    assert_eq!(store.inner.expiry.len().expect("len"), 0);
}
