//! [`IdCap`]: the count of message ids a node remembers for deduplication, and its cap. The
//! engine keeps one for its in-memory streams, the log one for its persistent streams.

use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Remembered ids against a cap, shared by every stream of an engine or a log: an id takes a
/// place when it is remembered and gives it back when it is forgotten. An id that finds no
/// place is not remembered, and counted; the send that brought it is never refused for it.
#[derive(Debug)]
pub(crate) struct IdCap {
    entries: AtomicUsize,
    max: usize,
    /// Accepted messages not remembered because the cap was reached.
    unremembered: AtomicU64,
    /// Sends answered as duplicates.
    duplicates: AtomicU64,
}

impl IdCap {
    /// No id remembered yet, at most `max`.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            entries: AtomicUsize::new(0),
            max,
            unremembered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }

    /// Takes a place for one id, or counts that there was none.
    pub(crate) fn take_place(&self) -> bool {
        if self.entries.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.entries.fetch_sub(1, Ordering::Relaxed);
            self.unremembered.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives back the places of `n` ids forgotten.
    pub(crate) fn give_back(&self, n: usize) {
        if n > 0 {
            self.entries.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// How many more ids fit.
    pub(crate) fn room(&self) -> usize {
        self.max.saturating_sub(self.entries())
    }

    /// Counts a send answered as a duplicate.
    pub(crate) fn count_duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// Ids remembered now.
    pub(crate) fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Accepted messages not remembered for the cap.
    pub(crate) fn unremembered(&self) -> u64 {
        self.unremembered.load(Ordering::Relaxed)
    }

    /// Sends answered as duplicates.
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn places_run_out_at_the_cap_and_come_back_when_given() {
        let cap = IdCap::new(2);
        assert!(cap.take_place() && cap.take_place());
        assert!(!cap.take_place(), "the third finds no place");
        assert_eq!((cap.entries(), cap.unremembered(), cap.room()), (2, 1, 0));
        cap.give_back(1);
        assert_eq!(cap.room(), 1);
        assert!(cap.take_place());
        assert_eq!(cap.entries(), 2);
    }
}
