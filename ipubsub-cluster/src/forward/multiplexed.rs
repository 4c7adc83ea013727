//! The forwarder's HTTP/2 transport: one connection per member, driven with `h2` directly.
//!
//! hyper's pooled client puts three hand-offs between a caller and the connection: the
//! request goes through a channel to the connection's dispatcher, which spawns a task per
//! request to wait for the answer and hand it back through another channel. Between members
//! every request is small and most are answered within microseconds, so those hand-offs were
//! most of what a forwarded request cost the forwarding node (ARCHITECTURE.md, "Forwarding
//! drives HTTP/2 itself", has the figures). Here the caller opens its stream on the shared
//! connection and waits for the answer itself: per request, the caller's task and the
//! connection's task are the only ones that run.
//!
//! A member's connection is made on its first request and replaced when it breaks; a
//! connection that answers no ping within [`PING_TIMEOUT`] is dropped, which fails every
//! request on it at once instead of at each one's deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{Either, select};
use h2::client::SendRequest;
use h2::{Ping, PingPong, RecvStream};
use hyper::body::{Body, Frame, SizeHint};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Request, Response, Uri};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::coalesce::Coalesce;

/// How often a connection to a member is pinged, and how long an answer may take: a member
/// that stopped (paused, cut off) is found within both.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// How long making a connection (TCP, TLS, the HTTP/2 preface) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Forwarded sends carry whole bodies: room for a large one per stream, and for many at once
/// on the one connection.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Why a request was not answered.
#[derive(Debug)]
pub(super) enum Failure {
    /// No connection could be made, or the one there refused the request before it was
    /// processed: it was not delivered.
    Connect(BoxError),
    /// The TLS handshake failed: not delivered either.
    Tls(BoxError),
    /// The exchange broke after the request may have been delivered.
    Broken(BoxError),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How connections are made: plain TCP, or (feature `tls`) TLS on top of it.
#[derive(Clone)]
pub(super) enum Dialer {
    Plain,
    #[cfg(feature = "tls")]
    Tls {
        connector: tokio_rustls::TlsConnector,
        /// The name every member's certificate carries, when configured; otherwise each
        /// member's certificate is checked for its IP address.
        server_name: Option<rustls::pki_types::ServerName<'static>>,
    },
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain => f.write_str("Plain"),
            #[cfg(feature = "tls")]
            Self::Tls { server_name, .. } => f
                .debug_struct("Tls")
                .field("server_name", server_name)
                .finish_non_exhaustive(),
        }
    }
}

impl Dialer {
    /// TLS with `config`, offering only HTTP/2 by ALPN.
    #[cfg(feature = "tls")]
    pub(super) fn tls(
        mut config: rustls::ClientConfig,
        server_name: Option<rustls::pki_types::ServerName<'static>>,
    ) -> Self {
        config.alpn_protocols = vec![b"h2".to_vec()];
        Self::Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        }
    }

    fn scheme(&self) -> Scheme {
        match self {
            Self::Plain => Scheme::HTTP,
            #[cfg(feature = "tls")]
            Self::Tls { .. } => Scheme::HTTPS,
        }
    }

    async fn dial(&self, addr: SocketAddr) -> Result<Io, Failure> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| Failure::Connect(e.into()))?;
        tcp.set_nodelay(true)
            .map_err(|e| Failure::Connect(e.into()))?;
        let tcp = Coalesce::new(tcp);
        match self {
            Self::Plain => Ok(Box::new(tcp)),
            #[cfg(feature = "tls")]
            Self::Tls {
                connector,
                server_name,
            } => {
                let name = server_name
                    .clone()
                    .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
                // A handshake the TLS library refused is a configuration error; a connection
                // that broke during it is an outage, like one refused.
                let tls = connector.connect(name, tcp).await.map_err(|e| {
                    if super::transport::failed_tls_handshake(&e) {
                        Failure::Tls(e.into())
                    } else {
                        Failure::Connect(e.into())
                    }
                })?;
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(Failure::Connect(
                        format!("{addr} did not agree to HTTP/2 over TLS (ALPN)").into(),
                    ));
                }
                Ok(Box::new(tls))
            }
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
type Io = Box<dyn Stream>;

/// One HTTP/2 connection per member, made on first use. Cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct Multiplexed {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dialer: Dialer,
    members: Mutex<HashMap<SocketAddr, Arc<Member>>>,
    /// Numbers connections, so that a closing one forgets itself and not its successor.
    next_connection: AtomicU64,
}

struct Member {
    /// Where requests to it go: `host:port`, made once.
    authority: Authority,
    open: Mutex<Option<(u64, SendRequest<Bytes>)>>,
    /// Held while a connection is being made: the requests that find none wait for the one
    /// being made instead of each making its own.
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Member")
            .field("connection", &open.as_ref().map(|(id, _)| id))
            .finish()
    }
}

impl Member {
    /// The member's open connection and its number, if it has one.
    fn current(&self) -> Option<(u64, SendRequest<Bytes>)> {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.clone()
    }

    /// Forgets connection `id`, if it is still the member's.
    fn forget(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.as_ref().is_some_and(|(current, _)| *current == id) {
            *open = None;
        }
    }
}

impl Multiplexed {
    pub(super) fn new(dialer: Dialer) -> Self {
        Self {
            shared: Arc::new(Shared {
                dialer,
                members: Mutex::new(HashMap::new()),
                next_connection: AtomicU64::new(0),
            }),
        }
    }

    /// Sends `request` with `body` to the member at `addr`; its answer once the head arrived.
    pub(super) async fn send(
        &self,
        addr: SocketAddr,
        mut request: Request<()>,
        body: Bytes,
    ) -> Result<Response<RecvStream>, Failure> {
        let member = self.member(addr);
        *request.uri_mut() = self.absolute(&member, request.uri())?;
        let mut sender = loop {
            let (id, sender, made) = match member.current() {
                Some((id, sender)) => (id, sender, false),
                // Boxed: making a connection (TCP, TLS, the preface) is a large future that
                // a request waiting for its answer would otherwise carry all along.
                None => Box::pin(self.connect(&member, addr)).await?,
            };
            match sender.ready().await {
                Ok(sender) => break sender,
                // The connection closed since it was made (the member restarted, or went
                // away): the request is still here, so a new connection may take it.
                Err(_) if !made => member.forget(id),
                Err(e) => return Err(Failure::Connect(e.into())),
            }
        };
        let (answer, mut outgoing) = sender
            .send_request(request, body.is_empty())
            .map_err(|e| Failure::Connect(e.into()))?;
        if !body.is_empty() {
            outgoing
                .send_data(body, true)
                .map_err(|e| Failure::Broken(e.into()))?;
        }
        answer.await.map_err(|e| {
            if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                // The member guarantees it did nothing with it (RFC 9113, 8.7).
                Failure::Connect(e.into())
            } else {
                Failure::Broken(e.into())
            }
        })
    }

    /// The member at `addr`, made on first use. Making one forgets the members that have
    /// neither a connection nor a request in flight (they left, or came back on another
    /// address), so that the map follows the cluster rather than its history.
    fn member(&self, addr: SocketAddr) -> Arc<Member> {
        let mut members = self
            .shared
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(member) = members.get(&addr) {
            return Arc::clone(member);
        }
        // A connection's task holds its member (`Closed`), and so does every request to it:
        // a member only the map holds is idle, and is made again if it is ever asked for.
        members.retain(|_, member| Arc::strong_count(member) > 1);
        let member = members.entry(addr).or_insert_with(|| {
            Arc::new(Member {
                authority: Authority::try_from(addr.to_string())
                    .unwrap_or_else(|_| Authority::from_static("invalid")),
                open: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            })
        });
        Arc::clone(member)
    }

    /// The members this transport keeps, each with whether it has an open connection.
    #[cfg(test)]
    pub(super) fn members(&self) -> HashMap<SocketAddr, bool> {
        let members = self
            .shared
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (members.iter())
            .map(|(addr, member)| (*addr, member.current().is_some()))
            .collect()
    }

    /// `uri` (a path and query) on `member`.
    fn absolute(&self, member: &Member, uri: &Uri) -> Result<Uri, Failure> {
        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = Some(self.shared.dialer.scheme());
        parts.authority = Some(member.authority.clone());
        parts.path_and_query = uri.path_and_query().cloned();
        Uri::from_parts(parts).map_err(|e| Failure::Connect(e.into()))
    }

    /// A new connection to the member (`true`), or the one another request just made.
    async fn connect(
        &self,
        member: &Arc<Member>,
        addr: SocketAddr,
    ) -> Result<(u64, SendRequest<Bytes>, bool), Failure> {
        let _connecting = member.connecting.lock().await;
        if let Some((id, sender)) = member.current() {
            return Ok((id, sender, false));
        }
        let connect = async {
            let io = self.shared.dialer.dial(addr).await?;
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_header_list_size(16 * 1024)
                .enable_push(false)
                .handshake::<_, Bytes>(io)
                .await
                .map_err(|e| Failure::Connect(e.into()))
        };
        let (sender, mut connection) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                Failure::Connect(
                    format!("no connection to {addr} within {CONNECT_TIMEOUT:?}").into(),
                )
            })??;
        let id = self.shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let ping = connection.ping_pong();
        let closed = Closed {
            member: Arc::clone(member),
            id,
        };
        tokio::spawn(drive(connection, ping, closed, addr));
        *member.open.lock().unwrap_or_else(PoisonError::into_inner) = Some((id, sender.clone()));
        Ok((id, sender, true))
    }
}

/// Forgets its connection when dropped: the connection's task ended.
struct Closed {
    member: Arc<Member>,
    id: u64,
}

impl Drop for Closed {
    fn drop(&mut self) {
        self.member.forget(self.id);
    }
}

/// Runs a member's connection until it closes or stops answering pings.
async fn drive<T>(
    connection: h2::client::Connection<T, Bytes>,
    ping: Option<PingPong>,
    _closed: Closed,
    addr: SocketAddr,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut connection = std::pin::pin!(connection);
    let Some(mut ping) = ping else {
        if let Err(e) = connection.await {
            tracing::debug!(%addr, error = %e, "connection to member closed");
        }
        return;
    };
    loop {
        let idle = tokio::time::sleep(PING_INTERVAL);
        if let Either::Left((result, _)) = select(connection.as_mut(), std::pin::pin!(idle)).await {
            return closed(result, addr);
        }
        let pong = tokio::time::timeout(PING_TIMEOUT, ping.ping(Ping::opaque()));
        match select(connection.as_mut(), std::pin::pin!(pong)).await {
            Either::Left((result, _)) => return closed(result, addr),
            Either::Right((Ok(Ok(_pong)), _)) => {}
            Either::Right((Ok(Err(e)), _)) => {
                tracing::debug!(%addr, error = %e, "connection to member failed a ping");
                return;
            }
            Either::Right((Err(_elapsed), _)) => {
                // Dropping the connection fails every request on it.
                tracing::warn!(%addr, waited = ?PING_TIMEOUT, "member answered no ping: dropping the connection");
                return;
            }
        }
    }
}

fn closed(result: Result<(), h2::Error>, addr: SocketAddr) {
    if let Err(e) = result {
        tracing::debug!(%addr, error = %e, "connection to member closed");
    }
}

/// An answer's body as it arrives from a member, its flow-control credit given back as
/// each piece is taken.
#[derive(Debug)]
pub(crate) struct Incoming(RecvStream);

impl Incoming {
    pub(super) fn new(stream: RecvStream) -> Self {
        Self(stream)
    }
}

impl Body for Incoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let stream = &mut self.0;
        match ready!(stream.poll_data(cx)) {
            Some(Ok(data)) => {
                // Credit back at once: the caller takes each piece as it comes.
                match stream.flow_control().release_capacity(data.len()) {
                    Ok(()) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
