//! The server's logging: the subscriber, and a rate limit per call site, so that nothing from
//! outside (garbage datagrams on the gossip port, a flood of bad requests, a database outage
//! that fails every request) can fill the disk with one line each. Each call site of a log
//! line may write [`BURST`] lines per [`WINDOW`]; the rest of the window's lines of that call
//! site are counted, and once per window a summary line says how many of which were left out.
//! The counts are also `ipubsub_log_lines_suppressed_total`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Event, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// How long a call site's budget of lines lasts.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Lines one call site may write per [`WINDOW`].
pub const BURST: u32 = 20;

/// The target of the summary lines (which the limit lets through).
const SUMMARY: &str = "ipubsub_server::log_limit";

/// The per-call-site limit: a [`Filter`] for the formatting layer. Cheap to clone.
#[derive(Clone, Default)]
pub struct LineLimit {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    sites: Mutex<HashMap<Identifier, Site>>,
    /// Every line left out since the start (for metrics).
    suppressed: Arc<AtomicU64>,
}

struct Site {
    metadata: &'static Metadata<'static>,
    window_began: Instant,
    written: u32,
    /// Left out since the last summary.
    suppressed: u64,
}

impl LineLimit {
    /// Whether the event from `metadata` may be written now (counted either way).
    fn admit(&self, metadata: &'static Metadata<'static>, now: Instant) -> bool {
        if metadata.target() == SUMMARY {
            return true;
        }
        let mut sites = self
            .inner
            .sites
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let site = sites.entry(metadata.callsite()).or_insert(Site {
            metadata,
            window_began: now,
            written: 0,
            suppressed: 0,
        });
        if now.duration_since(site.window_began) >= WINDOW {
            site.window_began = now;
            site.written = 0;
        }
        if site.written < BURST {
            site.written += 1;
            return true;
        }
        site.suppressed += 1;
        self.inner.suppressed.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// The call sites with lines left out since the last call, and how many each (cleared).
    fn take_suppressed(&self) -> Vec<(&'static Metadata<'static>, u64)> {
        let mut sites = self
            .inner
            .sites
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        sites
            .values_mut()
            .filter(|site| site.suppressed > 0)
            .map(|site| (site.metadata, std::mem::take(&mut site.suppressed)))
            .collect()
    }

    /// Writes one summary line per call site with lines left out since the last summary.
    pub fn summarize(&self) {
        for (metadata, suppressed) in self.take_suppressed() {
            tracing::warn!(
                target: SUMMARY,
                suppressed,
                of = metadata.target(),
                at = %format_args!("{}:{}", metadata.file().unwrap_or("?"), metadata.line().unwrap_or(0)),
                "log lines left out by the rate limit ({BURST} per call site per {WINDOW:?})"
            );
        }
    }

    /// Writes a summary every [`WINDOW`], for ever.
    pub async fn summarize_every_window(self) {
        let mut every = tokio::time::interval(WINDOW);
        loop {
            every.tick().await;
            self.summarize();
        }
    }

    /// The running count of lines left out.
    pub fn suppressed(&self) -> Arc<AtomicU64> {
        self.inner.suppressed.clone()
    }
}

impl<S> Filter<S> for LineLimit {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        self.admit(event.metadata(), Instant::now())
    }
}

/// Installs the subscriber: `filter`'s lines, limited per call site by `limit`, to stderr as
/// text or JSON.
pub fn install(
    filter: tracing_subscriber::EnvFilter,
    json: bool,
    limit: LineLimit,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, filter::FilterExt};

    let filter = filter.and(limit);
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let layer = if json {
        layer.json().with_filter(filter).boxed()
    } else {
        layer.with_filter(filter).boxed()
    };
    tracing_subscriber::registry().with(layer).try_init()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> &'static Metadata<'static> {
        struct Site;
        static CALLSITE: Site = Site;
        static META: Metadata<'static> = tracing::metadata! {
            name: "test",
            target: "flood",
            level: tracing::Level::WARN,
            fields: &[],
            callsite: &CALLSITE,
            kind: tracing::metadata::Kind::EVENT,
        };
        impl tracing::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                &META
            }
        }
        &META
    }

    #[test]
    fn a_call_site_writes_its_burst_per_window_and_the_rest_is_counted() {
        let limit = LineLimit::default();
        let start = Instant::now();
        let admitted = (0..1000).filter(|_| limit.admit(site(), start)).count();
        assert_eq!(admitted, BURST as usize);
        assert_eq!(
            limit.suppressed().load(Ordering::Relaxed),
            1000 - u64::from(BURST)
        );
        let summary = limit.take_suppressed();
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].1, 1000 - u64::from(BURST));
        assert!(
            limit.take_suppressed().is_empty(),
            "each count is summed up once"
        );
        // A new window, a new burst.
        let later = start + WINDOW;
        let admitted = (0..1000).filter(|_| limit.admit(site(), later)).count();
        assert_eq!(admitted, BURST as usize);
    }
}
