//! [`serve`]: the accept loop, one hyper HTTP/1.1 connection per client, the connection limit,
//! slow-client timeouts and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;

use crate::error::{ApiError, ErrorCode};
use crate::service::{App, error_response};

/// How long a connection over the limit has to send its request before it is closed unanswered.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `app` on `listener` until `shutdown` completes, then shuts down gracefully: stops
/// accepting, closes the engine (every waiting receive is answered, every blocked send
/// refused), lets in-flight responses finish and waits up to `grace` for connections to close.
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
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let open = Arc::new(AtomicUsize::new(0));
    let (max_connections, idle_timeout) = {
        let config = app.config();
        (config.max_connections, config.idle_timeout)
    };
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
        if open.load(Ordering::Relaxed) >= max_connections {
            refuse(stream, peer, app.clone());
            continue;
        }
        let counted = Counted::new(&open, app.metrics().connections().clone());
        let app = app.clone();
        let service = service_fn(move |request| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(request).await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            // Answers to pipelined requests go out in one write, not one each.
            .pipeline_flush(true)
            .header_read_timeout(idle_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _counted = counted;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
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
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing them"
        );
    }
}

/// Answers the first request of a connection over the limit with 503 `TOO_MANY_CONNECTIONS`
/// and closes it. Such a connection costs a task only until it has sent its request's headers
/// (at most [`REFUSAL_READ_TIMEOUT`]); its answer is the same for every request.
fn refuse(stream: tokio::net::TcpStream, peer: std::net::SocketAddr, app: App) {
    tracing::debug!(%peer, "refusing a connection: too many open");
    app.metrics().connection_refused();
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
        .serve_connection(TokioIo::new(stream), service);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, %peer, "refused connection ended with an error");
        }
    });
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
