//! The side-by-side comparison: ipubsub (in-memory and persistent), Redis lists, Nchan and a
//! bare hyper server, each started fresh on loopback by this runner, driven by the same load
//! patterns in one run; prints one table of medians with the ratios ipubsub / peer (Redis, and
//! Nchan where it ran the pattern; bare hyper for `send`).
//!
//! ```text
//! cargo build --release -p ipubsub-server -p ipubsub-benches
//! target/release/ipubsub-compare --runs 3
//! ```
//!
//! Patterns: `send` (64 publishers, no receivers, 1,000 streams: the send path against the
//! bare hyper ceiling), `1` (64 publishers, 64 long-polling receivers, 1,000 streams), `1e`
//! and `1e2` (pattern 1 with each stream followed as Server-Sent Events, over a connection of
//! its own or over shared HTTP/2 connections, 64 unless `--h2-connections`; Redis still pops), `1h2` (pattern 1 over
//! HTTP/2 both ways: `1e2`'s event streams, and the 64 publishers' v1 sends multiplexed over
//! 8 HTTP/2 connections; Redis as in `1`), `2`
//! (the same, 100 messages per receive), `2b` (pattern 2 sending 100 messages per request:
//! `sendBatch`, Redis `RPUSH` of 100 values), `3` (one hot stream), `4` (100,000 streams, one
//! message each), `half` (pattern 1 paced at half of what the same target delivered in
//! pattern 1 of the same round: the latency at half load), `fill` (1,000,000 streams that each
//! keep one message, nobody receiving: the peak memory of holding them), `1a` (pattern 1 with
//! acknowledged receives: a receive with `ackTimeoutSeconds` and an `ack` per message; Redis
//! Streams with a consumer group: `XADD`, `XREADGROUP … BLOCK`, `XACK`), `2a` (the same, 100
//! messages per receive and one `ack` / `XACK` for them).
//!
//! Nchan runs the patterns in which every stream has one receiver taking one message at a
//! time (`send`, `1`, `1e`, `1e2`, `4`, `half`): it broadcasts, has no batched publish, and
//! its long-poll answers one message per request.
//!
//! Each round starts with a host check (a fixed integer loop and a fixed chain of memory
//! reads, timed): on a shared host, rounds whose checks differ ran on a host of a different
//! speed, and their ratios differ with it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

mod client;
mod events;
mod load;
mod nchan;
mod resp;
mod servers;

use events::Via;
use load::{Outcome, Pattern, Shape};
use servers::{Programs, Server, Target};

/// Side-by-side benchmark of ipubsub against Redis, Nchan and a bare hyper server.
#[derive(Debug, Parser)]
#[command(name = "ipubsub-compare")]
struct Args {
    /// Rounds; every pattern runs once against every target per round, and the table gives
    /// the median over rounds.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds each timed pattern publishes for.
    #[arg(long, default_value_t = 8)]
    duration: u64,
    /// Patterns to run, in order (`half` needs `1` before it).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "send,1,half,2,2b,3,4,fill"
    )]
    patterns: Vec<String>,
    /// Targets: memory, persistent, redis, nchan, bare.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "memory,persistent,redis,nchan,bare"
    )]
    targets: Vec<String>,
    /// HTTP/2 connections the event streams of `1e2` and `1h2` share (their 1,000 streams
    /// spread evenly).
    #[arg(long, default_value_t = 64)]
    h2_connections: usize,
    /// Streams (one message each) of pattern 4.
    #[arg(long, default_value_t = 100_000)]
    one_each: u64,
    /// Streams of pattern `fill`: each gets one message, nobody receives; its figure is the
    /// server's peak memory holding them all.
    #[arg(long, default_value_t = 1_000_000)]
    fill_streams: u64,
    /// The ipubsub server binary (default: next to this one).
    #[arg(long)]
    ipubsub_server: Option<PathBuf>,
    /// The bare hyper binary (default: next to this one).
    #[arg(long)]
    bare_hyper: Option<PathBuf>,
    /// An environment variable for the ipubsub server, `KEY=VALUE` (repeatable), e.g.
    /// `TOKIO_WORKER_THREADS=1` or `IPUBSUB_ENGINE__MAX_STREAMS=2000000`.
    #[arg(long = "server-env", value_parser = parse_env)]
    server_env: Vec<(String, String)>,
    /// The Redis server binary.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// The nginx binary (with Debian's `libnginx-mod-nchan` installed).
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
}

/// One run's figures.
#[derive(Debug, Clone)]
struct Row {
    /// Messages delivered per second (accepted sends per second for `send`).
    rate: f64,
    p50: u64,
    p99: u64,
    cpu_per_million: f64,
    peak_rss_mib: f64,
    exactly_once: bool,
    errors: String,
}

fn pattern(name: &str, args: &Args, rate: Option<f64>) -> anyhow::Result<Pattern> {
    let spread = |receivers, max_messages| Pattern {
        publishers: 64,
        receivers,
        streams: 1_000,
        max_messages,
        send_batch: 1,
        shape: Shape::Spread,
        rate,
        duration: Duration::from_secs(args.duration),
        message_size: 100,
        via: Via::LongPoll,
        h2_sends: false,
        acked: false,
    };
    Ok(match name {
        "send" => spread(0, 1),
        "1" | "half" => spread(64, 1),
        "1e" => Pattern {
            via: Via::Events1,
            ..spread(64, 1)
        },
        "1e2" => Pattern {
            via: Via::Events2 {
                connections: args.h2_connections,
            },
            ..spread(64, 1)
        },
        "1h2" => Pattern {
            via: Via::Events2 {
                connections: args.h2_connections,
            },
            h2_sends: true,
            ..spread(64, 1)
        },
        "2" => spread(64, 100),
        "1a" => Pattern {
            acked: true,
            ..spread(64, 1)
        },
        "2a" => Pattern {
            acked: true,
            ..spread(64, 100)
        },
        "2b" => Pattern {
            send_batch: 100,
            ..spread(64, 100)
        },
        "3" => Pattern {
            shape: Shape::Hot,
            ..spread(64, 1)
        },
        "4" => Pattern {
            shape: Shape::OneEach(args.one_each),
            ..spread(64, 1)
        },
        "fill" => Pattern {
            shape: Shape::OneEach(args.fill_streams),
            ..spread(0, 1)
        },
        other => {
            anyhow::bail!(
                "unknown pattern {other:?} (send, 1, 1e, 1e2, 1h2, 1a, 2, 2a, 2b, 3, 4, half, fill)"
            )
        }
    })
}

fn parse_env(pair: &str) -> Result<(String, String), String> {
    let (k, v) = pair
        .split_once('=')
        .ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))?;
    Ok((k.to_owned(), v.to_owned()))
}

fn target(name: &str) -> anyhow::Result<Target> {
    Ok(match name {
        "memory" => Target::Memory,
        "persistent" => Target::Persistent,
        "redis" => Target::Redis,
        "nchan" => Target::Nchan,
        "bare" => Target::BareHyper,
        other => anyhow::bail!("unknown target {other:?} (memory, persistent, redis, nchan, bare)"),
    })
}

fn row(pattern: &Pattern, outcome: &Outcome, cpu: f64, peak_rss: u64) -> Row {
    let send_only = pattern.receivers == 0;
    let (count, secs, latency) = if send_only {
        (outcome.sent, outcome.publish_secs, &outcome.send_latency)
    } else {
        (
            outcome.delivered,
            outcome.delivery_secs,
            &outcome.e2e_latency,
        )
    };
    let quantile = |q| {
        if latency.is_empty() {
            0
        } else {
            latency.value_at_quantile(q)
        }
    };
    Row {
        rate: count as f64 / secs,
        p50: quantile(0.5),
        p99: quantile(0.99),
        cpu_per_million: cpu / (count.max(1) as f64) * 1e6,
        peak_rss_mib: peak_rss as f64 / 1048576.0,
        exactly_once: send_only || (outcome.duplicates == 0 && outcome.missing == 0),
        errors: outcome
            .errors
            .iter()
            .filter(|(k, _)| !k.contains("424") && !k.contains("timeout"))
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// How long two fixed pieces of work take on one core now: integer arithmetic, and dependent
/// reads scattered over 64 MiB (past any cache). Printed before each round, so that a table
/// shows how fast the shared host was while it ran: on this machine the same binaries have
/// measured 1.5x and 1.1x Redis an hour apart, with the host's load as the only change.
fn host_check() -> (Duration, Duration) {
    let started = std::time::Instant::now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..50_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x);
    let compute = started.elapsed();
    // One random cycle through all the slots (Sattolo: each swap with an earlier slot), so
    // that each read's address comes from the one before and none repeats.
    const SLOTS: usize = 8 << 20;
    let mut next: Vec<u32> = (0..SLOTS as u32).collect();
    for i in (1..SLOTS).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        next.swap(i, (x % i as u64) as usize);
    }
    let started = std::time::Instant::now();
    let mut at = 0usize;
    for _ in 0..1_000_000 {
        at = next[at] as usize;
    }
    std::hint::black_box(at);
    (compute, started.elapsed())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let here = std::env::current_exe()?
        .parent()
        .context("no directory of the executable")?
        .to_path_buf();
    let programs = Programs {
        ipubsub: args
            .ipubsub_server
            .clone()
            .unwrap_or_else(|| here.join("ipubsub-server")),
        bare_hyper: args
            .bare_hyper
            .clone()
            .unwrap_or_else(|| here.join("bare-hyper")),
        redis: args.redis_server.clone(),
        nginx: args.nginx.clone(),
        ipubsub_env: args.server_env.clone(),
    };
    let targets: Vec<Target> = args
        .targets
        .iter()
        .map(|t| target(t))
        .collect::<anyhow::Result<_>>()?;
    for (i, name) in args.patterns.iter().enumerate() {
        pattern(name, &args, None)?;
        anyhow::ensure!(
            name != "half" || args.patterns[..i].iter().any(|p| p == "1"),
            "pattern half is paced from pattern 1: list 1 before it"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "ipubsub-compare: {} cores, runs={}, duration={}s, patterns={}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.runs,
        args.duration,
        args.patterns.join(",")
    );

    let mut rows: BTreeMap<(usize, Target), Vec<Row>> = BTreeMap::new();
    let mut run_index = 0;
    for round in 0..args.runs {
        let (compute, memory) = host_check();
        println!(
            "round {} host check: {:.0} ms of integer work, {:.0} ms of memory reads",
            round + 1,
            compute.as_secs_f64() * 1e3,
            memory.as_secs_f64() * 1e3,
        );
        let mut pattern_one: BTreeMap<Target, f64> = BTreeMap::new();
        for (p, name) in args.patterns.iter().enumerate() {
            for &target in &targets {
                // Only sends are comparable with a server that does nothing, and only what
                // stays in memory with memory.
                if (target == Target::BareHyper && name != "send")
                    || (target == Target::Persistent
                        && matches!(name.as_str(), "fill" | "1a" | "2a"))
                    || (target == Target::Nchan
                        && !matches!(name.as_str(), "send" | "1" | "1e" | "1e2" | "4" | "half"))
                {
                    continue;
                }
                let rate = if name == "half" {
                    let max = pattern_one
                        .get(&target)
                        .context("pattern 1 ran before half")?;
                    Some(max / 2.0)
                } else {
                    None
                };
                let pattern = pattern(name, &args, rate)?;
                run_index += 1;
                let server = Server::start(target, &programs, run_index)?;
                let before = server.stats()?;
                let outcome = runtime
                    .block_on(load::run(target, server.addr, server.h2_addr, &pattern))
                    .with_context(|| format!("pattern {name} on {target:?}"))?;
                let after = server.stats()?;
                drop(server);
                let row = row(
                    &pattern,
                    &outcome,
                    after.cpu_seconds - before.cpu_seconds,
                    after.peak_rss_bytes,
                );
                println!(
                    "round {} pattern {name:>4} {:<24} {:>9.0} msg/s p50={}µs p99={}µs cpu={:.2}s/M rss={:.1}MiB sent={} delivered={} dup={} missing={}{}",
                    round + 1,
                    target.label_in(name),
                    row.rate,
                    row.p50,
                    row.p99,
                    row.cpu_per_million,
                    row.peak_rss_mib,
                    outcome.sent,
                    outcome.delivered,
                    outcome.duplicates,
                    outcome.missing,
                    if row.errors.is_empty() {
                        String::new()
                    } else {
                        format!(" errors: {}", row.errors)
                    }
                );
                if name == "1" {
                    pattern_one.insert(target, row.rate);
                }
                rows.entry((p, target)).or_default().push(row);
            }
        }
    }
    print_table(&args, &rows);
    Ok(())
}

fn print_table(args: &Args, rows: &BTreeMap<(usize, Target), Vec<Row>>) {
    let med = |rs: &[Row], f: &dyn Fn(&Row) -> f64| median(rs.iter().map(f).collect());
    println!();
    println!(
        "| pattern | target | msgs/s | p50 µs | p99 µs | CPU s per M msgs | peak RSS MiB | exactly once | ipubsub / peer |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (p, name) in args.patterns.iter().enumerate() {
        let peers: &[(Target, &str)] = if name == "send" {
            &[(Target::BareHyper, "bare hyper"), (Target::Nchan, "Nchan")]
        } else {
            &[(Target::Redis, "Redis"), (Target::Nchan, "Nchan")]
        };
        for ((_, target), rs) in rows.range((p, Target::Memory)..=(p, Target::BareHyper)) {
            let rate = med(rs, &|r| r.rate);
            let rss = med(rs, &|r| r.peak_rss_mib);
            let ratios: Vec<String> = peers
                .iter()
                .filter(|_| matches!(target, Target::Memory | Target::Persistent))
                .filter_map(|&(peer, peer_name)| {
                    let peer_rows = rows.get(&(p, peer))?;
                    // `fill` is about memory: its ratio is of peak RSS, the others' of msgs/s.
                    Some(if name == "fill" {
                        let peer_rss = med(peer_rows, &|r| r.peak_rss_mib);
                        format!("{:.2}× {peer_name} RSS", rss / peer_rss)
                    } else {
                        let peer_rate = med(peer_rows, &|r| r.rate);
                        format!("{:.2}× {peer_name}", rate / peer_rate)
                    })
                })
                .collect();
            println!(
                "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {} | {} |",
                target.label_in(name),
                rate,
                med(rs, &|r| r.p50 as f64),
                med(rs, &|r| r.p99 as f64),
                med(rs, &|r| r.cpu_per_million),
                rss,
                if rs.iter().all(|r| r.exactly_once) {
                    "yes"
                } else {
                    "NO"
                },
                ratios.join(", "),
            );
        }
    }
}
