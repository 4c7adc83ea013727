//! Validated identifiers: [`StreamId`] and [`MessageId`].

use std::fmt;
use std::str::FromStr;

/// The longest stream id or message id accepted, in bytes (DESIGN §2). A deployment may set a
/// lower limit for stream ids in its configuration; it can never set a higher one.
pub const MAX_ID_LEN: usize = 256;

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The id was the empty string.
    #[error("must not be empty")]
    Empty,
    /// The id was longer than allowed.
    #[error("is {len} bytes long, the limit is {max}")]
    TooLong {
        /// The length that was given.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The id contained a control character (U+0000–U+001F, U+007F–U+009F).
    #[error("must not contain control characters")]
    ControlCharacter,
}

fn check(value: &str, max: usize, allow_control: bool) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            len: value.len(),
            max,
        });
    }
    if !allow_control && value.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter);
    }
    Ok(())
}

/// The name of a stream: 1 to 256 bytes of UTF-8 without control characters.
///
/// Streams are created on first use, so a stream id is all a client needs to publish or
/// subscribe. Cloning is cheap enough for the hot path (one small allocation); the id is kept
/// as a boxed `str` so that an idle stream's key costs 16 bytes plus its text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(Box<str>);

impl StreamId {
    /// Validates `value` against the protocol's limit of [`MAX_ID_LEN`] bytes.
    pub fn new(value: impl Into<String> + AsRef<str>) -> Result<Self, IdError> {
        Self::with_max_len(value, MAX_ID_LEN)
    }

    /// Validates `value` against a deployment's own, lower limit (`max` is capped at
    /// [`MAX_ID_LEN`]).
    pub fn with_max_len(
        value: impl Into<String> + AsRef<str>,
        max: usize,
    ) -> Result<Self, IdError> {
        check(value.as_ref(), max.min(MAX_ID_LEN), false)?;
        Ok(Self(value.into().into_boxed_str()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for StreamId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The sender's id for one message (`messageUuid` on the wire): any non-empty string of at
/// most 256 bytes, a UUID or not. ipubsub stores and returns it, and deduplicates on it only
/// for sends with a dedupe window.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MessageId(Box<str>);

impl MessageId {
    /// Validates `value`: non-empty, at most [`MAX_ID_LEN`] bytes. Control characters are
    /// allowed, as they are in any JSON string.
    pub fn new(value: impl Into<String> + AsRef<str>) -> Result<Self, IdError> {
        check(value.as_ref(), MAX_ID_LEN, true)?;
        Ok(Self(value.into().into_boxed_str()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MessageId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_accepts_up_to_256_bytes() {
        assert!(StreamId::new("a".repeat(256)).is_ok());
        assert_eq!(
            StreamId::new("a".repeat(257)),
            Err(IdError::TooLong { len: 257, max: 256 })
        );
    }

    #[test]
    fn stream_id_refuses_empty_and_control_characters() {
        assert_eq!(StreamId::new(""), Err(IdError::Empty));
        assert_eq!(StreamId::new("a\nb"), Err(IdError::ControlCharacter));
        assert_eq!(StreamId::new("a\u{7f}"), Err(IdError::ControlCharacter));
        assert!(StreamId::new("chat:room/1 ü").is_ok());
    }

    #[test]
    fn deployment_limit_is_capped_at_protocol_limit() {
        assert!(StreamId::with_max_len("abcd", 3).is_err());
        assert!(StreamId::with_max_len("a".repeat(257), 10_000).is_err());
    }

    #[test]
    fn message_id_is_any_non_empty_string() {
        assert!(MessageId::new("msg-123").is_ok());
        assert!(MessageId::new("tab\there").is_ok());
        assert_eq!(MessageId::new(""), Err(IdError::Empty));
    }
}
