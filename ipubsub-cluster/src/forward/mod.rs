//! [`Forwarder`]: hands a request to the node that owns its stream, once, over one
//! multiplexed HTTP/2 connection per member (or, for members of older builds, pooled
//! keep-alive HTTP/1.1 connections: [`PeerHttp`]).
//!
//! A forwarded request carries [`FORWARDED_HEADER`] (the forwarding node's id), and the owner
//! serves it wherever it lands: a request never takes a second hop, even while two nodes
//! disagree about the ring. [`DEADLINE_HEADER`] carries the time the caller has left, so the
//! owner waits that long and no longer, and [`REQUEST_ID_HEADER`] the caller's request id, so
//! that both nodes' answers and logs name the request the same way.
//!
//! `transport` reaches members: `multiplexed` drives one HTTP/2 connection per member itself,
//! and hyper's pooled client speaks HTTP/1.1 to members that need it.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryFutureExt;
use http_body_util::BodyExt;
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, Uri, header};

use crate::in_flight::{InFlight, Permit, Relayed};
use crate::node::{Node, NodeId};
use crate::secret::{CLUSTER_SECRET_HEADER, ClusterSecret};

mod multiplexed;
mod transport;

use multiplexed::Failure;
pub(crate) use transport::Answer;
use transport::Transport;

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

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
/// [`FORWARDED_HEADER`] as a name made at compile time (looking a header up by `&str`
/// parses the name on every call).
pub const FORWARDED_NAME: HeaderName = HeaderName::from_static(FORWARDED_HEADER);
/// [`HANDOFF_HEADER`] as a name made at compile time.
pub const HANDOFF_NAME: HeaderName = HeaderName::from_static(HANDOFF_HEADER);
/// [`DEADLINE_HEADER`] as a name made at compile time.
pub const DEADLINE_NAME: HeaderName = HeaderName::from_static(DEADLINE_HEADER);
/// [`REQUEST_ID_HEADER`] as a name made at compile time.
pub const REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
/// [`CLUSTER_SECRET_HEADER`] as a name made at compile time.
pub const CLUSTER_SECRET_NAME: HeaderName = HeaderName::from_static(CLUSTER_SECRET_HEADER);

/// The header a reconnecting event-stream client sends ([`Forwarder::forward_events`]).
const LAST_EVENT_ID: &str = "last-event-id";

/// A pooled HTTP client to the other members. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Forwarder {
    transport: Transport,
    /// [`FORWARDED_HEADER`]'s value: this node's id.
    forwarded: HeaderValue,
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
            transport: Transport::plain(http),
            forwarded: HeaderValue::from_str(local.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
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
        self.transport = Transport::plain(http);
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
        self.transport = Transport::tls(self.http, tls, server_name);
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
        last_event_id: Option<&HeaderValue>,
    ) -> Result<Response<Relayed>, ForwardError> {
        let permit = self.enter(owner)?;
        let mut request = self.request(Method::GET, path_and_query, wait, request_id)?;
        let headers = request.headers_mut();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        if let Some(id) = last_event_id {
            headers.insert(LAST_EVENT_ID, id.clone());
        }
        // The head comes at once: an owner answers an event stream before it has any event.
        let limit = SLACK;
        match tokio::time::timeout(limit, self.send(owner, request, Bytes::new())).await {
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
        let mut request = self.request(method, path_and_query, wait, request_id)?;
        if let Some(copy) = handoff {
            let value = HeaderValue::from_str(copy).map_err(|e| ForwardError::Request(e.into()))?;
            request.headers_mut().insert(HANDOFF_NAME, value);
        }
        let limit = wait + SLACK;
        let exchange = async {
            let (parts, body) = self.send(owner, request, body).await?.into_parts();
            let body = body.collect().await.map_err(|e| ForwardError::Broken {
                node: owner.id().clone(),
                source: e,
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
    ///
    /// Built field by field with header names made at compile time: through
    /// `Request::builder` and `&str` names, every request parsed each name again (4.3k
    /// instructions per request, measured by `benches/instructions.sh … forwarding`).
    fn request(
        &self,
        method: Method,
        path_and_query: &str,
        wait: Duration,
        request_id: &str,
    ) -> Result<Request<()>, ForwardError> {
        // The transport puts in the scheme and the owner's address.
        let path_and_query =
            PathAndQuery::try_from(path_and_query).map_err(|e| ForwardError::Request(e.into()))?;
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = Uri::from(path_and_query);
        // A deadline of whole seconds (a receive's `timeoutSeconds`, most waits) is one of
        // few values, each sent in full once and then as an index into the connection's
        // HPACK table; any other is never indexed, and neither is the id: each would take a
        // table entry for one request and evict the headers that repeat on every request.
        let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let mut deadline = HeaderValue::from(millis);
        deadline.set_sensitive(millis % 1000 != 0);
        let mut id =
            HeaderValue::from_str(request_id).map_err(|e| ForwardError::Request(e.into()))?;
        id.set_sensitive(true);
        let headers = request.headers_mut();
        headers.reserve(6);
        headers.insert(header::CONTENT_TYPE, APPLICATION_JSON);
        headers.insert(FORWARDED_NAME, self.forwarded.clone());
        headers.insert(DEADLINE_NAME, deadline);
        headers.insert(REQUEST_ID_NAME, id);
        let secret = self.secret.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(secret) = &*secret {
            headers.insert(CLUSTER_SECRET_NAME, secret.header().clone());
        }
        Ok(request)
    }

    /// Sends `request` with `body` to `owner`; its answer once the head arrived.
    /// Not an `async fn`, as `Transport::send` is not.
    fn send<'a>(
        &'a self,
        owner: &'a Node,
        request: Request<()>,
        body: Bytes,
    ) -> impl Future<Output = Result<Response<Answer>, ForwardError>> + 'a {
        let answer = self.transport.send(owner.http_addr(), request, body);
        answer.map_err(move |failure| {
            let node = owner.id().clone();
            match failure {
                Failure::Connect(source) => ForwardError::Unreachable { node, source },
                Failure::Tls(source) => ForwardError::Tls { node, source },
                Failure::Broken(source) => ForwardError::Broken { node, source },
            }
        })
    }
}

#[cfg(test)]
mod tests;
