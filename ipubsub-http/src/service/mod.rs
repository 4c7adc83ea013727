//! [`App`]: the routes of the API and the shared state behind them.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hyper::body::Body;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::time::Duration;

use ipubsub_cluster::{
    CLUSTER_SECRET_NAME, Cluster, DEADLINE_NAME as DEADLINE, FORWARDED_NAME as FORWARDED,
    Forwarder, HANDOFF_NAME as HANDOFF, REQUEST_ID_NAME as REQUEST_ID,
};
use ipubsub_core::{Engine, Log, Message, SendOutcome};

use crate::adoptions::{Adoptions, HandOffCopy};
use crate::auth::{Grant, Permission};
use crate::body::ApiBody;
use crate::body_budget::{BodyBudget, HeldBody};
use crate::config::HttpConfig;
use crate::credentials::{self, Credentials};
use crate::error::{ApiError, ErrorCode};
use crate::metrics::{Metrics, Route as MetricRoute};
use crate::readiness::Readiness;
use crate::rebalance::Strays;
use crate::send;
use crate::send::SendKind;
use crate::signal::Signal;

mod acking;
pub(crate) mod batch;

pub use acking::LEASE_TICK;
mod forwarding;
mod reading;
mod receiving;
mod routing;

use forwarding::SUSPICION;
use reading::read_body;
use routing::{Work, header_text};

const SEND_PATH: &str = "/api/v1/streams/send";
const RECEIVE_PATH: &str = "/api/v1/streams/receive";
const CLUSTER_PATH: &str = "/api/v1/cluster";
const METRICS_PATH: &str = "/metrics";

/// The HTTP API over an engine: what every connection serves. Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    /// Hands requests for streams this node does not own to their owner.
    forwarder: Forwarder,
    /// The persistent log; `None` when persistence is not configured.
    log: Option<Log>,
    cluster: Cluster,
    config: HttpConfig,
    /// Request bodies held at once ([`HttpConfig::max_body_bytes_in_flight`]).
    bodies: Arc<BodyBudget>,
    /// Tokens and cluster secrets, replaceable while the node runs (the config's are the
    /// first ones).
    credentials: credentials::Current,
    /// What `GET /ready` answers.
    readiness: Readiness,
    /// What `GET /metrics` answers.
    metrics: Metrics,
    /// Streams this node served without owning them, for the rebalancer to move on.
    strays: Strays,
    /// The hand-offs this node took over, so a repeated one is not taken twice.
    adoptions: Adoptions,
    /// Request ids this node makes up: a random prefix per process, then a counter.
    id_prefix: String,
    next_id: AtomicU64,
    /// Fired near the end of the shutdown grace: sends and receives still being served are
    /// answered then ([`App::cut_in_flight`]).
    cut: Signal,
    /// Fired when the node starts shutting down ([`App::close`]): event streams end then.
    closing: Signal,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("node", self.inner.cluster.local().id())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl App {
    /// The API over `engine` (and `log`, when persistence is configured), routing streams by
    /// `cluster`, with `config`'s limits.
    pub fn new(engine: Engine, log: Option<Log>, cluster: Cluster, config: HttpConfig) -> Self {
        let bodies = BodyBudget::new(config.max_body_bytes_in_flight);
        let metrics = Metrics::new(
            engine.clone(),
            log.clone(),
            cluster.clone(),
            Arc::clone(&bodies),
        );
        let forwarder = Forwarder::new(cluster.local().id().clone())
            .with_http(config.peer_http)
            .with_secret(config.cluster_secret.clone())
            .with_max_in_flight(config.max_forwarded_per_member);
        #[cfg(feature = "tls")]
        let forwarder = match &config.peer_tls {
            Some(peer) => forwarder.with_tls((*peer.config).clone(), peer.server_name.clone()),
            None => forwarder,
        };
        let credentials = credentials::Current::new(Credentials::new(
            config.auth.clone(),
            config.cluster_secret.clone(),
            config.accepted_cluster_secrets.clone(),
        ));
        Self {
            inner: Arc::new(Inner {
                forwarder,
                engine,
                log,
                cluster,
                config,
                bodies,
                credentials,
                readiness: Readiness::new(),
                metrics,
                strays: Strays::default(),
                adoptions: Adoptions::default(),
                id_prefix: format!(
                    "{:016x}",
                    std::hash::RandomState::new().hash_one(std::process::id())
                ),
                next_id: AtomicU64::new(0),
                cut: Signal::default(),
                closing: Signal::default(),
            }),
        }
    }

    /// The engine behind the API.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The limits and access rules the API applies.
    pub fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    /// The persistent log behind the API, if any.
    pub fn log(&self) -> Option<&Log> {
        self.inner.log.as_ref()
    }

    /// Answers every send and receive still being served 503 `SHUTTING_DOWN` (with
    /// `Connection: close`), now and from now on, instead of letting the shutdown close their
    /// connections unanswered. The server calls it shortly before its shutdown grace ends:
    /// what is still in flight then is mostly a request forwarded to another owner, whose
    /// answer this node cannot wait for.
    pub fn cut_in_flight(&self) {
        self.inner.cut.fire();
    }

    /// Starts the node's shutdown: the engine and the log take no more work and answer their
    /// waiting requests, and every event stream ends (with an `end` event saying so). Queued
    /// log appends are still written by the log's workers.
    pub fn close(&self) {
        // First: an event stream woken by the engine closing then says why it ends.
        self.inner.closing.fire();
        self.inner.engine.close();
        if let Some(log) = &self.inner.log {
            log.close();
        }
    }

    /// Replaces the bearer tokens and the cluster secrets (a reload: SIGHUP in the server).
    /// Requests already admitted keep the grants they were admitted with; connections and
    /// waiting requests are untouched; forwards made from now on carry the new secret.
    pub fn reload_credentials(&self, credentials: Credentials) {
        self.inner
            .forwarder
            .set_secret(credentials.cluster_secret.clone());
        self.inner.credentials.set(credentials);
    }

    /// Completes once [`close`](Self::close) was called: when connections start their
    /// graceful shutdown.
    pub(crate) fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.closing.fired()
    }

    /// `work`, or `SHUTTING_DOWN` with `what` if [`cut_in_flight`](Self::cut_in_flight) comes
    /// first. Work that finishes at once never registers with the signal.
    async fn unless_cut<T>(
        &self,
        work: impl Future<Output = Result<T, ApiError>>,
        what: &'static str,
    ) -> Result<T, ApiError> {
        let cut = self.inner.cut.wait();
        tokio::select! {
            biased;
            result = work => result,
            () = cut => Err(ApiError::new(ErrorCode::ShuttingDown, what)),
        }
    }

    /// Counts what `error` says about limits, auth and the store.
    fn count_error(&self, error: &ApiError, route: MetricRoute) {
        let metrics = &self.inner.metrics;
        if let Some(limit) = error.limit {
            metrics.limit_hit(limit);
        }
        match error.code {
            ErrorCode::Unauthorized => metrics.auth_refusal("unauthenticated"),
            ErrorCode::Forbidden => metrics.auth_refusal("forbidden"),
            ErrorCode::StoreUnavailable => metrics.store_error(match route {
                MetricRoute::Send => "append",
                _ => "read",
            }),
            _ => {}
        }
    }

    /// `GET /metrics`.
    fn metrics_answer(&self) -> Response<ApiBody> {
        let mut response = Response::new(ApiBody::from(Bytes::from(self.inner.metrics.encode())));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    /// The node's metrics: shared, so that the server can count what happens outside
    /// requests (store probes, connections).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The caller's request id if it is a valid one (shared, not copied), else a new one.
    /// Marked sensitive: over HTTP/2 that keeps it out of HPACK's table. A value that is new
    /// on every answer would only evict the headers that repeat, and each answer would
    /// compare its id with every id still in the table (a tenth of a timeout's CPU).
    fn request_id<B>(&self, request: &Request<B>) -> HeaderValue {
        let valid = |id: &&HeaderValue| {
            let id = id.as_bytes();
            (1..=128).contains(&id.len())
                && id
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(b))
        };
        if let Some(given) = request.headers().get(&REQUEST_ID).filter(valid) {
            let mut given = given.clone();
            given.set_sensitive(true);
            return given;
        }
        let prefix = self.inner.id_prefix.as_bytes();
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        // `{prefix}-{n:x}`, written by hand: `format!` machinery is most of the cost here.
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        let mut id = Vec::with_capacity(prefix.len() + 1 + digits);
        id.extend_from_slice(prefix);
        id.push(b'-');
        id.extend(
            (0..digits)
                .rev()
                .map(|i| b"0123456789abcdef"[(n >> (4 * i) & 0xf) as usize]),
        );
        // Hex digits and a dash: always a valid header value.
        let mut id = HeaderValue::from_maybe_shared(Bytes::from(id))
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        id.set_sensitive(true);
        id
    }

    /// `GET /api/v1/cluster`: this node's view of the members and the ring's version.
    fn cluster_view(&self) -> Bytes {
        let cluster = &self.inner.cluster;
        let view = cluster.view();
        let members: Vec<_> = view
            .members()
            .iter()
            .map(|m| serde_json::json!({"id": m.id().as_str(), "httpAddr": m.http_addr().to_string(), "state": "up"}))
            .collect();
        let body = serde_json::json!({
            "node": cluster.local().id().as_str(),
            "ringVersion": view.version(),
            "members": members,
        });
        Bytes::from(body.to_string())
    }

    /// What `GET /ready` answers: shared, so that whoever watches the node's dependencies
    /// can mark it not ready (and ready again).
    pub fn readiness(&self) -> &Readiness {
        &self.inner.readiness
    }

    /// The cluster view behind the API.
    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// The forwarding client of this node.
    pub fn forwarder(&self) -> &Forwarder {
        &self.inner.forwarder
    }

    /// The streams this node served without owning them (forwarded to it by a node whose
    /// view differed), for the [`Rebalancer`](crate::Rebalancer) to move on.
    pub fn strays(&self) -> &Strays {
        &self.inner.strays
    }

    fn about(&self) -> Bytes {
        let about = serde_json::json!({
            "name": "ipubsub",
            "version": env!("CARGO_PKG_VERSION"),
            "node": self.inner.cluster.local().id().as_str(),
        });
        Bytes::from(about.to_string())
    }

    async fn send<B>(
        &self,
        request: Request<B>,
        id: &HeaderValue,
    ) -> Result<Response<ApiBody>, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        // The body's bytes stay held until the answer.
        let (hop, grant, body, _held) = self.admitted_body(request, id).await?;
        // Validated here, so bad input is answered without a hop.
        let send = send::parse(&body, &inner.config, inner.log.is_some())?;
        if let Some(grant) = grant {
            grant.allow(Permission::Publish, send.stream.as_str())?;
        }
        let wait = match &send.kind {
            SendKind::Memory { wait, .. } => *wait,
            SendKind::Log { .. } => inner.config.store_timeout,
        };
        if let Some(answer) = self
            .forward(&send.stream, &hop, Method::POST, SEND_PATH, &body, wait)
            .await?
        {
            return Ok(answer);
        }
        let message = Message::new(send.id, send.payload, inner.engine.now());
        match (send.kind, &inner.log) {
            (
                SendKind::Memory {
                    options, redrive, ..
                },
                _,
            ) if hop.handoff => {
                // Accepted on the node that handed it over: taken over, never refused, and
                // taken once however often that node tries (it cannot tell a lost answer
                // from a lost request). A delivery in flight comes with its lease.
                let stream = &send.stream;
                let size = Some(options.stream_size);
                inner.engine.set_redrive(stream, redrive)?;
                let take_over = |message: Message| match &hop.lease_header {
                    Some(header) => match HandOffCopy::parse_lease(header.as_bytes(), message) {
                        Some(in_flight) => inner.engine.adopt_in_flight(stream, size, in_flight),
                        None => Err(ipubsub_core::SendError::Moved),
                    },
                    None => inner.engine.adopt(stream, size, message),
                };
                match (&hop.from, hop.handoff_copy) {
                    (Some(from), Some(accepted)) => {
                        let id = message.id().clone();
                        let copy = HandOffCopy {
                            from,
                            stream,
                            message: id.as_str(),
                            accepted,
                        };
                        let adopted = inner.adoptions.adopt_once(copy, || take_over(message))?;
                        if !adopted {
                            tracing::debug!(%stream, message = %id, from, "a hand-off taken over already");
                        }
                    }
                    _ => take_over(message)?,
                }
                Ok(json(StatusCode::OK, Bytes::from_static(b"{}")))
            }
            (
                SendKind::Memory {
                    options,
                    wait,
                    redrive,
                    dedupe_window,
                },
                _,
            ) => {
                let wait = hop.cap(wait);
                inner.engine.set_redrive(&send.stream, redrive)?;
                inner
                    .engine
                    .set_dedupe_window(&send.stream, dedupe_window)?;
                let sent =
                    send::run_memory(&inner.engine, send.stream, message, options, wait).await?;
                if sent == SendOutcome::Duplicate {
                    return Ok(duplicate());
                }
                Ok(json(StatusCode::OK, Bytes::from_static(b"{}")))
            }
            (SendKind::Log { ttl, dedupe_window }, Some(log)) => {
                let limit = inner.config.store_timeout;
                let (token, duplicate) =
                    send::run_log(log, send.stream, message, (ttl, dedupe_window), limit).await?;
                if duplicate {
                    let body = format!("{{\"dbResumeToken\":\"{token}\",\"duplicate\":true}}");
                    return Ok(marked_duplicate(json(StatusCode::OK, Bytes::from(body))));
                }
                Ok(json(
                    StatusCode::OK,
                    Bytes::from(format!("{{\"dbResumeToken\":\"{token}\"}}")),
                ))
            }
            (SendKind::Log { .. }, None) => Err(inner.config.no_persistence("writeToDB")),
        }
    }

    /// What a request with a body starts with: refused when the node is closing, its hop,
    /// who may make it (checked before the body is read: an unknown caller costs no more than
    /// its headers), then its body within the limits.
    async fn admitted_body<B>(
        &self,
        request: Request<B>,
        id: &HeaderValue,
    ) -> Result<(Hop, Option<Arc<Grant>>, Bytes, HeldBody), ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        self.refuse_when_closed()?;
        let hop = Hop::of(&request, id);
        let grant = self.admit(&request, &hop)?;
        let (body, held) = read_body(request, &self.inner.config, &self.inner.bodies).await?;
        Ok((hop, grant, body, held))
    }

    /// Who may make this request: checked before anything else is read. A request marked
    /// forwarded must prove it comes from a member ([`HttpConfig::cluster_secret`]); it was
    /// checked by the node that forwarded it, so it has no grant here. Otherwise, with auth
    /// on, the caller's bearer token must be known and within its rate.
    fn admit<B>(&self, request: &Request<B>, hop: &Hop) -> Result<Option<Arc<Grant>>, ApiError> {
        let credentials = self.inner.credentials.get();
        if hop.forwarded {
            let presented = request.headers().get(&CLUSTER_SECRET_NAME);
            return if credentials.accepts(presented) {
                Ok(None)
            } else if credentials.has_secret() {
                Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "a forwarded request must carry the cluster secret",
                ))
            } else if credentials.auth.is_some() {
                Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "this node takes no forwarded requests: auth is on and no cluster secret is configured",
                ))
            } else {
                Ok(None)
            };
        }
        match &credentials.auth {
            Some(auth) => auth
                .authenticate(request.headers().get(header::AUTHORIZATION))
                .map(Some),
            None => Ok(None),
        }
    }

    fn refuse_when_closed(&self) -> Result<(), ApiError> {
        if self.inner.engine.is_closed() {
            return Err(ApiError::new(
                ErrorCode::ShuttingDown,
                "the node is shutting down",
            ));
        }
        Ok(())
    }
}

/// What a send cut by the end of a shutdown's grace is told: it may have been forwarded to
/// its stream's owner, or be waiting for its append to be written, so it may yet take effect.
const CUT_SEND: &str = "the node shut down before this send was answered: it may or may not have been accepted (a forwarded send may still be delivered by the stream's owner)";

/// What a batch cut by the end of a shutdown's grace is told.
const CUT_SEND_BATCH: &str = "the node shut down before this batch was answered: each of its sends may or may not have been accepted";

/// What an `ack`, `nack` or `extend` cut by the end of a shutdown's grace is told.
const CUT_LEASE: &str = "the node shut down before this request was answered: it may or may not have taken effect (the stream's owner may have served it)";

/// What a receive cut by the end of a shutdown's grace is told.
const CUT_RECEIVE: &str =
    "the node shut down before a message arrived; receive again (on another node)";

/// What the forwarding headers of a request say, and the id it goes on with.
struct Hop {
    /// The request was forwarded by another node.
    forwarded: bool,
    /// The node that forwarded the request, as it names itself.
    from: Option<String>,
    /// A forwarded send that hands over a message the forwarding node had accepted.
    handoff: bool,
    /// When the forwarding node accepted the copy it hands over ([`HandOffCopy`]).
    handoff_copy: Option<ipubsub_core::Timestamp>,
    /// A hand-off header that carries a delivery in flight's lease
    /// ([`HandOffCopy::lease_suffix`]).
    lease_header: Option<HeaderValue>,
    /// The time its original caller has left.
    deadline: Option<Duration>,
    /// The request's id ([`App::handle`]): owned (a shared buffer), so that what a waiting
    /// request keeps borrows nothing from its routing.
    request_id: HeaderValue,
}

impl Hop {
    fn of<B>(request: &Request<B>, request_id: &HeaderValue) -> Self {
        // One lookup per header, by names parsed once: every request pays for these.
        let headers = request.headers();
        let forwarded = headers.get(&FORWARDED);
        let handoff = headers.get(&HANDOFF);
        Self {
            forwarded: forwarded.is_some(),
            from: forwarded.and_then(|v| v.to_str().ok()).map(str::to_owned),
            handoff: forwarded.is_some() && handoff.is_some(),
            handoff_copy: handoff.and_then(|v| HandOffCopy::parse_header(v.as_bytes())),
            lease_header: handoff
                .filter(|v| v.as_bytes().windows(7).any(|w| w == b";lease="))
                .cloned(),
            deadline: headers
                .get(&DEADLINE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
            request_id: request_id.clone(),
        }
    }

    /// The request's id.
    fn id(&self) -> &str {
        header_text(&self.request_id)
    }

    /// `wait`, shortened to the caller's deadline if it has one.
    fn cap(&self, wait: Duration) -> Duration {
        self.deadline.map_or(wait, |deadline| wait.min(deadline))
    }
}

fn not_allowed(allow: &'static str) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("this endpoint takes {allow}"),
    )
}

/// The answer to a send whose message was accepted within its stream's dedupe window
/// before: 200 as the first was, and it says so (in a header and in the body, which a batch
/// relays).
fn duplicate() -> Response<ApiBody> {
    marked_duplicate(json(
        StatusCode::OK,
        Bytes::from_static(b"{\"duplicate\":true}"),
    ))
}

/// `response` with the [`DUPLICATE_HEADER`].
fn marked_duplicate(mut response: Response<ApiBody>) -> Response<ApiBody> {
    response
        .headers_mut()
        .insert(DUPLICATE_HEADER.clone(), HeaderValue::from_static("true"));
    response
}

/// Marks the answer to a send that added no copy ([`duplicate`]).
pub(super) static DUPLICATE_HEADER: HeaderName = HeaderName::from_static("x-ipubsub-duplicate");

fn json(status: StatusCode, body: Bytes) -> Response<ApiBody> {
    let mut response = Response::new(ApiBody::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The answer to `error`, with the headers its code calls for.
pub(crate) fn error_response(error: &ApiError) -> Response<ApiBody> {
    let mut response = json(error.code.status(), error.body());
    let headers = response.headers_mut();
    match error.code {
        ErrorCode::MethodNotAllowed => {
            let allow = if error.message.contains("POST") {
                "POST"
            } else {
                "GET"
            };
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        ErrorCode::Unauthorized => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ipubsub\""),
            );
        }
        ErrorCode::BodyTimeout => {
            // The rest of the body may still come: the connection cannot carry another request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        ErrorCode::TooManyConnections | ErrorCode::ShuttingDown => {
            // The node takes no more requests on this connection.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        ErrorCode::TooManyStreams
        | ErrorCode::TooManyWaiters
        | ErrorCode::RateLimited
        | ErrorCode::NotReady
        | ErrorCode::StreamMoved
        | ErrorCode::LogQueueFull
        | ErrorCode::MemoryLimit
        | ErrorCode::OwnerUnavailable => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    response
}
