//! [`Message`]: what a sender posted, kept as the bytes it sent.

use bytes::Bytes;

use crate::id::MessageId;
use crate::time::Timestamp;

/// One message: the sender's id, its payload and the time the node accepted it.
///
/// The payload is opaque to the core. The HTTP adapter stores the exact JSON bytes the sender
/// posted (validated once on the way in) and writes them back verbatim, so a number such as
/// `12345678901234567890` or `1.5e3` comes back byte for byte. Whoever shares an engine with the
/// HTTP adapter must therefore put only valid JSON in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    id: MessageId,
    payload: Bytes,
    timestamp: Timestamp,
}

impl Message {
    /// A message with the given id, payload and acceptance time.
    pub fn new(id: MessageId, payload: Bytes, timestamp: Timestamp) -> Self {
        Self {
            id,
            payload,
            timestamp,
        }
    }

    /// The sender's id for the message (`messageUuid`).
    pub fn id(&self) -> &MessageId {
        &self.id
    }

    /// The payload bytes, as posted.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// When the node accepted the message.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// Splits the message into its parts.
    pub fn into_parts(self) -> (MessageId, Bytes, Timestamp) {
        (self.id, self.payload, self.timestamp)
    }
}
