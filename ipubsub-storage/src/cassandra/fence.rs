//! The fence of the Cassandra store: each stream's `epochs` row (its epoch and the seals of
//! earlier epochs), the takeover that moves it, and the check after each write. The
//! [module's documentation](super) says why it works this way.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use ipubsub_core::{Epoch, LogRecord, Seq, StoreError, StreamId, Tenure};

use super::{BUCKET_PAGE, Inner, unavailable};
use crate::convert::{corrupt, to_i64, to_u64};

/// How many times an acquisition starts over after another one overtook it.
const ACQUIRE_ATTEMPTS: usize = 20;

/// A stream's row in `epochs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Fence {
    /// The stream's current epoch.
    pub(super) epoch: Epoch,
    /// The last position that counts of each earlier epoch.
    seals: BTreeMap<Epoch, Seq>,
}

impl Fence {
    /// Whether a stored record at `seq` is in the log: at or below its epoch's seal, or of the
    /// current epoch (whose writer's readers only see what it acknowledged). A record of an
    /// older epoch without a seal belongs to a takeover under way and does not count yet.
    pub(super) fn counts(&self, seq: Seq) -> bool {
        match self.seals.get(&seq.epoch()) {
            Some(&seal) => seq <= seal,
            None => seq.epoch() == self.epoch,
        }
    }

    /// Whether every earlier epoch that may hold records is sealed: the epoch is the first,
    /// or the one before it (which the acquisition that moved the epoch seals, even empty)
    /// has its seal. A fence read between a takeover's move and its seal is not whole: it
    /// cannot tell which of the previous epoch's records count, and filtering with it would
    /// hide acknowledged ones.
    pub(super) fn is_whole(&self) -> bool {
        match u64::from(self.epoch.get()).checked_sub(1) {
            None | Some(0) => true,
            Some(previous) => Epoch::new(previous).is_some_and(|e| self.seals.contains_key(&e)),
        }
    }

    /// What became of the records of one stream (`seqs`, of one epoch) that were written
    /// while this was the fence: `Some(true)` in the log, `Some(false)` fenced off (invisible
    /// for good), `None` unknown (the takeover has not sealed their epoch yet).
    pub(super) fn settled(&self, seqs: &[Seq]) -> Option<bool> {
        let epoch = seqs.first()?.epoch();
        if epoch == self.epoch {
            return Some(true);
        }
        if epoch > self.epoch {
            return Some(false); // an epoch nobody acquired
        }
        let seal = *self.seals.get(&epoch)?;
        let counted = seqs.iter().filter(|&&seq| seq <= seal).count();
        match counted {
            0 => Some(false),
            n if n == seqs.len() => Some(true),
            _ => None,
        }
    }
}

/// Pauses (milliseconds) before each read of a fence that waits for a takeover's seal.
const SEAL_WAITS: [u64; 4] = [0, 5, 20, 50];

/// Entries of `Inner::fences` kept before the map is cleared (it refills on demand).
const FENCE_ENTRIES: usize = 1 << 20;

/// A lightweight transaction's answer: the `[applied]` column.
fn applied(result: scylla::response::query_result::QueryResult) -> Result<bool, StoreError> {
    let rows = result.into_rows_result().map_err(corrupt)?;
    let row = rows
        .rows::<(bool,)>()
        .map_err(corrupt)?
        .next()
        .transpose()
        .map_err(corrupt)?;
    Ok(row.is_some_and(|(applied,)| applied))
}

impl Inner {
    /// Moves `stream` to its next epoch and seals the earlier ones (see [`super`]).
    pub(super) async fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
        let exhausted = || StoreError::EpochsExhausted {
            stream: stream.clone(),
        };
        for _ in 0..ACQUIRE_ATTEMPTS {
            // `floor`: the newest epoch sealed before; nothing at or below it is scanned again.
            let (mut fence, claimed, floor) = match self.read_fence(stream).await? {
                None => {
                    let fence = Fence {
                        epoch: Epoch::after(Epoch::ZERO, Seq::ZERO).ok_or_else(exhausted)?,
                        seals: BTreeMap::new(),
                    };
                    let result = self
                        .session
                        .execute_unpaged(
                            &self.create_epoch,
                            (stream.as_str(), i64::from(fence.epoch.get())),
                        )
                        .await
                        .map_err(unavailable)?;
                    (fence, applied(result)?, None)
                }
                Some(current) => {
                    let epoch = Epoch::after(current.epoch, Seq::ZERO).ok_or_else(exhausted)?;
                    let result = self
                        .session
                        .execute_unpaged(
                            &self.move_epoch,
                            (
                                i64::from(epoch.get()),
                                stream.as_str(),
                                i64::from(current.epoch.get()),
                            ),
                        )
                        .await
                        .map_err(unavailable)?;
                    let previous = current.epoch;
                    let floor = current.seals.keys().copied().max();
                    let mut fence = current;
                    fence.epoch = epoch;
                    // The previous epoch is sealed even if it stored nothing, so that its
                    // writer learns it was fenced off.
                    if previous != Epoch::ZERO && !fence.seals.contains_key(&previous) {
                        fence
                            .seals
                            .insert(previous, Seq::at(previous, 0).unwrap_or(Seq::ZERO));
                    }
                    (fence, applied(result)?, floor)
                }
            };
            if !claimed {
                continue; // another acquisition moved the epoch first
            }
            // From here on no older epoch's write counts unless a seal below covers it.
            let mut added: HashMap<i64, i64> = HashMap::new();
            for top in self.highest_per_epoch(stream, floor).await? {
                if top.epoch() < fence.epoch {
                    fence.seals.insert(top.epoch(), top);
                }
            }
            for (epoch, seal) in &fence.seals {
                added.insert(i64::from(epoch.get()), to_i64(seal.get())?);
            }
            let result = self
                .session
                .execute_unpaged(
                    &self.seal,
                    (added, stream.as_str(), i64::from(fence.epoch.get())),
                )
                .await
                .map_err(unavailable)?;
            if !applied(result)? {
                continue; // overtaken before the seals were written: start over
            }
            self.remember(stream, &fence);
            let last = fence.seals.values().copied().max().unwrap_or(Seq::ZERO);
            self.high.raise(stream, last);
            return Ok(Tenure {
                epoch: fence.epoch,
                last,
            });
        }
        Err(StoreError::Unavailable(
            format!("{ACQUIRE_ATTEMPTS} acquisitions of stream {stream} in a row were overtaken")
                .into(),
        ))
    }

    /// The stream's row in `epochs`, read at `SERIAL` consistency (default if none).
    pub(super) async fn read_fence(&self, stream: &StreamId) -> Result<Option<Fence>, StoreError> {
        type FenceRow = (Option<i64>, Option<BTreeMap<i64, i64>>);
        let row = self
            .session
            .execute_unpaged(&self.read_epoch, (stream.as_str(),))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(corrupt)?
            .maybe_first_row::<FenceRow>()
            .map_err(corrupt)?;
        let Some((epoch, seals)) = row else {
            return Ok(None);
        };
        let epoch_from = |e: i64| {
            Epoch::new(to_u64(e)?).ok_or_else(|| StoreError::Corrupt("epoch out of range".into()))
        };
        let mut fence = Fence {
            epoch: epoch_from(epoch.unwrap_or(0))?,
            seals: BTreeMap::new(),
        };
        for (epoch, seal) in seals.unwrap_or_default() {
            fence
                .seals
                .insert(epoch_from(epoch)?, Seq::new(to_u64(seal)?));
        }
        self.remember(stream, &fence);
        Ok(Some(fence))
    }

    /// Keeps `fence` for later reads if it is whole. A fence caught half-way through a
    /// takeover is not kept, and the one kept before it is dropped (the epoch moved on): the
    /// next read reads the fence again.
    pub(super) fn remember(&self, stream: &StreamId, fence: &Fence) {
        let mut fences = self.fences.lock().unwrap_or_else(PoisonError::into_inner);
        if !fence.is_whole() {
            fences.remove(stream);
            return;
        }
        if fences.len() > FENCE_ENTRIES {
            fences.clear();
        }
        fences.insert(stream.clone(), fence.clone());
    }

    /// The fence this store last saw for `stream` (always whole), if any.
    fn cached(&self, stream: &StreamId) -> Option<Fence> {
        self.fences
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(stream)
            .cloned()
    }

    /// The fence to filter reads with: the one this store last saw, or a fresh whole one.
    pub(super) async fn fence(&self, stream: &StreamId) -> Result<Fence, StoreError> {
        match self.cached(stream) {
            Some(fence) => Ok(fence),
            None => self.whole_fence(stream).await,
        }
    }

    /// The stream's epoch as this store last saw it, or as stored now (`ZERO` if never
    /// acquired): what an append checks its records' epoch against before writing.
    pub(super) async fn epoch(&self, stream: &StreamId) -> Result<Epoch, StoreError> {
        match self.cached(stream) {
            Some(fence) => Ok(fence.epoch),
            None => Ok(self.read_fence(stream).await?.unwrap_or_default().epoch),
        }
    }

    /// A fresh read of the stream's fence that is whole ([`Fence::is_whole`]). A takeover
    /// under way seals within a few round trips, so a fence caught half-way is read again a
    /// few times; one still not whole belongs to an acquisition that stopped half-way (its
    /// node died), and the read fails as unavailable until the next acquisition seals.
    pub(super) async fn whole_fence(&self, stream: &StreamId) -> Result<Fence, StoreError> {
        for pause in SEAL_WAITS {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let fence = self.read_fence(stream).await?.unwrap_or_default();
            if fence.is_whole() {
                return Ok(fence);
            }
        }
        Err(StoreError::Unavailable(
            format!("stream {stream} is being taken over: its previous epoch is not sealed yet")
                .into(),
        ))
    }

    /// The highest stored position of `bucket`, if any.
    pub(super) async fn last_in(
        &self,
        stream: &StreamId,
        bucket: i64,
    ) -> Result<Option<Seq>, StoreError> {
        let last = self
            .session
            .execute_unpaged(&self.select_last, (stream.as_str(), bucket))
            .await
            .map_err(unavailable)?
            .into_rows_result()
            .map_err(corrupt)?
            .maybe_first_row::<(i64,)>()
            .map_err(corrupt)?;
        last.map(|(seq,)| to_u64(seq).map(Seq::new)).transpose()
    }

    /// Walks the stream's buckets from the newest down and calls `visit` with each bucket's
    /// highest stored position until it answers `false`.
    pub(super) async fn walk_down(
        &self,
        stream: &StreamId,
        mut visit: impl FnMut(Seq) -> bool,
    ) -> Result<(), StoreError> {
        let mut below = i64::MAX;
        loop {
            let buckets = self.buckets(&self.buckets_last, stream, below).await?;
            for &bucket in &buckets {
                if let Some(last) = self.last_in(stream, bucket).await?
                    && !visit(last)
                {
                    return Ok(());
                }
            }
            match buckets.last() {
                Some(&last) if buckets.len() == BUCKET_PAGE as usize => below = last,
                _ => return Ok(()),
            }
        }
    }

    /// The highest stored position of each epoch above `floor` that has any, newest first.
    /// Each bucket holds one epoch's positions, so the first bucket of an epoch met walking
    /// down holds its highest position. (Rows a takeover fenced off are not stored where a
    /// later epoch's would be: they all lie below the new epoch's buckets.)
    pub(super) async fn highest_per_epoch(
        &self,
        stream: &StreamId,
        floor: Option<Epoch>,
    ) -> Result<Vec<Seq>, StoreError> {
        let mut found: Vec<Seq> = Vec::new();
        self.walk_down(stream, |last| {
            if floor.is_some_and(|floor| last.epoch() <= floor) {
                return false;
            }
            if found.last().is_none_or(|seen| seen.epoch() != last.epoch()) {
                found.push(last);
            }
            true
        })
        .await?;
        Ok(found)
    }

    /// The highest position stored for the stream, counted or not.
    pub(super) async fn top(&self, stream: &StreamId) -> Result<Seq, StoreError> {
        let mut top = Seq::ZERO;
        self.walk_down(stream, |last| {
            top = last;
            false
        })
        .await?;
        Ok(top)
    }

    /// The highest stored position that counts under `fence`.
    pub(super) async fn last_counted(
        &self,
        stream: &StreamId,
        fence: &Fence,
    ) -> Result<Seq, StoreError> {
        let mut last = fence.seals.values().copied().max().unwrap_or(Seq::ZERO);
        let mut found = None;
        self.walk_down(stream, |top| {
            if top <= last {
                return false;
            }
            if fence.counts(top) {
                found = Some(top);
                return false;
            }
            // A fenced-off epoch's top: this bucket may still hold positions that count.
            true
        })
        .await?;
        if let Some(top) = found {
            last = last.max(top);
        }
        Ok(last)
    }
}

/// After `batch` was written: whether each of its streams' records count, by a `SERIAL` read
/// of the stream's fence. Answers the streams whose records were fenced off; fails when a
/// takeover had not sealed their epoch yet (the outcome is unknown).
pub(super) async fn confirm(
    inner: &Arc<Inner>,
    batch: &[&LogRecord],
) -> Result<Vec<StreamId>, StoreError> {
    let mut fenced = Vec::new();
    // Whether each stream's records count: a SERIAL read of its fence, which sees every
    // takeover that completed before it.
    let mut by_stream: HashMap<&StreamId, Vec<Seq>> = HashMap::new();
    for record in batch {
        by_stream
            .entry(&record.stream)
            .or_default()
            .push(record.seq);
    }
    let mut checks = tokio::task::JoinSet::new();
    for (stream, seqs) in by_stream {
        let (inner, stream) = (inner.clone(), stream.clone());
        checks.spawn(async move {
            // A takeover under way seals within a few round trips: wait for it a little.
            for pause in SEAL_WAITS {
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let fence = inner.read_fence(&stream).await?.unwrap_or_default();
                if let Some(counted) = fence.settled(&seqs) {
                    return Ok::<_, StoreError>((Some(counted), stream, seqs));
                }
            }
            Ok((None, stream, seqs))
        });
    }
    let mut unknown = None;
    while let Some(checked) = checks.join_next().await {
        match checked.map_err(unavailable)?? {
            (Some(true), stream, seqs) => {
                if let Some(&last) = seqs.iter().max() {
                    inner.high.raise(&stream, last);
                }
            }
            (Some(false), stream, _) => fenced.push(stream),
            (None, stream, _) => unknown = Some(stream),
        }
    }
    if let Some(stream) = unknown {
        return Err(StoreError::Unavailable(
            format!("stream {stream} was taken over while its records were written").into(),
        ));
    }
    Ok(fenced)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use ipubsub_core::{LogRecord, Message, MessageId, MessageStore, Seq, StoreError, Timestamp};

    use super::{BTreeMap, Epoch, Fence};
    use crate::{CassandraConfig, CassandraStore};

    fn epoch(n: u64) -> Epoch {
        Epoch::new(n).expect("epoch in range")
    }

    fn sealed(current: u64, seals: &[(u64, u64)]) -> Fence {
        Fence {
            epoch: epoch(current),
            seals: seals
                .iter()
                .map(|&(e, counter)| (epoch(e), Seq::at(epoch(e), counter).expect("position")))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn a_fence_is_whole_once_the_epoch_before_its_own_is_sealed() {
        assert!(Fence::default().is_whole(), "a stream never acquired");
        assert!(sealed(1, &[]).is_whole(), "the first epoch");
        assert!(!sealed(2, &[]).is_whole(), "moved, not sealed yet");
        assert!(sealed(2, &[(1, 7)]).is_whole());
        assert!(
            !sealed(4, &[(1, 7), (2, 3)]).is_whole(),
            "epoch 3 not sealed"
        );
        assert!(sealed(4, &[(1, 7), (3, 0)]).is_whole());
    }

    /// An acquisition that stops between moving the epoch and sealing the one before (its
    /// node died): no store filters reads with that half-way fence, which hides every record
    /// of the previous epoch, acknowledged ones too. Reads fail as unavailable (or show all
    /// that was acknowledged) until the next acquisition seals; then every store shows the
    /// whole log, including the one whose writer saw the half-way fence. (The store kept that
    /// fence and showed none of the records before this test's fix.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_never_filter_with_a_fence_caught_half_way_through_a_takeover() {
        let node = std::env::var("IPUBSUB_TEST_CASSANDRA_NODE")
            .unwrap_or_else(|_| "127.0.0.1:9042".into());
        let mut config = CassandraConfig::new(node);
        config.keyspace = "ipubsub_suite".into();
        let connect = || async {
            CassandraStore::connect(&config)
                .await
                .expect("Cassandra is not reachable: run scripts/services.sh")
        };
        let (writer, other) = (connect().await, connect().await);
        let now = Timestamp::now();
        let stream: ipubsub_core::StreamId =
            format!("half-way-{}-{}", std::process::id(), now.as_micros())
                .parse()
                .expect("stream id");
        let first = writer.acquire(&stream).await.expect("acquire").epoch;
        let record = |counter: u64| LogRecord {
            stream: stream.clone(),
            seq: Seq::at(first, counter).expect("position"),
            message: Message::new(
                MessageId::new(format!("m{counter}")).expect("id"),
                Bytes::from_static(b"{}"),
                now,
            ),
            expires_at: now.saturating_add(Duration::from_secs(3600)),
        };
        let acked = writer
            .append(&[record(1), record(2), record(3)])
            .await
            .expect("append");
        assert!(acked.fenced.is_empty());
        let positions = |records: Vec<LogRecord>| records.iter().map(|r| r.seq).collect::<Vec<_>>();
        let acked: Vec<Seq> = (1..=3).map(|c| record(c).seq).collect();

        // Half an acquisition: the epoch moves, nothing is sealed.
        let inner = &other.inner;
        let moved = inner
            .session
            .execute_unpaged(
                &inner.move_epoch,
                (
                    i64::from(first.get()) + 1,
                    stream.as_str(),
                    i64::from(first.get()),
                ),
            )
            .await
            .expect("move the epoch");
        assert!(super::applied(moved).expect("answer"), "the epoch moved");
        let unknown = writer.append(&[record(4)]).await;
        assert!(
            matches!(unknown, Err(StoreError::Unavailable(_))),
            "an append racing an unsealed takeover has no known outcome: {unknown:?}"
        );
        for (name, store) in [("the writer", &writer), ("another store", &other)] {
            match store.read_after(&stream, Seq::ZERO, 100, now).await {
                Err(StoreError::Unavailable(_)) => {}
                Ok(records) => {
                    let shown = positions(records);
                    assert!(
                        acked.iter().all(|seq| shown.contains(seq)),
                        "{name} hid acknowledged records mid-takeover: shown {shown:?}"
                    );
                }
                Err(e) => panic!("{name}: {e}"),
            }
        }

        // The next acquisition seals both earlier epochs; the fourth record was stored
        // before it looked, so it counts.
        let tenure = other.acquire(&stream).await.expect("acquire again");
        // Its last position is the empty epoch's seal (above every record of the first).
        assert!(tenure.last >= record(4).seq, "{tenure:?}");
        for (name, store) in [("the writer", &writer), ("another store", &other)] {
            let shown = positions(
                store
                    .read_after(&stream, Seq::ZERO, 100, now)
                    .await
                    .expect("read"),
            );
            assert_eq!(
                shown,
                (1..=4).map(|c| record(c).seq).collect::<Vec<_>>(),
                "{name} after the takeover sealed"
            );
            assert_eq!(
                store.last_seq(&stream).await.expect("last"),
                tenure.last,
                "{name}"
            );
        }
    }
}
