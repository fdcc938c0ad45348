//! A token bucket: the edge's rate limit on new orders.
//!
//! It sheds load before Kafka sees it: an order over the limit is answered `429` with
//! `Retry-After` and nothing is written. The limit is per process (per replica); a limit per
//! client belongs in the ingress in front of the edge, which sees the clients' addresses.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Up to `burst` orders at once, refilled at `per_second`.
#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// A bucket that starts full. `per_second` must be positive; `burst` is at least 1.
    pub fn new(per_second: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one token; when there is none, how long until there is.
    pub fn try_take(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, then) = *state;
        let tokens =
            (tokens + now.duration_since(then).as_secs_f64() * self.per_second).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let limit = RateLimit::new(10.0, 3);
        for _ in 0..3 {
            assert_eq!(limit.try_take(), Ok(()));
        }
        let wait = limit.try_take().unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(limit.try_take(), Ok(()));
        assert!(limit.try_take().is_err());
        // A long pause refills to the burst, not beyond.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert_eq!(limit.try_take(), Ok(()));
        }
        assert!(limit.try_take().is_err());
    }
}
