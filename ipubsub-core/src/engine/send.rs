//! [`SendFuture`]: one send, in whichever of the three in-memory modes the stream and the
//! send's options select.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::buffer::charge;
use super::slot::{Cancel, Slot};
use super::stream::{SenderSlot, Stream};
use super::{Engine, Inner, Refusal, WaitPermit};
use crate::error::SendError;
use crate::id::StreamId;
use crate::message::Message;

/// How a send behaves, beyond its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOptions {
    /// The stream's buffer size (`inMemoryStreamSize`), used only if this send is the first
    /// to reach the stream; afterwards the stream's own size applies.
    pub stream_size: u32,
    /// `false`: a circular buffer, a full stream evicts its oldest message.
    /// `true`: wait for room (blocking queue), or for a receiver if the stream has no buffer
    /// (sync match). The caller bounds the wait with its timeout.
    pub wait: bool,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            stream_size: 100,
            wait: false,
        }
    }
}

/// How a send put its message on the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendOutcome {
    /// Handed straight to a waiting receiver.
    Delivered,
    /// Buffered, after evicting this many older messages (circular buffer only).
    Buffered {
        /// Messages evicted to make room.
        evicted: usize,
    },
    /// Not added: a message of the same id was accepted within the stream's dedupe window
    /// ([`Engine::set_dedupe_window`]).
    Duplicate,
}

/// A send to one stream, returned by [`Engine::send`].
///
/// Nothing happens until it is first polled. A send that does not wait completes at its first
/// poll. A waiting send queues FIFO behind earlier waiting senders and completes when its
/// message is accepted (room in the buffer, or a receiver took it).
///
/// **Giving up.** When the caller's timeout fires, call [`SendFuture::abandon`]: it answers
/// definitively whether the message was accepted (the race between the timeout and a receiver
/// is settled under the stream's lock), so a caller never reports a failure for a message that
/// will be delivered. Dropping a waiting send gives it up the same way.
pub struct SendFuture {
    engine: Engine,
    state: State,
}

enum State {
    Start {
        stream: StreamId,
        message: Message,
        options: SendOptions,
    },
    Waiting {
        stream: StreamId,
        slot: SenderSlot,
        /// What giving up means: [`SendError::StreamFull`] or [`SendError::NoReceiver`].
        give_up: SendError,
        _permit: WaitPermit,
    },
    Done,
}

enum First {
    Sent(SendOutcome),
    Queued(SenderSlot, SendError, WaitPermit),
}

impl SendFuture {
    pub(super) fn new(
        engine: Engine,
        stream: StreamId,
        message: Message,
        options: SendOptions,
    ) -> Self {
        Self {
            engine,
            state: State::Start {
                stream,
                message,
                options,
            },
        }
    }

    /// Gives up the send, typically because the caller's timeout fired. `Ok` if the message
    /// was accepted before this call, else the error saying why it was not (and it never will
    /// be). A send that was never polled is not sent. Must not be called after the future
    /// completed.
    pub fn abandon(&mut self) -> Result<SendOutcome, SendError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Waiting {
                stream,
                slot,
                give_up,
                ..
            } => self.engine.cancel_send(&stream, &slot, give_up),
            State::Start { options, .. } if options.stream_size == 0 => Err(SendError::NoReceiver),
            State::Start { .. } | State::Done => Err(SendError::StreamFull),
        }
    }

    fn start(
        &self,
        stream: &StreamId,
        message: Message,
        options: SendOptions,
        cx: &mut Context<'_>,
    ) -> Result<First, SendError> {
        let first = self.engine.with_stream(stream, |s, inner| {
            let capacity = s.capacity_or_set(options.stream_size);
            let ctx = inner.ctx();
            // With a dedupe window: a duplicate adds nothing, and what is accepted is
            // remembered (the id is copied only then).
            let remembered = match s.dedupe_window() {
                Some(_) if s.is_duplicate(message.id(), &ctx) => {
                    ctx.dedupe.count_duplicate();
                    return Ok(First::Sent(SendOutcome::Duplicate));
                }
                Some(_) => Some(message.id().clone()),
                None => None,
            };
            let accepted = |s: &mut Stream| {
                if let Some(id) = &remembered {
                    s.remember(id, &ctx);
                }
            };
            let message = match s.hand_to_receiver(message, 0, &ctx) {
                Ok(()) => {
                    accepted(s);
                    return Ok(First::Sent(SendOutcome::Delivered));
                }
                Err(message) => message,
            };
            let charge = charge(&message);
            if !options.wait {
                if capacity == 0 {
                    // Nothing to evict into and nobody to hand to: refusing is the only
                    // answer that does not silently drop the message.
                    return Err(SendError::NoReceiver);
                }
                if !inner.fits(charge, s.eviction_bytes(capacity)) {
                    return Err(inner.over_budget());
                }
                let evicted = s.push_evicting(message, capacity);
                accepted(s);
                return Ok(First::Sent(SendOutcome::Buffered { evicted }));
            }
            // Buffered or waiting, the message is held from here on.
            if !inner.fits(charge, 0) {
                return Err(inner.over_budget());
            }
            let message = match s.try_push(message, capacity) {
                Ok(()) => {
                    accepted(s);
                    return Ok(First::Sent(SendOutcome::Buffered { evicted: 0 }));
                }
                Err(message) => message,
            };
            let permit = Inner::try_wait(inner).map_err(SendError::from)?;
            let slot = Slot::new(cx.waker());
            s.enqueue_sender(slot.clone(), message);
            let give_up = if capacity == 0 {
                SendError::NoReceiver
            } else {
                SendError::StreamFull
            };
            Ok(First::Queued(slot, give_up, permit))
        });
        first?
    }
}

impl Future for SendFuture {
    type Output = Result<SendOutcome, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match std::mem::replace(&mut this.state, State::Done) {
            State::Start {
                stream,
                message,
                options,
            } => match this.start(&stream, message, options, cx) {
                Ok(First::Sent(outcome)) => Poll::Ready(Ok(outcome)),
                Ok(First::Queued(slot, give_up, permit)) => {
                    this.state = State::Waiting {
                        stream,
                        slot,
                        give_up,
                        _permit: permit,
                    };
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(e)),
            },
            State::Waiting {
                stream,
                slot,
                give_up,
                _permit,
            } => match slot.poll(cx) {
                Poll::Ready(Ok(outcome)) => Poll::Ready(Ok(outcome)),
                // A closed slot: the engine closed, or the stream was drained to move.
                Poll::Ready(Err(())) if this.engine.is_closed() => {
                    Poll::Ready(Err(SendError::ShuttingDown))
                }
                Poll::Ready(Err(())) => Poll::Ready(Err(SendError::Moved)),
                Poll::Pending => {
                    this.state = State::Waiting {
                        stream,
                        slot,
                        give_up,
                        _permit,
                    };
                    Poll::Pending
                }
            },
            State::Done => panic!("SendFuture polled after completion"),
        }
    }
}

impl Drop for SendFuture {
    fn drop(&mut self) {
        if let State::Waiting {
            stream,
            slot,
            give_up,
            ..
        } = std::mem::replace(&mut self.state, State::Done)
        {
            // An accepted message stays on the stream; an unaccepted one leaves the queue.
            let _ = self.engine.cancel_send(&stream, &slot, give_up);
        }
    }
}

impl Engine {
    /// Takes a waiting send out of its stream's queue, or reports that it was accepted.
    fn cancel_send(
        &self,
        stream: &StreamId,
        slot: &SenderSlot,
        give_up: SendError,
    ) -> Result<SendOutcome, SendError> {
        let (hash, shard) = self.inner.locate(stream);
        let mut table = shard.table.lock();
        match slot.cancel() {
            Cancel::WasWaiting => {
                if let Some(s) = Inner::find_mut(&mut table, hash, stream) {
                    self.inner.metered(shard, s, Stream::sender_gave_up);
                }
                Err(give_up)
            }
            Cancel::WasServed(outcome) => Ok(outcome),
            Cancel::Nothing => Err(SendError::ShuttingDown),
        }
    }
}

impl From<Refusal> for SendError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::TooManyStreams(max) => Self::TooManyStreams { max },
            Refusal::TooManyWaiters(max) => Self::TooManyWaiters { max },
            Refusal::ShuttingDown => Self::ShuttingDown,
        }
    }
}
