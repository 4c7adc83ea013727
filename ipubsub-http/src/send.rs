//! `POST /api/v1/streams/send`: parsing and validation of the body, and the send itself.

use std::borrow::Cow;
use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use ipubsub_core::{
    Engine, Log, Message, MessageId, Redrive, ResumeToken, SendOptions, SendOutcome, StreamId,
};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::config::HttpConfig;
use crate::error::{ApiError, ErrorCode, stream_id_error};
use crate::metrics::Limit;

/// The send body as it is on the wire. Unknown fields are refused: a misspelt `writeToDb`
/// must never silently turn a persistent send into a volatile one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Body<'a> {
    #[serde(borrow)]
    stream_id: Cow<'a, str>,
    #[serde(borrow)]
    message_uuid: Cow<'a, str>,
    /// `Some` whenever the field is present, `null` included; `None` only when missing.
    #[serde(borrow, default, deserialize_with = "present")]
    message: Option<&'a RawValue>,
    in_memory_stream_size: Option<u32>,
    blocking_send_timeout_seconds: Option<u64>,
    #[serde(rename = "writeToDB")]
    write_to_db: Option<bool>,
    #[serde(rename = "dbTTLSeconds")]
    db_ttl_seconds: Option<u64>,
    max_deliveries: Option<u32>,
    #[serde(borrow)]
    dead_letter_stream_id: Option<Cow<'a, str>>,
    dedupe_window_seconds: Option<u64>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A validated send.
#[derive(Debug)]
pub(crate) struct SendRequest {
    pub(crate) stream: StreamId,
    pub(crate) id: MessageId,
    /// The message's JSON text, exactly as posted.
    pub(crate) payload: Bytes,
    pub(crate) kind: SendKind,
}

/// Where a send puts its message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendKind {
    /// The in-memory queue, in the mode `options` select; a waiting send waits up to `wait`.
    Memory {
        options: SendOptions,
        wait: Duration,
        /// `maxDeliveries` and `deadLetterStreamId`, for the stream if it has none yet.
        redrive: Redrive,
        /// `dedupeWindowSeconds` (or the configured default), for the stream if it has none
        /// yet; zero: none.
        dedupe_window: Duration,
    },
    /// The persistent log only, to expire after `ttl`.
    Log {
        ttl: Duration,
        /// `dedupeWindowSeconds` (or the configured default); zero: none.
        dedupe_window: Duration,
    },
}

/// Parses and validates a send body. `persistence` tells whether this node has a log.
pub(crate) fn parse(
    body: &[u8],
    config: &HttpConfig,
    persistence: bool,
) -> Result<SendRequest, ApiError> {
    let parsed: Body<'_> = from_object(body)?;
    let stream = StreamId::with_max_len(parsed.stream_id.as_ref(), config.max_stream_id_bytes)
        .map_err(|e| stream_id_error(ErrorCode::InvalidField, &e))?;
    let id = MessageId::new(parsed.message_uuid.as_ref())
        .map_err(|e| ApiError::new(ErrorCode::InvalidField, format!("messageUuid {e}")))?;
    let Some(message) = parsed.message else {
        return Err(ApiError::new(
            ErrorCode::MissingField,
            "message is required (null is a valid message)",
        ));
    };
    // One copy, on purpose: a slice of the request would pin the connection's whole read
    // buffer (kilobytes) for as long as the message waits in a stream.
    let payload = Bytes::copy_from_slice(message.get().as_bytes());
    let persistent = parsed.write_to_db == Some(true);
    if persistent && !persistence {
        return Err(config.no_persistence("writeToDB"));
    }
    if !persistent && parsed.db_ttl_seconds.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "dbTTLSeconds applies only with writeToDB: true",
        ));
    }
    if persistent && (parsed.max_deliveries.is_some() || parsed.dead_letter_stream_id.is_some()) {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "maxDeliveries and deadLetterStreamId apply to in-memory streams, not with writeToDB: true",
        ));
    }
    let dedupe_window = dedupe_window(&parsed, config)?;
    if persistent {
        let ttl = match parsed.db_ttl_seconds {
            None => config.default_ttl,
            Some(0) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidField,
                    "dbTTLSeconds must be above 0",
                ));
            }
            Some(secs) if Duration::from_secs(secs) > config.max_ttl => {
                return Err(ApiError::new(
                    ErrorCode::InvalidField,
                    format!(
                        "dbTTLSeconds is {secs}, the limit is {}",
                        config.max_ttl.as_secs()
                    ),
                )
                .hit(Limit::Ttl));
            }
            Some(secs) => Duration::from_secs(secs),
        };
        // The in-memory fields do not apply to a message that goes to the log only.
        return Ok(SendRequest {
            stream,
            id,
            payload,
            kind: SendKind::Log { ttl, dedupe_window },
        });
    }
    let size = parsed
        .in_memory_stream_size
        .unwrap_or(config.default_stream_size);
    if size > config.max_stream_size {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!(
                "inMemoryStreamSize is {size}, the limit is {}",
                config.max_stream_size
            ),
        )
        .hit(Limit::StreamSize));
    }
    let wait_secs = parsed.blocking_send_timeout_seconds.unwrap_or(0);
    let wait = Duration::from_secs(wait_secs);
    if wait > config.max_timeout {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!(
                "blockingSendTimeoutSeconds is {wait_secs}, the limit is {}",
                config.max_timeout.as_secs()
            ),
        )
        .hit(Limit::Timeout));
    }
    if size == 0 && wait_secs == 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "inMemoryStreamSize 0 needs blockingSendTimeoutSeconds > 0 (a sync match waits for a receiver)",
        ));
    }
    let redrive = redrive(&parsed, &stream, config)?;
    Ok(SendRequest {
        stream,
        id,
        payload,
        kind: SendKind::Memory {
            options: SendOptions {
                stream_size: size,
                wait: wait_secs > 0,
            },
            wait,
            redrive,
            dedupe_window,
        },
    })
}

/// The dedupe window a send asks for: `dedupeWindowSeconds`, or the configured default.
fn dedupe_window(parsed: &Body<'_>, config: &HttpConfig) -> Result<Duration, ApiError> {
    match parsed.dedupe_window_seconds {
        None => Ok(config.default_dedupe_window),
        Some(secs) if Duration::from_secs(secs) <= config.max_dedupe_window => {
            Ok(Duration::from_secs(secs))
        }
        Some(secs) => Err(ApiError::new(
            ErrorCode::InvalidField,
            format!(
                "dedupeWindowSeconds is {secs}, the limit is {}",
                config.max_dedupe_window.as_secs()
            ),
        )),
    }
}

/// The redrive policy a send asks for: `maxDeliveries` (at least 1), then
/// `deadLetterStreamId` (another stream) or nothing.
fn redrive(parsed: &Body<'_>, stream: &StreamId, config: &HttpConfig) -> Result<Redrive, ApiError> {
    let dead_letter = match &parsed.dead_letter_stream_id {
        None => None,
        Some(_) if parsed.max_deliveries.is_none() => {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "deadLetterStreamId needs maxDeliveries",
            ));
        }
        Some(id) => {
            let id =
                StreamId::with_max_len(id.as_ref(), config.max_stream_id_bytes).map_err(|e| {
                    ApiError::new(ErrorCode::InvalidField, format!("deadLetterStreamId: {e}"))
                })?;
            if &id == stream {
                return Err(ApiError::new(
                    ErrorCode::InvalidField,
                    "deadLetterStreamId must name another stream",
                ));
            }
            Some(id)
        }
    };
    match parsed.max_deliveries {
        None => Ok(Redrive::default()),
        Some(0) => Err(ApiError::new(
            ErrorCode::InvalidField,
            "maxDeliveries must be at least 1",
        )),
        Some(n) => Ok(Redrive::new(n, dead_letter)),
    }
}

/// `body` as a `T`, which must be a JSON object and nothing after it; an error in the API's
/// words otherwise.
pub(crate) fn from_object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    // serde would also read a struct from a JSON array; the API takes objects only.
    if body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b != b'{')
    {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            "the body must be a JSON object",
        ));
    }
    // Plain serde first: tracking the path of every field costs a tenth of a batch's parse,
    // and only an error needs the path. A body that fails is parsed again for its message.
    let mut de = serde_json::Deserializer::from_slice(body);
    if let Ok(parsed) = T::deserialize(&mut de).and_then(|parsed| de.end().map(|()| parsed)) {
        return Ok(parsed);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = serde_path_to_error::deserialize(&mut de).map_err(body_error)?;
    de.end().map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    Ok(parsed)
}

/// Turns a deserialisation error into the API's words, naming the field at fault.
fn body_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if !inner.is_data() {
        return ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {inner}"),
        );
    }
    // serde's messages for data errors are stable; its line/column suffix is noise here.
    let text = inner.to_string();
    let text = text.split(" at line ").next().unwrap_or(&text).to_owned();
    let code = if text.starts_with("missing field") {
        ErrorCode::MissingField
    } else if text.starts_with("unknown field") {
        ErrorCode::UnknownField
    } else if path == "." {
        // Wrong type at the top: not an object.
        return ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body must be a JSON object: {text}"),
        );
    } else {
        ErrorCode::InvalidField
    };
    let message = if path == "." || text.starts_with("unknown field") {
        text
    } else {
        format!("{path}: {text}")
    };
    ApiError::new(code, message)
}

/// Runs an in-memory send on the engine, waiting up to its timeout.
pub(crate) async fn run_memory(
    engine: &Engine,
    stream: StreamId,
    message: Message,
    options: SendOptions,
    wait: Duration,
) -> Result<SendOutcome, ApiError> {
    let mut send = pin!(engine.send(stream, message, options));
    if !options.wait {
        return Ok(send.await?);
    }
    match tokio::time::timeout(wait, send.as_mut()).await {
        Ok(result) => Ok(result?),
        // The abandon settles the race with a receiver: a message accepted at the last
        // moment is reported as sent.
        Err(_elapsed) => Ok(send.abandon()?),
    }
}

/// Appends to the persistent log (unless its id is in the log within `window`) and answers
/// with the message's resume token once durable, and whether it was a duplicate.
pub(crate) async fn run_log(
    log: &Log,
    stream: StreamId,
    message: Message,
    (ttl, window): (Duration, Duration),
    limit: Duration,
) -> Result<(String, bool), ApiError> {
    let append = log.append_once(stream.clone(), message, ttl, window);
    let written = match tokio::time::timeout(limit, append).await {
        Ok(result) => result?,
        Err(_elapsed) => {
            return Err(ApiError::new(
                ErrorCode::StoreUnavailable,
                "the message store did not confirm the write in time; it may or may not be stored",
            ));
        }
    };
    Ok((
        ResumeToken::new(&stream, written.seq).to_string(),
        written.duplicate,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(body: &str) -> Result<SendRequest, ApiError> {
        parse(body.as_bytes(), &HttpConfig::default(), false)
    }

    #[track_caller]
    fn refused(body: &str, code: ErrorCode, needle: &str) {
        crate::error::assert_refused(parse_str(body), body, code, needle);
    }

    #[test]
    fn keeps_the_message_bytes_verbatim() -> Result<(), ApiError> {
        let r = parse_str(
            r#"{"streamId":"s","messageUuid":"m","message":{"n":12345678901234567890,"f":1.5e3}}"#,
        )?;
        assert_eq!(&r.payload[..], br#"{"n":12345678901234567890,"f":1.5e3}"#);
        assert_eq!(
            r.kind,
            SendKind::Memory {
                options: SendOptions {
                    stream_size: 100,
                    wait: false
                },
                wait: Duration::ZERO,
                redrive: Redrive::default(),
                dedupe_window: Duration::ZERO,
            }
        );
        Ok(())
    }

    #[test]
    fn null_is_a_message_and_missing_is_not() -> Result<(), ApiError> {
        let r = parse_str(r#"{"streamId":"s","messageUuid":"m","message":null}"#)?;
        assert_eq!(&r.payload[..], b"null");
        refused(
            r#"{"streamId":"s","messageUuid":"m"}"#,
            ErrorCode::MissingField,
            "message",
        );
        Ok(())
    }

    #[test]
    fn names_unknown_fields() {
        refused(
            r#"{"streamId":"s","messageUuid":"m","message":1,"writeToDb":true}"#,
            ErrorCode::UnknownField,
            "writeToDb",
        );
    }

    #[test]
    fn names_the_field_with_a_bad_value() {
        refused(
            r#"{"streamId":"s","messageUuid":"m","message":1,"inMemoryStreamSize":-1}"#,
            ErrorCode::InvalidField,
            "inMemoryStreamSize",
        );
        refused(
            r#"{"streamId":"s","messageUuid":"m","message":1,"inMemoryStreamSize":"5"}"#,
            ErrorCode::InvalidField,
            "inMemoryStreamSize",
        );
        refused(
            r#"{"streamId":5,"messageUuid":"m","message":1}"#,
            ErrorCode::InvalidField,
            "streamId",
        );
        refused(
            r#"{"streamId":"","messageUuid":"m","message":1}"#,
            ErrorCode::InvalidField,
            "streamId",
        );
        refused(
            r#"{"streamId":"a\nb","messageUuid":"m","message":1}"#,
            ErrorCode::InvalidField,
            "control",
        );
        refused(
            r#"{"streamId":"s","messageUuid":"","message":1}"#,
            ErrorCode::InvalidField,
            "messageUuid",
        );
        refused(
            r#"{"messageUuid":"m","message":1}"#,
            ErrorCode::MissingField,
            "streamId",
        );
    }

    #[test]
    fn refuses_what_is_not_a_json_object() {
        refused("", ErrorCode::InvalidJson, "JSON");
        refused("{", ErrorCode::InvalidJson, "JSON");
        refused("[1]", ErrorCode::InvalidJson, "object");
        refused(
            r#"{"streamId":"s","messageUuid":"m","message":1} x"#,
            ErrorCode::InvalidJson,
            "JSON",
        );
    }

    #[test]
    fn checks_modes_and_limits() {
        refused(
            r#"{"streamId":"s","messageUuid":"m","message":1,"inMemoryStreamSize":0}"#,
            ErrorCode::InvalidField,
            "blockingSendTimeoutSeconds",
        );
        refused(
            r#"{"streamId":"s","messageUuid":"m","message":1,"blockingSendTimeoutSeconds":301}"#,
            ErrorCode::InvalidField,
            "limit",
        );
        refused(
            r#"{"streamId":"s","messageUuid":"m","message":1,"inMemoryStreamSize":100001}"#,
            ErrorCode::InvalidField,
            "limit",
        );
        refused(
            r#"{"streamId":"s","messageUuid":"m","message":1,"writeToDB":true}"#,
            ErrorCode::PersistenceNotConfigured,
            "persistence",
        );
        refused(
            r#"{"streamId":"s","messageUuid":"m","message":1,"dbTTLSeconds":5}"#,
            ErrorCode::InvalidField,
            "writeToDB",
        );
        let long = "a".repeat(257);
        refused(
            &format!(r#"{{"streamId":"{long}","messageUuid":"m","message":1}}"#),
            ErrorCode::InvalidField,
            "256",
        );
    }

    #[test]
    fn a_send_may_fix_its_streams_redrive_policy() -> Result<(), Box<dyn std::error::Error>> {
        let r = parse_str(
            r#"{"streamId":"s","messageUuid":"m","message":1,"maxDeliveries":3,"deadLetterStreamId":"s-dlq"}"#,
        )?;
        let SendKind::Memory { redrive, .. } = r.kind else {
            return Err("an in-memory send".into());
        };
        assert_eq!(redrive, Redrive::new(3, Some(StreamId::new("s-dlq")?)));
        let r = parse_str(r#"{"streamId":"s","messageUuid":"m","message":1,"maxDeliveries":1}"#)?;
        assert!(
            matches!(r.kind, SendKind::Memory { redrive, .. } if redrive == Redrive::new(1, None))
        );
        refused(
            r#"{"streamId":"s","messageUuid":"m","message":1,"maxDeliveries":0}"#,
            ErrorCode::InvalidField,
            "at least 1",
        );
        refused(
            r#"{"streamId":"s","messageUuid":"m","message":1,"deadLetterStreamId":"d"}"#,
            ErrorCode::InvalidField,
            "needs maxDeliveries",
        );
        refused(
            r#"{"streamId":"s","messageUuid":"m","message":1,"maxDeliveries":2,"deadLetterStreamId":"s"}"#,
            ErrorCode::InvalidField,
            "another stream",
        );
        refused(
            r#"{"streamId":"s","messageUuid":"m","message":1,"maxDeliveries":2,"deadLetterStreamId":""}"#,
            ErrorCode::InvalidField,
            "deadLetterStreamId",
        );
        let error = parse(
            br#"{"streamId":"s","messageUuid":"m","message":1,"writeToDB":true,"maxDeliveries":2}"#,
            &HttpConfig::default(),
            true,
        );
        assert!(matches!(error, Err(e) if e.message.contains("in-memory")));
        Ok(())
    }

    #[test]
    fn a_send_may_fix_its_streams_dedupe_window() -> Result<(), ApiError> {
        let r = parse_str(
            r#"{"streamId":"s","messageUuid":"m","message":1,"dedupeWindowSeconds":300}"#,
        )?;
        assert!(
            matches!(r.kind, SendKind::Memory { dedupe_window, .. } if dedupe_window == Duration::from_secs(300))
        );
        refused(
            r#"{"streamId":"s","messageUuid":"m","message":1,"dedupeWindowSeconds":86401}"#,
            ErrorCode::InvalidField,
            "limit is 86400",
        );
        let config = HttpConfig {
            default_dedupe_window: Duration::from_secs(60),
            ..HttpConfig::default()
        };
        let r = parse(
            br#"{"streamId":"s","messageUuid":"m","message":1}"#,
            &config,
            false,
        )?;
        assert!(
            matches!(r.kind, SendKind::Memory { dedupe_window, .. } if dedupe_window == Duration::from_secs(60))
        );
        let r = parse(
            br#"{"streamId":"s","messageUuid":"m","message":1,"dedupeWindowSeconds":0}"#,
            &config,
            false,
        )?;
        assert!(
            matches!(r.kind, SendKind::Memory { dedupe_window, .. } if dedupe_window.is_zero())
        );
        // The log takes a window too, and the default.
        let log = parse(
            br#"{"streamId":"s","messageUuid":"m","message":1,"writeToDB":true,"dedupeWindowSeconds":5}"#,
            &config,
            true,
        )?;
        assert!(
            matches!(log.kind, SendKind::Log { dedupe_window, .. } if dedupe_window == Duration::from_secs(5))
        );
        let log = parse(
            br#"{"streamId":"s","messageUuid":"m","message":1,"writeToDB":true}"#,
            &config,
            true,
        )?;
        assert!(
            matches!(log.kind, SendKind::Log { dedupe_window, .. } if dedupe_window == Duration::from_secs(60))
        );
        Ok(())
    }

    #[test]
    fn sync_match_and_blocking_modes() -> Result<(), ApiError> {
        let r = parse_str(
            r#"{"streamId":"s","messageUuid":"m","message":1,"inMemoryStreamSize":0,"blockingSendTimeoutSeconds":2}"#,
        )?;
        assert_eq!(
            r.kind,
            SendKind::Memory {
                options: SendOptions {
                    stream_size: 0,
                    wait: true
                },
                wait: Duration::from_secs(2),
                redrive: Redrive::default(),
                dedupe_window: Duration::ZERO,
            }
        );
        let r = parse_str(r#"{"streamId":"s","messageUuid":"m","message":1,"writeToDB":false}"#)?;
        assert!(matches!(
            r.kind,
            SendKind::Memory {
                options: SendOptions { wait: false, .. },
                ..
            }
        ));
        Ok(())
    }

    #[test]
    fn persistent_sends_take_a_ttl_within_limits() -> Result<(), ApiError> {
        let config = HttpConfig::default();
        let parse_log = |body: &str| parse(body.as_bytes(), &config, true);
        let r = parse_log(r#"{"streamId":"s","messageUuid":"m","message":1,"writeToDB":true}"#)?;
        assert_eq!(
            r.kind,
            SendKind::Log {
                ttl: Duration::from_secs(86_400),
                dedupe_window: Duration::ZERO,
            }
        );
        // In-memory fields do not apply, not even the size-0 rule.
        let r = parse_log(
            r#"{"streamId":"s","messageUuid":"m","message":1,"writeToDB":true,"dbTTLSeconds":5,"inMemoryStreamSize":0}"#,
        )?;
        assert_eq!(
            r.kind,
            SendKind::Log {
                ttl: Duration::from_secs(5),
                dedupe_window: Duration::ZERO,
            }
        );
        for bad in [
            r#""dbTTLSeconds":0"#,
            r#""dbTTLSeconds":99999999"#,
            r#""dbTTLSeconds":-5"#,
        ] {
            let body = format!(
                r#"{{"streamId":"s","messageUuid":"m","message":1,"writeToDB":true,{bad}}}"#
            );
            let e = parse_log(&body)
                .err()
                .ok_or(ApiError::new(ErrorCode::Internal, "accepted"))?;
            assert_eq!(e.code, ErrorCode::InvalidField, "{bad}: {e}");
        }
        Ok(())
    }
}
