//! [`Signal`]: a one-way, once-only event many tasks wait for (the node closing, the end of a
//! shutdown's grace).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

/// Fired once, seen by every waiter from then on, including those that start waiting later.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    fired: Arc<AtomicBool>,
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

    /// Completes once the signal is fired; owns what it needs, so a body or a connection can
    /// hold it and poll it each time it is polled itself.
    pub(crate) fn fired(&self) -> Fired {
        Fired {
            // Made before the flag is read (by `poll`): it sees a `notify_waiters` from then on.
            notified: Box::pin(Arc::clone(&self.notify).notified_owned()),
            fired: Arc::clone(&self.fired),
            registered: None,
        }
    }
}

/// A wait for a [`Signal`] ([`Signal::fired`]), cheap to poll again: polled again by the
/// task it already registered, it reads the signal's flag and nothing else, where polling
/// the notification would take the lock its signal's waiters share (every connection and
/// event stream of the node polls one each time it makes progress).
#[derive(Debug)]
pub(crate) struct Fired {
    notified: Pin<Box<OwnedNotified>>,
    fired: Arc<AtomicBool>,
    /// The waker the notification holds, once it holds one.
    registered: Option<Waker>,
}

impl Future for Fired {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        if self.notified.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        self.registered = Some(cx.waker().clone());
        Poll::Pending
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
    async fn a_waiter_polled_before_the_fire_is_woken_by_it() {
        let signal = Arc::new(Signal::default());
        let mut fired = signal.fired();
        let mut polls = 0;
        let waiter = tokio::spawn(std::future::poll_fn(move |cx| {
            polls += 1;
            // Polled again by the same task, it stays registered; the fire must wake it.
            let _ = Pin::new(&mut fired).poll(cx);
            Pin::new(&mut fired).poll(cx).map(|()| polls)
        }));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        signal.fire();
        let polls = tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken by the fire")
            .expect("the waiter ran");
        assert_eq!(polls, 2, "polled once waiting, once woken");
    }

    #[tokio::test]
    async fn an_unfired_signal_keeps_its_waiters_waiting() {
        let signal = Signal::default();
        let waiting = signal.fired();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), waiting).await;
        assert!(waited.is_err(), "returned without a fire");
    }
}
