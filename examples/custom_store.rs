//! Plugs a user-written storage backend, [`JournalStore`], into the persistent log: appends
//! are group-committed to it, read back in order, and survive reopening it.
//!
//! `cargo run -p ipubsub-examples --example custom_store`

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ipubsub_core::{Log, LogConfig, Message, MessageId, ResumeToken, Seq, StreamId, Timestamp};
use ipubsub_examples::JournalStore;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let path = dir.join("journal.jsonl");
    let stream: StreamId = "audit".parse()?;
    {
        let log = Log::new(Arc::new(JournalStore::open(&path)?), LogConfig::default());
        // The log writes through workers that the caller runs on its runtime.
        let worker = tokio::spawn({
            let log = log.clone();
            async move { log.run_commit_worker().await }
        });
        let appends: Vec<_> = (0..5)
            .map(|i| {
                let (log, stream) = (log.clone(), stream.clone());
                tokio::spawn(async move {
                    let message = Message::new(
                        MessageId::new(format!("event-{i}"))?,
                        Bytes::from(format!("{{\"n\":{i}}}")),
                        Timestamp::now(),
                    );
                    anyhow::Ok(
                        log.append(stream, message, Duration::from_secs(3600))
                            .await?,
                    )
                })
            })
            .collect();
        for append in appends {
            let seq = append.await??;
            println!(
                "appended at {seq}, token {}",
                ResumeToken::new(&stream, seq)
            );
        }
        log.close();
        worker.await?;
    }
    // Reopened: everything is still there, in order.
    let log = Log::new(Arc::new(JournalStore::open(&path)?), LogConfig::default());
    let read = log.read(&stream, Seq::ZERO, 100).await?;
    for record in &read.records {
        println!(
            "{} {} {}",
            record.seq,
            record.message.id(),
            String::from_utf8_lossy(record.message.payload())
        );
    }
    anyhow::ensure!(read.records.len() == 5);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("ipubsub-custom-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
