//! The conformance suite against a real MariaDB server (started by `scripts/services.sh`).
//! Fails, never skips, when the server is missing.
#![cfg(feature = "mysql")]

use ipubsub_storage::{MySqlStore, SqlConfig};

/// `IPUBSUB_TEST_MYSQL_URL`, or the database `scripts/services.sh` sets up.
fn url() -> String {
    std::env::var("IPUBSUB_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://ipubsub:ipubsub@127.0.0.1:3306/ipubsub".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let config = SqlConfig::new(url());
    ipubsub_storage::testsuite::run(|| async {
        MySqlStore::connect(&config)
            .await
            .expect("MariaDB is not reachable: run scripts/services.sh")
    })
    .await;
}

/// Two stores on one database, as two nodes sharing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_shared_cases() {
    let config = SqlConfig::new(url());
    ipubsub_storage::testsuite::run_shared(|| async {
        MySqlStore::connect(&config)
            .await
            .expect("MariaDB is not reachable: run scripts/services.sh")
    })
    .await;
}

#[tokio::test]
async fn bad_credentials_fail_with_the_reason_and_no_password() {
    let config = SqlConfig::new("mysql://ipubsub:wrong-secret@127.0.0.1:3306/ipubsub");
    let error = MySqlStore::connect(&config)
        .await
        .expect_err("bad password");
    let text = format!("{error}");
    assert!(
        text.starts_with("cannot connect to MySQL at mysql://ipubsub:***@127.0.0.1:3306/ipubsub: "),
        "{text}"
    );
    assert!(text.contains("Access denied"), "{text}");
    assert!(!text.contains("wrong-secret"), "{text}");
}
