//! The futures the log waits on: an append's completion, a load, a worker's next batch, and
//! a reader at the tail.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use super::commit::Batch;
use super::{AppendError, Log, lock};
use crate::id::StreamId;
use crate::store::{Epoch, Seq};

/// A one-shot answer to an append.
#[derive(Default)]
pub(super) struct Completion {
    state: Mutex<Answer>,
}

/// The answer once given, and who waits for it meanwhile.
type Answer = (Option<Result<Seq, AppendError>>, Option<Waker>);

impl Completion {
    pub(super) fn complete(&self, result: Result<Seq, AppendError>) {
        let waker = {
            let mut state = lock(&self.state);
            state.0 = Some(result);
            state.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub(super) fn wait(&self) -> impl Future<Output = Result<Seq, AppendError>> + '_ {
        std::future::poll_fn(move |cx| {
            let mut state = lock(&self.state);
            match state.0.take() {
                Some(result) => Poll::Ready(result),
                None => {
                    state.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
    }
}

/// Waits for another caller's load of a stream to end.
pub(super) struct LoadWait<'a> {
    log: &'a Log,
    stream: StreamId,
}

impl<'a> LoadWait<'a> {
    pub(super) fn new(log: &'a Log, stream: StreamId) -> Self {
        Self { log, stream }
    }
}

impl Future for LoadWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut shard = lock(self.log.inner.shard(&self.stream));
        let waiting = shard
            .get_mut(&self.stream)
            .is_some_and(|log| log.wait_for_load(cx.waker()));
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// A worker's wait for the next batch; `None` once the log is closed and drained.
pub(super) struct NextBatch<'a> {
    log: &'a Log,
}

impl<'a> NextBatch<'a> {
    pub(super) fn new(log: &'a Log) -> Self {
        Self { log }
    }
}

impl Future for NextBatch<'_> {
    type Output = Option<Batch>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Batch>> {
        match self.log.take_batch(cx.waker()) {
            Some(batch) => Poll::Ready(batch),
            None => Poll::Pending,
        }
    }
}

/// A reader waiting for the watermark to pass a position. Resolves `true` when it does,
/// `false` when the log closes. Leaves no waker behind when dropped.
pub(super) struct Tail<'a> {
    log: &'a Log,
    stream: StreamId,
    watermark: Seq,
    /// Also resolve (`true`) once the stream is no longer held in this epoch.
    epoch: Option<Epoch>,
    id: Option<u64>,
}

impl<'a> Tail<'a> {
    pub(super) fn new(log: &'a Log, stream: StreamId, watermark: Seq) -> Self {
        Self {
            log,
            stream,
            watermark,
            epoch: None,
            id: None,
        }
    }

    /// Waits until position `seq` is settled (written, or given up), or the stream is no
    /// longer held in `seq`'s epoch: a position that failed is never settled in the epoch
    /// that follows, whose watermark may stay below it.
    pub(super) fn settled(log: &'a Log, stream: StreamId, seq: Seq) -> Self {
        Self {
            log,
            stream,
            watermark: Seq::new(seq.get().saturating_sub(1)),
            epoch: Some(seq.epoch()),
            id: None,
        }
    }
}

impl Future for Tail<'_> {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let this = self.get_mut();
        let mut shard = lock(this.log.inner.shard(&this.stream));
        if this.log.inner.closed.load(Ordering::SeqCst) {
            return Poll::Ready(false);
        }
        match shard.get_mut(&this.stream) {
            Some(log) if this.epoch.is_some() && log.epoch() != this.epoch => Poll::Ready(true),
            Some(log) => match log.committed() {
                Some(committed) if committed > this.watermark => Poll::Ready(true),
                _ => {
                    this.id = Some(log.add_tail_waiter(this.id, cx.waker()));
                    Poll::Pending
                }
            },
            // Forgotten while idle: a fresh read will load it again.
            None => Poll::Ready(true),
        }
    }
}

impl Drop for Tail<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id
            && let Some(log) = lock(self.log.inner.shard(&self.stream)).get_mut(&self.stream)
        {
            log.remove_tail_waiter(id);
        }
    }
}
