//! One stream's state: its buffer and its queues of waiting receivers and senders.
//!
//! Everything here runs with the stream's shard lock held, is O(1) (amortised) and never
//! blocks. The three in-memory modes of DESIGN §2 fall out of two numbers: the stream's
//! capacity (fixed by the first send) and whether a send may wait.

use std::collections::VecDeque;
use std::time::Duration;

use super::SendOutcome;
use super::buffer::{Buffer, charge};
use super::dedupe::Dedupe;
use super::lease::{Acks, Change, Ctx, DeadLetter, InFlight, ReceiptHandle, Redrive};
use super::slot::Slot;
use crate::id::StreamId;
use crate::id_cap::IdCap;
use crate::message::Message;
use crate::sync::Arc;
use crate::time::Timestamp;

mod leases;
mod remembered;

/// `capacity` of a stream no send has sized yet.
const NO_CAPACITY: u32 = u32::MAX;

/// `now` in whole seconds since the Unix epoch, rounded up (saturating in 2106).
fn ceil_secs(now: Timestamp) -> u32 {
    u32::try_from(now.as_micros().div_ceil(1_000_000)).unwrap_or(u32::MAX)
}

pub(super) type ReceiverSlot = Arc<Slot<Handed>>;
pub(super) type SenderSlot = Arc<Slot<SendOutcome>>;

/// What a receiver is given: a message, and its lease if the receive asked for one.
#[derive(Debug)]
pub(super) struct Handed {
    pub(super) message: Message,
    /// How many times the message was delivered under a lease before this delivery.
    pub(super) before: u32,
    /// The lease's handle, if the receive asked for one.
    pub(super) handle: Option<ReceiptHandle>,
}

/// A queued receiver: its slot, and how long a lease it asks for (`None`: a plain receive).
pub(super) type Receiver = (ReceiverSlot, Option<Duration>);

/// What became of a message whose lease ended or that was returned.
#[derive(Debug)]
pub(super) enum Back {
    /// Back at the head of its stream (or with a waiting receiver).
    Requeued,
    /// Delivered `maxDeliveries` times: for the dead-letter stream.
    DeadLetter(DeadLetter),
    /// Delivered `maxDeliveries` times, with no dead-letter stream: dropped.
    Dropped,
}

/// Waiters of one stream, and what only some streams keep (leases, a dedupe window). Boxed
/// and allocated only while there is any, so that an idle stream pays one pointer for it.
#[derive(Default)]
struct Waiting {
    receivers: VecDeque<Receiver>,
    senders: VecDeque<(SenderSlot, Message)>,
    /// Entries of `receivers` whose future gave up. They are skipped when reached and swept
    /// out once they are half of the queue, which keeps cancellation O(1) amortised.
    dead_receivers: usize,
    /// The same for `senders`.
    dead_senders: usize,
    /// The [`charge`]s of the messages in `senders`, dead entries' included (their messages
    /// are held until swept out).
    sender_bytes: usize,
    /// Leases and returned messages' delivery counts, while there are any.
    acks: Option<Box<Acks>>,
    /// The ids accepted within the stream's dedupe window, once a send fixed one.
    dedupe: Option<Box<Dedupe>>,
}

impl Waiting {
    fn compact(&mut self) {
        if self.dead_receivers > 0 {
            self.receivers.retain(|(slot, _)| slot.is_waiting());
            self.dead_receivers = 0;
        }
        if self.dead_senders > 0 {
            let mut bytes = self.sender_bytes;
            self.senders.retain(|(slot, message)| {
                let keep = slot.is_waiting();
                if !keep {
                    bytes -= charge(message);
                }
                keep
            });
            self.sender_bytes = bytes;
            self.dead_senders = 0;
        }
    }

    fn is_empty(&self) -> bool {
        self.receivers.len() == self.dead_receivers
            && self.senders.len() == self.dead_senders
            && self.acks.is_none()
            && self.dedupe.is_none()
    }
}

/// `message`, delivered `before` times, handed over under a lease of `timeout` on `stream`.
fn leased(
    waiting: &mut Waiting,
    stream: &StreamId,
    message: Message,
    before: u32,
    timeout: Duration,
    ctx: &Ctx<'_>,
) -> Handed {
    let acks = waiting.acks.get_or_insert_with(Box::default);
    let handle = acks.lease(stream, &message, before + 1, timeout, ctx);
    Handed {
        message,
        before,
        handle: Some(handle),
    }
}

/// One stream's record. The registry holds it boxed, keyed by its own `id`, so that a table
/// slot is one pointer and the table's spare slots (up to half of them right after it grows)
/// cost 8 bytes each instead of a whole record.
pub(super) struct Stream {
    id: StreamId,
    /// Messages waiting for a receiver, oldest first. Grows on demand: never preallocated to
    /// the capacity, so a stream costs memory for what it holds, not for what it may hold.
    buffer: Buffer,
    /// `inMemoryStreamSize`, fixed by the first send. A stream created by a receive has none
    /// until then, so that a receiver that polls first does not choose the mode for senders.
    /// [`NO_CAPACITY`] until then; a size of `u32::MAX` is kept as `u32::MAX - 1`.
    capacity: u32,
    /// Last use, in whole seconds since the Unix epoch, rounded up: 4 bytes instead of 8,
    /// which with the packed capacity keeps the record in a 96-byte allocation. Rounding up
    /// means an idle stream is dropped up to a second late, never early.
    last_active_secs: u32,
    waiting: Option<Box<Waiting>>,
}

impl Stream {
    pub(super) fn new(id: StreamId, now: Timestamp) -> Self {
        Self {
            id,
            buffer: Buffer::Empty,
            capacity: NO_CAPACITY,
            last_active_secs: ceil_secs(now),
            waiting: None,
        }
    }

    pub(super) fn id(&self) -> &StreamId {
        &self.id
    }

    pub(super) fn touch(&mut self, now: Timestamp) {
        self.last_active_secs = ceil_secs(now);
    }

    /// The capacity, fixing it to `size` if no send has fixed it yet.
    pub(super) fn capacity_or_set(&mut self, size: u32) -> usize {
        if self.capacity == NO_CAPACITY {
            self.capacity = size.min(NO_CAPACITY - 1);
        }
        self.capacity as usize
    }

    /// The size fixed by the first send, if any.
    pub(super) fn capacity(&self) -> Option<u32> {
        (self.capacity != NO_CAPACITY).then_some(self.capacity)
    }

    pub(super) fn len(&self) -> usize {
        self.buffer.len()
    }

    /// What the stream's messages count against the engine's memory budget: the buffered
    /// ones, those of waiting senders and those in flight.
    pub(super) fn bytes(&self) -> usize {
        self.buffer.bytes()
            + self.waiting.as_ref().map_or(0, |w| {
                w.sender_bytes + w.acks.as_ref().map_or(0, |a| a.bytes)
            })
    }

    /// Messages delivered under a lease and not acknowledged yet (returned ones waiting for
    /// their delay included).
    pub(super) fn in_flight(&self) -> usize {
        self.acks().map_or(0, |a| a.leases.len())
    }

    fn acks(&self) -> Option<&Acks> {
        self.waiting.as_ref()?.acks.as_deref()
    }

    fn acks_mut(&mut self) -> &mut Acks {
        self.waiting_mut().acks.get_or_insert_with(Box::default)
    }

    /// Hands the changes to lease deadlines made since the last call to `apply` (for the
    /// shard's index), with the stream's id; keeps the list's memory for the next ones.
    pub(super) fn drain_changes(&mut self, mut apply: impl FnMut(&StreamId, Change)) {
        let Some(acks) = self.waiting.as_mut().and_then(|w| w.acks.as_mut()) else {
            return;
        };
        if acks.changes.is_empty() {
            return;
        }
        for change in acks.changes.drain(..) {
            apply(&self.id, change);
        }
        self.tidy();
    }

    /// Fixes the stream's redrive policy if none is fixed yet.
    pub(super) fn set_redrive(&mut self, redrive: Redrive) {
        if redrive != Redrive::default()
            && self.acks().is_none_or(|a| a.redrive == Redrive::default())
        {
            self.acks_mut().redrive = redrive;
        }
    }

    /// The [`charge`]s of the messages [`push_evicting`](Self::push_evicting) would evict to
    /// make room for one more at `capacity`.
    pub(super) fn eviction_bytes(&self, capacity: usize) -> usize {
        let over = (self.buffer.len() + 1).saturating_sub(capacity);
        self.buffer.oldest_bytes(over)
    }

    fn waiting_mut(&mut self) -> &mut Waiting {
        self.waiting.get_or_insert_with(Box::default)
    }

    /// Frees the waiter queues once nobody waits, and the acknowledgement state once it
    /// holds nothing.
    pub(super) fn tidy(&mut self) {
        if let Some(waiting) = self.waiting.as_mut() {
            if waiting.acks.as_ref().is_some_and(|a| a.is_empty()) {
                waiting.acks = None;
            }
            if waiting.is_empty() {
                self.waiting = None;
            }
        }
    }

    /// Hands `message`, delivered `deliveries` times before, to the oldest live receiver
    /// (under a lease if it asked for one), or gives it back if none waits.
    pub(super) fn hand_to_receiver(
        &mut self,
        mut message: Message,
        deliveries: u32,
        ctx: &Ctx<'_>,
    ) -> Result<(), Message> {
        let Some(waiting) = self.waiting.as_mut() else {
            return Err(message);
        };
        let result = loop {
            let Some((slot, lease)) = waiting.receivers.pop_front() else {
                break Err(message);
            };
            let handed = match lease {
                None => Handed {
                    message,
                    before: deliveries,
                    handle: None,
                },
                // A slot leaves `Waiting` only under the shard lock, which is held here: a
                // live slot takes what it is given below, so the lease is never made for
                // nobody.
                Some(_) if !slot.is_waiting() => {
                    waiting.dead_receivers -= 1;
                    continue;
                }
                Some(timeout) => leased(waiting, &self.id, message, deliveries, timeout, ctx),
            };
            match slot.fill(handed) {
                Ok(()) => break Ok(()),
                Err(back) => {
                    // That receiver gave up; its entry was dead.
                    waiting.dead_receivers -= 1;
                    if let (Some(handle), Some(acks)) = (back.handle, waiting.acks.as_mut()) {
                        acks.remove(&handle.lease());
                    }
                    message = back.message;
                }
            }
        };
        self.tidy();
        result
    }

    /// Pushes onto a circular buffer, evicting the oldest messages to make room. Returns how
    /// many were evicted. `capacity` must be above zero.
    pub(super) fn push_evicting(&mut self, message: Message, capacity: usize) -> usize {
        let mut evicted = 0;
        while self.buffer.len() >= capacity && self.pop_front().is_some() {
            evicted += 1;
        }
        self.push_back(message);
        evicted
    }

    /// The oldest buffered message and how many times it was delivered before.
    fn pop_front(&mut self) -> Option<(Message, u32)> {
        let message = self.buffer.pop_front()?;
        let deliveries = match self.waiting.as_mut().and_then(|w| w.acks.as_mut()) {
            Some(acks) => acks.returned.pop_front().unwrap_or(0),
            None => 0,
        };
        Some((message, deliveries))
    }

    /// Puts `message`, delivered `deliveries` times before, at the head of the buffer.
    fn push_front(&mut self, message: Message, deliveries: u32) {
        let counted = self.acks().is_some_and(|a| !a.returned.is_empty());
        if deliveries > 0 || counted {
            self.acks_mut().returned.push_front(deliveries);
        }
        self.buffer.push_front(message);
    }

    /// Buffers `message` if the stream has room and no earlier sender is waiting for it.
    pub(super) fn try_push(&mut self, message: Message, capacity: usize) -> Result<(), Message> {
        let senders_wait = self
            .waiting
            .as_ref()
            .is_some_and(|w| w.senders.len() > w.dead_senders);
        if self.buffer.len() + self.in_flight() < capacity && !senders_wait {
            self.push_back(message);
            Ok(())
        } else {
            Err(message)
        }
    }

    fn push_back(&mut self, message: Message) {
        self.buffer.push_back(message);
    }

    pub(super) fn enqueue_sender(&mut self, slot: SenderSlot, message: Message) {
        let waiting = self.waiting_mut();
        waiting.sender_bytes += charge(&message);
        waiting.senders.push_back((slot, message));
    }

    pub(super) fn enqueue_receiver(&mut self, slot: ReceiverSlot, lease: Option<Duration>) {
        self.waiting_mut().receivers.push_back((slot, lease));
    }

    /// Takes the next message for a receiver, under a lease of `lease` if given: the oldest
    /// buffered one (letting the oldest waiting senders into the room it leaves), else
    /// straight from the oldest waiting sender.
    pub(super) fn take(&mut self, lease: Option<Duration>, ctx: &Ctx<'_>) -> Option<Handed> {
        let (message, deliveries) = match self.pop_front() {
            Some(taken) => taken,
            None => (self.pop_sender(SendOutcome::Delivered, ctx)?, 0),
        };
        let handed = match lease {
            None => Handed {
                message,
                before: deliveries,
                handle: None,
            },
            Some(timeout) => {
                let waiting = self.waiting.get_or_insert_with(Box::default);
                leased(waiting, &self.id, message, deliveries, timeout, ctx)
            }
        };
        self.admit_senders(ctx);
        Some(handed)
    }

    /// Lets waiting senders into the room a blocking queue has: its size less what it
    /// buffers and what is in flight.
    fn admit_senders(&mut self, ctx: &Ctx<'_>) {
        let capacity = self.capacity().unwrap_or(0) as usize;
        while self.buffer.len() + self.in_flight() < capacity {
            match self.pop_sender(SendOutcome::Buffered { evicted: 0 }, ctx) {
                Some(admitted) => self.buffer.push_back(admitted),
                None => break,
            }
        }
    }

    /// Removes every message the stream holds: those in flight with their leases (in the
    /// order they were delivered, each with what is left of its lease at `now`), and the
    /// buffered ones, oldest first. Waiting senders stay waiting (none is admitted into the
    /// room this makes: the stream is being handed over).
    pub(super) fn take_buffered(&mut self, now: Timestamp) -> (Vec<InFlight>, Vec<Message>) {
        let mut in_flight = Vec::new();
        if let Some(acks) = self.waiting.as_mut().and_then(|w| w.acks.as_mut()) {
            in_flight = acks.take_all(now);
            acks.returned.clear();
        }
        let mut out = Vec::with_capacity(self.buffer.len());
        while let Some(message) = self.buffer.pop_front() {
            out.push(message);
        }
        self.tidy();
        (in_flight, out)
    }

    /// The redrive policy fixed for the stream (the default if none is).
    pub(super) fn redrive(&self) -> Redrive {
        self.acks().map(|a| a.redrive.clone()).unwrap_or_default()
    }

    /// Takes over a delivery in flight that moved here, if `room` allows it (false: refused).
    pub(super) fn adopt_in_flight(
        &mut self,
        in_flight: InFlight,
        room: impl FnOnce(&Message) -> bool,
        now: Timestamp,
    ) -> bool {
        if !room(&in_flight.message) {
            return false;
        }
        self.acks_mut().take_over(in_flight, now);
        true
    }

    /// Accepts the oldest live waiting sender's message, answering it with `outcome`. A
    /// sender whose message's id was accepted meanwhile (within the stream's dedupe window)
    /// is answered as a duplicate, and its message dropped.
    fn pop_sender(&mut self, outcome: SendOutcome, ctx: &Ctx<'_>) -> Option<Message> {
        let waiting = self.waiting.as_mut()?;
        let mut taken = None;
        while let Some((slot, message)) = waiting.senders.pop_front() {
            waiting.sender_bytes -= charge(&message);
            if let Some(dedupe) = waiting.dedupe.as_mut() {
                let now = ctx.now();
                if dedupe.contains(message.id(), now) {
                    ctx.dedupe.count_duplicate();
                    if slot.fill(SendOutcome::Duplicate).is_err() {
                        waiting.dead_senders -= 1;
                    }
                    continue;
                }
                if slot.fill(outcome).is_ok() {
                    dedupe.remember(message.id(), now, ctx.dedupe);
                    taken = Some(message);
                    break;
                }
            } else if slot.fill(outcome).is_ok() {
                taken = Some(message);
                break;
            }
            // That sender gave up: its message was never accepted and is dropped with it.
            waiting.dead_senders -= 1;
        }
        self.tidy();
        taken
    }

    /// Takes over a message accepted elsewhere: to the next live receiver, else to the back
    /// of the buffer, above its capacity if need be, if `room` allows it (false: refused, not
    /// taken); a message of an id already buffered is dropped as the duplicate it is.
    pub(super) fn adopt(
        &mut self,
        message: Message,
        room: impl FnOnce(&Message) -> bool,
        ctx: &Ctx<'_>,
    ) -> bool {
        if self.buffer.holds(message.id()) {
            return true;
        }
        self.remember(message.id(), ctx);
        match self.hand_to_receiver(message, 0, ctx) {
            Ok(()) => true,
            Err(message) if room(&message) => {
                self.buffer.push_back(message);
                true
            }
            Err(_) => false,
        }
    }

    /// Puts back a message that was handed to a receiver which never returned it: to the
    /// next live receiver if one waits, else to the front of the buffer, where it is the next
    /// message any receiver gets. This may leave the buffer above its capacity for a while;
    /// losing an acknowledged message would be worse.
    pub(super) fn requeue(&mut self, message: Message, deliveries: u32, ctx: &Ctx<'_>) {
        if let Err(message) = self.hand_to_receiver(message, deliveries, ctx) {
            self.push_front(message, deliveries);
        }
    }

    /// Records that a queued receiver gave up.
    pub(super) fn receiver_gave_up(&mut self) {
        if let Some(waiting) = self.waiting.as_mut() {
            waiting.dead_receivers += 1;
            if waiting.dead_receivers * 2 > waiting.receivers.len() {
                waiting.compact();
            }
        }
        self.tidy();
    }

    /// Records that a queued sender gave up.
    pub(super) fn sender_gave_up(&mut self) {
        if let Some(waiting) = self.waiting.as_mut() {
            waiting.dead_senders += 1;
            if waiting.dead_senders * 2 > waiting.senders.len() {
                waiting.compact();
            }
        }
        self.tidy();
    }

    /// True when the stream holds nothing, nobody waits on it and it was last used at least
    /// `idle_micros` before `now`: dropping it loses nothing.
    pub(super) fn is_idle(&mut self, now: Timestamp, idle_micros: u64, budget: &IdCap) -> bool {
        if let Some(waiting) = self.waiting.as_mut() {
            waiting.compact();
            if let Some(dedupe) = waiting.dedupe.as_mut() {
                dedupe.expire(now, budget);
            }
        }
        self.tidy();
        // A redrive policy alone does not keep a stream: it goes with it, as its size does.
        let holds_nothing = self.waiting.as_ref().is_none_or(|w| {
            w.receivers.is_empty()
                && w.senders.is_empty()
                && w.dedupe.as_ref().is_none_or(|d| d.is_empty())
                && w.acks.as_ref().is_none_or(|a| {
                    a.leases.is_empty() && a.returned.is_empty() && a.changes.is_empty()
                })
        });
        self.buffer.is_empty()
            && holds_nothing
            && now.as_micros()
                >= (u64::from(self.last_active_secs) * 1_000_000).saturating_add(idle_micros)
    }

    /// Answers every waiter for shutdown. Waiting senders' messages were never accepted and
    /// are dropped; buffered messages stay.
    pub(super) fn close_waiters(&mut self) {
        if let Some(waiting) = self.waiting.as_mut() {
            for (slot, _) in waiting.receivers.drain(..) {
                slot.close();
            }
            for (slot, _) in waiting.senders.drain(..) {
                slot.close();
            }
            // What is in flight stays, as buffered messages do.
            waiting.dead_receivers = 0;
            waiting.dead_senders = 0;
            waiting.sender_bytes = 0;
        }
        self.tidy();
    }
}

#[cfg(test)]
impl Stream {
    pub(super) fn buffer_capacity(&self) -> usize {
        self.buffer.allocated()
    }

    pub(super) fn has_waiting_queues(&self) -> bool {
        self.waiting.is_some()
    }
}
