//! The comparison's clients: one connection to a target (ipubsub over HTTP/1.1 or HTTP/2,
//! Nchan, Redis, or an event stream), sending, sending in batches and receiving the way the
//! target does, and the payload scanners that read what came back.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ipubsub_benches::http1::{Http1Conn, push_post};
use ipubsub_cluster::Coalesce;

use crate::events::Follower;
use crate::nchan;
use crate::resp::{RedisConn, Reply};
use crate::servers::Target;

/// The (seq, send time) of every payload in `bytes`, in order.
pub(crate) fn scan_payloads(bytes: &[u8], out: &mut Vec<(u64, u64)>) {
    let number = |from: usize| -> (u64, usize) {
        let digits = bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let n = std::str::from_utf8(&bytes[from..from + digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        (n, from + digits)
    };
    let mut at = 0;
    while let Some(found) = find(&bytes[at..], b"{\"i\":") {
        let (seq, end) = number(at + found + 5);
        if !bytes[end..].starts_with(b",\"t\":") {
            at = end;
            continue;
        }
        let (sent, end) = number(end + 5);
        out.push((seq, sent));
        at = end;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of the last `"dbResumeToken":"…"` in `body`.
pub(crate) fn last_token(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"dbResumeToken\":\"";
    let start = body.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let len = body[start..].iter().position(|&b| b == b'"')?;
    String::from_utf8(body[start..start + len].to_vec()).ok()
}

/// Appends the send body of message `seq` to `stream`: persistent for the persistent target,
/// else to a buffer large enough never to evict.
fn push_send_body(body: &mut Vec<u8>, target: Target, stream: &str, seq: u64, message: &[u8]) {
    body.extend_from_slice(b"{\"streamId\":\"");
    body.extend_from_slice(stream.as_bytes());
    body.extend_from_slice(format!("\",\"messageUuid\":\"{seq}\",").as_bytes());
    if target == Target::Persistent {
        body.extend_from_slice(b"\"writeToDB\":true,");
    } else {
        body.extend_from_slice(b"\"inMemoryStreamSize\":100000,");
    }
    body.extend_from_slice(b"\"message\":");
    body.extend_from_slice(message);
    body.push(b'}');
}

/// An HTTP/2 connection for sends, its writes gathered as a multiplexing client's are
/// ([`Coalesce`]).
pub(crate) async fn h2_sender(addr: SocketAddr) -> anyhow::Result<http2::SendRequest<Full<Bytes>>> {
    let socket = tokio::net::TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let (sender, connection) =
        http2::handshake(TokioExecutor::new(), TokioIo::new(Coalesce::new(socket))).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One client connection to a target.
pub(crate) enum Client {
    Http(Http1Conn, Vec<u8>),
    /// A publisher's handle on an HTTP/2 connection it shares with others (the server's
    /// address beside it, for the request's authority).
    Http2(http2::SendRequest<Full<Bytes>>, SocketAddr),
    Redis(RedisConn),
    /// A receiver following its stream as events (its data read so far kept in the `Vec`).
    Events(Follower, SocketAddr, Vec<u8>),
}

impl Client {
    pub(crate) async fn connect(target: Target, addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(if target.is_http() {
            Client::Http(Http1Conn::connect(addr).await?, Vec::with_capacity(512))
        } else {
            Client::Redis(RedisConn::connect(addr).await?)
        })
    }

    /// Sends one message; `Ok(None)` when accepted, else the refusal.
    pub(crate) async fn send(
        &mut self,
        target: Target,
        stream: &str,
        seq: u64,
        message: &[u8],
        acked: bool,
    ) -> anyhow::Result<Option<String>> {
        match self {
            Client::Http(conn, out) if target == Target::Nchan => {
                nchan::publish(conn, out, stream, message).await
            }
            Client::Http(conn, out) => {
                out.clear();
                let mut body = Vec::with_capacity(message.len() + 128);
                push_send_body(&mut body, target, stream, seq, message);
                push_post(out, "/api/v1/streams/send", &body);
                conn.write(out).await?;
                let response = conn.read_response().await?;
                Ok((response.status != 200).then(|| format!("send {}", response.status)))
            }
            Client::Http2(sender, addr) => {
                let mut body = Vec::with_capacity(message.len() + 128);
                push_send_body(&mut body, target, stream, seq, message);
                let request = hyper::Request::post(format!("http://{addr}/api/v1/streams/send"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                Ok((status != 200).then(|| format!("send {status}")))
            }
            Client::Events(..) => anyhow::bail!("an event-stream client does not send"),
            Client::Redis(conn) if acked => {
                match conn
                    .command(&[b"XADD", stream.as_bytes(), b"*", b"p", message])
                    .await?
                {
                    Reply::Bulk(Some(_)) => Ok(None),
                    other => Ok(Some(format!("XADD {other:?}"))),
                }
            }
            Client::Redis(conn) => {
                match conn
                    .command(&[b"RPUSH", stream.as_bytes(), message])
                    .await?
                {
                    Reply::Simple(_) => Ok(None),
                    other => Ok(Some(format!("RPUSH {other:?}"))),
                }
            }
        }
    }

    /// Sends `messages` (message `seqs[i]` is `messages[i]`) to `stream` in one request;
    /// answers how many were accepted, and the refusals.
    pub(crate) async fn send_many(
        &mut self,
        target: Target,
        stream: &str,
        seqs: std::ops::Range<u64>,
        messages: &[Vec<u8>],
    ) -> anyhow::Result<(u64, Option<String>)> {
        match self {
            Client::Http(..) if target == Target::Nchan => {
                anyhow::bail!("Nchan publishes one message per request")
            }
            Client::Http2(..) => anyhow::bail!("batches go over HTTP/1.1"),
            Client::Http(conn, out) => {
                out.clear();
                let mut body = Vec::with_capacity(messages.iter().map(|m| m.len() + 96).sum());
                body.extend_from_slice(b"{\"messages\":[");
                for (k, (seq, message)) in seqs.zip(messages).enumerate() {
                    if k > 0 {
                        body.push(b',');
                    }
                    push_send_body(&mut body, target, stream, seq, message);
                }
                body.extend_from_slice(b"]}");
                push_post(out, "/api/v1/streams/sendBatch", &body);
                conn.write(out).await?;
                let response = conn.read_response().await?;
                if response.status != 200 {
                    return Ok((0, Some(format!("sendBatch {}", response.status))));
                }
                let body = conn.body(response);
                let accepted = body
                    .windows(13)
                    .filter(|w| *w == b"\"status\":200}" || *w == b"\"status\":200,")
                    .count() as u64;
                let refused = messages.len() as u64 - accepted;
                Ok((
                    accepted,
                    (refused > 0).then(|| format!("batch item refused ×{refused}")),
                ))
            }
            Client::Events(..) => anyhow::bail!("an event-stream client does not send"),
            Client::Redis(conn) => {
                let mut args: Vec<&[u8]> = vec![b"RPUSH", stream.as_bytes()];
                args.extend(messages.iter().map(Vec::as_slice));
                match conn.command(&args).await? {
                    Reply::Simple(_) => Ok((messages.len() as u64, None)),
                    other => Ok((0, Some(format!("RPUSH {other:?}")))),
                }
            }
        }
    }

    /// Long-polls `stream` for up to `max` messages; appends (seq, send time) of each.
    /// `Ok(Some(status))` when nothing came (timeout or refusal). `token` is the stream's
    /// position: a log's `dbResumeToken`, Nchan's `Last-Modified` and `Etag` of the last
    /// message.
    pub(crate) async fn receive(
        &mut self,
        target: Target,
        stream: &str,
        max: usize,
        acked: bool,
        token: &mut Option<String>,
        got: &mut Vec<(u64, u64)>,
    ) -> anyhow::Result<Option<String>> {
        match self {
            Client::Http(conn, out) if target == Target::Nchan => {
                nchan::poll(conn, out, stream, token, |body| scan_payloads(body, got)).await
            }
            Client::Http(conn, out) => {
                use std::fmt::Write;
                let mut uri = format!("/api/v1/streams/receive?streamId={stream}&timeoutSeconds=1");
                if max > 1 {
                    let _ = write!(uri, "&maxMessages={max}");
                }
                if acked {
                    uri.push_str("&ackTimeoutSeconds=30");
                }
                if target == Target::Persistent {
                    uri.push_str("&readFromDB=true");
                    if let Some(t) = token {
                        let _ = write!(uri, "&dbResumeToken={t}");
                    }
                }
                out.clear();
                out.extend_from_slice(format!("GET {uri} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
                conn.write(out).await?;
                let response = conn.read_response().await?;
                if response.status != 200 {
                    return Ok(Some(format!("receive {}", response.status)));
                }
                let body = conn.body(response);
                scan_payloads(body, got);
                if target == Target::Persistent
                    && let Some(t) = last_token(body)
                {
                    *token = Some(t);
                }
                if !acked {
                    return Ok(None);
                }
                // Acknowledged before they count as delivered: one ack for the answer.
                let ack = ack_body(stream, body);
                out.clear();
                push_post(out, "/api/v1/streams/ack", &ack);
                conn.write(out).await?;
                let response = conn.read_response().await?;
                let status = response.status;
                let acked = conn
                    .body(response)
                    .windows(13)
                    .filter(|w| *w == b"\"status\":200}")
                    .count();
                if status != 200 || acked != got.len() {
                    got.clear();
                    return Ok(Some(format!("ack {status}")));
                }
                Ok(None)
            }
            Client::Http2(..) => anyhow::bail!("an HTTP/2 publisher does not receive"),
            Client::Events(follower, addr, data) => {
                let log = target == Target::Persistent;
                let path = || {
                    if target == Target::Nchan {
                        return nchan::events_path(stream);
                    }
                    let mut path =
                        format!("/api/v1/streams/receive?streamId={stream}&timeoutSeconds=30");
                    if log {
                        path.push_str("&readFromDB=true");
                    }
                    path
                };
                data.clear();
                let second = Duration::from_secs(1);
                let nothing = follower.next(*addr, path, log, second, data).await?;
                scan_payloads(data, got);
                Ok(nothing)
            }
            Client::Redis(conn) if acked => redis_group_receive(conn, stream, max, got).await,
            Client::Redis(conn) => {
                let reply = if max > 1 {
                    let count = max.to_string();
                    conn.command(&[
                        b"BLMPOP",
                        b"1",
                        b"1",
                        stream.as_bytes(),
                        b"LEFT",
                        b"COUNT",
                        count.as_bytes(),
                    ])
                    .await?
                } else {
                    conn.command(&[b"BLPOP", stream.as_bytes(), b"1"]).await?
                };
                let Reply::Array(Some(mut pair)) = reply else {
                    return Ok(Some("receive timeout".into()));
                };
                let values = match pair.pop() {
                    Some(Reply::Bulk(Some(value))) => vec![value],
                    Some(Reply::Array(Some(items))) => items
                        .into_iter()
                        .filter_map(|i| match i {
                            Reply::Bulk(Some(v)) => Some(v),
                            _ => None,
                        })
                        .collect(),
                    other => anyhow::bail!("unexpected pop reply {other:?}"),
                };
                for value in values {
                    scan_payloads(&value, got);
                }
                Ok(None)
            }
        }
    }
}

/// The `ack` of every receipt handle in a receive's answer `body`, on `stream`.
fn ack_body(stream: &str, body: &[u8]) -> Vec<u8> {
    const KEY: &[u8] = b"\"receiptHandle\":\"";
    let mut out = Vec::with_capacity(64 + body.len() / 4);
    out.extend_from_slice(b"{\"streamId\":\"");
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(b"\",\"receiptHandles\":[");
    let mut at = 0;
    let mut first = true;
    while let Some(found) = find(&body[at..], KEY) {
        let start = at + found + KEY.len();
        let len = body[start..].iter().position(|&b| b == b'"').unwrap_or(0);
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        out.extend_from_slice(&body[start..start + len]);
        out.push(b'"');
        at = start + len;
    }
    out.extend_from_slice(b"]}");
    out
}

/// Redis Streams as a work queue: up to `max` entries for consumer group `g` (made on first
/// use), blocking a second, then one `XACK` for them.
async fn redis_group_receive(
    conn: &mut RedisConn,
    stream: &str,
    max: usize,
    got: &mut Vec<(u64, u64)>,
) -> anyhow::Result<Option<String>> {
    let count = max.to_string();
    let read = [
        &b"XREADGROUP"[..],
        b"GROUP",
        b"g",
        b"c",
        b"COUNT",
        count.as_bytes(),
        b"BLOCK",
        b"1000",
        b"STREAMS",
        stream.as_bytes(),
        b">",
    ];
    let reply = match conn.command(&read).await {
        Err(e) if e.to_string().contains("NOGROUP") => {
            conn.command(&[
                b"XGROUP",
                b"CREATE",
                stream.as_bytes(),
                b"g",
                b"0",
                b"MKSTREAM",
            ])
            .await?;
            conn.command(&read).await?
        }
        reply => reply?,
    };
    // [[stream, [[id, [field, value]], …]]], or nil when the block timed out.
    let Reply::Array(Some(mut streams)) = reply else {
        return Ok(Some("receive timeout".into()));
    };
    let Some(Reply::Array(Some(mut pair))) = streams.pop() else {
        anyhow::bail!("unexpected XREADGROUP reply");
    };
    let Some(Reply::Array(Some(entries))) = pair.pop() else {
        anyhow::bail!("unexpected XREADGROUP entries");
    };
    let mut ack: Vec<Vec<u8>> = vec![b"XACK".to_vec(), stream.as_bytes().to_vec(), b"g".to_vec()];
    for entry in entries {
        let Reply::Array(Some(mut parts)) = entry else {
            continue;
        };
        if let Some(Reply::Array(Some(fields))) = parts.pop() {
            for field in fields {
                if let Reply::Bulk(Some(value)) = field {
                    scan_payloads(&value, got);
                }
            }
        }
        if let Some(Reply::Bulk(Some(id))) = parts.pop() {
            ack.push(id);
        }
    }
    let args: Vec<&[u8]> = ack.iter().map(Vec::as_slice).collect();
    match conn.command(&args).await? {
        Reply::Simple(n) if n == (ack.len() - 3).to_string().as_bytes() => Ok(None),
        other => {
            got.clear();
            Ok(Some(format!("XACK {other:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::payload;

    #[test]
    fn payloads_are_found_in_single_and_batched_answers() {
        let p = payload(42, 100);
        assert_eq!(p.len(), 100);
        let mut got = Vec::new();
        scan_payloads(&p, &mut got);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 42);
        let batch = br#"{"messages":[{"messageUuid":"7","message":{"i":7,"t":11,"p":"x"},"dbResumeToken":"A1"},{"messageUuid":"8","message":{"i":8,"t":12,"p":"{\"i\":9}"},"dbResumeToken":"B2"}]}"#;
        got.clear();
        scan_payloads(batch, &mut got);
        assert_eq!(got, vec![(7, 11), (8, 12)]);
        assert_eq!(last_token(batch).as_deref(), Some("B2"));
        assert_eq!(last_token(b"{}"), None);
    }
}
