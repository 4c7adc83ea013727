//! [`follow_store_clock`]: keeps this node's time on the shared store's clock.
//!
//! A message's expiry is stamped by the node that accepts it and judged by every node that
//! reads or purges it. With each node on its own clock, a node whose clock is an hour ahead
//! hides and deletes messages an hour early. So every node of a cluster that shares a store
//! tells time by the store's server: it measures the offset of its own clock from the
//! server's (NTP's midpoint estimate, at most half a round trip off) at start and every
//! `every` after, and its engine and log read an [`OffsetClock`] corrected by it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipubsub_core::{Clock, MessageStore, OffsetClock, StoreError, Timestamp};

/// What a node tells time by: a store's server clock ([`MessageStore::server_time`]).
#[async_trait]
pub trait ServerClock: Send + Sync + 'static {
    /// The server's current time, or `None` if it has no clock of its own to offer.
    async fn server_time(&self) -> Result<Option<Timestamp>, StoreError>;
}

#[async_trait]
impl<S: MessageStore + ?Sized> ServerClock for S {
    async fn server_time(&self) -> Result<Option<Timestamp>, StoreError> {
        MessageStore::server_time(self).await
    }
}

/// An offset beyond this is logged as a warning: the node's clock is wrong, not just
/// imprecise.
const WORTH_A_WARNING: Duration = Duration::from_secs(1);

/// Measures `clock`'s offset from `store`'s server once and corrects `clock` by it. Returns
/// the offset in microseconds (positive when this node's clock is behind), or `None` for a
/// store without a server clock (the node's own clock is used as it is).
pub async fn sync_clock<S: ServerClock + ?Sized, C: Clock>(
    store: &S,
    clock: &OffsetClock<C>,
) -> Result<Option<i64>, StoreError> {
    let before = clock.local_now();
    let Some(remote) = store.server_time().await? else {
        return Ok(None);
    };
    let after = clock.local_now();
    Ok(Some(clock.measure(before, remote, after)))
}

/// Runs [`sync_clock`] every `every` until dropped, logging an offset over a second when it
/// first appears or moves by more than a second, and a failed measurement (the last offset
/// stays in use).
pub async fn follow_store_clock<S: ServerClock + ?Sized, C: Clock>(
    store: Arc<S>,
    clock: Arc<OffsetClock<C>>,
    every: Duration,
) {
    let mut reported: i64 = 0;
    loop {
        match sync_clock(&*store, &clock).await {
            Ok(Some(offset)) => {
                let worth = WORTH_A_WARNING.as_micros() as i64;
                if offset.abs() > worth && (offset - reported).abs() > worth {
                    tracing::warn!(
                        offset_ms = offset / 1000,
                        "this node's clock is off the store's: telling time by the store's"
                    );
                    reported = offset;
                } else if offset.abs() <= worth && reported != 0 {
                    tracing::info!(
                        offset_ms = offset / 1000,
                        "this node's clock is back on the store's"
                    );
                    reported = 0;
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store's clock: keeping the last offset")
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use ipubsub_core::ManualClock;
    use ipubsub_storage::MemoryStore;

    use super::*;

    /// A store server whose clock is a manual one.
    struct Server(ManualClock);

    #[async_trait]
    impl ServerClock for Server {
        async fn server_time(&self) -> Result<Option<Timestamp>, StoreError> {
            Ok(Some(self.0.now()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_two_minutes_ahead_tells_the_stores_time_and_follows_its_jumps() {
        let server = Arc::new(Server(ManualClock::new(Timestamp::from_micros(
            1_000_000_000,
        ))));
        let local = Arc::new(ManualClock::new(Timestamp::from_micros(1_120_000_000)));
        let clock = Arc::new(OffsetClock::new(local.clone()));
        assert!(matches!(
            sync_clock(&*server, &clock).await,
            Ok(Some(-120_000_000))
        ));
        assert_eq!(clock.now(), server.0.now());

        let follower = tokio::spawn(follow_store_clock(
            server.clone(),
            clock.clone(),
            Duration::from_secs(10),
        ));
        // The local clock jumps an hour ahead; the next measurement takes it back.
        local.advance(Duration::from_secs(3600));
        assert_ne!(clock.now(), server.0.now());
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(clock.now(), server.0.now());
        follower.abort();
    }

    #[tokio::test]
    async fn a_node_local_store_leaves_the_clock_alone() {
        let local = Arc::new(ManualClock::new(Timestamp::from_micros(5)));
        let clock = OffsetClock::new(local);
        assert!(matches!(
            sync_clock(&MemoryStore::new(), &clock).await,
            Ok(None)
        ));
        assert_eq!(clock.now(), Timestamp::from_micros(5));
    }
}
