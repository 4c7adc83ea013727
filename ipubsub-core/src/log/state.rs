//! [`StreamLog`]: what the log knows of one stream's positions.

use std::collections::VecDeque;
use std::task::Waker;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use super::dedupe::{IdBudget, Known, Remembered};
use crate::id::MessageId;
use crate::store::{Epoch, FoundId, Seq, Tenure};
use crate::time::Timestamp;

pub(super) enum LoadState {
    /// One caller (load number `.0`) is acquiring the stream from the store; these wait for it.
    Loading(u64, Vec<Waker>),
    Ready {
        /// The epoch this node holds the stream in: every position it hands out is of it.
        epoch: Epoch,
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
    /// When a read last looked past the watermark for another node's later epoch (or the
    /// stream was loaded, which reads the store's last position).
    checked: Timestamp,
    /// When the acquisition this node holds the stream under finished (every record accepted
    /// since was written by this node), if the store held records of the stream then: `None`
    /// when it held none, so that only this node's records can ever be found.
    earlier_until: Option<Timestamp>,
    /// The ids deduplicating sends wrote since then, and those the store listed; boxed,
    /// and only once there is one.
    remembered: Option<Box<Remembered>>,
    /// What the store listed of earlier owners' records since the acquisition.
    listed: Listed,
}

/// Which records of the stream's earlier owners the store listed into this node's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    /// None yet.
    Nothing,
    /// Every findable record accepted since this time.
    Since(Timestamp),
    /// The store does not list, or its listing did not fit: sends ask for their ids.
    Refused,
}

impl StreamLog {
    pub(super) fn loading(load: u64, now: Timestamp) -> Self {
        Self {
            state: LoadState::Loading(load, Vec::new()),
            tail: HashMap::new(),
            next_waiter: 0,
            last_used: now,
            checked: now,
            earlier_until: None,
            remembered: None,
            listed: Listed::Nothing,
        }
    }

    /// Whether a caught-up read should look past the watermark now: at most once per
    /// `every` (and at once if the clock went back). Marks the look as done.
    pub(super) fn check_due(&mut self, now: Timestamp, every: Duration) -> bool {
        let due = now < self.checked || now.saturating_since(self.checked) >= every;
        if due {
            self.checked = now;
        }
        due
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
            LoadState::Loading(..) => None,
        }
    }

    /// The epoch this node holds the stream in, once loaded.
    pub(super) fn epoch(&self) -> Option<Epoch> {
        match self.state {
            LoadState::Ready { epoch, .. } => Some(epoch),
            LoadState::Loading(..) => None,
        }
    }

    /// True while load number `load` is the one under way.
    pub(super) fn is_loading(&self, load: u64) -> bool {
        matches!(self.state, LoadState::Loading(id, _) if id == load)
    }

    /// The acquisition finished. Everything stored up to `tenure.last` is final (older epochs
    /// are fenced), so readers may see up to there; new positions start in the new epoch.
    pub(super) fn loaded(&mut self, tenure: Tenure, now: Timestamp) {
        self.checked = now;
        self.earlier_until = (tenure.last != Seq::ZERO).then_some(now);
        self.remembered = None;
        self.listed = Listed::Nothing;
        let previous = std::mem::replace(
            &mut self.state,
            LoadState::Ready {
                epoch: tenure.epoch,
                committed: tenure.last,
                assigned: Seq::at(tenure.epoch, 0).unwrap_or(Seq::ZERO),
                in_flight: VecDeque::new(),
            },
        );
        if let LoadState::Loading(_, wakers) = previous {
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    pub(super) fn wait_for_load(&mut self, waker: &Waker) -> bool {
        match &mut self.state {
            LoadState::Loading(_, wakers) => {
                wakers.push(waker.clone());
                true
            }
            LoadState::Ready { .. } => false,
        }
    }

    /// Wakes everyone waiting on this stream: loaders and tail readers. Called when the
    /// entry is dropped, so that each of them looks again (and loads again if it must).
    pub(super) fn wake_all(&mut self) {
        if let LoadState::Loading(_, wakers) = &mut self.state {
            wakers.drain(..).for_each(Waker::wake);
        }
        self.wake_tail();
    }

    /// Hands out the next position of this node's epoch; `None` while loading or once the
    /// epoch's counter is used up (the stream must then be acquired again). No clock takes
    /// part: a new epoch's positions order above the old ones by construction.
    pub(super) fn assign(&mut self, now: Timestamp) -> Option<Seq> {
        self.last_used = now;
        match &mut self.state {
            LoadState::Ready {
                epoch,
                assigned,
                in_flight,
                ..
            } => {
                let next = Seq::at(*epoch, assigned.counter() + 1)?;
                *assigned = next;
                in_flight.push_back((next, false));
                Some(next)
            }
            LoadState::Loading(..) => None,
        }
    }

    /// Position `seq` was written; moves the watermark over the written prefix. A position of
    /// another epoch is ignored (the entry was acquired again meanwhile).
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

    /// What this node knows of `id` for a deduplicating send of `window` at `now`.
    pub(super) fn known(&mut self, id: &MessageId, window: Duration, now: Timestamp) -> Known {
        let since = now.saturating_sub(window);
        // Records of earlier owners fall in the window while it reaches back before the
        // acquisition (if there were any), unless the store listed them.
        let reaches_earlier = self.earlier_until.is_some_and(|acquired| since < acquired)
            && !matches!(self.listed, Listed::Since(from) if from <= since);
        let known = match &mut self.remembered {
            Some(remembered) => remembered.known(id, window, now),
            None => Known::Unseen,
        };
        match known {
            Known::Unseen if reaches_earlier && self.listed == Listed::Refused => Known::AskStore,
            Known::Unseen if reaches_earlier => Known::List,
            known => known,
        }
    }

    /// Remembers what the store listed for a send of `window`: `listed`, every findable
    /// record accepted since `since`, asked while this node held the stream in `epoch`
    /// (`None`: the store would not list). Ignored if the stream was acquired again since.
    pub(super) fn learn(
        &mut self,
        epoch: Epoch,
        since: Timestamp,
        listed: Option<Vec<FoundId>>,
        window: Duration,
        budget: &Arc<IdBudget>,
    ) {
        if self.epoch() != Some(epoch) {
            return;
        }
        let Some(listed) = listed else {
            self.listed = Listed::Refused;
            return;
        };
        // This node's own records it remembers already (or its memory is incomplete).
        let earlier: Vec<_> = listed
            .into_iter()
            .filter(|found| found.seq.epoch() < epoch)
            .collect();
        if !earlier.is_empty() {
            self.remembered
                .get_or_insert_with(|| Box::new(Remembered::new(budget.clone())))
                .learn(earlier, window);
        }
        self.listed = match self.listed {
            Listed::Since(from) => Listed::Since(from.min(since)),
            _ => Listed::Since(since),
        };
    }

    /// Remembers a deduplicating send's id at the position it was given.
    pub(super) fn remember(
        &mut self,
        id: &MessageId,
        seq: Seq,
        (accepted, expires): (Timestamp, Timestamp),
        window: Duration,
        budget: &Arc<IdBudget>,
    ) {
        self.remembered
            .get_or_insert_with(|| Box::new(Remembered::new(budget.clone())))
            .remember(id, seq, accepted, expires, window);
    }

    /// Whether any id is remembered within its window at `now` (those past it are forgotten).
    pub(super) fn remembers_ids(&mut self, now: Timestamp) -> bool {
        self.remembered
            .as_mut()
            .is_some_and(|remembered| remembered.remembers_any(now))
    }

    /// Forgets `id` if it is remembered at `seq`: its append was withdrawn unwritten.
    pub(super) fn withdraw(&mut self, id: &MessageId, seq: Seq) {
        if let Some(remembered) = &mut self.remembered {
            remembered.withdraw(id, seq);
        }
    }

    /// When the stream was last used.
    pub(super) fn last_used(&self) -> Timestamp {
        self.last_used
    }

    pub(super) fn is_idle(&self, now: Timestamp, idle: Duration) -> bool {
        let settled = match &self.state {
            LoadState::Ready { in_flight, .. } => in_flight.is_empty(),
            LoadState::Loading(..) => false,
        };
        settled && self.tail.is_empty() && now.saturating_since(self.last_used) >= idle
    }
}
