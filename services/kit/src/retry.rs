//! How long to wait before trying a failed message again: exponential backoff with full jitter.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::monitor::Heartbeat;

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

/// Runs `attempt` until it succeeds, trying again with backoff (200 ms up to 10 s) for as
/// long as it fails because Kafka is away ([`Error::is_transient`]): an outage of any length
/// must not stop a service. Any other error (a setting, a bug) is returned at once. `what`
/// names the work in the log. Each attempt beats `alive`: waiting out an outage is the loop
/// doing what it should, not a stall. `None` when `shutdown` comes first.
pub(crate) async fn while_kafka_away<T, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    alive: &Heartbeat,
    mut attempt: F,
) -> Result<Option<T>, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let backoff = RetryPolicy::unbounded(Duration::from_millis(200), Duration::from_secs(10));
    let mut failed = 0;
    loop {
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        alive.beat();
        match attempt().await {
            Ok(value) => {
                if failed > 0 {
                    tracing::info!(attempts = failed + 1, "{what}: done now that Kafka is back");
                }
                return Ok(Some(value));
            }
            Err(e) if e.is_transient() => {
                failed += 1;
                tracing::warn!(error = %e, attempt = failed, "{what} failed while Kafka is away; trying again");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(backoff.backoff(failed)) => {}
                }
            }
            Err(e) => return Err(e),
        }
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

    fn away() -> Error {
        Error::Unreachable {
            bootstrap: "127.0.0.1:1".into(),
            cause: rdkafka::error::KafkaError::Global(
                rdkafka::types::RDKafkaErrorCode::AllBrokersDown,
            ),
        }
    }

    #[tokio::test]
    async fn kafka_being_away_is_waited_out_and_a_fault_is_not() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let done = while_kafka_away("a call", &shutdown, &Heartbeat::detached(), || {
            calls += 1;
            let outcome = if calls < 3 { Err(away()) } else { Ok(calls) };
            async move { outcome }
        })
        .await
        .unwrap();
        assert_eq!(
            done,
            Some(3),
            "two outages waited out, the third try answered"
        );

        let mut calls = 0;
        let fault = while_kafka_away("a call", &shutdown, &Heartbeat::detached(), || {
            calls += 1;
            async { Err::<(), _>(Error::Internal("a bug".into())) }
        })
        .await;
        assert!(matches!(fault, Err(Error::Internal(_))), "{fault:?}");
        assert_eq!(calls, 1, "a fault is not tried again");
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait_for_kafka() {
        let shutdown = CancellationToken::new();
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cancel.cancel();
        });
        let started = std::time::Instant::now();
        let alive = Heartbeat::detached();
        let outcome = while_kafka_away("a call", &shutdown, &alive, || async {
            Err::<(), _>(away())
        })
        .await
        .unwrap();
        assert_eq!(outcome, None);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
