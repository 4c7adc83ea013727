//! Idempotent sends: a stream with a dedupe window remembers the `messageUuid`s it accepted
//! for that long, and a send of one of them adds no copy.
//!
//! A stream's window is fixed by the first send that asks for one (like its size), and every
//! entry lives exactly the window, so entries expire in the order they were made: a queue
//! beside the map finds the expired ones without looking at the others. Entries count
//! against a per-engine cap ([`DedupeBudget`]); past it, an accepted message is not
//! remembered (and counted), so a retry of it may add a copy: the send is never refused for
//! it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::id::MessageId;
use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use crate::time::Timestamp;

/// The engine's count of remembered ids and its cap.
pub(super) struct DedupeBudget {
    entries: AtomicUsize,
    max: usize,
    /// Accepted messages not remembered because the cap was reached.
    unremembered: AtomicU64,
    /// Sends answered as duplicates.
    duplicates: AtomicU64,
}

impl DedupeBudget {
    pub(super) fn new(max: usize) -> Self {
        Self {
            entries: AtomicUsize::new(0),
            max,
            unremembered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }

    /// Counts a send answered as a duplicate.
    pub(super) fn count_duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends answered as duplicates.
    pub(super) fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Ids remembered now, in all streams.
    pub(super) fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Accepted messages not remembered for the cap.
    pub(super) fn unremembered(&self) -> u64 {
        self.unremembered.load(Ordering::Relaxed)
    }

    /// Takes a place for one entry, or counts that there was none.
    fn take_place(&self) -> bool {
        if self.entries.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.entries.fetch_sub(1, Ordering::Relaxed);
            self.unremembered.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give_back(&self, n: usize) {
        if n > 0 {
            self.entries.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// One stream's remembered ids.
#[derive(Debug)]
pub(super) struct Dedupe {
    window: u64,
    /// Each remembered id and when it expires (µs on the engine's clock).
    seen: HashMap<MessageId, u64>,
    /// The same, in the order they expire. An id remembered again (after it expired) has an
    /// older entry here too, which removes nothing when its time comes.
    order: VecDeque<(u64, MessageId)>,
}

impl Dedupe {
    pub(super) fn new(window: Duration) -> Self {
        Self {
            window: u64::try_from(window.as_micros()).unwrap_or(u64::MAX),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The window.
    pub(super) fn window(&self) -> Duration {
        Duration::from_micros(self.window)
    }

    /// Whether `id` was accepted within the window before `now`.
    pub(super) fn contains(&self, id: &MessageId, now: Timestamp) -> bool {
        self.seen
            .get(id)
            .is_some_and(|&expires| expires > now.as_micros())
    }

    /// Remembers `id`, accepted at `now`, if the budget has room.
    pub(super) fn remember(&mut self, id: &MessageId, now: Timestamp, budget: &DedupeBudget) {
        self.remember_until(id, now.as_micros().saturating_add(self.window), budget);
    }

    /// Remembers `id` until `expires` (a hand-off's entry keeps the time it had left).
    pub(super) fn remember_until(&mut self, id: &MessageId, expires: u64, budget: &DedupeBudget) {
        if let Some(known) = self.seen.get_mut(id) {
            *known = (*known).max(expires);
            self.order.push_back((expires, id.clone()));
            return;
        }
        if !budget.take_place() {
            return;
        }
        self.seen.insert(id.clone(), expires);
        self.order.push_back((expires, id.clone()));
    }

    /// Forgets what expired by `now`.
    pub(super) fn expire(&mut self, now: Timestamp, budget: &DedupeBudget) {
        let now = now.as_micros();
        let mut gone = 0;
        while let Some((expires, _)) = self.order.front() {
            if *expires > now {
                break;
            }
            let Some((expires, id)) = self.order.pop_front() else {
                break;
            };
            if self.seen.get(&id) == Some(&expires) {
                self.seen.remove(&id);
                gone += 1;
            }
        }
        budget.give_back(gone);
        // An id remembered again leaves older queue entries behind: bounded by the window.
        if self.order.capacity() > 64 && self.order.len() * 4 < self.order.capacity() {
            self.order.shrink_to_fit();
        }
    }

    /// Every entry with the time it has left at `now`, for a hand-off; forgets them.
    pub(super) fn take_all(
        &mut self,
        now: Timestamp,
        budget: &DedupeBudget,
    ) -> Vec<(MessageId, Duration)> {
        let now = now.as_micros();
        budget.give_back(self.seen.len());
        self.order.clear();
        self.seen
            .drain()
            .filter(|(_, expires)| *expires > now)
            .map(|(id, expires)| (id, Duration::from_micros(expires - now)))
            .collect()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}
