//! Idempotent appends ([`Log::append_once`], and [`Log::append_all`] whose items may ask
//! for it): whether a message is a duplicate within its window, asked of what this node
//! remembers ([`super::dedupe`]) and, when that cannot tell, of the store; then queued like
//! any append.

use std::sync::Arc;
use std::time::Duration;

use super::wait::{Completion, Tail};
use super::{APPEND_ATTEMPTS, AppendError, Log, load_failed, lock};
use crate::id::StreamId;
use crate::message::Message;
use crate::store::{Epoch, Seq};

/// What an append wrote, or found written already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The message's position: where it was written, or (a duplicate) where the earlier
    /// message of its id is.
    pub seq: Seq,
    /// True if nothing was written, the id being in the log already ([`Log::append_once`]).
    pub duplicate: bool,
}

/// One append of [`Log::append_all`].
#[derive(Debug, Clone)]
pub struct Append {
    /// The stream whose log takes it.
    pub stream: StreamId,
    /// The message, stamped with its acceptance time.
    pub message: Message,
    /// How long after its acceptance it expires.
    pub ttl: Duration,
    /// Its dedupe window ([`Log::append_once`]); zero: none.
    pub dedupe_window: Duration,
}

/// How one attempt to queue an append ended.
pub(super) enum Step {
    /// Queued at a new position.
    Queued,
    /// The stream's entry is gone, loading, or its epoch used up: load it again.
    Reload,
    /// A duplicate of the record at this position (settled, or found in the store).
    Duplicate(Seq),
    /// A duplicate of this node's append at this position, not settled yet: wait for it
    /// to settle, then look again (it may have failed).
    Pending(Seq),
    /// The window reaches back to earlier owners' records: list them, under this epoch.
    List(Epoch),
    /// Only the store can tell whether it holds the id: ask it, under this epoch.
    AskStore(Epoch),
}

/// A deduplicating append: its window, whether it had the store list the stream, and what
/// the store said of its id, under which epoch.
pub(super) struct Once {
    pub(super) window: Duration,
    pub(super) listed: bool,
    pub(super) asked: Option<(Epoch, Option<Seq>)>,
}

impl Log {
    /// Appends `message` as [`append`](Self::append) does, unless `stream` holds a message
    /// of the same id accepted within the last `window` and not expired: then nothing is
    /// written, and the answer is that message's position, marked a duplicate. A zero
    /// `window` is a plain append.
    ///
    /// This holds across nodes and restarts: the ids this node wrote since it acquired the
    /// stream it remembers (up to [`LogConfig::max_remembered_ids`](super::LogConfig::max_remembered_ids)); for the others, while
    /// the window reaches back past the acquisition, it has the store list the window's
    /// records once ([`MessageStore::list_findable`](crate::MessageStore::list_findable)) and remembers them too, or, if
    /// the store does not list, asks for each id ([`MessageStore::find_message`](crate::MessageStore::find_message)). Two
    /// appends of one id racing on this node write one record: the second waits for the
    /// first's outcome (and is written if the first fails).
    pub async fn append_once(
        &self,
        stream: StreamId,
        message: Message,
        ttl: Duration,
        window: Duration,
    ) -> Result<Written, AppendError> {
        let done = Arc::new(Completion::default());
        match self
            .enqueue_once(&stream, message, ttl, window, &done)
            .await?
        {
            Some(seq) => Ok(Written {
                seq,
                duplicate: true,
            }),
            None => done.wait().await.map(|seq| Written {
                seq,
                duplicate: false,
            }),
        }
    }

    /// Appends every one of `appends` as [`append_once`](Self::append_once) does each, and
    /// answers each in their order. They are queued together, in their order, before any is
    /// awaited: those of one stream take positions in that order, and the commit workers
    /// write them in as few store calls as their batch size allows. (A deduplicating append
    /// may wait for the store, or for an earlier append of its id, before it is queued.)
    pub async fn append_all(
        &self,
        appends: impl IntoIterator<Item = Append>,
    ) -> Vec<Result<Written, AppendError>> {
        let mut queued = Vec::new();
        for append in appends {
            let done = Arc::new(Completion::default());
            let outcome = self
                .enqueue_once(
                    &append.stream,
                    append.message,
                    append.ttl,
                    append.dedupe_window,
                    &done,
                )
                .await;
            queued.push(outcome.map(|found| (found, done)));
        }
        let mut answers = Vec::with_capacity(queued.len());
        for queued in queued {
            answers.push(match queued {
                Ok((Some(seq), _)) => Ok(Written {
                    seq,
                    duplicate: true,
                }),
                Ok((None, done)) => done.wait().await.map(|seq| Written {
                    seq,
                    duplicate: false,
                }),
                Err(e) => Err(e),
            });
        }
        answers
    }

    /// Queues `message` for `stream` as [`enqueue`](Self::enqueue) does, unless its id is a
    /// duplicate within `window` (zero: never): then `Ok(Some(position))` of the original.
    async fn enqueue_once(
        &self,
        stream: &StreamId,
        message: Message,
        ttl: Duration,
        window: Duration,
        done: &Arc<Completion>,
    ) -> Result<Option<Seq>, AppendError> {
        if window.is_zero() {
            return self
                .enqueue(stream, message, ttl, done)
                .await
                .map(|()| None);
        }
        let mut message = Some(message);
        let mut once = Once {
            window,
            listed: false,
            asked: None,
        };
        // As in `enqueue`; a lookup that another acquisition made stale counts as a round.
        let mut rounds = 0;
        while rounds < APPEND_ATTEMPTS {
            self.ensure_loaded(stream).await.map_err(load_failed)?;
            match self.queue(stream, &mut message, ttl, done, Some(&once))? {
                Step::Queued => return Ok(None),
                Step::Duplicate(seq) => {
                    self.inner.ids.duplicate();
                    return Ok(Some(seq));
                }
                Step::Pending(seq) => {
                    // Settled (written or not), or the stream forgotten: look again.
                    Tail::settled(self, stream.clone(), seq).await;
                }
                Step::List(epoch) => {
                    once.listed = true;
                    self.inner.ids.listing();
                    let now = self.inner.clock.now();
                    let since = now.saturating_sub(window);
                    let room = self.inner.ids.room();
                    let listed = self
                        .inner
                        .store
                        .list_findable(stream, since, now, room)
                        .await
                        .map_err(|e| AppendError::Store(Arc::new(e)))?;
                    let mut shard = lock(self.inner.shard(stream));
                    if let Some(log) = shard.get_mut(stream) {
                        log.learn(epoch, since, listed, window, &self.inner.ids);
                    }
                }
                Step::AskStore(epoch) => {
                    if once.asked.is_some() {
                        rounds += 1;
                    }
                    let Some(id) = message.as_ref().map(|m| m.id().clone()) else {
                        return Err(AppendError::ShuttingDown);
                    };
                    self.inner.ids.lookup();
                    let now = self.inner.clock.now();
                    let found = self
                        .inner
                        .store
                        .find_message(stream, &id, now.saturating_sub(window), now)
                        .await
                        .map_err(|e| AppendError::Store(Arc::new(e)))?;
                    once.asked = Some((epoch, found));
                }
                Step::Reload => rounds += 1,
            }
        }
        Err(AppendError::Fenced)
    }
}
