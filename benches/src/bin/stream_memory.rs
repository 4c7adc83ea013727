//! Measures what an idle stream costs: creates N streams (default 1,000,000) that each hold
//! one message of 100 bytes, and prints the growth of the process RSS per stream.
//!
//! `cargo run --release -p ipubsub-benches --bin stream-memory -- [STREAMS] [PAYLOAD_BYTES]`

use bytes::Bytes;
use ipubsub_benches::{poll_once, rss_bytes};
use ipubsub_core::{Engine, EngineConfig, Message, MessageId, SendOptions, StreamId};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let streams: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let payload_len: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);

    let engine = Engine::new(EngineConfig::default());
    let before = rss_bytes()?;
    for i in 0..streams {
        // Ids as a client would send them: a stream name and a message id of ~20 bytes each.
        let stream = StreamId::new(format!("user-notifications-{i:08}"))?;
        let id = MessageId::new(format!("msg-{i:016}"))?;
        let mut payload = Vec::with_capacity(payload_len);
        payload.resize(payload_len, b'x');
        if payload_len >= 2 {
            payload[0] = b'"';
            payload[payload_len - 1] = b'"';
        }
        let message = Message::new(id, Bytes::from(payload), engine.now());
        let sent = poll_once(&mut engine.send(stream, message, SendOptions::default()));
        anyhow::ensure!(
            matches!(sent, std::task::Poll::Ready(Ok(_))),
            "send failed: {sent:?}"
        );
    }
    let after = rss_bytes()?;
    let per_stream = (after.saturating_sub(before)) as f64 / streams as f64;
    println!(
        "streams={streams} payload_bytes={payload_len} rss_before={:.1}MiB rss_after={:.1}MiB bytes_per_stream={per_stream:.0}",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    anyhow::ensure!(engine.stats().streams == streams);
    Ok(())
}
