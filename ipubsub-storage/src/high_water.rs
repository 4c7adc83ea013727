//! [`HighWater`]: per stream, a position at or above every position a store has written or
//! found for it, so that appends above it can skip the conflict check. Shared by the stores
//! whose database cannot reject "a different message at a taken position" by itself in the
//! same write (Cassandra, MongoDB).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use ipubsub_core::{Seq, StreamId};

/// Entries kept before the map is cleared (it refills on demand, one lookup per stream).
const ENTRIES: usize = 1 << 20;

/// Highest known positions per stream; bounded.
#[derive(Debug, Default)]
pub(crate) struct HighWater {
    known: Mutex<HashMap<StreamId, Seq>>,
}

impl HighWater {
    /// The highest position known for `stream`, if it is known.
    pub(crate) fn get(&self, stream: &StreamId) -> Option<Seq> {
        self.lock().get(stream).copied()
    }

    /// Records that `stream` holds `seq`.
    pub(crate) fn raise(&self, stream: &StreamId, seq: Seq) {
        let mut known = self.lock();
        if known.len() > ENTRIES {
            known.clear();
        }
        let entry = known.entry(stream.clone()).or_insert(seq);
        *entry = (*entry).max(seq);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Seq>> {
        // Every critical section leaves the map consistent.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
