//! A minimal Redis (RESP2) client connection: the commands the comparison sends and the
//! replies they get.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A RESP2 reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`, `:5`: simple strings and integers, kept as text.
    Simple(Vec<u8>),
    /// `$n`: a bulk string; `None` is the nil bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*n`: an array; `None` is the nil array (a blocking pop that timed out).
    Array(Option<Vec<Reply>>),
}

/// One connection to a Redis server.
pub struct RedisConn {
    socket: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
}

impl RedisConn {
    /// Connects to `addr` with `TCP_NODELAY`.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let socket = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to redis at {addr}"))?;
        socket.set_nodelay(true)?;
        Ok(Self {
            socket,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            out: Vec::with_capacity(512),
        })
    }

    /// Sends one command and reads its reply.
    pub async fn command(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        use std::io::Write;
        self.out.clear();
        write!(self.out, "*{}\r\n", args.len())?;
        for arg in args {
            write!(self.out, "${}\r\n", arg.len())?;
            self.out.extend_from_slice(arg);
            self.out.extend_from_slice(b"\r\n");
        }
        self.socket.write_all(&self.out).await?;
        let reply = self.read_reply().await?;
        self.buf.drain(..self.pos);
        self.pos = 0;
        Ok(reply)
    }

    async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        let line = self.read_line().await?;
        let (kind, rest) = line.split_first().context("empty RESP line")?;
        let number = || -> anyhow::Result<i64> { Ok(std::str::from_utf8(rest)?.parse()?) };
        match kind {
            b'+' | b':' => Ok(Reply::Simple(rest.to_vec())),
            b'-' => anyhow::bail!("redis error: {}", String::from_utf8_lossy(rest)),
            b'$' => {
                let Ok(len) = usize::try_from(number()?) else {
                    return Ok(Reply::Bulk(None));
                };
                while self.buf.len() < self.pos + len + 2 {
                    self.fill().await?;
                }
                let bulk = self.buf[self.pos..self.pos + len].to_vec();
                self.pos += len + 2;
                Ok(Reply::Bulk(Some(bulk)))
            }
            b'*' => {
                let Ok(len) = usize::try_from(number()?) else {
                    return Ok(Reply::Array(None));
                };
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(Box::pin(self.read_reply()).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            other => anyhow::bail!("unexpected RESP type byte {other:#x}"),
        }
    }

    async fn read_line(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(end) = self.buf[self.pos..].windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[self.pos..self.pos + end].to_vec();
                self.pos += end + 2;
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.socket.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "redis closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replies as Redis writes them, split at awkward places.
    #[tokio::test]
    async fn parses_nested_and_nil_replies() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await?;
            let mut request = [0u8; 256];
            for reply in [
                &b":3\r\n"[..],
                b"*2\r\n$1\r\nk\r\n*2\r\n$2\r\nab\r\n$0\r\n\r\n",
                b"*-1\r\n",
                b"-ERR wrong\r\n",
            ] {
                let _ = socket.read(&mut request).await?;
                let (head, tail) = reply.split_at(reply.len() / 2);
                socket.write_all(head).await?;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                socket.write_all(tail).await?;
            }
            Ok::<_, std::io::Error>(())
        });
        let mut conn = RedisConn::connect(addr).await?;
        assert_eq!(
            conn.command(&[b"RPUSH", b"k", b"v"]).await?,
            Reply::Simple(b"3".to_vec())
        );
        assert_eq!(
            conn.command(&[b"BLMPOP"]).await?,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"k".to_vec())),
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"ab".to_vec())),
                    Reply::Bulk(Some(Vec::new()))
                ]))
            ]))
        );
        assert_eq!(conn.command(&[b"BLPOP"]).await?, Reply::Array(None));
        assert!(conn.command(&[b"X"]).await.is_err());
        server.await??;
        Ok(())
    }
}
