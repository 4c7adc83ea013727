//! A minimal HTTP/1.1 client connection for the load tools: requests are written as raw bytes
//! (so that several can be pipelined in one write) and responses are read back in order. It
//! understands what the servers under test send: `Content-Length` bodies, keep-alive.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    /// The socket failed.
    #[error("{addr}: {source}")]
    Io {
        /// The server.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// The server closed the connection before a whole response arrived.
    #[error("{addr} closed the connection mid-response")]
    Closed {
        /// The server.
        addr: SocketAddr,
    },
    /// The bytes were not an HTTP/1.1 response this client understands.
    #[error("{addr} sent a malformed response head")]
    Malformed {
        /// The server.
        addr: SocketAddr,
    },
}

/// One keep-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct Http1Conn {
    addr: SocketAddr,
    socket: TcpStream,
    /// Bytes read and not yet consumed; a response's body is `buf[body_start..body_end]`.
    buf: Vec<u8>,
    consumed: usize,
}

/// A response read from an [`Http1Conn`]; its body stays in the connection's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    start: usize,
    end: usize,
}

impl Http1Conn {
    /// Connects to `addr` with `TCP_NODELAY`.
    pub async fn connect(addr: SocketAddr) -> Result<Self, Http1Error> {
        let io = |source| Http1Error::Io { addr, source };
        let socket = TcpStream::connect(addr).await.map_err(io)?;
        socket.set_nodelay(true).map_err(io)?;
        Ok(Self {
            addr,
            socket,
            buf: Vec::with_capacity(16 * 1024),
            consumed: 0,
        })
    }

    /// The server this connection talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes raw request bytes (one request or several, pipelined).
    pub async fn write(&mut self, requests: &[u8]) -> Result<(), Http1Error> {
        let addr = self.addr;
        self.socket
            .write_all(requests)
            .await
            .map_err(|source| Http1Error::Io { addr, source })
    }

    /// Reads the next response. Its body is [`Http1Conn::body`] until the next read.
    pub async fn read_response(&mut self) -> Result<Response, Http1Error> {
        // What the previous response left is dropped now, so that its body stayed readable.
        self.buf.drain(..self.consumed);
        self.consumed = 0;
        let addr = self.addr;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])
                    .map_err(|_| Http1Error::Malformed { addr })?;
                let status: u16 = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .ok_or(Http1Error::Malformed { addr })?;
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let start = end + 4;
                while self.buf.len() < start + length {
                    self.fill().await?;
                }
                self.consumed = start + length;
                return Ok(Response {
                    status,
                    start,
                    end: start + length,
                });
            }
            self.fill().await?;
        }
    }

    /// The body of `response`, the last one read.
    pub fn body(&self, response: Response) -> &[u8] {
        &self.buf[response.start..response.end]
    }

    /// The value of header `name` (any case) of `response`, the last one read.
    pub fn header(&self, response: Response, name: &str) -> Option<&str> {
        let head = std::str::from_utf8(&self.buf[..response.start]).ok()?;
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    async fn fill(&mut self) -> Result<(), Http1Error> {
        let addr = self.addr;
        let mut chunk = [0u8; 16 * 1024];
        let n = self
            .socket
            .read(&mut chunk)
            .await
            .map_err(|source| Http1Error::Io { addr, source })?;
        if n == 0 {
            return Err(Http1Error::Closed { addr });
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Appends a `POST` of a JSON `body` to `path`, ready for [`Http1Conn::write`].
pub fn push_post(out: &mut Vec<u8>, path: &str, body: &[u8]) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two pipelined responses arriving in one segment, the second split mid-body.
    #[tokio::test]
    async fn reads_pipelined_responses_in_order() -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await?;
            let mut request = [0u8; 256];
            let _ = socket.read(&mut request).await?;
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 424 Failed Dependency\r\nContent-Length: 5\r\n\r\nab")
                .await?;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            socket.write_all(b"cde").await?;
            Ok::<_, std::io::Error>(())
        });
        let mut conn = Http1Conn::connect(addr).await?;
        let mut out = Vec::new();
        push_post(&mut out, "/p", b"{}");
        assert!(out.starts_with(b"POST /p HTTP/1.1\r\n"));
        assert!(out.ends_with(b"Content-Length: 2\r\n\r\n{}"));
        conn.write(&out).await?;
        let first = conn.read_response().await?;
        assert_eq!((first.status, conn.body(first)), (200, &b"{}"[..]));
        assert_eq!(conn.header(first, "Content-Length"), Some("2"));
        assert_eq!(conn.header(first, "etag"), None);
        let second = conn.read_response().await?;
        assert_eq!((second.status, conn.body(second)), (424, &b"abcde"[..]));
        server.await??;
        assert!(matches!(
            conn.read_response().await,
            Err(Http1Error::Closed { .. })
        ));
        Ok(())
    }
}
