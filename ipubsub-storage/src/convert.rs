//! Conversions the database backends share: positions and times go to databases as signed
//! 64-bit integers (`BIGINT`, CQL `bigint`, BSON `long`). They are microseconds since the
//! epoch, far below `i64::MAX`; a value that does not fit cannot have come from a node, so it
//! is corrupt data either way. Also what their fences share: the streams of a batch, and what
//! an append wrote once the streams that passed the fence are known.

#[cfg(any(feature = "mysql", feature = "mongodb"))]
use std::collections::HashSet;

use ipubsub_core::StoreError;
#[cfg(any(feature = "mysql", feature = "mongodb"))]
use ipubsub_core::{Appended, Epoch, LogRecord, StreamId};

/// A decoding failure as a store error.
pub(crate) fn corrupt(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Corrupt(Box::new(e))
}

/// A position or time, for the database.
pub(crate) fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(corrupt)
}

/// A position or time, from the database.
pub(crate) fn to_u64(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(corrupt)
}

/// The streams of `batch`, each once, in order of first appearance.
#[cfg(any(feature = "mysql", feature = "mongodb"))]
pub(crate) fn streams_of(batch: &[LogRecord]) -> Vec<&StreamId> {
    let mut seen = HashSet::with_capacity(batch.len());
    batch
        .iter()
        .map(|r| &r.stream)
        .filter(|s| seen.insert(*s))
        .collect()
}

/// The `(stream id, epoch)` pairs of `batch`: a fence row passes when it holds one of them.
#[cfg(any(feature = "mysql", feature = "mongodb"))]
pub(crate) fn wanted_epochs(batch: &[LogRecord]) -> HashSet<(&[u8], Epoch)> {
    batch
        .iter()
        .map(|r| (r.stream.as_str().as_bytes(), r.seq.epoch()))
        .collect()
}

/// What an append wrote, from the ids of the streams of `batch` that passed the fence: the
/// others are fenced.
#[cfg(any(feature = "mysql", feature = "mongodb"))]
pub(crate) fn appended<P: AsRef<[u8]>>(batch: &[LogRecord], passed: &[P]) -> Appended {
    let passed: HashSet<&[u8]> = passed.iter().map(AsRef::as_ref).collect();
    let fenced = streams_of(batch)
        .into_iter()
        .filter(|s| !passed.contains(s.as_str().as_bytes()))
        .cloned()
        .collect();
    Appended::fenced(fenced)
}
