//! [`Bounded`]: a store whose every call answers within a time limit.
//!
//! A database that stops answering without closing its connections (a host that vanished, a
//! partition, a stopped process) leaves a driver call waiting until TCP gives up, which can
//! take a quarter of an hour. The log's commit workers call the store with nothing above them
//! to give up: every worker stuck on such a call holds up every persistent send of the node,
//! also once a standby database has taken over. [`Bounded`] ends each call at its limit
//! with [`StoreError::Unavailable`], which the log already treats as an ambiguous failure:
//! the senders are told their message may or may not be in the log, and the stream is
//! acquired again before its next write, which fences off the abandoned call if it still
//! lands (the [`MessageStore`] contract).

use std::time::Duration;

use async_trait::async_trait;
use ipubsub_core::{
    Appended, FoundId, LogRecord, MessageId, MessageStore, Seq, StoreError, StreamId, Tenure,
    Timestamp,
};

/// Wraps a store so that each call gives up after `limit`.
#[derive(Debug)]
pub struct Bounded<S> {
    inner: S,
    limit: Duration,
}

/// The error of a call that ran out of time.
#[derive(Debug, thiserror::Error)]
#[error("the store did not answer within {0:?}")]
pub struct NoAnswer(Duration);

impl<S: MessageStore> Bounded<S> {
    /// `inner`, each call of which is given at most `limit`.
    pub fn new(inner: S, limit: Duration) -> Self {
        Self { inner, limit }
    }

    async fn within<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.limit, call).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Unavailable(Box::new(NoAnswer(self.limit)))),
        }
    }
}

#[async_trait]
impl<S: MessageStore> MessageStore for Bounded<S> {
    async fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
        self.within(self.inner.acquire(stream)).await
    }

    async fn append(&self, batch: &[LogRecord]) -> Result<Appended, StoreError> {
        self.within(self.inner.append(batch)).await
    }

    async fn read_after(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<LogRecord>, StoreError> {
        self.within(self.inner.read_after(stream, after, limit, now))
            .await
    }

    async fn last_seq(&self, stream: &StreamId) -> Result<Seq, StoreError> {
        self.within(self.inner.last_seq(stream)).await
    }

    async fn append_findable(
        &self,
        batch: &[LogRecord],
        findable: &[bool],
    ) -> Result<Appended, StoreError> {
        self.within(self.inner.append_findable(batch, findable))
            .await
    }

    async fn find_message(
        &self,
        stream: &StreamId,
        id: &MessageId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Seq>, StoreError> {
        self.within(self.inner.find_message(stream, id, since, now))
            .await
    }

    async fn list_findable(
        &self,
        stream: &StreamId,
        since: Timestamp,
        now: Timestamp,
        limit: usize,
    ) -> Result<Option<Vec<FoundId>>, StoreError> {
        self.within(self.inner.list_findable(stream, since, now, limit))
            .await
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        self.within(self.inner.purge_expired(now, limit)).await
    }

    async fn server_time(&self) -> Result<Option<Timestamp>, StoreError> {
        self.within(self.inner.server_time()).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;
    use ipubsub_core::{Epoch, MessageId};

    use super::*;
    use crate::MemoryStore;

    /// A store that, while `hung`, never answers an append.
    #[derive(Debug, Default)]
    struct Hanging {
        inner: MemoryStore,
        hung: AtomicBool,
    }

    #[async_trait]
    impl MessageStore for Hanging {
        async fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
            self.inner.acquire(stream).await
        }
        async fn append(&self, batch: &[LogRecord]) -> Result<Appended, StoreError> {
            if self.hung.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.inner.append(batch).await
        }
        async fn read_after(
            &self,
            stream: &StreamId,
            after: Seq,
            limit: usize,
            now: Timestamp,
        ) -> Result<Vec<LogRecord>, StoreError> {
            self.inner.read_after(stream, after, limit, now).await
        }
        async fn last_seq(&self, stream: &StreamId) -> Result<Seq, StoreError> {
            self.inner.last_seq(stream).await
        }
        async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
            self.inner.purge_expired(now, limit).await
        }
    }

    fn record(stream: &StreamId, epoch: Epoch, n: u64) -> LogRecord {
        LogRecord {
            stream: stream.clone(),
            seq: Seq::at(epoch, n).expect("a position"),
            message: ipubsub_core::Message::new(
                MessageId::new(format!("m{n}")).expect("id"),
                Bytes::from_static(b"1"),
                Timestamp::from_micros(1),
            ),
            expires_at: Timestamp::from_micros(u64::MAX),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_hangs_is_unavailable_at_the_limit_and_the_next_goes_through() {
        let store = Bounded::new(Hanging::default(), Duration::from_secs(3));
        let stream = StreamId::new("s").expect("id");
        let tenure = store.acquire(&stream).await.expect("acquire");
        store.inner.hung.store(true, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        let answer = store.append(&[record(&stream, tenure.epoch, 1)]).await;
        assert!(
            matches!(&answer, Err(StoreError::Unavailable(e)) if e.to_string().contains("3s")),
            "{answer:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        store.inner.hung.store(false, Ordering::SeqCst);
        store
            .append(&[record(&stream, tenure.epoch, 2)])
            .await
            .expect("the store answers again");
    }
}
