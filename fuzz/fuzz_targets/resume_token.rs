//! The resume-token decoder: arbitrary text, and valid tokens with characters replaced, against
//! an arbitrary stream. What it accepts must be the canonical text of the token it returns,
//! bound to that stream.
#![no_main]

use ipubsub_core::{ResumeToken, Seq, StreamId};
use libfuzzer_sys::fuzz_target;

/// Decodes `text` for `stream`; an accepted text must be exactly the token's own.
fn check(text: &str, stream: &StreamId) {
    if let Ok(decoded) = ResumeToken::decode(text, stream) {
        assert_eq!(decoded.to_string(), text, "accepted a non-canonical token");
        assert_eq!(ResumeToken::new(stream, decoded.seq()), decoded);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `text` is `stream id` NUL `token`, or a token for the stream `s`.
    let (stream, token) = text.split_once('\0').unwrap_or(("s", text));
    let Ok(stream) = StreamId::new(stream) else {
        return;
    };
    check(token, &stream);

    // A token made for the stream decodes back to its position...
    let seq = data
        .iter()
        .fold(0u64, |n, &b| n.rotate_left(8) ^ u64::from(b));
    let made = ResumeToken::new(&stream, Seq::new(seq));
    let made_text = made.to_string();
    assert_eq!(ResumeToken::decode(&made_text, &stream), Ok(made));
    // ...and with any one character replaced by one of the input's, it is either refused or
    // the canonical text of another position (random text rarely gets past the fingerprint).
    for (i, &byte) in token.as_bytes().iter().enumerate().take(64) {
        let mut variant = made_text.clone().into_bytes();
        let at = i % variant.len();
        variant[at] = byte;
        if let Ok(variant) = std::str::from_utf8(&variant) {
            check(variant, &stream);
        }
    }
});
