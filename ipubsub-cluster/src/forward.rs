//! [`Forwarder`]: hands a request to the node that owns its stream, once, over one
//! multiplexed HTTP/2 connection per member (or, for members of older builds, pooled
//! keep-alive HTTP/1.1 connections: [`PeerHttp`]).
//!
//! A forwarded request carries [`FORWARDED_HEADER`] (the forwarding node's id), and the owner
//! serves it wherever it lands: a request never takes a second hop, even while two nodes
//! disagree about the ring. [`DEADLINE_HEADER`] carries the time the caller has left, so the
//! owner waits that long and no longer, and [`REQUEST_ID_HEADER`] the caller's request id, so
//! that both nodes' answers and logs name the request the same way.

use std::error::Error;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, Uri, header};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::coalesce::Coalesce;
use crate::in_flight::{InFlight, Permit, Relayed};
use crate::node::{Node, NodeId};
use crate::secret::{CLUSTER_SECRET_HEADER, ClusterSecret};

/// Marks a request as forwarded; its value is the forwarding node's id.
pub const FORWARDED_HEADER: &str = "x-ipubsub-forwarded";

/// Marks a forwarded send as a hand-off: a message this node had accepted into a stream that
/// now belongs to the receiving node, which takes it over as accepted (never refused,
/// evicted or made to wait). Honoured only on a forwarded request (proven by the cluster
/// secret when one is set). Its value names the copy handed over, the same on every attempt:
/// `at=` and the µs at which the handing node accepted it (with [`FORWARDED_HEADER`], the
/// stream and the message id, that copy is taken over once).
pub const HANDOFF_HEADER: &str = "x-ipubsub-handoff";

/// Milliseconds the original caller has left; the owner waits no longer than that.
pub const DEADLINE_HEADER: &str = "x-ipubsub-deadline-ms";

/// The request's id: taken from the client when it sends a valid one, made up otherwise,
/// returned on every response and kept across the forwarded hop.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// No connection to the owner could be made: the request was not delivered, so it is
    /// safe to send it elsewhere.
    #[error("cannot connect to node {node}")]
    Unreachable {
        /// The owner.
        node: NodeId,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// (Feature `tls`.) The TLS handshake with the owner failed, most often because its
    /// certificate is not trusted (`tls.peer_ca_file`) or not for the name checked
    /// (`tls.peer_server_name`): a configuration error rather than an outage. The request was
    /// not delivered, so it is safe to send it elsewhere.
    #[error("the TLS handshake with node {node} failed")]
    Tls {
        /// The owner.
        node: NodeId,
        /// What failed; its chain holds the TLS library's reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The exchange broke after the request may have been delivered: retrying could repeat it.
    #[error("the exchange with node {node} broke")]
    Broken {
        /// The owner.
        node: NodeId,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The owner did not answer in time.
    #[error("node {node} did not answer within {waited:?}")]
    Timeout {
        /// The owner.
        node: NodeId,
        /// How long this node waited.
        waited: Duration,
    },
    /// This node already has its maximum of requests in flight to the owner
    /// ([`Forwarder::with_max_in_flight`]): the request was not delivered.
    #[error("this node has its maximum of {max} requests in flight to node {node}")]
    Busy {
        /// The owner.
        node: NodeId,
        /// The cap in force.
        max: usize,
    },
    /// The request could not be built (a bug).
    #[error("cannot build the forwarded request")]
    Request(#[source] hyper::http::Error),
}

/// Requests in flight to one member at most, by default: the default number of requests an
/// ipubsub node takes on one HTTP/2 connection (`http.http2.max_concurrent_streams`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16_384;

/// Which HTTP version the forwarder speaks to members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerHttp {
    /// HTTP/2 (with prior knowledge over plain TCP, by ALPN over TLS): one connection per
    /// member carries every request to it, so a forwarded long-poll costs the owner a stream,
    /// not a connection. Every member must speak it.
    #[default]
    Http2,
    /// HTTP/1.1 over a pool of keep-alive connections, one per request in flight: for a
    /// cluster that still has members of builds without HTTP/2 (during a rolling upgrade).
    Http1,
}

/// The header a reconnecting event-stream client sends ([`Forwarder::forward_events`]).
const LAST_EVENT_ID: &str = "last-event-id";

/// How the forwarder reaches members: plain HTTP, or (feature `tls`) HTTPS.
#[derive(Clone, Debug)]
enum Transport {
    Plain(Client<Coalescing, Full<Bytes>>),
    #[cfg(feature = "tls")]
    Tls(Client<hyper_rustls::HttpsConnector<Coalescing>, Full<Bytes>>),
}

impl Transport {
    fn scheme(&self) -> &'static str {
        match self {
            Self::Plain(_) => "http",
            #[cfg(feature = "tls")]
            Self::Tls(_) => "https",
        }
    }

    fn request(&self, request: Request<Full<Bytes>>) -> ResponseFuture {
        match self {
            Self::Plain(client) => client.request(request),
            #[cfg(feature = "tls")]
            Self::Tls(client) => client.request(request),
        }
    }
}

/// A pooled HTTP client to the other members. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Forwarder {
    transport: Transport,
    local: NodeId,
    /// Sent on every forwarded request, when the cluster has one; replaceable
    /// ([`set_secret`](Self::set_secret)) and shared by clones.
    secret: Arc<RwLock<Option<ClusterSecret>>>,
    http: PeerHttp,
    /// Requests in flight per member, capped.
    in_flight: InFlight,
    /// What [`with_tls`](Self::with_tls) was given, kept to build the client again when the
    /// HTTP version changes.
    #[cfg(feature = "tls")]
    tls: Option<(
        rustls::ClientConfig,
        Option<rustls::pki_types::ServerName<'static>>,
    )>,
}

/// Time given to the owner beyond the caller's own wait, to answer and transfer.
const SLACK: Duration = Duration::from_secs(5);

impl Forwarder {
    /// A forwarder for the node `local`.
    pub fn new(local: NodeId) -> Self {
        let http = PeerHttp::default();
        Self {
            transport: Transport::Plain(pooled(tcp_connector(), http)),
            local,
            secret: Arc::new(RwLock::new(None)),
            http,
            in_flight: InFlight::new(DEFAULT_MAX_IN_FLIGHT),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// This forwarder, with at most `max` requests in flight to each member (at least 1):
    /// past it a forward fails at once with [`ForwardError::Busy`]. A request's place is
    /// given back once its answer was read, an event stream's when the stream ends.
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.in_flight = InFlight::new(max.max(1));
        self
    }

    /// This forwarder, speaking `http` to members.
    pub fn with_http(mut self, http: PeerHttp) -> Self {
        self.http = http;
        self.transport = Transport::Plain(pooled(tcp_connector(), http));
        #[cfg(feature = "tls")]
        if let Some((tls, server_name)) = self.tls.take() {
            return self.with_tls(tls, server_name);
        }
        self
    }

    /// This forwarder, talking HTTPS to members with `tls` (whose roots are the certificates
    /// members may present). Each member's certificate is checked for the address it
    /// advertises (an IP address subject name), or for `server_name` when given: one name
    /// every member's certificate carries.
    #[cfg(feature = "tls")]
    pub fn with_tls(
        mut self,
        tls: rustls::ClientConfig,
        server_name: Option<rustls::pki_types::ServerName<'static>>,
    ) -> Self {
        self.tls = Some((tls.clone(), server_name.clone()));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let builder = match server_name {
            Some(name) => {
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        // The ALPN offer: only the version this forwarder speaks.
        let connector = match self.http {
            PeerHttp::Http2 => builder.enable_http2().wrap_connector(tcp_connector()),
            PeerHttp::Http1 => builder.enable_http1().wrap_connector(tcp_connector()),
        };
        self.transport = Transport::Tls(pooled(connector, self.http));
        self
    }

    /// This forwarder, proving its requests with `secret` ([`CLUSTER_SECRET_HEADER`]).
    pub fn with_secret(self, secret: Option<ClusterSecret>) -> Self {
        self.set_secret(secret);
        self
    }

    /// From now on, proves requests with `secret` (a reload); this forwarder's clones too.
    pub fn set_secret(&self, secret: Option<ClusterSecret>) {
        *self.secret.write().unwrap_or_else(PoisonError::into_inner) = secret;
    }

    /// Sends `method path_and_query` with `body` to `owner` and returns its answer as is.
    /// `wait` is how long the caller's request may wait (its long-poll or blocking time);
    /// `request_id` goes along as [`REQUEST_ID_HEADER`], and the cluster secret, if any, as
    /// [`CLUSTER_SECRET_HEADER`].
    pub async fn forward(
        &self,
        owner: &Node,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        wait: Duration,
        request_id: &str,
    ) -> Result<Response<Bytes>, ForwardError> {
        self.exchange(owner, method, path_and_query, body, wait, request_id, None)
            .await
    }

    /// Forwards a receive asked as an event stream (`GET path_and_query` with
    /// `Accept: text/event-stream`, and `last_event_id` when the client sent one) and returns
    /// the owner's answer once its head arrives, its body still streaming: the caller passes
    /// it through as it comes. `wait` bounds the time to the head (the stream itself lasts
    /// as long as the owner keeps it open).
    pub async fn forward_events(
        &self,
        owner: &Node,
        path_and_query: &str,
        wait: Duration,
        request_id: &str,
        last_event_id: Option<&hyper::header::HeaderValue>,
    ) -> Result<Response<Relayed>, ForwardError> {
        let permit = self.enter(owner)?;
        let mut request = self.request(
            owner,
            Method::GET,
            path_and_query,
            Bytes::new(),
            wait,
            request_id,
        )?;
        let headers = request.headers_mut();
        headers.insert(
            header::ACCEPT,
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        if let Some(id) = last_event_id {
            headers.insert(LAST_EVENT_ID, id.clone());
        }
        // The head comes at once: an owner answers an event stream before it has any event.
        let limit = SLACK;
        match tokio::time::timeout(limit, self.send(owner, request)).await {
            Ok(result) => result.map(|answer| answer.map(|body| Relayed::new(body, permit))),
            Err(_elapsed) => Err(ForwardError::Timeout {
                node: owner.id().clone(),
                waited: limit,
            }),
        }
    }

    /// A place among the requests in flight to `owner`, or [`ForwardError::Busy`].
    fn enter(&self, owner: &Node) -> Result<Permit, ForwardError> {
        self.in_flight
            .enter(owner.id())
            .ok_or_else(|| ForwardError::Busy {
                node: owner.id().clone(),
                max: self.in_flight.max(),
            })
    }

    /// Hands a message over to `owner`: `body` is a send (to `path`) of a message this node
    /// had accepted, marked with [`HANDOFF_HEADER`] set to `copy`, which names this node's
    /// copy of the message the same way on every attempt (the owner takes one copy over
    /// once). Otherwise as [`forward`](Self::forward).
    pub async fn hand_off(
        &self,
        owner: &Node,
        path: &str,
        body: Bytes,
        wait: Duration,
        request_id: &str,
        copy: &str,
    ) -> Result<Response<Bytes>, ForwardError> {
        self.exchange(
            owner,
            Method::POST,
            path,
            body,
            wait,
            request_id,
            Some(copy),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        owner: &Node,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        wait: Duration,
        request_id: &str,
        handoff: Option<&str>,
    ) -> Result<Response<Bytes>, ForwardError> {
        let _permit = self.enter(owner)?;
        let mut request = self.request(owner, method, path_and_query, body, wait, request_id)?;
        if let Some(copy) = handoff {
            let value = hyper::header::HeaderValue::from_str(copy)
                .map_err(|e| ForwardError::Request(e.into()))?;
            request.headers_mut().insert(HANDOFF_HEADER, value);
        }
        let limit = wait + SLACK;
        let exchange = async {
            let (parts, body) = self.send(owner, request).await?.into_parts();
            let body = body.collect().await.map_err(|e| ForwardError::Broken {
                node: owner.id().clone(),
                source: Box::new(e),
            })?;
            Ok(Response::from_parts(parts, body.to_bytes()))
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(result) => result,
            Err(_elapsed) => Err(ForwardError::Timeout {
                node: owner.id().clone(),
                waited: limit,
            }),
        }
    }

    /// The forwarded request: the hop, the deadline, the request id and the secret.
    fn request(
        &self,
        owner: &Node,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        wait: Duration,
        request_id: &str,
    ) -> Result<Request<Full<Bytes>>, ForwardError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!(
                "{}://{}{}",
                self.transport.scheme(),
                owner.http_addr(),
                path_and_query
            ))
            .header(header::CONTENT_TYPE, "application/json")
            .header(FORWARDED_HEADER, self.local.as_str())
            .header(DEADLINE_HEADER, wait.as_millis().to_string())
            .body(Full::new(body))
            .map_err(ForwardError::Request)?;
        // Never indexed: each id is new, and inserting it into the connection's HPACK table
        // would evict the headers that repeat on every request.
        let mut id = hyper::header::HeaderValue::from_str(request_id)
            .map_err(|e| ForwardError::Request(e.into()))?;
        id.set_sensitive(true);
        request.headers_mut().insert(REQUEST_ID_HEADER, id);
        let secret = self.secret.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(secret) = &*secret {
            request
                .headers_mut()
                .insert(CLUSTER_SECRET_HEADER, secret.header().clone());
        }
        Ok(request)
    }

    /// Sends `request` to `owner`; its answer once the head arrived.
    async fn send(
        &self,
        owner: &Node,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ForwardError> {
        self.transport.request(request).await.map_err(|e| {
            let node = owner.id().clone();
            if !e.is_connect() {
                ForwardError::Broken {
                    node,
                    source: Box::new(e),
                }
            } else if failed_tls_handshake(&e) {
                ForwardError::Tls {
                    node,
                    source: Box::new(e),
                }
            } else {
                ForwardError::Unreachable {
                    node,
                    source: Box::new(e),
                }
            }
        })
    }
}

/// Whether a TLS error caused `error`. The TLS connector reports a failed handshake as an
/// I/O error wrapping the TLS library's own, and an I/O error's `source` skips what it wraps,
/// so each I/O error in the chain is opened.
#[cfg(feature = "tls")]
fn failed_tls_handshake(error: &(dyn std::error::Error + 'static)) -> bool {
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
fn failed_tls_handshake(_: &(dyn std::error::Error + 'static)) -> bool {
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
struct Coalescing(HttpConnector);

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

fn pooled<C>(connector: C, http: PeerHttp) -> Client<C, Full<Bytes>>
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// What the owner receives: the hop, the deadline, the caller's request id and the
    /// cluster secret.
    #[tokio::test]
    async fn a_forwarded_request_carries_its_hop_deadline_and_request_id()
    -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let owner = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await?;
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                let n = socket.read(&mut chunk).await?;
                head.extend_from_slice(&chunk[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&head).to_lowercase())
        });
        let secret = ClusterSecret::new("s3cret-s3cret-s3cret")?;
        let forwarder = Forwarder::new(NodeId::new("n1")?)
            .with_http(PeerHttp::Http1)
            .with_secret(Some(secret));
        let to = Node::new(NodeId::new("n2")?, addr);
        let answer = forwarder
            .forward(
                &to,
                Method::GET,
                "/x?y=1",
                Bytes::new(),
                Duration::from_millis(1500),
                "req-7.a",
            )
            .await?;
        assert_eq!(answer.status(), 200);
        let head = owner.await??;
        assert!(head.starts_with("get /x?y=1 http/1.1\r\n"), "{head}");
        for line in [
            "x-ipubsub-forwarded: n1",
            "x-ipubsub-deadline-ms: 1500",
            "x-request-id: req-7.a",
            "x-ipubsub-cluster-secret: s3cret-s3cret-s3cret",
        ] {
            assert!(head.contains(line), "{line} missing from {head}");
        }
        Ok(())
    }

    /// Over HTTP/2, every request to one member goes over one connection, side by side: 50
    /// requests that each wait at the owner for the others to arrive all complete.
    #[tokio::test]
    async fn requests_to_one_member_share_one_http2_connection()
    -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        const REQUESTS: usize = 50;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let all_in = Arc::new(tokio::sync::Barrier::new(REQUESTS));
        let accepted = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let all_in = Arc::clone(&all_in);
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let all_in = Arc::clone(&all_in);
                    async move {
                        // No answer until every request is in flight at once.
                        all_in.wait().await;
                        let forwarded = request.headers().contains_key(FORWARDED_HEADER);
                        let body = Full::new(Bytes::from(if forwarded { "fwd" } else { "?" }));
                        Ok::<_, std::convert::Infallible>(Response::new(body))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service),
                );
            }
        });
        let forwarder = Forwarder::new(NodeId::new("n1")?);
        let to = Node::new(NodeId::new("n2")?, addr);
        let requests = (0..REQUESTS).map(|i| {
            let (forwarder, to) = (forwarder.clone(), to.clone());
            tokio::spawn(async move {
                let path = format!("/r?i={i}");
                let wait = Duration::from_secs(5);
                forwarder
                    .forward(&to, Method::GET, &path, Bytes::new(), wait, "r")
                    .await
            })
        });
        for request in requests.collect::<Vec<_>>() {
            let answer = request.await??;
            assert_eq!(answer.body().as_ref(), b"fwd");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        Ok(())
    }

    /// Past its cap of requests in flight to a member, a forward fails at once as busy (not
    /// queued behind the member's stream limit); answered requests give their places back.
    #[tokio::test]
    async fn past_its_cap_a_forward_to_a_member_is_refused_at_once()
    -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        use std::sync::Arc;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        // The owner holds every request until it is told to answer.
        let (release, released) = tokio::sync::watch::channel(false);
        let released = Arc::new(released);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let released = Arc::clone(&released);
                let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                    let mut released = (*released).clone();
                    async move {
                        let _ = released.wait_for(|&answer| answer).await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service),
                );
            }
        });
        let forwarder = Forwarder::new(NodeId::new("n1")?).with_max_in_flight(2);
        let to = Node::new(NodeId::new("n2")?, addr);
        let forward = |forwarder: Forwarder, to: Node| async move {
            let wait = Duration::from_secs(5);
            forwarder
                .forward(&to, Method::GET, "/r", Bytes::new(), wait, "r")
                .await
        };
        let held: Vec<_> = (0..2)
            .map(|_| tokio::spawn(forward(forwarder.clone(), to.clone())))
            .collect();
        while forwarder.in_flight.count(to.id()) < 2 {
            tokio::task::yield_now().await;
        }
        let refused = tokio::time::timeout(
            Duration::from_secs(1),
            forward(forwarder.clone(), to.clone()),
        )
        .await?;
        assert!(
            matches!(refused, Err(ForwardError::Busy { max: 2, .. })),
            "{refused:?}"
        );
        release.send(true)?;
        for request in held {
            assert_eq!(request.await??.status(), 200);
        }
        assert_eq!(forwarder.in_flight.count(to.id()), 0);
        let again = forward(forwarder.clone(), to.clone()).await?;
        assert_eq!(again.status(), 200);
        Ok(())
    }

    /// A TLS failure is found however deep the connector wrapped it; a refused connection
    /// is not one.
    #[cfg(feature = "tls")]
    #[test]
    fn a_failed_handshake_is_told_from_a_refused_connection() {
        #[derive(Debug, thiserror::Error)]
        #[error("connect")]
        struct Connect(#[source] Box<dyn std::error::Error + Send + Sync>);

        let untrusted = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = Connect(Box::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            untrusted,
        )));
        assert!(failed_tls_handshake(&wrapped));
        let refused = Connect(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(!failed_tls_handshake(&refused));
    }
}
