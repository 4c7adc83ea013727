//! `ipubsub-server`: one ipubsub node.
//!
//! Reads its configuration (a YAML file, overridden by `IPUBSUB_<SECTION>__<KEY>` variables),
//! starts the engine and the HTTP API, and shuts down gracefully on SIGTERM or SIGINT. A bad
//! configuration is one line on stderr and exit code 2.

mod config;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use config::{Config, LogFormat};
use ipubsub_cluster::{Cluster, Node, NodeId};
use ipubsub_core::Engine;
use ipubsub_http::App;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// A lightweight, horizontally scalable long-poll pub-sub server.
#[derive(Debug, Parser)]
#[command(name = "ipubsub-server", version)]
struct Args {
    /// YAML configuration file. Every key has a default; `IPUBSUB_<SECTION>__<KEY>`
    /// environment variables override the file (e.g. IPUBSUB_HTTP__MAX_TIMEOUT_SECONDS=60).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
    let listener = TcpListener::bind(config.node.http_bind_addr_port)
        .await
        .with_context(|| format!("cannot listen on {}", config.node.http_bind_addr_port))?;
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let advertised = config.node.http_advertise_addr_port.unwrap_or(bound);
    let node_id = NodeId::new(&config.node.name).context("node.name")?;
    let cluster = Cluster::single(Node::new(node_id, advertised));
    let engine = Engine::new(config.engine_config());
    let app = App::new(engine.clone(), cluster, config.http_config());

    let sweeper = tokio::spawn(sweep_idle_streams(
        engine.clone(),
        Duration::from_secs(config.engine.sweep_interval_seconds),
    ));

    tracing::info!(node = %config.node.name, cluster = %config.cluster.name, %bound, "ipubsub-server started");
    // Machine-readable, for scripts and tests that start the server on port 0.
    println!("ipubsub-server listening on http://{bound}");

    let grace = Duration::from_secs(config.http.shutdown_grace_seconds);
    ipubsub_http::serve(listener, app, shutdown_signal(), grace).await;
    sweeper.abort();
    tracing::info!("ipubsub-server stopped");
    Ok(())
}

/// Drops idle streams periodically, off the async workers (a sweep visits every stream).
async fn sweep_idle_streams(engine: Engine, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let engine = engine.clone();
        match tokio::task::spawn_blocking(move || engine.sweep_idle()).await {
            Ok(0) => {}
            Ok(dropped) => tracing::debug!(dropped, "dropped idle streams"),
            Err(e) => tracing::warn!(error = %e, "idle stream sweep failed"),
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
