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

/// Two stores on one database, as two nodes sharing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_shared_cases() {
    let mut config = CassandraConfig::new(node());
    config.keyspace = "ipubsub_suite".into();
    ipubsub_storage::testsuite::run_shared(|| async {
        CassandraStore::connect(&config)
            .await
            .expect("Cassandra is not reachable: run scripts/services.sh")
    })
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

/// A stream whose positions span many partitions, more than one page of the bucket index:
/// reads cross partitions in order, honour limits and positions, and `last_seq` finds the
/// newest partition. (The conformance suite's positions all fall in one partition.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_walk_many_partitions_in_order() {
    use std::time::Duration;

    use bytes::Bytes;
    use ipubsub_core::{LogRecord, Message, MessageId, MessageStore, Seq, StreamId, Timestamp};
    use ipubsub_storage::cassandra::BUCKET_BITS;

    let mut config = CassandraConfig::new(node());
    config.keyspace = "ipubsub_suite".into();
    let store = CassandraStore::connect(&config).await.expect("Cassandra");
    let now = Timestamp::now();
    let stream: StreamId = format!("walk-{}-{}", std::process::id(), now.as_micros())
        .parse()
        .expect("id");
    let epoch = store.acquire(&stream).await.expect("acquire").epoch;
    // Two records in each of 80 partitions over 100 (every fifth left empty): more
    // non-empty partitions than one page of the index (64).
    let seqs: Vec<Seq> = (0..100u64)
        .filter(|b| b % 5 != 4)
        .flat_map(|b| [(b << BUCKET_BITS) + 1, (b << BUCKET_BITS) + 2])
        .map(|counter| Seq::at(epoch, counter).expect("position"))
        .collect();
    let records: Vec<LogRecord> = seqs
        .iter()
        .map(|&seq| LogRecord {
            stream: stream.clone(),
            seq,
            message: Message::new(
                MessageId::new(format!("m{seq}")).expect("id"),
                Bytes::from_static(b"{}"),
                now,
            ),
            expires_at: now.saturating_add(Duration::from_secs(3600)),
        })
        .collect();
    for chunk in records.chunks(40) {
        let appended = store.append(chunk).await.expect("append");
        assert!(appended.fenced.is_empty());
    }
    let all = store
        .read_after(&stream, Seq::ZERO, 1000, now)
        .await
        .expect("read");
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs);
    // From the middle of a partition, with a limit that ends inside a later one.
    let page = store
        .read_after(&stream, seqs[10], 7, now)
        .await
        .expect("read");
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs[11..18]);
    assert_eq!(
        store.last_seq(&stream).await.expect("last"),
        *seqs.last().expect("records")
    );
}
