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

/// Two stores on one database, as two nodes sharing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_shared_cases() {
    let config = SqlConfig::new(url());
    ipubsub_storage::testsuite::run_shared(|| async {
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

/// The write lease, with sessions of the test's own standing in for other nodes.
mod lease {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use ipubsub_core::{
        Epoch, LogRecord, Message, MessageId, MessageStore, Seq, StoreError, StreamId, Timestamp,
    };
    use ipubsub_storage::sql::postgres::lease_lock_keys;
    use ipubsub_storage::{PostgresStore, SqlConfig};
    use sqlx::Connection as _;
    use sqlx::postgres::PgConnection;

    async fn store() -> PostgresStore {
        PostgresStore::connect(&SqlConfig::new(super::url()))
            .await
            .expect("PostgreSQL is not reachable: run scripts/services.sh")
    }

    async fn session() -> PgConnection {
        PgConnection::connect(&super::url())
            .await
            .expect("PostgreSQL is not reachable")
    }

    fn now() -> Timestamp {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Timestamp::from_micros(micros)
    }

    fn stream(name: &str) -> StreamId {
        StreamId::new(format!(
            "pg-lease-{name}-{}-{}",
            std::process::id(),
            now().as_micros()
        ))
        .expect("valid stream id")
    }

    fn record(stream: &StreamId, epoch: u64, counter: u64) -> LogRecord {
        let at = now();
        LogRecord {
            stream: stream.clone(),
            seq: Seq::at(Epoch::new(epoch).expect("epoch"), counter).expect("position"),
            message: Message::new(
                MessageId::new(format!("m-{counter}")).expect("id"),
                Bytes::from(format!("{{\"n\":{counter}}}")),
                at,
            ),
            expires_at: at.saturating_add(Duration::from_secs(3600)),
        }
    }

    async fn positions(store: &PostgresStore, stream: &StreamId) -> Vec<Seq> {
        let mut all = Vec::new();
        loop {
            let after = all.last().copied().unwrap_or(Seq::ZERO);
            let page = store
                .read_after(stream, after, 1000, now())
                .await
                .expect("read");
            if page.is_empty() {
                return all;
            }
            all.extend(page.iter().map(|r| r.seq));
        }
    }

    /// The lease a stream's epoch was acquired under.
    async fn holder(conn: &mut PgConnection, stream: &StreamId) -> i64 {
        sqlx::query_scalar("SELECT lease FROM ipubsub_epochs WHERE stream_id = $1")
            .bind(stream.as_str())
            .fetch_one(conn)
            .await
            .expect("the stream's lease")
    }

    /// A store whose lease died while its writers appended (its keeper's session ended, as
    /// when the process is killed): an acquisition elsewhere waits out the appends still
    /// running, and none of the old epoch lands after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_of_a_dead_lease_land_before_the_takeover_or_not_at_all() {
        let (first, second) = (Arc::new(store().await), store().await);
        let mut admin = session().await;
        for round in 0..3 {
            let s = stream(&format!("dead{round}"));
            first.acquire(&s).await.expect("acquire");
            let landed = Arc::new(AtomicUsize::new(0));
            let writers: Vec<_> = (0..4u64)
                .map(|w| {
                    let (store, s, landed) = (first.clone(), s.clone(), landed.clone());
                    tokio::spawn(async move {
                        let mut acked = Vec::new();
                        for i in 1..=20_000 {
                            let record = record(&s, 1, w * 100_000 + i);
                            match store.append(std::slice::from_ref(&record)).await {
                                Ok(appended) if appended.is_fenced(&s) => break,
                                Ok(_) => {
                                    acked.push(record.seq);
                                    landed.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(_) => break,
                            }
                        }
                        acked
                    })
                })
                .collect();
            let started = Instant::now();
            while landed.load(Ordering::Relaxed) < 20 {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "no append landed"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let (alive, _) = lease_lock_keys(holder(&mut admin, &s).await);
            let ended: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_locks
                 WHERE locktype = 'advisory' AND classid = ($1 >> 32)::oid
                   AND objid = ($1 & 4294967295)::oid AND objsubid = 1 AND granted",
            )
            .bind(alive)
            .fetch_all(&mut admin)
            .await
            .expect("end the keeper's session");
            assert_eq!(ended, [true], "round {round}: one keeper session");
            let tenure = second.acquire(&s).await.expect("take over");
            let at_takeover = positions(&second, &s).await;
            let mut acked = Vec::new();
            for writer in writers {
                acked.extend(writer.await.expect("writer"));
            }
            let after = positions(&second, &s).await;
            acked.sort();
            assert_eq!(
                after.len(),
                at_takeover.len(),
                "round {round}: records of the dead lease landed after the takeover"
            );
            assert!(
                acked.iter().all(|seq| after.contains(seq)),
                "round {round}: an acknowledged record is missing"
            );
            assert_eq!(tenure.last, after.last().copied().unwrap_or(Seq::ZERO));
            assert_eq!(tenure.epoch, Epoch::new(2).expect("epoch 2"));
        }
    }

    /// An append that had passed its lease check when the lease died (its statement still
    /// running, here held open in a transaction of the test's): the takeover waits for it
    /// and reports its position.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_takeover_waits_for_an_append_the_dead_lease_still_runs() {
        let (first, second) = (store().await, store().await);
        let mut admin = session().await;
        let s = stream("late");
        first.acquire(&s).await.expect("acquire");
        first.append(&[record(&s, 1, 1)]).await.expect("append");
        let (alive, barrier) = lease_lock_keys(holder(&mut admin, &s).await);
        let mut late = session().await;
        let mut tx = late.begin().await.expect("begin");
        let late_seq = record(&s, 1, 2).seq;
        // The statement an append of the lease runs, with its lease check.
        let written = sqlx::query(
            "INSERT INTO ipubsub_messages (stream_id, seq, message_id, accepted_at, expires_at, payload)
             SELECT $1, $2, '\\x01'::bytea, 0, 9000000000000000, '{}'::bytea
             WHERE (SELECT CASE WHEN pg_advisory_xact_lock_shared($3) IS NOT NULL
                 THEN NOT pg_try_advisory_xact_lock_shared($4) END)",
        )
        .bind(s.as_str())
        .bind(i64::try_from(late_seq.get()).expect("position"))
        .bind(barrier)
        .bind(alive)
        .execute(&mut *tx)
        .await
        .expect("the late append")
        .rows_affected();
        assert_eq!(written, 1, "the lease was alive when the append ran");
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_locks
             WHERE locktype = 'advisory' AND classid = ($1 >> 32)::oid
               AND objid = ($1 & 4294967295)::oid AND objsubid = 1 AND granted",
        )
        .bind(alive)
        .fetch_all(&mut admin)
        .await
        .expect("end the keeper's session");
        assert_eq!(ended, [true]);
        let s2 = s.clone();
        let takeover = tokio::spawn(async move { second.acquire(&s2).await });
        // Long enough for a takeover that does not wait to have read the last position.
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.commit().await.expect("commit the late append");
        let tenure = takeover.await.expect("join").expect("take over");
        assert_eq!(
            tenure.last, late_seq,
            "the takeover did not wait for the append the dead lease still ran"
        );
    }

    /// A holder whose lease lives but does not answer (its process paused): the acquisition
    /// asks, waits, then ends the holder's lease and takes the stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_that_does_not_release_loses_its_lease() {
        let store = store().await;
        let mut holder = session().await;
        let lease: i64 = sqlx::query_scalar("SELECT nextval('ipubsub_lease_ids')")
            .fetch_one(&mut holder)
            .await
            .expect("a lease number");
        let (alive, _) = lease_lock_keys(lease);
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(alive)
            .execute(&mut holder)
            .await
            .expect("hold it alive");
        let s = stream("paused");
        sqlx::query("INSERT INTO ipubsub_epochs (stream_id, epoch, lease) VALUES ($1, 1, $2)")
            .bind(s.as_str())
            .bind(lease)
            .execute(&mut holder)
            .await
            .expect("the holder's epoch");
        let started = Instant::now();
        let tenure = store.acquire(&s).await.expect("acquire");
        assert_eq!(tenure.epoch, Epoch::new(2).expect("epoch 2"));
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "took a live holder's stream without waiting for it ({:?})",
            started.elapsed()
        );
        assert!(
            holder.ping().await.is_err(),
            "the holder's session was not ended"
        );
    }

    /// An acquisition asks a live holder to release a stream a second time (its first request
    /// is in the table) while the holder's keeper releases it: the two lock the stream's epoch
    /// row and its request in the same order, so neither is aborted as a deadlock and the
    /// holder keeps its lease. Here the test's own session is the acquirer: it locks the epoch
    /// row, lets the keeper start its release, then asks again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_and_an_acquisition_asking_again_do_not_deadlock() {
        let store = store().await;
        let mut admin = session().await;
        let s = stream("ask-again");
        let epoch = u64::from(store.acquire(&s).await.expect("acquire").epoch.get());
        store.append(&[record(&s, epoch, 1)]).await.expect("append");
        let lease = holder(&mut admin, &s).await;
        let mut acquirer = session().await;
        let mut tx = acquirer.begin().await.expect("begin");
        sqlx::query("SELECT epoch FROM ipubsub_epochs WHERE stream_id = $1 FOR UPDATE")
            .bind(s.as_str())
            .execute(&mut *tx)
            .await
            .expect("lock the epoch row");
        // The first request, committed: the keeper sees it within its poll.
        sqlx::query(
            "INSERT INTO ipubsub_revocations (lease, stream_id, requested_at)
             VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)",
        )
        .bind(lease)
        .bind(s.as_str())
        .execute(&mut admin)
        .await
        .expect("ask the holder");
        // Long enough for the keeper to be waiting for the epoch row.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The acquirer asks again, as its next attempt does.
        sqlx::query(
            "INSERT INTO ipubsub_revocations AS r (lease, stream_id, requested_at)
             VALUES ($1, $2, 0)
             ON CONFLICT (lease, stream_id) DO UPDATE SET requested_at = r.requested_at",
        )
        .bind(lease)
        .bind(s.as_str())
        .execute(&mut *tx)
        .await
        .expect("ask again");
        tx.commit().await.expect("commit");
        let started = Instant::now();
        while sqlx::query_scalar::<_, Option<i64>>(
            "SELECT lease FROM ipubsub_epochs WHERE stream_id = $1",
        )
        .bind(s.as_str())
        .fetch_one(&mut admin)
        .await
        .expect("the stream's lease")
        .is_some()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the holder did not release the stream"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = store.append(&[record(&s, epoch, 2)]).await;
        assert!(
            matches!(&after, Ok(appended) if appended.is_fenced(&s)),
            "the holder lost its lease instead of releasing the stream: {after:?}"
        );
        let other = stream("ask-again-other");
        store.acquire(&other).await.expect("acquire another stream");
        assert_eq!(
            holder(&mut admin, &other).await,
            lease,
            "the holder opened a new lease"
        );
    }

    /// A session that locked a stream's epoch row and went idle does not stall an acquisition
    /// for longer than its lock timeout: it fails as unavailable (and is retried).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acquisition_does_not_wait_forever_for_the_epoch_row() {
        let store = store().await;
        let s = stream("row-locked");
        store.acquire(&s).await.expect("first acquisition");
        let mut other = session().await;
        let mut tx = other.begin().await.expect("begin");
        sqlx::query("SELECT epoch FROM ipubsub_epochs WHERE stream_id = $1 FOR UPDATE")
            .bind(s.as_str())
            .execute(&mut *tx)
            .await
            .expect("lock the row");
        let outcome = tokio::time::timeout(Duration::from_secs(20), store.acquire(&s))
            .await
            .expect("the acquisition waited 20 s");
        assert!(
            matches!(outcome, Err(StoreError::Unavailable(_))),
            "{outcome:?}"
        );
        tx.rollback().await.expect("rollback");
        store
            .acquire(&s)
            .await
            .expect("acquire once the row is free");
    }
}
