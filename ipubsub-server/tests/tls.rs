//! The server binary with `tls:` configured: it speaks HTTPS, with the certificate it was
//! given, and says so on its listening line.
#![cfg(feature = "tls")]

mod common;

use std::process::{Command, Stdio};

use bytes::Bytes;
use common::{TestResult, TestServer};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[tokio::test]
async fn the_server_talks_https_with_its_certificate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    let server = TestServer::start_with(
        &format!(
            "tls:\n  cert_file: {}\n  key_file: {}",
            cert.display(),
            key.display()
        ),
        &[],
    );

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone())?;
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.clone())
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let send =
        Request::post(format!("https://{}/api/v1/streams/send", server.addr)).body(Full::new(
            Bytes::from_static(br#"{"streamId":"s","messageUuid":"m","message":"over tls"}"#),
        ))?;
    assert_eq!(client.request(send).await?.status(), StatusCode::OK);
    let receive = Request::get(format!(
        "https://{}/api/v1/streams/receive?streamId=s&timeoutSeconds=0",
        server.addr
    ))
    .body(Full::new(Bytes::new()))?;
    let response = client.request(receive).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
    assert_eq!(body["message"], "over tls");

    // The same listener speaks HTTP/2 to a client that offers `h2` by ALPN.
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http2()
        .build();
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let send =
        Request::post(format!("https://{}/api/v1/streams/send", server.addr)).body(Full::new(
            Bytes::from_static(br#"{"streamId":"s","messageUuid":"m2","message":"over h2"}"#),
        ))?;
    let sent = h2.request(send).await?;
    assert_eq!(
        (sent.status(), sent.version()),
        (StatusCode::OK, hyper::Version::HTTP_2)
    );
    let receive = Request::get(format!(
        "https://{}/api/v1/streams/receive?streamId=s&timeoutSeconds=0",
        server.addr
    ))
    .body(Full::new(Bytes::new()))?;
    let body = h2.request(receive).await?.into_body().collect().await?;
    let body: Value = serde_json::from_slice(&body.to_bytes())?;
    assert_eq!(body["message"], "over h2");
    Ok(())
}

#[test]
fn a_key_without_its_certificate_is_a_configuration_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "tls:\n  key_file: /nonexistent/key.pem\n")?;
    let output = Command::new(env!("CARGO_BIN_EXE_ipubsub-server"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tls.cert_file and tls.key_file"),
        "{stderr}"
    );
    Ok(())
}
