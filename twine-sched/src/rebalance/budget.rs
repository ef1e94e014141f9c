//! The rate limit on destructive operations: a token bucket over caller-given time.

use super::RebalanceError;

/// At most `burst` moves at once, refilled at `per_hour` moves an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Moves an hour in the long run (at least 1).
    pub per_hour: u32,
    /// Moves that may be made at once (at least 1); the bucket starts full.
    pub burst: u32,
}

const MS_PER_HOUR: u128 = 3_600_000;

/// Tokens in thousandths, so refills at any rate are exact integers per millisecond
/// over an hour (`per_hour * 1000 / 3_600_000` per ms, kept as a remainder-free
/// product: `elapsed_ms * per_hour * 1000 / 3_600_000` computed from the bucket's
/// own anchor time).
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    limit: RateLimit,
    /// Thousandths of a token, at most `burst * 1000`.
    milli: u128,
    /// When `milli` was last brought up to date, and the refill remainder carried.
    at_ms: Option<u64>,
    carry: u128,
}

impl TokenBucket {
    pub(crate) fn new(limit: RateLimit) -> Result<TokenBucket, RebalanceError> {
        for (field, value) in [
            ("rate_limit.per_hour", limit.per_hour),
            ("rate_limit.burst", limit.burst),
        ] {
            if value == 0 {
                return Err(RebalanceError::Config {
                    field,
                    value: value.to_string(),
                    problem: "must be at least 1",
                });
            }
        }
        Ok(TokenBucket {
            limit,
            milli: u128::from(limit.burst) * 1000,
            at_ms: None,
            carry: 0,
        })
    }

    fn cap(&self) -> u128 {
        u128::from(self.limit.burst) * 1000
    }

    /// Adds what accrued since the last refill (callers never pass an earlier time).
    pub(crate) fn refill(&mut self, now_ms: u64) {
        let elapsed = self.at_ms.map_or(0, |at| now_ms.saturating_sub(at));
        self.at_ms = Some(now_ms);
        // Thousandths of a token accrued, times MS_PER_HOUR; the remainder carries.
        let accrued = u128::from(elapsed) * u128::from(self.limit.per_hour) * 1000 + self.carry;
        self.carry = accrued % MS_PER_HOUR;
        self.milli = (self.milli + accrued / MS_PER_HOUR).min(self.cap());
        if self.milli == self.cap() {
            self.carry = 0;
        }
    }

    /// Whole tokens available.
    pub(crate) fn whole(&self) -> usize {
        usize::try_from(self.milli / 1000).unwrap_or(usize::MAX)
    }

    /// Spends one token; false (and nothing spent) if there is no whole token.
    #[must_use]
    pub(crate) fn take_one(&mut self) -> bool {
        match self.milli.checked_sub(1000) {
            Some(left) => {
                self.milli = left;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_the_rate_and_caps_at_the_burst() {
        let mut b = TokenBucket::new(RateLimit {
            per_hour: 3600,
            burst: 5,
        })
        .unwrap();
        b.refill(0);
        assert_eq!(b.whole(), 5);
        for _ in 0..5 {
            assert!(b.take_one());
        }
        assert!(!b.take_one());
        assert_eq!(b.whole(), 0);
        b.refill(999);
        assert_eq!(b.whole(), 0);
        b.refill(1000);
        assert_eq!(b.whole(), 1, "one a second");
        b.refill(1_000_000);
        assert_eq!(b.whole(), 5, "capped at the burst");
    }

    #[test]
    fn slow_rates_accrue_exactly() {
        let mut b = TokenBucket::new(RateLimit {
            per_hour: 7,
            burst: 1,
        })
        .unwrap();
        b.refill(0);
        assert!(b.take_one());
        // One token every 3600/7 s = 514,285.7 ms, with no rounding drift in between.
        for t in (0..514_285).step_by(1000) {
            b.refill(t);
            assert_eq!(b.whole(), 0, "at {t} ms");
        }
        b.refill(514_286);
        assert_eq!(b.whole(), 1);
    }

    #[test]
    fn zero_settings_are_refused() {
        let e = TokenBucket::new(RateLimit {
            per_hour: 0,
            burst: 1,
        })
        .unwrap_err();
        assert!(e.to_string().contains("rate_limit.per_hour"), "{e}");
    }
}
