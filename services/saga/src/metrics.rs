//! The orchestrator's saga metrics, registered on the process's [`Monitor`]:
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `sagashop_saga_started_total` | saga | instances started |
//! | `sagashop_saga_finished_total` | saga, outcome (`completed`, `cancelled`) | instances ended |
//! | `sagashop_saga_duration_seconds` | saga, outcome | first command to the outcome |
//! | `sagashop_saga_step_replies_total` | saga, step, direction (`forward`, `compensation`), outcome (`succeeded`, `failed`, `timed_out`) | replies and deadlines of the awaited command |
//! | `sagashop_saga_step_duration_seconds` | saga, step, direction, outcome | the attempt's command to its reply or deadline |
//! | `sagashop_saga_compensations_abandoned_total` | saga, step | compensations given up after their retries: the saga is put in `FAILED` (money or stock may still be taken) |
//! | `sagashop_sagas_running` | saga | instances running or compensating |
//! | `sagashop_sagas_failed` | saga | instances `FAILED`, waiting for a retry by hand |
//! | `sagashop_saga_oldest_running_seconds` | saga | age of the oldest instance running or compensating (0 when none) |
//!
//! Counters are counted when the orchestrator handles an input; an exactly-once batch whose
//! transaction aborts is handled again, so after a fault they can count an input twice.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use sagashop_kit::Monitor;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SagaLabels {
    saga: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    saga: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StepLabels {
    saga: String,
    step: String,
    direction: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AbandonedLabels {
    saga: String,
    step: String,
}

/// 5 ms to about 11 minutes, doubling: a step answers in milliseconds, a saga that backs off
/// and retries takes minutes.
#[derive(Debug, Clone, Copy)]
struct SagaBuckets;

impl MetricConstructor<Histogram> for SagaBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.005, 2.0, 18))
    }
}

/// Which way a step's command went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The step's own command.
    Forward,
    /// Its compensation.
    Compensation,
}

/// What became of an attempt of a step's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// The participant did it.
    Succeeded,
    /// The participant could not.
    Failed,
    /// No reply by the deadline.
    TimedOut,
}

/// The metrics of one saga's orchestrator.
#[derive(Debug, Clone)]
pub struct SagaMetrics {
    saga: String,
    started: Family<SagaLabels, Counter>,
    finished: Family<OutcomeLabels, Counter>,
    duration: Family<OutcomeLabels, Histogram, SagaBuckets>,
    replies: Family<StepLabels, Counter>,
    step_duration: Family<StepLabels, Histogram, SagaBuckets>,
    abandoned: Family<AbandonedLabels, Counter>,
    running: Family<SagaLabels, Gauge>,
    failed: Family<SagaLabels, Gauge>,
    oldest: Family<SagaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl SagaMetrics {
    /// Registers the metrics of saga `saga` on `monitor`.
    pub fn new(saga: &str, monitor: &Monitor) -> Self {
        let metrics = Self {
            saga: saga.to_owned(),
            started: Family::default(),
            finished: Family::default(),
            duration: Family::new_with_constructor(SagaBuckets),
            replies: Family::default(),
            step_duration: Family::new_with_constructor(SagaBuckets),
            abandoned: Family::default(),
            running: Family::default(),
            failed: Family::default(),
            oldest: Family::default(),
        };
        monitor.register(
            "saga_started",
            "Saga instances started",
            metrics.started.clone(),
        );
        monitor.register(
            "saga_finished",
            "Saga instances ended, by outcome (completed, cancelled)",
            metrics.finished.clone(),
        );
        monitor.register(
            "saga_duration_seconds",
            "Time from a saga's first command to its outcome",
            metrics.duration.clone(),
        );
        monitor.register(
            "saga_step_replies",
            "Replies to (and deadlines of) the command a saga waits for, by step, direction and outcome",
            metrics.replies.clone(),
        );
        monitor.register(
            "saga_step_duration_seconds",
            "Time from an attempt's command to its reply or deadline",
            metrics.step_duration.clone(),
        );
        monitor.register(
            "saga_compensations_abandoned",
            "Compensations given up after their retries: the saga is FAILED until retried",
            metrics.abandoned.clone(),
        );
        monitor.register(
            "sagas_running",
            "Saga instances running or compensating",
            metrics.running.clone(),
        );
        monitor.register(
            "sagas_failed",
            "Saga instances FAILED (a compensation gave up), waiting for a retry by hand",
            metrics.failed.clone(),
        );
        monitor.register(
            "saga_oldest_running_seconds",
            "Age of the oldest saga instance running or compensating; 0 when none runs",
            metrics.oldest.clone(),
        );
        // Present from the start, so dashboards and alerts see zeros rather than no data.
        metrics
            .started
            .get_or_create(&metrics.saga_labels())
            .inc_by(0);
        for outcome in ["completed", "cancelled"] {
            metrics
                .finished
                .get_or_create(&metrics.outcome(outcome))
                .inc_by(0);
        }
        metrics.running(0, 0, 0.0);
        metrics
    }

    fn saga_labels(&self) -> SagaLabels {
        SagaLabels {
            saga: self.saga.clone(),
        }
    }

    fn outcome(&self, outcome: &'static str) -> OutcomeLabels {
        OutcomeLabels {
            saga: self.saga.clone(),
            outcome,
        }
    }

    /// An instance started.
    pub fn started(&self) {
        self.started.get_or_create(&self.saga_labels()).inc();
    }

    /// An instance ended `completed` (or else cancelled) after `seconds`.
    pub fn finished(&self, completed: bool, seconds: f64) {
        let labels = self.outcome(if completed { "completed" } else { "cancelled" });
        self.finished.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
    }

    /// The awaited command of `step` got `outcome` after `seconds` (when its send is known).
    pub fn replied(
        &self,
        step: &str,
        direction: Direction,
        outcome: StepOutcome,
        seconds: Option<f64>,
    ) {
        let labels = StepLabels {
            saga: self.saga.clone(),
            step: step.to_owned(),
            direction: match direction {
                Direction::Forward => "forward",
                Direction::Compensation => "compensation",
            },
            outcome: match outcome {
                StepOutcome::Succeeded => "succeeded",
                StepOutcome::Failed => "failed",
                StepOutcome::TimedOut => "timed_out",
            },
        };
        self.replies.get_or_create(&labels).inc();
        if let Some(seconds) = seconds {
            self.step_duration.get_or_create(&labels).observe(seconds);
        }
    }

    /// The compensation of `step` was given up on.
    pub fn abandoned(&self, step: &str) {
        self.abandoned
            .get_or_create(&AbandonedLabels {
                saga: self.saga.clone(),
                step: step.to_owned(),
            })
            .inc();
    }

    /// `running` instances run or compensate, the oldest started `oldest_seconds` ago;
    /// `failed` wait in `FAILED`.
    pub fn running(&self, running: usize, failed: usize, oldest_seconds: f64) {
        let labels = self.saga_labels();
        self.running
            .get_or_create(&labels)
            .set(i64::try_from(running).unwrap_or(i64::MAX));
        self.failed
            .get_or_create(&labels)
            .set(i64::try_from(failed).unwrap_or(i64::MAX));
        self.oldest.get_or_create(&labels).set(oldest_seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_are_encoded_per_saga_step_direction_and_outcome() {
        let monitor = Monitor::new();
        let metrics = SagaMetrics::new("order-fulfilment", &monitor);
        let text = monitor.encode();
        assert!(
            text.contains(
                r#"sagashop_saga_finished_total{saga="order-fulfilment",outcome="cancelled"} 0"#
            ),
            "outcomes start at zero: {text}"
        );
        metrics.started();
        metrics.replied(
            "payment",
            Direction::Compensation,
            StepOutcome::TimedOut,
            Some(2.0),
        );
        metrics.abandoned("payment");
        metrics.finished(false, 3.5);
        metrics.running(2, 1, 42.0);
        let text = monitor.encode();
        for line in [
            r#"sagashop_saga_started_total{saga="order-fulfilment"} 1"#,
            r#"sagashop_saga_finished_total{saga="order-fulfilment",outcome="cancelled"} 1"#,
            r#"sagashop_saga_duration_seconds_sum{saga="order-fulfilment",outcome="cancelled"} 3.5"#,
            r#"sagashop_saga_step_replies_total{saga="order-fulfilment",step="payment",direction="compensation",outcome="timed_out"} 1"#,
            r#"sagashop_saga_step_duration_seconds_count{saga="order-fulfilment",step="payment",direction="compensation",outcome="timed_out"} 1"#,
            r#"sagashop_saga_compensations_abandoned_total{saga="order-fulfilment",step="payment"} 1"#,
            r#"sagashop_sagas_running{saga="order-fulfilment"} 2"#,
            r#"sagashop_sagas_failed{saga="order-fulfilment"} 1"#,
            r#"sagashop_saga_oldest_running_seconds{saga="order-fulfilment"} 42.0"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
