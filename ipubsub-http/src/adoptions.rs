//! [`Adoptions`]: the hand-offs this node has taken over, so that one tried again is not
//! taken twice.
//!
//! A node handing a message over cannot tell a hand-off whose answer was lost (the new owner
//! holds the message) from one that never arrived, so it tries again — and without a memory
//! on the receiving side the message would be there twice, or, if a receiver had already
//! taken it, delivered twice. Each hand-off therefore names the copy it moves: the handing
//! node, the stream, the message id and the time the handing node accepted that copy
//! ([`HandOffCopy`]). A node that takes over a copy remembers its name for
//! [`REMEMBERED_FOR`]; the same copy handed again is answered as taken and dropped.
//!
//! A message that legitimately comes back (A → B → C → B) arrives as another copy: C
//! accepted it at its own time, so C's hand-off has another name and B takes it over again.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use ipubsub_core::{InFlight, LeaseId, Message, StreamId, Timestamp};

/// How long a taken-over copy is remembered. A hand-off is tried again within seconds (a
/// staying node's attempts span about 7 s, then it keeps the message and tries again at its
/// next tick), so ten minutes covers an owner that was unreachable for a while in between.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(600);

/// Most copies remembered at once (about 40 bytes each); past that the oldest are forgotten
/// first.
pub const REMEMBERED_AT_MOST: usize = 1 << 20;

/// The name of one node's copy of a message, carried by each attempt to hand it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOffCopy<'a> {
    /// The node handing the copy over.
    pub from: &'a str,
    /// Its stream.
    pub stream: &'a StreamId,
    /// The message's id.
    pub message: &'a str,
    /// When the handing node accepted this copy.
    pub accepted: Timestamp,
}

impl HandOffCopy<'_> {
    /// The value of the hand-off header naming a copy accepted at `accepted`.
    pub fn header_value(accepted: Timestamp) -> String {
        format!("at={}", accepted.as_micros())
    }

    /// The acceptance time a hand-off header names; `None` for a header without one (a
    /// node of an older version marks its hand-offs `1`).
    pub fn parse_header(value: &[u8]) -> Option<Timestamp> {
        let first = value.split(|&b| b == b';').next()?;
        let micros = std::str::from_utf8(first.strip_prefix(b"at=")?).ok()?;
        micros.parse().ok().map(Timestamp::from_micros)
    }

    /// What a hand-off header adds for a delivery in flight:
    /// `;lease=<id>;left=<ms>;n=<deliveries>;delayed=<0|1>`.
    pub fn lease_suffix(in_flight: &InFlight) -> String {
        format!(
            ";lease={};left={};n={};delayed={}",
            in_flight.lease,
            in_flight.remaining.as_millis(),
            in_flight.deliveries,
            u8::from(in_flight.delayed)
        )
    }

    /// The lease a hand-off header carries (`message` is the delivery's message), if any.
    pub fn parse_lease(value: &[u8], message: Message) -> Option<InFlight> {
        let text = std::str::from_utf8(value).ok()?;
        let (mut lease, mut left, mut n, mut delayed) = (None, None, None, None);
        for part in text.split(';').skip(1) {
            let (key, value) = part.split_once('=')?;
            match key {
                "lease" => lease = LeaseId::parse(value),
                "left" => left = value.parse().ok().map(Duration::from_millis),
                "n" => n = value.parse().ok(),
                "delayed" => delayed = Some(value == "1"),
                _ => {}
            }
        }
        Some(InFlight::new(message, lease?, n?, left?, delayed?))
    }
}

/// The copies this node took over in the last [`REMEMBERED_FOR`], by a keyed 64-bit hash of
/// their names.
#[derive(Debug)]
pub struct Adoptions {
    hasher: RandomState,
    remembered_for: Duration,
    at_most: usize,
    ledger: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    keys: HashSet<u64>,
    /// The same keys, oldest first, with when each was taken over.
    order: VecDeque<(Instant, u64)>,
}

impl Default for Adoptions {
    fn default() -> Self {
        Self::new(REMEMBERED_FOR, REMEMBERED_AT_MOST)
    }
}

impl Adoptions {
    /// A memory of copies that keeps each for `remembered_for`, and at most `at_most`.
    pub fn new(remembered_for: Duration, at_most: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            remembered_for,
            at_most: at_most.max(1),
            ledger: Mutex::default(),
        }
    }

    /// Takes `copy` over with `adopt`, unless it was taken over already: `Ok(true)` if
    /// `adopt` ran and succeeded, `Ok(false)` if the copy was a repeat. A copy whose `adopt`
    /// failed is not remembered, so its next attempt runs `adopt` again.
    ///
    /// `adopt` runs under the memory's lock: two attempts at one copy arriving together take
    /// it over once.
    pub fn adopt_once<E>(
        &self,
        copy: HandOffCopy<'_>,
        adopt: impl FnOnce() -> Result<(), E>,
    ) -> Result<bool, E> {
        let key =
            self.hasher
                .hash_one((copy.from, copy.stream.as_str(), copy.message, copy.accepted));
        let now = Instant::now();
        let mut ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(&(at, old)) = ledger.order.front() {
            if now.duration_since(at) < self.remembered_for {
                break;
            }
            ledger.order.pop_front();
            ledger.keys.remove(&old);
        }
        if ledger.keys.contains(&key) {
            return Ok(false);
        }
        adopt()?;
        while ledger.order.len() >= self.at_most {
            if let Some((_, old)) = ledger.order.pop_front() {
                ledger.keys.remove(&old);
            }
        }
        ledger.keys.insert(key);
        ledger.order.push_back((now, key));
        Ok(true)
    }

    /// How many copies are remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .order
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy<'a>(stream: &'a StreamId, message: &'a str, from: &'a str, at: u64) -> HandOffCopy<'a> {
        HandOffCopy {
            from,
            stream,
            message,
            accepted: Timestamp::from_micros(at),
        }
    }

    fn adopt(adoptions: &Adoptions, c: HandOffCopy<'_>, count: &mut u32) -> bool {
        adoptions
            .adopt_once(c, || {
                *count += 1;
                Ok::<(), ()>(())
            })
            .unwrap_or(false)
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_is_taken_over_once_until_it_is_forgotten() {
        let s = StreamId::new("s").expect("stream id");
        let adoptions = Adoptions::new(Duration::from_secs(60), 100);
        let mut taken = 0;
        assert!(adopt(&adoptions, copy(&s, "m", "a", 1), &mut taken));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!adopt(&adoptions, copy(&s, "m", "a", 1), &mut taken));
        assert_eq!(taken, 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(adopt(&adoptions, copy(&s, "m", "a", 1), &mut taken));
        assert_eq!((taken, adoptions.len()), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn another_copy_of_the_same_message_is_taken_over_again() {
        // A -> B -> C -> B: C's copy has its own acceptance time and sender.
        let s = StreamId::new("s").expect("stream id");
        let t = StreamId::new("t").expect("stream id");
        let adoptions = Adoptions::default();
        let mut taken = 0;
        assert!(adopt(&adoptions, copy(&s, "m", "a", 1), &mut taken));
        assert!(adopt(&adoptions, copy(&s, "m", "c", 5), &mut taken));
        assert!(adopt(&adoptions, copy(&s, "m", "a", 9), &mut taken));
        assert!(adopt(&adoptions, copy(&t, "m", "a", 1), &mut taken));
        assert!(adopt(&adoptions, copy(&s, "n", "a", 1), &mut taken));
        assert_eq!(taken, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_adoption_is_not_remembered() {
        let s = StreamId::new("s").expect("stream id");
        let adoptions = Adoptions::default();
        assert_eq!(
            adoptions.adopt_once(copy(&s, "m", "a", 1), || Err("closed")),
            Err("closed")
        );
        let mut taken = 0;
        assert!(adopt(&adoptions, copy(&s, "m", "a", 1), &mut taken));
        assert_eq!(taken, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_copies_are_forgotten_past_the_bound() {
        let s = StreamId::new("s").expect("stream id");
        let adoptions = Adoptions::new(Duration::from_secs(600), 3);
        let mut taken = 0;
        for at in 0..4 {
            assert!(adopt(&adoptions, copy(&s, "m", "a", at), &mut taken));
        }
        assert_eq!(adoptions.len(), 3);
        // The newest are still known, the oldest is not.
        assert!(!adopt(&adoptions, copy(&s, "m", "a", 3), &mut taken));
        assert!(adopt(&adoptions, copy(&s, "m", "a", 0), &mut taken));
    }

    #[test]
    fn the_header_names_the_acceptance_time() {
        let at = Timestamp::from_micros(1_764_000_000_123_456);
        let value = HandOffCopy::header_value(at);
        assert_eq!(value, "at=1764000000123456");
        assert_eq!(HandOffCopy::parse_header(value.as_bytes()), Some(at));
        assert_eq!(HandOffCopy::parse_header(b"1"), None);
        // A delivery in flight adds its lease; the time still reads, and the lease reads back.
        let message = Message::new(
            ipubsub_core::MessageId::new("m").expect("id"),
            bytes::Bytes::from_static(b"1"),
            at,
        );
        let lease = LeaseId::parse("00000000000000070000000000000009").expect("lease id");
        let moving = InFlight::new(message.clone(), lease, 3, Duration::from_millis(1500), true);
        let header = format!("{value}{}", HandOffCopy::lease_suffix(&moving));
        assert_eq!(HandOffCopy::parse_header(header.as_bytes()), Some(at));
        assert_eq!(
            HandOffCopy::parse_lease(header.as_bytes(), message.clone()),
            Some(moving)
        );
        assert_eq!(
            HandOffCopy::parse_lease(value.as_bytes(), message.clone()),
            None
        );
        let cut = header.replace(";n=3", "");
        assert_eq!(HandOffCopy::parse_lease(cut.as_bytes(), message), None);
        assert_eq!(HandOffCopy::parse_header(b"at=x"), None);
    }
}
