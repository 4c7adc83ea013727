//! The conformance suite against a real PostgreSQL server (started by `scripts/services.sh`).
//! Fails, never skips, when the server is missing.
#![cfg(feature = "postgres")]

use ipubsub_storage::{PostgresStore, SqlConfig};

/// `IPUBSUB_TEST_POSTGRES_URL`, or the database `scripts/services.sh` sets up.
fn url() -> String {
    std::env::var("IPUBSUB_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://ipubsub:ipubsub@127.0.0.1:5432/ipubsub".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let config = SqlConfig::new(url());
    ipubsub_storage::testsuite::run(|| async {
        PostgresStore::connect(&config)
            .await
            .expect("PostgreSQL is not reachable: run scripts/services.sh")
    })
    .await;
}

#[tokio::test]
async fn bad_credentials_fail_with_the_reason_and_no_password() {
    let config = SqlConfig::new("postgres://ipubsub:wrong-secret@127.0.0.1:5432/ipubsub");
    let error = PostgresStore::connect(&config)
        .await
        .expect_err("bad password");
    let text = format!("{error}");
    assert!(
        text.starts_with(
            "cannot connect to PostgreSQL at postgres://ipubsub:***@127.0.0.1:5432/ipubsub: "
        ),
        "{text}"
    );
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains("wrong-secret"), "{text}");
}
