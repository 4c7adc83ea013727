//! Shared helpers of ipubsub's benchmarks and tools: see `benches/matching.rs` (criterion),
//! `src/bin/stream_memory.rs` (bytes per idle stream) and `src/bin/loadgen/` (HTTP load).

pub mod http1;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Polls a future once with a waker that does nothing: enough to drive the core, whose
/// futures complete at their first poll whenever they need not wait.
pub fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

/// Microseconds since the Unix epoch: the send time the load tools put in each message, so
/// that a receiver (in this process) can compute the end-to-end latency.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A latency histogram of the load tools: 1 µs to 120 s, 3 significant digits.
pub fn latency_histogram() -> Result<hdrhistogram::Histogram<u64>, hdrhistogram::CreationError> {
    hdrhistogram::Histogram::new_with_bounds(1, 120_000_000, 3)
}

/// The resident set size of this process in bytes, from `/proc/self/statm` (Linux).
pub fn rss_bytes() -> std::io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| std::io::Error::other("unexpected /proc/self/statm"))?;
    Ok(pages * 4096)
}

/// The resident and peak memory and the CPU time of process `pid`, from `/proc` (Linux).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStats {
    /// Resident set size now, bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// Peak resident set size, bytes (`VmHWM`).
    pub peak_rss_bytes: u64,
    /// User + system CPU time so far, seconds.
    pub cpu_seconds: f64,
}

/// Reads [`ProcStats`] of `pid`.
pub fn proc_stats(pid: u32) -> std::io::Result<ProcStats> {
    let bad = || std::io::Error::other(format!("unexpected /proc/{pid} contents"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> std::io::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| k * 1024)
            .ok_or_else(bad)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .ok_or_else(bad)?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line: indices 11 and 12 after the name.
    let ticks = |i: usize| -> std::io::Result<u64> {
        fields.get(i).and_then(|v| v.parse().ok()).ok_or_else(bad)
    };
    // USER_HZ is 100 on every Linux architecture this runs on.
    let cpu_seconds = (ticks(11)? + ticks(12)?) as f64 / 100.0;
    Ok(ProcStats {
        rss_bytes: kib("VmRSS:")?,
        peak_rss_bytes: kib("VmHWM:")?,
        cpu_seconds,
    })
}
