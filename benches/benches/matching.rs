//! Criterion benches of the core's matching hot paths.
//!
//! `cargo bench -p ipubsub-benches --bench matching`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ipubsub_benches::poll_once;
use ipubsub_core::{Engine, Message, MessageId, SendOptions, StreamId};

const PAYLOAD: &[u8] = &[b'7'; 100];

fn message(engine: &Engine, id: &MessageId) -> Message {
    Message::new(id.clone(), Bytes::from_static(PAYLOAD), engine.now())
}

fn one_stream(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_stream");
    group.throughput(Throughput::Elements(1));
    let engine = Engine::default();
    let stream: StreamId = "bench".parse().expect("id");
    let id = MessageId::new("m").expect("id");

    group.bench_function("send_then_receive_buffered", |b| {
        b.iter(|| {
            let sent = poll_once(&mut engine.send(
                stream.clone(),
                message(&engine, &id),
                SendOptions::default(),
            ));
            assert!(sent.is_ready());
            black_box(engine.try_receive(&stream).expect("message"));
        });
    });

    group.bench_function("handoff_to_waiting_receiver", |b| {
        b.iter(|| {
            let mut receive = engine.receive(stream.clone());
            assert!(poll_once(&mut receive).is_pending());
            let sent = poll_once(&mut engine.send(
                stream.clone(),
                message(&engine, &id),
                SendOptions::default(),
            ));
            assert!(sent.is_ready());
            assert!(black_box(poll_once(&mut receive)).is_ready());
        });
    });
    group.finish();
}

fn many_streams(c: &mut Criterion) {
    const STREAMS: usize = 100_000;
    let mut group = c.benchmark_group("100k_streams");
    group.throughput(Throughput::Elements(1));
    let engine = Engine::default();
    let streams: Vec<StreamId> = (0..STREAMS)
        .map(|i| format!("stream-{i}").parse().expect("id"))
        .collect();
    let id = MessageId::new("m").expect("id");
    // Every stream exists and holds one message.
    for stream in &streams {
        assert!(
            poll_once(&mut engine.send(
                stream.clone(),
                message(&engine, &id),
                SendOptions::default()
            ))
            .is_ready()
        );
    }
    let mut next = 0;
    group.bench_function("send_then_receive_round_robin", |b| {
        b.iter_batched(
            || {
                next = (next + 7919) % STREAMS;
                streams[next].clone()
            },
            |stream| {
                let sent = poll_once(&mut engine.send(
                    stream.clone(),
                    message(&engine, &id),
                    SendOptions::default(),
                ));
                assert!(sent.is_ready());
                black_box(engine.try_receive(&stream).expect("message"));
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn threads(c: &mut Criterion) {
    // Two threads hammering distinct streams: what the sharded registry buys.
    let mut group = c.benchmark_group("two_threads");
    group.throughput(Throughput::Elements(2_000));
    let engine = Engine::default();
    let id = MessageId::new("m").expect("id");
    group.bench_function("1000_send_receive_pairs_each", |b| {
        b.iter(|| {
            std::thread::scope(|scope| {
                for t in 0..2 {
                    let engine = engine.clone();
                    let id = id.clone();
                    scope.spawn(move || {
                        for i in 0..1000 {
                            let stream: StreamId = format!("t{t}-{}", i % 64).parse().expect("id");
                            let sent = poll_once(&mut engine.send(
                                stream.clone(),
                                message(&engine, &id),
                                SendOptions::default(),
                            ));
                            assert!(sent.is_ready());
                            black_box(engine.try_receive(&stream));
                        }
                    });
                }
            });
        });
    });
    group.finish();
}

criterion_group!(benches, one_stream, many_streams, threads);
criterion_main!(benches);
