//! [`Coalesce`]: an I/O wrapper that lets one socket write carry the frames of every request
//! of a multiplexed connection that became ready in one turn of the scheduler.
//!
//! An HTTP/2 connection task writes whatever frames are queued when it is polled. Under load
//! its streams' answers (or requests) become ready one task poll apart, so each goes out in a
//! socket write of its own, and on loopback every write also runs the receiving side's TCP
//! path. `Coalesce` takes the codec's writes into a buffer of its own and, the first time it
//! is asked to flush them, yields once instead: the connection task is scheduled again behind
//! the tasks already runnable, the frames they queue join the buffer, and one write carries
//! them all. When nothing else is runnable the write happens on the next poll, a few
//! microseconds later; under load a write carries as many frames as became ready in one turn
//! (the idea of Netty's `FlushConsolidationHandler`). The price is paid in latency when the
//! CPU is saturated and a connection's frames come one at a time (a few event streams on it):
//! its write then waits a pass over a long run queue for nothing. Yielding only while a
//! connection looked busy (its previous write within 250 µs, or its last yield gathered) kept
//! that latency but lost most of what gathering saves between members, so every flush yields
//! (ARCHITECTURE.md, "Writes of HTTP/2 connections are gathered", has the figures).
//!
//! The buffer is needed, not just the yield: h2 keeps a DATA frame of 256 bytes or more
//! aside, uncopied, and buffers nothing more until it is written, so a yield that left the
//! bytes in the codec would gather nothing behind an event or a body of that size. Taking
//! every write drains the codec, so it keeps accepting frames while this waits. The buffer is
//! released after each write (an idle connection keeps none); past [`HIGH_WATER`] bytes it is
//! written at once and further writes wait for the socket, so a bulk transfer is not held
//! back.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffered bytes past which a write goes out at once (and further writes wait for it).
pub const HIGH_WATER: usize = 64 * 1024;

/// What a connection's buffer starts with.
const INITIAL_CAPACITY: usize = 8 * 1024;

/// A connection whose writes are gathered until a flush, and whose first flush after a write
/// yields once to let other ready tasks add theirs (see the [module docs](self)).
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already written to `inner`.
    written: usize,
    /// Whether the current flush has already yielded once.
    yielded: bool,
}

impl<T> Coalesce<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buffer: Vec::new(),
            written: 0,
            yielded: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Bytes written to this wrapper and not yet to the connection.
    pub fn buffered(&self) -> usize {
        self.buffer.len() - self.written
    }

    fn take(&mut self, data: &[u8]) {
        if self.buffer.capacity() == 0 {
            self.buffer.reserve(INITIAL_CAPACITY.max(data.len()));
        }
        self.buffer.extend_from_slice(data);
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes the whole buffer to the connection, then releases it.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffer[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buffer = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
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
        let this = &mut *self;
        if this.buffered() >= HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        this.take(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.buffered() >= HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        let mut taken = 0;
        for slice in data {
            this.take(slice);
            taken += slice.len();
        }
        Poll::Ready(Ok(taken))
    }

    /// Vectored: the codec then hands over a large DATA frame's payload without copying it
    /// first, and this copies it once.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buffered() > 0 && this.buffered() < HIGH_WATER && !this.yielded {
            // Scheduled again behind the tasks already runnable: what they queue joins this
            // write.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_drain(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
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

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Woken(AtomicUsize);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn frames_written_before_a_flush_go_out_in_one_write() -> io::Result<()> {
        let (mut io, writes) = counting(usize::MAX);
        for frame in [&b"HEADERS"[..], b"DATA", b"HEADERS", b"DATA"] {
            io.write_all(frame).await?;
        }
        assert_eq!(
            writes.load(Ordering::Relaxed),
            0,
            "nothing written before the flush"
        );
        io.flush().await?;
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        assert_eq!(io.get_ref().bytes, b"HEADERSDATAHEADERSDATA");
        assert_eq!(io.buffered(), 0);
        assert_eq!(
            io.buffer.capacity(),
            0,
            "the buffer is released after the write"
        );
        Ok(())
    }

    #[test]
    fn the_first_flush_yields_once_and_what_comes_meanwhile_joins_its_write() {
        let (mut io, writes) = counting(usize::MAX);
        let woken = Arc::new(Woken::default());
        let waker = std::task::Waker::from(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"frame").is_ready());
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
        assert_eq!(writes.load(Ordering::Relaxed), 0);
        assert_eq!(woken.0.load(Ordering::Relaxed), 1, "scheduled again");
        // Another task's frame arrives before the connection is polled again; a large DATA
        // frame's payload comes as a second slice.
        let slices = [IoSlice::new(b"+head"), IoSlice::new(b"+payload")];
        assert!(matches!(
            Pin::new(&mut io).poll_write_vectored(&mut cx, &slices),
            Poll::Ready(Ok(13))
        ));
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        assert_eq!(io.get_ref().bytes, b"frame+head+payload");
        // Nothing buffered: a flush goes straight through.
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_short_write_is_resumed_where_it_stopped() -> io::Result<()> {
        let (mut io, writes) = counting(3);
        io.write_all(b"abcdefgh").await?;
        io.flush().await?;
        assert_eq!(io.get_ref().bytes, b"abcdefgh");
        assert_eq!(writes.load(Ordering::Relaxed), 3);
        Ok(())
    }

    #[tokio::test]
    async fn a_full_buffer_goes_out_without_waiting_for_a_flush() -> io::Result<()> {
        let (mut io, writes) = counting(usize::MAX);
        let chunk = vec![7u8; HIGH_WATER];
        io.write_all(&chunk).await?;
        io.write_all(b"next").await?;
        assert_eq!(
            writes.load(Ordering::Relaxed),
            1,
            "the full buffer was written"
        );
        assert_eq!(io.buffered(), 4);
        io.shutdown().await?;
        assert_eq!(io.get_ref().bytes.len(), HIGH_WATER + 4);
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
}
