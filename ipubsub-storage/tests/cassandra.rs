//! The conformance suite against a real Apache Cassandra node (started by
//! `scripts/services.sh`). Fails, never skips, when the server is missing.
#![cfg(feature = "cassandra")]

use ipubsub_storage::testsuite::Expiry;
use ipubsub_storage::{CassandraConfig, CassandraStore};

/// `IPUBSUB_TEST_CASSANDRA_NODE`, or the node `scripts/services.sh` starts.
fn node() -> String {
    std::env::var("IPUBSUB_TEST_CASSANDRA_NODE").unwrap_or_else(|_| "127.0.0.1:9042".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let mut config = CassandraConfig::new(node());
    config.keyspace = "ipubsub_suite".into();
    ipubsub_storage::testsuite::run_with(
        || async {
            CassandraStore::connect(&config)
                .await
                .expect("Cassandra is not reachable: run scripts/services.sh")
        },
        Expiry::Native,
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_cluster_fails_with_the_reason() {
    let mut config = CassandraConfig::new("127.0.0.1:1");
    config.connect_timeout = std::time::Duration::from_secs(2);
    let error = CassandraStore::connect(&config)
        .await
        .expect_err("nothing listens there");
    let text = format!("{error}");
    assert!(
        text.starts_with("cannot connect to Cassandra at 127.0.0.1:1: "),
        "{text}"
    );
}
