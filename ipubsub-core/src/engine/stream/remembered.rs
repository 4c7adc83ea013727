//! A stream's dedupe window: the ids it accepted, remembered for the window
//! ([`crate::engine::dedupe`]).

use std::time::Duration;

use super::Stream;
use crate::engine::dedupe::Dedupe;
use crate::engine::lease::Ctx;
use crate::id::MessageId;
use crate::id_cap::IdCap;
use crate::time::Timestamp;

impl Stream {
    /// Fixes the stream's dedupe window if none is fixed yet.
    pub(in crate::engine) fn set_dedupe_window(&mut self, window: Duration) {
        if !window.is_zero() && self.dedupe().is_none() {
            self.waiting_mut().dedupe = Some(Box::new(Dedupe::new(window)));
        }
    }

    pub(super) fn dedupe(&self) -> Option<&Dedupe> {
        self.waiting.as_ref()?.dedupe.as_deref()
    }

    /// The stream's dedupe window, if one is fixed.
    pub(in crate::engine) fn dedupe_window(&self) -> Option<Duration> {
        self.dedupe().map(Dedupe::window)
    }

    /// Whether a message of `id` was accepted within the stream's dedupe window.
    pub(in crate::engine) fn is_duplicate(&self, id: &MessageId, ctx: &Ctx<'_>) -> bool {
        self.dedupe().is_some_and(|d| d.contains(id, ctx.now()))
    }

    /// Remembers `id` as accepted now, if the stream has a dedupe window.
    pub(in crate::engine) fn remember(&mut self, id: &MessageId, ctx: &Ctx<'_>) {
        if let Some(dedupe) = self.waiting.as_mut().and_then(|w| w.dedupe.as_mut()) {
            dedupe.remember(id, ctx.now(), ctx.dedupe);
        }
    }

    /// Remembers ids another node had accepted into this stream, each for the time it had
    /// left (a hand-off), under `window` if the stream has none yet.
    pub(in crate::engine) fn adopt_dedupe(
        &mut self,
        window: Duration,
        entries: Vec<(MessageId, Duration)>,
        now: Timestamp,
        budget: &IdCap,
    ) {
        self.set_dedupe_window(window);
        if let Some(dedupe) = self.waiting.as_mut().and_then(|w| w.dedupe.as_mut()) {
            for (id, left) in entries {
                let expires = now.saturating_add(left).as_micros();
                dedupe.remember_until(&id, expires, budget);
            }
        }
    }

    /// The remembered ids with the time each has left, taken out for a hand-off.
    pub(in crate::engine) fn take_dedupe(
        &mut self,
        now: Timestamp,
        budget: &IdCap,
    ) -> Vec<(MessageId, Duration)> {
        match self.waiting.as_mut().and_then(|w| w.dedupe.as_mut()) {
            Some(dedupe) => dedupe.take_all(now, budget),
            None => Vec::new(),
        }
    }
}
