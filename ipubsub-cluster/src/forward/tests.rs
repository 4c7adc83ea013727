//! The forwarder against raw sockets and real listeners: what a forwarded request carries,
//! one HTTP/2 connection per member, the in-flight cap, and a failed handshake told apart.

use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
#[cfg(feature = "tls")]
use transport::failed_tls_handshake;

/// What the owner receives: the hop, the deadline, the caller's request id and the
/// cluster secret.
#[tokio::test]
async fn a_forwarded_request_carries_its_hop_deadline_and_request_id()
-> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let owner = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let n = socket.read(&mut chunk).await?;
            head.extend_from_slice(&chunk[..n]);
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            .await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head).to_lowercase())
    });
    let secret = ClusterSecret::new("s3cret-s3cret-s3cret")?;
    let forwarder = Forwarder::new(NodeId::new("n1")?)
        .with_http(PeerHttp::Http1)
        .with_secret(Some(secret));
    let to = Node::new(NodeId::new("n2")?, addr);
    let answer = forwarder
        .forward(
            &to,
            Method::GET,
            "/x?y=1",
            Bytes::new(),
            Duration::from_millis(1500),
            "req-7.a",
        )
        .await?;
    assert_eq!(answer.status(), 200);
    let head = owner.await??;
    assert!(head.starts_with("get /x?y=1 http/1.1\r\n"), "{head}");
    for line in [
        "x-ipubsub-forwarded: n1",
        "x-ipubsub-deadline-ms: 1500",
        "x-request-id: req-7.a",
        "x-ipubsub-cluster-secret: s3cret-s3cret-s3cret",
    ] {
        assert!(head.contains(line), "{line} missing from {head}");
    }
    Ok(())
}

/// Which headers of a forwarded request may enter the connection's HPACK table: a deadline of
/// whole seconds (one of few values), but never a deadline of any other length, the request
/// id (new on every request) or the cluster secret.
#[test]
fn only_headers_that_repeat_are_indexed() -> Result<(), Box<dyn std::error::Error>> {
    let secret = ClusterSecret::new("s3cret-s3cret-s3cret")?;
    let forwarder = Forwarder::new(NodeId::new("n1")?).with_secret(Some(secret));
    let sensitive = |wait: Duration, name: &str| -> Result<bool, Box<dyn std::error::Error>> {
        let request = forwarder.request(Method::GET, "/x?y=1", wait, "req-7.a")?;
        let value = request.headers().get(name).ok_or(format!("no {name}"))?;
        Ok(value.is_sensitive())
    };
    assert!(!sensitive(Duration::from_secs(30), DEADLINE_HEADER)?);
    assert!(sensitive(Duration::from_millis(1500), DEADLINE_HEADER)?);
    assert!(sensitive(Duration::from_secs(30), REQUEST_ID_HEADER)?);
    assert!(sensitive(Duration::from_secs(30), CLUSTER_SECRET_HEADER)?);
    assert!(!sensitive(Duration::from_secs(30), FORWARDED_HEADER)?);
    Ok(())
}

/// Over HTTP/2, every request to one member goes over one connection, side by side: 50
/// requests that each wait at the owner for the others to arrive all complete.
#[tokio::test]
async fn requests_to_one_member_share_one_http2_connection()
-> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const REQUESTS: usize = 50;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let connections = Arc::new(AtomicUsize::new(0));
    let all_in = Arc::new(tokio::sync::Barrier::new(REQUESTS));
    let accepted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let all_in = Arc::clone(&all_in);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let all_in = Arc::clone(&all_in);
                async move {
                    // No answer until every request is in flight at once.
                    all_in.wait().await;
                    let forwarded = request.headers().contains_key(FORWARDED_HEADER);
                    let body = Full::new(Bytes::from(if forwarded { "fwd" } else { "?" }));
                    Ok::<_, std::convert::Infallible>(Response::new(body))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service),
            );
        }
    });
    let forwarder = Forwarder::new(NodeId::new("n1")?);
    let to = Node::new(NodeId::new("n2")?, addr);
    let requests = (0..REQUESTS).map(|i| {
        let (forwarder, to) = (forwarder.clone(), to.clone());
        tokio::spawn(async move {
            let path = format!("/r?i={i}");
            let wait = Duration::from_secs(5);
            forwarder
                .forward(&to, Method::GET, &path, Bytes::new(), wait, "r")
                .await
        })
    });
    for request in requests.collect::<Vec<_>>() {
        let answer = request.await??;
        assert_eq!(answer.body().as_ref(), b"fwd");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    Ok(())
}

/// Past its cap of requests in flight to a member, a forward fails at once as busy (not
/// queued behind the member's stream limit); answered requests give their places back.
#[tokio::test]
async fn past_its_cap_a_forward_to_a_member_is_refused_at_once()
-> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use std::sync::Arc;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    // The owner holds every request until it is told to answer.
    let (release, released) = tokio::sync::watch::channel(false);
    let released = Arc::new(released);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let released = Arc::clone(&released);
            let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                let mut released = (*released).clone();
                async move {
                    let _ = released.wait_for(|&answer| answer).await;
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service),
            );
        }
    });
    let forwarder = Forwarder::new(NodeId::new("n1")?).with_max_in_flight(2);
    let to = Node::new(NodeId::new("n2")?, addr);
    let forward = |forwarder: Forwarder, to: Node| async move {
        let wait = Duration::from_secs(5);
        forwarder
            .forward(&to, Method::GET, "/r", Bytes::new(), wait, "r")
            .await
    };
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(forward(forwarder.clone(), to.clone())))
        .collect();
    while forwarder.in_flight.count(to.id()) < 2 {
        tokio::task::yield_now().await;
    }
    let refused = tokio::time::timeout(
        Duration::from_secs(1),
        forward(forwarder.clone(), to.clone()),
    )
    .await?;
    assert!(
        matches!(refused, Err(ForwardError::Busy { max: 2, .. })),
        "{refused:?}"
    );
    release.send(true)?;
    for request in held {
        assert_eq!(request.await??.status(), 200);
    }
    assert_eq!(forwarder.in_flight.count(to.id()), 0);
    let again = forward(forwarder.clone(), to.clone()).await?;
    assert_eq!(again.status(), 200);
    Ok(())
}

/// A TLS failure is found however deep the connector wrapped it; a refused connection
/// is not one.
#[cfg(feature = "tls")]
#[test]
fn a_failed_handshake_is_told_from_a_refused_connection() {
    #[derive(Debug, thiserror::Error)]
    #[error("connect")]
    struct Connect(#[source] Box<dyn std::error::Error + Send + Sync>);

    let untrusted = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
    let wrapped = Connect(Box::new(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        untrusted,
    )));
    assert!(failed_tls_handshake(&wrapped));
    let refused = Connect(Box::new(std::io::Error::from(
        std::io::ErrorKind::ConnectionRefused,
    )));
    assert!(!failed_tls_handshake(&refused));
}

/// A member that closed its connection (it restarted, or shut the connection down) gets the
/// next request on a new one, not a failure that would have the caller suspect it.
#[tokio::test]
async fn a_closed_connection_is_replaced_for_the_next_request()
-> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Each connection answers one request, then closes.
    let (addr, connections) = h2_member(true).await?;
    let forwarder = Forwarder::new(NodeId::new("n1")?);
    let to = Node::new(NodeId::new("n2")?, addr);
    let wait = Duration::from_secs(5);
    for i in 1..=3 {
        let answer = forwarder
            .forward(&to, Method::GET, "/r", Bytes::new(), wait, "r")
            .await?;
        assert_eq!(answer.status(), 200);
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), i);
        // Let the member close the connection it answered on.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A member that stops answering (paused, cut off) is found by a ping, and the requests in
/// flight to it fail then, long before their own deadline.
#[tokio::test(start_paused = true)]
async fn a_member_that_answers_no_ping_fails_its_requests_early()
-> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    // Accepts, then neither reads nor writes: a stopped process.
    let held = tokio::spawn(async move { listener.accept().await });
    let forwarder = Forwarder::new(NodeId::new("n1")?);
    let to = Node::new(NodeId::new("n2")?, addr);
    let started = tokio::time::Instant::now();
    let wait = Duration::from_secs(300);
    let failed = forwarder
        .forward(&to, Method::GET, "/r", Bytes::new(), wait, "r")
        .await;
    assert!(
        matches!(failed, Err(ForwardError::Broken { .. })),
        "{failed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    drop(held);
    Ok(())
}

/// A forwarded long-poll's future lives as long as the long-poll waits, one per waiting
/// request: making a connection, rare and large (TCP, TLS, the preface), is boxed apart.
#[test]
fn a_forward_waiting_for_its_answer_is_small() -> Result<(), crate::NodeIdError> {
    let forwarder = Forwarder::new(NodeId::new("n1")?);
    let to = Node::new(NodeId::new("n2")?, SocketAddr::from(([127, 0, 0, 1], 1)));
    let wait = Duration::from_secs(5);
    let forward = forwarder.forward(&to, Method::GET, "/r", Bytes::new(), wait, "r");
    // In a debug build: 3,696 bytes with the connection's making inline, 2,224 boxed apart,
    // 1,648 with the layers above the transport no longer `async fn`s (each kept its
    // arguments, the request among them, for the future's whole life).
    let size = std::mem::size_of_val(&forward);
    assert!(size <= 2048, "{size} bytes");
    Ok(())
}

/// An HTTP/2 member on loopback answering 200 to everything, and how many connections it
/// took; with `one_answer`, each connection closes after its first answer (a member that
/// restarts, or goes away).
async fn h2_member(
    one_answer: bool,
) -> std::io::Result<(SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (answered, done) = tokio::sync::oneshot::channel::<()>();
            let answered = std::sync::Mutex::new(Some(answered));
            let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                if let Some(answered) = answered.lock().ok().and_then(|mut a| a.take()) {
                    let _ = answered.send(());
                }
                async { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new()))) }
            });
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service);
            tokio::spawn(async move {
                let mut connection = std::pin::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    _ = done, if one_answer => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
    });
    Ok((addr, connections))
}

/// Members that went away are forgotten when a new one is first asked for; a member with an
/// open connection is kept.
#[tokio::test]
async fn members_without_a_connection_are_forgotten()
-> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let transport = multiplexed::Multiplexed::new(multiplexed::Dialer::Plain);
    let ask = |addr| {
        let transport = transport.clone();
        async move {
            let request = Request::builder().uri("/r").body(())?;
            let answer = transport
                .send(addr, request, Bytes::new())
                .await
                .map_err(|e| format!("{e:?}"))?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(answer.status())
        }
    };
    let ((gone, _), (kept, _)) = (h2_member(true).await?, h2_member(false).await?);
    assert_eq!(ask(kept).await?, 200);
    assert_eq!(ask(gone).await?, 200);
    assert_eq!(transport.members().len(), 2);
    // The first member closes its connection after its answer; its task ends.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while transport.members().get(&gone) == Some(&true) {
        assert!(
            tokio::time::Instant::now() < until,
            "the connection never closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        transport.members().len(),
        2,
        "nothing is forgotten until a new member comes"
    );
    let (new, _) = h2_member(false).await?;
    assert_eq!(ask(new).await?, 200);
    let members = transport.members();
    assert!(
        !members.contains_key(&gone),
        "a member without a connection is forgotten"
    );
    assert!(members.contains_key(&kept) && members.contains_key(&new));
    // Forgotten is not refused: asked again, it is made again.
    assert_eq!(ask(gone).await?, 200);
    Ok(())
}
