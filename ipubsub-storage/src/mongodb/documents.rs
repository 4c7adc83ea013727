//! How a log record is laid out as a `messages` document, and an epoch in `epochs`.

use ipubsub_core::{Epoch, LogRecord, Message, MessageId, Seq, StoreError, StreamId, Timestamp};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, DateTime, Document, doc};

use crate::convert::{corrupt, to_i64, to_u64};

/// The epoch an `epochs` document holds.
pub(super) fn epoch_of(found: &Document) -> Result<Epoch, StoreError> {
    let epoch = to_u64(found.get_i64("epoch").map_err(corrupt)?)?;
    Epoch::new(epoch).ok_or_else(|| StoreError::Corrupt("epoch out of range".into()))
}

/// The TTL index's date: `expires_at` rounded up to the millisecond.
fn expire_at(expires_at: Timestamp) -> DateTime {
    let millis = expires_at.as_micros().div_ceil(1_000);
    DateTime::from_millis(i64::try_from(millis).unwrap_or(i64::MAX))
}

pub(super) fn document(record: &LogRecord) -> Result<Document, StoreError> {
    Ok(doc! {
        "streamId": record.stream.as_str(),
        "seq": to_i64(record.seq.get())?,
        "messageId": record.message.id().as_str(),
        "acceptedAt": to_i64(record.message.timestamp().as_micros())?,
        "expiresAtMicros": to_i64(record.expires_at.as_micros())?,
        "expireAt": expire_at(record.expires_at),
        "payload": Binary { subtype: BinarySubtype::Generic, bytes: record.message.payload().to_vec() },
    })
}

pub(super) fn record(stream: &StreamId, doc: &Document) -> Result<LogRecord, StoreError> {
    let int = |key: &str| doc.get_i64(key).map_err(corrupt).and_then(to_u64);
    let id = doc.get_str("messageId").map_err(corrupt)?;
    let payload = doc.get_binary_generic("payload").map_err(corrupt)?;
    Ok(LogRecord {
        stream: stream.clone(),
        seq: Seq::new(int("seq")?),
        message: Message::new(
            MessageId::new(id).map_err(corrupt)?,
            bytes::Bytes::copy_from_slice(payload),
            Timestamp::from_micros(int("acceptedAt")?),
        ),
        expires_at: Timestamp::from_micros(int("expiresAtMicros")?),
    })
}
