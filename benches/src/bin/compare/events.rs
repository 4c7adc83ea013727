//! Receivers that follow their stream as Server-Sent Events instead of long-polling it, over
//! HTTP/1.1 (a connection per stream) or HTTP/2 (streams of a receiver group sharing one).

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

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
    /// HTTP/1.1, read straight off the socket (no connection task between it and the
    /// follower, as the RESP client reads its replies); a connection made up front is used
    /// for the first request, a new one for each reopening.
    Http1(SocketAddr, Option<TcpStream>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

impl Opener {
    /// An HTTP/1.1 connection of its own.
    pub async fn http1(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self::Http1(addr, Some(connect(addr).await?)))
    }

    /// An HTTP/2 connection, to be shared by cloning.
    pub async fn http2(addr: SocketAddr) -> anyhow::Result<Self> {
        let socket = connect(addr).await?;
        let (sender, connection) =
            http2::handshake(TokioExecutor::new(), TokioIo::new(socket)).await?;
        tokio::spawn(connection);
        Ok(Self::Http2(sender))
    }

    /// Another handle on this HTTP/2 connection (an HTTP/1.1 one serves one follower).
    pub fn share(&self) -> anyhow::Result<Self> {
        match self {
            Self::Http2(sender) => Ok(Self::Http2(sender.clone())),
            Self::Http1(..) => anyhow::bail!("an HTTP/1.1 connection is not shared"),
        }
    }

    /// Asks for the event stream at `path`: its status, and its body when 200.
    async fn open(&mut self, path: &str) -> anyhow::Result<(u16, Option<Body>)> {
        match self {
            Self::Http1(addr, ready) => {
                let socket = match ready.take() {
                    Some(socket) => socket,
                    None => connect(*addr).await?,
                };
                let (status, body) = Http1Events::open(socket, path).await?;
                Ok((status, body.map(Body::Http1)))
            }
            Self::Http2(sender) => {
                let request = hyper::Request::get(path)
                    .header("accept", "text/event-stream")
                    .body(Empty::new())?;
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status().as_u16();
                Ok((
                    status,
                    (status == 200).then(|| Body::Http2(response.into_body())),
                ))
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    Ok(socket)
}

/// An open event stream's body.
enum Body {
    Http1(Http1Events),
    Http2(Incoming),
}

impl Body {
    /// Appends the body's next bytes to `out`; false when it ended.
    async fn read(&mut self, out: &mut Vec<u8>) -> anyhow::Result<bool> {
        match self {
            Self::Http1(events) => events.read(out).await,
            Self::Http2(body) => match body.frame().await {
                None => Ok(false),
                Some(frame) => {
                    if let Ok(bytes) = frame?.into_data() {
                        out.extend_from_slice(&bytes);
                    }
                    Ok(true)
                }
            },
        }
    }
}

/// The body of an HTTP/1.1 event stream, read and de-chunked by the follower's own task.
struct Http1Events {
    socket: TcpStream,
    /// Bytes read and not yet decoded.
    raw: Vec<u8>,
    framing: Framing,
}

/// How the body's end is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Chunked, with this many bytes of the current chunk still to come (`None`: a chunk's
    /// size line is next).
    Chunked(Option<usize>),
    /// `Content-Length`, with this many bytes still to come.
    Length(usize),
    /// Until the server closes the connection.
    Close,
    /// The last chunk came.
    Ended,
}

impl Http1Events {
    /// Sends the request and reads the answer's head.
    async fn open(mut socket: TcpStream, path: &str) -> anyhow::Result<(u16, Option<Self>)> {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
        socket.write_all(request.as_bytes()).await?;
        let mut raw = Vec::with_capacity(16 * 1024);
        let end = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            anyhow::ensure!(socket.read_buf(&mut raw).await? > 0, "closed before a head");
        };
        let head = std::str::from_utf8(&raw[..end])?;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("a malformed status line: {head:?}"))?;
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
        };
        let framing = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            Framing::Chunked(None)
        } else if let Some(length) = header("content-length") {
            Framing::Length(length.parse()?)
        } else {
            Framing::Close
        };
        raw.drain(..end + 4);
        let body = Self {
            socket,
            raw,
            framing,
        };
        Ok((status, (status == 200).then_some(body)))
    }

    /// Appends the body bytes that arrive next (at least one, unless it ended) to `out`;
    /// false when it ended.
    async fn read(&mut self, out: &mut Vec<u8>) -> anyhow::Result<bool> {
        loop {
            let before = out.len();
            self.decode(out)?;
            if out.len() > before {
                return Ok(true);
            }
            if self.framing == Framing::Ended || self.framing == Framing::Length(0) {
                return Ok(false);
            }
            if self.socket.read_buf(&mut self.raw).await? == 0 {
                anyhow::ensure!(self.framing == Framing::Close, "closed mid-body");
                self.framing = Framing::Ended;
            }
        }
    }

    /// Moves the body bytes among those read to `out`, as far as they go.
    fn decode(&mut self, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let mut at = 0;
        loop {
            match self.framing {
                Framing::Ended => break,
                Framing::Close => {
                    out.extend_from_slice(&self.raw[at..]);
                    at = self.raw.len();
                    break;
                }
                Framing::Length(left) | Framing::Chunked(Some(left)) => {
                    let take = left.min(self.raw.len() - at);
                    out.extend_from_slice(&self.raw[at..at + take]);
                    at += take;
                    let left = left - take;
                    self.framing = match self.framing {
                        Framing::Length(_) => Framing::Length(left),
                        _ => Framing::Chunked(Some(left)),
                    };
                    if left > 0 || matches!(self.framing, Framing::Length(_)) {
                        break;
                    }
                    // The chunk's data is followed by CRLF, then the next size line.
                    if self.raw.len() - at < 2 {
                        self.framing = Framing::Chunked(Some(0));
                        break;
                    }
                    at += 2;
                    self.framing = Framing::Chunked(None);
                }
                Framing::Chunked(None) => {
                    let Some(eol) = self.raw[at..].windows(2).position(|w| w == b"\r\n") else {
                        break;
                    };
                    let line = std::str::from_utf8(&self.raw[at..at + eol])?;
                    let digits = line.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(digits, 16)?;
                    at += eol + 2;
                    // The last chunk: what follows (trailers) is not read.
                    self.framing = if size == 0 {
                        Framing::Ended
                    } else {
                        Framing::Chunked(Some(size))
                    };
                }
            }
        }
        self.raw.drain(..at);
        Ok(())
    }
}

/// One stream followed as events; opened again (after its last event's id, for a log) when
/// the server ends it.
pub struct Follower {
    opener: Opener,
    body: Option<Body>,
    buffer: Vec<u8>,
    last_id: Option<String>,
    /// Bounds a wait for the next bytes ([`Follower::next`]'s `within`). Set again only when
    /// it fires after bytes came meanwhile, so that a busy stream does not set it per event.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Whether bytes came since the timer was set.
    progressed: bool,
}

impl Follower {
    pub fn new(opener: Opener) -> Self {
        Self {
            opener,
            body: None,
            buffer: Vec::new(),
            last_id: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            progressed: true,
        }
    }

    /// The data of the events that arrive within about `within` (possibly none: between
    /// `within` and twice that), opening the stream first if it is not open. `path` makes
    /// the request's path and query; a log's stream is reopened after its last event.
    pub async fn next(
        &mut self,
        addr: SocketAddr,
        path: impl FnOnce() -> String,
        log: bool,
        within: Duration,
        data: &mut Vec<u8>,
    ) -> anyhow::Result<Option<String>> {
        let body = match &mut self.body {
            Some(body) => body,
            None => {
                let mut path = path();
                if let (true, Some(id)) = (log, &self.last_id) {
                    path.push_str("&dbResumeToken=");
                    path.push_str(id);
                }
                let path = match self.opener {
                    Opener::Http1(..) => path,
                    Opener::Http2(_) => format!("http://{addr}{path}"),
                };
                let (status, body) = self.opener.open(&path).await?;
                let Some(body) = body else {
                    return Ok(Some(format!("events {status}")));
                };
                self.timer.as_mut().reset(Instant::now() + within);
                self.body.insert(body)
            }
        };
        let more = loop {
            tokio::select! {
                biased;
                more = body.read(&mut self.buffer) => break more?,
                () = self.timer.as_mut() => {
                    if !self.progressed {
                        return Ok(Some("receive timeout".into()));
                    }
                    self.progressed = false;
                    self.timer.as_mut().reset(Instant::now() + within);
                }
            }
        };
        self.progressed = true;
        if !more {
            // Ended (its `end` event came before): open it again next time.
            self.body = None;
            return Ok(Some("events ended".into()));
        }
        // Whole events only: up to the last blank line.
        let Some(end) = self.buffer.windows(2).rposition(|w| w == b"\n\n") else {
            return Ok(None);
        };
        let events = &self.buffer[..end + 2];
        if log && let Some(id) = last_id(events) {
            self.last_id = Some(id);
        }
        data.extend_from_slice(events);
        self.buffer.drain(..end + 2);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunked event stream split at every awkward place (inside a size line, inside the
    /// CRLF after a chunk's data), then its last chunk.
    #[tokio::test]
    async fn an_http1_stream_is_read_across_split_chunks() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await?;
            let mut request = [0u8; 512];
            let _ = socket.read(&mut request).await?;
            let pieces: [&[u8]; 6] = [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"b\r\ndata: one\n\n\r",
                b"\n1",
                b"1;ext=1\r\nid: 2\ndata: t",
                b"wo\n\n\r\n",
                b"0\r\n\r\n",
            ];
            for piece in pieces {
                socket.write_all(piece).await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(())
        });
        let mut follower = Follower::new(Opener::http1(addr).await?);
        let second = Duration::from_secs(1);
        let mut data = Vec::new();
        let path = || "/e".to_owned();
        for _ in 0..6 {
            if data.ends_with(b"two\n\n") {
                break;
            }
            assert_eq!(
                follower.next(addr, path, true, second, &mut data).await?,
                None
            );
        }
        assert_eq!(data, b"data: one\n\nid: 2\ndata: two\n\n");
        assert_eq!(follower.last_id.as_deref(), Some("2"));
        assert_eq!(
            follower.next(addr, path, true, second, &mut data).await?,
            Some("events ended".into())
        );
        server.await??;
        Ok(())
    }
}
