//! [`serve`] (and, with feature `tls`, [`serve_tls`]): the accept loop, one hyper HTTP/1.1
//! connection per client, the connection limit, slow-client timeouts and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{ApiError, ErrorCode};
use crate::metrics::Limit;
use crate::service::{App, error_response};

/// How long a connection over the limit has to send its request before it is closed unanswered.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);

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
    app.engine().close();
    // Waiting log readers are released; queued appends are still written by the workers,
    // which the caller awaits after this returns.
    if let Some(log) = app.log() {
        log.close();
    }
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
            // Refusals are rare: boxed, their state does not widen every task.
            return if self.refused {
                Box::pin(self.refuse_io(stream)).await
            } else {
                self.serve_io(stream).await
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
            if self.refused {
                self.refuse_io(stream).await;
            } else {
                self.serve_io(stream).await;
            }
        })
        .await;
        #[cfg(not(feature = "tls"))]
        match tls {}
    }

    async fn serve_io<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let idle_timeout = self.app.config().idle_timeout;
        let app = self.app;
        let service = service_fn(move |request| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(request).await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            // Answers to pipelined requests go out in one write, not one each.
            .pipeline_flush(true)
            .header_read_timeout(idle_timeout)
            .serve_connection(TokioIo::new(io), service);
        if let Err(e) = self.watcher.watch(connection).await {
            tracing::debug!(error = %e, peer = %self.peer, "connection ended with an error");
        }
    }

    /// Answers the first request of a connection over the limit with 503
    /// `TOO_MANY_CONNECTIONS` and closes it. Such a connection costs a task only until it has
    /// sent its request's headers (at most [`REFUSAL_READ_TIMEOUT`]).
    async fn refuse_io<I>(self, io: I)
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
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(false)
            .header_read_timeout(REFUSAL_READ_TIMEOUT)
            .serve_connection(TokioIo::new(io), service);
        if let Err(e) = self.watcher.watch(connection).await {
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
