//! Receivers that follow their stream as Server-Sent Events instead of long-polling it, over
//! HTTP/1.1 (a connection per stream) or HTTP/2 (streams of a receiver group sharing one).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How receivers take their messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A long-poll per answer (Redis: `BLPOP`/`BLMPOP`).
    LongPoll,
    /// An event stream per stream, each on its own HTTP/1.1 connection.
    Events1,
    /// An event stream per stream, over HTTP/2 connections the streams share (stream `s` on
    /// connection `s % connections`).
    Events2 {
        /// How many.
        connections: usize,
    },
}

/// How a receiver reaches the server.
pub enum Opener {
    Http1(http1::SendRequest<Empty<Bytes>>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

impl Opener {
    /// An HTTP/1.1 connection of its own.
    pub async fn http1(addr: SocketAddr) -> anyhow::Result<Self> {
        let socket = tokio::net::TcpStream::connect(addr).await?;
        socket.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(socket)).await?;
        tokio::spawn(connection);
        Ok(Self::Http1(sender))
    }

    /// An HTTP/2 connection, to be shared by cloning.
    pub async fn http2(addr: SocketAddr) -> anyhow::Result<Self> {
        let socket = tokio::net::TcpStream::connect(addr).await?;
        socket.set_nodelay(true)?;
        let (sender, connection) =
            http2::handshake(TokioExecutor::new(), TokioIo::new(socket)).await?;
        tokio::spawn(connection);
        Ok(Self::Http2(sender))
    }

    /// Another handle on this HTTP/2 connection (an HTTP/1.1 one serves one follower).
    pub fn share(&self) -> anyhow::Result<Self> {
        match self {
            Self::Http2(sender) => Ok(Self::Http2(sender.clone())),
            Self::Http1(_) => anyhow::bail!("an HTTP/1.1 connection is not shared"),
        }
    }

    async fn open(&mut self, uri: String) -> anyhow::Result<hyper::Response<Incoming>> {
        let request = hyper::Request::get(uri).header("accept", "text/event-stream");
        Ok(match self {
            Self::Http1(sender) => {
                // HTTP/2 sends the authority from the URI; a `Host` beside it that differs
                // is refused by nginx (400).
                let request = request.header("host", "x").body(Empty::new())?;
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Self::Http2(sender) => {
                sender.ready().await?;
                sender.send_request(request.body(Empty::new())?).await?
            }
        })
    }
}

/// One stream followed as events; opened again (after its last event's id, for a log) when
/// the server ends it.
pub struct Follower {
    opener: Opener,
    body: Option<Incoming>,
    buffer: Vec<u8>,
    last_id: Option<String>,
}

impl Follower {
    pub fn new(opener: Opener) -> Self {
        Self {
            opener,
            body: None,
            buffer: Vec::new(),
            last_id: None,
        }
    }

    /// The data of the events that arrive within `within` (possibly none), opening the
    /// stream first if it is not open. `path` is the request's path and query; a log's
    /// stream is reopened after its last event.
    pub async fn next(
        &mut self,
        addr: SocketAddr,
        path: &str,
        log: bool,
        within: Duration,
        data: &mut Vec<u8>,
    ) -> anyhow::Result<Option<String>> {
        let body = match &mut self.body {
            Some(body) => body,
            None => {
                let mut uri = format!("http://{addr}{path}");
                if let (true, Some(id)) = (log, &self.last_id) {
                    uri.push_str("&dbResumeToken=");
                    uri.push_str(id);
                }
                let response = self.opener.open(uri).await?;
                if response.status() != 200 {
                    return Ok(Some(format!("events {}", response.status())));
                }
                self.body.insert(response.into_body())
            }
        };
        let frame = match tokio::time::timeout(within, body.frame()).await {
            Err(_elapsed) => return Ok(Some("receive timeout".into())),
            Ok(None) => {
                // Ended (its `end` event came before): open it again next time.
                self.body = None;
                return Ok(Some("events ended".into()));
            }
            Ok(Some(frame)) => frame?,
        };
        if let Ok(bytes) = frame.into_data() {
            self.buffer.extend_from_slice(&bytes);
        }
        // Whole events only: up to the last blank line.
        let Some(end) = self.buffer.windows(2).rposition(|w| w == b"\n\n") else {
            return Ok(None);
        };
        let events: Vec<u8> = self.buffer.drain(..end + 2).collect();
        if log && let Some(id) = last_id(&events) {
            self.last_id = Some(id);
        }
        data.extend_from_slice(&events);
        Ok(None)
    }
}

/// The last `id:` line's value in `events`.
fn last_id(events: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(events).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("id: "))
        .map(str::to_owned)
}
