//! [`serve`] (and, with feature `tls`, [`serve_tls`]): the accept loop, one hyper HTTP/1.1 or
//! HTTP/2 connection per client, the connection limit, slow-client timeouts and graceful
//! shutdown.
//!
//! One listener speaks both versions. Over plain TCP, a client that starts with HTTP/2's
//! connection preface (prior knowledge: `curl --http2-prior-knowledge`, gRPC-style clients,
//! the forwarders of other nodes) is served HTTP/2, any other HTTP/1.1; over TLS, ALPN
//! decides (`h2` or `http/1.1`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use ipubsub_cluster::Coalesce;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{ApiError, ErrorCode};
use crate::malformed::{self, Progress, Tracked, Watched};
use crate::metrics::Limit;
use crate::pacing::Paced;
use crate::service::{App, error_response};

/// How long a connection over the limit has to send its request before it is closed unanswered.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What a client speaking HTTP/2 with prior knowledge sends first (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The HTTP version a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Serves `app` on `listener` until `shutdown` completes, then shuts down gracefully: stops
/// accepting, closes the engine (every waiting receive is answered, every blocked send
/// refused), lets in-flight responses finish and waits up to `grace` for connections to close.
/// A send or receive still in flight shortly before `grace` ends (a fifth of it, at most 1 s)
/// is answered 503 `SHUTTING_DOWN` then ([`App::cut_in_flight`]); only a connection that
/// still has not closed at the end is cut.
///
/// At most [`HttpConfig::max_connections`](crate::HttpConfig::max_connections) are served at
/// once: one more gets its first request answered 503 `TOO_MANY_CONNECTIONS` (with
/// `Retry-After` and `Connection: close`) and is closed. A connection idle for
/// [`HttpConfig::idle_timeout`](crate::HttpConfig::idle_timeout) between requests, or that
/// takes that long to send a request's headers, is closed.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    serve_with(listener, app, None, shutdown, grace).await;
}

/// [`serve`], speaking HTTPS only: each connection first completes a TLS handshake with `tls`
/// (within [`HttpConfig::idle_timeout`](crate::HttpConfig::idle_timeout)).
#[cfg(feature = "tls")]
pub async fn serve_tls(
    listener: TcpListener,
    app: App,
    tls: crate::tls::ServerTls,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    serve_with(listener, app, Some(tls.acceptor()), shutdown, grace).await;
}

/// The TLS acceptor, when the listener speaks HTTPS.
#[cfg(feature = "tls")]
type Acceptor = tokio_rustls::TlsAcceptor;
#[cfg(not(feature = "tls"))]
type Acceptor = NoTls;

/// Without the `tls` feature there is no acceptor: `Option<NoTls>` is always `None`.
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
enum NoTls {}

async fn serve_with(
    listener: TcpListener,
    app: App,
    tls: Option<Acceptor>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let open = Arc::new(AtomicUsize::new(0));
    let max_connections = app.config().max_connections;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "could not set TCP_NODELAY");
        }
        let refused = open.load(Ordering::Relaxed) >= max_connections;
        let connection = Connection {
            app: app.clone(),
            peer,
            watcher: graceful.watcher(),
            refused,
        };
        let tls = tls.clone();
        if refused {
            tracing::debug!(%peer, "refusing a connection: too many open");
            app.metrics().limit_hit(Limit::Connections);
            tokio::spawn(connection.run(stream, tls));
            continue;
        }
        let counted = Counted::new(&open, app.metrics().connections().clone());
        tokio::spawn(async move {
            let _counted = counted;
            connection.run(stream, tls).await;
        });
    }
    drop(listener);
    tracing::info!("shutting down: answering waiting requests");
    // Waiting receivers and log readers are answered, event streams end; queued appends are
    // still written by the log's workers, which the caller awaits after this returns.
    app.close();
    // Close to the end of the grace, what is still in flight (mostly requests forwarded to
    // another owner) is answered, so that no client sees its connection closed unanswered.
    let cut = cut_at(grace);
    let mut drained = std::pin::pin!(graceful.shutdown());
    if tokio::time::timeout(cut, drained.as_mut()).await.is_ok() {
        return;
    }
    tracing::info!("answering the requests still in flight: the grace period is nearly over");
    app.cut_in_flight();
    if tokio::time::timeout(grace - cut, drained).await.is_err() {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing them"
        );
    }
}

/// When in a shutdown `grace` the requests still in flight are answered: a fifth of it, at
/// most a second, before its end, which leaves the answers time to go out.
fn cut_at(grace: Duration) -> Duration {
    grace - (grace / 5).min(Duration::from_secs(1))
}

/// One accepted connection and what serving it needs.
struct Connection {
    app: App,
    peer: SocketAddr,
    watcher: Watcher,
    /// Over `max_connections`: its first request is answered 503 and it is closed.
    refused: bool,
}

impl Connection {
    /// Serves (or refuses) the connection until it closes, after the TLS handshake if any.
    async fn run(self, stream: TcpStream, tls: Option<Acceptor>) {
        let Some(tls) = tls else {
            let limit = if self.refused {
                REFUSAL_READ_TIMEOUT
            } else {
                self.app.config().idle_timeout
            };
            let Some(protocol) = sniff(&stream, limit).await else {
                return;
            };
            // Refusals are rare: boxed, their state does not widen every task.
            return if self.refused {
                Box::pin(self.refuse_io(stream, protocol)).await
            } else {
                self.serve_io(stream, protocol).await
            };
        };
        // Boxed: a task's size is its largest state, and a TLS stream is kilobytes; plain
        // connections should not pay for it.
        #[cfg(feature = "tls")]
        Box::pin(async move {
            let limit = if self.refused {
                REFUSAL_READ_TIMEOUT
            } else {
                self.app.config().idle_timeout
            };
            let Some(stream) = self.handshake(&tls, stream, limit).await else {
                return;
            };
            let protocol = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Http1,
            };
            if self.refused {
                self.refuse_io(stream, protocol).await;
            } else {
                self.serve_io(stream, protocol).await;
            }
        })
        .await;
        #[cfg(not(feature = "tls"))]
        match tls {}
    }

    async fn serve_io<I>(self, io: I, protocol: Protocol)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = self.app.config();
        let idle_timeout = config.idle_timeout;
        let h2 = (protocol == Protocol::Http2).then(|| http2_builder(&config.http2));
        let app = self.app;
        let ended = match h2 {
            // Boxed: an HTTP/2 connection's state is kilobytes, and every HTTP/1.1 connection's
            // task would be that large too. Its writes are gathered: the answers of the streams
            // that finish in one turn of the scheduler leave in one write.
            Some(h2) => {
                let service = service_fn(move |request| {
                    // Routed now: the future hyper keeps holds the answer's future only.
                    let answer = app.handle(request);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let io = TokioIo::new(Coalesce::new(io));
                Box::pin(self.watcher.watch(h2.serve_connection(io, service))).await
            }
            None => {
                // Driven by `malformed::drive`, which answers a request hyper cannot parse;
                // it needs the answer's future to be `Unpin` (one box per request).
                let progress = Arc::new(Progress::default());
                let closing = app.closing();
                let dispatched = Arc::clone(&progress);
                let service = service_fn(move |request: hyper::Request<Incoming>| {
                    dispatched.dispatched();
                    let progress = Arc::clone(&dispatched);
                    let pacing = Arc::clone(&dispatched.pacing);
                    let answer = app.handle(request.map(|body| Watched::new(body, progress)));
                    // Handed to hyper no faster than the socket takes it (`pacing`).
                    Box::pin(async move {
                        let answer = answer.await;
                        Ok::<_, Infallible>(answer.map(|body| Paced::new(body, pacing)))
                    })
                });
                let io = TokioIo::new(Tracked::new(io, progress));
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    // Answers to pipelined requests go out in one write, not one each.
                    .pipeline_flush(true)
                    .header_read_timeout(idle_timeout)
                    .serve_connection(io, service);
                // The graceful shutdown waits for the watcher to be dropped, at the end.
                let _watching = &self.watcher;
                malformed::drive(connection, closing).await
            }
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, peer = %self.peer, "connection ended with an error");
        }
    }

    /// Answers the first request of a connection over the limit with 503
    /// `TOO_MANY_CONNECTIONS` and closes it. Such a connection costs a task only until it has
    /// sent its request's headers (at most [`REFUSAL_READ_TIMEOUT`]).
    /// Over HTTP/2, every request the client sends within [`REFUSAL_READ_TIMEOUT`] is
    /// answered so, then the connection is closed.
    async fn refuse_io<I>(self, io: I, protocol: Protocol)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = service_fn(|_request| async {
            let error = ApiError::new(
                ErrorCode::TooManyConnections,
                "this node serves its maximum number of connections; retry later or elsewhere",
            );
            Ok::<_, Infallible>(error_response(&error))
        });
        let io = TokioIo::new(io);
        let ended = match protocol {
            Protocol::Http2 => {
                let mut h2 = http2_builder(&self.app.config().http2);
                h2.max_concurrent_streams(8);
                let connection = self.watcher.watch(h2.serve_connection(io, service));
                match tokio::time::timeout(REFUSAL_READ_TIMEOUT, connection).await {
                    Ok(ended) => ended,
                    Err(_elapsed) => Ok(()),
                }
            }
            Protocol::Http1 => {
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .keep_alive(false)
                    .header_read_timeout(REFUSAL_READ_TIMEOUT)
                    .serve_connection(io, service);
                self.watcher.watch(connection).await
            }
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, peer = %self.peer, "refused connection ended with an error");
        }
    }

    /// The TLS handshake, within `limit`; `None` (logged at debug) if it failed.
    #[cfg(feature = "tls")]
    async fn handshake(
        &self,
        tls: &Acceptor,
        stream: TcpStream,
        limit: Duration,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        match tokio::time::timeout(limit, tls.accept(stream)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, peer = %self.peer, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, ?limit, "TLS handshake timed out");
                None
            }
        }
    }
}

/// The HTTP version a plain connection speaks, read from its first bytes without taking them
/// (HTTP/2 with prior knowledge opens with [`PREFACE`]); `None` if the client closed or sent
/// nothing within `limit`.
async fn sniff(stream: &TcpStream, limit: Duration) -> Option<Protocol> {
    let mut start = [0u8; PREFACE.len()];
    let sniffing = async {
        loop {
            let n = stream.peek(&mut start).await.ok()?;
            if n == 0 {
                return None;
            }
            if start[..n] != PREFACE[..n] {
                return Some(Protocol::Http1);
            }
            if n == PREFACE.len() {
                return Some(Protocol::Http2);
            }
            // Part of the preface: the rest is on its way (a peek returns at once while
            // anything is unread, so wait a little rather than spin).
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(limit, sniffing).await.ok().flatten()
}

/// An HTTP/2 connection builder with `limits`.
fn http2_builder(limits: &crate::config::Http2Config) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .initial_stream_window_size(limits.initial_stream_window)
        .initial_connection_window_size(limits.initial_connection_window)
        .max_header_list_size(limits.max_header_list_size)
        .keep_alive_interval(limits.keep_alive_interval)
        .keep_alive_timeout(limits.keep_alive_interval);
    builder
}

/// One open connection, counted (and shown in the connections gauge) while it lives.
struct Counted(Arc<AtomicUsize>, Gauge);

impl Counted {
    fn new(open: &Arc<AtomicUsize>, gauge: Gauge) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        gauge.inc();
        Self(Arc::clone(open), gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.dec();
    }
}
