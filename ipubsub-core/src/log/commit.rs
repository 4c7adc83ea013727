//! The group commit: the queue of appends waiting for a worker (bounded in entries and
//! bytes), the workers that write it batch by batch, and how each batch's outcome reaches the
//! streams' watermarks and the senders.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Waker;

use super::wait::{Completion, NextBatch};
use super::{AppendError, Log, forget, lock};
use crate::message::Message;
use crate::store::{Appended, LogRecord, Seq, StoreError};

/// Appends accepted but not yet handed to a worker, in acceptance order.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) pending: VecDeque<Pending>,
    /// The bytes of `pending` ([`queued_bytes`]).
    pub(super) bytes: usize,
    pub(super) idle_workers: Vec<Waker>,
}

/// What a queued record counts against [`LogConfig::max_queued_bytes`].
pub(super) fn queued_bytes(message: &Message) -> usize {
    message.id().as_str().len() + message.payload().len()
}

pub(super) struct Pending {
    pub(super) record: LogRecord,
    /// Its send asked for deduplication: the store must find its id.
    pub(super) findable: bool,
    pub(super) done: Arc<Completion>,
}

/// A batch a worker took from the queue: the records to write and, in the same order, who
/// waits for each and which are findable (empty when none is).
pub(super) struct Batch {
    records: Vec<LogRecord>,
    done: Vec<Arc<Completion>>,
    findable: Vec<bool>,
}

impl Log {
    /// Writes batches until the log is closed and its queue is empty. Run one or more of these
    /// on the runtime: each worker writes one batch at a time.
    pub async fn run_commit_worker(&self) {
        while let Some(batch) = NextBatch::new(self).await {
            let store = &self.inner.store;
            let result = if batch.findable.is_empty() {
                store.append(&batch.records).await
            } else {
                store.append_findable(&batch.records, &batch.findable).await
            };
            self.settle(batch, result);
        }
    }

    /// Takes the next batch from the queue, or registers the worker to be woken. Appends
    /// whose senders have stopped waiting are taken out on the way and never written (see
    /// [`settle_abandoned`](Self::settle_abandoned)).
    pub(super) fn take_batch(&self, waker: &Waker) -> Option<Option<Batch>> {
        let mut abandoned = Vec::new();
        let taken = {
            let mut queue = lock(&self.inner.queue);
            let max = self.inner.config.max_batch.max(1);
            let (mut records, mut done, mut findable) = (Vec::new(), Vec::new(), Vec::new());
            while records.len() < max
                && let Some(pending) = queue.pending.pop_front()
            {
                queue.bytes -= queued_bytes(&pending.record.message);
                // The queue holds the only reference: the append future was dropped.
                if Arc::strong_count(&pending.done) == 1 {
                    abandoned.push(pending.record);
                } else {
                    if pending.findable && findable.is_empty() {
                        findable.resize(records.len(), false);
                    }
                    if pending.findable || !findable.is_empty() {
                        findable.push(pending.findable);
                    }
                    records.push(pending.record);
                    done.push(pending.done);
                }
            }
            if records.is_empty() && queue.pending.is_empty() {
                if self.inner.closed.load(Ordering::SeqCst) {
                    Some(None)
                } else {
                    queue.idle_workers.push(waker.clone());
                    None
                }
            } else {
                // More left: let another idle worker start on it now.
                if !queue.pending.is_empty()
                    && let Some(worker) = queue.idle_workers.pop()
                {
                    worker.wake();
                }
                Some(Some(Batch {
                    records,
                    done,
                    findable,
                }))
            }
        };
        self.settle_abandoned(abandoned);
        taken
    }

    /// Settles the positions of appends taken out of the queue unwritten, their senders gone
    /// (a request that timed out was answered "may or may not be stored": it is not). Nothing
    /// was written at those positions and nothing ever will be, so the watermark may pass
    /// them like written ones; the stream needs no new acquisition.
    fn settle_abandoned(&self, abandoned: Vec<LogRecord>) {
        if abandoned.is_empty() {
            return;
        }
        self.inner.counters.abandoned(abandoned.len());
        for record in abandoned {
            let mut shard = lock(self.inner.shard(&record.stream));
            if let Some(log) = shard.get_mut(&record.stream)
                && log.epoch() == Some(record.seq.epoch())
            {
                // Never written: a retry of its id is no duplicate.
                log.withdraw(record.message.id(), record.seq);
                log.settle(record.seq);
            }
        }
    }

    /// Records a batch's outcome: advances watermarks, wakes tail readers, answers senders.
    /// A stream whose records were refused or whose write failed is forgotten: its next use
    /// acquires it again, which also settles whether a failed (ambiguous) write landed, so
    /// that no reader is shown a later position while an earlier one might still appear.
    fn settle(&self, batch: Batch, result: Result<Appended, StoreError>) {
        let ok = result.is_ok();
        let result = result.map_err(Arc::new);
        let answers: Vec<Result<Seq, AppendError>> = batch
            .records
            .iter()
            .map(|record| match &result {
                Ok(appended) if appended.is_fenced(&record.stream) => Err(AppendError::Fenced),
                Ok(_) => Ok(record.seq),
                Err(e) => Err(AppendError::Store(e.clone())),
            })
            .collect();
        let fenced = answers
            .iter()
            .filter(|a| matches!(a, Err(AppendError::Fenced)))
            .count();
        self.inner.counters.commit(answers.len(), fenced, ok);
        for ((record, done), written) in batch.records.iter().zip(batch.done).zip(answers) {
            {
                let mut shard = lock(self.inner.shard(&record.stream));
                if let Some(log) = shard.get_mut(&record.stream)
                    && log.epoch() == Some(record.seq.epoch())
                {
                    if written.is_ok() {
                        log.settle(record.seq);
                    } else {
                        forget(&mut shard, &record.stream);
                    }
                }
            }
            done.complete(written);
        }
    }
}
