//! CORS end to end, against the real server binary: preflights and answers for listed
//! origins only, and a configuration entry that is not an origin refused at start. (The
//! browser's side is `scripts/browser.sh`.)

mod common;

use common::{TestResult, TestServer};
use hyper::{Method, StatusCode};
use serde_json::json;

/// With `http.cors.allowed_origins`, a preflight from a listed origin is answered with what
/// the API takes, and every answer to that origin (errors too) names it and exposes
/// `Retry-After` and the request id; another origin gets no CORS header, and without the
/// setting nothing changes.
#[tokio::test]
async fn cors_answers_listed_origins_only() -> TestResult {
    let server = TestServer::start_with(
        "http:\n  cors:\n    allowed_origins: [\"http://app.test:8080\"]\n",
        &[],
    );
    let client = server.client();
    let preflight = |origin: &'static str| {
        [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "content-type, authorization",
            ),
        ]
    };
    let (status, headers, body) = client
        .exchange(
            Method::OPTIONS,
            "/api/v1/streams/send",
            String::new(),
            &preflight("http://app.test:8080"),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_empty());
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://app.test:8080"
    );
    assert_eq!(
        headers["access-control-allow-methods"],
        "GET, POST, OPTIONS"
    );
    let allowed = headers["access-control-allow-headers"].to_str()?;
    for name in [
        "authorization",
        "content-type",
        "last-event-id",
        "x-request-id",
    ] {
        assert!(allowed.contains(name), "{name} in {allowed}");
    }
    assert_eq!(headers["vary"], "origin");

    let (status, headers, _) = client
        .exchange(
            Method::OPTIONS,
            "/api/v1/streams/send",
            String::new(),
            &preflight("http://evil.test"),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!headers.contains_key("access-control-allow-origin"));

    let origin = [("origin", "http://app.test:8080")];
    let send = json!({"streamId": "cors", "messageUuid": "m1", "message": 1}).to_string();
    let (status, headers, _) = client
        .exchange(Method::POST, "/api/v1/streams/send", send, &origin)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://app.test:8080"
    );
    assert_eq!(
        headers["access-control-expose-headers"],
        "retry-after, x-request-id"
    );
    let (status, headers, _) = client
        .exchange(
            Method::GET,
            "/api/v1/streams/receive?timeoutSeconds=0",
            String::new(),
            &origin,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an error answer");
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://app.test:8080"
    );

    let (_, headers, _) = client
        .exchange(
            Method::GET,
            "/health",
            String::new(),
            &[("origin", "http://evil.test")],
        )
        .await;
    assert!(!headers.contains_key("access-control-allow-origin"));

    let plain = TestServer::start();
    let (status, headers, _) = plain
        .client()
        .exchange(
            Method::OPTIONS,
            "/api/v1/streams/send",
            String::new(),
            &preflight("http://app.test:8080"),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::METHOD_NOT_ALLOWED,
        "no CORS: no preflight"
    );
    assert!(!headers.contains_key("access-control-allow-origin"));
    Ok(())
}

#[test]
fn a_cors_entry_that_is_not_an_origin_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "http:\n  cors:\n    allowed_origins: [\"https://app.example/path\"]\n",
    )
    .expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipubsub-server"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run ipubsub-server");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("http.cors.allowed_origins") && stderr.contains("is not an origin"),
        "{stderr}"
    );
}
