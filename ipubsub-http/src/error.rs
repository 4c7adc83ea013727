//! [`ApiError`]: every failure the API answers, with its status and stable error code.
//!
//! This is the only place where errors become HTTP statuses. A code, once published, keeps its
//! meaning for good; new failures get new codes.

use bytes::Bytes;
use hyper::StatusCode;
use ipubsub_core::{AppendError, IdError, ReadError, ReceiveError, SendError};

use crate::metrics::Limit;

/// The stable, machine-readable error codes of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the body is not JSON, or not a JSON object.
    InvalidJson,
    /// 400: a required body field is missing.
    MissingField,
    /// 400: the body has a field the API does not know (a typo such as `writeToDb`).
    UnknownField,
    /// 400: a body field has the wrong type or value.
    InvalidField,
    /// 400: a required query parameter is missing.
    MissingParameter,
    /// 400: the query has a parameter the API does not know.
    UnknownParameter,
    /// 400: a query parameter has a bad value, or is repeated.
    InvalidParameter,
    /// 400: the request needs the persistent log, which this node does not have.
    PersistenceNotConfigured,
    /// 400: the request needs the persistent log, and this node keeps none because its store
    /// is node-local while it is one of a multi-node cluster; the message names the fix.
    PersistenceNotShared,
    /// 401: the node needs a bearer token and the request has none, or an unknown one.
    Unauthorized,
    /// 403: the token may not do this (publish, subscribe, or use this stream), or a request
    /// claims to be forwarded without the cluster secret.
    Forbidden,
    /// 404: no such endpoint.
    NotFound,
    /// 405: the endpoint exists, the method does not.
    MethodNotAllowed,
    /// 408: the body did not arrive within the configured time.
    BodyTimeout,
    /// 413: the body is larger than the configured limit.
    BodyTooLarge,
    /// 429: the token is over its request rate; retry after `Retry-After` seconds.
    RateLimited,
    /// 424: a blocking send gave up while the stream stayed full.
    StreamFull,
    /// 424: a send to a stream without buffer found no receiver in time.
    NoReceiver,
    /// 424: a receive found no message in time.
    NoMessage,
    /// 424: the node owning the stream could not be reached.
    OwnerUnavailable,
    /// 503: the node holds its maximum number of streams.
    TooManyStreams,
    /// 503: the node holds its maximum number of waiting requests.
    TooManyWaiters,
    /// 503: the node holds its maximum number of client connections; the connection is
    /// closed after this answer.
    TooManyConnections,
    /// 503: the node is shutting down.
    ShuttingDown,
    /// 503: the message store failed or did not answer in time; the request may be retried.
    StoreUnavailable,
    /// 503: another node took the stream over (ownership moved) before the message was
    /// written, and the store refused it: it was not written. Retry after `Retry-After`.
    StreamMoved,
    /// 503 (`GET /ready` only): the node should not get traffic now; the message says why.
    NotReady,
    /// 503: the log's queue of appends waiting for the store is full (`log.max_queued`,
    /// `log.max_queued_bytes`): the message was not taken. Retry after `Retry-After`.
    LogQueueFull,
    /// 503: the node's in-memory messages fill its memory budget
    /// (`engine.max_buffered_bytes`): the message was not accepted. Retry after
    /// `Retry-After`, once receivers have taken some.
    MemoryLimit,
    /// 400: the request is not valid HTTP/1.1 (a bad request line or header); the
    /// connection is closed after this answer.
    MalformedRequest,
    /// 431: the request line and headers are larger than the node reads (or have too many
    /// fields); the connection is closed after this answer.
    HeadersTooLarge,
    /// 400, for one receipt handle of an `ack`, `nack` or `extend`: not a handle a receive
    /// gave.
    InvalidReceiptHandle,
    /// 400, for one receipt handle: it was given for another stream.
    ReceiptHandleOfOtherStream,
    /// 410, for one receipt handle: its delivery is no longer in flight (its lease ended and
    /// the message went back to its stream, or it was acknowledged or returned already, or
    /// its stream moved to another node, which delivers it again).
    NotInFlight,
    /// 500: a bug; the message says what.
    Internal,
}

impl ErrorCode {
    /// The code as it appears in error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "INVALID_JSON",
            Self::MissingField => "MISSING_FIELD",
            Self::UnknownField => "UNKNOWN_FIELD",
            Self::InvalidField => "INVALID_FIELD",
            Self::MissingParameter => "MISSING_PARAMETER",
            Self::UnknownParameter => "UNKNOWN_PARAMETER",
            Self::InvalidParameter => "INVALID_PARAMETER",
            Self::PersistenceNotConfigured => "PERSISTENCE_NOT_CONFIGURED",
            Self::PersistenceNotShared => "PERSISTENCE_NOT_SHARED",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::BodyTimeout => "BODY_TIMEOUT",
            Self::BodyTooLarge => "BODY_TOO_LARGE",
            Self::RateLimited => "RATE_LIMITED",
            Self::StreamFull => "STREAM_FULL",
            Self::NoReceiver => "NO_RECEIVER",
            Self::NoMessage => "NO_MESSAGE",
            Self::OwnerUnavailable => "OWNER_UNAVAILABLE",
            Self::TooManyStreams => "TOO_MANY_STREAMS",
            Self::TooManyWaiters => "TOO_MANY_WAITERS",
            Self::TooManyConnections => "TOO_MANY_CONNECTIONS",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::StoreUnavailable => "STORE_UNAVAILABLE",
            Self::StreamMoved => "STREAM_MOVED",
            Self::NotReady => "NOT_READY",
            Self::LogQueueFull => "LOG_QUEUE_FULL",
            Self::MemoryLimit => "MEMORY_LIMIT",
            Self::MalformedRequest => "MALFORMED_REQUEST",
            Self::HeadersTooLarge => "HEADERS_TOO_LARGE",
            Self::InvalidReceiptHandle => "INVALID_RECEIPT_HANDLE",
            Self::ReceiptHandleOfOtherStream => "RECEIPT_HANDLE_OF_OTHER_STREAM",
            Self::NotInFlight => "NOT_IN_FLIGHT",
            Self::Internal => "INTERNAL",
        }
    }

    /// The HTTP status that carries the code.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidJson
            | Self::MissingField
            | Self::UnknownField
            | Self::InvalidField
            | Self::MissingParameter
            | Self::UnknownParameter
            | Self::InvalidParameter
            | Self::PersistenceNotConfigured
            | Self::PersistenceNotShared
            | Self::MalformedRequest
            | Self::InvalidReceiptHandle
            | Self::ReceiptHandleOfOtherStream => StatusCode::BAD_REQUEST,
            Self::NotInFlight => StatusCode::GONE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::StreamFull | Self::NoReceiver | Self::NoMessage | Self::OwnerUnavailable => {
                StatusCode::FAILED_DEPENDENCY
            }
            Self::TooManyStreams
            | Self::TooManyWaiters
            | Self::TooManyConnections
            | Self::ShuttingDown
            | Self::StoreUnavailable
            | Self::StreamMoved
            | Self::NotReady
            | Self::LogQueueFull
            | Self::MemoryLimit => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answer: a code and a sentence for the person reading it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
    /// The whole cause chain, for the operator's log (not the client's answer), logged with
    /// the request id by the handler that answers the request.
    pub(crate) log_cause: Option<String>,
    /// The configured limit this error reports a hit of, for metrics.
    pub(crate) limit: Option<Limit>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            log_cause: None,
            limit: None,
        }
    }

    /// The error, counted as a hit of `limit`.
    pub(crate) fn hit(mut self, limit: Limit) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The error, with `cause` to be logged where the request is answered.
    fn logged(mut self, cause: &dyn std::error::Error) -> Self {
        self.log_cause = Some(chain(cause));
        self
    }

    /// The JSON body: `{"error": {"code": "...", "message": "..."}}`.
    pub fn body(&self) -> Bytes {
        let body = serde_json::json!({
            "error": { "code": self.code.as_str(), "message": self.message }
        });
        Bytes::from(body.to_string())
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        let code = match e {
            SendError::StreamFull => ErrorCode::StreamFull,
            SendError::NoReceiver => ErrorCode::NoReceiver,
            SendError::TooManyStreams { .. } => ErrorCode::TooManyStreams,
            SendError::TooManyWaiters { .. } => ErrorCode::TooManyWaiters,
            SendError::ShuttingDown => ErrorCode::ShuttingDown,
            SendError::Moved => ErrorCode::StreamMoved,
            SendError::MemoryLimit { .. } => ErrorCode::MemoryLimit,
            _ => ErrorCode::Internal,
        };
        Self::new(code, e.to_string()).with_limit_of_code()
    }
}

impl From<ReceiveError> for ApiError {
    fn from(e: ReceiveError) -> Self {
        let code = match e {
            ReceiveError::TooManyStreams { .. } => ErrorCode::TooManyStreams,
            ReceiveError::TooManyWaiters { .. } => ErrorCode::TooManyWaiters,
            // A waiting receive that the shutdown answers simply got nothing in time; the
            // client polls again, elsewhere.
            ReceiveError::ShuttingDown => ErrorCode::NoMessage,
            // So is one whose stream moved: its next poll reaches the new owner.
            ReceiveError::Moved => ErrorCode::NoMessage,
            _ => ErrorCode::Internal,
        };
        Self::new(code, e.to_string()).with_limit_of_code()
    }
}

impl ApiError {
    /// Tags the node-wide limits that an engine error code stands for.
    fn with_limit_of_code(self) -> Self {
        match self.code {
            ErrorCode::TooManyStreams => self.hit(Limit::Streams),
            ErrorCode::TooManyWaiters => self.hit(Limit::Waiters),
            ErrorCode::MemoryLimit => self.hit(Limit::Memory),
            _ => self,
        }
    }
}

/// A refused stream id, counted as a limit hit when it was too long.
pub(crate) fn stream_id_error(code: ErrorCode, e: &IdError) -> ApiError {
    let error = ApiError::new(code, format!("streamId {e}"));
    if matches!(e, IdError::TooLong { .. }) {
        error.hit(Limit::StreamIdLength)
    } else {
        error
    }
}

/// `error: cause: cause…`, for the log: operators need the driver's words, clients do not.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::ShuttingDown => Self::new(ErrorCode::ShuttingDown, e.to_string()),
            AppendError::Fenced => Self::new(ErrorCode::StreamMoved, e.to_string()),
            AppendError::TooManyStreams { .. } => {
                Self::new(ErrorCode::TooManyStreams, e.to_string()).hit(Limit::LogStreams)
            }
            AppendError::QueueFull { .. } => {
                Self::new(ErrorCode::LogQueueFull, e.to_string()).hit(Limit::LogQueue)
            }
            AppendError::Store(cause) => Self::new(
                ErrorCode::StoreUnavailable,
                format!("the message was not stored: {cause}"),
            )
            .logged(&cause),
            _ => Self::new(ErrorCode::StoreUnavailable, e.to_string()),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::TooManyWaiters { .. } => {
                Self::new(ErrorCode::TooManyWaiters, e.to_string()).hit(Limit::Waiters)
            }
            ReadError::TooManyStreams { .. } => {
                Self::new(ErrorCode::TooManyStreams, e.to_string()).hit(Limit::LogStreams)
            }
            ReadError::ShuttingDown => Self::new(ErrorCode::ShuttingDown, e.to_string()),
            ReadError::Store(cause) => Self::new(
                ErrorCode::StoreUnavailable,
                format!("the log could not be read: {cause}"),
            )
            .logged(&cause),
            _ => Self::new(ErrorCode::StoreUnavailable, e.to_string()),
        }
    }
}

/// Asserts that parsing `input` was refused with `code` and a message mentioning `needle`.
#[cfg(test)]
#[track_caller]
pub(crate) fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, ApiError>,
    input: &str,
    code: ErrorCode,
    needle: &str,
) {
    match result {
        Ok(r) => panic!("accepted {input}: {r:?}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_in_the_openapi_file() {
        let spec = include_str!("../openapi.yaml");
        let codes = [
            ErrorCode::InvalidReceiptHandle,
            ErrorCode::ReceiptHandleOfOtherStream,
            ErrorCode::NotInFlight,
            ErrorCode::InvalidJson,
            ErrorCode::MissingField,
            ErrorCode::UnknownField,
            ErrorCode::InvalidField,
            ErrorCode::MissingParameter,
            ErrorCode::UnknownParameter,
            ErrorCode::InvalidParameter,
            ErrorCode::PersistenceNotConfigured,
            ErrorCode::PersistenceNotShared,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::BodyTimeout,
            ErrorCode::BodyTooLarge,
            ErrorCode::RateLimited,
            ErrorCode::StreamFull,
            ErrorCode::NoReceiver,
            ErrorCode::NoMessage,
            ErrorCode::OwnerUnavailable,
            ErrorCode::TooManyStreams,
            ErrorCode::TooManyWaiters,
            ErrorCode::TooManyConnections,
            ErrorCode::ShuttingDown,
            ErrorCode::StoreUnavailable,
            ErrorCode::StreamMoved,
            ErrorCode::NotReady,
            ErrorCode::LogQueueFull,
            ErrorCode::MemoryLimit,
            ErrorCode::MalformedRequest,
            ErrorCode::HeadersTooLarge,
            ErrorCode::Internal,
        ];
        for code in codes {
            assert!(
                spec.contains(&format!("- {}\n", code.as_str())),
                "{} is not in openapi.yaml",
                code.as_str()
            );
            // The status in the spec's description of that status's responses; a receipt
            // handle's error is answered inside a 200, among the statuses of its results.
            let per_handle = matches!(
                code,
                ErrorCode::InvalidReceiptHandle
                    | ErrorCode::ReceiptHandleOfOtherStream
                    | ErrorCode::NotInFlight
            );
            let status = code.status().as_u16();
            assert!(
                if per_handle {
                    [400, 410].contains(&status)
                        && spec.contains("status: {type: integer, enum: [200, 400, 410]}")
                } else {
                    spec.contains(&format!("\"{status}\""))
                },
                "status of {}",
                code.as_str()
            );
        }
    }

    #[test]
    fn body_is_the_documented_shape() -> Result<(), serde_json::Error> {
        let e = ApiError::new(ErrorCode::StreamFull, "full \"quoted\"");
        let v: serde_json::Value = serde_json::from_slice(&e.body())?;
        assert_eq!(v["error"]["code"], "STREAM_FULL");
        assert_eq!(v["error"]["message"], "full \"quoted\"");
        assert_eq!(e.code.status(), StatusCode::FAILED_DEPENDENCY);
        Ok(())
    }
}
