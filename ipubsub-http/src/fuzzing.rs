//! Entry points for the fuzz targets (`fuzz/`, feature `fuzzing`): each parser of client input,
//! run on arbitrary input and checked against what its callers rely on. A panic here is a bug:
//! a parser must refuse bad input with an [`ApiError`](crate::ApiError), never panic, and what
//! it accepts must be within the configured limits.

use serde::de::IgnoredAny;

use crate::config::HttpConfig;
use crate::send::SendKind;
use crate::{receive, send};

/// Parses `body` as a send, with and without persistence, and checks what it accepted.
pub fn send_body(body: &[u8]) {
    let config = HttpConfig::default();
    for persistence in [false, true] {
        let Ok(send) = send::parse(body, &config, persistence) else {
            continue;
        };
        assert!(send.stream.as_str().len() <= config.max_stream_id_bytes);
        assert!(!send.stream.as_str().is_empty());
        // The message is kept as the exact JSON text the body held.
        assert!(
            serde_json::from_slice::<IgnoredAny>(&send.payload).is_ok(),
            "the kept message is not JSON: {:?}",
            send.payload
        );
        assert!(
            body.windows(send.payload.len().max(1))
                .any(|w| w == &send.payload[..]),
            "the kept message is not the posted text"
        );
        match send.kind {
            SendKind::Memory { options, wait } => {
                assert!(wait <= config.max_timeout);
                assert!(options.stream_size <= config.max_stream_size);
            }
            SendKind::Log { ttl } => {
                assert!(persistence, "a log send accepted without persistence");
                assert!(!ttl.is_zero() && ttl <= config.max_ttl);
            }
        }
    }
}

/// Parses `query` as a receive's query string, with and without persistence, and checks what
/// it accepted.
pub fn receive_query(query: &str) {
    let config = HttpConfig::default();
    for persistence in [false, true] {
        let Ok(receive) = receive::parse(Some(query), &config, persistence) else {
            continue;
        };
        assert!(receive.stream.as_str().len() <= config.max_stream_id_bytes);
        assert!(receive.timeout <= config.max_timeout);
        assert!(
            receive
                .max_messages
                .is_none_or(|n| (1..=config.max_messages).contains(&n))
        );
        assert!(receive.log_after.is_none() || persistence);
    }
}

/// Parses `body` as a batch send, then each of its sends as a send, and checks what it
/// accepted.
pub fn batch_body(body: &[u8]) {
    let config = HttpConfig::default();
    let Ok(sends) = crate::service::batch::parse(body, &config) else {
        return;
    };
    assert!((1..=config.max_batch_items).contains(&sends.len()));
    for send in sends {
        assert!(
            serde_json::from_str::<IgnoredAny>(send.get()).is_ok(),
            "a send's text is not JSON: {:?}",
            send.get()
        );
        send_body(send.get().as_bytes());
    }
}
