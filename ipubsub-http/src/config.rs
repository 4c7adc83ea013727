//! [`HttpConfig`]: the limits and defaults the adapter applies to requests.

use std::time::Duration;

use ipubsub_cluster::{ClusterSecret, PeerHttp};

use crate::auth::Auth;
use crate::cors::Cors;

/// Limits, defaults and access rules of the HTTP API. `Default` gives the production defaults:
/// no auth, no cluster secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes; a larger one is a 413.
    pub max_body_bytes: usize,
    /// Bytes of request bodies held at once, all connections together: a body that does not
    /// fit is refused with 503 `MEMORY_LIMIT` (each chunk is taken as it arrives), and its
    /// bytes are given back when its request is answered.
    pub max_body_bytes_in_flight: usize,
    /// Longest stream id accepted, in bytes (at most 256).
    pub max_stream_id_bytes: usize,
    /// Wait of a receive that gives no `timeoutSeconds`.
    pub default_receive_timeout: Duration,
    /// Longest wait a receive or a blocking send may ask for; more is a 400.
    pub max_timeout: Duration,
    /// `inMemoryStreamSize` of a send that gives none.
    pub default_stream_size: u32,
    /// Largest `inMemoryStreamSize` accepted; more is a 400.
    pub max_stream_size: u32,
    /// `dbTTLSeconds` of a persistent send that gives none.
    pub default_ttl: Duration,
    /// Largest `dbTTLSeconds` accepted; more is a 400.
    pub max_ttl: Duration,
    /// Largest `maxMessages` accepted.
    pub max_messages: usize,
    /// Most sends one `sendBatch` may hold; more is a 400.
    pub max_batch_items: usize,
    /// Longest lease an acknowledged receive (`ackTimeoutSeconds`) or an extension may ask
    /// for; more is a 400.
    pub max_ack_timeout: Duration,
    /// Most receipt handles one `ack`, `nack` or `extend` may hold; more is a 400.
    pub max_receipt_handles: usize,
    /// The dedupe window of an in-memory send that gives no `dedupeWindowSeconds` (fixed
    /// for its stream if the stream has none yet); zero: none, every send is a message.
    pub default_dedupe_window: Duration,
    /// Longest `dedupeWindowSeconds` accepted; more is a 400.
    pub max_dedupe_window: Duration,
    /// How long a persistent send or read may wait for the store before a 503.
    pub store_timeout: Duration,
    /// How long a client may take to send a request's body once its headers arrived; then a
    /// 408 and the connection is closed.
    pub body_read_timeout: Duration,
    /// Client connections served at once; a connection beyond is answered 503
    /// `TOO_MANY_CONNECTIONS` and closed.
    pub max_connections: usize,
    /// How long a connection may stay open between requests (or while a client sends a
    /// request's headers) before it is closed.
    pub idle_timeout: Duration,
    /// The bearer tokens sends and receives need; `None`: no auth.
    pub auth: Option<Auth>,
    /// Proves node-to-node requests. With it, a request marked forwarded is served only if it
    /// carries the secret (else a 403) and this node's forwards carry it. Without it, a
    /// forwarded request is trusted unless auth is on, in which case it is refused.
    pub cluster_secret: Option<ClusterSecret>,
    /// Also accepted on forwarded requests, never sent: the other secrets of a rotation.
    pub accepted_cluster_secrets: Vec<ClusterSecret>,
    /// How to reach members that listen with TLS; `None`: members are reached over plain
    /// HTTP. Every member of a cluster listens the same way.
    #[cfg(feature = "tls")]
    pub peer_tls: Option<crate::tls::PeerTls>,
    /// Why this node has no log although one is configured (a node-local store in a
    /// multi-node cluster): `writeToDB` and `readFromDB` are then refused with
    /// `PERSISTENCE_NOT_SHARED` and this reason, instead of `PERSISTENCE_NOT_CONFIGURED`.
    pub persistence_refused: Option<String>,
    /// Which pages of other origins may call the API from a browser; off by default.
    pub cors: Cors,
    /// How often an event stream with nothing to send sends a comment, so that proxies and
    /// load balancers do not close it as idle.
    pub sse_heartbeat: Duration,
    /// The limits of HTTP/2 connections (the listener speaks both versions).
    pub http2: Http2Config,
    /// Which HTTP version this node speaks to members when it forwards a request or hands a
    /// message over.
    pub peer_http: PeerHttp,
    /// Requests this node has in flight to one member at most (forwarded requests, event
    /// streams and hand-offs); one more is answered 503 `TOO_MANY_WAITERS`.
    pub max_forwarded_per_member: usize,
}

/// The limits of one HTTP/2 connection. Every other limit (body size and read time, waiters,
/// auth, connection count) applies to each request on it as to a request over HTTP/1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Http2Config {
    /// Requests one connection may have in flight at once; the client waits for one to end
    /// before it opens more. The one connection a member forwards over carries all of that
    /// member's forwarded requests, waiting long-polls included, so the default is high; a
    /// node's waiting requests stay bounded by the engine's waiter limits.
    pub max_concurrent_streams: u32,
    /// Bytes a client may send on one request before the server reads them (the request's
    /// flow-control window).
    pub initial_stream_window: u32,
    /// Bytes a client may send on all requests of a connection before the server reads them.
    pub initial_connection_window: u32,
    /// Largest header list (as HTTP/2 counts it: names, values and 32 bytes per field).
    pub max_header_list_size: u32,
    /// How often an idle connection is pinged; one whose client does not answer within the
    /// interval is closed (HTTP/2 has no idle timeout between requests: a dead peer is found
    /// this way instead).
    pub keep_alive_interval: Duration,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 16_384,
            initial_stream_window: 256 * 1024,
            initial_connection_window: 1024 * 1024,
            max_header_list_size: 16 * 1024,
            keep_alive_interval: Duration::from_secs(30),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_body_bytes_in_flight: 256 << 20,
            max_stream_id_bytes: ipubsub_core::MAX_ID_LEN,
            default_receive_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            default_stream_size: 100,
            max_stream_size: 100_000,
            default_ttl: Duration::from_secs(86_400),
            max_ttl: Duration::from_secs(30 * 86_400),
            max_messages: 1000,
            max_batch_items: 1000,
            max_ack_timeout: Duration::from_secs(12 * 3600),
            max_receipt_handles: 1000,
            default_dedupe_window: Duration::ZERO,
            max_dedupe_window: Duration::from_secs(86_400),
            store_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 100_000,
            // Longer than the forwarders' pools keep an idle connection (60 s), so that a
            // node never reuses one this side is closing.
            idle_timeout: Duration::from_secs(75),
            auth: None,
            cluster_secret: None,
            accepted_cluster_secrets: Vec::new(),
            #[cfg(feature = "tls")]
            peer_tls: None,
            persistence_refused: None,
            cors: Cors::Off,
            sse_heartbeat: Duration::from_secs(15),
            http2: Http2Config::default(),
            peer_http: PeerHttp::default(),
            max_forwarded_per_member: ipubsub_cluster::DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

impl HttpConfig {
    /// The answer to a request for the log (`field` names what asked for it) on a node
    /// without one.
    pub(crate) fn no_persistence(&self, field: &str) -> crate::ApiError {
        use crate::{ApiError, ErrorCode};
        match &self.persistence_refused {
            Some(why) => ApiError::new(ErrorCode::PersistenceNotShared, format!("{field}: {why}")),
            None => ApiError::new(
                ErrorCode::PersistenceNotConfigured,
                format!("{field}: persistence is not configured on this node"),
            ),
        }
    }
}
