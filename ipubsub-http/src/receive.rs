//! `GET /api/v1/streams/receive`: parsing of the query, the long-poll, the response body.

use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use ipubsub_core::{Engine, Message, StreamId};

use crate::config::HttpConfig;
use crate::error::{ApiError, ErrorCode};

/// A validated in-memory receive.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ReceiveRequest {
    pub(crate) stream: StreamId,
    pub(crate) timeout: Duration,
}

/// Parses and validates the receive query string.
pub(crate) fn parse(query: Option<&str>, config: &HttpConfig) -> Result<ReceiveRequest, ApiError> {
    let mut stream_id = None;
    let mut timeout = None;
    let mut read_from_db = None;
    let mut token = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match key.as_ref() {
            "streamId" => &mut stream_id,
            "timeoutSeconds" => &mut timeout,
            "readFromDB" => &mut read_from_db,
            "dbResumeToken" => &mut token,
            other => {
                return Err(ApiError::new(
                    ErrorCode::UnknownParameter,
                    format!("unknown query parameter `{other}`"),
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!("query parameter `{key}` is repeated"),
            ));
        }
    }

    let Some(stream_id) = stream_id else {
        return Err(ApiError::new(
            ErrorCode::MissingParameter,
            "streamId is required",
        ));
    };
    let stream = StreamId::with_max_len(stream_id.as_ref(), config.max_stream_id_bytes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidParameter, format!("streamId {e}")))?;

    let timeout = match timeout {
        None => config.default_receive_timeout,
        Some(text) => {
            let secs: u64 = text.parse().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidParameter,
                    format!("timeoutSeconds must be a whole number of seconds, got `{text}`"),
                )
            })?;
            let timeout = Duration::from_secs(secs);
            if timeout > config.max_timeout {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameter,
                    format!(
                        "timeoutSeconds is {secs}, the limit is {}",
                        config.max_timeout.as_secs()
                    ),
                ));
            }
            timeout
        }
    };

    let read_from_db = match read_from_db.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!("readFromDB must be true or false, got `{other}`"),
            ));
        }
    };
    if token.is_some() && !read_from_db {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "dbResumeToken requires readFromDB=true",
        ));
    }
    if read_from_db {
        return Err(ApiError::new(
            ErrorCode::PersistenceNotConfigured,
            "readFromDB: persistence is not configured on this node",
        ));
    }
    Ok(ReceiveRequest { stream, timeout })
}

/// Runs a validated receive: the next message, or `NO_MESSAGE` after the timeout.
pub(crate) async fn run(engine: &Engine, request: ReceiveRequest) -> Result<Message, ApiError> {
    let no_message = || {
        ApiError::new(
            ErrorCode::NoMessage,
            format!("no message arrived within {} s", request.timeout.as_secs()),
        )
    };
    if request.timeout.is_zero() {
        if engine.is_closed() {
            return Err(ApiError::new(
                ErrorCode::ShuttingDown,
                "the node is shutting down",
            ));
        }
        return engine.try_receive(&request.stream).ok_or_else(no_message);
    }
    let mut receive = pin!(engine.receive(request.stream.clone()));
    match tokio::time::timeout(request.timeout, receive.as_mut()).await {
        Ok(result) => Ok(result?),
        // A message handed over as the timer fired is returned, not dropped.
        Err(_elapsed) => receive.abandon().ok_or_else(no_message),
    }
}

/// The v1 receive body: `{"messageUuid", "message", "timestamp"}`, with the message's bytes
/// written as they were posted.
pub(crate) fn body(message: &Message) -> Bytes {
    let id = message.id().as_str();
    let payload = message.payload();
    let mut out = Vec::with_capacity(80 + id.len() + payload.len());
    out.extend_from_slice(b"{\"messageUuid\":");
    push_json_string(&mut out, id);
    out.extend_from_slice(b",\"message\":");
    out.extend_from_slice(payload);
    out.extend_from_slice(b",\"timestamp\":\"");
    out.extend_from_slice(message.timestamp().to_rfc3339().as_bytes());
    out.extend_from_slice(b"\"}");
    Bytes::from(out)
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

#[cfg(test)]
mod tests {
    use ipubsub_core::{MessageId, Timestamp};

    use super::*;

    fn parse_q(q: &str) -> Result<ReceiveRequest, ApiError> {
        parse(Some(q), &HttpConfig::default())
    }

    #[track_caller]
    fn refused(q: &str, code: ErrorCode, needle: &str) {
        match parse_q(q) {
            Ok(r) => panic!("accepted {q}: {r:?}"),
            Err(e) => {
                assert_eq!(e.code, code, "{e}");
                assert!(
                    e.message.contains(needle),
                    "{:?} lacks {needle:?}",
                    e.message
                );
            }
        }
    }

    #[test]
    fn defaults_and_decoding() -> Result<(), Box<dyn std::error::Error>> {
        let r = parse_q("streamId=chat%3Aroom%201")?;
        assert_eq!(r.stream.as_str(), "chat:room 1");
        assert_eq!(r.timeout, Duration::from_secs(30));
        let r = parse_q("streamId=s&timeoutSeconds=0&readFromDB=false")?;
        assert_eq!(r.timeout, Duration::ZERO);
        Ok(())
    }

    #[test]
    fn refuses_bad_parameters() {
        refused("", ErrorCode::MissingParameter, "streamId");
        refused("streamId=", ErrorCode::InvalidParameter, "streamId");
        refused(
            "streamId=s&timeoutSeconds=301",
            ErrorCode::InvalidParameter,
            "limit",
        );
        refused(
            "streamId=s&timeoutSeconds=-1",
            ErrorCode::InvalidParameter,
            "whole number",
        );
        refused(
            "streamId=s&timeoutSeconds=1.5",
            ErrorCode::InvalidParameter,
            "whole number",
        );
        refused(
            "streamId=s&streamId=t",
            ErrorCode::InvalidParameter,
            "repeated",
        );
        refused(
            "streamId=s&readFromDb=true",
            ErrorCode::UnknownParameter,
            "readFromDb",
        );
        refused(
            "streamId=s&readFromDB=yes",
            ErrorCode::InvalidParameter,
            "readFromDB",
        );
        refused(
            "streamId=s&dbResumeToken=abc",
            ErrorCode::InvalidParameter,
            "readFromDB=true",
        );
        refused(
            "streamId=s&readFromDB=true",
            ErrorCode::PersistenceNotConfigured,
            "persistence",
        );
        refused("streamId=a%0Ab", ErrorCode::InvalidParameter, "control");
    }

    #[test]
    fn body_writes_the_payload_verbatim() -> Result<(), Box<dyn std::error::Error>> {
        let m = Message::new(
            MessageId::new("id \"q\"")?,
            Bytes::from_static(b"[1.50,2e3]"),
            Timestamp::from_micros(1),
        );
        let body = body(&m);
        assert_eq!(
            std::str::from_utf8(&body)?,
            r#"{"messageUuid":"id \"q\"","message":[1.50,2e3],"timestamp":"1970-01-01T00:00:00.000001Z"}"#
        );
        Ok(())
    }
}
