//! Idempotent appends: the message ids a stream's deduplicating sends wrote while this node
//! held the stream, and when the store must be asked instead.
//!
//! A send that asks for a window `W` is a duplicate when the stream holds a record of its id
//! accepted within the last `W` and not expired. This node knows every such record it wrote
//! itself since it acquired the stream ([`Remembered`]); records of earlier owners (another
//! node, or this one before a restart or a release) only the store knows, and they matter
//! only while the window reaches back before the acquisition, and only if the store held any
//! record of the stream then (a new stream has none). The first send whose window reaches
//! back that far asks the store to list the stream's findable records of its window
//! ([`MessageStore::list_findable`]); once they are remembered too, the sends of that window
//! are answered from memory. A store that does not list, or a listing that would not fit
//! the per-node cap, leaves each such send to ask the store for its own id
//! ([`MessageStore::find_message`]), as does a memory that is not complete: an id was left
//! out for the cap, or an entry of a shorter window than the one asked for may have been
//! forgotten already.
//!
//! [`MessageStore::find_message`]: crate::MessageStore::find_message
//! [`MessageStore::list_findable`]: crate::MessageStore::list_findable

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::id::MessageId;
use crate::id_cap::IdCap;
use crate::store::{FoundId, Seq};
use crate::time::Timestamp;

/// The node's count of remembered ids, its cap, and what deduplication did.
#[derive(Debug)]
pub(super) struct IdBudget {
    cap: IdCap,
    lookups: AtomicU64,
    listings: AtomicU64,
}

impl IdBudget {
    pub(super) fn new(max: usize) -> Self {
        Self {
            cap: IdCap::new(max),
            lookups: AtomicU64::new(0),
            listings: AtomicU64::new(0),
        }
    }

    /// How many more ids fit under the cap.
    pub(super) fn room(&self) -> usize {
        self.cap.room()
    }

    pub(super) fn duplicate(&self) {
        self.cap.count_duplicate();
    }

    pub(super) fn lookup(&self) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn listing(&self) {
        self.listings.fetch_add(1, Ordering::Relaxed);
    }

    /// `(remembered now, left out for the cap, duplicates, store lookups, store listings)`.
    pub(super) fn snapshot(&self) -> (usize, u64, u64, u64, u64) {
        (
            self.cap.entries(),
            self.cap.unremembered(),
            self.cap.duplicates(),
            self.lookups.load(Ordering::Relaxed),
            self.listings.load(Ordering::Relaxed),
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
    /// Not written by this node within the window, which reaches back to records of earlier
    /// owners not listed yet: list them ([`MessageStore::list_findable`]), then look again.
    ///
    /// [`MessageStore::list_findable`]: crate::MessageStore::list_findable
    List,
    /// Not written by this node within the window; ask the store for the id.
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

    /// What is known of `id` for a send of `window` at `now`, of this node's own records
    /// and those listed; [`Known::Unseen`] does not look at earlier owners' others.
    pub(super) fn known(&mut self, id: &MessageId, window: Duration, now: Timestamp) -> Known {
        self.forget_expired(now);
        let since = now.saturating_sub(window);
        if let Some(w) = self.by_id.get(id)
            && w.accepted >= since
            && w.expires > now
        {
            return Known::At(w.seq);
        }
        if self.incomplete || window > self.shortest {
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
                if !self.budget.cap.take_place() {
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

    /// Remembers the records of earlier owners a store listed for a send of `window`: each
    /// id at its latest position, unless this node wrote it since (later). They were accepted
    /// before this node's own records, so they go first in the order they are forgotten in.
    pub(super) fn learn(&mut self, listed: Vec<FoundId>, window: Duration) {
        for found in listed.into_iter().rev() {
            let Entry::Vacant(entry) = self.by_id.entry(found.id) else {
                continue; // a later position: this node's own, or listed after this one
            };
            if !self.budget.cap.take_place() {
                self.incomplete = true;
                return;
            }
            let id = entry.key().clone();
            entry.insert(Written {
                seq: found.seq,
                accepted: found.accepted,
                expires: found.expires_at,
            });
            let forget_at = found.expires_at.min(found.accepted.saturating_add(window));
            self.order.push_front((forget_at, id, found.seq));
        }
        self.shortest = self.shortest.min(window);
    }

    /// Forgets `id` if it is remembered at `seq` (its append was withdrawn unwritten).
    pub(super) fn withdraw(&mut self, id: &MessageId, seq: Seq) {
        if self.by_id.get(id).is_some_and(|w| w.seq == seq) {
            self.by_id.remove(id);
            self.budget.cap.give_back(1);
        }
    }

    /// Whether any id is remembered at `now`, after forgetting those past their window.
    pub(super) fn remembers_any(&mut self, now: Timestamp) -> bool {
        self.forget_expired(now);
        !self.by_id.is_empty()
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
        self.budget.cap.give_back(self.by_id.len());
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
    fn an_id_is_known_for_its_window_then_forgotten() {
        let mut r = Remembered::new(Arc::new(IdBudget::new(10)));
        assert_eq!(r.known(&id("a"), W, at(160)), Known::Unseen);
        r.remember(&id("a"), Seq::new(1), at(160), at(FAR), W);
        assert_eq!(r.known(&id("a"), W, at(200)), Known::At(Seq::new(1)));
        assert_eq!(r.known(&id("a"), W, at(220)), Known::At(Seq::new(1)));
        // Out of the window: a new message, and forgotten.
        assert_eq!(r.known(&id("a"), W, at(221)), Known::Unseen);
        assert_eq!(r.len(), 0);
    }

    fn found(name: &str, seq: u64, accepted: u64) -> FoundId {
        FoundId {
            id: id(name),
            seq: Seq::new(seq),
            accepted: at(accepted),
            expires_at: at(FAR),
        }
    }

    #[test]
    fn listed_ids_are_known_at_their_latest_position_below_this_nodes_own() {
        let budget = Arc::new(IdBudget::new(3));
        let mut r = Remembered::new(budget.clone());
        r.remember(&id("mine"), Seq::new(10), at(150), at(FAR), W);
        let listed = vec![
            found("a", 1, 100),
            found("mine", 2, 110),
            found("a", 3, 120),
        ];
        r.learn(listed, W);
        assert_eq!(r.known(&id("a"), W, at(150)), Known::At(Seq::new(3)));
        assert_eq!(r.known(&id("mine"), W, at(150)), Known::At(Seq::new(10)));
        assert_eq!(budget.snapshot().0, 2, "one place per id");
        // Forgotten in the order accepted: a (120 + 60) first, then mine.
        assert_eq!(r.known(&id("a"), W, at(181)), Known::Unseen);
        assert_eq!((r.len(), r.order.len()), (1, 1));
        // Past the cap, a listing leaves the memory incomplete: misses go to the store.
        r.learn(
            vec![found("b", 4, 170), found("c", 5, 175), found("d", 6, 176)],
            W,
        );
        assert_eq!(budget.snapshot().0, 3);
        assert_eq!(r.known(&id("zzz"), W, at(190)), Known::AskStore);
    }

    #[test]
    fn an_expired_record_is_no_duplicate_and_a_longer_window_asks_the_store() {
        let mut r = Remembered::new(Arc::new(IdBudget::new(10)));
        r.remember(&id("short"), Seq::new(1), at(100), at(105), W);
        let known = |r: &mut Remembered, now| r.known(&id("short"), W, at(now));
        assert_eq!(known(&mut r, 104), Known::At(Seq::new(1)));
        assert_eq!(known(&mut r, 105), Known::Unseen);
        // Entries of 60 s may be gone: a window of 120 s cannot trust a miss.
        let longer = Duration::from_secs(120);
        assert_eq!(r.known(&id("other"), longer, at(200)), Known::AskStore);
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
        assert_eq!(r.known(&id("zzz"), W, at(120)), Known::AskStore);
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
