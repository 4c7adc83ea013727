//! Acknowledged receives: a message taken under a lease stays held by its stream until it is
//! acknowledged, returned, or its lease ends, when it goes back to the head of the stream.
//!
//! A stream keeps its leases, and the delivery counts of the messages that came back to it,
//! in an [`Acks`] record that exists only while it has any: a stream that never leases pays
//! one pointer in its (already boxed) waiter record. Every lease's deadline is also in its
//! shard's index ([`Deadlines`]), so [`Engine::expire_leases`](super::Engine::expire_leases)
//! finds the due ones without visiting every stream. Stream code runs under the shard's table
//! lock and cannot reach that index; it writes the changes it makes into
//! [`Acks::changes`], and the engine applies them before it lets the lock go.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use crate::id::StreamId;
use crate::message::Message;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::time::Timestamp;

/// Names one delivery under a lease: the engine that issued it (a random number per engine,
/// so that ids stay unique across nodes and restarts) and its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId {
    issuer: u64,
    seq: u64,
}

impl LeaseId {
    /// The least id, to bound ranges.
    pub(super) const MIN: Self = Self { issuer: 0, seq: 0 };

    /// Reads an id as [`Display`](fmt::Display) writes it (32 lowercase hex digits).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 32 || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        Some(Self {
            issuer: u64::from_str_radix(&text[..16], 16).ok()?,
            seq: u64::from_str_radix(&text[16..], 16).ok()?,
        })
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.issuer, self.seq)
    }
}

/// A delivery in flight, taken out of its stream to move with it
/// ([`Engine::drain_streams`](super::Engine::drain_streams)): its lease goes along, with the
/// time it had left, so that its receipt handle acts on the stream's next owner
/// ([`Engine::adopt_in_flight`](super::Engine::adopt_in_flight)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InFlight {
    /// The message.
    pub message: Message,
    /// Its lease.
    pub lease: LeaseId,
    /// Its deliveries so far.
    pub deliveries: u32,
    /// What was left of its lease when it was taken out.
    pub remaining: Duration,
    /// Returned with a delay ([`Engine::nack`](super::Engine::nack)): it goes back to its
    /// stream when `remaining` has passed, and its handle no longer acts.
    pub delayed: bool,
}

impl InFlight {
    /// A delivery of `message` in flight under `lease`.
    pub fn new(
        message: Message,
        lease: LeaseId,
        deliveries: u32,
        remaining: Duration,
        delayed: bool,
    ) -> Self {
        Self {
            message,
            lease,
            deliveries,
            remaining,
            delayed,
        }
    }
}

/// What a client holds to acknowledge, return or extend one delivery: its lease and a tag of
/// the stream it belongs to. Written as 40 lowercase hex digits; opaque to clients.
///
/// A handle grants nothing by itself: whoever presents it must also be allowed to receive
/// from the stream, and a handle only acts on the stream it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptHandle {
    lease: LeaseId,
    stream_tag: u32,
}

/// Why a text is not a receipt handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a receipt handle is 40 hex digits as a receive answered it")]
pub struct HandleError;

impl ReceiptHandle {
    fn new(lease: LeaseId, stream: &StreamId) -> Self {
        Self {
            lease,
            stream_tag: stream_tag(stream),
        }
    }

    /// Reads a handle as [`Display`](fmt::Display) writes it.
    pub fn parse(text: &str) -> Result<Self, HandleError> {
        let bytes = text.as_bytes();
        if bytes.len() != 40 || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(HandleError);
        }
        let hex = |range: std::ops::Range<usize>| {
            u64::from_str_radix(&text[range], 16).map_err(|_| HandleError)
        };
        Ok(Self {
            lease: LeaseId {
                issuer: hex(0..16)?,
                seq: hex(16..32)?,
            },
            stream_tag: u32::try_from(hex(32..40)?).map_err(|_| HandleError)?,
        })
    }

    /// The handle as text ([`Display`](fmt::Display) writes the same), without allocating.
    pub fn encode(&self) -> [u8; 40] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 40];
        let fields = [
            (self.lease.issuer, 0, 16),
            (self.lease.seq, 16, 16),
            (u64::from(self.stream_tag), 32, 8),
        ];
        for (value, at, digits) in fields {
            for i in 0..digits {
                let shift = 4 * (digits - 1 - i);
                out[at + i] = HEX[(value >> shift & 0xf) as usize];
            }
        }
        out
    }

    /// Whether the handle was issued for `stream`.
    pub fn is_for(&self, stream: &StreamId) -> bool {
        self.stream_tag == stream_tag(stream)
    }

    /// The lease it names.
    pub fn lease(&self) -> LeaseId {
        self.lease
    }
}

impl fmt::Display for ReceiptHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:016x}{:016x}{:08x}",
            self.lease.issuer, self.lease.seq, self.stream_tag
        )
    }
}

/// FNV-1a of the stream id, folded to 32 bits: the same on every node and in every release,
/// so that a handle keeps naming its stream after the stream moves.
fn stream_tag(stream: &StreamId) -> u32 {
    let hash = stream
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    (hash ^ (hash >> 32)) as u32
}

/// A message taken by an acknowledged receive.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leased {
    /// The message.
    pub message: Message,
    /// What acknowledges it ([`Engine::ack`](super::Engine::ack)).
    pub handle: ReceiptHandle,
    /// How many times it has been delivered under a lease, this time included (1 the first
    /// time).
    pub deliveries: u32,
}

/// Why an acknowledgement, return or extension did not act on its handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The handle names another stream.
    #[error("the receipt handle belongs to another stream")]
    OtherStream,
    /// The delivery is no longer in flight: its lease ended (the message went back to its
    /// stream, to be delivered again), or it was already acknowledged or returned, or the
    /// stream moved to another node (which delivers it again).
    #[error(
        "the delivery is no longer in flight: its lease ended (the message is delivered again), it was acknowledged or returned already, or its stream moved"
    )]
    NotInFlight,
}

/// A message that was delivered a stream's `maxDeliveries` times without an acknowledgement:
/// taken off its stream, for the caller to put on the stream's dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The stream it was sent to.
    pub stream: StreamId,
    /// Where it goes ([`Redrive::dead_letter`]).
    pub dead_letter: StreamId,
    /// The message.
    pub message: Message,
    /// How many times it was delivered.
    pub deliveries: u32,
}

/// What becomes of a stream's messages that are delivered again and again without being
/// acknowledged. Fixed by the first call that sets it ([`Engine::set_redrive`](super::Engine::set_redrive)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Redrive {
    /// Deliveries after which a message is not delivered again; 0: no limit.
    pub max_deliveries: u32,
    /// Where such a message goes; `None`: it is dropped (and counted).
    pub dead_letter: Option<StreamId>,
}

impl Redrive {
    /// A policy of at most `max_deliveries` deliveries (0: no limit), then `dead_letter`.
    pub fn new(max_deliveries: u32, dead_letter: Option<StreamId>) -> Self {
        Self {
            max_deliveries,
            dead_letter,
        }
    }
}

/// Issues lease ids: one per engine.
pub(super) struct LeaseIds {
    issuer: u64,
    next: AtomicU64,
}

impl LeaseIds {
    pub(super) fn new() -> Self {
        use std::hash::BuildHasher;
        // Random enough to keep the ids of two engines apart: std seeds RandomState from the
        // OS once per thread and varies it per instance.
        let issuer = std::hash::RandomState::new().hash_one((
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        ));
        Self {
            issuer,
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> LeaseId {
        LeaseId {
            issuer: self.issuer,
            seq: self.next.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// What stream code needs to lease and to remember ids: the clock (read only when it is
/// needed, so that the paths that need none pay nothing), the id issuer and the dedupe budget.
pub(super) struct Ctx<'a> {
    pub(super) clock: &'a dyn crate::time::Clock,
    pub(super) ids: &'a LeaseIds,
    /// The engine's count of remembered ids ([`super::dedupe`]).
    pub(super) dedupe: &'a crate::id_cap::IdCap,
}

impl Ctx<'_> {
    pub(super) fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

/// A lease's whole-microsecond deadline on the engine's clock.
pub(super) type Deadline = u64;

/// One shard's index of lease deadlines, applied from [`Acks::changes`]: each lease by its
/// deadline, with the hash of its stream (the stream is found by it and by holding the lease,
/// which saves a copy of its id per lease).
pub(super) type Deadlines = BTreeMap<(Deadline, LeaseId), u64>;

/// A change a stream made to its leases' deadlines, for its shard's [`Deadlines`].
#[derive(Debug, Clone, Copy)]
pub(super) enum Change {
    Add(Deadline, LeaseId),
    Remove(Deadline, LeaseId),
}

/// What a delivery is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Its receiver's acknowledgement, until the deadline.
    Leased,
    /// Returned with a delay: back to the stream at the deadline; its handle is spent.
    Delayed,
}

/// One delivery in flight.
#[derive(Debug)]
pub(super) struct Lease {
    pub(super) message: Message,
    pub(super) deliveries: u32,
    pub(super) deadline: Deadline,
    pub(super) state: State,
}

/// A stream's acknowledgement state. Allocated while it has any: leases, delivery counts of
/// returned messages, changes to apply, or a [`Redrive`] policy.
#[derive(Debug, Default)]
pub(super) struct Acks {
    pub(super) leases: HashMap<LeaseId, Lease>,
    /// The delivery counts of the first `returned.len()` buffered messages (those that came
    /// back to the head of the stream); any other buffered message was never delivered.
    pub(super) returned: VecDeque<u32>,
    /// The [`charge`](super::buffer::charge)s of the leased messages.
    pub(super) bytes: usize,
    pub(super) changes: Vec<Change>,
    pub(super) redrive: Redrive,
}

impl Acks {
    pub(super) fn is_empty(&self) -> bool {
        self.leases.is_empty()
            && self.returned.is_empty()
            && self.changes.is_empty()
            && self.redrive == Redrive::default()
    }

    /// Puts `message` in flight until `now + timeout`.
    pub(super) fn lease(
        &mut self,
        stream: &StreamId,
        message: &Message,
        deliveries: u32,
        timeout: Duration,
        ctx: &Ctx<'_>,
    ) -> ReceiptHandle {
        let id = ctx.ids.next();
        let deadline = deadline(ctx.now(), timeout);
        self.bytes += super::buffer::charge(message);
        self.leases.insert(
            id,
            Lease {
                message: message.clone(),
                deliveries,
                deadline,
                state: State::Leased,
            },
        );
        self.changes.push(Change::Add(deadline, id));
        ReceiptHandle::new(id, stream)
    }

    /// Takes a lease out, whatever its state.
    pub(super) fn remove(&mut self, id: &LeaseId) -> Option<Lease> {
        let lease = self.leases.remove(id)?;
        self.bytes -= super::buffer::charge(&lease.message);
        self.changes.push(Change::Remove(lease.deadline, *id));
        Some(lease)
    }

    /// The lease of a live handle (not returned with a delay).
    pub(super) fn live(&mut self, id: &LeaseId) -> Result<&mut Lease, LeaseError> {
        match self.leases.get_mut(id) {
            Some(lease) if lease.state == State::Leased => Ok(lease),
            _ => Err(LeaseError::NotInFlight),
        }
    }

    /// Takes every lease out, in the order they were made, for a move: each with what is left
    /// of it at `now`.
    pub(super) fn take_all(&mut self, now: Timestamp) -> Vec<InFlight> {
        let mut ids: Vec<_> = self.leases.keys().copied().collect();
        ids.sort_unstable();
        ids.iter()
            .filter_map(|id| {
                let lease = self.remove(id)?;
                let left = lease.deadline.saturating_sub(now.as_micros());
                Some(InFlight {
                    message: lease.message,
                    lease: *id,
                    deliveries: lease.deliveries,
                    remaining: Duration::from_micros(left),
                    delayed: lease.state == State::Delayed,
                })
            })
            .collect()
    }

    /// Takes over a delivery in flight that moved here, unless its lease is here already.
    pub(super) fn take_over(&mut self, in_flight: InFlight, now: Timestamp) {
        if self.leases.contains_key(&in_flight.lease) {
            return;
        }
        let deadline = deadline(now, in_flight.remaining);
        self.bytes += super::buffer::charge(&in_flight.message);
        let state = if in_flight.delayed {
            State::Delayed
        } else {
            State::Leased
        };
        self.leases.insert(
            in_flight.lease,
            Lease {
                message: in_flight.message,
                deliveries: in_flight.deliveries,
                deadline,
                state,
            },
        );
        self.changes.push(Change::Add(deadline, in_flight.lease));
    }

    /// Moves a lease's deadline to `now + after`, in `state`.
    pub(super) fn reschedule(
        &mut self,
        id: LeaseId,
        after: Duration,
        state: State,
        now: Timestamp,
    ) {
        if let Some(lease) = self.leases.get_mut(&id) {
            self.changes.push(Change::Remove(lease.deadline, id));
            lease.deadline = deadline(now, after);
            lease.state = state;
            self.changes.push(Change::Add(lease.deadline, id));
        }
    }
}

fn deadline(now: Timestamp, after: Duration) -> Deadline {
    now.saturating_add(after).as_micros()
}
