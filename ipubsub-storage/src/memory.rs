//! [`MemoryStore`]: the reference [`MessageStore`], held in process memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use ipubsub_core::{
    Appended, Epoch, FoundId, LogRecord, MessageId, MessageStore, Seq, StoreError, StreamId,
    Tenure, Timestamp,
};

/// A [`MessageStore`] in process memory: each stream a `BTreeMap` by position and its epoch,
/// plus an index by expiry so that a purge never scans live data. One lock makes every call
/// atomic, the fence check included. Nothing survives the process; use it for
/// tests, and as the model the other backends are checked against.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    streams: HashMap<StreamId, BTreeMap<Seq, LogRecord>>,
    /// Each acquired stream's current epoch; kept when its records are purged.
    epochs: HashMap<StreamId, Epoch>,
    by_expiry: BTreeSet<(Timestamp, StreamId, Seq)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section below leaves the maps consistent before anything can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn last_seq(&self, stream: &StreamId) -> Seq {
        self.streams
            .get(stream)
            .and_then(|log| log.last_key_value())
            .map_or(Seq::ZERO, |(seq, _)| *seq)
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
        let mut inner = self.lock();
        let last = inner.last_seq(stream);
        let current = inner.epochs.get(stream).copied().unwrap_or_default();
        let epoch = Epoch::after(current, last).ok_or_else(|| StoreError::EpochsExhausted {
            stream: stream.clone(),
        })?;
        inner.epochs.insert(stream.clone(), epoch);
        Ok(Tenure { epoch, last })
    }

    async fn append(&self, batch: &[LogRecord]) -> Result<Appended, StoreError> {
        let mut inner = self.lock();
        let mut fenced = Vec::new();
        for record in batch {
            if inner.epochs.get(&record.stream) != Some(&record.seq.epoch())
                && !fenced.contains(&record.stream)
            {
                fenced.push(record.stream.clone());
            }
        }
        let batch = || batch.iter().filter(|r| !fenced.contains(&r.stream));
        // Check the whole batch first: a conflict anywhere writes nothing.
        for record in batch() {
            let existing = inner
                .streams
                .get(&record.stream)
                .and_then(|log| log.get(&record.seq));
            if existing.is_some_and(|e| e != record) {
                return Err(StoreError::Conflict {
                    stream: record.stream.clone(),
                    seq: record.seq,
                });
            }
        }
        for record in batch() {
            inner
                .by_expiry
                .insert((record.expires_at, record.stream.clone(), record.seq));
            inner
                .streams
                .entry(record.stream.clone())
                .or_default()
                .insert(record.seq, record.clone());
        }
        Ok(Appended::fenced(fenced))
    }

    async fn read_after(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let inner = self.lock();
        let Some(log) = inner.streams.get(stream) else {
            return Ok(Vec::new());
        };
        Ok(log
            .range(after.next()..)
            .map(|(_, record)| record)
            .filter(|record| !record.is_expired(now))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn last_seq(&self, stream: &StreamId) -> Result<Seq, StoreError> {
        Ok(self.lock().last_seq(stream))
    }

    async fn find_message(
        &self,
        stream: &StreamId,
        id: &MessageId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Seq>, StoreError> {
        let inner = self.lock();
        let Some(log) = inner.streams.get(stream) else {
            return Ok(None);
        };
        // The reference: a scan from the end. The real stores answer from an index.
        Ok(log
            .values()
            .rev()
            .find(|r| r.message.id() == id && r.message.timestamp() >= since && !r.is_expired(now))
            .map(|r| r.seq))
    }

    async fn list_findable(
        &self,
        stream: &StreamId,
        since: Timestamp,
        now: Timestamp,
        limit: usize,
    ) -> Result<Option<Vec<FoundId>>, StoreError> {
        let inner = self.lock();
        let Some(log) = inner.streams.get(stream) else {
            return Ok(Some(Vec::new()));
        };
        // Like `find_message`, every record counts, findable or not.
        let listed: Vec<_> = log
            .values()
            .filter(|r| r.message.timestamp() >= since && !r.is_expired(now))
            .take(limit.saturating_add(1))
            .map(FoundId::from)
            .collect();
        Ok((listed.len() <= limit).then_some(listed))
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let mut purged = 0;
        while purged < limit {
            let Some(first) = inner.by_expiry.first() else {
                break;
            };
            if first.0 > now {
                break;
            }
            let Some((_, stream, seq)) = inner.by_expiry.pop_first() else {
                break;
            };
            if let Some(log) = inner.streams.get_mut(&stream) {
                log.remove(&seq);
                if log.is_empty() {
                    inner.streams.remove(&stream);
                }
            }
            purged += 1;
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use ipubsub_core::{Message, MessageId, expiry};

    use super::*;

    fn record(stream: &str, seq: u64, accepted: u64, ttl_secs: u64) -> LogRecord {
        let accepted = Timestamp::from_micros(accepted);
        LogRecord {
            stream: StreamId::new(stream).expect("id"),
            seq: Seq::at(Epoch::new(1).expect("epoch"), seq).expect("position"),
            message: Message::new(
                MessageId::new(format!("m{seq}")).expect("id"),
                Bytes::from(format!("{seq}")),
                accepted,
            ),
            expires_at: expiry(accepted, Duration::from_secs(ttl_secs)),
        }
    }

    fn sid(s: &str) -> StreamId {
        StreamId::new(s).expect("id")
    }

    fn counters(records: &[LogRecord]) -> Vec<u64> {
        records.iter().map(|r| r.seq.counter()).collect()
    }

    async fn acquired(names: &[&str]) -> Result<MemoryStore, StoreError> {
        let store = MemoryStore::new();
        for name in names {
            store.acquire(&sid(name)).await?;
        }
        Ok(store)
    }

    #[tokio::test]
    async fn reads_in_order_after_a_position() -> Result<(), StoreError> {
        let store = acquired(&["a", "b"]).await?;
        store
            .append(&[
                record("a", 1, 0, 60),
                record("a", 2, 0, 60),
                record("b", 1, 0, 60),
            ])
            .await?;
        store.append(&[record("a", 3, 0, 60)]).await?;
        let read = store
            .read_after(&sid("a"), record("a", 1, 0, 60).seq, 10, Timestamp::EPOCH)
            .await?;
        assert_eq!(counters(&read), [2, 3]);
        assert_eq!(store.last_seq(&sid("a")).await?, record("a", 3, 0, 60).seq);
        assert_eq!(store.last_seq(&sid("none")).await?, Seq::ZERO);
        Ok(())
    }

    #[tokio::test]
    async fn a_retried_append_is_idempotent_and_a_conflict_writes_nothing() -> Result<(), StoreError>
    {
        let store = acquired(&["a"]).await?;
        store.append(&[record("a", 1, 0, 60)]).await?;
        store.append(&[record("a", 1, 0, 60)]).await?;
        assert_eq!(
            store
                .read_after(&sid("a"), Seq::ZERO, 10, Timestamp::EPOCH)
                .await?
                .len(),
            1
        );

        let mut other = record("a", 1, 0, 60);
        other.message = Message::new(
            MessageId::new("x").expect("id"),
            Bytes::from("9"),
            Timestamp::EPOCH,
        );
        let err = store.append(&[record("a", 2, 0, 60), other]).await;
        assert!(matches!(err, Err(StoreError::Conflict { .. })));
        assert_eq!(
            store.last_seq(&sid("a")).await?,
            record("a", 1, 0, 60).seq,
            "nothing of the batch written"
        );
        Ok(())
    }

    #[tokio::test]
    async fn expired_records_are_hidden_then_purged_in_batches() -> Result<(), StoreError> {
        let store = acquired(&["a"]).await?;
        store
            .append(&[
                record("a", 1, 0, 1),
                record("a", 2, 0, 1),
                record("a", 3, 0, 100),
            ])
            .await?;
        let later = Timestamp::from_micros(1_000_000);
        let read = store.read_after(&sid("a"), Seq::ZERO, 10, later).await?;
        assert_eq!(counters(&read), [3]);
        assert_eq!(store.purge_expired(later, 1).await?, 1);
        assert_eq!(store.purge_expired(later, 10).await?, 1);
        assert_eq!(store.purge_expired(later, 10).await?, 0);
        assert_eq!(store.last_seq(&sid("a")).await?, record("a", 3, 0, 1).seq);
        Ok(())
    }
}

#[cfg(test)]
mod conformance {
    use std::sync::Arc;

    use super::MemoryStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_conformance_suite() {
        let shared = Arc::new(MemoryStore::new());
        crate::testsuite::run(|| {
            let store = shared.clone();
            async move { store }
        })
        .await;
    }
}
