//! Nchan's side of the comparison: its nginx configuration, and its publish, long-poll and
//! event-stream requests (a raw HTTP/1.1 connection, as for ipubsub).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use ipubsub_benches::http1::{Http1Conn, push_post};

/// Where Debian's `libnginx-mod-nchan` puts the module.
pub const MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

/// Publishes `message` to channel `stream`; `Ok(None)` when accepted, else the refusal.
pub async fn publish(
    conn: &mut Http1Conn,
    out: &mut Vec<u8>,
    stream: &str,
    message: &[u8],
) -> anyhow::Result<Option<String>> {
    out.clear();
    push_post(out, &format!("/pub?id={stream}"), message);
    conn.write(out).await?;
    let response = conn.read_response().await?;
    // 202: queued with no subscriber waiting; 201: delivered to some.
    let accepted = matches!(response.status, 201 | 202);
    Ok((!accepted).then(|| format!("publish {}", response.status)))
}

/// Long-polls channel `stream` for its next message after `cursor` (the `Last-Modified` and
/// `Etag` of the last one, kept here as `"{modified}\n{etag}"`; none: the oldest) and hands
/// the message's body to `got`; `Ok(Some(status))` when nothing came.
pub async fn poll(
    conn: &mut Http1Conn,
    out: &mut Vec<u8>,
    stream: &str,
    cursor: &mut Option<String>,
    got: impl FnOnce(&[u8]),
) -> anyhow::Result<Option<String>> {
    out.clear();
    let _ = write!(out, "GET /sub?id={stream} HTTP/1.1\r\nHost: x\r\n");
    if let Some((modified, etag)) = cursor.as_deref().and_then(|t| t.split_once('\n')) {
        let _ = write!(
            out,
            "If-Modified-Since: {modified}\r\nIf-None-Match: {etag}\r\n"
        );
    }
    out.extend_from_slice(b"\r\n");
    conn.write(out).await?;
    let response = conn.read_response().await?;
    if response.status != 200 {
        return Ok(Some(format!("receive {}", response.status)));
    }
    if let (Some(modified), Some(etag)) = (
        conn.header(response, "last-modified"),
        conn.header(response, "etag"),
    ) {
        *cursor = Some(format!("{modified}\n{etag}"));
    }
    got(conn.body(response));
    Ok(None)
}

/// The path of channel `stream`'s event stream.
pub fn events_path(stream: &str) -> String {
    format!("/events?id={stream}")
}

/// nginx with Nchan on `addr` (HTTP/1.1) and `h2_addr` (cleartext HTTP/2), two workers, no
/// access log; channel buffers long and lasting enough that no message of a run is evicted
/// before its one receiver reads it (Nchan keeps 10 messages per channel by default).
pub fn config(addr: SocketAddr, h2_addr: SocketAddr, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "load_module {MODULE};\n\
         worker_processes 2;\n\
         worker_rlimit_nofile 20000;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         events {{ worker_connections 10000; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {dir}/body;\n\
           nchan_shared_memory_size 1024m;\n\
           server {{\n\
             listen {addr} backlog=4096;\n\
             listen {h2_addr} http2 backlog=4096;\n\
             http2_max_concurrent_streams 1024;\n\
             keepalive_requests 100000000;\n\
             nchan_message_buffer_length 200000;\n\
             nchan_message_timeout 10m;\n\
             nchan_subscriber_first_message oldest;\n\
             location = /pub {{ nchan_publisher; nchan_channel_id $arg_id; }}\n\
             location = /sub {{ nchan_subscriber longpoll; nchan_channel_id $arg_id; nchan_subscriber_timeout 1s; }}\n\
             location = /events {{ nchan_subscriber eventsource; nchan_channel_id $arg_id; nchan_subscriber_timeout 30s; }}\n\
           }}\n\
         }}\n"
    )
}
