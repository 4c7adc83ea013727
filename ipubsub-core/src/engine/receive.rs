//! [`ReceiveFuture`] and [`LeasedReceiveFuture`]: one receive, from the first poll to a
//! message, a shutdown or giving up.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::lease::Leased;
use super::slot::{Cancel, Slot};
use super::stream::{Handed, ReceiverSlot};
use super::{Create, Engine, Inner, Refusal, WaitPermit};
use crate::error::ReceiveError;
use crate::id::StreamId;
use crate::message::Message;

/// A receive of the next message of one stream, returned by [`Engine::receive`].
///
/// Nothing happens until it is first polled: then it takes the oldest buffered message (or the
/// oldest waiting sender's), or queues as a waiting receiver, FIFO behind earlier ones.
///
/// **Cancellation safety.** A message handed to this receive is never lost:
/// - when the caller's timeout fires, call [`ReceiveFuture::abandon`]: it returns the message
///   if one was handed over in the meantime, else leaves the queue;
/// - if the future is simply dropped (the client went away), a message it was handed but never
///   returned goes back to the front of the stream, to the next receiver.
pub struct ReceiveFuture(Receiving);

/// An acknowledged receive of the next message of one stream, returned by
/// [`Engine::receive_leased`]: as [`ReceiveFuture`], but the message it takes stays in flight
/// under a lease until it is acknowledged ([`Engine::ack`]), returned ([`Engine::nack`]) or the
/// lease ends, when it goes back to the head of its stream.
///
/// **Cancellation safety.** [`abandon`](Self::abandon) returns the leased message if one was
/// handed over (the caller must deliver it, or [`Engine::nack`] it); if the future is dropped
/// after being handed one, the lease ends at once and the message goes back, its delivery
/// not counted.
pub struct LeasedReceiveFuture(Receiving);

impl ReceiveFuture {
    pub(super) fn new(engine: Engine, stream: StreamId) -> Self {
        Self(Receiving::new(engine, stream, None))
    }

    /// Gives up the receive, typically because the caller's timeout fired. Returns the message
    /// it was handed if there was one (the caller must deliver it), else `None`, and the
    /// receive leaves the stream's queue. After this the future must not be polled again.
    pub fn abandon(&mut self) -> Option<Message> {
        self.0.abandon().map(|handed| handed.message)
    }
}

impl Future for ReceiveFuture {
    type Output = Result<Message, ReceiveError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.get_mut().0)
            .poll(cx)
            .map_ok(|handed| handed.message)
    }
}

impl LeasedReceiveFuture {
    pub(super) fn new(engine: Engine, stream: StreamId, lease: Duration) -> Self {
        Self(Receiving::new(engine, stream, Some(lease)))
    }

    /// Gives up the receive, as [`ReceiveFuture::abandon`]: the message it was handed, still
    /// leased, if there was one.
    pub fn abandon(&mut self) -> Option<Leased> {
        self.0.abandon().and_then(Handed::leased)
    }
}

impl Future for LeasedReceiveFuture {
    type Output = Result<Leased, ReceiveError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.get_mut().0).poll(cx).map(|result| {
            // A leased receive is always handed a lease.
            result.and_then(|handed| handed.leased().ok_or(ReceiveError::ShuttingDown))
        })
    }
}

impl Handed {
    /// The leased delivery this is, if it is one.
    pub(super) fn leased(self) -> Option<Leased> {
        let handle = self.handle?;
        Some(Leased {
            message: self.message,
            handle,
            deliveries: self.before + 1,
        })
    }
}

/// The receive behind both futures.
struct Receiving {
    engine: Engine,
    state: State,
    /// The lease asked for, if any.
    lease: Option<Duration>,
}

enum State {
    Start(StreamId),
    Waiting {
        stream: StreamId,
        slot: ReceiverSlot,
        _permit: WaitPermit,
    },
    Done,
}

/// What the first poll found.
enum First {
    Got(Handed),
    Queued(ReceiverSlot, WaitPermit),
}

impl Receiving {
    fn new(engine: Engine, stream: StreamId, lease: Option<Duration>) -> Self {
        Self {
            engine,
            state: State::Start(stream),
            lease,
        }
    }

    fn abandon(&mut self) -> Option<Handed> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Waiting { stream, slot, .. } => {
                self.engine.cancel_receive(&stream, &slot, false)
            }
            State::Start(_) | State::Done => None,
        }
    }

    fn start(&mut self, stream: &StreamId, cx: &mut Context<'_>) -> Result<First, ReceiveError> {
        let lease = self.lease;
        let first = self.engine.with_stream(stream, |s, inner| {
            if let Some(handed) = s.take(lease, &inner.ctx()) {
                return Ok::<_, Refusal>(First::Got(handed));
            }
            let permit = Inner::try_wait(inner)?;
            let slot = Slot::new(cx.waker());
            s.enqueue_receiver(slot.clone(), lease);
            Ok(First::Queued(slot, permit))
        });
        Ok(first??)
    }
}

impl Future for Receiving {
    type Output = Result<Handed, ReceiveError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match std::mem::replace(&mut this.state, State::Done) {
            State::Start(stream) => match this.start(&stream, cx) {
                Ok(First::Got(message)) => Poll::Ready(Ok(message)),
                Ok(First::Queued(slot, permit)) => {
                    this.state = State::Waiting {
                        stream,
                        slot,
                        _permit: permit,
                    };
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(e)),
            },
            State::Waiting {
                stream,
                slot,
                _permit,
            } => match slot.poll(cx) {
                Poll::Ready(Ok(message)) => Poll::Ready(Ok(message)),
                Poll::Ready(Err(())) if this.engine.is_closed() => {
                    Poll::Ready(Err(ReceiveError::ShuttingDown))
                }
                Poll::Ready(Err(())) => Poll::Ready(Err(ReceiveError::Moved)),
                Poll::Pending => {
                    this.state = State::Waiting {
                        stream,
                        slot,
                        _permit,
                    };
                    Poll::Pending
                }
            },
            State::Done => panic!("ReceiveFuture polled after completion"),
        }
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        if let State::Waiting { stream, slot, .. } = std::mem::replace(&mut self.state, State::Done)
        {
            // Dropped while waiting: requeue anything it was handed.
            let _ = self.engine.cancel_receive(&stream, &slot, true);
        }
    }
}

impl Engine {
    /// Takes a waiting receive out of its stream's queue. A message it had been handed is
    /// returned, or with `requeue` put back at the front of the stream (its lease, if it had
    /// one, ended without counting).
    fn cancel_receive(
        &self,
        stream: &StreamId,
        slot: &ReceiverSlot,
        requeue: bool,
    ) -> Option<Handed> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let (hash, shard) = inner.locate(stream);
        let mut table = shard.table.lock();
        // The slot is settled under the shard lock, like every hand-over, so nothing can be
        // handed to it after this point.
        match slot.cancel() {
            Cancel::WasWaiting => {
                // A queued slot keeps its stream alive, so the stream is there.
                if let Some(s) = Inner::find_mut(&mut table, hash, stream) {
                    s.receiver_gave_up();
                }
                None
            }
            Cancel::WasServed(handed) if requeue => {
                if let Ok(s) = inner.stream_mut(&mut table, hash, stream, now, Create::Always) {
                    let ctx = inner.ctx();
                    inner.metered(shard, s, |s| match &handed.handle {
                        Some(handle) => s.release(handle, &ctx),
                        None => s.requeue(handed.message, handed.before, &ctx),
                    });
                }
                None
            }
            Cancel::WasServed(handed) => Some(handed),
            Cancel::Nothing => None,
        }
    }
}

impl From<Refusal> for ReceiveError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::TooManyStreams(max) => Self::TooManyStreams { max },
            Refusal::TooManyWaiters(max) => Self::TooManyWaiters { max },
            Refusal::ShuttingDown => Self::ShuttingDown,
        }
    }
}
