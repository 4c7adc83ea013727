//! One stream's state: its buffer and its queues of waiting receivers and senders.
//!
//! Everything here runs with the stream's shard lock held, is O(1) (amortised) and never
//! blocks. The three in-memory modes of DESIGN §2 fall out of two numbers: the stream's
//! capacity (fixed by the first send) and whether a send may wait.

use std::collections::VecDeque;

use super::SendOutcome;
use super::buffer::{Buffer, charge};
use super::slot::Slot;
use crate::id::StreamId;
use crate::message::Message;
use crate::sync::Arc;
use crate::time::Timestamp;

/// `capacity` of a stream no send has sized yet.
const NO_CAPACITY: u32 = u32::MAX;

/// `now` in whole seconds since the Unix epoch, rounded up (saturating in 2106).
fn ceil_secs(now: Timestamp) -> u32 {
    u32::try_from(now.as_micros().div_ceil(1_000_000)).unwrap_or(u32::MAX)
}

pub(super) type ReceiverSlot = Arc<Slot<Message>>;
pub(super) type SenderSlot = Arc<Slot<SendOutcome>>;

/// Waiters of one stream. Boxed and allocated only while someone waits, so that an idle
/// stream pays one pointer for it.
#[derive(Default)]
struct Waiting {
    receivers: VecDeque<ReceiverSlot>,
    senders: VecDeque<(SenderSlot, Message)>,
    /// Entries of `receivers` whose future gave up. They are skipped when reached and swept
    /// out once they are half of the queue, which keeps cancellation O(1) amortised.
    dead_receivers: usize,
    /// The same for `senders`.
    dead_senders: usize,
    /// The [`charge`]s of the messages in `senders`, dead entries' included (their messages
    /// are held until swept out).
    sender_bytes: usize,
}

impl Waiting {
    fn compact(&mut self) {
        if self.dead_receivers > 0 {
            self.receivers.retain(|slot| slot.is_waiting());
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
        self.receivers.len() == self.dead_receivers && self.senders.len() == self.dead_senders
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
    /// ones and those of waiting senders.
    pub(super) fn bytes(&self) -> usize {
        self.buffer.bytes() + self.waiting.as_ref().map_or(0, |w| w.sender_bytes)
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

    /// Frees the waiter queues once nobody waits.
    fn tidy(&mut self) {
        if self.waiting.as_ref().is_some_and(|w| w.is_empty()) {
            self.waiting = None;
        }
    }

    /// Hands `message` to the oldest live receiver, or gives it back if none waits.
    pub(super) fn hand_to_receiver(&mut self, mut message: Message) -> Result<(), Message> {
        let Some(waiting) = self.waiting.as_mut() else {
            return Err(message);
        };
        let result = loop {
            let Some(slot) = waiting.receivers.pop_front() else {
                break Err(message);
            };
            match slot.fill(message) {
                Ok(()) => break Ok(()),
                Err(back) => {
                    // That receiver gave up; its entry was dead.
                    waiting.dead_receivers -= 1;
                    message = back;
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
        while self.buffer.len() >= capacity && self.buffer.pop_front().is_some() {
            evicted += 1;
        }
        self.push_back(message);
        evicted
    }

    /// Buffers `message` if the stream has room and no earlier sender is waiting for it.
    pub(super) fn try_push(&mut self, message: Message, capacity: usize) -> Result<(), Message> {
        let senders_wait = self
            .waiting
            .as_ref()
            .is_some_and(|w| w.senders.len() > w.dead_senders);
        if self.buffer.len() < capacity && !senders_wait {
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

    pub(super) fn enqueue_receiver(&mut self, slot: ReceiverSlot) {
        self.waiting_mut().receivers.push_back(slot);
    }

    /// Takes the next message for a receiver: the oldest buffered one (letting the oldest
    /// waiting sender into the room it leaves), else straight from the oldest waiting sender.
    pub(super) fn take(&mut self) -> Option<Message> {
        if let Some(message) = self.buffer.pop_front() {
            let capacity = self.capacity().unwrap_or(0) as usize;
            while self.buffer.len() < capacity {
                match self.pop_sender(SendOutcome::Buffered { evicted: 0 }) {
                    Some(admitted) => self.buffer.push_back(admitted),
                    None => break,
                }
            }
            return Some(message);
        }
        self.pop_sender(SendOutcome::Delivered)
    }

    /// Removes every buffered message, oldest first, leaving waiting senders waiting (none is
    /// admitted into the room this makes: the stream is being handed over).
    pub(super) fn take_buffered(&mut self) -> Vec<Message> {
        let mut out = Vec::with_capacity(self.buffer.len());
        while let Some(message) = self.buffer.pop_front() {
            out.push(message);
        }
        out
    }

    /// Accepts the oldest live waiting sender's message, answering it with `outcome`.
    fn pop_sender(&mut self, outcome: SendOutcome) -> Option<Message> {
        let waiting = self.waiting.as_mut()?;
        let mut taken = None;
        while let Some((slot, message)) = waiting.senders.pop_front() {
            waiting.sender_bytes -= charge(&message);
            if slot.fill(outcome).is_ok() {
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
    pub(super) fn adopt(&mut self, message: Message, room: impl FnOnce(&Message) -> bool) -> bool {
        if self.buffer.holds(message.id()) {
            return true;
        }
        match self.hand_to_receiver(message) {
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
    pub(super) fn requeue(&mut self, message: Message) {
        if let Err(message) = self.hand_to_receiver(message) {
            self.buffer.push_front(message);
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
    pub(super) fn is_idle(&mut self, now: Timestamp, idle_micros: u64) -> bool {
        if let Some(waiting) = self.waiting.as_mut() {
            waiting.compact();
        }
        self.tidy();
        self.buffer.is_empty()
            && self.waiting.is_none()
            && now.as_micros()
                >= (u64::from(self.last_active_secs) * 1_000_000).saturating_add(idle_micros)
    }

    /// Answers every waiter for shutdown. Waiting senders' messages were never accepted and
    /// are dropped; buffered messages stay.
    pub(super) fn close_waiters(&mut self) {
        if let Some(waiting) = self.waiting.take() {
            for slot in &waiting.receivers {
                slot.close();
            }
            for (slot, _) in &waiting.senders {
                slot.close();
            }
        }
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
