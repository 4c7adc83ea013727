//! The bodies of `POST /api/v1/streams/ack`, `nack` and `extend`, and their answers.
//!
//! Each takes `{"streamId", "receiptHandles": [...]}` (`nack` also `delaySeconds`, `extend`
//! also `ackTimeoutSeconds`) and answers 200 `{"results": [...]}` with one outcome per handle,
//! in order: `{"receiptHandle", "status": 200}`, or `{"receiptHandle", "status": 4xx,
//! "error": {"code", "message"}}` for a handle that is not one, names another stream or whose
//! delivery is no longer in flight. A request that is malformed as a whole is a 400.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use ipubsub_core::{LeaseError, ReceiptHandle, StreamId};
use serde::Deserialize;

use crate::config::HttpConfig;
use crate::error::{ApiError, ErrorCode, stream_id_error};
use crate::send::from_object;

/// `POST /api/v1/streams/ack`.
pub(crate) const ACK_PATH: &str = "/api/v1/streams/ack";
/// `POST /api/v1/streams/nack`.
pub(crate) const NACK_PATH: &str = "/api/v1/streams/nack";
/// `POST /api/v1/streams/extend`.
pub(crate) const EXTEND_PATH: &str = "/api/v1/streams/extend";

/// Which of the three a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Ack,
    Nack,
    Extend,
}

impl Verb {
    /// The verb of `path`, if it is one of the three.
    pub(crate) fn of(path: &str) -> Option<Self> {
        match path {
            ACK_PATH => Some(Self::Ack),
            NACK_PATH => Some(Self::Nack),
            EXTEND_PATH => Some(Self::Extend),
            _ => None,
        }
    }

    pub(crate) fn path(self) -> &'static str {
        match self {
            Self::Ack => ACK_PATH,
            Self::Nack => NACK_PATH,
            Self::Extend => EXTEND_PATH,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Body<'a> {
    #[serde(borrow)]
    stream_id: Cow<'a, str>,
    #[serde(borrow)]
    receipt_handles: Vec<Cow<'a, str>>,
    delay_seconds: Option<u64>,
    ack_timeout_seconds: Option<u64>,
}

/// An `ack`, `nack` or `extend`, checked.
#[derive(Debug)]
pub(crate) struct LeaseRequest {
    pub(crate) stream: StreamId,
    /// Each handle as it reads, or as sent when it reads as none.
    pub(crate) handles: Vec<Result<ReceiptHandle, String>>,
    /// `nack`: how long the messages stay in flight before they go back (0: now). `extend`:
    /// the new lease, from now.
    pub(crate) duration: Duration,
}

impl LeaseRequest {
    /// The handles that read as handles.
    pub(crate) fn parsed(&self) -> Vec<ReceiptHandle> {
        self.handles
            .iter()
            .filter_map(|h| h.as_ref().ok().copied())
            .collect()
    }
}

/// Reads the body of a `verb` request.
pub(crate) fn parse(
    body: &[u8],
    verb: Verb,
    config: &HttpConfig,
) -> Result<LeaseRequest, ApiError> {
    let parsed: Body<'_> = from_object(body)?;
    let stream = StreamId::with_max_len(parsed.stream_id.as_ref(), config.max_stream_id_bytes)
        .map_err(|e| stream_id_error(ErrorCode::InvalidField, &e))?;
    let max = config.max_receipt_handles;
    if parsed.receipt_handles.is_empty() || parsed.receipt_handles.len() > max {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!(
                "receiptHandles must hold 1 to {max} handles, got {}",
                parsed.receipt_handles.len()
            ),
        ));
    }
    let unknown = |field: &str| {
        ApiError::new(
            ErrorCode::UnknownField,
            format!(
                "unknown field `{field}`: /{} does not take it",
                verb_name(verb)
            ),
        )
    };
    let max_lease = config.max_ack_timeout.as_secs();
    let duration = match verb {
        Verb::Ack if parsed.delay_seconds.is_some() => return Err(unknown("delaySeconds")),
        Verb::Ack | Verb::Nack if parsed.ack_timeout_seconds.is_some() => {
            return Err(unknown("ackTimeoutSeconds"));
        }
        Verb::Extend if parsed.delay_seconds.is_some() => return Err(unknown("delaySeconds")),
        Verb::Ack => Duration::ZERO,
        Verb::Nack => match parsed.delay_seconds.unwrap_or(0) {
            secs if secs <= max_lease => Duration::from_secs(secs),
            secs => {
                return Err(ApiError::new(
                    ErrorCode::InvalidField,
                    format!("delaySeconds is {secs}, the limit is {max_lease}"),
                ));
            }
        },
        Verb::Extend => match parsed.ack_timeout_seconds {
            None => {
                return Err(ApiError::new(
                    ErrorCode::MissingField,
                    "missing field `ackTimeoutSeconds`",
                ));
            }
            Some(secs) if (1..=max_lease).contains(&secs) => Duration::from_secs(secs),
            Some(secs) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidField,
                    format!("ackTimeoutSeconds must be 1 to {max_lease}, got {secs}"),
                ));
            }
        },
    };
    let handles = parsed
        .receipt_handles
        .into_iter()
        .map(|text| ReceiptHandle::parse(&text).map_err(|_| text.into_owned()))
        .collect();
    Ok(LeaseRequest {
        stream,
        handles,
        duration,
    })
}

fn verb_name(verb: Verb) -> &'static str {
    verb.path().rsplit('/').next().unwrap_or("ack")
}

/// The answer: one result per handle sent, in order. `outcomes` holds the engine's outcome of
/// each handle that read as one, in order. Written by hand: an acknowledgement is as frequent
/// as a receive.
pub(crate) fn answer(
    request: &LeaseRequest,
    outcomes: impl IntoIterator<Item = Result<(), LeaseError>>,
) -> Bytes {
    let mut outcomes = outcomes.into_iter();
    let mut out = Vec::with_capacity(16 + 72 * request.handles.len());
    out.extend_from_slice(b"{\"results\":[");
    for (i, handle) in request.handles.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"receiptHandle\":");
        let outcome = match handle {
            Ok(handle) => {
                out.push(b'"');
                out.extend_from_slice(&handle.encode());
                out.push(b'"');
                match outcomes.next() {
                    Some(Ok(())) => Ok(()),
                    Some(Err(e)) => Err(lease_error(e)),
                    None => Err(ApiError::new(
                        ErrorCode::Internal,
                        "no outcome for this handle",
                    )),
                }
            }
            Err(text) => {
                if serde_json::to_writer(&mut out, text).is_err() {
                    out.extend_from_slice(b"\"\"");
                }
                Err(ApiError::new(
                    ErrorCode::InvalidReceiptHandle,
                    "not a receipt handle: it is 40 hex digits as a receive answered it",
                ))
            }
        };
        match outcome {
            Ok(()) => out.extend_from_slice(b",\"status\":200}"),
            Err(e) => {
                let status = e.code.status().as_u16();
                out.extend_from_slice(format!(",\"status\":{status},\"error\":").as_bytes());
                // `{"error": {…}}` less its outer braces' first key: reuse the error body.
                let body = e.body();
                out.extend_from_slice(&body[b"{\"error\":".len()..body.len() - 1]);
                out.push(b'}');
            }
        }
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

fn lease_error(e: LeaseError) -> ApiError {
    let code = match e {
        LeaseError::OtherStream => ErrorCode::ReceiptHandleOfOtherStream,
        _ => ErrorCode::NotInFlight,
    };
    ApiError::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANDLE: &str = "00000000000000010000000000000002deadbeef";

    fn parse_str(body: &str, verb: Verb) -> Result<LeaseRequest, ApiError> {
        parse(body.as_bytes(), verb, &HttpConfig::default())
    }

    #[track_caller]
    fn refused(body: &str, verb: Verb, code: ErrorCode, needle: &str) {
        crate::error::assert_refused(parse_str(body, verb), body, code, needle);
    }

    #[test]
    fn reads_each_verb() -> Result<(), ApiError> {
        let ack = parse_str(
            &format!(r#"{{"streamId":"s","receiptHandles":["{HANDLE}","x"]}}"#),
            Verb::Ack,
        )?;
        assert_eq!(ack.stream.as_str(), "s");
        assert_eq!(ack.handles.len(), 2);
        assert_eq!(ack.parsed().len(), 1, "a bad handle is answered on its own");
        let nack = parse_str(
            &format!(r#"{{"streamId":"s","receiptHandles":["{HANDLE}"],"delaySeconds":5}}"#),
            Verb::Nack,
        )?;
        assert_eq!(nack.duration, Duration::from_secs(5));
        let extend = parse_str(
            &format!(r#"{{"streamId":"s","receiptHandles":["{HANDLE}"],"ackTimeoutSeconds":60}}"#),
            Verb::Extend,
        )?;
        assert_eq!(extend.duration, Duration::from_secs(60));
        Ok(())
    }

    #[test]
    fn refuses_malformed_requests_as_a_whole() {
        let h = format!(r#"["{HANDLE}"]"#);
        refused(
            r#"{"streamId":"s","receiptHandles":[]}"#,
            Verb::Ack,
            ErrorCode::InvalidField,
            "1 to 1000",
        );
        refused(
            r#"{"receiptHandles":["a"]}"#,
            Verb::Ack,
            ErrorCode::MissingField,
            "streamId",
        );
        refused(
            r#"{"streamId":"s"}"#,
            Verb::Ack,
            ErrorCode::MissingField,
            "receiptHandles",
        );
        refused(r#"["s"]"#, Verb::Ack, ErrorCode::InvalidJson, "object");
        refused(
            &format!(r#"{{"streamId":"s","receiptHandles":{h},"delaySeconds":1}}"#),
            Verb::Ack,
            ErrorCode::UnknownField,
            "delaySeconds",
        );
        refused(
            &format!(r#"{{"streamId":"s","receiptHandles":{h},"ackTimeoutSeconds":1}}"#),
            Verb::Nack,
            ErrorCode::UnknownField,
            "ackTimeoutSeconds",
        );
        refused(
            &format!(r#"{{"streamId":"s","receiptHandles":{h},"delaySeconds":43201}}"#),
            Verb::Nack,
            ErrorCode::InvalidField,
            "limit is 43200",
        );
        refused(
            &format!(r#"{{"streamId":"s","receiptHandles":{h}}}"#),
            Verb::Extend,
            ErrorCode::MissingField,
            "ackTimeoutSeconds",
        );
        refused(
            &format!(r#"{{"streamId":"s","receiptHandles":{h},"ackTimeoutSeconds":0}}"#),
            Verb::Extend,
            ErrorCode::InvalidField,
            "1 to 43200",
        );
        refused(
            &format!(r#"{{"streamId":"","receiptHandles":{h}}}"#),
            Verb::Ack,
            ErrorCode::InvalidField,
            "streamId",
        );
    }

    #[test]
    fn answers_each_handle_in_order() -> Result<(), Box<dyn std::error::Error>> {
        let request = parse_str(
            &format!(r#"{{"streamId":"s","receiptHandles":["{HANDLE}","nope","{HANDLE}"]}}"#),
            Verb::Ack,
        )?;
        let body = answer(&request, [Ok(()), Err(LeaseError::NotInFlight)]);
        let body: serde_json::Value = serde_json::from_slice(&body)?;
        let results = body["results"].as_array().ok_or("results")?;
        let statuses: Vec<_> = results.iter().map(|r| r["status"].as_u64()).collect();
        assert_eq!(statuses, [Some(200), Some(400), Some(410)]);
        assert_eq!(results[1]["error"]["code"], "INVALID_RECEIPT_HANDLE");
        assert_eq!(results[1]["receiptHandle"], "nope");
        assert_eq!(results[2]["error"]["code"], "NOT_IN_FLIGHT");
        Ok(())
    }
}
