//! A one-shot hand-off cell between the engine and one waiting future.
//!
//! The engine fills a slot while it holds the stream's shard lock; the future reads it without
//! that lock. Every transition out of `Waiting` happens under the shard lock, so the engine can
//! tell a cancelled waiter from a live one while it holds the lock, and a future being dropped
//! (which also takes the shard lock first) can always recover a value it was handed but never
//! returned.

use std::task::{Context, Poll, Waker};

use crate::sync::{Arc, Mutex};

enum State<T> {
    /// In a stream's queue, not yet served.
    Waiting(Option<Waker>),
    /// Served: the value waits for the future to take it.
    Ready(T),
    /// The engine shut down before serving it.
    Closed,
    /// Its future gave up before being served; the queue entry is dead.
    Cancelled,
    /// The future took its value.
    Done,
}

/// What [`Slot::cancel`] found.
pub(super) enum Cancel<T> {
    /// The waiter was still queued; it is now dead and the caller must count it as such.
    WasWaiting,
    /// The waiter had been served: here is what it was handed.
    WasServed(T),
    /// Nothing to undo (closed, or already taken).
    Nothing,
}

pub(super) struct Slot<T> {
    state: Mutex<State<T>>,
}

impl<T> Slot<T> {
    /// A slot that will wake `waker` when served.
    pub(super) fn new(waker: &Waker) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::Waiting(Some(waker.clone()))),
        })
    }

    /// Serves the waiter. Gives `value` back when the waiter is no longer waiting.
    /// Called with the shard lock held.
    pub(super) fn fill(&self, value: T) -> Result<(), T> {
        let waker = {
            let mut state = self.state.lock();
            match std::mem::replace(&mut *state, State::Done) {
                State::Waiting(waker) => {
                    *state = State::Ready(value);
                    waker
                }
                other => {
                    *state = other;
                    return Err(value);
                }
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// True while the waiter is queued and unserved. Called with the shard lock held.
    pub(super) fn is_waiting(&self) -> bool {
        matches!(*self.state.lock(), State::Waiting(_))
    }

    /// Ends the wait without a value (shutdown). Called with the shard lock held.
    pub(super) fn close(&self) {
        let waker = {
            let mut state = self.state.lock();
            match &mut *state {
                State::Waiting(waker) => {
                    let waker = waker.take();
                    *state = State::Closed;
                    waker
                }
                _ => None,
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The future gives up. Called with the shard lock held.
    pub(super) fn cancel(&self) -> Cancel<T> {
        let mut state = self.state.lock();
        match std::mem::replace(&mut *state, State::Done) {
            State::Waiting(_) => {
                *state = State::Cancelled;
                Cancel::WasWaiting
            }
            State::Ready(value) => Cancel::WasServed(value),
            other @ (State::Closed | State::Cancelled | State::Done) => {
                *state = other;
                Cancel::Nothing
            }
        }
    }

    /// Polled by the waiting future: `Ok(value)` once served, `Err(())` once closed.
    pub(super) fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<T, ()>> {
        let mut state = self.state.lock();
        match std::mem::replace(&mut *state, State::Done) {
            State::Ready(value) => Poll::Ready(Ok(value)),
            State::Closed => Poll::Ready(Err(())),
            State::Waiting(waker) => {
                let waker = match waker {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *state = State::Waiting(Some(waker));
                Poll::Pending
            }
            State::Cancelled | State::Done => Poll::Ready(Err(())),
        }
    }
}
