//! A SQL database that fails: at start-up (a clear one-line error, a non-zero exit) and at run
//! time (503s for persistent requests while in-memory streams keep working, then recovery
//! without a restart when it comes back). The run-time cases stop and start a private server
//! process of their own (PostgreSQL, MariaDB, Cassandra or SecantusDB, from what `scripts/services.sh`
//! installs) on ephemeral loopback ports, so they never disturb the shared servers.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::databases::{Cassandra, Database, MariaDb, Postgres, Secantus, free_port};
use common::{Client, TestResult, TestServer, code};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// The `messageUuid`s of a log read's `messages`, in order.
fn message_ids(body: &Value) -> Vec<&str> {
    body["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["messageUuid"].as_str()).collect())
        .unwrap_or_default()
}

fn persistent(stream: &str, id: &str) -> Value {
    json!({"streamId": stream, "messageUuid": id, "message": {"id": id}, "writeToDB": true})
}

async fn outage_and_recovery(mut db: impl Database) -> TestResult {
    let backend = db.yaml_backend();
    let location = if backend == "cassandra" {
        format!("nodes: [\"{}\"]", db.url())
    } else {
        format!("url: \"{}\"", db.url())
    };
    let server = TestServer::start_with(
        &format!(
            "storage:\n  backend: {backend}\n  store_timeout_seconds: 2\n  ready_probe_seconds: 1\n  {backend}:\n    {location}\n    connect_timeout_seconds: 1\n",
        ),
        &[],
    );
    let (status, body) = server.send(persistent("log", "before")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.call(Method::GET, "/ready", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    db.stop();
    let started = Instant::now();
    let (status, body) = server.send(persistent("log", "during")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE"),
        "{body}"
    );
    let (status, body) = server
        .receive("streamId=log&readFromDB=true&timeoutSeconds=0")
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered within the store timeout: {:?}",
        started.elapsed()
    );
    // In-memory streams do not depend on the database.
    let (status, _) = server
        .send(json!({"streamId": "mem", "messageUuid": "m", "message": 1}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.receive("streamId=mem&timeoutSeconds=1").await;
    assert_eq!(
        (status, &body["messageUuid"]),
        (StatusCode::OK, &json!("m"))
    );

    // The store probe tells orchestrators, within a probe and a store timeout.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = server.call(Method::GET, "/ready", "").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(code(&body), "NOT_READY", "{body}");
            break;
        }
        assert!(
            Instant::now() < until,
            "/ready still {status} 10 s into the outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Back without a restart of ipubsub: the pool reconnects.
    db.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = server.send(persistent("log", "after")).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(Instant::now() < deadline, "no recovery within 60 s: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let until = Instant::now() + Duration::from_secs(10);
    while server.call(Method::GET, "/ready", "").await.0 != StatusCode::OK {
        assert!(
            Instant::now() < until,
            "/ready not back 10 s after recovery"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = server
        .receive("streamId=log&readFromDB=true&maxMessages=10&timeoutSeconds=0")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids = message_ids(&body);
    assert_eq!(
        ids,
        ["before", "after"],
        "the refused message was not written"
    );
    Ok(())
}

#[tokio::test]
async fn postgres_outage_is_503_and_recovers_without_restart() -> TestResult {
    outage_and_recovery(Postgres::new()).await
}

#[tokio::test]
async fn mariadb_outage_is_503_and_recovers_without_restart() -> TestResult {
    outage_and_recovery(MariaDb::new()).await
}

#[tokio::test]
async fn mongodb_outage_is_503_and_recovers_without_restart() -> TestResult {
    outage_and_recovery(Secantus::new()).await
}

#[tokio::test]
async fn cassandra_outage_is_503_and_recovers_without_restart() -> TestResult {
    outage_and_recovery(Cassandra::new()).await
}

#[track_caller]
fn start_up_fails(backend: &str, url: &str, expected: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_ipubsub-server"))
        .env("IPUBSUB_NODE__HTTP_BIND_ADDR_PORT", "127.0.0.1:0")
        .env("IPUBSUB_STORAGE__BACKEND", backend)
        .env(
            format!("IPUBSUB_STORAGE__{}__URL", backend.to_uppercase()),
            url,
        )
        .env(
            format!(
                "IPUBSUB_STORAGE__{}__CONNECT_TIMEOUT_SECONDS",
                backend.to_uppercase()
            ),
            "2",
        )
        .env("RUST_LOG", "off")
        .output()
        .expect("run ipubsub-server");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");
    assert!(
        !stderr.contains("s3cret"),
        "the password is never printed: {stderr}"
    );
}

#[test]
fn an_unreachable_cassandra_stops_the_start_with_one_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "node:\n  http_bind_addr_port: \"127.0.0.1:0\"\nstorage:\n  backend: cassandra\n  cassandra:\n    nodes: [\"127.0.0.1:{}\"]\n    connect_timeout_seconds: 2\n",
            free_port()
        ),
    )?;
    let output = Command::new(env!("CARGO_BIN_EXE_ipubsub-server"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "off")
        .output()?;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot connect to Cassandra at 127.0.0.1:"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn bad_credentials_or_no_database_stop_the_start_with_one_line() {
    let closed = free_port();
    start_up_fails(
        "postgres",
        "postgres://ipubsub:s3cret@127.0.0.1:5432/ipubsub",
        "cannot connect to PostgreSQL at postgres://ipubsub:***@127.0.0.1:5432/ipubsub: error returned from database: password authentication failed",
    );
    start_up_fails(
        "postgres",
        &format!("postgres://ipubsub:s3cret@127.0.0.1:{closed}/ipubsub"),
        "Connection refused",
    );
    start_up_fails(
        "mysql",
        "mysql://ipubsub:s3cret@127.0.0.1:3306/ipubsub",
        "cannot connect to MySQL at mysql://ipubsub:***@127.0.0.1:3306/ipubsub: error returned from database: 1045 (28000): Access denied",
    );
    start_up_fails(
        "mysql",
        &format!("mysql://ipubsub:s3cret@127.0.0.1:{closed}/ipubsub"),
        "Connection refused",
    );
    start_up_fails(
        "mongodb",
        &format!("mongodb://ipubsub:s3cret@127.0.0.1:{closed}/"),
        "cannot connect to MongoDB at mongodb://ipubsub:***@127.0.0.1:",
    );
}

/// The value of the metric `name` in a Prometheus text exposition, 0 when absent.
fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A database that stops answering with its connections open (`freeze("STOP")`, as a vanished
/// host or a partition would), then comes back (`freeze("CONT")`). With one commit worker and
/// a 1 s store timeout each store call is given 3 s: the commit of a send made meanwhile ends
/// as failed within that, and the log writes again once the database is back.
async fn frozen_and_thawed(
    db: &impl Database,
    freeze: impl Fn(&str) -> Result<(), String>,
) -> TestResult {
    let backend = db.yaml_backend();
    let server = TestServer::start_with(
        &format!(
            "storage:\n  backend: {backend}\n  store_timeout_seconds: 1\n  commit_workers: 1\n  {backend}:\n    url: \"{}\"\n",
            db.url()
        ),
        &[],
    );
    let (status, body) = server.send(persistent("frozen", "before")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    freeze("STOP")?;
    let (status, body) = server.send(persistent("frozen", "during")).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE"),
        "{body}"
    );
    let frozen = Instant::now();
    let failed = loop {
        let (_, bytes) = server.call_raw(Method::GET, "/metrics", "").await;
        let failed = metric(
            &String::from_utf8_lossy(&bytes),
            "ipubsub_log_failed_messages_total",
        );
        if failed >= 1.0 || frozen.elapsed() > Duration::from_secs(10) {
            break failed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    freeze("CONT")?;
    assert!(
        failed >= 1.0,
        "the commit of a send to the frozen database had not ended 10 s later"
    );

    let ids = recovered_log(&server, "frozen").await;
    // The send answered 503 may or may not have been written; nothing else is missing.
    assert!(
        ids == ["before", "after"] || ids == ["before", "during", "after"],
        "{ids:?}"
    );
    Ok(())
}

/// Sends `after` to `stream` until the node writes again (at most 30 s), then reads the
/// stream's log from its start: its message ids.
async fn recovered_log(server: &TestServer, stream: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = server.send(persistent(stream, "after")).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery within 30 s: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = server
        .receive(&format!(
            "streamId={stream}&readFromDB=true&maxMessages=100&timeoutSeconds=0"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    message_ids(&body).into_iter().map(str::to_owned).collect()
}

#[tokio::test]
async fn a_frozen_postgres_frees_the_commit_workers_and_the_log_recovers() -> TestResult {
    let db = Postgres::new();
    frozen_and_thawed(&db, |signal| db.signal_all(signal)).await
}

/// `kill -signal pid`.
fn signal(pid: u32, signal: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("kill -{signal} {pid}: {status}"))
}

#[tokio::test]
async fn a_frozen_mongodb_frees_the_commit_workers_and_the_log_recovers() -> TestResult {
    let db = Secantus::new();
    let pid = db
        .child
        .as_ref()
        .map(std::process::Child::id)
        .ok_or("SecantusDB is not running")?;
    frozen_and_thawed(&db, |s| signal(pid, s)).await
}

#[tokio::test]
async fn a_frozen_mariadb_frees_the_commit_workers_and_the_log_recovers() -> TestResult {
    let db = MariaDb::new();
    let pid = db
        .child
        .as_ref()
        .map(std::process::Child::id)
        .ok_or("mariadbd is not running")?;
    frozen_and_thawed(&db, |s| signal(pid, s)).await
}

/// A store that stalls cannot make the log's append queue grow without bound: past
/// `storage.max_queued_appends` persistent sends are refused at once (`503 LOG_QUEUE_FULL`),
/// and those that did queue but whose requests timed out are taken out unwritten (their
/// senders were told "may or may not be stored": they are not), so a retry cannot find its
/// message twice. The node writes again once the database is back.
#[tokio::test]
async fn a_frozen_postgres_fills_the_append_queue_which_refuses_the_rest() -> TestResult {
    let db = Postgres::new();
    let server = TestServer::start_with(
        &format!(
            "storage:\n  backend: postgres\n  store_timeout_seconds: 2\n  commit_workers: 1\n  max_queued_appends: 20\n  postgres:\n    url: \"{}\"\n",
            db.url()
        ),
        &[],
    );
    let (status, body) = server.send(persistent("flood", "before")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    db.signal_all("STOP")?;
    // The one commit worker takes this one and waits on the frozen database.
    let client = std::sync::Arc::new(Client::new(server.addr));
    let during = tokio::spawn({
        let client = client.clone();
        async move { client.send(persistent("flood", "during")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sends: Vec<_> = (0..60)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.send(persistent("flood", &format!("f{i}"))).await })
        })
        .collect();
    let mut codes = std::collections::BTreeMap::new();
    for send in sends {
        let (status, body) = send.await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        *codes.entry(code(&body).to_owned()).or_insert(0) += 1;
    }
    let (status, body) = during.await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        (codes.get("LOG_QUEUE_FULL"), codes.get("STORE_UNAVAILABLE")),
        (Some(&40), Some(&20)),
        "20 queued (and timed out), the rest refused: {codes:?}"
    );
    // Once the stuck call is given up, the worker finds the queued ones abandoned.
    let freed = Instant::now();
    let abandoned = loop {
        let (_, bytes) = server.call_raw(Method::GET, "/metrics", "").await;
        let exposition = String::from_utf8_lossy(&bytes);
        let abandoned = metric(&exposition, "ipubsub_log_abandoned_appends_total");
        if abandoned >= 20.0 || freed.elapsed() > Duration::from_secs(15) {
            assert_eq!(metric(&exposition, "ipubsub_log_queue_full_total"), 40.0);
            break abandoned;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    db.signal_all("CONT")?;
    assert_eq!(abandoned, 20.0, "the queued sends whose requests timed out");
    let ids = recovered_log(&server, "flood").await;
    assert!(
        ids == ["before", "after"] || ids == ["before", "during", "after"],
        "none of the flood may be written: {ids:?}"
    );
    Ok(())
}
