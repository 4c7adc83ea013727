//! `--pipeline`: publishers that write many sends per write on a raw HTTP/1.1 connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context as _;
use ipubsub_benches::http1::{Http1Conn, push_post};

use crate::{Args, PublisherReport, Shared, send_body};
use ipubsub_benches::latency_histogram as histogram;

/// A publisher that pipelines `--pipeline` sends per write on a raw connection.
pub(crate) async fn pipelined_publisher(
    index: usize,
    args: Arc<Args>,
    shared: Arc<Shared>,
    deadline: Instant,
) -> anyhow::Result<PublisherReport> {
    let mut report = PublisherReport {
        send_latency: histogram()?,
        statuses: BTreeMap::new(),
        transport_errors: 0,
    };
    let url = &args.url[index % args.url.len()];
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .context("--url must be http://IP:PORT with --pipeline")?;
    let mut conn = Http1Conn::connect(addr).await?;
    let mut out = Vec::new();
    loop {
        if args.count.is_none() && Instant::now() >= deadline {
            break;
        }
        out.clear();
        let mut n = 0;
        for _ in 0..args.pipeline {
            let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
            if args.count.is_some_and(|count| seq >= count) {
                break;
            }
            let stream = &shared.stream_names[(seq % args.streams as u64) as usize];
            let body = send_body(&args, stream, seq);
            push_post(&mut out, "/api/v1/streams/send", body.as_bytes());
            n += 1;
        }
        if n == 0 {
            break;
        }
        let started = Instant::now();
        conn.write(&out).await?;
        for _ in 0..n {
            let status = conn.read_response().await?.status;
            report
                .send_latency
                .saturating_record(started.elapsed().as_micros() as u64);
            *report.statuses.entry(status).or_default() += 1;
            if status == 200 {
                shared.sent_ok.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(report)
}
