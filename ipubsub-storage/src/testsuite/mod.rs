//! The conformance suite of the [`MessageStore`] contract. Every backend runs it against a
//! real instance with one call:
//!
//! ```text
//! ipubsub_storage::testsuite::run(|| async { MyStore::open(&config).await.unwrap() }).await;
//! ```
//!
//! `open` must return a store over the *same* data each time it is called: the suite reopens
//! the store to check that appends survive it. Every case writes to streams of its own, with
//! a prefix unique to the run, so the suite can share a database with other data and other
//! runs. A failed check panics with the case's name and what differed.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ipubsub_core::{
    Appended, Epoch, LogRecord, Message, MessageId, MessageStore, Seq, StoreError, StreamId,
    Tenure, Timestamp, expiry,
};

/// A time in the suite's future and past are relative to: the real present, so that servers
/// with native TTLs (which expire by their own clock) agree with the suite's `now`.
fn base() -> Timestamp {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    Timestamp::from_micros(micros)
}

struct Case {
    name: &'static str,
    prefix: String,
    now: Timestamp,
}

/// The epoch of a stream's first acquisition ([`Epoch::after`] nothing).
fn first() -> Epoch {
    Epoch::new(1).expect("epoch 1")
}

/// Position `counter` of `epoch`.
fn at(epoch: Epoch, counter: u64) -> Seq {
    Seq::at(epoch, counter).expect("a counter that fits")
}

impl Case {
    fn new(name: &'static str) -> Self {
        let now = base();
        Self {
            name,
            prefix: format!("suite-{name}-{}-{}", std::process::id(), now.as_micros()),
            now,
        }
    }

    fn stream(&self, name: &str) -> StreamId {
        StreamId::new(format!("{}-{name}", self.prefix)).expect("valid stream id")
    }

    /// A new stream of this case, acquired once: its records are of the first epoch.
    async fn acquired(&self, store: &impl MessageStore, name: &str) -> StreamId {
        let s = self.stream(name);
        let tenure = ok(self.name, "acquire", store.acquire(&s).await).await;
        assert_eq!(
            tenure,
            Tenure {
                epoch: first(),
                last: Seq::ZERO
            },
            "[{}] the first acquisition of a new stream",
            self.name
        );
        s
    }

    /// A record of `stream` at position `counter` of the first epoch, accepted now, living
    /// `ttl`.
    fn record(&self, stream: &StreamId, counter: u64, ttl: Duration) -> LogRecord {
        self.record_in(first(), stream, counter, ttl)
    }

    /// A record of `stream` at position `counter` of `epoch`.
    fn record_in(&self, epoch: Epoch, stream: &StreamId, counter: u64, ttl: Duration) -> LogRecord {
        let seq = counter;
        LogRecord {
            stream: stream.clone(),
            seq: at(epoch, counter),
            message: Message::new(
                MessageId::new(format!("m-{seq}")).expect("valid id"),
                Bytes::from(format!(
                    "{{\"seq\":{seq},\"text\":\"caf\u{e9} \\\"q\\\"\"}}"
                )),
                self.now,
            ),
            expires_at: expiry(self.now, ttl),
        }
    }
}

mod fence;
mod find;

const LONG: Duration = Duration::from_secs(3600);

/// The counters of the records' positions.
#[track_caller]
fn seqs(records: &[LogRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq.counter()).collect()
}

/// An append that must write every record.
async fn wrote(case: &str, store: &impl MessageStore, batch: &[LogRecord]) {
    let appended = ok(case, "append", store.append(batch).await).await;
    assert_eq!(
        appended,
        Appended::all(),
        "[{case}] an append of the current epoch is not fenced"
    );
}

/// An append of records that must all be findable ([`MessageStore::append_findable`]).
async fn wrote_findable(case: &str, store: &impl MessageStore, batch: &[LogRecord]) {
    let findable = vec![true; batch.len()];
    let appended = store.append_findable(batch, &findable).await;
    assert_eq!(
        ok(case, "append_findable", appended).await,
        Appended::all(),
        "[{case}] an append of the current epoch is not fenced"
    );
}

async fn ok<T>(case: &str, what: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("[{case}] {what} failed: {e} ({e:?})"),
    }
}

/// How a store removes expired records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expiry {
    /// `purge_expired` deletes them, in batches (the usual case).
    Purged,
    /// The database deletes them by itself, by its own clock, within two seconds of their
    /// expiry (Cassandra's `USING TTL`); `purge_expired` may delete nothing. The suite then
    /// waits for the database instead of purging.
    Native,
}

/// Runs every case of the suite on stores from `open`, which purge expired records with
/// `purge_expired`.
pub async fn run<S, F, Fut>(open: F)
where
    S: MessageStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    run_with(open, Expiry::Purged).await;
}

/// Runs the cases for a database shared by several nodes on two stores from `open` at once:
/// each takes streams from the other, also while the other's writers append. For the
/// backends a cluster shares (not for a store that only one process may open).
pub async fn run_shared<S, F, Fut>(open: F)
where
    S: MessageStore + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let (first, second) = (Arc::new(open().await), open().await);
    fence::two_stores_take_a_stream_in_turn(&*first, &second).await;
    fence::another_store_takes_the_stream_while_the_first_writes(&first, &second).await;
    fence::cancelled_acquisitions_leave_nothing_open(&first, &second).await;
}

/// Runs every case of the suite on stores from `open`, whose expired records go as `expiry`
/// says.
pub async fn run_with<S, F, Fut>(open: F, expiry: Expiry)
where
    S: MessageStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let store = open().await;
    the_server_time_is_the_present(&store).await;
    appends_are_read_back_in_order_with_their_bytes(&store).await;
    reads_start_after_the_position_and_honour_the_limit(&store).await;
    unknown_streams_are_empty(&store).await;
    a_retried_append_is_idempotent(&store).await;
    a_conflicting_batch_writes_nothing(&store).await;
    expired_records_are_hidden(&store).await;
    purge_removes_expired_records_in_bounded_batches(&store, expiry).await;
    many_streams_in_one_batch(&store).await;
    find::an_id_is_found_by_stream_and_acceptance_time(&store).await;
    find::expired_and_purged_records_are_not_found(&store, expiry).await;
    find::a_listing_holds_every_findable_record_in_its_window(&store).await;
    fence::an_acquisition_fences_the_older_epoch(&store).await;
    fence::a_batch_is_fenced_stream_by_stream(&store).await;
    let store = Arc::new(store);
    concurrent_appends_to_different_streams(&store).await;
    fence::racing_appends_land_before_the_fence_or_not_at_all(&store).await;
    let written = appends_survive_a_reopen_before(&*store).await;
    drop(store);
    let reopened = open().await;
    appends_survive_a_reopen_after(&reopened, written).await;
}

/// A store that tells its server's time tells the present (the suite's servers run on this
/// machine, so its clock and theirs agree to well within a second).
async fn the_server_time_is_the_present(store: &impl MessageStore) {
    let case = "the-server-time-is-the-present";
    let before = base();
    let told = ok(case, "server_time", store.server_time().await).await;
    let after = base();
    if let Some(told) = told {
        let slack = Duration::from_secs(1);
        assert!(
            told >= Timestamp::from_micros(before.as_micros().saturating_sub(1_000_000))
                && told <= after.saturating_add(slack),
            "[{case}] the server said {told}, between {before} and {after}"
        );
    }
}

async fn appends_are_read_back_in_order_with_their_bytes(store: &impl MessageStore) {
    let name = "order";
    let c = Case::new(name);
    let (a, b) = (c.acquired(store, "a").await, c.acquired(store, "b").await);
    wrote(
        name,
        store,
        &[
            c.record(&a, 1, LONG),
            c.record(&b, 1, LONG),
            c.record(&a, 2, LONG),
        ],
    )
    .await;
    wrote(name, store, &[c.record(&a, 5, LONG)]).await;
    let read = ok(
        name,
        "read",
        store.read_after(&a, Seq::ZERO, 100, c.now).await,
    )
    .await;
    assert_eq!(seqs(&read), [1, 2, 5], "[{name}] positions of stream a");
    assert_eq!(
        read[0],
        c.record(&a, 1, LONG),
        "[{name}] a record comes back exactly as written"
    );
    assert_eq!(
        ok(name, "last_seq", store.last_seq(&a).await).await,
        at(first(), 5),
        "[{name}] last_seq"
    );
    assert_eq!(
        ok(name, "last_seq", store.last_seq(&b).await).await,
        at(first(), 1),
        "[{name}] last_seq of b"
    );
}

async fn reads_start_after_the_position_and_honour_the_limit(store: &impl MessageStore) {
    let name = "positions";
    let c = Case::new(name);
    let s = c.acquired(store, "s").await;
    let batch: Vec<_> = (1..=20).map(|i| c.record(&s, i * 10, LONG)).collect();
    wrote(name, store, &batch).await;
    let read = ok(
        name,
        "read",
        store.read_after(&s, at(first(), 50), 3, c.now).await,
    )
    .await;
    assert_eq!(seqs(&read), [60, 70, 80], "[{name}] after 50, limit 3");
    let read = ok(
        name,
        "read",
        store.read_after(&s, at(first(), 55), 2, c.now).await,
    )
    .await;
    assert_eq!(
        seqs(&read),
        [60, 70],
        "[{name}] after a position between records"
    );
    let read = ok(
        name,
        "read",
        store.read_after(&s, at(first(), 200), 10, c.now).await,
    )
    .await;
    assert!(read.is_empty(), "[{name}] nothing after the last");
    let read = ok(
        name,
        "read",
        store.read_after(&s, Seq::ZERO, 1000, c.now).await,
    )
    .await;
    assert_eq!(read.len(), 20, "[{name}] everything");
}

async fn unknown_streams_are_empty(store: &impl MessageStore) {
    let name = "unknown";
    let c = Case::new(name);
    let s = c.stream("never-written");
    assert!(
        ok(
            name,
            "read",
            store.read_after(&s, Seq::ZERO, 10, c.now).await
        )
        .await
        .is_empty()
    );
    assert_eq!(
        ok(name, "last_seq", store.last_seq(&s).await).await,
        Seq::ZERO
    );
}

async fn a_retried_append_is_idempotent(store: &impl MessageStore) {
    let name = "retry";
    let c = Case::new(name);
    let s = c.acquired(store, "s").await;
    let batch = [c.record(&s, 1, LONG), c.record(&s, 2, LONG)];
    wrote(name, store, &batch).await;
    wrote(name, store, &batch).await;
    let read = ok(
        name,
        "read",
        store.read_after(&s, Seq::ZERO, 10, c.now).await,
    )
    .await;
    assert_eq!(seqs(&read), [1, 2], "[{name}] no duplicate positions");
}

async fn a_conflicting_batch_writes_nothing(store: &impl MessageStore) {
    let name = "conflict";
    let c = Case::new(name);
    let s = c.acquired(store, "s").await;
    wrote(name, store, &[c.record(&s, 1, LONG)]).await;
    let mut other = c.record(&s, 1, LONG);
    other.message = Message::new(
        MessageId::new("different").expect("id"),
        Bytes::from_static(b"0"),
        c.now,
    );
    let result = store.append(&[c.record(&s, 2, LONG), other]).await;
    assert!(
        matches!(result, Err(StoreError::Conflict { .. })),
        "[{name}] expected a conflict, got {result:?}"
    );
    let read = ok(
        name,
        "read",
        store.read_after(&s, Seq::ZERO, 10, c.now).await,
    )
    .await;
    assert_eq!(
        seqs(&read),
        [1],
        "[{name}] no part of the conflicting batch was written"
    );
    assert_eq!(
        read[0],
        c.record(&s, 1, LONG),
        "[{name}] the original record is intact"
    );
}

async fn expired_records_are_hidden(store: &impl MessageStore) {
    let name = "ttl";
    let c = Case::new(name);
    let s = c.acquired(store, "s").await;
    wrote(
        name,
        store,
        &[
            c.record(&s, 1, Duration::from_secs(2)),
            c.record(&s, 2, LONG),
            c.record(&s, 3, Duration::from_secs(2)),
        ],
    )
    .await;
    let before = c.now.saturating_add(Duration::from_secs(1));
    assert_eq!(
        seqs(
            &ok(
                name,
                "read",
                store.read_after(&s, Seq::ZERO, 10, before).await
            )
            .await
        ),
        [1, 2, 3]
    );
    let at_expiry = c.now.saturating_add(Duration::from_secs(2));
    let read = ok(
        name,
        "read",
        store.read_after(&s, Seq::ZERO, 10, at_expiry).await,
    )
    .await;
    assert_eq!(
        seqs(&read),
        [2],
        "[{name}] a record is hidden from its expires_at on"
    );
    let read = ok(
        name,
        "read",
        store.read_after(&s, Seq::ZERO, 1, at_expiry).await,
    )
    .await;
    assert_eq!(
        seqs(&read),
        [2],
        "[{name}] the limit counts unexpired records only"
    );
}

async fn purge_removes_expired_records_in_bounded_batches(
    store: &impl MessageStore,
    expiry: Expiry,
) {
    let name = "purge";
    let c = Case::new(name);
    let s = c.acquired(store, "s").await;
    let mut batch: Vec<_> = (1..=25)
        .map(|i| c.record(&s, i, Duration::from_secs(1)))
        .collect();
    batch.push(c.record(&s, 26, LONG));
    wrote(name, store, &batch).await;
    let later = c.now.saturating_add(Duration::from_secs(5));
    if expiry == Expiry::Native {
        let purged = ok(name, "purge", store.purge_expired(later, 10).await).await;
        assert!(purged <= 10, "[{name}] purged {purged} with a limit of 10");
        // The database's own clock: 1 s of TTL, up to 2 s of its rounding, some slack.
        let gone = c.now.saturating_add(Duration::from_millis(3_500));
        tokio::time::sleep(gone.saturating_since(base())).await;
    } else {
        // Other data in a shared database may expire too: purge until a call comes back short.
        let mut rounds = 0;
        loop {
            let purged = ok(name, "purge", store.purge_expired(later, 10).await).await;
            assert!(purged <= 10, "[{name}] purged {purged} with a limit of 10");
            rounds += 1;
            if purged < 10 {
                break;
            }
            assert!(rounds < 100_000, "[{name}] purge never finished");
        }
        assert!(
            rounds >= 3,
            "[{name}] 25 expired records need at least 3 rounds of 10"
        );
    }
    let read = ok(
        name,
        "read",
        store.read_after(&s, Seq::ZERO, 100, c.now).await,
    )
    .await;
    assert_eq!(
        seqs(&read),
        [26],
        "[{name}] expired records are gone even for a reader in the past"
    );
    assert_eq!(
        ok(name, "last_seq", store.last_seq(&s).await).await,
        at(first(), 26)
    );
}

async fn many_streams_in_one_batch(store: &impl MessageStore) {
    let name = "many";
    let c = Case::new(name);
    let mut streams = Vec::new();
    for i in 0..300 {
        streams.push(c.acquired(store, &format!("s{i}")).await);
    }
    let batch: Vec<_> = streams
        .iter()
        .flat_map(|s| (1..=3).map(|q| c.record(s, q, LONG)))
        .collect();
    wrote(name, store, &batch).await;
    for s in &streams {
        let read = ok(
            name,
            "read",
            store.read_after(s, Seq::ZERO, 10, c.now).await,
        )
        .await;
        assert_eq!(seqs(&read), [1, 2, 3], "[{name}] stream {s}");
    }
}

async fn concurrent_appends_to_different_streams<S: MessageStore>(store: &Arc<S>) {
    let name = "concurrent";
    let c = Arc::new(Case::new(name));
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (store, c) = (store.clone(), c.clone());
            tokio::spawn(async move {
                let s = c.acquired(&*store, &format!("t{t}")).await;
                for q in 1..=25 {
                    let appended = store.append(&[c.record(&s, q, LONG)]).await?;
                    assert!(appended.fenced.is_empty(), "[{name}] not fenced");
                }
                Ok::<_, StoreError>(())
            })
        })
        .collect();
    for task in tasks {
        let joined = task
            .await
            .unwrap_or_else(|e| panic!("[{name}] task panicked: {e}"));
        ok(name, "append", joined).await;
    }
    for t in 0..8 {
        let s = c.stream(&format!("t{t}"));
        let read = ok(
            name,
            "read",
            store.read_after(&s, Seq::ZERO, 100, c.now).await,
        )
        .await;
        assert_eq!(
            seqs(&read),
            (1..=25).collect::<Vec<_>>(),
            "[{name}] stream {s}"
        );
    }
}

async fn appends_survive_a_reopen_before(store: &impl MessageStore) -> (StreamId, Vec<LogRecord>) {
    let name = "reopen";
    let c = Case::new(name);
    let s = c.acquired(store, "s").await;
    let batch: Vec<_> = (1..=5).map(|q| c.record(&s, q, LONG)).collect();
    wrote_findable(name, store, &batch).await;
    (s, batch)
}

async fn appends_survive_a_reopen_after(
    store: &impl MessageStore,
    (s, written): (StreamId, Vec<LogRecord>),
) {
    let name = "reopen";
    let now = written[0].message.timestamp();
    let read = ok(
        name,
        "read after reopening",
        store.read_after(&s, Seq::ZERO, 10, now).await,
    )
    .await;
    assert_eq!(
        read, written,
        "[{name}] everything appended before the reopen is there"
    );
    assert_eq!(
        ok(name, "last_seq", store.last_seq(&s).await).await,
        at(first(), 5)
    );
    let tenure = ok(name, "acquire after reopening", store.acquire(&s).await).await;
    assert_eq!(
        (tenure.epoch.get(), tenure.last),
        (2, at(first(), 5)),
        "[{name}] the epoch survives a reopen"
    );
    if let Some(last) = written.last() {
        find::an_id_is_found_after_a_reopen(store, &s, last).await;
    }
}
