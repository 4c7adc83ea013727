//! [`BodyBudget`]: the bytes of request bodies, and of large answers not yet sent, a node
//! holds at once (`http.max_body_bytes_in_flight`).
//!
//! `http.max_body_bytes` bounds one body; without a bound on all of them, memory would grow
//! with the number of senders: every connection, and every stream of an HTTP/2 connection,
//! may be in the middle of a body. A body takes each chunk from the budget as it arrives (not
//! its declared length, which a client could announce and never send) and gives all back
//! when its request is answered. A body that does not fit is refused with 503
//! `MEMORY_LIMIT`; the client retries, as with the other memory budgets.
//!
//! A large answer (more than 64 KiB: a `maxMessages` receive of big messages) counts too,
//! until the client has read it: its messages left the engine's budget when they were
//! taken, and a client that stops reading would otherwise keep them in memory uncounted,
//! answer after answer. It is counted whatever the room (it is made already); what it fills
//! refuses the request bodies that come next.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of request bodies held at once, at most `max`. Shared by all connections.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    max: usize,
    used: AtomicUsize,
}

impl BodyBudget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: AtomicUsize::new(0),
        })
    }

    /// The limit.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// `bytes` taken from the budget until the returned hold is dropped; `None` if they do
    /// not fit.
    pub(crate) fn hold(self: &Arc<Self>, bytes: usize) -> Option<HeldBody> {
        let mut held = HeldBody {
            budget: Arc::clone(self),
            bytes: 0,
        };
        held.grow(bytes).then_some(held)
    }

    /// `bytes` held until the returned hold is dropped, whether they fit or not: for memory
    /// already taken (an answer made), so that what comes next sees it.
    pub(crate) fn hold_anyway(self: &Arc<Self>, bytes: usize) -> HeldBody {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        HeldBody {
            budget: Arc::clone(self),
            bytes,
        }
    }

    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.max)
            })
            .is_ok()
    }
}

/// Bytes of one request's body held from a [`BodyBudget`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct HeldBody {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl HeldBody {
    /// Holds `bytes` more; `false` (nothing changes) if they do not fit.
    pub(crate) fn grow(&mut self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let taken = self.budget.take(bytes);
        if taken {
            self.bytes += bytes;
        }
        taken
    }
}

impl Drop for HeldBody {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_fit_within_the_budget_and_are_given_back_when_dropped() {
        let budget = BodyBudget::new(100);
        let first = budget.hold(60).expect("fits");
        assert!(budget.hold(41).is_none(), "60 + 41 > 100");
        let mut second = budget.hold(40).expect("fits exactly");
        assert_eq!(budget.used(), 100);
        assert!(!second.grow(1), "full");
        assert_eq!(budget.used(), 100, "a refused growth holds nothing");
        drop(first);
        assert!(second.grow(60));
        assert_eq!(budget.used(), 100);
        drop(second);
        assert_eq!(budget.used(), 0);
        assert!(budget.hold(101).is_none(), "larger than the whole budget");
        assert_eq!(budget.used(), 0);
        let answer = budget.hold_anyway(150);
        assert_eq!(budget.used(), 150, "counted past the budget");
        assert!(budget.hold(1).is_none(), "and it refuses what comes next");
        drop(answer);
        assert_eq!(budget.used(), 0);
    }
}
