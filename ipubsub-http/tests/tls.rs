//! HTTPS: a client talks TLS to a node, nodes forward to each other over TLS and check each
//! other's certificates, and a plain-HTTP request to a TLS listener gets no answer.
#![cfg(feature = "tls")]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ipubsub_cluster::{Cluster, DEFAULT_VIRTUAL_NODES, Node, NodeId, Route};
use ipubsub_core::{Engine, StreamId};
use ipubsub_http::tls::{PeerTls, ServerTls};
use ipubsub_http::{App, HttpConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), Error>;

/// A self-signed certificate for 127.0.0.1, written as PEM files into `dir`.
fn certificate(dir: &Path, name: &str) -> Result<(std::path::PathBuf, std::path::PathBuf), Error> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    Ok((cert, key))
}

/// An HTTPS client trusting `roots`.
fn https_client(
    roots: &Path,
) -> Result<Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>, Error> {
    let mut store = rustls::RootCertStore::empty();
    let pem = std::fs::read(roots)?;
    for certificate in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        store.add(certificate?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(store)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

async fn call(
    client: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    method: Method,
    url: String,
    body: String,
) -> Result<(StatusCode, Value), Error> {
    let (status, bytes) = exchange(client, method, url, body).await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// The status and body of one request.
async fn exchange(
    client: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    method: Method,
    url: String,
    body: String,
) -> Result<(StatusCode, Bytes), Error> {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from(body)))?;
    let response = client.request(request).await?;
    let status = response.status();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

/// Two nodes listening with `server` and reaching each other with `peer`.
async fn pair(
    server: &ServerTls,
    peer: &PeerTls,
) -> Result<
    (
        Vec<SocketAddr>,
        Vec<App>,
        Vec<tokio::sync::oneshot::Sender<()>>,
        Cluster,
    ),
    Error,
> {
    let listeners = [
        TcpListener::bind("127.0.0.1:0").await?,
        TcpListener::bind("127.0.0.1:0").await?,
    ];
    let nodes = [
        Node::new(NodeId::new("n1")?, listeners[0].local_addr()?),
        Node::new(NodeId::new("n2")?, listeners[1].local_addr()?),
    ];
    let (mut addrs, mut apps, mut stops) = (Vec::new(), Vec::new(), Vec::new());
    for (i, listener) in listeners.into_iter().enumerate() {
        let cluster = Cluster::with_members(
            nodes[i].clone(),
            [nodes[1 - i].clone()],
            DEFAULT_VIRTUAL_NODES,
        );
        let mut config = HttpConfig::default();
        config.peer_tls = Some(peer.clone());
        let app = App::new(Engine::default(), None, cluster, config);
        stops.push(common::serve_tls(listener, app.clone(), server.clone()));
        addrs.push(nodes[i].http_addr());
        apps.push(app);
    }
    let view = Cluster::with_members(nodes[0].clone(), [nodes[1].clone()], DEFAULT_VIRTUAL_NODES);
    Ok((addrs, apps, stops, view))
}

fn owned_by_the_other(view: &Cluster) -> Result<StreamId, Error> {
    for i in 0.. {
        let stream = StreamId::new(format!("tls-{i}"))?;
        if matches!(view.route(&stream), Route::Forward(_)) {
            return Ok(stream);
        }
    }
    Err("no stream owned by n2".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_members_talk_https() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (cert, key) = certificate(dir.path(), "node")?;
    let server = ServerTls::from_pem_files(&cert, &key)?;
    let peer = PeerTls::from_pem_file(&cert, None)?;
    let (addrs, apps, _stops, view) = pair(&server, &peer).await?;
    let client = https_client(&cert)?;
    let stream = owned_by_the_other(&view)?;

    // Sent to the first node over HTTPS, forwarded over HTTPS, kept by the owner.
    let send = json!({"streamId": stream.as_str(), "messageUuid": "m", "message": {"tls": true}});
    let (status, _) = call(
        &client,
        Method::POST,
        format!("https://{}/api/v1/streams/send", addrs[0]),
        send.to_string(),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(apps[1].engine().buffered(&stream), Some(1));
    let (status, body) = call(
        &client,
        Method::GET,
        format!(
            "https://{}/api/v1/streams/receive?streamId={stream}&timeoutSeconds=0",
            addrs[0]
        ),
        String::new(),
    )
    .await?;
    assert_eq!(
        (status, &body["message"]),
        (StatusCode::OK, &json!({"tls": true}))
    );

    // Plain HTTP to a TLS listener: no HTTP answer.
    let mut socket = TcpStream::connect(addrs[0]).await?;
    socket
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_an_untrusted_certificate_is_not_forwarded_to() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (cert, key) = certificate(dir.path(), "node")?;
    let (other, _) = certificate(dir.path(), "other")?;
    let server = ServerTls::from_pem_files(&cert, &key)?;
    // The nodes trust another certificate than the one they present.
    let peer = PeerTls::from_pem_file(&other, None)?;
    let (addrs, apps, _stops, view) = pair(&server, &peer).await?;
    let client = https_client(&cert)?;
    let stream = owned_by_the_other(&view)?;
    let send = json!({"streamId": stream.as_str(), "messageUuid": "m", "message": 1});
    let (status, body) = call(
        &client,
        Method::POST,
        format!("https://{}/api/v1/streams/send", addrs[0]),
        send.to_string(),
    )
    .await?;
    // The first node cannot verify the owner: it suspects it and serves the stream itself.
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        apps[1].engine().buffered(&stream),
        None,
        "nothing reached the owner"
    );
    assert_eq!(apps[0].engine().buffered(&stream), Some(1));
    // Counted apart from an unreachable owner, so that operators can tell the two apart.
    let url = format!("https://{}/metrics", addrs[0]);
    let (status, metrics) = exchange(&client, Method::GET, url, String::new()).await?;
    assert_eq!(status, StatusCode::OK);
    let metrics = String::from_utf8(metrics.to_vec())?;
    let forwards: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ipubsub_forwards_total{"))
        .collect();
    assert_eq!(
        forwards,
        ["ipubsub_forwards_total{outcome=\"tls_failed\"} 1"],
        "{metrics}"
    );
    Ok(())
}

#[test]
fn bad_files_are_clear_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (cert, key) = certificate(dir.path(), "node")?;
    let (_, other_key) = certificate(dir.path(), "other")?;
    let missing = dir.path().join("missing.pem");
    let err = ServerTls::from_pem_files(&missing, &key)
        .err()
        .ok_or("a missing file was accepted")?;
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let err = ServerTls::from_pem_files(&cert, &other_key)
        .err()
        .ok_or("a key of another certificate was accepted")?;
    assert!(err.to_string().contains("TLS refused"), "{err}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "")?;
    assert!(PeerTls::from_pem_file(&empty, None).is_err());
    assert!(PeerTls::from_pem_file(&cert, Some("not a name")).is_err());
    Ok(())
}
