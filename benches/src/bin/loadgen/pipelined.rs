//! `--pipeline`: publishers that write many sends per write on a raw HTTP/1.1 connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context as _;

use crate::{Args, PublisherReport, Shared, histogram, send_body};

/// Reads one HTTP/1.1 response from `socket` (buffered in `buf`); returns its status.
async fn read_response(
    socket: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> anyhow::Result<u16> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?;
            let status: u16 = head.get(9..12).context("status line")?.parse()?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + length;
            while buf.len() < total {
                let mut chunk = [0u8; 16 * 1024];
                let n = socket.read(&mut chunk).await?;
                anyhow::ensure!(n > 0, "connection closed mid-response");
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..total);
            return Ok(status);
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = socket.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A publisher that pipelines `--pipeline` sends per write on a raw connection.
pub(crate) async fn pipelined_publisher(
    index: usize,
    args: Arc<Args>,
    prefix: Arc<str>,
    shared: Arc<Shared>,
    deadline: Instant,
) -> anyhow::Result<PublisherReport> {
    use tokio::io::AsyncWriteExt;
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
    let mut socket = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    socket.set_nodelay(true)?;
    let mut out = Vec::new();
    let mut buf = Vec::new();
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
            let body = send_body(&args, &prefix, seq);
            out.extend_from_slice(
                format!("POST /api/v1/streams/send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            );
            out.extend_from_slice(body.as_bytes());
            n += 1;
        }
        if n == 0 {
            break;
        }
        let started = Instant::now();
        socket.write_all(&out).await?;
        for _ in 0..n {
            let status = read_response(&mut socket, &mut buf).await?;
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
