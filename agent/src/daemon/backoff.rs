//! Exponential backoff with jitter for retries towards vendors: the n-th
//! retry waits a random time in `[d/2, d]` with `d = min(base * 2^n, max)`
//! ("equal jitter"), so gateways that lost their uplink together do not
//! come back in lockstep.

use std::time::Duration;

/// Retry delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    rng: u64,
}

impl Backoff {
    /// Delays from `base` doubling up to `max`; `seed` feeds the jitter.
    pub fn new(base: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            // xorshift must not start at zero.
            rng: seed | 1,
        }
    }

    /// A backoff seeded from the clock and the pid.
    pub fn from_clock(base: Duration, max: Duration) -> Backoff {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Backoff::new(base, max, nanos ^ u64::from(std::process::id()) << 32)
    }

    /// The ceiling of the delay before retry number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry number `attempt`: in `[ceiling/2, ceiling]`.
    pub fn delay(&mut self, attempt: u32) -> Duration {
        let c = self.ceiling(attempt);
        let half = c / 2;
        let span = (c - half).as_micros() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next() % (span + 1)
        };
        half + Duration::from_micros(jitter)
    }

    fn next(&mut self) -> u64 {
        // xorshift64 (Marsaglia 2003): enough to spread retries.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_in_range() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(3), 42);
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(10), Duration::from_secs(3));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(3));
        let mut seen = std::collections::BTreeSet::new();
        for attempt in 0..40 {
            let d = b.delay(attempt);
            let c = b.ceiling(attempt);
            assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
            seen.insert(d);
        }
        assert!(seen.len() > 10, "jitter varies the delays");
    }

    #[test]
    fn different_seeds_spread() {
        let mut a = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 1);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 2);
        let da: Vec<_> = (0..5).map(|i| a.delay(i + 3)).collect();
        let db: Vec<_> = (0..5).map(|i| b.delay(i + 3)).collect();
        assert_ne!(da, db);
    }
}
