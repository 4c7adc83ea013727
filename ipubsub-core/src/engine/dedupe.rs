//! Idempotent sends: a stream with a dedupe window remembers the `messageUuid`s it accepted
//! for that long, and a send of one of them adds no copy.
//!
//! A stream's window is fixed by the first send that asks for one (like its size), and every
//! entry lives exactly the window, so entries expire in the order they were made: a queue
//! beside the map finds the expired ones without looking at the others. Entries count
//! against a per-engine cap ([`IdCap`]); past it, an accepted message is not
//! remembered (and counted), so a retry of it may add a copy: the send is never refused for
//! it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::id::MessageId;
use crate::id_cap::IdCap;
use crate::time::Timestamp;

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
    pub(super) fn remember(&mut self, id: &MessageId, now: Timestamp, budget: &IdCap) {
        self.remember_until(id, now.as_micros().saturating_add(self.window), budget);
    }

    /// Remembers `id` until `expires` (a hand-off's entry keeps the time it had left).
    pub(super) fn remember_until(&mut self, id: &MessageId, expires: u64, budget: &IdCap) {
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
    pub(super) fn expire(&mut self, now: Timestamp, budget: &IdCap) {
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
        budget: &IdCap,
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
