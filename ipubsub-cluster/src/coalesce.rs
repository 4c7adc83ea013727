//! [`Coalesce`]: an I/O wrapper that lets one socket write carry the frames of every request
//! of a multiplexed connection that became ready in one turn of the scheduler.
//!
//! An HTTP/2 connection task writes whatever frames are queued when it is polled. Under load
//! its streams' answers (or requests) become ready one task poll apart, so each goes out in a
//! socket write of its own, and on loopback every write also runs the receiving side's TCP
//! path. `Coalesce` makes the first write of each flush yield once instead: the connection
//! task is scheduled again behind the tasks already runnable, and the frames those queue join
//! the codec's buffer, so the write that follows carries them all. When nothing else is
//! runnable the write happens on the next poll, a few microseconds later; under load a write
//! carries as many frames as became ready in one turn (the idea of Netty's
//! `FlushConsolidationHandler`). Nothing is copied or kept: the bytes wait in the codec's own
//! buffer, whose size bounds the batch.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose first write after each flush yields once, so that the writer gathers
/// what other ready tasks queue meanwhile (see the [module docs](self)).
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    /// Whether a write since the last flush has already yielded.
    yielded: bool,
}

impl<T> Coalesce<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            yielded: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// `Pending` (and scheduled again at once) the first time it is asked since the last
    /// flush; ready after that.
    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_turn(cx));
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_turn(cx));
        Pin::new(&mut self.inner).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if flushed.is_ready() {
            self.yielded = false;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A sink that counts the writes it is given, accepting at most `cap` bytes per write.
    struct Counting {
        writes: Arc<AtomicUsize>,
        bytes: Vec<u8>,
        cap: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            let n = data.len().min(self.cap);
            self.bytes.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn counting(cap: usize) -> (Coalesce<Counting>, Arc<AtomicUsize>) {
        let writes = Arc::new(AtomicUsize::new(0));
        let sink = Counting {
            writes: Arc::clone(&writes),
            bytes: Vec::new(),
            cap,
        };
        (Coalesce::new(sink), writes)
    }

    #[test]
    fn the_first_write_of_a_flush_yields_once_and_asks_to_be_polled_again() {
        let (mut io, writes) = counting(usize::MAX);
        let woken = Arc::new(Woken::default());
        let waker = std::task::Waker::from(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"frame").is_pending());
        assert_eq!(
            writes.load(Ordering::Relaxed),
            0,
            "nothing written on the first try"
        );
        assert_eq!(woken.0.load(Ordering::Relaxed), 1, "scheduled again");
        // Polled again: the codec offers its buffer, now with another task's frame too.
        assert!(matches!(
            Pin::new(&mut io).poll_write(&mut cx, b"frame+more"),
            Poll::Ready(Ok(10))
        ));
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        // After the flush, the next write yields again.
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"next").is_pending());
        assert_eq!(woken.0.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn short_writes_carry_every_byte() -> io::Result<()> {
        let (mut io, writes) = counting(3);
        io.write_all(b"abcdefgh").await?;
        io.flush().await?;
        assert_eq!(io.get_ref().bytes, b"abcdefgh");
        assert_eq!(writes.load(Ordering::Relaxed), 3);
        Ok(())
    }

    #[tokio::test]
    async fn over_a_socket_both_ways() -> io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let echo = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await?;
            let mut got = vec![0u8; 10];
            socket.read_exact(&mut got).await?;
            socket.write_all(&got).await?;
            io::Result::Ok(())
        });
        let mut io = Coalesce::new(tokio::net::TcpStream::connect(addr).await?);
        io.write_all(b"hello").await?;
        io.write_all(b"world").await?;
        io.flush().await?;
        let mut back = vec![0u8; 10];
        io.read_exact(&mut back).await?;
        assert_eq!(back, b"helloworld");
        echo.await??;
        Ok(())
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Woken(AtomicUsize);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}
