//! Criterion benches of the persistent log: the token codec, the embedded store's appends
//! (one record and group-committed batches) and reads, and the log's group commit end to end
//! with 64 concurrent appenders.
//!
//! `cargo bench -p ipubsub-benches --bench log`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipubsub_core::{
    LogConfig, LogRecord, Message, MessageId, MessageStore, ResumeToken, Seq, StreamId, Timestamp,
    expiry,
};
use ipubsub_storage::{EmbeddedConfig, EmbeddedStore};

const PAYLOAD: &[u8] = &[b'7'; 100];

fn record(stream: &StreamId, seq: u64) -> LogRecord {
    let now = Timestamp::now();
    LogRecord {
        stream: stream.clone(),
        seq: Seq::new(seq),
        message: Message::new(
            MessageId::new(format!("m-{seq}")).expect("id"),
            Bytes::from_static(PAYLOAD),
            now,
        ),
        expires_at: expiry(now, Duration::from_secs(3600)),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn tokens(c: &mut Criterion) {
    let stream: StreamId = "orders-eu-west".parse().expect("id");
    let token = ResumeToken::new(&stream, Seq::new(1_795_835_073_148_793));
    let text = token.to_string();
    c.bench_function("token/encode", |b| b.iter(|| black_box(token).to_string()));
    c.bench_function("token/decode", |b| {
        b.iter(|| ResumeToken::decode(black_box(&text), &stream).expect("token"))
    });
}

fn store(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).expect("open");
    let streams: Vec<StreamId> = (0..64)
        .map(|i| format!("bench-stream-{i}").parse().expect("id"))
        .collect();
    let mut seq = 0u64;

    let mut group = c.benchmark_group("embedded");
    group.throughput(Throughput::Elements(1));
    group.bench_function("append_1", |b| {
        b.iter(|| {
            seq += 1;
            rt.block_on(store.append(&[record(&streams[0], seq)]))
                .expect("append");
        });
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("append_batch_of_64_over_64_streams", |b| {
        b.iter(|| {
            seq += 1;
            let batch: Vec<_> = streams.iter().map(|s| record(s, seq)).collect();
            rt.block_on(store.append(&batch)).expect("append");
        });
    });
    // A stream of 10,000 records, read in pages of 100 from a random-ish position.
    let long: StreamId = "bench-long".parse().expect("id");
    for chunk in (1..=10_000u64).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<_> = chunk.iter().map(|&q| record(&long, q)).collect();
        rt.block_on(store.append(&batch)).expect("append");
    }
    group.throughput(Throughput::Elements(100));
    let mut after = 0u64;
    group.bench_function("read_page_of_100", |b| {
        b.iter(|| {
            after = (after + 3_717) % 9_900;
            let read = rt
                .block_on(store.read_after(&long, Seq::new(after), 100, Timestamp::now()))
                .expect("read");
            assert_eq!(read.len(), 100);
        });
    });
    group.finish();
}

fn group_commit(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let store = EmbeddedStore::open(&EmbeddedConfig::new(dir.path())).expect("open");
    let log = ipubsub_core::Log::new(Arc::new(store), LogConfig::default());
    for _ in 0..4 {
        let log = log.clone();
        rt.spawn(async move { log.run_commit_worker().await });
    }
    let streams: Vec<StreamId> = (0..64)
        .map(|i| format!("gc-stream-{i}").parse().expect("id"))
        .collect();
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Elements(64));
    group.bench_function("64_concurrent_durable_appends", |b| {
        b.iter(|| {
            rt.block_on(async {
                let appends: Vec<_> = streams
                    .iter()
                    .map(|s| {
                        let (log, s) = (log.clone(), s.clone());
                        tokio::spawn(async move {
                            let message = Message::new(
                                MessageId::new("m").expect("id"),
                                Bytes::from_static(PAYLOAD),
                                Timestamp::now(),
                            );
                            log.append(s, message, Duration::from_secs(3600)).await
                        })
                    })
                    .collect();
                for a in appends {
                    a.await.expect("task").expect("append");
                }
            });
        });
    });
    group.finish();
    log.close();
}

criterion_group!(benches, tokens, store, group_commit);
criterion_main!(benches);
