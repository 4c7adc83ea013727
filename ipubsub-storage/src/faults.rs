//! Fault injection: [`FailingStore`] wraps a store and fails chosen calls, to show that a
//! failed write is never acknowledged and that nothing acknowledged is lost.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use ipubsub_core::{
    Appended, FoundId, LogRecord, MessageId, MessageStore, Seq, StoreError, StreamId, Tenure,
    Timestamp,
};

/// A store that fails the appends whose numbers (counting from 1) it was given (and, while
/// [down](Self::set_down), every acquisition too), and passes everything else to the store it
/// wraps.
#[derive(Debug)]
pub struct FailingStore<S> {
    inner: S,
    appends: AtomicUsize,
    fail: Mutex<BTreeSet<usize>>,
}

impl<S: MessageStore> FailingStore<S> {
    /// Wraps `inner`; fails the appends numbered in `fail` (1 is the first append).
    pub fn new(inner: S, fail: impl IntoIterator<Item = usize>) -> Self {
        Self {
            inner,
            appends: AtomicUsize::new(0),
            fail: Mutex::new(fail.into_iter().collect()),
        }
    }

    /// Fails every append from now on (`true`) or none (`false`), like a database that goes
    /// away and comes back.
    pub fn set_down(&self, down: bool) {
        let mut fail = self
            .fail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        fail.clear();
        if down {
            fail.insert(usize::MAX);
        }
    }

    /// Appends attempted so far.
    pub fn appends(&self) -> usize {
        self.appends.load(Ordering::SeqCst)
    }

    /// Counts an append and fails it if it is one of those chosen.
    fn count_append(&self) -> Result<(), StoreError> {
        let n = self.appends.fetch_add(1, Ordering::SeqCst) + 1;
        if self.should_fail(n) {
            return Err(StoreError::Unavailable(
                format!("injected failure of append {n}").into(),
            ));
        }
        Ok(())
    }

    fn should_fail(&self, n: usize) -> bool {
        let fail = self
            .fail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        fail.contains(&n) || fail.contains(&usize::MAX)
    }
}

#[async_trait]
impl<S: MessageStore> MessageStore for FailingStore<S> {
    async fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
        if self.should_fail(usize::MAX) {
            return Err(StoreError::Unavailable(
                "injected: the store is down".into(),
            ));
        }
        self.inner.acquire(stream).await
    }

    async fn append(&self, batch: &[LogRecord]) -> Result<Appended, StoreError> {
        self.count_append()?;
        self.inner.append(batch).await
    }

    async fn append_findable(
        &self,
        batch: &[LogRecord],
        findable: &[bool],
    ) -> Result<Appended, StoreError> {
        self.count_append()?;
        self.inner.append_findable(batch, findable).await
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

    async fn find_message(
        &self,
        stream: &StreamId,
        id: &MessageId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Seq>, StoreError> {
        self.inner.find_message(stream, id, since, now).await
    }

    async fn list_findable(
        &self,
        stream: &StreamId,
        since: Timestamp,
        now: Timestamp,
        limit: usize,
    ) -> Result<Option<Vec<FoundId>>, StoreError> {
        self.inner.list_findable(stream, since, now, limit).await
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        self.inner.purge_expired(now, limit).await
    }

    async fn server_time(&self) -> Result<Option<Timestamp>, StoreError> {
        self.inner.server_time().await
    }
}
