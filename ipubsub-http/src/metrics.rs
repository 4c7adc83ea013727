//! [`Metrics`]: what `GET /metrics` shows, in the Prometheus text format.
//!
//! Counters and histograms are updated as requests are answered; the state of the engine,
//! the log and the cluster (streams, waiters, buffered messages, commits, members) is read
//! when the metrics are scraped, so it costs the hot path nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ipubsub_cluster::Cluster;
use ipubsub_core::log::BATCH_SIZE_BOUNDS;
use ipubsub_core::{Engine, Log};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::body_budget::BodyBudget;

/// A limit whose hit is counted in `ipubsub_limit_hits_total{limit}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `http.max_body_bytes`.
    BodySize,
    /// `http.body_read_timeout_seconds`.
    BodyTime,
    /// `http.max_stream_id_bytes`.
    StreamIdLength,
    /// `http.max_timeout_seconds`.
    Timeout,
    /// `http.max_stream_size`: messages per stream.
    StreamSize,
    /// `storage.max_ttl_seconds`.
    Ttl,
    /// The largest `maxMessages`.
    MaxMessages,
    /// `http.max_batch_items`: sends in one `sendBatch`.
    BatchItems,
    /// `engine.max_waiting_requests`.
    Waiters,
    /// `engine.max_streams`.
    Streams,
    /// `http.max_connections`.
    Connections,
    /// A token's `requests_per_second`.
    TokenRate,
    /// `storage.max_queued_appends` and `storage.max_queued_bytes`.
    LogQueue,
    /// `storage.max_log_streams`.
    LogStreams,
    /// `engine.max_buffered_bytes`.
    Memory,
    /// `cluster.max_forwarded_per_member`.
    Forwarded,
    /// `http.max_body_bytes_in_flight`.
    Bodies,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Self::BodySize => "body_size",
            Self::BodyTime => "body_time",
            Self::StreamIdLength => "stream_id_length",
            Self::Timeout => "timeout",
            Self::StreamSize => "stream_size",
            Self::Ttl => "ttl",
            Self::MaxMessages => "max_messages",
            Self::BatchItems => "batch_items",
            Self::Waiters => "waiters",
            Self::Streams => "streams",
            Self::Connections => "connections",
            Self::TokenRate => "token_rate",
            Self::LogQueue => "log_queue",
            Self::LogStreams => "log_streams",
            Self::Memory => "memory",
            Self::Forwarded => "forwarded",
            Self::Bodies => "bodies",
        }
    }
}

/// The route a request took, for labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Route {
    Send,
    SendBatch,
    Receive,
    /// `ack`, `nack` and `extend`.
    Lease,
    Cluster,
    Health,
    Ready,
    Metrics,
    Root,
    /// A CORS preflight (`OPTIONS`).
    Preflight,
    Unknown,
}

impl Route {
    const ALL: [Self; 11] = [
        Self::Send,
        Self::SendBatch,
        Self::Receive,
        Self::Lease,
        Self::Cluster,
        Self::Health,
        Self::Ready,
        Self::Metrics,
        Self::Root,
        Self::Preflight,
        Self::Unknown,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::SendBatch => "send_batch",
            Self::Receive => "receive",
            Self::Lease => "lease",
            Self::Cluster => "cluster",
            Self::Health => "health",
            Self::Ready => "ready",
            Self::Metrics => "metrics",
            Self::Root => "root",
            Self::Preflight => "preflight",
            Self::Unknown => "unknown",
        }
    }
}

/// How a forward ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ForwardOutcome {
    /// The owner answered (whatever its status).
    Answered,
    /// The owner could not be connected to; the request was routed again.
    Unreachable,
    /// The TLS handshake with the owner failed (an untrusted certificate, most often); the
    /// request was routed again.
    TlsFailed,
    /// The exchange failed; the client got a 424.
    Failed,
    /// This node had its maximum of requests in flight to the owner; the client got a 503.
    Busy,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Request latency buckets, in seconds: 100 µs to a minute (long polls wait up to
/// `http.max_timeout_seconds`; longer ones count in `+Inf`).
const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 60.0,
];

/// The node's metrics. Cheap to clone; clones share the counters.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// The statuses the API answers with; their counters are cached per route after first use.
const STATUSES: [u16; 13] = [
    200, 400, 401, 403, 404, 405, 408, 413, 424, 429, 500, 503, 0,
];

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// `requests`' counter of each route and status of [`STATUSES`], resolved on first use:
    /// a label lookup (a keyed hash and a lock) per request would cost more than the count.
    request_counters: [[std::sync::OnceLock<Counter>; STATUSES.len()]; Route::ALL.len()],
    /// One histogram per route, resolved once: no label lookup per request.
    durations: [Histogram; Route::ALL.len()],
    limit_hits: Family<LimitLabels, Counter>,
    forwards: Family<OutcomeLabels, Counter>,
    store_errors: Family<OperationLabels, Counter>,
    auth_refusals: Family<ReasonLabels, Counter>,
    connections: Gauge,
    /// Log lines left out by the server's rate limit, once it reports them.
    suppressed_log_lines: Arc<OnceLock<Arc<AtomicU64>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics of a node serving `engine` (and `log`), member of `cluster`, receiving
    /// request bodies within `bodies`.
    pub(crate) fn new(
        engine: Engine,
        log: Option<Log>,
        cluster: Cluster,
        bodies: Arc<BodyBudget>,
    ) -> Self {
        let mut registry = Registry::with_prefix("ipubsub");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        let durations = Family::<RouteLabels, Histogram, _>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's headers to its answer (a long poll's wait included), by route",
            Unit::Seconds,
            durations.clone(),
        );
        let durations = Route::ALL.map(|route| {
            durations
                .get_or_create(&RouteLabels {
                    route: route.label(),
                })
                .clone()
        });
        let limit_hits = Family::<LimitLabels, Counter>::default();
        registry.register(
            "limit_hits",
            "Requests and connections refused by a configured limit, by limit",
            limit_hits.clone(),
        );
        let forwards = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "forwards",
            "Requests forwarded to the owner of their stream, by outcome",
            forwards.clone(),
        );
        let store_errors = Family::<OperationLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Failed or timed-out calls to the message store, by operation",
            store_errors.clone(),
        );
        let auth_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_refusals",
            "Requests refused by auth: unauthenticated (401) or forbidden (403), by reason",
            auth_refusals.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "http_connections",
            "Client connections open now",
            connections.clone(),
        );
        let suppressed_log_lines = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(State {
            engine,
            log,
            cluster,
            bodies,
            suppressed_log_lines: suppressed_log_lines.clone(),
        }));
        Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                request_counters: Default::default(),
                durations,
                limit_hits,
                forwards,
                store_errors,
                auth_refusals,
                connections,
                suppressed_log_lines,
            }),
        }
    }

    /// Reports `count`, a running count of log lines left out by a rate limit, as
    /// `ipubsub_log_lines_suppressed_total` (the first source given stays).
    pub fn count_suppressed_log_lines(&self, count: Arc<AtomicU64>) {
        // Set once; a second source is ignored.
        let _ = self.inner.suppressed_log_lines.set(count);
    }

    /// Counts a request answered with `status` after `took`.
    pub(crate) fn request(&self, route: Route, status: u16, took: Duration) {
        let inner = &*self.inner;
        let labels = || RequestLabels {
            route: route.label(),
            status,
        };
        // `Route::ALL` lists the routes in declaration order.
        match STATUSES.iter().position(|&s| s == status) {
            Some(i) => inner.request_counters[route as usize][i]
                .get_or_init(|| inner.requests.get_or_create(&labels()).clone())
                .inc(),
            None => inner.requests.get_or_create(&labels()).inc(),
        };
        inner.durations[route as usize].observe(took.as_secs_f64());
    }

    /// Counts a hit of `limit`.
    pub(crate) fn limit_hit(&self, limit: Limit) {
        self.inner
            .limit_hits
            .get_or_create(&LimitLabels {
                limit: limit.label(),
            })
            .inc();
    }

    /// The gauge of open client connections.
    pub(crate) fn connections(&self) -> &Gauge {
        &self.inner.connections
    }

    /// Counts a forward that ended with `outcome`.
    pub(crate) fn forward(&self, outcome: ForwardOutcome) {
        let outcome = match outcome {
            ForwardOutcome::Answered => "answered",
            ForwardOutcome::Unreachable => "unreachable",
            ForwardOutcome::TlsFailed => "tls_failed",
            ForwardOutcome::Failed => "failed",
            ForwardOutcome::Busy => "busy",
        };
        self.inner
            .forwards
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a failed store call; `operation` is `append`, `read`, `probe` or `purge`.
    pub fn store_error(&self, operation: &'static str) {
        self.inner
            .store_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// Counts a request refused by auth for `reason`.
    pub(crate) fn auth_refusal(&self, reason: &'static str) {
        self.inner
            .auth_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Every metric in the Prometheus text format (0.0.4, OpenMetrics-compatible).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail, and every metric encodes.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        out
    }
}

/// The gauges read at scrape time.
#[derive(Debug)]
struct State {
    engine: Engine,
    log: Option<Log>,
    cluster: Cluster,
    bodies: Arc<BodyBudget>,
    suppressed_log_lines: Arc<OnceLock<Arc<AtomicU64>>>,
}

/// One sample of `metric` (a constant gauge or counter) under `name`.
fn constant(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let descriptor = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(descriptor)
}

impl Collector for State {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        if let Some(count) = self.suppressed_log_lines.get() {
            constant(
                &mut encoder,
                "log_lines_suppressed",
                "Log lines left out by the per-call-site rate limit (each window's count is \
                 also written as one summary line)",
                ConstCounter::new(count.load(Ordering::Relaxed)),
            )?;
        }
        constant(
            &mut encoder,
            "body_bytes_in_flight",
            "Bytes of request bodies held now, counted against http.max_body_bytes_in_flight",
            ConstGauge::new(as_i64(self.bodies.used())),
        )?;
        constant(
            &mut encoder,
            "body_bytes_in_flight_limit",
            "http.max_body_bytes_in_flight: the memory budget of request bodies",
            ConstGauge::new(as_i64(self.bodies.max())),
        )?;
        let stats = self.engine.stats();
        constant(
            &mut encoder,
            "streams",
            "In-memory streams held",
            ConstGauge::new(as_i64(stats.streams)),
        )?;
        constant(
            &mut encoder,
            "waiting_requests",
            "Receives and blocking sends waiting in memory",
            ConstGauge::new(as_i64(stats.waiters)),
        )?;
        constant(
            &mut encoder,
            "buffered_messages",
            "Messages buffered in memory, as counted by the last idle sweep",
            ConstGauge::new(as_i64(stats.buffered_at_last_sweep)),
        )?;
        constant(
            &mut encoder,
            "buffered_bytes",
            "Bytes of in-memory messages (buffered, and held by waiting senders) counted \
             against engine.max_buffered_bytes",
            ConstGauge::new(as_i64(stats.buffered_bytes)),
        )?;
        constant(
            &mut encoder,
            "buffered_bytes_limit",
            "engine.max_buffered_bytes: the memory budget of in-memory messages",
            ConstGauge::new(as_i64(self.engine.config().max_buffered_bytes)),
        )?;
        constant(
            &mut encoder,
            "memory_refusals",
            "Sends and hand-offs refused because they did not fit engine.max_buffered_bytes",
            ConstCounter::new(stats.memory_refusals),
        )?;
        let leases: [(&str, &str, u64); 7] = [
            (
                "acked",
                "Deliveries acknowledged (POST /api/v1/streams/ack)",
                stats.acked,
            ),
            (
                "nacked",
                "Deliveries returned by their receivers (POST /api/v1/streams/nack)",
                stats.nacked,
            ),
            (
                "lease_extensions",
                "Leases extended (POST /api/v1/streams/extend)",
                stats.extended,
            ),
            (
                "lease_refusals",
                "Receipt handles refused by ack, nack or extend: of another stream, or of a delivery no longer in flight",
                stats.lease_refusals,
            ),
            (
                "redelivered",
                "Messages whose lease ended unacknowledged, put back at the head of their stream",
                stats.redelivered,
            ),
            (
                "dead_lettered",
                "Messages taken off their stream after maxDeliveries, for its dead-letter stream",
                stats.dead_lettered,
            ),
            (
                "dropped_after_max_deliveries",
                "Messages dropped after maxDeliveries: their stream has no dead-letter stream",
                stats.dropped_after_max_deliveries,
            ),
        ];
        for (name, help, value) in leases {
            constant(&mut encoder, name, help, ConstCounter::new(value))?;
        }
        constant(
            &mut encoder,
            "duplicates",
            "Sends answered as duplicates of a message their stream accepted within its dedupe window",
            ConstCounter::new(stats.duplicates),
        )?;
        constant(
            &mut encoder,
            "dedupe_unremembered",
            "Accepted messages not remembered for deduplication: engine.max_dedupe_entries was reached",
            ConstCounter::new(stats.dedupe_unremembered),
        )?;
        constant(
            &mut encoder,
            "dedupe_entries",
            "Message ids the streams' dedupe windows remember",
            ConstGauge::new(as_i64(stats.dedupe_entries)),
        )?;
        constant(
            &mut encoder,
            "in_flight_messages",
            "Messages delivered by acknowledged receives and not acknowledged yet",
            ConstGauge::new(as_i64(stats.in_flight)),
        )?;
        constant(
            &mut encoder,
            "gossip_rejected",
            "Gossip datagrams rejected: not sealed with the cluster secret, altered, replayed or \
             too old (with cluster.secret set)",
            ConstCounter::new(self.cluster.gossip_rejected()),
        )?;
        constant(
            &mut encoder,
            "cluster_members",
            "Live members in this node's ring, itself included",
            ConstGauge::new(as_i64(self.cluster.view().members().len())),
        )?;
        let Some(log) = &self.log else {
            return Ok(());
        };
        let log = log.stats();
        constant(
            &mut encoder,
            "log_appended_messages",
            "Messages made durable in the persistent log",
            ConstCounter::new(log.appended),
        )?;
        constant(
            &mut encoder,
            "log_failed_messages",
            "Messages whose group commit failed",
            ConstCounter::new(log.failed),
        )?;
        constant(
            &mut encoder,
            "log_fenced_messages",
            "Messages the store refused because another node had taken their stream since \
             this node acquired it (counted in log_failed_messages too)",
            ConstCounter::new(log.fenced),
        )?;
        constant(
            &mut encoder,
            "log_overtaken_reads",
            "Reads that found their stream written by another node in a later epoch, and \
             acquired it again",
            ConstCounter::new(log.overtaken),
        )?;
        constant(
            &mut encoder,
            "log_queue_full",
            "Appends refused because the log's append queue was full (log.max_queued, \
             log.max_queued_bytes)",
            ConstCounter::new(log.queue_full),
        )?;
        constant(
            &mut encoder,
            "log_abandoned_appends",
            "Appends removed from the queue unwritten because their request had stopped \
             waiting (timed out or went away)",
            ConstCounter::new(log.abandoned),
        )?;
        constant(
            &mut encoder,
            "log_evicted_streams",
            "Idle log streams forgotten to make room for another (storage.max_log_streams); \
             each is acquired again on its next use",
            ConstCounter::new(log.evicted),
        )?;
        constant(
            &mut encoder,
            "log_commits",
            "Group commits written",
            ConstCounter::new(log.commits),
        )?;
        constant(
            &mut encoder,
            "log_duplicates",
            "Persistent sends answered as duplicates of a message the log holds within their \
             dedupe window (nothing written)",
            ConstCounter::new(log.duplicates),
        )?;
        constant(
            &mut encoder,
            "log_id_lookups",
            "Message ids looked up in the store for a deduplicating persistent send (while its \
             window reaches back before this node acquired the stream)",
            ConstCounter::new(log.id_lookups),
        )?;
        constant(
            &mut encoder,
            "log_id_listings",
            "Listings of a stream's recent message ids in the store for deduplicating \
             persistent sends (one per stream and acquisition, on a store that lists)",
            ConstCounter::new(log.id_listings),
        )?;
        constant(
            &mut encoder,
            "log_remembered_ids",
            "Message ids of deduplicating persistent sends this node remembers",
            ConstGauge::new(i64::try_from(log.remembered_ids).unwrap_or(i64::MAX)),
        )?;
        constant(
            &mut encoder,
            "log_unremembered_ids",
            "Deduplicating persistent sends not remembered for storage.max_remembered_ids; \
             their streams ask the store instead",
            ConstCounter::new(log.unremembered_ids),
        )?;
        let mut metric = encoder.encode_descriptor(
            "log_commit_size",
            "Messages per group commit",
            None,
            MetricType::Histogram,
        )?;
        let buckets: Vec<(f64, u64)> = BATCH_SIZE_BOUNDS
            .iter()
            .zip(log.batch_sizes)
            .map(|(&bound, n)| {
                let bound = if bound == u64::MAX {
                    f64::INFINITY
                } else {
                    bound as f64
                };
                (bound, n)
            })
            .collect();
        let count = log.batch_sizes.iter().sum();
        metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            log.batch_size_sum as f64,
            count,
            &buckets,
            None,
        )
    }
}
