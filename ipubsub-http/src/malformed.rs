//! HTTP/1.1 connections whose request cannot be parsed get an answer: `400 MALFORMED_REQUEST`
//! or `431 HEADERS_TOO_LARGE`, with the JSON error body, then the connection is closed.
//!
//! hyper writes a bodiless 400 or 431 of its own for a request head it cannot parse, but with
//! `pipeline_flush` on (answers to pipelined requests leave in one write) it never flushes
//! it: the bad bytes stay in its read buffer, and a flush waits for that buffer to empty. So
//! [`drive`] runs hyper's connection itself (`poll_without_shutdown`), and when it ends with a
//! parse error takes the socket back and writes the answer. It does so only when every
//! earlier answer on the connection has reached the socket: hyper's unflushed buffer is lost
//! when the socket is taken back, so after pipelined requests whose answers were still
//! buffered the connection is closed unanswered, as before (the client would otherwise take
//! the error for the answer to an earlier request). [`Progress`] tracks that.
//!
//! Before closing, the rest of what the client sent is read and dropped for a moment (at most
//! [`LINGER`] and [`LINGER_BYTES`]): closing a socket with unread data resets the connection,
//! and a reset can destroy the answer before the client reads it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::{ApiError, ErrorCode};
use crate::pacing::Pacing;

/// How long the unread rest of a malformed request is read and dropped after the answer.
const LINGER: Duration = Duration::from_secs(1);

/// How much of it at most.
const LINGER_BYTES: usize = 4 << 20;

/// How long writing the answer may take.
const WRITE_LIMIT: Duration = Duration::from_secs(2);

/// What has happened on one connection: how many requests hyper handed to the service, how
/// many of them had been handed over when the connection last wrote to its socket, and
/// whether a request's body could not be decoded.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    dispatched: AtomicU64,
    written_after: AtomicU64,
    body_failed: AtomicBool,
    /// What the connection's answers handed out and its socket wrote.
    pub(crate) pacing: Arc<Pacing>,
}

impl Progress {
    /// Called by the service for each request hyper hands it.
    pub(crate) fn dispatched(&self) {
        self.dispatched.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the request in flight is the only one whose answer has not reached the
    /// socket (it was dispatched, nothing was written since; every earlier answer was).
    fn only_the_last_answer_unwritten(&self) -> bool {
        self.written_after.load(Ordering::Relaxed) + 1 == self.dispatched.load(Ordering::Relaxed)
    }

    /// Whether every answer hyper made has reached the socket: the connection wrote after
    /// the last request was dispatched (hyper answers requests one at a time, in order), or
    /// no request was dispatched at all.
    fn all_answers_written(&self) -> bool {
        self.written_after.load(Ordering::Relaxed) == self.dispatched.load(Ordering::Relaxed)
    }
}

/// A socket that tells [`Progress`] when it is written to.
pub(crate) struct Tracked<I> {
    io: I,
    progress: Arc<Progress>,
}

impl<I> Tracked<I> {
    /// `io`, reporting its writes to `progress`.
    pub(crate) fn new(io: I, progress: Arc<Progress>) -> Self {
        Self { io, progress }
    }

    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = result
            && *n > 0
        {
            let dispatched = self.progress.dispatched.load(Ordering::Relaxed);
            self.progress
                .written_after
                .store(dispatched, Ordering::Relaxed);
            self.progress.pacing.wrote(*n);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request body that tells [`Progress`] when hyper fails to decode it (a bad chunk size,
/// a connection that ended mid-body).
pub(crate) struct Watched {
    body: Incoming,
    progress: Arc<Progress>,
}

impl Watched {
    /// `body`, reporting its failure to `progress`.
    pub(crate) fn new(body: Incoming, progress: Arc<Progress>) -> Self {
        Self { body, progress }
    }
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &frame {
            self.progress.body_failed.store(true, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Runs `connection` to its end, starting its graceful shutdown once `closing` completes,
/// and answers a request head it could not parse (see the [module](self)). Returns how the
/// connection ended.
pub(crate) async fn drive<I, S>(
    mut connection: http1::Connection<TokioIo<Tracked<I>>, S>,
    closing: impl Future<Output = ()>,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming> + Unpin,
    S::Future: Unpin,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut closing = std::pin::pin!(closing);
    let mut closed = false;
    let ended = std::future::poll_fn(|cx| {
        if !closed && closing.as_mut().poll(cx).is_ready() {
            closed = true;
            Pin::new(&mut connection).graceful_shutdown();
        }
        connection.poll_without_shutdown(cx)
    })
    .await;
    let mut io = connection.into_parts().io.into_inner();
    let answer = match &ended {
        Ok(()) => None,
        Err(e) if e.is_parse_too_large() => Some(ApiError::new(
            ErrorCode::HeadersTooLarge,
            "the request line and headers are larger than this node reads",
        )),
        Err(e) if e.is_parse() && !e.is_parse_version_h2() => Some(ApiError::new(
            ErrorCode::MalformedRequest,
            format!("the request is not valid HTTP/1.1: {e}"),
        )),
        Err(_) => None,
    };
    // A body hyper could not decode ends the connection after the service answered, and
    // that answer stays in hyper's buffer when unread bytes follow (`pipeline_flush`): it
    // is written here instead, as the request's only answer.
    let progress = &io.progress;
    let answer = match answer {
        None if progress.body_failed.load(Ordering::Relaxed)
            && progress.only_the_last_answer_unwritten() =>
        {
            Some(ApiError::new(
                ErrorCode::MalformedRequest,
                "the request body is not valid HTTP/1.1 (a bad chunk, or cut short)",
            ))
        }
        None => None,
        Some(answer) if progress.all_answers_written() => Some(answer),
        Some(_) => None,
    };
    match answer {
        Some(answer) => {
            let _ = tokio::time::timeout(WRITE_LIMIT, answer_and_linger(&mut io, &answer)).await;
        }
        _ => {
            // A graceful end, or an error with nothing to answer: close as hyper would.
            let _ = tokio::time::timeout(WRITE_LIMIT, io.shutdown()).await;
        }
    }
    ended
}

/// Writes `error` as a whole HTTP/1.1 answer that closes the connection, then reads and
/// drops what the client still sends for a moment before the socket is closed.
async fn answer_and_linger<I>(io: &mut Tracked<I>, error: &ApiError) -> io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(&response(error)).await?;
    io.flush().await?;
    io.shutdown().await?;
    let mut sink = vec![0u8; 16 << 10];
    let mut dropped = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while dropped < LINGER_BYTES {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    })
    .await;
    Ok(())
}

/// The bytes of `error`'s answer, closing the connection.
fn response(error: &ApiError) -> Bytes {
    let body = error.body();
    let status = error.code.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_a_whole_http_response_with_the_json_error() {
        let error = ApiError::new(ErrorCode::HeadersTooLarge, "too large");
        let bytes = response(&error);
        let text = std::str::from_utf8(&bytes).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(json["error"]["code"], "HEADERS_TOO_LARGE");
    }

    #[test]
    fn answers_are_written_when_the_socket_saw_a_write_after_the_last_request() {
        let progress = Progress::default();
        assert!(progress.all_answers_written(), "nothing dispatched yet");
        progress.dispatched();
        assert!(!progress.all_answers_written(), "an answer still buffered");
        let tracked = Tracked::new(tokio::io::empty(), Arc::new(Progress::default()));
        tracked.wrote(&Poll::Ready(Ok(0)));
        tracked.progress.dispatched();
        tracked.wrote(&Poll::Ready(Ok(10)));
        assert!(tracked.progress.all_answers_written());
        tracked.progress.dispatched();
        tracked.wrote(&Poll::Pending);
        assert!(!tracked.progress.all_answers_written());
    }
}
