//! [`Signal`]: a one-way, once-only event many tasks wait for (the node closing, the end of a
//! shutdown's grace).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Fired once, seen by every waiter from then on, including those that start waiting later.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    fired: AtomicBool,
    notify: Arc<Notify>,
}

impl Signal {
    /// Fires it: every current and future waiter returns.
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Completes once the signal is fired. Cheaper than [`fired`](Self::fired) (no reference
    /// count touched), for a waiter that lives within a borrow of the signal.
    pub(crate) fn wait(&self) -> impl Future<Output = ()> + '_ {
        // Made before the flag is read: it sees a `notify_waiters` from then on.
        let notified = self.notify.notified();
        let fired = self.fired.load(Ordering::Acquire);
        async move {
            if !fired {
                notified.await;
            }
        }
    }

    /// Completes once the signal is fired; owns what it needs, so a body can hold it.
    pub(crate) fn fired(&self) -> impl Future<Output = ()> + Send + 'static {
        // Made before the flag is read: it sees a `notify_waiters` from then on.
        let notified = Arc::clone(&self.notify).notified_owned();
        let fired = self.fired.load(Ordering::Acquire);
        async move {
            if !fired {
                notified.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_made_before_or_after_the_fire_returns() {
        let signal = Signal::default();
        let before = signal.fired();
        let borrowed = signal.wait();
        signal.fire();
        let after = signal.fired();
        tokio::time::timeout(std::time::Duration::from_secs(1), async {
            before.await;
            borrowed.await;
            after.await;
            signal.wait().await;
        })
        .await
        .expect("both waiters return once fired");
    }

    #[tokio::test]
    async fn an_unfired_signal_keeps_its_waiters_waiting() {
        let signal = Signal::default();
        let waiting = signal.fired();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), waiting).await;
        assert!(waited.is_err(), "returned without a fire");
    }
}
