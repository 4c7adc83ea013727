//! `ipubsub-server`: one ipubsub node.
//!
//! Reads its configuration (a YAML file, overridden by `IPUBSUB_<SECTION>__<KEY>` variables),
//! starts the engine and the HTTP API, and shuts down gracefully on SIGTERM or SIGINT. A bad
//! configuration is one line on stderr and exit code 2.

mod config;
mod stores;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use config::{Config, LogFormat};
use hyper::Method;
use ipubsub_cluster::{Cluster, Forwarder, Membership, MembershipConfig, Node, NodeId, Route};
use std::sync::Arc;

use config::Backend;
use ipubsub_core::{
    Drained, Engine, Log, Message, MessageStore, OffsetClock, SendOptions, StreamId, SystemClock,
};
use ipubsub_http::{App, Metrics, Readiness};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// mimalloc: glibc's allocator took 15% of the server's CPU under persistent load (perf,
/// BENCHMARKS.md), in the many short-lived buffers of requests, messages and LSM entries.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A lightweight, horizontally scalable long-poll pub-sub server.
#[derive(Debug, Parser)]
#[command(name = "ipubsub-server", version)]
struct Args {
    /// YAML configuration file. Every key has a default; `IPUBSUB_<SECTION>__<KEY>`
    /// environment variables override the file (e.g. IPUBSUB_HTTP__MAX_TIMEOUT_SECONDS=60).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print every configuration key with its default, as YAML, and exit.
    #[arg(long)]
    print_default_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", Config::default_yaml());
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ipubsub-server: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("ipubsub-server: bad configuration: log.level: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ipubsub-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ipubsub-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env)?,
        _ => EnvFilter::try_new(&config.log.level)?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    // Files named by the configuration (tokens, certificates) are read before anything starts.
    let http_config = config.http_config()?;
    #[cfg(feature = "tls")]
    let tls = config.server_tls()?;
    let listener = TcpListener::bind(config.node.http_bind_addr_port)
        .await
        .with_context(|| format!("cannot listen on {}", config.node.http_bind_addr_port))?;
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let advertised = config.node.http_advertise_addr_port.unwrap_or(bound);
    let node_id = NodeId::new(&config.node.name).context("node.name")?;
    let local = Node::new(node_id, advertised);
    let cluster = Cluster::with_members(local.clone(), [local], config.cluster.virtual_nodes);
    let gossip_interval = Duration::from_millis(config.cluster.gossip_interval_ms);
    let membership = match config.node.gossip_bind_addr_port {
        None => None,
        Some(listen) => {
            let mut gossip = MembershipConfig::new(
                &config.cluster.name,
                listen,
                config.cluster.static_bootstrap_node_addr_ports.clone(),
            );
            gossip.advertise = config.node.gossip_advertise_addr_port.unwrap_or(listen);
            gossip.interval = gossip_interval;
            let own = gossip.advertise;
            let membership = Membership::start(cluster.clone(), gossip).await?;
            tracing::info!(gossip = %listen, seeds = ?config.cluster.static_bootstrap_node_addr_ports, "gossip started");
            let others = config
                .cluster
                .static_bootstrap_node_addr_ports
                .iter()
                .any(|seed| seed.parse::<SocketAddr>().ok() != Some(own));
            if others {
                membership
                    .join(
                        &cluster,
                        Duration::from_secs(config.cluster.join_timeout_seconds),
                    )
                    .await?;
            }
            if config.storage.node_local_log_in_cluster
                && matches!(config.storage.backend, Backend::Embedded | Backend::Memory)
            {
                tracing::warn!(
                    "a multi-node cluster on a node-local store (storage.node_local_log_in_cluster): each \
                     stream's log stays on the node that owned the stream when it was written, and is \
                     unreadable while another node owns it"
                );
            }
            Some(membership)
        }
    };
    // One time base for every node that shares a store: the store server's clock, so that a
    // node whose clock is off neither stamps nor judges TTLs by it (ipubsub_http::sync_clock).
    let clock = Arc::new(OffsetClock::new(SystemClock));
    let engine = Engine::with_clock(config.engine_config(), clock.clone());
    let refusal = config.node_local_refusal();
    let store = match &refusal {
        Some(why) => {
            tracing::warn!("no persistent log: {why}");
            None
        }
        None => stores::open_store(&config).await?,
    };
    let probe = store.clone();
    let clock_follower = match &store {
        Some(store) => {
            // Measured once before serving, so that the first message is stamped right.
            if let Err(e) = ipubsub_http::sync_clock(&**store, &clock).await {
                tracing::warn!(error = %e, "cannot read the store's clock: using this node's until it can");
            }
            Some(tokio::spawn(ipubsub_http::follow_store_clock(
                store.clone(),
                clock.clone(),
                Duration::from_secs(10),
            )))
        }
        None => None,
    };
    let log = store.map(|store| Log::with_clock(store, config.log_config(), clock.clone()));
    let mut http_config = http_config;
    http_config.persistence_refused = refusal;
    let app = App::new(engine.clone(), log.clone(), cluster.clone(), http_config);
    #[cfg(feature = "tls")]
    let scheme = if tls.is_some() { "https" } else { "http" };
    #[cfg(not(feature = "tls"))]
    let scheme = "http";

    let sweeper = tokio::spawn(sweep_idle_streams(
        engine.clone(),
        log.clone(),
        Duration::from_secs(config.engine.sweep_interval_seconds),
        Duration::from_secs(config.engine.stream_idle_timeout_seconds),
    ));
    let mut workers = Vec::new();
    let mut purger = None;
    let mut prober = None;
    if let Some(log) = &log {
        for _ in 0..config.storage.commit_workers {
            let log = log.clone();
            workers.push(tokio::spawn(async move { log.run_commit_worker().await }));
        }
        prober = probe.map(|store| {
            tokio::spawn(probe_store(
                store,
                app.readiness().clone(),
                app.metrics().clone(),
                Duration::from_secs(config.storage.ready_probe_seconds),
                Duration::from_secs(config.storage.store_timeout_seconds),
            ))
        });
        purger = Some(tokio::spawn(purge_expired(
            log.clone(),
            app.metrics().clone(),
            Duration::from_secs(config.storage.purge_interval_seconds),
            config.storage.purge_batch,
        )));
    }

    tracing::info!(node = %config.node.name, cluster = %config.cluster.name, %bound, "ipubsub-server started");
    // Machine-readable, for scripts and tests that start the server on port 0.
    println!("ipubsub-server listening on {scheme}://{bound}");

    // Whatever the log cached of a stream another node now owns is stale: let it go.
    let follower = match (&membership, &log) {
        (Some(_), Some(log)) => Some(tokio::spawn(ipubsub_http::follow_ownership(
            log.clone(),
            cluster.clone(),
            Duration::from_millis(100),
        ))),
        _ => None,
    };
    let (stop_rebalancing, rebalancing_stopped) = tokio::sync::watch::channel(false);
    let rebalancer = membership.as_ref().map(|_| {
        let forwarder = app.forwarder().clone();
        tokio::spawn(rebalance(
            engine.clone(),
            cluster.clone(),
            forwarder,
            rebalancing_stopped,
        ))
    });
    let grace = Duration::from_secs(config.http.shutdown_grace_seconds);
    let shutdown = {
        let membership = &membership;
        async move {
            shutdown_signal().await;
            if let Some(membership) = membership {
                // Leave first: the others take this node out of their rings and this node
                // forwards what still reaches it, before it stops accepting.
                membership.announce_leaving().await;
                tracing::info!("leaving the cluster");
                tokio::time::sleep(gossip_interval * 3).await;
            }
        }
    };
    #[cfg(feature = "tls")]
    match tls {
        Some(tls) => ipubsub_http::serve_tls(listener, app.clone(), tls, shutdown, grace).await,
        None => ipubsub_http::serve(listener, app.clone(), shutdown, grace).await,
    }
    #[cfg(not(feature = "tls"))]
    ipubsub_http::serve(listener, app.clone(), shutdown, grace).await;
    if let Some(rebalancer) = rebalancer {
        // Let a hand-off in progress finish: its messages exist nowhere else.
        let _ = stop_rebalancing.send(true);
        if let Err(e) = rebalancer.await {
            tracing::warn!(error = %e, "rebalancing ended badly");
        }
    }
    if membership.is_some() {
        hand_off(engine.drain(), &engine, &cluster, app.forwarder(), true).await;
    }
    sweeper.abort();
    if let Some(clock_follower) = clock_follower {
        clock_follower.abort();
    }
    if let Some(follower) = follower {
        follower.abort();
    }
    if let Some(prober) = prober {
        prober.abort();
    }
    if let Some(purger) = purger {
        purger.abort();
    }
    // The log was closed by `serve`: the workers write what is queued, then stop.
    for worker in workers {
        if tokio::time::timeout(grace, worker).await.is_err() {
            tracing::warn!("a commit worker did not finish within the grace period");
        }
    }
    if let Some(membership) = membership {
        membership.leave(Duration::ZERO).await;
    }
    tracing::info!("ipubsub-server stopped");
    Ok(())
}

/// Watches the member set; when it changes, hands the buffered messages of streams that now
/// belong to another node to that node, so that a joining node gets the streams it owns with
/// what they hold. Stops when `stop` changes, but never in the middle of a hand-off: drained
/// messages exist nowhere else.
async fn rebalance(
    engine: Engine,
    cluster: Cluster,
    forwarder: Forwarder,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut seen = cluster.view().version();
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => return,
        }
        let version = cluster.view().version();
        if version == seen {
            continue;
        }
        seen = version;
        let moved = {
            let (cluster, engine) = (cluster.clone(), engine.clone());
            tokio::task::spawn_blocking(move || {
                engine.drain_streams(|stream| matches!(cluster.route(stream), Route::Forward(_)))
            })
            .await
        };
        match moved {
            Ok(moved) if !moved.is_empty() => {
                tracing::info!(
                    version,
                    streams = moved.len(),
                    "streams moved to other members"
                );
                hand_off(moved, &engine, &cluster, &forwarder, false).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "rebalancing failed"),
        }
    }
}

/// Streams handed over at once (each stream's messages go one at a time, in order).
const HAND_OFF_CONCURRENCY: usize = 16;

/// Hands buffered in-memory messages to their streams' owners: the next owner once this node
/// is gone (`leaving`), else the current owner. Streams go concurrently, each stream's
/// messages one at a time so that their order is kept. Messages that cannot be handed over
/// are counted and logged: they are lost.
async fn hand_off(
    drained: Vec<Drained>,
    engine: &Engine,
    cluster: &Cluster,
    forwarder: &Forwarder,
    leaving: bool,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(HAND_OFF_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for drained in drained {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (engine, cluster, forwarder) = (engine.clone(), cluster.clone(), forwarder.clone());
        tasks.spawn(async move {
            let counts = hand_off_stream(drained, &engine, &cluster, &forwarder, leaving).await;
            drop(permit);
            counts
        });
    }
    let (mut handed, mut lost) = (0usize, 0usize);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((h, l)) => {
                handed += h;
                lost += l;
            }
            Err(e) => tracing::warn!(error = %e, "a hand-off task failed"),
        }
    }
    if handed + lost > 0 {
        tracing::info!(handed, lost, "handed buffered messages to their new owners");
    }
}

/// Hands one stream's messages over, in order; returns (handed, lost).
async fn hand_off_stream(
    drained: Drained,
    engine: &Engine,
    cluster: &Cluster,
    forwarder: &Forwarder,
    leaving: bool,
) -> (usize, usize) {
    let Drained {
        stream,
        size,
        messages,
        ..
    } = drained;
    let owner = if leaving {
        cluster.successor(&stream)
    } else {
        match cluster.route(&stream) {
            Route::Forward(owner) => Some(owner),
            _ => {
                // The stream came back to this node meanwhile: keep its messages here.
                let options = SendOptions {
                    stream_size: size.unwrap_or(SendOptions::default().stream_size),
                    wait: false,
                };
                for message in messages {
                    let _ = engine.send(stream.clone(), message, options).await;
                }
                return (0, 0);
            }
        }
    };
    let Some(owner) = owner else {
        return (0, messages.len());
    };
    let (mut handed, mut lost) = (0, 0);
    for (i, message) in messages.into_iter().enumerate() {
        let body = handoff_body(&stream, size, &message);
        // Node ids are header-safe; message ids need not be.
        let request_id = format!("handoff-{}-{i}", cluster.local().id());
        match forwarder
            .forward(
                &owner,
                Method::POST,
                "/api/v1/streams/send",
                body,
                Duration::from_secs(5),
                &request_id,
            )
            .await
        {
            Ok(response) if response.status().is_success() => handed += 1,
            Ok(response) => {
                tracing::warn!(%stream, owner = %owner.id(), status = %response.status(), "hand-off refused");
                lost += 1;
            }
            Err(e) => {
                tracing::warn!(%stream, owner = %owner.id(), error = %e, "hand-off failed");
                lost += 1;
            }
        }
    }
    (handed, lost)
}

/// A send body that re-creates `message` on `stream` (its bytes, as sent), in a stream of the
/// same size: handed to a default-sized stream, a long queue would evict its oldest.
fn handoff_body(stream: &StreamId, size: Option<u32>, message: &Message) -> bytes::Bytes {
    let mut out = Vec::with_capacity(96 + message.payload().len());
    out.extend_from_slice(b"{\"streamId\":");
    out.extend_from_slice(
        serde_json::to_string(stream.as_str())
            .unwrap_or_default()
            .as_bytes(),
    );
    out.extend_from_slice(b",\"messageUuid\":");
    out.extend_from_slice(
        serde_json::to_string(message.id().as_str())
            .unwrap_or_default()
            .as_bytes(),
    );
    if let Some(size) = size.filter(|&s| s > 0) {
        out.extend_from_slice(format!(",\"inMemoryStreamSize\":{size}").as_bytes());
    }
    out.extend_from_slice(b",\"message\":");
    out.extend_from_slice(message.payload());
    out.push(b'}');
    bytes::Bytes::from(out)
}

/// Drops idle streams and forgets idle log positions periodically, off the async workers
/// (a sweep visits every stream).
async fn sweep_idle_streams(engine: Engine, log: Option<Log>, every: Duration, idle: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let engine = engine.clone();
        let log = log.clone();
        let swept = tokio::task::spawn_blocking(move || {
            (
                engine.sweep_idle(),
                log.map_or(0, |log| log.sweep_idle(idle)),
            )
        });
        match swept.await {
            Ok((0, 0)) => {}
            Ok((streams, positions)) => tracing::debug!(streams, positions, "dropped idle streams"),
            Err(e) => tracing::warn!(error = %e, "idle stream sweep failed"),
        }
    }
}

/// Asks the store for a stream's last position every `every`, and tells `readiness` whether
/// it answered within `timeout`: what `GET /ready` reports. A read of one key, on a stream
/// nobody writes, so it costs the store next to nothing and changes nothing.
async fn probe_store(
    store: Arc<dyn MessageStore>,
    readiness: Readiness,
    metrics: Metrics,
    every: Duration,
    timeout: Duration,
) {
    let Ok(probe) = StreamId::new("ipubsub-ready-probe") else {
        return;
    };
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let failure = match tokio::time::timeout(timeout, store.last_seq(&probe)).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("the message store failed: {e}")),
            Err(_) => Some(format!(
                "the message store did not answer within {} s",
                timeout.as_secs()
            )),
        };
        // Logged when it changes, not at every probe of a long outage.
        let was_ready = readiness.check().is_ok();
        match failure {
            None => {
                if !was_ready {
                    tracing::info!("the store answers again: ready");
                }
                readiness.set_ready();
            }
            Some(reason) => {
                metrics.store_error("probe");
                if was_ready {
                    tracing::warn!(%reason, "not ready");
                }
                readiness.set_not_ready(reason);
            }
        }
    }
}

/// Deletes expired messages in bounded batches, so that disk use follows the live data.
async fn purge_expired(log: Log, metrics: Metrics, every: Duration, batch: usize) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let mut total = 0;
        loop {
            match log.purge_expired(batch).await {
                Ok(n) => {
                    total += n;
                    if n < batch {
                        break;
                    }
                }
                Err(e) => {
                    metrics.store_error("purge");
                    tracing::warn!(error = %e, "purging expired messages failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::debug!(purged = total, "purged expired messages");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
