//! `ipubsub-server`: one ipubsub node.
//!
//! Reads its configuration (a YAML file, overridden by `IPUBSUB_<SECTION>__<KEY>` variables),
//! starts the engine and the HTTP API, and shuts down gracefully on SIGTERM or SIGINT. A bad
//! configuration is one line on stderr and exit code 2.

mod config;
mod logging;
mod reload;
mod stores;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use config::{Config, LogFormat};
use ipubsub_cluster::{Cluster, Membership, MembershipConfig, Node, NodeId};
use std::sync::Arc;

use config::Backend;
use ipubsub_core::{Engine, Log, MessageStore, OffsetClock, StreamId, SystemClock};
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
    let lines = logging::LineLimit::default();
    if let Err(e) = init_logging(&config, lines.clone()) {
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
    match runtime.block_on(run(config, args.config, lines)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ipubsub-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config, lines: logging::LineLimit) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env)?,
        _ => EnvFilter::try_new(&config.log.level)?,
    };
    logging::install(filter, config.log.format == LogFormat::Json, lines)
}

async fn run(
    config: Config,
    config_file: Option<PathBuf>,
    lines: logging::LineLimit,
) -> anyhow::Result<()> {
    let signals = ShutdownSignals::install()?;
    let hangups = reload::hangups().context("cannot listen for SIGHUP")?;
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
            let secrets = reload::cluster_secrets(
                http_config.cluster_secret.as_ref(),
                &http_config.accepted_cluster_secrets,
            );
            if secrets.is_empty() && !listen.ip().is_loopback() {
                tracing::warn!(
                    gossip = %listen,
                    "gossip is not authenticated without cluster.secret: anyone who can send a datagram to this address can join the cluster or change its member list"
                );
            }
            let mut gossip = MembershipConfig::new(
                &config.cluster.name,
                listen,
                config.cluster.static_bootstrap_node_addr_ports.clone(),
            );
            gossip.advertise = config.node.gossip_advertise_addr_port.unwrap_or(listen);
            gossip.interval = gossip_interval;
            gossip.secrets = secrets;
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
    tracing::info!(
        max_buffered_bytes = engine.config().max_buffered_bytes,
        set = config.engine.max_buffered_bytes.is_some(),
        "memory budget of in-memory messages"
    );
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
    app.metrics().count_suppressed_log_lines(lines.suppressed());
    let summaries = tokio::spawn(lines.clone().summarize_every_window());
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
        ipubsub_http::Rebalancer::new(
            engine.clone(),
            cluster.clone(),
            Arc::new(app.forwarder().clone()),
            app.strays().clone(),
        )
    });
    let rebalancing = rebalancer.clone().map(|rebalancer| {
        tokio::spawn(async move {
            rebalancer
                .run(Duration::from_millis(100), rebalancing_stopped)
                .await;
        })
    });
    // Leases end on time whether or not anyone acknowledges: the message goes back to its
    // stream (or its dead-letter stream) within a tick of its deadline.
    let (_stop_leases, leases_stopped) = tokio::sync::watch::channel(false);
    let lease_expiry = tokio::spawn({
        let app = app.clone();
        async move {
            app.run_lease_expiry(ipubsub_http::LEASE_TICK, leases_stopped)
                .await;
        }
    });
    let reloads = tokio::spawn(
        reload::Reloadable {
            config_file,
            app: app.clone(),
            gossip: membership.as_ref().map(Membership::gossip_secrets),
            #[cfg(feature = "tls")]
            tls: tls.clone(),
        }
        .run(hangups),
    );
    let grace = Duration::from_secs(config.http.shutdown_grace_seconds);
    let shutdown = {
        let membership = &membership;
        async move {
            signals.recv().await;
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
    // What is still in flight is handed over with its stream (and delivered again there).
    lease_expiry.abort();
    if let Some(rebalancing) = rebalancing {
        // Let a hand-off in progress finish: its messages exist nowhere else.
        let _ = stop_rebalancing.send(true);
        if let Err(e) = rebalancing.await {
            tracing::warn!(error = %e, "rebalancing ended badly");
        }
    }
    if let Some(rebalancer) = &rebalancer {
        rebalancer.leave(grace).await;
    }
    sweeper.abort();
    reloads.abort();
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
    summaries.abort();
    lines.summarize();
    tracing::info!("ipubsub-server stopped");
    Ok(())
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

/// SIGINT and SIGTERM, listened for from the moment this is made.
///
/// Made at the start of `run`, before the readiness line is printed: a signal sent as soon as
/// that line appears must start a graceful shutdown, not meet the default action (death).
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves at the first SIGINT or SIGTERM.
    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
            _ = self.terminate.recv() => tracing::info!("SIGTERM received"),
        }
        #[cfg(not(unix))]
        {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::warn!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
            tracing::info!("Ctrl-C received");
        }
    }
}
