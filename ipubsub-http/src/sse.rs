//! `GET /api/v1/streams/receive` with `Accept: text/event-stream`: the receive as a stream of
//! Server-Sent Events.
//!
//! The stream repeats the receive its query describes, one event per answer: the event's
//! `data` is exactly what a long-poll with the same query would have answered (one message,
//! or `{"messages": [...]}` with `maxMessages`), and for a log read its `id` is the
//! `dbResumeToken` of the event's last message. Each new receive starts where the previous
//! answer ended, so a log is followed in order and an in-memory stream is one waiting
//! receiver that takes one answer at a time, FIFO with the long-polling ones — and only when
//! the client is ready for it (the next receive starts when hyper asks for the next frame).
//!
//! It ends with an `end` event holding the v1 error answer (`NO_MESSAGE` after
//! `timeoutSeconds` without a message, `SHUTTING_DOWN`, or the receive's own error when its
//! stream moved), after which a client reconnects: `EventSource` does so by itself, sending
//! the last event id as `Last-Event-ID`, which continues a log read right after it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::Frame;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::time::Instant;

use ipubsub_cluster::{Cluster, Route};
use ipubsub_core::{Engine, Log, ResumeToken};

use crate::body::ApiBody;
use crate::error::{ApiError, ErrorCode};
use crate::receive::{self, ReceiveRequest};
use crate::signal::Fired;

/// The media type of an event stream.
pub(crate) const EVENT_STREAM: &str = "text/event-stream";

/// The header a reconnecting `EventSource` sends with the id of the last event it saw.
pub(crate) static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// How long a client waits before reconnecting, told in the stream's first lines (`retry:`).
const RETRY_MS: u32 = 1000;

/// Whether the request asks for an event stream: its `Accept` lists `text/event-stream`
/// (with any parameters, and not with `q=0`).
pub(crate) fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            media.eq_ignore_ascii_case(EVENT_STREAM)
                && !parts.any(|p| {
                    p.strip_prefix("q=")
                        .is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q == 0.0))
                })
        })
}

/// For a log read, continues after `Last-Event-ID` when the client sent one: it is newer than
/// the query's `dbResumeToken`, which a reconnecting `EventSource` repeats from its first
/// request. Ignored for in-memory reads, and when empty (the spec's way to reset it).
pub(crate) fn resume(headers: &HeaderMap, request: &mut ReceiveRequest) -> Result<(), ApiError> {
    let Some(value) = headers.get(&LAST_EVENT_ID) else {
        return Ok(());
    };
    if request.log_after.is_none() || value.is_empty() {
        return Ok(());
    }
    let text = value.to_str().map_err(|_| bad_last_event_id())?;
    let token = ResumeToken::decode(text, &request.stream)
        .map_err(|e| ApiError::new(ErrorCode::InvalidParameter, format!("Last-Event-ID: {e}")))?;
    request.log_after = Some(token.seq());
    Ok(())
}

fn bad_last_event_id() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidParameter,
        "Last-Event-ID must be a dbResumeToken",
    )
}

/// The `200 text/event-stream` answer carrying `events`.
pub(crate) fn response(events: EventStream) -> Response<ApiBody> {
    let mut response = Response::new(ApiBody::events(events));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(EVENT_STREAM));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx (and proxies that copy it) not to buffer the stream.
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

/// What one stream of events receives from, and where it stands.
pub(crate) struct Source {
    pub(crate) engine: Engine,
    pub(crate) log: Option<Log>,
    pub(crate) cluster: Cluster,
    pub(crate) store_timeout: Duration,
    pub(crate) request: ReceiveRequest,
}

/// One event's worth: its data, and its id for a log read.
struct Answer {
    data: Bytes,
    id: Option<String>,
}

impl Source {
    /// The next answer, and this source moved past it.
    async fn next(mut self) -> (Self, Result<Answer, ApiError>) {
        let answer = self.receive().await;
        (self, answer)
    }

    /// How long this source's receive waits for a message when its [`EventStream`] keeps the
    /// time instead of the receive: a plain in-memory receive (no lease, a timeout) waits
    /// without a timer of its own, so that an event costs no timer set up and torn down.
    fn idle_timeout(&self) -> Option<Duration> {
        let request = &self.request;
        let plain = request.log_after.is_none() && request.ack_timeout.is_none();
        (plain && !request.timeout.is_zero()).then_some(request.timeout)
    }

    async fn receive(&mut self) -> Result<Answer, ApiError> {
        let request = &self.request;
        let batch = request.max_messages.is_some();
        if self.idle_timeout().is_some() {
            // Dropped when the stream times out, closes or is cut: a message it was handed
            // then goes back to the front of the stream.
            let first = self.engine.receive(request.stream.clone()).await?;
            let messages = receive::with_more(&self.engine, request, first);
            let data = receive::body(batch, messages.iter().map(|m| (m, None)));
            return Ok(Answer { data, id: None });
        }
        match (request.log_after, &self.log) {
            (None, _) => {
                let data = receive::memory_body(&self.engine, request).await?;
                Ok(Answer { data, id: None })
            }
            (Some(after), Some(log)) => {
                let cluster = &self.cluster;
                let owned = || !matches!(cluster.route(&request.stream), Route::Forward(_));
                let records =
                    receive::run_log(log, request, after, self.store_timeout, owned).await?;
                let tokens: Vec<_> = records
                    .iter()
                    .map(|r| {
                        (
                            &r.message,
                            Some(ResumeToken::new(&r.stream, r.seq).to_string()),
                        )
                    })
                    .collect();
                let id = tokens.last().and_then(|(_, token)| token.clone());
                let data = receive::body(batch, tokens.into_iter());
                if let Some(last) = records.last() {
                    self.request.log_after = Some(last.seq);
                }
                Ok(Answer { data, id })
            }
            // Checked when the request was parsed.
            (Some(_), None) => Err(ApiError::new(
                ErrorCode::PersistenceNotConfigured,
                "readFromDB: persistence is not configured on this node",
            )),
        }
    }
}

type Next = Pin<Box<dyn Future<Output = (Source, Result<Answer, ApiError>)> + Send>>;

/// The body of an event stream: the answers of its [`Source`] as events, a comment every
/// heartbeat interval while none comes, an `end` event when it stops.
///
/// One timer serves the heartbeat and, for a plain in-memory source, the receive timeout
/// ([`Source::idle_timeout`]). An event only notes the time; the timer is moved when it
/// fires and finds that events came meanwhile, so a busy stream touches it once an interval
/// rather than twice an event.
pub(crate) struct EventStream {
    /// `retry:`, sent first (which also gets the answer's headers through buffering proxies).
    preamble: Option<Bytes>,
    next: Option<Next>,
    /// Fires at the earliest time the heartbeat or the idle timeout may be due.
    timer: Pin<Box<tokio::time::Sleep>>,
    interval: Duration,
    /// How long the stream stays open without an event, when this stream keeps that time.
    idle: Option<Duration>,
    /// When the last event was written (or the stream opened).
    answered: Instant,
    /// When the last event or heartbeat was written.
    written: Instant,
    /// Completes when the node starts shutting down.
    closing: Fired,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("done", &self.is_done())
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// The events of `source`, with a heartbeat every `interval`, until `closing` completes
    /// or the source's receive fails.
    pub(crate) fn new(source: Source, interval: Duration, closing: Fired) -> Self {
        let idle = source.idle_timeout();
        let now = Instant::now();
        // What `rearm` would set, with nothing written yet.
        let first_due = now + idle.map_or(interval, |idle| idle.min(interval));
        Self {
            preamble: Some(Bytes::from(format!("retry: {RETRY_MS}\n\n"))),
            next: Some(Box::pin(source.next())),
            timer: Box::pin(tokio::time::sleep_until(first_due)),
            interval,
            idle,
            answered: now,
            written: now,
            closing,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.next.is_none() && self.preamble.is_none()
    }

    /// The next frame: the preamble, then whichever comes first of the node closing, an
    /// answer and a heartbeat.
    pub(crate) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame<Bytes>>> {
        if let Some(preamble) = self.preamble.take() {
            return Poll::Ready(Some(Frame::data(preamble)));
        }
        let Some(next) = self.next.as_mut() else {
            return Poll::Ready(None);
        };
        if Pin::new(&mut self.closing).poll(cx).is_ready() {
            // Dropping the receive puts a message it was handed back in front.
            self.next = None;
            let closing = ApiError::new(
                ErrorCode::ShuttingDown,
                "the node is shutting down; reconnect (to another node)",
            );
            return Poll::Ready(Some(Frame::data(end(&closing))));
        }
        if let Poll::Ready((source, answer)) = next.as_mut().poll(cx) {
            return Poll::Ready(Some(Frame::data(match answer {
                Ok(answer) => {
                    self.next = Some(Box::pin(source.next()));
                    self.answered = Instant::now();
                    self.written = self.answered;
                    event(answer.id.as_deref(), &answer.data)
                }
                Err(e) => {
                    self.next = None;
                    end(&e)
                }
            })));
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if let Some(idle) = self.idle
                && now >= self.answered + idle
            {
                // Dropping the receive puts a message it was handed back in front.
                self.next = None;
                return Poll::Ready(Some(Frame::data(end(&receive::no_message(idle)))));
            }
            if now >= self.written + self.interval {
                self.written = now;
                self.rearm();
                return Poll::Ready(Some(Frame::data(Bytes::from_static(b":\n\n"))));
            }
            // Events came since the timer was set: it moves to the new due time.
            self.rearm();
        }
        Poll::Pending
    }

    /// Sets the timer to the earlier of the heartbeat's and the idle timeout's due times.
    fn rearm(&mut self) {
        let heartbeat = self.written + self.interval;
        let at = match self.idle {
            Some(idle) => heartbeat.min(self.answered + idle),
            None => heartbeat,
        };
        self.timer.as_mut().reset(at);
    }
}

/// The `end` event: the v1 error answer saying why the stream stopped.
fn end(error: &ApiError) -> Bytes {
    let mut out = BytesMut::from(&b"event: end\n"[..]);
    push_data(&mut out, &error.body());
    Bytes::from(out)
}

/// An event with `data` (one `data:` line per line of it) and, when given, `id`.
pub(crate) fn event(id: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 16 + id.map_or(0, |id| id.len() + 5));
    if let Some(id) = id {
        // Tokens are base64url: no line breaks.
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    push_data(&mut out, data);
    Bytes::from(out)
}

/// `data` as `data:` lines, then the blank line that ends the event. A line break inside it
/// (`\r\n`, `\r` or `\n`: only JSON whitespace can hold one) starts a new `data:` line; a
/// client joins them with `\n`.
fn push_data(out: &mut BytesMut, data: &[u8]) {
    let mut rest = data;
    loop {
        out.put_slice(b"data: ");
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(at) => {
                out.put_slice(&rest[..at]);
                out.put_u8(b'\n');
                let skip = if rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[at + skip..];
            }
            None => {
                out.put_slice(rest);
                out.put_slice(b"\n\n");
                return;
            }
        }
    }
}

/// One event as a client sees it.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    /// `event:`, when not the default `message`.
    pub(crate) kind: Option<String>,
    /// The last event id, as `EventSource.lastEventId` would hold it.
    pub(crate) id: Option<String>,
    pub(crate) data: Vec<u8>,
}

/// A client's reading of an event stream, as the HTML standard's parser does it: each event
/// dispatched (comments skipped, `data:` lines joined with `\n`). For tests and the fuzz
/// target.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn parse(stream: &[u8]) -> Vec<Seen> {
    let mut events = Vec::new();
    let (mut kind, mut id, mut data) = (None, None, Vec::new());
    let mut rest = stream;
    while let Some(at) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
        let line = &rest[..at];
        let skip = if rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[at + skip..];
        if line.is_empty() {
            if data.pop().is_some() {
                events.push(Seen {
                    kind: kind.take(),
                    id: id.clone(),
                    data: std::mem::take(&mut data),
                });
            }
            kind = None;
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => continue,
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            b"id" => id = Some(String::from_utf8_lossy(value).into_owned()),
            b"event" => kind = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::BodyExt;
    use ipubsub_cluster::{Node, NodeId};
    use ipubsub_core::{Message, MessageId, SendOptions, StreamId};

    use crate::body::BodyError;
    use crate::config::HttpConfig;

    fn headers(accept: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_str(accept).expect("a header value"),
        );
        headers
    }

    #[test]
    fn an_event_stream_is_wanted_when_accept_lists_it() {
        assert!(wanted(&headers("text/event-stream")));
        assert!(wanted(&headers(
            "application/json, Text/Event-Stream;q=0.5"
        )));
        assert!(!wanted(&headers("text/event-stream;q=0")));
        assert!(!wanted(&headers("application/json")));
        assert!(!wanted(&headers("*/*")));
        assert!(!wanted(&HeaderMap::new()));
    }

    #[test]
    fn a_client_reads_back_the_data_and_id_of_an_event() {
        let cases: [&[u8]; 5] = [
            b"{\"a\":1}",
            b"{\n  \"a\": 1\r\n}",
            b"{\"a\":\r1}\n",
            b" leading space",
            b"",
        ];
        for data in cases {
            let encoded = event(Some("tok"), data);
            let seen = parse(&encoded);
            let mut normalised = String::from_utf8_lossy(data).replace("\r\n", "\n");
            normalised = normalised.replace('\r', "\n");
            assert_eq!(seen.len(), 1, "{encoded:?}");
            assert_eq!(seen[0].data, normalised.as_bytes(), "{encoded:?}");
            assert_eq!(seen[0].id.as_deref(), Some("tok"));
        }
        let ended = parse(&end(&ApiError::new(ErrorCode::NoMessage, "quiet")));
        assert_eq!(ended[0].kind.as_deref(), Some("end"));
        assert!(
            ended[0]
                .data
                .starts_with(b"{\"error\":{\"code\":\"NO_MESSAGE\"")
        );
    }

    fn source(engine: &Engine, timeout: Duration) -> Result<Source, BodyError> {
        let cluster = Cluster::single(Node::new(NodeId::new("n1")?, "127.0.0.1:1".parse()?));
        let query = format!("streamId=s&timeoutSeconds={}", timeout.as_secs());
        let request =
            receive::parse(Some(&query), &HttpConfig::default(), false).map_err(|e| e.message)?;
        Ok(Source {
            engine: engine.clone(),
            log: None,
            cluster,
            store_timeout: Duration::from_secs(1),
            request,
        })
    }

    /// Stream `s` of `engine` as events: a 30 s timeout, a heartbeat every 10 s.
    fn followed(engine: &Engine, closing: &crate::signal::Signal) -> Result<ApiBody, BodyError> {
        let source = source(engine, Duration::from_secs(30))?;
        let events = EventStream::new(source, Duration::from_secs(10), closing.fired());
        Ok(ApiBody::events(events))
    }

    async fn send(engine: &Engine, id: &str) -> Result<(), BodyError> {
        let message = Message::new(MessageId::new(id)?, Bytes::from_static(b"1"), engine.now());
        engine
            .send(StreamId::new("s")?, message, SendOptions::default())
            .await?;
        Ok(())
    }

    /// The next frame of `body`, which must be data.
    async fn next_data(body: &mut ApiBody) -> Result<Bytes, BodyError> {
        let frame = body.frame().await.ok_or("ended")??;
        Ok(frame.into_data().map_err(|_| "not data")?)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_sends_each_message_then_heartbeats_then_ends_after_its_timeout()
    -> Result<(), BodyError> {
        let engine = Engine::default();
        let closing = crate::signal::Signal::default();
        let mut body = followed(&engine, &closing)?;
        assert_eq!(next_data(&mut body).await?, "retry: 1000\n\n");
        send(&engine, "m1").await?;
        send(&engine, "m2").await?;
        for id in ["m1", "m2"] {
            let seen = parse(&next_data(&mut body).await?);
            assert!(
                seen[0]
                    .data
                    .starts_with(format!("{{\"messageUuid\":\"{id}\"").as_bytes())
            );
        }
        let started = tokio::time::Instant::now();
        assert_eq!(next_data(&mut body).await?, ":\n\n");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(next_data(&mut body).await?, ":\n\n");
        let ended = parse(&next_data(&mut body).await?);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(30),
            "the timeout counts from m2"
        );
        assert_eq!(ended[0].kind.as_deref(), Some("end"));
        assert!(body.frame().await.is_none());
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn events_put_off_the_heartbeat_and_the_timeout_without_resetting_a_timer()
    -> Result<(), BodyError> {
        let engine = Engine::default();
        let closing = crate::signal::Signal::default();
        let mut body = followed(&engine, &closing)?;
        assert_eq!(next_data(&mut body).await?, "retry: 1000\n\n");
        // An event every 6 s for 42 s: past the 30 s timeout and four heartbeat intervals
        // of the stream's start, with never 10 s without an event.
        for i in 0..7 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            send(&engine, &format!("m{i}")).await?;
            let seen = parse(&next_data(&mut body).await?);
            assert_eq!(
                seen.len(),
                1,
                "event {i} came alone, no heartbeat before it"
            );
        }
        let started = tokio::time::Instant::now();
        assert_eq!(next_data(&mut body).await?, ":\n\n");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(next_data(&mut body).await?, ":\n\n");
        let ended = parse(&next_data(&mut body).await?);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(ended[0].kind.as_deref(), Some("end"));
        assert!(ended[0].data.windows(10).any(|w| w == b"NO_MESSAGE"));
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_when_the_node_closes_and_leaves_the_queue_whole() -> Result<(), BodyError>
    {
        let engine = Engine::default();
        let closing = crate::signal::Signal::default();
        let mut body = followed(&engine, &closing)?;
        body.frame().await.ok_or("ended")??;
        let waiting = tokio::time::timeout(Duration::from_secs(1), body.frame()).await;
        assert!(waiting.is_err(), "an event came from an empty stream");
        closing.fire();
        send(&engine, "m1").await?;
        let frame = body.frame().await.ok_or("ended")??;
        let ended = parse(frame.data_ref().ok_or("not data")?);
        assert_eq!(ended[0].kind.as_deref(), Some("end"));
        assert!(ended[0].data.windows(13).any(|w| w == b"SHUTTING_DOWN"));
        assert!(body.frame().await.is_none());
        assert_eq!(
            engine
                .try_receive(&StreamId::new("s")?)
                .map(|m| m.id().as_str().to_owned()),
            Some("m1".to_owned()),
            "the message sent as the stream closed stays for another receiver"
        );
        Ok(())
    }
}
