//! The load patterns, driven the same way against every target: publishers send one message
//! per request on their own connection; receivers long-poll one stream per request (or follow
//! it as events).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use ipubsub_benches::{latency_histogram as histogram, now_micros};

use crate::client::{Client, h2_sender};
use crate::events::{Follower, Opener, Via};
use crate::servers::Target;

/// How messages are spread over streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Message `seq` goes to stream `seq % streams`; every stream has one poller of its own,
    /// run by receiver `stream % receivers`.
    Spread,
    /// Every message goes to one stream that every receiver polls (a persistent log is read
    /// by receiver 0 alone: a log is read by position, not competed for).
    Hot,
    /// Message `seq` goes to stream `seq`, `count` streams in all; receiver j reads its streams
    /// (`stream % receivers == j`) one after the other, one message each.
    OneEach(u64),
}

/// One load pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// Publishers, each with one connection and one request in flight.
    pub publishers: usize,
    /// Receivers (0: sends alone).
    pub receivers: usize,
    /// Streams (with [`Shape::Spread`]).
    pub streams: usize,
    /// Messages per receive (`maxMessages`; Redis: `BLMPOP … COUNT`).
    pub max_messages: usize,
    /// Messages per send request, all to one stream (`sendBatch`; Redis: `RPUSH` of that
    /// many values); 1: single sends.
    pub send_batch: usize,
    /// How messages map to streams.
    pub shape: Shape,
    /// Messages per second over all publishers; `None`: as fast as they go.
    pub rate: Option<f64>,
    /// Seconds of publishing (not with [`Shape::OneEach`], which sends its count).
    pub duration: Duration,
    /// Size of each message's JSON text, bytes.
    pub message_size: usize,
    /// How ipubsub's receivers take messages (Redis always pops).
    pub via: Via,
    /// Whether ipubsub's publishers send over HTTP/2, [`H2_SEND_CONNECTIONS`] connections
    /// shared by all of them (else each over an HTTP/1.1 connection of its own).
    pub h2_sends: bool,
    /// Acknowledged receives: ipubsub's receives take leases (`ackTimeoutSeconds`) and each
    /// answer's messages are acknowledged in one `ack`; Redis uses a stream with a consumer
    /// group (`XADD`, `XREADGROUP`, `XACK`) instead of a list.
    pub acked: bool,
}

/// HTTP/2 connections the publishers of a run share when they send over HTTP/2.
pub const H2_SEND_CONNECTIONS: usize = 8;

/// What one run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Sends answered 200 (`:n` from Redis).
    pub sent: u64,
    /// Seconds the publishers ran.
    pub publish_secs: f64,
    /// Distinct messages delivered.
    pub delivered: u64,
    /// Seconds from the start to the last delivery.
    pub delivery_secs: f64,
    /// Messages delivered more than once.
    pub duplicates: u64,
    /// Accepted messages never delivered.
    pub missing: u64,
    /// Send latency, µs.
    pub send_latency: Histogram<u64>,
    /// Send to delivery, µs.
    pub e2e_latency: Histogram<u64>,
    /// Answers other than success, by kind.
    pub errors: BTreeMap<String, u64>,
}

struct Shared {
    start: Instant,
    next_seq: AtomicU64,
    sent_ok: AtomicU64,
    received: AtomicU64,
    publishing: AtomicBool,
    /// µs after `start` of the last delivery (or of the end of publishing).
    last_receive_micros: AtomicU64,
}

/// Receivers give up draining after this long without a delivery.
const DRAIN_STALL: Duration = Duration::from_secs(10);

impl Shared {
    /// Whether receivers should stop: publishing is over and everything accepted arrived,
    /// or nothing arrived for [`DRAIN_STALL`] (a slow reader that still makes progress, like
    /// the one reader of a hot log, is waited for).
    fn done(&self) -> bool {
        if self.publishing.load(Ordering::Acquire) {
            return false;
        }
        let last = Duration::from_micros(self.last_receive_micros.load(Ordering::Acquire));
        self.received.load(Ordering::Acquire) >= self.sent_ok.load(Ordering::Acquire)
            || self.start.elapsed() >= last + DRAIN_STALL
    }
}

/// `{"i":<seq>,"t":<send time µs>,"p":"xxx…"}`, `size` bytes: the same bytes to every target.
pub(crate) fn payload(seq: u64, size: usize) -> Vec<u8> {
    let head = format!("{{\"i\":{seq},\"t\":{},\"p\":\"", now_micros());
    let mut p = head.into_bytes();
    let pad = size.saturating_sub(p.len() + 2);
    p.extend(std::iter::repeat_n(b'x', pad));
    p.extend_from_slice(b"\"}");
    p
}

fn stream_name(prefix: &str, index: u64) -> String {
    format!("{prefix}-{index}")
}

struct ReceiverReport {
    ids: Vec<u64>,
    e2e: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

/// Runs `pattern` against `target` at `addr` (its HTTP/2 event streams at `h2_addr`).
pub async fn run(
    target: Target,
    addr: SocketAddr,
    h2_addr: SocketAddr,
    pattern: &Pattern,
) -> anyhow::Result<Outcome> {
    let prefix: Arc<str> = format!("cmp-{}-{}", std::process::id(), now_micros()).into();
    let pattern = Arc::new(pattern.clone());
    // Every connection is open before the clock starts.
    let mut pollers = Vec::new();
    let events = target.is_http() && pattern.via != Via::LongPoll;
    let mut shared_h2 = Vec::new();
    if let (true, Via::Events2 { connections }) = (target.is_http(), pattern.via) {
        for _ in 0..connections {
            shared_h2.push(Opener::http2(h2_addr).await?);
        }
    }
    for j in 0..pattern.receivers {
        let streams: Vec<u64> = match pattern.shape {
            Shape::Spread => (0..pattern.streams as u64)
                .filter(|s| s % pattern.receivers as u64 == j as u64)
                .collect(),
            Shape::Hot if target == Target::Persistent && j > 0 => Vec::new(),
            Shape::Hot => vec![0],
            Shape::OneEach(count) => (0..count)
                .filter(|s| s % pattern.receivers as u64 == j as u64)
                .collect(),
        };
        if events {
            anyhow::ensure!(
                pattern.shape == Shape::Spread,
                "event streams follow spread streams only"
            );
            for stream in streams {
                // Over HTTP/2, stream s on shared connection s % connections; else its own.
                let opener = match shared_h2.get(stream as usize % shared_h2.len().max(1)) {
                    Some(h2) => h2.share()?,
                    None => Opener::http1(addr).await?,
                };
                let follower = Client::Events(Follower::new(opener), addr, Vec::new());
                pollers.push((follower, vec![stream]));
            }
        } else if matches!(pattern.shape, Shape::OneEach(_)) {
            pollers.push((Client::connect(target, addr).await?, streams));
        } else {
            for stream in streams {
                pollers.push((Client::connect(target, addr).await?, vec![stream]));
            }
        }
    }
    let mut publishers = Vec::new();
    if pattern.h2_sends && target.is_http() {
        let mut connections = Vec::new();
        for _ in 0..H2_SEND_CONNECTIONS {
            connections.push(h2_sender(addr).await?);
        }
        for i in 0..pattern.publishers {
            publishers.push(Client::Http2(
                connections[i % H2_SEND_CONNECTIONS].clone(),
                addr,
            ));
        }
    } else {
        for _ in 0..pattern.publishers {
            publishers.push(Client::connect(target, addr).await?);
        }
    }

    let start = Instant::now();
    let shared = Arc::new(Shared {
        start,
        next_seq: AtomicU64::new(0),
        sent_ok: AtomicU64::new(0),
        received: AtomicU64::new(0),
        publishing: AtomicBool::new(true),
        last_receive_micros: AtomicU64::new(0),
    });
    let receivers: Vec<_> = pollers
        .into_iter()
        .map(|(client, streams)| {
            tokio::spawn(poll(
                client,
                target,
                streams,
                pattern.clone(),
                prefix.clone(),
                shared.clone(),
            ))
        })
        .collect();
    let publishers: Vec<_> = publishers
        .into_iter()
        .map(|client| {
            tokio::spawn(publish(
                client,
                target,
                pattern.clone(),
                prefix.clone(),
                shared.clone(),
            ))
        })
        .collect();

    let mut send_latency = histogram()?;
    let mut errors = BTreeMap::new();
    for p in publishers {
        let (latency, errs) = p.await??;
        send_latency.add(&latency)?;
        merge(&mut errors, errs);
    }
    let publish_secs = start.elapsed().as_secs_f64();
    shared
        .last_receive_micros
        .fetch_max(start.elapsed().as_micros() as u64, Ordering::AcqRel);
    shared.publishing.store(false, Ordering::Release);

    let mut e2e_latency = histogram()?;
    let mut seen = vec![false; shared.next_seq.load(Ordering::Acquire) as usize];
    let mut delivered = 0u64;
    let mut duplicates = 0u64;
    for r in receivers {
        let report = r.await??;
        e2e_latency.add(&report.e2e)?;
        merge(&mut errors, report.errors);
        for id in report.ids {
            match seen.get_mut(id as usize) {
                Some(s) if *s => duplicates += 1,
                Some(s) => {
                    *s = true;
                    delivered += 1;
                }
                None => *errors.entry("unknown message id".into()).or_default() += 1,
            }
        }
    }
    let sent = shared.sent_ok.load(Ordering::Acquire);
    Ok(Outcome {
        sent,
        publish_secs,
        delivered,
        delivery_secs: (shared.last_receive_micros.load(Ordering::Relaxed) as f64 / 1e6).max(1e-3),
        duplicates,
        missing: if pattern.receivers == 0 {
            0
        } else {
            sent.saturating_sub(delivered)
        },
        send_latency,
        e2e_latency,
        errors,
    })
}

fn merge(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

async fn publish(
    mut client: Client,
    target: Target,
    pattern: Arc<Pattern>,
    prefix: Arc<str>,
    shared: Arc<Shared>,
) -> anyhow::Result<(Histogram<u64>, BTreeMap<String, u64>)> {
    let mut latency = histogram()?;
    let mut errors = BTreeMap::new();
    let deadline = shared.start + pattern.duration;
    if pattern.send_batch > 1 {
        return publish_batches(client, target, pattern, prefix, shared).await;
    }
    loop {
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let stream = match pattern.shape {
            Shape::OneEach(count) if seq >= count => break,
            Shape::OneEach(_) => seq,
            _ if Instant::now() >= deadline => break,
            Shape::Spread => seq % pattern.streams as u64,
            Shape::Hot => 0,
        };
        if let Some(rate) = pattern.rate {
            // Open loop: message `seq` is due at seq / rate seconds after the start.
            let due = shared.start + Duration::from_secs_f64(seq as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let message = payload(seq, pattern.message_size);
        let started = Instant::now();
        let refused = client
            .send(
                target,
                &stream_name(&prefix, stream),
                seq,
                &message,
                pattern.acked,
            )
            .await
            .context("send")?;
        latency.saturating_record(started.elapsed().as_micros() as u64);
        match refused {
            None => {
                shared.sent_ok.fetch_add(1, Ordering::AcqRel);
            }
            Some(e) => *errors.entry(e).or_default() += 1,
        }
    }
    Ok((latency, errors))
}

/// [`publish`] with `pattern.send_batch` messages per request, all to one stream, the
/// streams taken in turn (closed loop, [`Shape::Spread`] only).
async fn publish_batches(
    mut client: Client,
    target: Target,
    pattern: Arc<Pattern>,
    prefix: Arc<str>,
    shared: Arc<Shared>,
) -> anyhow::Result<(Histogram<u64>, BTreeMap<String, u64>)> {
    let mut latency = histogram()?;
    let mut errors = BTreeMap::new();
    let deadline = shared.start + pattern.duration;
    let n = pattern.send_batch as u64;
    while Instant::now() < deadline {
        let first = shared.next_seq.fetch_add(n, Ordering::Relaxed);
        let stream = (first / n) % pattern.streams as u64;
        let messages: Vec<Vec<u8>> = (first..first + n)
            .map(|seq| payload(seq, pattern.message_size))
            .collect();
        let started = Instant::now();
        let (accepted, refused) = client
            .send_many(
                target,
                &stream_name(&prefix, stream),
                first..first + n,
                &messages,
            )
            .await
            .context("send a batch")?;
        latency.saturating_record(started.elapsed().as_micros() as u64);
        shared.sent_ok.fetch_add(accepted, Ordering::AcqRel);
        if let Some(e) = refused {
            *errors.entry(e).or_default() += 1;
        }
    }
    Ok((latency, errors))
}

async fn poll(
    mut client: Client,
    target: Target,
    streams: Vec<u64>,
    pattern: Arc<Pattern>,
    prefix: Arc<str>,
    shared: Arc<Shared>,
) -> anyhow::Result<ReceiverReport> {
    let mut report = ReceiverReport {
        ids: Vec::new(),
        e2e: histogram()?,
        errors: BTreeMap::new(),
    };
    let one_each = matches!(pattern.shape, Shape::OneEach(_));
    let mut got = Vec::new();
    'streams: for stream in streams {
        let name = stream_name(&prefix, stream);
        let mut token = None;
        loop {
            if shared.done() {
                break 'streams;
            }
            got.clear();
            let nothing = client
                .receive(
                    target,
                    &name,
                    pattern.max_messages,
                    pattern.acked,
                    &mut token,
                    &mut got,
                )
                .await
                .context("receive")?;
            if let Some(status) = nothing {
                *report.errors.entry(status).or_default() += 1;
                continue;
            }
            let arrived = now_micros();
            for &(seq, sent) in &got {
                report
                    .e2e
                    .saturating_record(arrived.saturating_sub(sent).max(1));
                report.ids.push(seq);
            }
            shared
                .received
                .fetch_add(got.len() as u64, Ordering::AcqRel);
            shared
                .last_receive_micros
                .fetch_max(shared.start.elapsed().as_micros() as u64, Ordering::AcqRel);
            if one_each && !got.is_empty() {
                continue 'streams;
            }
        }
    }
    Ok(report)
}
