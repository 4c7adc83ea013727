//! HTTP/1.1 answers handed to hyper no faster than the socket takes them.
//!
//! The server runs hyper's HTTP/1.1 connections with `pipeline_flush` (answers to pipelined
//! requests leave in one write), and with it hyper buffers whatever a body yields without
//! limit: it copies each frame into its write buffer at once, whether the socket took the
//! previous ones or not. A client that stops reading then made the node keep everything its
//! answer was made of: an event stream went on taking messages off its stream (measured: 300
//! messages of 64 KiB taken in a second by a client that read nothing, RSS +32 MB and
//! growing with every message sent), and a large answer sat whole in hyper's buffer.
//!
//! [`Paced`] wraps each HTTP/1.1 answer's body: it hands hyper a frame only while the
//! connection has written all but [`WINDOW`] of what its bodies yielded, in pieces of at most
//! [`PIECE`], and it waits for the socket's writes ([`Pacing::wrote`], reported by the
//! connection's socket) otherwise. What a client does not read therefore stays unmade (an
//! event stream takes no more messages) or stays in the answer's own bytes, counted in the
//! body budget (`ApiBody::held_in`). A connection that writes nothing for [`STALL_LIMIT`]
//! while an answer waits is closed: the client stopped reading. (A client that pipelines a
//! request behind a large answer can meet that limit too: hyper defers its writes while a
//! pipelined request is unread.)

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::body::{ApiBody, BodyError};

/// How far a connection's bodies may run ahead of its socket.
pub(crate) const WINDOW: u64 = 256 << 10;

/// The largest frame handed to hyper at once.
pub(crate) const PIECE: usize = 64 << 10;

/// How long an answer may wait for a socket that writes nothing before the connection is
/// closed.
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(30);

/// What one connection's bodies yielded and its socket wrote, and who waits for the socket.
#[derive(Debug, Default)]
pub(crate) struct Pacing {
    yielded: AtomicU64,
    written: AtomicU64,
    waiting: Mutex<Option<Waker>>,
}

impl Pacing {
    /// Called by the socket for every write: `n` bytes went out.
    pub(crate) fn wrote(&self, n: usize) {
        let written = self.written.fetch_add(n as u64, Ordering::AcqRel) + n as u64;
        // The socket also writes what no body yielded (heads, chunk sizes): never credit that
        // to later bodies, or a long keep-alive connection would earn a window as large as
        // all the heads it ever wrote.
        self.yielded.fetch_max(written, Ordering::AcqRel);
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    /// Whether the bodies are more than [`WINDOW`] ahead of the socket.
    fn ahead(&self) -> bool {
        let written = self.written.load(Ordering::Acquire);
        self.yielded.load(Ordering::Acquire).saturating_sub(written) > WINDOW
    }

    /// Whether the bodies may hand out more; if not, `cx` is woken on the next write.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.ahead() {
            return Poll::Ready(());
        }
        *self.waiting.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        // A write between the check and the registration would have found no waker.
        if self.ahead() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// An HTTP/1.1 answer's body, paced by its connection's socket (see the [module](self)).
pub(crate) struct Paced {
    body: ApiBody,
    pacing: Arc<Pacing>,
    /// The rest of a frame larger than [`PIECE`].
    rest: Bytes,
    /// Armed while the answer waits for the socket.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Paced {
    pub(crate) fn new(body: ApiBody, pacing: Arc<Pacing>) -> Self {
        Self {
            body,
            pacing,
            rest: Bytes::new(),
            stall: None,
        }
    }

    /// Up to [`PIECE`] of `self.rest`, counted as yielded.
    fn piece(&mut self) -> Frame<Bytes> {
        let piece = self.rest.split_to(self.rest.len().min(PIECE));
        self.pacing
            .yielded
            .fetch_add(piece.len() as u64, Ordering::AcqRel);
        Frame::data(piece)
    }
}

impl Body for Paced {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.pacing.poll_room(cx).is_pending() {
            let stall = this
                .stall
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(STALL_LIMIT)));
            if stall.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(
                    "the client read nothing of its answer for 30 s".into()
                )));
            }
            return Poll::Pending;
        }
        this.stall = None;
        if !this.rest.is_empty() {
            return Poll::Ready(Some(Ok(this.piece())));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    this.rest = data;
                    Poll::Ready(Some(Ok(this.piece())))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.body.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_waits_for_the_socket_once_it_is_a_window_ahead() {
        let pacing = Arc::new(Pacing::default());
        let answer = Bytes::from(vec![b'x'; 1 << 20]);
        let mut body = Paced::new(ApiBody::from(answer), Arc::clone(&pacing));
        assert_eq!(body.size_hint().exact(), Some(1 << 20));
        let mut handed = 0;
        // Five pieces of 64 KiB: 320 KiB yielded, more than the window.
        for _ in 0..5 {
            let frame = body.frame().await.expect("a frame").expect("data");
            handed += frame.into_data().expect("data").len();
        }
        assert_eq!(handed, 5 * PIECE);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(
            Pin::new(&mut body).poll_frame(&mut cx).is_pending(),
            "a window ahead of the socket"
        );
        pacing.wrote(2 * PIECE);
        let frame = body.frame().await.expect("a frame").expect("data");
        handed += frame.into_data().expect("data").len();
        assert_eq!(handed, 6 * PIECE);
        // The socket keeps up from here: each piece is written as it is handed out.
        while let Some(frame) = body.frame().await {
            let piece = frame.expect("data").into_data().expect("data").len();
            handed += piece;
            pacing.wrote(piece);
        }
        assert_eq!(handed, 1 << 20, "all of it, in pieces");
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn what_the_socket_wrote_besides_bodies_earns_no_window() {
        let pacing = Arc::new(Pacing::default());
        // A long keep-alive connection: many heads written, no body yielded.
        pacing.wrote(10 << 20);
        let answer = Bytes::from(vec![b'x'; 1 << 20]);
        let mut body = Paced::new(ApiBody::from(answer), Arc::clone(&pacing));
        for _ in 0..5 {
            body.frame().await.expect("a frame").expect("data");
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            Pin::new(&mut body).poll_frame(&mut cx).is_pending(),
            "a window ahead, whatever was written before"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_writes_nothing_for_the_stall_limit_ends_the_answer() {
        let pacing = Arc::new(Pacing::default());
        let answer = Bytes::from(vec![b'x'; 1 << 20]);
        let mut body = Paced::new(ApiBody::from(answer), pacing);
        for _ in 0..5 {
            body.frame().await.expect("a frame").expect("data");
        }
        let error = body.frame().await.expect("an end").expect_err("stalled");
        assert!(error.to_string().contains("read nothing"), "{error}");
    }
}
