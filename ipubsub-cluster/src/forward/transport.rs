//! How the forwarder reaches members: one HTTP/2 connection each (`multiplexed`, the
//! default), or hyper's pooled HTTP/1.1 client over TCP connections whose writes are gathered
//! (or over TLS on top of them).

use std::error::Error;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryFutureExt;
use futures_util::future::Either;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::PeerHttp;
use super::multiplexed::{Dialer, Failure, Incoming, Multiplexed};
use crate::coalesce::Coalesce;

/// How the forwarder reaches members: over HTTP/2 (plain or, feature `tls`, HTTPS), or over
/// pooled HTTP/1.1 connections.
#[derive(Clone, Debug)]
pub(super) enum Transport {
    Multiplexed(Multiplexed),
    /// Boxed: the pooled client is 300 bytes, the multiplexed transport a pointer.
    Pooled(Box<Client<Coalescing, Full<Bytes>>>),
    #[cfg(feature = "tls")]
    PooledTls(Box<Client<hyper_rustls::HttpsConnector<Coalescing>, Full<Bytes>>>),
}

impl Transport {
    /// Plain HTTP in version `http`.
    pub(super) fn plain(http: PeerHttp) -> Self {
        match http {
            PeerHttp::Http2 => Self::Multiplexed(Multiplexed::new(Dialer::Plain)),
            PeerHttp::Http1 => Self::Pooled(Box::new(pooled(tcp_connector()))),
        }
    }

    /// HTTPS in version `http` with `tls`, each member's certificate checked for its
    /// address or for `server_name`.
    #[cfg(feature = "tls")]
    pub(super) fn tls(
        http: PeerHttp,
        tls: rustls::ClientConfig,
        server_name: Option<rustls::pki_types::ServerName<'static>>,
    ) -> Self {
        if http == PeerHttp::Http2 {
            return Self::Multiplexed(Multiplexed::new(Dialer::tls(tls, server_name)));
        }
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let builder = match server_name {
            Some(name) => {
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        // The ALPN offer: only HTTP/1.1.
        Self::PooledTls(Box::new(pooled(
            builder.enable_http1().wrap_connector(tcp_connector()),
        )))
    }

    /// Sends `request` with `body` to the member at `addr` (which `request`'s URI names too);
    /// its answer once the head arrived.
    ///
    /// Not an `async fn`: one keeps its arguments for as long as its future lives, and a
    /// forwarded long-poll's future lives as long as it waits.
    pub(super) fn send(
        &self,
        addr: SocketAddr,
        request: Request<()>,
        body: Bytes,
    ) -> impl Future<Output = Result<Response<Answer>, Failure>> + '_ {
        let client =
            match self {
                Self::Multiplexed(multiplexed) => {
                    let answer = multiplexed.send(addr, request, body);
                    return Either::Left(answer.map_ok(|answer| {
                        answer.map(|body| Answer::Multiplexed(Incoming::new(body)))
                    }));
                }
                Self::Pooled(client) => absolute(request, "http", addr)
                    .map(|request| client.request(request.map(|()| Full::new(body)))),
                #[cfg(feature = "tls")]
                Self::PooledTls(client) => absolute(request, "https", addr)
                    .map(|request| client.request(request.map(|()| Full::new(body)))),
            };
        Either::Right(async move {
            match client?.await {
                Ok(answer) => Ok(answer.map(Answer::Pooled)),
                Err(e) if !e.is_connect() => Err(Failure::Broken(Box::new(e))),
                Err(e) if failed_tls_handshake(&e) => Err(Failure::Tls(Box::new(e))),
                Err(e) => Err(Failure::Connect(Box::new(e))),
            }
        })
    }
}

/// `request`, its URI (a path and query) made absolute: `scheme://addr/path?query`.
fn absolute(
    mut request: Request<()>,
    scheme: &str,
    addr: SocketAddr,
) -> Result<Request<()>, Failure> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = format!("{scheme}://{addr}{path}")
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| Failure::Connect(e.into()))?;
    Ok(request)
}

/// A member's answer body as it arrives.
#[derive(Debug)]
pub(crate) enum Answer {
    Multiplexed(Incoming),
    Pooled(hyper::body::Incoming),
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Box<dyn Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Multiplexed(body) => Pin::new(body).poll_frame(cx),
            Self::Pooled(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Multiplexed(body) => body.is_end_stream(),
            Self::Pooled(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Multiplexed(body) => body.size_hint(),
            Self::Pooled(body) => body.size_hint(),
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

fn tcp_connector() -> Coalescing {
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

/// hyper's pooled HTTP/1.1 client over `connector`: one keep-alive connection per request in
/// flight.
fn pooled<C>(connector: C) -> Client<C, Full<Bytes>>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_idle_timeout(Duration::from_secs(60));
    builder.build(connector)
}
