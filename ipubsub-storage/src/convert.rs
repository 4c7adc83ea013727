//! Conversions the database backends share: positions and times go to databases as signed
//! 64-bit integers (`BIGINT`, CQL `bigint`, BSON `long`). They are microseconds since the
//! epoch, far below `i64::MAX`; a value that does not fit cannot have come from a node, so it
//! is corrupt data either way.

use ipubsub_core::StoreError;

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
