//! `GET /api/v1/streams/receive`: parsing of the query, the long-poll, the response body.

use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use ipubsub_core::{Engine, Leased, Log, LogRecord, Message, ResumeToken, Seq, StreamId};

use crate::config::HttpConfig;
use crate::error::{ApiError, ErrorCode, stream_id_error};
use crate::metrics::Limit;

/// A validated receive.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ReceiveRequest {
    pub(crate) stream: StreamId,
    pub(crate) timeout: Duration,
    /// `maxMessages`, when given: the answer is then `{"messages": [...]}`.
    pub(crate) max_messages: Option<usize>,
    /// `Some(position)` to read the persistent log after `position`; `None` for the queue.
    pub(crate) log_after: Option<Seq>,
    /// `ackTimeoutSeconds`: messages are taken under a lease this long.
    pub(crate) ack_timeout: Option<Duration>,
}

/// Parses and validates the receive query string. `persistence` tells whether this node has
/// a log.
pub(crate) fn parse(
    query: Option<&str>,
    config: &HttpConfig,
    persistence: bool,
) -> Result<ReceiveRequest, ApiError> {
    let mut stream_id = None;
    let mut timeout = None;
    let mut read_from_db = None;
    let mut token = None;
    let mut max_messages = None;
    let mut ack_timeout = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match key.as_ref() {
            "streamId" => &mut stream_id,
            "timeoutSeconds" => &mut timeout,
            "readFromDB" => &mut read_from_db,
            "dbResumeToken" => &mut token,
            "maxMessages" => &mut max_messages,
            "ackTimeoutSeconds" => &mut ack_timeout,
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
        .map_err(|e| stream_id_error(ErrorCode::InvalidParameter, &e))?;

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
                )
                .hit(Limit::Timeout));
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
    if read_from_db && !persistence {
        return Err(config.no_persistence("readFromDB"));
    }
    let log_after = match (read_from_db, token) {
        (false, _) => None,
        (true, None) => Some(Seq::ZERO),
        (true, Some(text)) => {
            let token = ResumeToken::decode(&text, &stream)
                .map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e.to_string()))?;
            Some(token.seq())
        }
    };
    let max_messages = match max_messages {
        None => None,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=config.max_messages).contains(&n) => Some(n),
            parsed => {
                let error = ApiError::new(
                    ErrorCode::InvalidParameter,
                    format!(
                        "maxMessages must be 1 to {}, got `{text}`",
                        config.max_messages
                    ),
                );
                let over = parsed.is_ok_and(|n| n > config.max_messages);
                return Err(if over {
                    error.hit(Limit::MaxMessages)
                } else {
                    error
                });
            }
        },
    };
    let ack_timeout = match ack_timeout {
        None => None,
        Some(text) => {
            let max = config.max_ack_timeout.as_secs();
            match text.parse::<u64>() {
                Ok(secs) if (1..=max).contains(&secs) => Some(Duration::from_secs(secs)),
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidParameter,
                        format!("ackTimeoutSeconds must be 1 to {max}, got `{text}`"),
                    ));
                }
            }
        }
    };
    if ack_timeout.is_some() && log_after.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "ackTimeoutSeconds applies to in-memory streams; a log reader keeps its own place with dbResumeToken",
        ));
    }
    Ok(ReceiveRequest {
        stream,
        timeout,
        max_messages,
        log_after,
        ack_timeout,
    })
}

/// Receives from the in-memory queue: the next message (then up to `max - 1` more that are
/// already there), or `NO_MESSAGE` after the timeout.
/// The answer of an in-memory receive served here: its messages, each with its receipt
/// handle when the receive asked for acknowledgements.
pub(crate) async fn memory_body(
    engine: &Engine,
    request: &ReceiveRequest,
) -> Result<Bytes, ApiError> {
    let batch = request.max_messages.is_some();
    let Some(lease) = request.ack_timeout else {
        let messages = run_memory(engine, request).await?;
        return Ok(body(batch, messages.iter().map(|m| (m, None))));
    };
    let leased = run_leased(engine, request, lease).await?;
    let mut out = Vec::with_capacity(192 * leased.len());
    if batch {
        out.extend_from_slice(b"{\"messages\":[");
    }
    for (i, item) in leased.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_message(&mut out, &item.message, None, Some(item));
    }
    if batch {
        out.extend_from_slice(b"]}");
    }
    Ok(Bytes::from(out))
}

/// The answer of a receive that waited `timeout` for nothing.
pub(crate) fn no_message(timeout: Duration) -> ApiError {
    ApiError::new(
        ErrorCode::NoMessage,
        format!("no message arrived within {} s", timeout.as_secs()),
    )
}

/// Runs an acknowledged in-memory receive: the first message waited for, more taken if
/// there are (`maxMessages`), every one under a lease of `lease`.
async fn run_leased(
    engine: &Engine,
    request: &ReceiveRequest,
    lease: Duration,
) -> Result<Vec<Leased>, ApiError> {
    let no_message = || no_message(request.timeout);
    let max = request.max_messages.unwrap_or(1);
    if request.timeout.is_zero() {
        if engine.is_closed() {
            return Err(ApiError::new(
                ErrorCode::ShuttingDown,
                "the node is shutting down",
            ));
        }
        let taken = engine.try_receive_leased(&request.stream, lease, max);
        return if taken.is_empty() {
            Err(no_message())
        } else {
            Ok(taken)
        };
    }
    let mut receive = pin!(engine.receive_leased(request.stream.clone(), lease));
    let first = match tokio::time::timeout(request.timeout, receive.as_mut()).await {
        Ok(result) => result?,
        Err(_elapsed) => receive.abandon().ok_or_else(no_message)?,
    };
    let mut taken = vec![first];
    if max > 1 {
        taken.extend(engine.try_receive_leased(&request.stream, lease, max - 1));
    }
    Ok(taken)
}

pub(crate) async fn run_memory(
    engine: &Engine,
    request: &ReceiveRequest,
) -> Result<Vec<Message>, ApiError> {
    let first = receive_one(engine, request).await?;
    Ok(with_more(engine, request, first))
}

/// `first`, and with `maxMessages` what else the stream holds now, up to that many in all.
pub(crate) fn with_more(engine: &Engine, request: &ReceiveRequest, first: Message) -> Vec<Message> {
    let mut messages = vec![first];
    let more = request.max_messages.unwrap_or(1) - 1;
    if more > 0 {
        messages.extend(engine.try_receive_many(&request.stream, more));
    }
    messages
}

/// Reads the persistent log after the request's position, waiting at the tail for the next
/// commit (woken in memory) until the timeout. A reader woken because its stream moved to
/// another node (`owned` turned false) is answered `NO_MESSAGE` at once: its next poll
/// reaches the new owner, and reading here would take the stream back.
///
/// A move this node never saw (another node's view left it out for a while, or it was
/// paused) wakes nobody here, so a waiting reader also reads again every
/// [`Log::tenure_check`]: one such read per stream and check looks at the store, finds the
/// other node's records past this node's end and hands them over.
pub(crate) async fn run_log(
    log: &Log,
    request: &ReceiveRequest,
    after: Seq,
    store_timeout: Duration,
    owned: impl Fn() -> bool,
) -> Result<Vec<LogRecord>, ApiError> {
    let deadline = tokio::time::Instant::now() + request.timeout;
    let limit = request.max_messages.unwrap_or(1);
    let no_message = || no_message(request.timeout);
    loop {
        let read = match tokio::time::timeout(
            store_timeout,
            log.read(&request.stream, after, limit),
        )
        .await
        {
            Ok(read) => read?,
            Err(_elapsed) => {
                return Err(ApiError::new(
                    ErrorCode::StoreUnavailable,
                    "the message store did not answer in time",
                ));
            }
        };
        if !read.records.is_empty() {
            return Ok(read.records);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(no_message());
        }
        let look_again = deadline.min(tokio::time::Instant::now() + log.tenure_check());
        match tokio::time::timeout_at(look_again, log.wait_past(&request.stream, read.watermark))
            .await
        {
            Ok(Ok(true)) if owned() => continue,
            Ok(Ok(_)) => return Err(no_message()),
            Ok(Err(e)) => return Err(e.into()),
            Err(_elapsed) if look_again < deadline && owned() => continue,
            Err(_elapsed) => return Err(no_message()),
        }
    }
}

async fn receive_one(engine: &Engine, request: &ReceiveRequest) -> Result<Message, ApiError> {
    let no_message = || no_message(request.timeout);
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

/// The receive body. Without `maxMessages`, the v1 shape for one message:
/// `{"messageUuid", "message", "timestamp"[, "dbResumeToken"]}`; with it,
/// `{"messages": [...]}` of that shape. Message bytes are written as they were posted.
pub(crate) fn body<'a>(
    batch: bool,
    items: impl ExactSizeIterator<Item = (&'a Message, Option<String>)>,
) -> Bytes {
    let mut out = Vec::with_capacity(128 * items.len());
    if batch {
        out.extend_from_slice(b"{\"messages\":[");
    }
    for (i, (message, token)) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_message(&mut out, message, token.as_deref(), None);
    }
    if batch {
        out.extend_from_slice(b"]}");
    }
    Bytes::from(out)
}

fn push_message(out: &mut Vec<u8>, message: &Message, token: Option<&str>, lease: Option<&Leased>) {
    out.extend_from_slice(b"{\"messageUuid\":");
    push_json_string(out, message.id().as_str());
    out.extend_from_slice(b",\"message\":");
    out.extend_from_slice(message.payload());
    out.extend_from_slice(b",\"timestamp\":\"");
    message.timestamp().push_rfc3339(out);
    out.push(b'"');
    if let Some(token) = token {
        // Tokens are base64url: nothing to escape.
        out.extend_from_slice(b",\"dbResumeToken\":\"");
        out.extend_from_slice(token.as_bytes());
        out.push(b'"');
    }
    if let Some(lease) = lease {
        // 40 hex digits: no escaping needed.
        out.extend_from_slice(b",\"receiptHandle\":\"");
        out.extend_from_slice(&lease.handle.encode());
        out.extend_from_slice(b"\",\"deliveryCount\":");
        push_number(out, u64::from(lease.deliveries));
    }
    out.push(b'}');
}

/// `n` in decimal.
fn push_number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
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
        parse(Some(q), &HttpConfig::default(), false)
    }

    #[track_caller]
    fn refused(q: &str, code: ErrorCode, needle: &str) {
        crate::error::assert_refused(parse_q(q), q, code, needle);
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
    fn an_acknowledged_receive_asks_for_a_lease_within_the_limit() -> Result<(), ApiError> {
        let r = parse_q("streamId=s&ackTimeoutSeconds=30&maxMessages=10")?;
        assert_eq!(r.ack_timeout, Some(Duration::from_secs(30)));
        assert_eq!(parse_q("streamId=s")?.ack_timeout, None);
        assert!(parse_q("streamId=s&ackTimeoutSeconds=43200").is_ok());
        for bad in ["0", "43201", "-1", "1.5", ""] {
            refused(
                &format!("streamId=s&ackTimeoutSeconds={bad}"),
                ErrorCode::InvalidParameter,
                "1 to 43200",
            );
        }
        let log = parse(
            Some("streamId=s&readFromDB=true&ackTimeoutSeconds=5"),
            &HttpConfig::default(),
            true,
        );
        crate::error::assert_refused(log, "log", ErrorCode::InvalidParameter, "in-memory");
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
    fn log_reads_take_a_token_of_their_own_stream() -> Result<(), Box<dyn std::error::Error>> {
        let config = HttpConfig::default();
        let parse_log = |q: &str| parse(Some(q), &config, true);
        assert_eq!(
            parse_log("streamId=s&readFromDB=true")?.log_after,
            Some(Seq::ZERO)
        );
        let token = ResumeToken::new(&StreamId::new("s")?, Seq::new(42)).to_string();
        let r = parse_log(&format!(
            "streamId=s&readFromDB=true&dbResumeToken={token}&maxMessages=10"
        ))?;
        assert_eq!(
            (r.log_after, r.max_messages),
            (Some(Seq::new(42)), Some(10))
        );
        let other = parse_log(&format!("streamId=t&readFromDB=true&dbResumeToken={token}"))
            .err()
            .ok_or("accepted")?;
        assert!(other.message.contains("another stream"), "{other}");
        let garbage = parse_log("streamId=s&readFromDB=true&dbResumeToken=zzz")
            .err()
            .ok_or("accepted")?;
        assert!(garbage.message.contains("malformed"), "{garbage}");
        for bad in ["0", "1001", "x", "-1"] {
            assert!(
                parse_log(&format!("streamId=s&maxMessages={bad}")).is_err(),
                "{bad}"
            );
        }
        Ok(())
    }

    /// Node A waits at the tail of a stream it holds; node B takes the stream and appends,
    /// and A's view of the ring never changes (nothing wakes A's reader). The reader gets
    /// B's message at its next look, well before its timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_waiting_on_a_node_that_lost_its_stream_unseen_gets_the_other_nodes_message()
    -> Result<(), Box<dyn std::error::Error>> {
        use std::sync::Arc;

        use ipubsub_core::{LogConfig, MessageStore};
        use ipubsub_storage::MemoryStore;

        let store: Arc<dyn MessageStore> = Arc::new(MemoryStore::new());
        let mut config = LogConfig::default();
        config.tenure_check = Duration::from_millis(200);
        let (a, b) = (
            Log::new(store.clone(), config.clone()),
            Log::new(store, config),
        );
        let workers = [a.clone(), b.clone()]
            .map(|log| tokio::spawn(async move { log.run_commit_worker().await }));
        let stream = StreamId::new("unseen")?;
        let message = |id: &str| -> Result<Message, Box<dyn std::error::Error>> {
            Ok(Message::new(
                MessageId::new(id)?,
                Bytes::from_static(b"1"),
                Timestamp::now(),
            ))
        };
        let ttl = Duration::from_secs(60);
        let a1 = a.append(stream.clone(), message("a1")?, ttl).await?;
        let request = ReceiveRequest {
            stream: stream.clone(),
            timeout: Duration::from_secs(20),
            max_messages: None,
            log_after: Some(a1),
            ack_timeout: None,
        };
        let reader = tokio::spawn({
            let a = a.clone();
            async move { run_log(&a, &request, a1, Duration::from_secs(5), || true).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!reader.is_finished(), "nothing new yet: the reader waits");
        b.append(stream.clone(), message("b1")?, ttl).await?;
        let records = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .map_err(|_| "the reader still waited 10 s after B's append")??
            .map_err(|e| e.to_string())?;
        let ids: Vec<_> = records.iter().map(|r| r.message.id().as_str()).collect();
        assert_eq!(ids, ["b1"]);
        for log in [&a, &b] {
            log.close();
        }
        for worker in workers {
            worker.await?;
        }
        Ok(())
    }

    #[test]
    fn batch_body_lists_messages_with_tokens() -> Result<(), Box<dyn std::error::Error>> {
        let m = Message::new(
            MessageId::new("a")?,
            Bytes::from_static(b"1"),
            Timestamp::from_micros(0),
        );
        let body = body(
            true,
            [(&m, Some("T1".to_owned())), (&m, Some("T2".to_owned()))].into_iter(),
        );
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        assert_eq!(v["messages"][1]["dbResumeToken"], "T2");
        assert_eq!(v["messages"][0]["message"], 1);
        Ok(())
    }

    #[test]
    fn body_writes_the_payload_verbatim() -> Result<(), Box<dyn std::error::Error>> {
        let m = Message::new(
            MessageId::new("id \"q\"")?,
            Bytes::from_static(b"[1.50,2e3]"),
            Timestamp::from_micros(1),
        );
        let body = body(false, std::iter::once((&m, None)));
        assert_eq!(
            std::str::from_utf8(&body)?,
            r#"{"messageUuid":"id \"q\"","message":[1.50,2e3],"timestamp":"1970-01-01T00:00:00.000001Z"}"#
        );
        Ok(())
    }
}
