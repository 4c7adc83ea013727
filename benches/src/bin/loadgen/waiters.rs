//! `--hold-waiters`: many receives waiting at once, and what they cost the server.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::Args;

/// The resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> anyhow::Result<u64> {
    Ok(ipubsub_benches::proc_stats(pid)?.rss_bytes)
}

/// The server's address, from `--url`.
fn server_addr(args: &Args) -> anyhow::Result<std::net::SocketAddr> {
    let url = args.url[0].trim_start_matches("http://");
    url.trim_end_matches('/')
        .parse()
        .context("--url must be http://IP:PORT")
}

/// Holds `count` receives waiting, each on its own connection, and checks their answers.
pub(crate) async fn hold_waiters(args: &Args, count: usize) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server_addr(args)?;
    let rss_before = args.server_pid.map(rss_of).transpose()?;
    let timeout = Duration::from_secs(args.receive_timeout);
    anyhow::ensure!(
        args.receive_timeout > 0,
        "--receive-timeout must be above 0 with --hold-waiters"
    );
    let prefix = format!("waiter-{}", std::process::id());
    // First every connection makes one quick request and stays open (keep-alive), so that
    // what a connection costs and what a waiting receive adds to it are measured apart.
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(count);
    for i in 0..count {
        let mut socket = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connection {i}"))?;
        socket
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut seen = Vec::new();
        while !seen.ends_with(b"{\"status\":\"ok\"}") {
            let mut chunk = [0u8; 256];
            let n = socket.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection {i} closed during /health");
            seen.extend_from_slice(&chunk[..n]);
        }
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = args.server_pid.map(rss_of).transpose()?;
    let mut waiting = Vec::with_capacity(count);
    for (i, mut socket) in sockets.into_iter().enumerate() {
        let request = format!(
            "GET /api/v1/streams/receive?streamId={prefix}-{i}&timeoutSeconds={} HTTP/1.1\r\nHost: x\r\n\r\n",
            args.receive_timeout
        );
        socket.write_all(request.as_bytes()).await?;
        waiting.push((socket, Instant::now() + timeout + Duration::from_secs(1)));
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_waiting = args.server_pid.map(rss_of).transpose()?;
    println!(
        "holding {count} waiting receives (set up in {:.2}s)",
        opened.as_secs_f64()
    );
    if let (Some(before), Some(idle), Some(busy)) = (rss_before, rss_idle, rss_waiting) {
        let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / count as f64;
        println!(
            "server rss: start={:.1}MiB idle-connections={:.1}MiB waiting={:.1}MiB; per idle keep-alive connection={:.0}B, added by its waiting receive={:.0}B, total per waiter={:.0}B",
            before as f64 / 1048576.0,
            idle as f64 / 1048576.0,
            busy as f64 / 1048576.0,
            per(before, idle),
            per(idle, busy),
            per(before, busy)
        );
    }
    let answers = waiting.into_iter().map(|(mut socket, deadline)| {
        tokio::spawn(async move {
            let mut head = [0u8; 12];
            let read = tokio::time::timeout_at(deadline.into(), socket.read_exact(&mut head)).await;
            matches!(read, Ok(Ok(_))) && &head[9..12] == b"424"
        })
    });
    let mut on_time = 0;
    for answer in answers.collect::<Vec<_>>() {
        on_time += usize::from(answer.await?);
    }
    println!("answered 424 within timeout+1s: {on_time}/{count}");
    anyhow::ensure!(
        !args.check || on_time == count,
        "{} waiters were not answered in time",
        count - on_time
    );
    Ok(())
}

/// Holds `count` receives (or, with `--sse`, event streams) waiting, spread over
/// `connections` HTTP/2 connections; meanwhile measures the latency of sends and receives on
/// a connection of their own, then checks that every waiting one was answered (424, or its
/// `end` event) within its timeout + 1 s.
pub(crate) async fn hold_waiters_h2(
    args: &Args,
    count: usize,
    connections: usize,
) -> anyhow::Result<()> {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    anyhow::ensure!(
        args.receive_timeout > 0 && connections > 0,
        "--receive-timeout and --h2-connections must be above 0"
    );
    let addr = server_addr(args)?;
    let timeout = Duration::from_secs(args.receive_timeout);
    let rss_before = args.server_pid.map(rss_of).transpose()?;
    let mut senders = Vec::with_capacity(connections);
    for i in 0..connections {
        let socket = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connection {i}"))?;
        socket.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(socket))
                .await?;
        tokio::spawn(connection);
        senders.push(sender);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = args.server_pid.map(rss_of).transpose()?;
    let prefix = format!("h2-waiter-{}", std::process::id());
    let sse = args.sse;
    let started = Instant::now();
    let mut waiting = Vec::with_capacity(count);
    for i in 0..count {
        let mut sender = senders[i % connections].clone();
        let uri = format!(
            "http://{addr}/api/v1/streams/receive?streamId={prefix}-{i}&timeoutSeconds={}",
            args.receive_timeout
        );
        let mut request = hyper::Request::get(uri);
        if sse {
            request = request.header("accept", "text/event-stream");
        }
        let request = request.body(Empty::<Bytes>::new())?;
        waiting.push(tokio::spawn(async move {
            // The timeout runs from when the request is handed to its connection, not from
            // when this task was made: 100,000 tasks are made far faster than sent.
            if sender.ready().await.is_err() {
                return (false, Duration::ZERO);
            }
            let asked = Instant::now();
            let deadline = asked + timeout + Duration::from_secs(1);
            let answered = async {
                let response = sender.send_request(request).await.ok()?;
                if !sse {
                    return Some(response.status() == 424);
                }
                // The whole stream: `retry:`, then its `end` event after the timeout.
                let body = response.into_body().collect().await.ok()?.to_bytes();
                Some(body.windows(10).any(|w| w == b"event: end"))
            };
            // Given 10 s more than its due, to tell late answers from lost ones.
            let late = deadline + Duration::from_secs(10);
            let answer = tokio::time::timeout_at(late.into(), answered).await;
            let took = asked.elapsed();
            (
                matches!(answer, Ok(Some(true))) && Instant::now() <= deadline,
                took,
            )
        }));
    }
    let opened = started.elapsed();
    // Every request is in flight once the server counts them all as waiting (long-polls) or
    // has had time to open them (event streams are counted at their first frame).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_waiting = args.server_pid.map(rss_of).transpose()?;
    let what = if sse {
        "event streams"
    } else {
        "waiting receives"
    };
    println!(
        "holding {count} {what} on {connections} HTTP/2 connections (requests issued in {:.2}s)",
        opened.as_secs_f64()
    );
    if let (Some(before), Some(idle), Some(busy)) = (rss_before, rss_idle, rss_waiting) {
        let per = |a: u64, b: u64, n: usize| b.saturating_sub(a) as f64 / n as f64;
        println!(
            "server rss: start={:.1}MiB idle-connections={:.1}MiB waiting={:.1}MiB; per idle HTTP/2 connection={:.0}B, per waiting request={:.0}B",
            before as f64 / 1048576.0,
            idle as f64 / 1048576.0,
            busy as f64 / 1048576.0,
            per(before, idle, connections),
            per(idle, busy, count),
        );
    }
    // Meanwhile: a send and a receive at a time on a connection of their own.
    let socket = tokio::net::TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let (mut probe, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(socket)).await?;
    tokio::spawn(connection);
    let mut latency = ipubsub_benches::latency_histogram()?;
    let probe_until = Instant::now() + timeout.saturating_sub(Duration::from_secs(3));
    let mut probes = 0u64;
    while Instant::now() < probe_until && probes < 2_000 {
        let body = format!(
            r#"{{"streamId":"{prefix}-probe","messageUuid":"p{probes}","message":{probes}}}"#
        );
        let send = hyper::Request::post(format!("http://{addr}/api/v1/streams/send"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))?;
        let t0 = Instant::now();
        probe.ready().await?;
        let sent = probe.send_request(send).await?;
        anyhow::ensure!(
            sent.status() == 200,
            "a probe send answered {}",
            sent.status()
        );
        let receive = hyper::Request::get(format!(
            "http://{addr}/api/v1/streams/receive?streamId={prefix}-probe&timeoutSeconds=0"
        ))
        .body(http_body_util::Full::new(Bytes::new()))?;
        let received = probe.send_request(receive).await?;
        anyhow::ensure!(
            received.status() == 200,
            "a probe receive answered {}",
            received.status()
        );
        received.into_body().collect().await?;
        latency.saturating_record(t0.elapsed().as_micros() as u64);
        probes += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "meanwhile {probes} send+receive pairs on another connection: p50={}µs p99={}µs max={}µs",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.max()
    );
    // What answering the timeouts costs each side: CPU from here until the last answer.
    let cpu = |pid: u32| ipubsub_benches::proc_stats(pid).map(|s| s.cpu_seconds);
    let me = std::process::id();
    let cpu_before = (args.server_pid.map(cpu).transpose()?, cpu(me)?);
    let mut on_time = 0;
    let mut took = ipubsub_benches::latency_histogram()?;
    for answer in waiting {
        let (in_time, elapsed) = answer.await?;
        on_time += usize::from(in_time);
        took.saturating_record(elapsed.as_millis() as u64);
    }
    println!(
        "answered within timeout+1s: {on_time}/{count}; time to the answer p50={}ms p99={}ms max={}ms (timeout {}ms)",
        took.value_at_quantile(0.5),
        took.value_at_quantile(0.99),
        took.max(),
        timeout.as_millis()
    );
    if let (Some(server_before), Some(pid)) = (cpu_before.0, args.server_pid) {
        println!(
            "CPU while the timeouts fell due: server {:.2}s, load generator {:.2}s",
            cpu(pid)? - server_before,
            cpu(me)? - cpu_before.1
        );
    }
    anyhow::ensure!(
        !args.check || on_time == count,
        "{} waiting requests were not answered in time",
        count - on_time
    );
    Ok(())
}
