//! The operator's Prometheus metrics, served at `/metrics` beside `/healthz` and `/readyz`.
//!
//! | metric | labels | meaning |
//! | --- | --- | --- |
//! | `sagashop_operator_reconciliations_total` | `kind` | reconciliations run |
//! | `sagashop_operator_reconcile_failures_total` | `kind`, `error` | reconciliations that failed (`kafka`, `kubernetes`, `finalizer`) |
//! | `sagashop_operator_reconcile_duration_seconds` | `kind` | how long one took |
//! | `sagashop_operator_objects` | `kind`, `ready` | objects by their `Ready` condition |
//! | `sagashop_operator_kafka_requests_total` | `request` | broker admin requests made |
//! | `sagashop_operator_leader` | — | 1 while this replica holds the lease |

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use sagashop_kit::Monitor;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: &'static str,
    error: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabels {
    kind: &'static str,
    ready: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    request: &'static str,
}

/// The operator's metrics, registered in a [`Monitor`].
pub struct Metrics {
    reconciliations: Family<KindLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<KindLabels, Histogram>,
    objects: Family<ReadyLabels, Gauge>,
    requests: Family<RequestLabels, Counter>,
    /// 1 while this replica leads.
    pub leader: Gauge,
    readiness: Mutex<HashMap<(&'static str, String), &'static str>>,
}

impl Metrics {
    /// Creates the metrics and registers them in `monitor`.
    pub fn new(monitor: &Monitor) -> Self {
        let metrics = Self {
            reconciliations: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
            objects: Family::default(),
            requests: Family::default(),
            leader: Gauge::default(),
            readiness: Mutex::default(),
        };
        monitor.register(
            "operator_reconciliations",
            "Reconciliations run",
            metrics.reconciliations.clone(),
        );
        monitor.register(
            "operator_reconcile_failures",
            "Reconciliations that failed, by cause",
            metrics.failures.clone(),
        );
        monitor.register(
            "operator_reconcile_duration_seconds",
            "How long one reconciliation took",
            metrics.duration.clone(),
        );
        monitor.register(
            "operator_objects",
            "Objects by their Ready condition",
            metrics.objects.clone(),
        );
        monitor.register(
            "operator_kafka_requests",
            "Kafka admin requests sent to the broker",
            metrics.requests.clone(),
        );
        monitor.register(
            "operator_leader",
            "1 while this replica holds the leader lease",
            metrics.leader.clone(),
        );
        metrics
    }

    /// Counts one reconciliation of `kind` that took `took` and failed with `error` (if any).
    pub fn reconciled(&self, kind: &'static str, took: Duration, error: Option<&'static str>) {
        self.reconciliations
            .get_or_create(&KindLabels { kind })
            .inc();
        self.duration
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
        if let Some(error) = error {
            self.failures
                .get_or_create(&FailureLabels { kind, error })
                .inc();
        }
    }

    /// Records the readiness of one object (`None` once it is gone).
    pub fn readiness(&self, kind: &'static str, key: String, ready: Option<&'static str>) {
        let mut all = self
            .readiness
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match ready {
            Some(ready) => {
                all.insert((kind, key), ready);
            }
            None => {
                all.remove(&(kind, key));
            }
        }
        let mut counts: HashMap<&'static str, i64> = HashMap::new();
        for ((k, _), r) in all.iter() {
            if *k == kind {
                *counts.entry(r).or_default() += 1;
            }
        }
        for ready in ["True", "False", "Unknown"] {
            self.objects
                .get_or_create(&ReadyLabels { kind, ready })
                .set(counts.get(ready).copied().unwrap_or(0));
        }
    }

    /// Counts one broker admin request.
    pub fn kafka_request(&self, request: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { request })
            .inc();
    }
}
