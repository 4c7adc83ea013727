//! Embeds the ipubsub core in-process: tasks exchange messages through an `Engine` with no
//! HTTP in between. Shows a blocking queue with competing consumers, a sync match, and how a
//! caller applies its own timeout to a receive.
//!
//! `cargo run -p ipubsub-examples --example embedded`

use std::time::Duration;

use bytes::Bytes;
use ipubsub_core::{Engine, Message, MessageId, SendOptions, StreamId};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let engine = Engine::default();
    let jobs: StreamId = "jobs".parse()?;

    // Two competing consumers: each message goes to exactly one of them.
    let consumers: Vec<_> = (0..2)
        .map(|n| {
            let engine = engine.clone();
            let jobs = jobs.clone();
            tokio::spawn(async move {
                let mut handled = 0;
                loop {
                    let mut receive = std::pin::pin!(engine.receive(jobs.clone()));
                    let message =
                        match tokio::time::timeout(Duration::from_millis(200), receive.as_mut())
                            .await
                        {
                            Ok(result) => result?,
                            // The timeout fired: abandon() returns a message that arrived meanwhile.
                            Err(_) => match receive.abandon() {
                                Some(message) => message,
                                None => break,
                            },
                        };
                    println!(
                        "consumer {n} got {} = {}",
                        message.id(),
                        String::from_utf8_lossy(message.payload())
                    );
                    handled += 1;
                }
                anyhow::Ok(handled)
            })
        })
        .collect();

    // A producer that waits for room in a queue of 2 (back-pressure, no eviction).
    let blocking = SendOptions {
        stream_size: 2,
        wait: true,
    };
    for i in 0..6 {
        let payload = Bytes::from(format!("{{\"job\":{i}}}"));
        let message = Message::new(MessageId::new(format!("job-{i}"))?, payload, engine.now());
        engine.send(jobs.clone(), message, blocking).await?;
    }

    let mut total = 0;
    for consumer in consumers {
        total += consumer.await??;
    }
    println!("consumers handled {total} jobs");
    assert_eq!(total, 6);

    // A sync match: no buffer, the send waits until a receiver takes the message.
    let rendezvous: StreamId = "rendezvous".parse()?;
    let receiver = tokio::spawn({
        let engine = engine.clone();
        let rendezvous = rendezvous.clone();
        async move { engine.receive(rendezvous).await }
    });
    let message = Message::new(
        MessageId::new("hello")?,
        Bytes::from_static(b"\"hi\""),
        engine.now(),
    );
    let sync = SendOptions {
        stream_size: 0,
        wait: true,
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(1),
        engine.send(rendezvous, message, sync),
    )
    .await??;
    let got = receiver.await??;
    println!("sync match: {outcome:?}, receiver got {}", got.id());
    Ok(())
}
