//! [`StreamLog`]: what the log knows of one stream's positions.

use std::collections::VecDeque;
use std::task::Waker;
use std::time::Duration;

use std::collections::HashMap;

use crate::store::Seq;
use crate::time::Timestamp;

pub(super) enum LoadState {
    /// One caller is reading the last position from the store; these wait for it.
    Loading(Vec<Waker>),
    Ready {
        /// Every position up to here is settled (written, or failed for good): readers may
        /// see up to here and no further.
        committed: Seq,
        /// The last position handed out.
        assigned: Seq,
        /// Each position handed out after `committed`, in order, and whether it is settled.
        /// Batches can finish out of order; the watermark only moves over a settled prefix.
        in_flight: VecDeque<(Seq, bool)>,
    },
}

pub(super) struct StreamLog {
    state: LoadState,
    /// Reads waiting for the watermark to move, by waiter id.
    tail: HashMap<u64, Waker>,
    next_waiter: u64,
    last_used: Timestamp,
}

impl StreamLog {
    pub(super) fn loading(now: Timestamp) -> Self {
        Self {
            state: LoadState::Loading(Vec::new()),
            tail: HashMap::new(),
            next_waiter: 0,
            last_used: now,
        }
    }

    pub(super) fn is_ready(&self) -> bool {
        matches!(self.state, LoadState::Ready { .. })
    }

    pub(super) fn touch(&mut self, now: Timestamp) {
        self.last_used = now;
    }

    pub(super) fn committed(&self) -> Option<Seq> {
        match self.state {
            LoadState::Ready { committed, .. } => Some(committed),
            LoadState::Loading(_) => None,
        }
    }

    /// The load finished: the store's last position is settled by definition.
    pub(super) fn loaded(&mut self, last: Seq) {
        let previous = std::mem::replace(
            &mut self.state,
            LoadState::Ready {
                committed: last,
                assigned: last,
                in_flight: VecDeque::new(),
            },
        );
        if let LoadState::Loading(wakers) = previous {
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    pub(super) fn wait_for_load(&mut self, waker: &Waker) -> bool {
        match &mut self.state {
            LoadState::Loading(wakers) => {
                wakers.push(waker.clone());
                true
            }
            LoadState::Ready { .. } => false,
        }
    }

    pub(super) fn wake_loaders(&mut self) {
        if let LoadState::Loading(wakers) = &mut self.state {
            wakers.drain(..).for_each(Waker::wake);
        }
    }

    /// Hands out the next position: above the last one, and never below the current time in
    /// microseconds. Positions therefore keep growing even after a purge removed every record
    /// of the stream (when the store's last position falls back to zero), so an old token can
    /// never point past new messages.
    pub(super) fn assign(&mut self, now: Timestamp) -> Option<Seq> {
        self.last_used = now;
        match &mut self.state {
            LoadState::Ready {
                assigned,
                in_flight,
                ..
            } => {
                *assigned = Seq::new(assigned.get().saturating_add(1).max(now.as_micros()));
                in_flight.push_back((*assigned, false));
                Some(*assigned)
            }
            LoadState::Loading(_) => None,
        }
    }

    /// Position `seq` is settled; moves the watermark over the settled prefix.
    pub(super) fn settle(&mut self, seq: Seq) {
        let LoadState::Ready {
            committed,
            in_flight,
            ..
        } = &mut self.state
        else {
            return;
        };
        if let Ok(index) = in_flight.binary_search_by_key(&seq, |(s, _)| *s) {
            in_flight[index].1 = true;
        }
        let before = *committed;
        while let Some(&(seq, true)) = in_flight.front() {
            in_flight.pop_front();
            *committed = seq;
        }
        if *committed != before {
            self.wake_tail();
        }
    }

    pub(super) fn add_tail_waiter(&mut self, id: Option<u64>, waker: &Waker) -> u64 {
        let id = id.unwrap_or_else(|| {
            self.next_waiter += 1;
            self.next_waiter
        });
        self.tail.insert(id, waker.clone());
        id
    }

    pub(super) fn remove_tail_waiter(&mut self, id: u64) {
        self.tail.remove(&id);
    }

    pub(super) fn wake_tail(&mut self) {
        for (_, waker) in self.tail.drain() {
            waker.wake();
        }
    }

    pub(super) fn is_idle(&self, now: Timestamp, idle: Duration) -> bool {
        let settled = match &self.state {
            LoadState::Ready { in_flight, .. } => in_flight.is_empty(),
            LoadState::Loading(_) => false,
        };
        settled && self.tail.is_empty() && now.saturating_since(self.last_used) >= idle
    }
}
