//! Time as a value: [`Timestamp`], and the [`Clock`] it is read from.
//!
//! The core never sleeps and never reads the system clock behind its caller's back: the engine
//! asks its [`Clock`] for `now`, and tests hand it a [`ManualClock`] they move by hand.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A point in wall-clock time, in microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Self = Self(0);

    /// A timestamp `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// This timestamp moved `d` later, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }

    /// This timestamp moved `d` earlier, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }

    /// How long after `earlier` this is; zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// The system clock's current time.
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
    }

    /// Formats as RFC 3339 in UTC with microseconds, e.g. `2026-11-28T02:22:13.123456Z`.
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }

    /// Appends [`to_rfc3339`](Self::to_rfc3339)'s text to `out`, without the formatting
    /// machinery: every receive answer carries one per message.
    pub fn push_rfc3339(self, out: &mut Vec<u8>) {
        let (year, month, day, hour, minute, second, micros) = self.civil();
        if year > 9999 {
            // Past what four digits hold; never from a clock of this millennium.
            out.extend_from_slice(self.to_string().as_bytes());
            return;
        }
        let fields = [
            (year, 4, b'-'),
            (month, 2, b'-'),
            (day, 2, b'T'),
            (hour, 2, b':'),
            (minute, 2, b':'),
            (second, 2, b'.'),
            (micros, 6, b'Z'),
        ];
        for (value, digits, then) in fields {
            for d in (0..digits).rev() {
                out.push(b'0' + (value / 10u64.pow(d) % 10) as u8);
            }
            out.push(then);
        }
    }

    /// (year, month, day, hour, minute, second, microsecond) in UTC.
    fn civil(self) -> (u64, u64, u64, u64, u64, u64, u64) {
        let micros = self.0 % 1_000_000;
        let secs = self.0 / 1_000_000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days);
        (
            year,
            month,
            day,
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            micros,
        )
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339, UTC, microsecond precision.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day, hour, minute, second, micros) = self.civil();
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{micros:06}Z"
        )
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days`, restricted to dates after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A source of the current time. The engine stamps messages and ages idle streams with it.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to; for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(AtomicU64::new(start.0))
    }

    /// Moves the clock `d` forward.
    pub fn advance(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.fetch_add(micros, Ordering::SeqCst);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// A clock that follows another one — the shared store's — by keeping its offset from a
/// local clock: every node of a cluster that follows the one store agrees on the time to
/// within the measurement's error, whatever its own clock says, so a TTL stamped on one node
/// is judged by the same time on every other. The offset is measured by the caller
/// ([`OffsetClock::measure`]), as an NTP client would: `remote - (before + after) / 2`.
#[derive(Debug)]
pub struct OffsetClock<C = SystemClock> {
    local: C,
    offset_micros: AtomicI64,
}

impl<C: Clock> OffsetClock<C> {
    /// `local`, not yet corrected.
    pub fn new(local: C) -> Self {
        Self {
            local,
            offset_micros: AtomicI64::new(0),
        }
    }

    /// The uncorrected local time: read it just before and just after asking the other clock.
    pub fn local_now(&self) -> Timestamp {
        self.local.now()
    }

    /// Takes the other clock's reading `remote`, made between the local readings `before`
    /// and `after`, as the time at their midpoint; returns the new offset (positive when
    /// the local clock is behind). The error is at most half the round trip.
    pub fn measure(&self, before: Timestamp, remote: Timestamp, after: Timestamp) -> i64 {
        let mid =
            i128::from(before.0) + (i128::from(after.0.max(before.0)) - i128::from(before.0)) / 2;
        let offset = i128::from(remote.0) - mid;
        let offset = i64::try_from(offset).unwrap_or(if offset < 0 { i64::MIN } else { i64::MAX });
        self.offset_micros.store(offset, Ordering::SeqCst);
        offset
    }

    /// The offset in use, in microseconds (positive when the local clock is behind).
    pub fn offset_micros(&self) -> i64 {
        self.offset_micros.load(Ordering::SeqCst)
    }
}

impl<C: Clock> Clock for OffsetClock<C> {
    fn now(&self) -> Timestamp {
        let local = self.local.now().0;
        let offset = self.offset_micros();
        Timestamp(if offset >= 0 {
            local.saturating_add(offset.unsigned_abs())
        } else {
            local.saturating_sub(offset.unsigned_abs())
        })
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(Timestamp::EPOCH.to_string(), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29T12:34:56.789012Z, a leap day in a century leap year.
        assert_eq!(
            Timestamp::from_micros(951_827_696_789_012).to_string(),
            "2000-02-29T12:34:56.789012Z"
        );
        // 2026-11-28T02:22:13Z
        assert_eq!(
            Timestamp::from_micros(1_795_832_533_000_000).to_string(),
            "2026-11-28T02:22:13.000000Z"
        );
        // 2100-03-01T00:00:00Z, after a century year that is not a leap year.
        assert_eq!(
            Timestamp::from_micros(4_107_542_400_000_000).to_string(),
            "2100-03-01T00:00:00.000000Z"
        );
    }

    /// The hand-written digits and the formatter agree, from the epoch to past year 9999
    /// (where the digits hand over to the formatter).
    #[test]
    fn pushed_rfc3339_equals_the_formatted_text() {
        let mut samples = vec![0, 1, 999_999, 951_827_696_789_012, 4_107_542_400_000_000];
        samples.push(253_402_300_799_999_999); // 9999-12-31T23:59:59.999999Z
        samples.push(253_402_300_800_000_000); // 10000-01-01: five digits of year
        samples.push(u64::MAX);
        // A fixed linear congruential walk over the whole range.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..10_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            samples.push(x % 300_000_000_000_000_000);
        }
        for micros in samples {
            let t = Timestamp::from_micros(micros);
            let mut pushed = b"x".to_vec();
            t.push_rfc3339(&mut pushed);
            assert_eq!(pushed[1..], *t.to_rfc3339().as_bytes(), "at {micros} µs");
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(Timestamp::from_micros(10));
        assert_eq!(clock.now(), Timestamp::from_micros(10));
        clock.advance(Duration::from_millis(2));
        assert_eq!(clock.now(), Timestamp::from_micros(2010));
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_micros(5);
        assert_eq!(
            t.saturating_since(Timestamp::from_micros(9)),
            Duration::ZERO
        );
        assert_eq!(
            Timestamp::from_micros(u64::MAX - 1).saturating_add(Duration::from_secs(1)),
            Timestamp::from_micros(u64::MAX)
        );
    }

    #[test]
    fn an_offset_clock_follows_the_other_clock_from_a_skewed_local_one() {
        let local = std::sync::Arc::new(ManualClock::new(Timestamp::from_micros(10_000_000)));
        let clock = OffsetClock::new(local.clone());
        assert_eq!(
            clock.now(),
            Timestamp::from_micros(10_000_000),
            "uncorrected at first"
        );
        // The other clock read 2 s less, in the middle of a 10 ms round trip.
        let before = clock.local_now();
        local.advance(Duration::from_millis(10));
        let after = clock.local_now();
        let offset = clock.measure(before, Timestamp::from_micros(8_005_000), after);
        assert_eq!(offset, -2_000_000);
        assert_eq!(clock.now(), Timestamp::from_micros(8_010_000));
        local.advance(Duration::from_secs(1));
        assert_eq!(
            clock.now(),
            Timestamp::from_micros(9_010_000),
            "and runs with it"
        );
        // A local clock behind: the offset is positive.
        let now = clock.local_now();
        assert_eq!(
            clock.measure(now, Timestamp::from_micros(60_000_000), now),
            48_990_000
        );
    }
}
