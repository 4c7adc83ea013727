//! `--hold-waiters`: many receives waiting at once, and what they cost the server.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::Args;

/// The resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> anyhow::Result<u64> {
    Ok(ipubsub_benches::proc_stats(pid)?.rss_bytes)
}

/// Holds `count` receives waiting, each on its own connection, and checks their answers.
pub(crate) async fn hold_waiters(args: &Args, count: usize) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = args.url[0].trim_start_matches("http://");
    let addr: std::net::SocketAddr = url
        .trim_end_matches('/')
        .parse()
        .context("--url must be http://IP:PORT")?;
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
