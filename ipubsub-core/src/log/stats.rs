//! [`LogStats`]: what the log's group commits did since it started, for metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets of [`LogStats::batch_sizes`]: a commit of `n` records counts in
/// the first bucket whose bound is at least `n`; larger commits count in the last bucket.
pub const BATCH_SIZE_BOUNDS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, u64::MAX];

/// Counts of the log's group commits since it started. A snapshot: the counters run on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogStats {
    /// Records made durable.
    pub appended: u64,
    /// Records whose commit failed (each sender got an error).
    pub failed: u64,
    /// Records the store refused because another node had acquired their stream (not
    /// written, counted in `failed` too).
    pub fenced: u64,
    /// Reads that found a record of another node's later epoch past this node's watermark,
    /// and acquired the stream again (this node had lost it without knowing).
    pub overtaken: u64,
    /// Appends refused because the append queue was full ([`AppendError::QueueFull`]).
    ///
    /// [`AppendError::QueueFull`]: crate::AppendError::QueueFull
    pub queue_full: u64,
    /// Appends whose sender stopped waiting (a request timed out or went away) before a
    /// commit worker took them: removed from the queue, never written.
    pub abandoned: u64,
    /// Streams forgotten to make room for another ([`LogConfig::max_streams`]).
    ///
    /// [`LogConfig::max_streams`]: crate::LogConfig::max_streams
    pub evicted: u64,
    /// Group commits that succeeded.
    pub commits: u64,
    /// Commits (successful or not) by their number of records, bucketed by
    /// [`BATCH_SIZE_BOUNDS`] (not cumulative).
    pub batch_sizes: [u64; BATCH_SIZE_BOUNDS.len()],
    /// Sum of the sizes of the commits counted in `batch_sizes`.
    pub batch_size_sum: u64,
    /// Message ids of deduplicating appends remembered now, over all streams.
    pub remembered_ids: u64,
    /// Deduplicating appends whose id was not remembered for the cap
    /// ([`LogConfig::max_remembered_ids`]); their streams ask the store instead.
    ///
    /// [`LogConfig::max_remembered_ids`]: crate::LogConfig::max_remembered_ids
    pub unremembered_ids: u64,
    /// Deduplicating appends answered as duplicates (nothing written).
    pub duplicates: u64,
    /// Lookups of a message id in the store (`MessageStore::find_message`).
    pub id_lookups: u64,
    /// Listings of a stream's findable records in the store
    /// (`MessageStore::list_findable`), one per stream and acquisition when the store lists.
    pub id_listings: u64,
}

/// The live counters behind [`LogStats`]: a few relaxed atomic adds per commit.
#[derive(Debug, Default)]
pub(super) struct Counters {
    appended: AtomicU64,
    failed: AtomicU64,
    fenced: AtomicU64,
    overtaken: AtomicU64,
    queue_full: AtomicU64,
    abandoned: AtomicU64,
    evicted: AtomicU64,
    commits: AtomicU64,
    batch_sizes: [AtomicU64; BATCH_SIZE_BOUNDS.len()],
    batch_size_sum: AtomicU64,
}

impl Counters {
    /// Counts one commit of `records` records, `fenced` of which the store refused (when
    /// `ok`; a failed commit wrote none).
    pub(super) fn commit(&self, records: usize, fenced: usize, ok: bool) {
        let n = records as u64;
        if ok {
            let fenced = fenced as u64;
            self.appended.fetch_add(n - fenced, Ordering::Relaxed);
            self.failed.fetch_add(fenced, Ordering::Relaxed);
            self.fenced.fetch_add(fenced, Ordering::Relaxed);
            self.commits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(n, Ordering::Relaxed);
        }
        let bucket = BATCH_SIZE_BOUNDS
            .iter()
            .position(|&bound| n <= bound)
            .unwrap_or(BATCH_SIZE_BOUNDS.len() - 1);
        self.batch_sizes[bucket].fetch_add(1, Ordering::Relaxed);
        self.batch_size_sum.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one read that found its stream held in a later epoch elsewhere.
    pub(super) fn overtaken(&self) {
        self.overtaken.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one append refused by a full queue.
    pub(super) fn queue_full(&self) {
        self.queue_full.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` appends removed from the queue, their senders gone.
    pub(super) fn abandoned(&self, n: usize) {
        self.abandoned.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts one stream forgotten to make room.
    pub(super) fn evicted(&self) {
        self.evicted.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> LogStats {
        LogStats {
            appended: self.appended.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            fenced: self.fenced.load(Ordering::Relaxed),
            overtaken: self.overtaken.load(Ordering::Relaxed),
            queue_full: self.queue_full.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            batch_sizes: std::array::from_fn(|i| self.batch_sizes[i].load(Ordering::Relaxed)),
            batch_size_sum: self.batch_size_sum.load(Ordering::Relaxed),
            ..LogStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_land_in_their_bucket() {
        let counters = Counters::default();
        counters.commit(1, 0, true);
        counters.commit(3, 1, true);
        counters.commit(4, 0, false);
        counters.commit(5000, 0, true);
        let stats = counters.snapshot();
        assert_eq!((stats.appended, stats.failed, stats.commits), (5003, 5, 3));
        assert_eq!(stats.fenced, 1);
        assert_eq!(stats.batch_sizes[0], 1, "1 record");
        assert_eq!(stats.batch_sizes[2], 2, "3 and 4 records");
        assert_eq!(stats.batch_sizes[BATCH_SIZE_BOUNDS.len() - 1], 1, "5000");
        assert_eq!(stats.batch_sizes.iter().sum::<u64>(), 4);
        assert_eq!(stats.batch_size_sum, 5008);
    }
}
