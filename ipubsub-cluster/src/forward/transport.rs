//! How the forwarder reaches members: a pooled hyper client (HTTP/2 by default) over TCP
//! connections whose writes are gathered, or over TLS on top of them.

use std::error::Error;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::PeerHttp;
use crate::coalesce::Coalesce;

/// How the forwarder reaches members: plain HTTP, or (feature `tls`) HTTPS.
#[derive(Clone, Debug)]
pub(super) enum Transport {
    Plain(Client<Coalescing, Full<Bytes>>),
    #[cfg(feature = "tls")]
    Tls(Client<hyper_rustls::HttpsConnector<Coalescing>, Full<Bytes>>),
}

impl Transport {
    pub(super) fn scheme(&self) -> &'static str {
        match self {
            Self::Plain(_) => "http",
            #[cfg(feature = "tls")]
            Self::Tls(_) => "https",
        }
    }

    pub(super) fn request(&self, request: Request<Full<Bytes>>) -> ResponseFuture {
        match self {
            Self::Plain(client) => client.request(request),
            #[cfg(feature = "tls")]
            Self::Tls(client) => client.request(request),
        }
    }
}

/// Whether a TLS error caused `error`. The TLS connector reports a failed handshake as an
/// I/O error wrapping the TLS library's own, and an I/O error's `source` skips what it wraps,
/// so each I/O error in the chain is opened.
#[cfg(feature = "tls")]
pub(super) fn failed_tls_handshake(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(cause) = next {
        if cause.is::<rustls::Error>() {
            return true;
        }
        if let Some(wrapped) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && failed_tls_handshake(wrapped)
        {
            return true;
        }
        next = cause.source();
    }
    false
}

#[cfg(not(feature = "tls"))]
pub(super) fn failed_tls_handshake(_: &(dyn std::error::Error + 'static)) -> bool {
    false
}

pub(super) fn tcp_connector() -> Coalescing {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    // With TLS, the TLS connector wraps it and asks it for `https` URIs.
    connector.enforce_http(false);
    Coalescing(connector)
}

/// TCP connections to members whose writes are gathered ([`Coalesce`]): the frames of the
/// requests forwarded in one turn of the scheduler leave in one write.
#[derive(Clone, Debug)]
pub(super) struct Coalescing(HttpConnector);

type Connecting = Pin<
    Box<
        dyn Future<Output = Result<TokioIo<Coalesce<TcpStream>>, Box<dyn Error + Send + Sync>>>
            + Send,
    >,
>;

impl tower_service::Service<Uri> for Coalescing {
    type Response = TokioIo<Coalesce<TcpStream>>;
    type Error = Box<dyn Error + Send + Sync>;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let stream = connecting.await?.into_inner();
            Ok(TokioIo::new(Coalesce::new(stream)))
        })
    }
}

impl<T: Connection> Connection for Coalesce<T> {
    fn connected(&self) -> Connected {
        self.get_ref().connected()
    }
}

/// How often an HTTP/2 connection to a member is pinged, and how long an answer may take: a
/// member that stopped (paused, cut off) is found within both, and every request in flight
/// on the connection fails then instead of at its own deadline.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn pooled<C>(connector: C, http: PeerHttp) -> Client<C, Full<Bytes>>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_idle_timeout(Duration::from_secs(60));
    if http == PeerHttp::Http2 {
        builder
            .http2_only(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .http2_keep_alive_interval(PING_INTERVAL)
            .http2_keep_alive_timeout(PING_TIMEOUT)
            .http2_keep_alive_while_idle(true)
            // Forwarded sends carry whole bodies: room for a large one per stream, and for
            // many at once on the one connection.
            .http2_initial_stream_window_size(1024 * 1024)
            .http2_initial_connection_window_size(16 * 1024 * 1024);
    }
    builder.build(connector)
}
