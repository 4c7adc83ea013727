//! What ends a stream's deliveries in flight: an acknowledgement, a return, the lease's
//! deadline, or the receive giving up before its answer; and an extension.

use std::time::Duration;

use super::{Back, Stream};
use crate::engine::lease::{Ctx, Deadline};
use crate::engine::lease::{DeadLetter, Lease, LeaseError, LeaseId, ReceiptHandle, State};
use crate::time::Timestamp;

impl Stream {
    /// Whether the stream holds the lease `id` (in flight, or returned with a delay).
    pub(in crate::engine) fn holds_lease(&self, id: &LeaseId) -> bool {
        self.waiting
            .as_ref()
            .and_then(|w| w.acks.as_ref())
            .is_some_and(|a| a.leases.contains_key(id))
    }

    /// Acknowledges the delivery of `handle`: its message is done.
    pub(in crate::engine) fn ack(
        &mut self,
        handle: &ReceiptHandle,
        ctx: &Ctx<'_>,
    ) -> Result<(), LeaseError> {
        self.check(handle)?;
        let acks = self.acks_mut();
        acks.live(&handle.lease())?;
        acks.remove(&handle.lease());
        self.admit_senders(ctx);
        self.tidy();
        Ok(())
    }

    /// Gives the lease of `handle` more time: `timeout` from now.
    pub(in crate::engine) fn extend(
        &mut self,
        handle: &ReceiptHandle,
        timeout: Duration,
        now: Timestamp,
    ) -> Result<(), LeaseError> {
        self.check(handle)?;
        let acks = self.acks_mut();
        acks.live(&handle.lease())?;
        acks.reschedule(handle.lease(), timeout, State::Leased, now);
        Ok(())
    }

    /// Returns the delivery of `handle` to the stream: now, or after `delay` (its message
    /// stays in flight until then).
    pub(in crate::engine) fn nack(
        &mut self,
        handle: &ReceiptHandle,
        delay: Duration,
        ctx: &Ctx<'_>,
    ) -> Result<Back, LeaseError> {
        self.check(handle)?;
        let acks = self.acks_mut();
        acks.live(&handle.lease())?;
        if !delay.is_zero() {
            acks.reschedule(handle.lease(), delay, State::Delayed, ctx.now());
            return Ok(Back::Requeued);
        }
        let lease = acks
            .remove(&handle.lease())
            .ok_or(LeaseError::NotInFlight)?;
        Ok(self.give_back(lease, ctx))
    }

    /// Ends the lease `id` if it is still due at `deadline` (an index entry may be older than
    /// an extension), returning its message to the stream.
    pub(in crate::engine) fn expire(
        &mut self,
        id: &LeaseId,
        deadline: Deadline,
        ctx: &Ctx<'_>,
    ) -> Option<Back> {
        let acks = self.waiting.as_mut()?.acks.as_mut()?;
        if acks.leases.get(id)?.deadline != deadline {
            return None;
        }
        let lease = acks.remove(id)?;
        Some(self.give_back(lease, ctx))
    }

    /// Gives back a delivery its receive never answered (it gave up after being handed the
    /// message): the lease ends without counting as a delivery.
    pub(in crate::engine) fn release(&mut self, handle: &ReceiptHandle, ctx: &Ctx<'_>) {
        let Some(acks) = self.waiting.as_mut().and_then(|w| w.acks.as_mut()) else {
            return;
        };
        if let Some(lease) = acks.remove(&handle.lease()) {
            self.requeue(lease.message, lease.deliveries.saturating_sub(1), ctx);
        }
        self.tidy();
    }

    /// A delivery's message back on its stream, or off it for good after its stream's
    /// `maxDeliveries`.
    fn give_back(&mut self, lease: Lease, ctx: &Ctx<'_>) -> Back {
        let Lease {
            message,
            deliveries,
            ..
        } = lease;
        let redrive = self.redrive();
        let back = if redrive.max_deliveries > 0 && deliveries >= redrive.max_deliveries {
            match redrive.dead_letter {
                Some(dead_letter) => Back::DeadLetter(DeadLetter {
                    stream: self.id.clone(),
                    dead_letter,
                    message,
                    deliveries,
                }),
                None => Back::Dropped,
            }
        } else {
            self.requeue(message, deliveries, ctx);
            Back::Requeued
        };
        if !matches!(back, Back::Requeued) {
            // Its place in flight is free.
            self.admit_senders(ctx);
        }
        self.tidy();
        back
    }

    /// Whether `handle` names this stream.
    fn check(&self, handle: &ReceiptHandle) -> Result<(), LeaseError> {
        if handle.is_for(&self.id) {
            Ok(())
        } else {
            Err(LeaseError::OtherStream)
        }
    }
}
