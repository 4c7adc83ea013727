//! Shared helpers of ipubsub's benchmarks and tools: see `benches/matching.rs` (criterion),
//! `src/bin/stream_memory.rs` (bytes per idle stream) and `src/bin/loadgen/` (HTTP load).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Polls a future once with a waker that does nothing: enough to drive the core, whose
/// futures complete at their first poll whenever they need not wait.
pub fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
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
