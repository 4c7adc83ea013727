//! Resume tokens: opaque, versioned, URL-safe positions in one stream's log.
//!
//! A token is 17 bytes — a version byte, the position, and a fingerprint of the stream id — in
//! unpadded base64url (23 characters). The fingerprint binds a token to its stream: handing one
//! stream's token to another is an error, not a silent jump. It uses FNV-1a, a hash that is the
//! same on every machine and version, so tokens survive restarts and upgrades.

use std::fmt;

use crate::id::StreamId;
use crate::store::Seq;

const VERSION: u8 = 1;
const LEN: usize = 17;
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Why a resume token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token: wrong length or characters.
    #[error("dbResumeToken is malformed")]
    Malformed,
    /// A token of a format this version does not know.
    #[error("dbResumeToken has an unknown version {0}")]
    UnknownVersion(u8),
    /// A token of another stream.
    #[error("dbResumeToken belongs to another stream")]
    OtherStream,
}

/// A position in a stream's log, as handed to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeToken {
    seq: Seq,
    fingerprint: u64,
}

impl ResumeToken {
    /// The token of position `seq` in `stream`.
    pub fn new(stream: &StreamId, seq: Seq) -> Self {
        Self {
            seq,
            fingerprint: fingerprint(stream),
        }
    }

    /// The position it stands for.
    pub fn seq(self) -> Seq {
        self.seq
    }

    /// Decodes `text` and checks that it belongs to `stream`.
    pub fn decode(text: &str, stream: &StreamId) -> Result<Self, TokenError> {
        let bytes = decode_base64url(text).ok_or(TokenError::Malformed)?;
        let bytes: [u8; LEN] = bytes.try_into().map_err(|_| TokenError::Malformed)?;
        if bytes[0] != VERSION {
            return Err(TokenError::UnknownVersion(bytes[0]));
        }
        let mut seq = [0; 8];
        seq.copy_from_slice(&bytes[1..9]);
        let mut fp = [0; 8];
        fp.copy_from_slice(&bytes[9..17]);
        let token = Self {
            seq: Seq::new(u64::from_be_bytes(seq)),
            fingerprint: u64::from_be_bytes(fp),
        };
        if token.fingerprint != fingerprint(stream) {
            return Err(TokenError::OtherStream);
        }
        Ok(token)
    }
}

impl fmt::Display for ResumeToken {
    /// The token's text: 23 characters of `[A-Za-z0-9_-]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = [0u8; LEN];
        bytes[0] = VERSION;
        bytes[1..9].copy_from_slice(&self.seq.get().to_be_bytes());
        bytes[9..17].copy_from_slice(&self.fingerprint.to_be_bytes());
        f.write_str(&encode_base64url(&bytes))
    }
}

/// FNV-1a, 64 bits, of the stream id's bytes.
fn fingerprint(stream: &StreamId) -> u64 {
    stream.as_str().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn encode_base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            n |= v << (18 - 6 * i);
        }
        let bytes = chunk.len() - 1;
        // Reject non-canonical text: the bits below the last byte must be zero.
        if n & ((1 << (24 - 8 * bytes)) - 1) != 0 {
            return None;
        }
        for i in 0..bytes {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn sid(s: &str) -> StreamId {
        StreamId::new(s).expect("id")
    }

    #[test]
    fn round_trips_and_is_url_safe() -> Result<(), TokenError> {
        for seq in [0, 1, 255, 1 << 40, u64::MAX] {
            let token = ResumeToken::new(&sid("orders"), Seq::new(seq));
            let text = token.to_string();
            assert_eq!(text.len(), 23);
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(
                ResumeToken::decode(&text, &sid("orders"))?.seq(),
                Seq::new(seq)
            );
        }
        Ok(())
    }

    #[test]
    fn is_bound_to_its_stream() {
        let text = ResumeToken::new(&sid("a"), Seq::new(5)).to_string();
        assert_eq!(
            ResumeToken::decode(&text, &sid("b")),
            Err(TokenError::OtherStream)
        );
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "abc",
            "!!!!!!!!!!!!!!!!!!!!!!!",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "A",
        ] {
            assert!(ResumeToken::decode(bad, &sid("a")).is_err(), "{bad}");
        }
        let mut text = ResumeToken::new(&sid("a"), Seq::new(5)).to_string();
        text.replace_range(0..2, "Ag"); // version 2
        assert!(matches!(
            ResumeToken::decode(&text, &sid("a")),
            Err(TokenError::UnknownVersion(_))
        ));
        // The same bytes with stray low bits in the last character.
        let canonical = ResumeToken::new(&sid("orders"), Seq::new(1)).to_string();
        assert!(canonical.ends_with('w'));
        let stray = format!("{}x", &canonical[..22]);
        assert_eq!(
            ResumeToken::decode(&stray, &sid("orders")),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn fingerprint_is_stable_across_builds() {
        // FNV-1a 64 of "orders": pinned, because tokens outlive binaries.
        assert_eq!(fingerprint(&sid("orders")), 0x0012_5d92_50be_8b4c);
        assert_eq!(
            ResumeToken::new(&sid("orders"), Seq::new(1)).to_string(),
            "AQAAAAAAAAABABJdklC-i0w"
        );
    }
}
