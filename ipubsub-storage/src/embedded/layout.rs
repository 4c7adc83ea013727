//! The keys and values of the embedded store's keyspaces, as the [module](super) lays them
//! out: encoding and decoding only, no I/O.

use ipubsub_core::{LogRecord, Message, MessageId, Seq, StoreError, StreamId, Timestamp};

pub(super) fn stream_prefix(stream: &StreamId) -> Vec<u8> {
    let id = stream.as_str().as_bytes();
    let mut key = Vec::with_capacity(2 + id.len() + 8);
    // Stream ids are at most 256 bytes (enforced by StreamId).
    key.extend_from_slice(&(id.len() as u16).to_be_bytes());
    key.extend_from_slice(id);
    key
}

pub(super) fn log_key(stream: &StreamId, seq: Seq) -> Vec<u8> {
    let mut key = stream_prefix(stream);
    key.extend_from_slice(&seq.get().to_be_bytes());
    key
}

/// A 64-bit FNV-1a hash of `bytes`, length-prefixed: fixed across builds, as stored keys
/// need.
pub(super) fn fnv(bytes: &[u8]) -> [u8; 8] {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    // Stream and message ids are at most 256 bytes (enforced by StreamId and MessageId).
    let len = (bytes.len() as u16).to_be_bytes();
    let mut hash = OFFSET;
    for byte in len.iter().chain(bytes) {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(PRIME);
    }
    hash.to_be_bytes()
}

/// The index entry of `id` at `seq` in `stream`, in the `log` keyspace: `len(stream) u16 |
/// stream | 0xff × 8 | hash(id) u64 | seq u64`. Beside the stream's records, so that an
/// append inserts it where it inserts the record (a second keyspace, or keys spread by a
/// hash of the stream, cost a cache miss per skiplist step of every insert: a sixth of the
/// append rate), and after all of them: longer than the stream's last possible record key
/// (`… | 0xff × 8`), so a read of the stream never meets it. Ids whose hashes collide share
/// a prefix, and a lookup tells them apart by the id the log record holds.
pub(super) fn id_key(stream: &StreamId, id: &MessageId, seq: Seq) -> Vec<u8> {
    id_key_of(stream, id.as_str().as_bytes(), seq)
}

/// [`id_key`] of an id as stored.
pub(super) fn id_key_of(stream: &StreamId, id: &[u8], seq: Seq) -> Vec<u8> {
    let mut key = log_key(stream, Seq::new(u64::MAX));
    key.extend_from_slice(&fnv(id));
    key.extend_from_slice(&seq.get().to_be_bytes());
    key
}

/// What a findable record's stored value says of it, borrowed from the value.
pub(super) struct Findable<'v> {
    pub(super) seq: Seq,
    pub(super) id: &'v [u8],
    pub(super) accepted: Timestamp,
    pub(super) expires_at: Timestamp,
}

impl<'v> Findable<'v> {
    /// The record at `seq` whose value is `value`, if it is findable.
    pub(super) fn of(seq: Seq, value: &'v [u8]) -> Result<Option<Self>, StoreError> {
        let (len, findable) = id_len(value)?;
        if !findable {
            return Ok(None);
        }
        Ok(Some(Self {
            seq,
            id: value
                .get(18..18 + len)
                .ok_or_else(|| corrupt("truncated id"))?,
            accepted: Timestamp::from_micros(u64_at(value, 8)?),
            expires_at: Timestamp::from_micros(u64_at(value, 0)?),
        }))
    }
}

/// The top bit of a value's `len(id)`: the record is findable.
pub(super) const FINDABLE: u16 = 1 << 15;

/// A stored value's id length and whether the record is findable.
pub(super) fn id_len(value: &[u8]) -> Result<(usize, bool), StoreError> {
    let field = value
        .get(16..18)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| corrupt("truncated record"))?;
    Ok((usize::from(field & !FINDABLE), field & FINDABLE != 0))
}

pub(super) fn encode_value(record: &LogRecord, findable: bool) -> Vec<u8> {
    let id = record.message.id().as_str().as_bytes();
    let payload = record.message.payload();
    let mut value = Vec::with_capacity(18 + id.len() + payload.len());
    value.extend_from_slice(&record.expires_at.as_micros().to_be_bytes());
    value.extend_from_slice(&record.message.timestamp().as_micros().to_be_bytes());
    // Message ids are at most 256 bytes (enforced by MessageId): the top bit is free.
    let flag = if findable { FINDABLE } else { 0 };
    value.extend_from_slice(&(id.len() as u16 | flag).to_be_bytes());
    value.extend_from_slice(id);
    value.extend_from_slice(payload);
    value
}

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned().into())
}

pub(super) fn u64_at(bytes: &[u8], at: usize) -> Result<u64, StoreError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("truncated record"))
}

pub(super) fn decode(stream: &StreamId, key: &[u8], value: &[u8]) -> Result<LogRecord, StoreError> {
    let seq = u64_at(
        key,
        key.len()
            .checked_sub(8)
            .ok_or_else(|| corrupt("short key"))?,
    )?;
    let expires_at = Timestamp::from_micros(u64_at(value, 0)?);
    let timestamp = Timestamp::from_micros(u64_at(value, 8)?);
    let (id_len, _) = id_len(value)?;
    let id = value
        .get(18..18 + id_len)
        .ok_or_else(|| corrupt("truncated id"))?;
    let id = std::str::from_utf8(id).map_err(|e| StoreError::Corrupt(Box::new(e)))?;
    let id = MessageId::new(id).map_err(|e| StoreError::Corrupt(Box::new(e)))?;
    let payload = bytes::Bytes::copy_from_slice(&value[18 + id_len..]);
    Ok(LogRecord {
        stream: stream.clone(),
        seq: Seq::new(seq),
        message: Message::new(id, payload, timestamp),
        expires_at,
    })
}

/// The expiry index entries of one append: records grouped by the second they expire in.
#[derive(Default)]
pub(super) struct ExpiryEntries {
    /// `(key, value)` per second; a batch rarely spans more than two.
    pub(super) entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl ExpiryEntries {
    pub(super) fn add(&mut self, expires_at: Timestamp, log_key: &[u8], id_key: Option<&[u8]>) {
        const SECOND: u64 = 1_000_000;
        let micros = expires_at.as_micros();
        // The end of the second it expires in: every record of the entry has expired by then.
        let bucket = micros.div_ceil(SECOND).saturating_mul(SECOND).to_be_bytes();
        let at = match self.entries.iter().position(|(k, _)| k[..8] == bucket) {
            Some(at) => at,
            None => {
                let mut key = Vec::with_capacity(8 + log_key.len());
                key.extend_from_slice(&bucket);
                key.extend_from_slice(log_key);
                self.entries.push((key, Vec::new()));
                self.entries.len() - 1
            }
        };
        push_listed(&mut self.entries[at].1, log_key, id_key);
    }
}

/// The top bit of a listed key's length: an index entry's key follows, purged with it.
pub(super) const WITH_ID: u16 = 1 << 15;

/// Lists a record's log key, and its index entry's key if it has one, in an expiry entry's
/// value.
pub(super) fn push_listed(value: &mut Vec<u8>, log_key: &[u8], id_key: Option<&[u8]>) {
    // Keys are at most 2 + 256 + 8 + 8 + 8 bytes (stream ids are bounded): the top bit of
    // the length is free.
    let flag = if id_key.is_some() { WITH_ID } else { 0 };
    value.extend_from_slice(&(log_key.len() as u16 | flag).to_be_bytes());
    value.extend_from_slice(log_key);
    if let Some(id_key) = id_key {
        value.extend_from_slice(&(id_key.len() as u16).to_be_bytes());
        value.extend_from_slice(id_key);
    }
}

/// A record listed in an expiry entry: its log key and, if it has one, its index entry's.
pub(super) type Listed<'a> = (&'a [u8], Option<&'a [u8]>);

/// The records listed in an expiry entry's value.
pub(super) fn listed(mut value: &[u8]) -> Result<Vec<Listed<'_>>, StoreError> {
    fn next<'v>(value: &mut &'v [u8]) -> Result<(u16, &'v [u8]), StoreError> {
        let truncated = || corrupt("truncated expiry entry");
        let field = value
            .get(..2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(truncated)?;
        let len = usize::from(field & !WITH_ID);
        let key = value.get(2..2 + len).ok_or_else(truncated)?;
        *value = &value[2 + len..];
        Ok((field, key))
    }
    let mut records = Vec::new();
    while !value.is_empty() {
        let (field, log_key) = next(&mut value)?;
        let id_key = if field & WITH_ID != 0 {
            Some(next(&mut value)?.1)
        } else {
            None
        };
        records.push((log_key, id_key));
    }
    Ok(records)
}
