//! Moving streams between engines: what a drained stream gives ([`Drained`]: its buffered
//! messages, its deliveries in flight with their leases, its redrive policy and the ids its
//! dedupe window remembers), and how another engine takes each over, or this one keeps it.

use std::time::Duration;

use super::buffer;
use super::lease::InFlight;
use super::stream::Stream;
use super::{Create, Engine, Inner, Redrive};
use crate::error::SendError;
use crate::id::{MessageId, StreamId};
use crate::id_cap::IdCap;
use crate::message::Message;
use crate::time::Timestamp;

/// The buffered messages of one stream, taken out of the engine to move them elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drained {
    /// The stream.
    pub stream: StreamId,
    /// Its `inMemoryStreamSize`, to re-create it alike; `None` if no send fixed it.
    pub size: Option<u32>,
    /// Its buffered messages, oldest first.
    pub messages: Vec<Message>,
    /// Its messages in flight, with their leases ([`Engine::adopt_in_flight`]).
    pub in_flight: Vec<InFlight>,
    /// Its redrive policy ([`Engine::set_redrive`]).
    pub redrive: Redrive,
    /// Its dedupe window, if one is fixed, and the ids it remembers with the time each has
    /// left ([`Engine::adopt_dedupe`]).
    pub dedupe: Option<(Duration, Vec<(MessageId, Duration)>)>,
}

impl Engine {
    /// Removes and returns every buffered message, stream by stream, oldest first within each
    /// stream: what a node hands over when it leaves.
    pub fn drain(&self) -> Vec<Drained> {
        self.drain_streams(|_| true)
    }

    /// Removes and returns the buffered messages of the streams `moved` selects, oldest first
    /// within each stream: what a node hands over when streams it held now belong to another.
    ///
    /// Only messages already accepted (buffered, their senders answered) leave. Requests
    /// still waiting on a drained stream are answered at once, without taking anything from
    /// them: a waiting sender with [`SendError::Moved`] (its message
    /// was not accepted, so a sync-match or blocking send is never told "delivered" for a
    /// message no receiver got), a waiting receiver with
    /// [`ReceiveError::Moved`](crate::ReceiveError::Moved). Each may try again where the
    /// stream lives now.
    pub fn drain_streams(&self, mut moved: impl FnMut(&StreamId) -> bool) -> Vec<Drained> {
        let mut out = Vec::new();
        for shard in self.inner.shards.iter() {
            let mut table = shard.table.lock();
            let moved = table.iter_mut().filter(|s| moved(s.id()));
            let now = self.now();
            out.extend(moved.filter_map(|stream| {
                self.inner
                    .metered(shard, stream, |s| drain_one(s, now, &self.inner.dedupe))
            }));
        }
        out
    }

    /// Drains one stream as [`drain_streams`](Self::drain_streams) does: its accepted
    /// messages, oldest first (`None` if it holds none), its waiting requests answered as
    /// moved. For streams known by id, without visiting the others.
    pub fn drain_stream(&self, id: &StreamId) -> Option<Drained> {
        let (hash, shard) = self.inner.locate(id);
        let mut table = shard.table.lock();
        let stream = Inner::find_mut(&mut table, hash, id)?;
        let now = self.now();
        self.inner
            .metered(shard, stream, |s| drain_one(s, now, &self.inner.dedupe))
    }

    /// Takes over a message another node had accepted into `stream` (a hand-off): to the
    /// oldest waiting receiver, or else to the back of the buffer, whatever its room. An
    /// accepted message is never evicted or made to wait here, and refused only when it does
    /// not fit the memory budget ([`SendError::MemoryLimit`]: the node handing it over keeps
    /// it and tries again); the stream is created if missing (whatever the stream limit),
    /// sized `size` if no send has sized it. A message whose id is already in the buffer is
    /// not added twice (a hand-off retried after its answer, not its request, was lost).
    pub fn adopt(
        &self,
        id: &StreamId,
        size: Option<u32>,
        message: Message,
    ) -> Result<(), SendError> {
        self.take_in(id, size, message, true)
    }

    /// Puts back messages this engine had accepted and then drained to move
    /// ([`Engine::drain_streams`]) when they stay after all: like [`Engine::adopt`], but never
    /// refused for the memory budget (they were counted in it before they left).
    pub fn restore(
        &self,
        id: &StreamId,
        size: Option<u32>,
        message: Message,
    ) -> Result<(), SendError> {
        self.take_in(id, size, message, false)
    }

    /// Remembers ids another node had accepted into `stream` within its dedupe window (a
    /// hand-off, [`Drained::dedupe`]), each for the time it had left.
    pub fn adopt_dedupe(
        &self,
        stream: &StreamId,
        window: Duration,
        ids: Vec<(MessageId, Duration)>,
    ) -> Result<(), SendError> {
        let now = self.now();
        self.with_stream_as(stream, Create::Always, |s, inner| {
            s.adopt_dedupe(window, ids, now, &inner.dedupe);
        })
        .map_err(SendError::from)
    }

    /// Takes over a delivery in flight that another node drained with its stream (a
    /// hand-off): its lease goes on here with the time it had left, so its receipt handle
    /// acts here. Refused only when it does not fit the memory budget; taken once however
    /// often it comes (by its lease).
    pub fn adopt_in_flight(
        &self,
        id: &StreamId,
        size: Option<u32>,
        in_flight: InFlight,
    ) -> Result<(), SendError> {
        self.take_in_flight(id, size, in_flight, true)
    }

    /// Puts back a delivery in flight this engine drained to move, when it stays after all:
    /// like [`Engine::adopt_in_flight`], never refused for the memory budget.
    pub fn restore_in_flight(
        &self,
        id: &StreamId,
        size: Option<u32>,
        in_flight: InFlight,
    ) -> Result<(), SendError> {
        self.take_in_flight(id, size, in_flight, false)
    }

    fn take_in_flight(
        &self,
        id: &StreamId,
        size: Option<u32>,
        in_flight: InFlight,
        budgeted: bool,
    ) -> Result<(), SendError> {
        let now = self.now();
        self.take_over(id, size, budgeted, |stream, room, _| {
            stream.adopt_in_flight(in_flight, room, now)
        })
    }

    fn take_in(
        &self,
        id: &StreamId,
        size: Option<u32>,
        message: Message,
        budgeted: bool,
    ) -> Result<(), SendError> {
        self.take_over(id, size, budgeted, |stream, room, inner| {
            stream.adopt(message, room, &inner.ctx())
        })
    }

    /// Puts what another engine drained (or this one, when it stays) into `id`, created if
    /// missing and sized `size` if no send sized it: `put` says whether it took it, given
    /// the room the memory budget leaves (none is checked unless `budgeted`).
    fn take_over(
        &self,
        id: &StreamId,
        size: Option<u32>,
        budgeted: bool,
        put: impl FnOnce(&mut Stream, &dyn Fn(&Message) -> bool, &Inner) -> bool,
    ) -> Result<(), SendError> {
        self.with_stream_as(id, Create::Always, |stream, inner| {
            if let Some(size) = size {
                stream.capacity_or_set(size);
            }
            let room = |message: &Message| !budgeted || inner.fits(buffer::charge(message), 0);
            if put(stream, &room, inner) {
                Ok(())
            } else {
                Err(inner.over_budget())
            }
        })?
    }
}

/// Takes `stream`'s accepted messages and answers its waiting requests as moved.
fn drain_one(stream: &mut Stream, now: Timestamp, budget: &IdCap) -> Option<Drained> {
    let redrive = stream.redrive();
    let (in_flight, messages) = stream.take_buffered(now);
    let dedupe = stream
        .dedupe_window()
        .map(|window| (window, stream.take_dedupe(now, budget)));
    stream.close_waiters();
    let remembers = dedupe.as_ref().is_some_and(|(_, ids)| !ids.is_empty());
    (!messages.is_empty() || !in_flight.is_empty() || remembers).then(|| Drained {
        stream: stream.id().clone(),
        size: stream.capacity(),
        messages,
        in_flight,
        redrive,
        dedupe,
    })
}
