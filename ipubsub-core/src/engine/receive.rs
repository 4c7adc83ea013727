//! [`ReceiveFuture`]: one receive, from the first poll to a message, a shutdown or giving up.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::slot::{Cancel, Slot};
use super::stream::ReceiverSlot;
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
pub struct ReceiveFuture {
    engine: Engine,
    state: State,
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
    Got(Message),
    Queued(ReceiverSlot, WaitPermit),
}

impl ReceiveFuture {
    pub(super) fn new(engine: Engine, stream: StreamId) -> Self {
        Self {
            engine,
            state: State::Start(stream),
        }
    }

    /// Gives up the receive, typically because the caller's timeout fired. Returns the message
    /// it was handed if there was one (the caller must deliver it), else `None`, and the
    /// receive leaves the stream's queue. After this the future must not be polled again.
    pub fn abandon(&mut self) -> Option<Message> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Waiting { stream, slot, .. } => {
                self.engine.cancel_receive(&stream, &slot, false)
            }
            State::Start(_) | State::Done => None,
        }
    }

    fn start(&mut self, stream: &StreamId, cx: &mut Context<'_>) -> Result<First, ReceiveError> {
        let first = self.engine.with_stream(stream, |s, inner| {
            if let Some(message) = s.take() {
                return Ok::<_, Refusal>(First::Got(message));
            }
            let permit = Inner::try_wait(inner)?;
            let slot = Slot::new(cx.waker());
            s.enqueue_receiver(slot.clone());
            Ok(First::Queued(slot, permit))
        });
        Ok(first??)
    }
}

impl Future for ReceiveFuture {
    type Output = Result<Message, ReceiveError>;

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

impl Drop for ReceiveFuture {
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
    /// returned, or with `requeue` put back at the front of the stream.
    fn cancel_receive(
        &self,
        stream: &StreamId,
        slot: &ReceiverSlot,
        requeue: bool,
    ) -> Option<Message> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let (hash, shard) = inner.locate(stream);
        let mut table = shard.0.lock();
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
            Cancel::WasServed(message) if requeue => {
                if let Ok(s) = inner.stream_mut(&mut table, hash, stream, now, Create::Always) {
                    inner.metered(s, |s| s.requeue(message));
                }
                None
            }
            Cancel::WasServed(message) => Some(message),
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
