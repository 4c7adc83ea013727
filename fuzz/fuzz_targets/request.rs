//! The request parsers: a send body, a batch send body, a receive query string, the body of
//! an ack, nack or extend, a hand-off of remembered ids, and the event-stream headers (with the event writer read back by a client's parser), from
//! arbitrary bytes, and the same built from arbitrary field values (so that numbers at and past every limit are tried
//! as often as malformed text is).
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the parser and the form of the input, so one corpus serves all.
    let Some((selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 10 {
        0 => ipubsub_http::fuzzing::send_body(rest),
        1 => {
            if let Ok(query) = std::str::from_utf8(rest) {
                ipubsub_http::fuzzing::receive_query(query);
            }
        }
        2 => {
            if let Ok(body) = send_from_fields(&mut Unstructured::new(rest)) {
                ipubsub_http::fuzzing::send_body(body.as_bytes());
            }
        }
        3 => {
            if let Ok(query) = receive_from_fields(&mut Unstructured::new(rest)) {
                ipubsub_http::fuzzing::receive_query(&query);
            }
        }
        4 => ipubsub_http::fuzzing::batch_body(rest),
        7 => ipubsub_http::fuzzing::lease_body(rest),
        9 => ipubsub_http::fuzzing::remembered_body(rest),
        8 => {
            if let Ok(body) = lease_from_fields(&mut Unstructured::new(rest)) {
                ipubsub_http::fuzzing::lease_body(body.as_bytes());
            }
        }
        5 => {
            // Split in three at the first two zero bytes: Accept, Last-Event-ID, data.
            let mut parts = rest.splitn(3, |&b| b == 0);
            let (accept, id) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            ipubsub_http::fuzzing::event_stream(accept, id, parts.next().unwrap_or_default());
        }
        _ => {
            if let Ok(body) = batch_from_fields(&mut Unstructured::new(rest)) {
                ipubsub_http::fuzzing::batch_body(body.as_bytes());
            }
        }
    }
});

/// A batch body of sends built from fields, sometimes with a stray member or a wrong type.
fn batch_from_fields(u: &mut Unstructured<'_>) -> Result<String> {
    let mut sends = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        sends.push(send_from_fields(u)?);
    }
    let messages = match u.int_in_range(0..=7)? {
        0 => "{}".to_owned(),
        1 => number(u)?.to_string(),
        _ => format!("[{}]", sends.join(",")),
    };
    Ok(if u.arbitrary()? {
        format!("{{\"messages\":{messages}}}")
    } else {
        format!("{{\"messages\":{messages},\"extra\":1}}")
    })
}

/// A number: small, near a limit, or any `u64`.
fn number(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0..=3)? {
        0 => u.int_in_range(0..=10)?,
        1 => *u.choose(&[99_999, 100_000, 100_001, 299, 300, 301, 999, 1000, 1001])?,
        2 => *u.choose(&[2_591_999, 2_592_000, 2_592_001, u64::from(u32::MAX) + 1])?,
        _ => u.arbitrary()?,
    })
}

/// A send body with each field present or not, of its type or not.
fn send_from_fields(u: &mut Unstructured<'_>) -> Result<String> {
    let mut fields = Vec::new();
    let mut field = |name: &str, value: String| fields.push(format!("\"{name}\":{value}"));
    let text = |u: &mut Unstructured<'_>| -> Result<String> {
        let s: String = u.arbitrary()?;
        Ok(format!("{s:?}")) // Rust's escaping is valid JSON for most strings; not always.
    };
    if u.arbitrary()? {
        field("streamId", text(u)?);
    }
    if u.arbitrary()? {
        field("messageUuid", text(u)?);
    }
    if u.arbitrary()? {
        field("message", text(u)?);
    }
    for name in [
        "inMemoryStreamSize",
        "blockingSendTimeoutSeconds",
        "dbTTLSeconds",
        "maxDeliveries",
        "dedupeWindowSeconds",
    ] {
        if u.arbitrary()? {
            field(name, number(u)?.to_string());
        }
    }
    if u.arbitrary()? {
        field("writeToDB", u.arbitrary::<bool>()?.to_string());
    }
    if u.arbitrary()? {
        field("deadLetterStreamId", text(u)?);
    }
    Ok(format!("{{{}}}", fields.join(",")))
}

/// An ack, nack or extend body with each field present or not: handles well formed (40 hex
/// digits), near it, or any text.
fn lease_from_fields(u: &mut Unstructured<'_>) -> Result<String> {
    let mut fields = Vec::new();
    if u.arbitrary()? {
        let s: String = u.arbitrary()?;
        fields.push(format!("\"streamId\":{s:?}"));
    }
    if u.arbitrary()? {
        let mut handles = Vec::new();
        for _ in 0..u.int_in_range(0..=3)? {
            let handle = match u.int_in_range(0..=2)? {
                0 => format!(
                    "{:016x}{:016x}{:08x}",
                    u.arbitrary::<u64>()?,
                    u.arbitrary::<u64>()?,
                    u.arbitrary::<u32>()?
                ),
                1 => format!("{:x}", u.arbitrary::<u128>()?),
                _ => u.arbitrary()?,
            };
            handles.push(format!("{handle:?}"));
        }
        fields.push(format!("\"receiptHandles\":[{}]", handles.join(",")));
    }
    for name in ["delaySeconds", "ackTimeoutSeconds"] {
        if u.arbitrary()? {
            fields.push(format!("\"{name}\":{}", number(u)?));
        }
    }
    Ok(format!("{{{}}}", fields.join(",")))
}

/// A receive query with each parameter present or not.
fn receive_from_fields(u: &mut Unstructured<'_>) -> Result<String> {
    let mut query = Vec::new();
    if u.arbitrary()? {
        let stream: String = u.arbitrary()?;
        query.push(format!("streamId={}", percent_encode(&stream)));
    }
    for name in ["timeoutSeconds", "maxMessages", "ackTimeoutSeconds"] {
        if u.arbitrary()? {
            query.push(format!("{name}={}", number(u)?));
        }
    }
    if u.arbitrary()? {
        query.push(format!("readFromDB={}", u.arbitrary::<bool>()?));
    }
    if u.arbitrary()? {
        let token: String = u.arbitrary()?;
        query.push(format!("dbResumeToken={}", percent_encode(&token)));
    }
    Ok(query.join("&"))
}

fn percent_encode(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}
