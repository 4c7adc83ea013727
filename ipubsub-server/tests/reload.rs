//! SIGHUP on the real binary: the tokens file, the cluster secrets and the TLS certificate
//! are read again and replace the running ones; connections and waiting requests are
//! untouched, and a reload that fails keeps what was running.

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestResult, TestServer};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const OLD: &str = "old-token-0123456789abcdef";
const NEW: &str = "new-token-0123456789abcdef";

fn hang_up(server: &TestServer) -> TestResult {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()?;
    assert!(status.success(), "kill -HUP");
    Ok(())
}

fn tokens(token: &str) -> String {
    format!("tokens:\n  - {{name: app, token: {token}}}\n")
}

async fn send_as(client: &Client, token: &str, stream: &str, id: &str) -> StatusCode {
    let bearer = format!("Bearer {token}");
    let body = json!({"streamId": stream, "messageUuid": id, "message": id}).to_string();
    let (status, _) = client
        .raw(
            Method::POST,
            "/api/v1/streams/send",
            body,
            &[("authorization", &bearer)],
        )
        .await;
    status
}

/// Waits until `check` holds (a reload is applied a moment after the signal).
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_the_tokens_and_keeps_waiting_requests() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens.yaml");
    std::fs::write(&file, tokens(OLD))?;
    let server = TestServer::start_with(
        &format!(
            "auth:\n  tokens_file: {}\nstorage:\n  backend: none\n",
            file.display()
        ),
        &[],
    );
    let client = Client::new(server.addr);
    assert_eq!(send_as(&client, OLD, "s", "1").await, StatusCode::OK);
    assert_eq!(
        send_as(&client, NEW, "s", "2").await,
        StatusCode::UNAUTHORIZED
    );

    // A long-poll admitted with the old token waits through the reload.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            let bearer = format!("Bearer {OLD}");
            client
                .exchange(
                    Method::GET,
                    "/api/v1/streams/receive?streamId=later&timeoutSeconds=20",
                    String::new(),
                    &[("authorization", &bearer)],
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&file, tokens(NEW))?;
    hang_up(&server)?;
    eventually("the new token is accepted", async || {
        send_as(&client, NEW, "s", "3").await == StatusCode::OK
    })
    .await;
    assert_eq!(
        send_as(&client, OLD, "s", "4").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(send_as(&client, NEW, "later", "m").await, StatusCode::OK);
    let (status, _, body) = waiting.await?;
    let body: Value = serde_json::from_slice(&body)?;
    assert_eq!(
        (status, body["messageUuid"].as_str()),
        (StatusCode::OK, Some("m")),
        "the long-poll admitted before the reload got the message"
    );

    // A broken file: the reload fails and the running tokens stay.
    std::fs::write(&file, "tokens: [ {name: app, token: short} ]\n")?;
    hang_up(&server)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(send_as(&client, NEW, "s", "5").await, StatusCode::OK);
    assert_eq!(
        send_as(&client, OLD, "s", "6").await,
        StatusCode::UNAUTHORIZED
    );
    Ok(())
}

/// A forwarded request (as a member sends it) with `secret`: served, or 403.
async fn forwarded_with(client: &Client, secret: &str) -> StatusCode {
    let body = json!({"streamId": "f", "messageUuid": "m", "message": 1}).to_string();
    let (status, _) = client
        .raw(
            Method::POST,
            "/api/v1/streams/send",
            body,
            &[
                ("x-ipubsub-forwarded", "node-x"),
                ("x-ipubsub-cluster-secret", secret),
            ],
        )
        .await;
    status
}

/// The cluster secret is rotated by reloads: accept the new one too, send it, drop the old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_secret_is_rotated_by_reloads() -> TestResult {
    const FIRST: &str = "first-secret-0123456789";
    const SECOND: &str = "second-secret-0123456789";
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    let write = |secret: &str, accepted: &[&str]| {
        std::fs::write(
            &config,
            format!(
                "node:\n  name: rotating\n  http_bind_addr_port: \"127.0.0.1:0\"\ncluster:\n  secret: {secret}\n  accepted_secrets: [{}]\nstorage:\n  backend: none\n",
                accepted.join(", ")
            ),
        )
    };
    write(FIRST, &[])?;
    let data = dir.path().join("data");
    let server = TestServer::spawn(tempfile::tempdir()?, &config, &data, &[]);
    let client = Client::new(server.addr);
    assert_eq!(forwarded_with(&client, FIRST).await, StatusCode::OK);
    assert_eq!(forwarded_with(&client, SECOND).await, StatusCode::FORBIDDEN);

    write(SECOND, &[FIRST])?;
    hang_up(&server)?;
    eventually("the second secret is accepted", async || {
        forwarded_with(&client, SECOND).await == StatusCode::OK
    })
    .await;
    assert_eq!(
        forwarded_with(&client, FIRST).await,
        StatusCode::OK,
        "still accepted"
    );

    write(SECOND, &[])?;
    hang_up(&server)?;
    eventually("the first secret is refused", async || {
        forwarded_with(&client, FIRST).await == StatusCode::FORBIDDEN
    })
    .await;
    assert_eq!(forwarded_with(&client, SECOND).await, StatusCode::OK);
    Ok(())
}

/// The listener's certificate is replaced for new connections; a certificate with a key
/// that is not its own is refused and the running one stays.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_the_certificate_for_new_connections() -> TestResult {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client as HttpsClient;
    use hyper_util::rt::TokioExecutor;

    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let second = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    std::fs::write(&cert, first.cert.pem())?;
    std::fs::write(&key, first.signing_key.serialize_pem())?;
    let server = TestServer::start_with(
        &format!(
            "tls:\n  cert_file: {}\n  key_file: {}\nstorage:\n  backend: none\n",
            cert.display(),
            key.display()
        ),
        &[],
    );
    // Whether a new connection that trusts only `trusted` gets an answer.
    let url = format!("https://{}/health", server.addr);
    let accepts = async |trusted: &rcgen::CertifiedKey<rcgen::KeyPair>| -> bool {
        let mut roots = rustls::RootCertStore::empty();
        if roots.add(trusted.cert.der().clone()).is_err() {
            return false;
        }
        let Ok(config) = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions() else {
            return false;
        };
        let config = config.with_root_certificates(roots).with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .build();
        let client: HttpsClient<_, Full<Bytes>> =
            HttpsClient::builder(TokioExecutor::new()).build(connector);
        let Ok(request) = hyper::Request::get(&url).body(Full::new(Bytes::new())) else {
            return false;
        };
        client
            .request(request)
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    };
    assert!(accepts(&first).await);
    assert!(!accepts(&second).await);

    // The second certificate with the first one's key: refused, nothing changes.
    std::fs::write(&cert, second.cert.pem())?;
    hang_up(&server)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        accepts(&first).await,
        "a mismatched pair changed the certificate"
    );

    std::fs::write(&key, second.signing_key.serialize_pem())?;
    hang_up(&server)?;
    eventually("the second certificate is presented", async || {
        accepts(&second).await
    })
    .await;
    assert!(!accepts(&first).await);
    Ok(())
}
