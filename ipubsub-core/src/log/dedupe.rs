//! Idempotent appends: the message ids a stream's deduplicating sends wrote while this node
//! held the stream, and when the store must be asked instead.
//!
//! A send that asks for a window `W` is a duplicate when the stream holds a record of its id
//! accepted within the last `W` and not expired. This node knows every such record it wrote
//! itself since it acquired the stream ([`Remembered`]); records of earlier owners (another
//! node, or this one before a restart or a release) only the store knows, and they matter
//! only while the window reaches back before the acquisition, and only if the store held any
//! record of the stream then (a new stream has none). So the store is asked
//! ([`MessageStore::find_message`]) only then, or when this node's memory is not complete:
//! an id was left out for the per-node cap, or an entry of a shorter window than the one
//! asked for may have been forgotten already.
//!
//! [`MessageStore::find_message`]: crate::MessageStore::find_message

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::id::MessageId;
use crate::store::Seq;
use crate::time::Timestamp;

/// The node's count of remembered ids, its cap, and what deduplication did.
#[derive(Debug)]
pub(super) struct IdBudget {
    entries: AtomicUsize,
    max: usize,
    unremembered: AtomicU64,
    duplicates: AtomicU64,
    lookups: AtomicU64,
}

impl IdBudget {
    pub(super) fn new(max: usize) -> Self {
        Self {
            entries: AtomicUsize::new(0),
            max,
            unremembered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
        }
    }

    fn take_place(&self) -> bool {
        if self.entries.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.entries.fetch_sub(1, Ordering::Relaxed);
            self.unremembered.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give_back(&self, n: usize) {
        self.entries.fetch_sub(n, Ordering::Relaxed);
    }

    pub(super) fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn lookup(&self) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
    }

    /// `(remembered now, left out for the cap, duplicates, store lookups)`.
    pub(super) fn snapshot(&self) -> (usize, u64, u64, u64) {
        (
            self.entries.load(Ordering::Relaxed),
            self.unremembered.load(Ordering::Relaxed),
            self.duplicates.load(Ordering::Relaxed),
            self.lookups.load(Ordering::Relaxed),
        )
    }
}

/// One remembered id: where it was written, when it was accepted and when it expires.
#[derive(Debug, Clone, Copy)]
struct Written {
    seq: Seq,
    accepted: Timestamp,
    expires: Timestamp,
}

/// What this node knows of an id, for a send of window `W` at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Known {
    /// Written at this position within the window: a duplicate (once the position is
    /// settled; until then the send waits for it).
    At(Seq),
    /// Not written by this node within the window, and nothing else can have been.
    Unseen,
    /// Not written by this node within the window; ask the store.
    AskStore,
}

/// The ids of one stream that deduplicating sends wrote since this node acquired it.
#[derive(Debug)]
pub(super) struct Remembered {
    by_id: HashMap<MessageId, Written>,
    /// `(forget at, id, position)` in the order written. Entries of different windows and
    /// TTLs are forgotten at different times; the front goes first and one behind it may
    /// linger, harmlessly: a lookup checks the window and the expiry itself.
    order: VecDeque<(Timestamp, MessageId, Seq)>,
    /// The shortest window an entry was made for: it is remembered at least that long (or
    /// until it expires), so a lookup of a longer window cannot trust a miss.
    shortest: Duration,
    /// An id was left out for the cap: no miss can be trusted until the stream is acquired
    /// again.
    incomplete: bool,
    budget: Arc<IdBudget>,
}

impl Remembered {
    pub(super) fn new(budget: Arc<IdBudget>) -> Self {
        Self {
            by_id: HashMap::new(),
            order: VecDeque::new(),
            shortest: Duration::MAX,
            incomplete: false,
            budget,
        }
    }

    /// What is known of `id` for a send of `window` at `now`; `reaches_earlier`: the window
    /// reaches back to records of the stream's earlier owners.
    pub(super) fn known(
        &mut self,
        id: &MessageId,
        window: Duration,
        now: Timestamp,
        reaches_earlier: bool,
    ) -> Known {
        self.forget_expired(now);
        let since = now.saturating_sub(window);
        if let Some(w) = self.by_id.get(id)
            && w.accepted >= since
            && w.expires > now
        {
            return Known::At(w.seq);
        }
        if self.incomplete || window > self.shortest || reaches_earlier {
            Known::AskStore
        } else {
            Known::Unseen
        }
    }

    /// Remembers that `id` was written at `seq`, accepted at `accepted`, expiring at
    /// `expires`, for a send of `window`.
    pub(super) fn remember(
        &mut self,
        id: &MessageId,
        seq: Seq,
        accepted: Timestamp,
        expires: Timestamp,
        window: Duration,
    ) {
        let written = Written {
            seq,
            accepted,
            expires,
        };
        match self.by_id.entry(id.clone()) {
            Entry::Occupied(mut entry) => {
                entry.insert(written);
            }
            Entry::Vacant(entry) => {
                if !self.budget.take_place() {
                    self.incomplete = true;
                    return;
                }
                entry.insert(written);
            }
        }
        self.shortest = self.shortest.min(window);
        let forget_at = expires.min(accepted.saturating_add(window));
        self.order.push_back((forget_at, id.clone(), seq));
    }

    /// Forgets `id` if it is remembered at `seq` (its append was withdrawn unwritten).
    pub(super) fn withdraw(&mut self, id: &MessageId, seq: Seq) {
        if self.by_id.get(id).is_some_and(|w| w.seq == seq) {
            self.by_id.remove(id);
            self.budget.give_back(1);
        }
    }

    fn forget_expired(&mut self, now: Timestamp) {
        // An entry accepted at `t` with window `w` counts up to and including `t + w`.
        while let Some((forget_at, _, _)) = self.order.front()
            && *forget_at < now
        {
            let Some((_, id, seq)) = self.order.pop_front() else {
                break;
            };
            self.withdraw(&id, seq);
        }
    }

    /// Ids remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }
}

impl Drop for Remembered {
    fn drop(&mut self) {
        self.budget.give_back(self.by_id.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> MessageId {
        MessageId::new(s).expect("id")
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_micros(1_000_000_000_000 + secs * 1_000_000)
    }

    const W: Duration = Duration::from_secs(60);
    const FAR: u64 = 10_000;

    #[test]
    fn a_miss_is_trusted_only_when_the_window_does_not_reach_earlier_owners() {
        let mut r = Remembered::new(Arc::new(IdBudget::new(10)));
        assert_eq!(r.known(&id("a"), W, at(100), true), Known::AskStore);
        assert_eq!(r.known(&id("a"), W, at(160), false), Known::Unseen);
        r.remember(&id("a"), Seq::new(1), at(160), at(FAR), W);
        assert_eq!(r.known(&id("a"), W, at(200), true), Known::At(Seq::new(1)));
        assert_eq!(r.known(&id("a"), W, at(220), false), Known::At(Seq::new(1)));
        // Out of the window: a new message, and forgotten.
        assert_eq!(r.known(&id("a"), W, at(221), false), Known::Unseen);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn an_expired_record_is_no_duplicate_and_a_longer_window_asks_the_store() {
        let mut r = Remembered::new(Arc::new(IdBudget::new(10)));
        r.remember(&id("short"), Seq::new(1), at(100), at(105), W);
        let known = |r: &mut Remembered, now| r.known(&id("short"), W, at(now), false);
        assert_eq!(known(&mut r, 104), Known::At(Seq::new(1)));
        assert_eq!(known(&mut r, 105), Known::Unseen);
        // Entries of 60 s may be gone: a window of 120 s cannot trust a miss.
        let longer = Duration::from_secs(120);
        assert_eq!(
            r.known(&id("other"), longer, at(200), false),
            Known::AskStore
        );
    }

    #[test]
    fn past_the_cap_nothing_is_trusted_and_places_come_back() {
        let budget = Arc::new(IdBudget::new(2));
        let mut r = Remembered::new(budget.clone());
        for (n, name) in ["a", "b", "c"].into_iter().enumerate() {
            r.remember(&id(name), Seq::new(n as u64 + 1), at(100), at(FAR), W);
        }
        assert_eq!(budget.snapshot().0, 2);
        assert_eq!(budget.snapshot().1, 1, "one left out");
        assert_eq!(r.known(&id("zzz"), W, at(120), false), Known::AskStore);
        r.withdraw(&id("a"), Seq::new(9));
        assert_eq!(budget.snapshot().0, 2, "another position: kept");
        r.withdraw(&id("a"), Seq::new(1));
        assert_eq!(budget.snapshot().0, 1);
        drop(r);
        assert_eq!(
            budget.snapshot().0,
            0,
            "a dropped stream gives its places back"
        );
    }
}
