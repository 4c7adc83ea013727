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
            SendKind::Memory {
                options,
                wait,
                redrive,
                dedupe_window,
            } => {
                assert!(dedupe_window <= config.max_dedupe_window);
                assert!(wait <= config.max_timeout);
                assert!(options.stream_size <= config.max_stream_size);
                assert!(
                    redrive.dead_letter.is_none() || redrive.max_deliveries > 0,
                    "a dead-letter stream without maxDeliveries"
                );
                assert!(redrive.dead_letter.as_ref() != Some(&send.stream));
            }
            SendKind::Log { ttl, dedupe_window } => {
                assert!(persistence, "a log send accepted without persistence");
                assert!(!ttl.is_zero() && ttl <= config.max_ttl);
                assert!(dedupe_window <= config.max_dedupe_window);
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
        assert!(
            receive
                .ack_timeout
                .is_none_or(|t| !t.is_zero() && t <= config.max_ack_timeout)
        );
        assert!(receive.ack_timeout.is_none() || receive.log_after.is_none());
    }
}

/// Parses `body` as an `ack`, a `nack` and an `extend`, and checks what each accepted, and
/// that its answer lists every handle sent, in order.
pub fn lease_body(body: &[u8]) {
    use crate::acks::{self, Verb};
    let config = HttpConfig::default();
    for verb in [Verb::Ack, Verb::Nack, Verb::Extend] {
        let Ok(request) = acks::parse(body, verb, &config) else {
            continue;
        };
        assert!(!request.stream.as_str().is_empty());
        assert!((1..=config.max_receipt_handles).contains(&request.handles.len()));
        assert!(request.duration <= config.max_ack_timeout);
        match verb {
            Verb::Ack => assert!(request.duration.is_zero()),
            Verb::Extend => assert!(!request.duration.is_zero()),
            Verb::Nack => {}
        }
        let outcomes = vec![Ok(()); request.parsed().len()];
        let answer: serde_json::Value =
            serde_json::from_slice(&acks::answer(&request, outcomes)).expect("the answer is JSON");
        let results = answer["results"].as_array().expect("results");
        assert_eq!(results.len(), request.handles.len());
        for (handle, result) in request.handles.iter().zip(results) {
            let text = match handle {
                Ok(handle) => handle.to_string(),
                Err(text) => text.clone(),
            };
            assert_eq!(result["receiptHandle"].as_str(), Some(text.as_str()));
            let expected = if handle.is_ok() { 200 } else { 400 };
            assert_eq!(result["status"].as_u64(), Some(expected));
        }
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

/// Reads `accept` as an `Accept` header and `last_event_id` as a `Last-Event-ID` on a log
/// read, and writes `data` as an event: the event reads back, as a client's parser sees it,
/// with the same id and the same data (its line breaks as `\n`).
pub fn event_stream(accept: &[u8], last_event_id: &[u8], data: &[u8]) {
    use hyper::header::{self, HeaderMap, HeaderValue};

    let mut headers = HeaderMap::new();
    if let Ok(accept) = HeaderValue::from_bytes(accept) {
        headers.insert(header::ACCEPT, accept);
    }
    let _ = crate::sse::wanted(&headers);
    if let Ok(id) = HeaderValue::from_bytes(last_event_id) {
        headers.insert(&crate::sse::LAST_EVENT_ID, id);
    }
    let config = HttpConfig::default();
    if let Ok(mut receive) = receive::parse(Some("streamId=s&readFromDB=true"), &config, true)
        && crate::sse::resume(&headers, &mut receive).is_ok()
    {
        assert!(receive.log_after.is_some(), "a log read lost its position");
    }

    let id = std::str::from_utf8(last_event_id)
        .ok()
        .filter(|id| !id.contains(['\r', '\n', '\0']));
    let seen = crate::sse::parse(&crate::sse::event(id, data));
    assert_eq!(seen.len(), 1, "one event written, {} read", seen.len());
    let mut expected = Vec::with_capacity(data.len());
    let mut bytes = data.iter().peekable();
    while let Some(&b) = bytes.next() {
        if b == b'\r' {
            bytes.next_if_eq(&&b'\n');
            expected.push(b'\n');
        } else {
            expected.push(b);
        }
    }
    assert_eq!(seen[0].data, expected, "the data read back differs");
    assert_eq!(seen[0].id.as_deref(), id, "the id read back differs");
}

/// Parses `body` as a hand-off of remembered ids (the internal path members call), and checks
/// that what it read writes back to a body that reads the same.
pub fn remembered_body(body: &[u8]) {
    let Ok(read) = crate::handoff::parse_remembered(body) else {
        return;
    };
    let written = crate::handoff::remembered_body(
        &read.stream,
        read.window,
        &read.ids,
        std::time::Duration::ZERO,
    );
    let again = crate::handoff::parse_remembered(&written).expect("a written body reads");
    let kept: Vec<_> = read
        .ids
        .into_iter()
        .filter(|(_, left)| !left.is_zero())
        .collect();
    assert_eq!((again.stream, again.window), (read.stream, read.window));
    assert_eq!(again.ids.len(), kept.len(), "ids lost on the way");
}
