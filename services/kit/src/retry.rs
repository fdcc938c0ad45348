//! How long to wait before trying a failed message again: exponential backoff with full jitter.

use std::time::Duration;

/// In-place retry of transient failures, per handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; `1` means never retry.
    pub max_attempts: u32,
    /// The backoff ceiling before the first retry; it doubles per attempt.
    pub initial_backoff: Duration,
    /// The largest backoff ceiling.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Retries forever, waiting from `initial` up to `max`: for waiting out an outage, not for
    /// a record that may never succeed.
    pub fn unbounded(initial: Duration, max: Duration) -> Self {
        Self {
            max_attempts: u32::MAX,
            initial_backoff: initial,
            max_backoff: max,
        }
    }

    /// Whether a message that failed on `attempt` (1-based) gets another one.
    pub fn retries_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The ceiling of the wait after failed attempt `attempt`: `initial × 2^(attempt-1)`, capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }

    /// The longest a record can spend retrying in place: every backoff at its ceiling, from
    /// the first failure to the last attempt.
    pub fn budget(&self) -> Duration {
        (1..self.max_attempts)
            .map(|attempt| self.ceiling(attempt))
            .sum()
    }

    /// The wait after failed attempt `attempt`: uniformly random in `[ceiling/2, ceiling]`, so
    /// that many consumers failing together do not retry in lock-step against a recovering
    /// dependency, while the wait still grows with every attempt.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_adds_every_backoff_at_its_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        // 100 + 200 + 400 + 500 (capped): four waits between five attempts.
        assert_eq!(policy.budget(), Duration::from_millis(1200));
        let once = RetryPolicy {
            max_attempts: 1,
            ..policy
        };
        assert_eq!(once.budget(), Duration::ZERO);
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
        };
        let ceilings: Vec<_> = (1..=5).map(|a| policy.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 700, 700]);
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_millis(700));
    }

    #[test]
    fn backoff_stays_within_half_and_full_ceiling() {
        let policy = RetryPolicy::default();
        for attempt in 1..8 {
            for _ in 0..200 {
                let wait = policy.backoff(attempt);
                let ceiling = policy.ceiling(attempt);
                assert!(
                    wait >= ceiling / 2 && wait <= ceiling,
                    "{attempt}: {wait:?}"
                );
            }
        }
    }

    #[test]
    fn attempts_count_the_first_one() {
        let once = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        assert!(!once.retries_after(1));
        let thrice = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(thrice.retries_after(2) && !thrice.retries_after(3));
    }
}
