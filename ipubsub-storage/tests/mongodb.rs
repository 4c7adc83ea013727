//! The conformance suite against a real MongoDB-protocol server (SecantusDB, started by
//! `scripts/services.sh`). Fails, never skips, when the server is missing.
#![cfg(feature = "mongodb")]

use ipubsub_storage::{MongoConfig, MongoStore};

/// `IPUBSUB_TEST_MONGODB_URL`, or the server `scripts/services.sh` starts.
fn url() -> String {
    std::env::var("IPUBSUB_TEST_MONGODB_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let mut config = MongoConfig::new(url());
    config.database = "ipubsub_suite".into();
    ipubsub_storage::testsuite::run(|| async {
        MongoStore::connect(&config)
            .await
            .expect("MongoDB is not reachable: run scripts/services.sh")
    })
    .await;
}

/// Two stores on one database, as two nodes sharing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_shared_cases() {
    let mut config = MongoConfig::new(url());
    config.database = "ipubsub_suite".into();
    ipubsub_storage::testsuite::run_shared(|| async {
        MongoStore::connect(&config)
            .await
            .expect("MongoDB is not reachable: run scripts/services.sh")
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_server_fails_with_the_reason() {
    let mut config = MongoConfig::new("mongodb://127.0.0.1:1/");
    config.connect_timeout = std::time::Duration::from_secs(1);
    let error = MongoStore::connect(&config)
        .await
        .expect_err("nothing listens there");
    let text = format!("{error}");
    assert!(
        text.starts_with("cannot connect to MongoDB at mongodb://127.0.0.1:1/: "),
        "{text}"
    );
}
