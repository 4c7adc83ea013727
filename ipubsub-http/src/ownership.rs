//! [`follow_ownership`]: keeps what the log caches to the streams this node owns.
//!
//! The log holds each stream it served in a write epoch, with a watermark for its readers.
//! Once another node owns the stream, that cache is stale: the new owner has acquired a later
//! epoch and writes above it. So whenever the cluster's view changes, the streams this node
//! no longer owns are released: readers waiting at their tail are woken (and answered, since
//! their stream is served elsewhere now), and if the stream comes back, its next use acquires
//! it again and sees everything written meanwhile.

use std::time::Duration;

use ipubsub_cluster::{Cluster, Route};
use ipubsub_core::Log;

/// Releases the log's streams that `cluster` routes elsewhere, each time its view changes
/// (checked every `every`). Runs until the task is dropped.
pub async fn follow_ownership(log: Log, cluster: Cluster, every: Duration) {
    let mut seen = cluster.view().version();
    loop {
        tokio::time::sleep(every).await;
        let version = cluster.view().version();
        if version != seen {
            seen = version;
            let released = release_moved(&log, &cluster);
            if released > 0 {
                tracing::info!(
                    version,
                    released,
                    "log streams released to their new owners"
                );
            }
        }
    }
}

/// Releases the streams of `log` that `cluster` routes to another node; returns how many.
pub fn release_moved(log: &Log, cluster: &Cluster) -> usize {
    log.release(|stream| !matches!(cluster.route(stream), Route::Forward(_)))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use bytes::Bytes;
    use ipubsub_cluster::{Node, NodeId};
    use ipubsub_core::{LogConfig, Message, MessageId, Seq, StreamId, Timestamp};
    use ipubsub_storage::MemoryStore;

    use super::*;

    fn node(name: &str, port: u16) -> Node {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        Node::new(NodeId::new(name).expect("id"), addr)
    }

    #[tokio::test]
    async fn streams_another_node_now_owns_are_released_and_their_readers_woken() {
        let (a, b) = (node("a", 1), node("b", 2));
        let cluster = Cluster::with_members(a.clone(), [a.clone()], 64);
        let log = Log::new(Arc::new(MemoryStore::new()), LogConfig::default());
        let worker = tokio::spawn({
            let log = log.clone();
            async move { log.run_commit_worker().await }
        });
        let streams: Vec<StreamId> = (0..50)
            .map(|i| StreamId::new(format!("s{i}")).expect("id"))
            .collect();
        for s in &streams {
            let message = Message::new(
                MessageId::new("m").expect("id"),
                Bytes::from_static(b"1"),
                Timestamp::now(),
            );
            log.append(s.clone(), message, Duration::from_secs(60))
                .await
                .expect("append");
        }
        assert_eq!(release_moved(&log, &cluster), 0, "a single node owns all");

        cluster.set_members([a, b]);
        let moved: Vec<_> = streams
            .iter()
            .filter(|s| matches!(cluster.route(s), Route::Forward(_)))
            .collect();
        assert!(
            !moved.is_empty(),
            "some of 50 streams move to a second node"
        );
        let waiting = log.read(moved[0], Seq::ZERO, 10).await.expect("read");
        let tail = tokio::spawn({
            let (log, stream) = (log.clone(), moved[0].clone());
            async move { log.wait_past(&stream, waiting.watermark).await }
        });
        // Let the reader register at the tail before the release.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!tail.is_finished(), "nothing was written: the reader waits");
        let released = release_moved(&log, &cluster);
        assert_eq!(released, moved.len());
        assert!(
            tokio::time::timeout(Duration::from_secs(1), tail)
                .await
                .expect("woken at once")
                .expect("joined")
                .expect("wait"),
            "a reader at the tail of a released stream looks again"
        );
        log.close();
        worker.await.expect("worker");
    }
}
