//! Cases of [`MessageStore::find_message`] and [`MessageStore::list_findable`]: which
//! findable records an id lookup finds, or a listing lists, by stream, id, acceptance time,
//! expiry and purge.

use std::time::Duration;

use bytes::Bytes;
use ipubsub_core::{
    FoundId, LogRecord, Message, MessageId, MessageStore, Seq, StreamId, Timestamp,
};

use super::{Case, Expiry, LONG, at, first, ok, wrote, wrote_findable};

/// A record of `stream` at `counter` of the first epoch with message id `id`, accepted
/// `ago` before the case's present, living `ttl` from then.
fn sent(
    c: &Case,
    stream: &StreamId,
    counter: u64,
    id: &str,
    ago: Duration,
    ttl: Duration,
) -> LogRecord {
    let accepted = Timestamp::from_micros(c.now.as_micros() - ago.as_micros() as u64);
    LogRecord {
        stream: stream.clone(),
        seq: at(first(), counter),
        message: Message::new(
            MessageId::new(id).expect("valid id"),
            Bytes::from_static(b"{}"),
            accepted,
        ),
        expires_at: ipubsub_core::expiry(accepted, ttl),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `store.find_message`, which must not fail.
async fn find(
    case: &str,
    store: &impl MessageStore,
    stream: &StreamId,
    id: &str,
    since: Timestamp,
    now: Timestamp,
) -> Option<u64> {
    let id = MessageId::new(id).expect("valid id");
    ok(
        case,
        "find_message",
        store.find_message(stream, &id, since, now).await,
    )
    .await
    .map(Seq::counter)
}

/// An id is found in its own stream only, exactly (no prefix, no other case), at its latest
/// position accepted since the time asked; ids of any characters are found.
pub(super) async fn an_id_is_found_by_stream_and_acceptance_time(store: &impl MessageStore) {
    let name = "find-id";
    let c = Case::new(name);
    let (s, other) = (
        c.acquired(store, "s").await,
        c.acquired(store, "other").await,
    );
    let odd = "m\u{0}\"é\\ 1";
    wrote_findable(
        name,
        store,
        &[
            sent(&c, &s, 1, "m-1", secs(100), LONG),
            sent(&c, &s, 2, "m-10", secs(50), LONG),
            sent(&c, &s, 3, "m-1", secs(10), LONG),
            sent(&c, &s, 4, "old", secs(100), LONG),
            sent(&c, &s, 5, odd, secs(1), LONG),
            sent(&c, &other, 1, "only-other", secs(1), LONG),
        ],
    )
    .await;
    let now = c.now;
    let ago = |n| Timestamp::from_micros(now.as_micros() - secs(n).as_micros() as u64);
    let cases: [(&str, &StreamId, u64, Option<u64>); 10] = [
        ("m-1", &s, 200, Some(3)),
        ("m-1", &s, 10, Some(3)),
        ("m-1", &s, 9, None),
        ("m-10", &s, 60, Some(2)),
        ("m-", &s, 200, None),
        ("M-1", &s, 200, None),
        ("old", &s, 100, Some(4)),
        ("old", &s, 99, None),
        (odd, &s, 5, Some(5)),
        ("only-other", &s, 200, None),
    ];
    for (id, stream, since, want) in cases {
        assert_eq!(
            find(name, store, stream, id, ago(since), now).await,
            want,
            "[{name}] {id:?} in {stream} accepted since {since} s ago"
        );
    }
    assert_eq!(
        find(name, store, &other, "only-other", ago(5), now).await,
        Some(1),
        "[{name}] the other stream's id"
    );
    let unknown = c.stream("never-written");
    assert_eq!(
        find(name, store, &unknown, "m-1", ago(200), now).await,
        None
    );
}

/// An expired record is not found, whether or not it was purged yet; once purged, it stays
/// gone. The live record of the same id is found meanwhile.
pub(super) async fn expired_and_purged_records_are_not_found(
    store: &impl MessageStore,
    expiry: Expiry,
) {
    let name = "find-expired";
    let c = Case::new(name);
    let s = c.acquired(store, "s").await;
    // Accepted 1 s ago and living 2 s: expired a second from now.
    wrote_findable(
        name,
        store,
        &[
            sent(&c, &s, 1, "short", secs(1), secs(2)),
            sent(&c, &s, 2, "both", secs(1), secs(2)),
            sent(&c, &s, 3, "both", secs(1), LONG),
        ],
    )
    .await;
    let since = Timestamp::from_micros(c.now.as_micros() - secs(60).as_micros() as u64);
    assert_eq!(find(name, store, &s, "short", since, c.now).await, Some(1));
    let later = c.now.saturating_add(secs(2));
    assert_eq!(
        find(name, store, &s, "short", since, later).await,
        None,
        "[{name}] an expired record, not purged yet, is not found"
    );
    assert_eq!(find(name, store, &s, "both", since, later).await, Some(3));
    match expiry {
        Expiry::Purged => {
            // Purge everything expired by then (other cases' records too), in batches.
            let purge_at = c.now.saturating_add(secs(3));
            while ok(name, "purge", store.purge_expired(purge_at, 1000).await).await > 0 {}
        }
        // The database's own clock: 2 s of TTL from 1 s ago, up to 2 s of its rounding.
        Expiry::Native => tokio::time::sleep(secs(4)).await,
    }
    // Asked as of before its expiry: gone for good, not only hidden.
    assert_eq!(
        find(name, store, &s, "short", since, c.now).await,
        None,
        "[{name}] a purged record is not found, even as of before its expiry"
    );
    assert_eq!(find(name, store, &s, "both", since, c.now).await, Some(3));
}

/// What was written before a reopen is found after it.
pub(super) async fn an_id_is_found_after_a_reopen(
    store: &impl MessageStore,
    stream: &StreamId,
    last: &LogRecord,
) {
    let name = "find-after-reopen";
    let since = Timestamp::from_micros(last.message.timestamp().as_micros() - 1);
    assert_eq!(
        find(
            name,
            store,
            stream,
            last.message.id().as_str(),
            since,
            last.message.timestamp()
        )
        .await,
        Some(last.seq.counter()),
        "[{name}] the id written before the reopen"
    );
}

/// A store that lists ([`MessageStore::list_findable`]) lists every findable record a lookup
/// would find, in order, with its id and times, and nothing expired or accepted before the
/// time asked; `None` only when there are more than the limit. A store that does not list
/// answers `None` to every listing.
pub(super) async fn a_listing_holds_every_findable_record_in_its_window(store: &impl MessageStore) {
    let name = "list-findable";
    let c = Case::new(name);
    let s = c.acquired(store, "s").await;
    let plain = sent(&c, &s, 3, "plain", secs(5), LONG);
    let findable = [
        sent(&c, &s, 1, "a", secs(100), LONG),
        sent(&c, &s, 2, "b", secs(50), LONG),
        sent(&c, &s, 4, "a", secs(10), LONG),
        // Expired by the time of the listing (2 s after the present), not yet when written.
        sent(&c, &s, 5, "short", secs(10), secs(12)),
        sent(&c, &s, 6, "c", secs(1), LONG),
    ];
    wrote_findable(name, store, &findable[..2]).await;
    wrote(name, store, std::slice::from_ref(&plain)).await;
    wrote_findable(name, store, &findable[2..]).await;
    let ago = |n| Timestamp::from_micros(c.now.as_micros() - secs(n).as_micros() as u64);
    let later = c.now.saturating_add(secs(3));
    let list = |since, limit| store.list_findable(&s, since, later, limit);
    let Some(listed) = ok(name, "list_findable", list(ago(60), 100).await).await else {
        // A store that does not list: it must say so every time.
        let small = ok(name, "list_findable", list(ago(1), 100).await).await;
        assert_eq!(
            small, None,
            "[{name}] a store that does not list never lists"
        );
        return;
    };
    let listed: Vec<_> = listed.into_iter().filter(|f| f.seq != plain.seq).collect();
    assert_eq!(
        listed,
        [&findable[1], &findable[2], &findable[4]].map(FoundId::from),
        "[{name}] since 60 s ago: b, the later a and c, not the expired one, in order"
    );
    assert_eq!(
        ok(name, "list_findable", list(ago(200), 5).await)
            .await
            .map(|l| l.into_iter().filter(|f| f.seq != plain.seq).count()),
        Some(4),
        "[{name}] since 200 s ago, within a limit of 5"
    );
    assert_eq!(
        ok(name, "list_findable", list(ago(200), 2).await).await,
        None,
        "[{name}] more than the limit"
    );
    let unknown = c.stream("never-written");
    assert_eq!(
        ok(
            name,
            "list_findable",
            store.list_findable(&unknown, ago(200), later, 5).await
        )
        .await,
        Some(vec![]),
        "[{name}] a stream never written"
    );
}
