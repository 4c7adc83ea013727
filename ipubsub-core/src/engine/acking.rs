//! Acknowledged receives on the [`Engine`]: receiving under a lease, and what ends a lease
//! (an acknowledgement, a return, its deadline).

use std::time::Duration;

use super::lease::{DeadLetter, LeaseError, LeaseId, Leased, ReceiptHandle, Redrive};
use super::receive::LeasedReceiveFuture;
use super::stream::{Back, Stream};
use super::{Engine, Inner};
use crate::error::SendError;
use crate::id::StreamId;
use crate::sync::atomic::{AtomicU64, Ordering};

/// What [`Engine::expire_leases`] did.
#[derive(Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Expired {
    /// Messages whose lease ended, back at the head of their stream.
    pub redelivered: usize,
    /// Messages delivered their stream's `maxDeliveries` times: for the caller to put on
    /// their dead-letter stream.
    pub dead_letters: Vec<DeadLetter>,
    /// Messages delivered their stream's `maxDeliveries` times, dropped: their stream has no
    /// dead-letter stream.
    pub dropped: usize,
}

impl Engine {
    /// Receives the next message of `stream` under a lease of `lease`: as
    /// [`Engine::receive`], but the message stays held, in flight, until it is acknowledged
    /// ([`Engine::ack`]), returned ([`Engine::nack`]), or its lease ends
    /// ([`Engine::expire_leases`]) and it goes back to the head of its stream.
    pub fn receive_leased(&self, stream: StreamId, lease: Duration) -> LeasedReceiveFuture {
        LeasedReceiveFuture::new(self.clone(), stream, lease)
    }

    /// Takes up to `max` messages of `stream` that are there now under leases of `lease`,
    /// oldest first, without waiting. Creates no stream.
    pub fn try_receive_leased(
        &self,
        stream: &StreamId,
        lease: Duration,
        max: usize,
    ) -> Vec<Leased> {
        self.on_stream(stream, |s, inner| {
            let ctx = inner.ctx();
            std::iter::from_fn(|| s.take(Some(lease), &ctx))
                .take(max)
                .filter_map(super::stream::Handed::leased)
                .collect()
        })
        .unwrap_or_default()
    }

    /// Fixes what becomes of `stream`'s messages that are delivered again and again
    /// ([`Redrive`]), unless a policy is fixed already: like the stream's size, the first one
    /// stays for as long as the stream. Creates the stream (within the limit) if needed.
    pub fn set_redrive(&self, stream: &StreamId, redrive: Redrive) -> Result<(), SendError> {
        if redrive == Redrive::default() {
            return Ok(());
        }
        self.with_stream(stream, |s, _| s.set_redrive(redrive))
            .map_err(SendError::from)
    }

    /// Acknowledges the deliveries of `handles` on `stream`: their messages are done. One
    /// outcome per handle, in order.
    pub fn ack(&self, stream: &StreamId, handles: &[ReceiptHandle]) -> Vec<Result<(), LeaseError>> {
        let outcomes = self.each_handle(stream, handles, |s, handle, inner| {
            s.ack(handle, &inner.ctx())
        });
        self.inner.count(&outcomes, &self.inner.counts.acked);
        outcomes
    }

    /// Gives the leases of `handles` on `stream` more time: `lease` from now.
    pub fn extend(
        &self,
        stream: &StreamId,
        handles: &[ReceiptHandle],
        lease: Duration,
    ) -> Vec<Result<(), LeaseError>> {
        let outcomes = self.each_handle(stream, handles, |s, handle, inner| {
            s.extend(handle, lease, inner.clock.now())
        });
        self.inner.count(&outcomes, &self.inner.counts.extended);
        outcomes
    }

    /// Returns the deliveries of `handles` on `stream`: their messages go back to the head of
    /// the stream now, or once `delay` has passed (staying in flight until then). A message
    /// that has had its stream's `maxDeliveries` comes back as a [`DeadLetter`] for the
    /// caller to put on the dead-letter stream (or is dropped, without one).
    pub fn nack(
        &self,
        stream: &StreamId,
        handles: &[ReceiptHandle],
        delay: Duration,
    ) -> Vec<Result<Option<DeadLetter>, LeaseError>> {
        let outcomes = self.each_handle(stream, handles, |s, handle, inner| {
            let back = s.nack(handle, delay, &inner.ctx())?;
            Ok(inner.note_back(back))
        });
        self.inner.count(&outcomes, &self.inner.counts.nacked);
        outcomes
    }

    /// Ends every lease whose deadline has passed on the engine's clock: each message goes
    /// back to the head of its stream (to a waiting receiver first), or, after its stream's
    /// `maxDeliveries`, off it. Call it periodically; it locks one shard at a time, and its
    /// work is proportional to the leases that ended.
    pub fn expire_leases(&self) -> Expired {
        let mut expired = Expired::default();
        let inner = &*self.inner;
        for shard in inner.shards.iter() {
            let now = inner.clock.now().as_micros();
            let due = {
                let mut deadlines = shard.deadlines.lock();
                let later = deadlines.split_off(&(now.saturating_add(1), LeaseId::MIN));
                std::mem::replace(&mut *deadlines, later)
            };
            if due.is_empty() {
                continue;
            }
            let mut table = shard.table.lock();
            let ctx = inner.ctx();
            // Latest first: each goes to the head of its stream, so the earliest ends up
            // there, and messages that come back together keep the order they left in.
            for ((deadline, id), hash) in due.into_iter().rev() {
                let Some(s) = table.find_mut(hash, |s| s.holds_lease(&id)) else {
                    continue;
                };
                let back = inner.metered(shard, s, |s| s.expire(&id, deadline, &ctx));
                match back {
                    Some(Back::Requeued) => {
                        expired.redelivered += 1;
                        inner.counts.redelivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(back) => match inner.note_back(back) {
                        Some(letter) => expired.dead_letters.push(letter),
                        None => expired.dropped += 1,
                    },
                    None => {}
                }
            }
        }
        expired
    }

    /// Runs `f` on each handle against `stream` under one lock: a handle of another stream is
    /// refused before the stream is looked up, a stream the engine does not hold has nothing
    /// in flight.
    fn each_handle<T>(
        &self,
        stream: &StreamId,
        handles: &[ReceiptHandle],
        mut f: impl FnMut(&mut Stream, &ReceiptHandle, &Inner) -> Result<T, LeaseError>,
    ) -> Vec<Result<T, LeaseError>> {
        let outcomes = self.on_stream(stream, |s, inner| {
            handles.iter().map(|handle| f(s, handle, inner)).collect()
        });
        outcomes.unwrap_or_else(|| {
            let missing = |h: &ReceiptHandle| match h.is_for(stream) {
                true => Err(LeaseError::NotInFlight),
                false => Err(LeaseError::OtherStream),
            };
            handles.iter().map(missing).collect()
        })
    }

    /// Runs `f` on `stream` under its shard lock, if the engine holds it (creating none).
    fn on_stream<R>(&self, id: &StreamId, f: impl FnOnce(&mut Stream, &Inner) -> R) -> Option<R> {
        let inner = &*self.inner;
        let (hash, shard) = inner.locate(id);
        let mut table = shard.table.lock();
        let now = inner.clock.now();
        let stream = Inner::find_mut(&mut table, hash, id)?;
        stream.touch(now);
        Some(inner.metered(shard, stream, |s| f(s, inner)))
    }
}

impl Inner {
    /// Counts a message that left its stream for good after `maxDeliveries`; the dead letter
    /// to deliver, if it has a dead-letter stream.
    fn note_back(&self, back: Back) -> Option<DeadLetter> {
        match back {
            Back::Requeued => None,
            Back::DeadLetter(letter) => {
                self.counts.dead_lettered.fetch_add(1, Ordering::Relaxed);
                Some(letter)
            }
            Back::Dropped => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Counts `outcomes`: successes in `done`, refusals in the refusal counter.
    fn count<T>(&self, outcomes: &[Result<T, LeaseError>], done: &AtomicU64) {
        let ok = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
        done.fetch_add(ok, Ordering::Relaxed);
        self.counts
            .refusals
            .fetch_add(outcomes.len() as u64 - ok, Ordering::Relaxed);
    }
}
