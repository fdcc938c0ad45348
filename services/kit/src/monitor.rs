//! What a service shows about itself: Prometheus metrics, readiness and liveness, served by
//! [`crate::http`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-handler metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    /// The consumer group.
    pub group: String,
    /// The topic consumed.
    pub topic: String,
}

/// Labels of per-topic metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// The topic.
    pub topic: String,
}

/// Labels of per-partition metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// The consumer group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition number.
    pub partition: String,
}

/// Labels of per-group metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// The consumer group.
    pub group: String,
}

/// Labels of the phases of an exactly-once batch.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// The consumer group.
    pub group: String,
    /// `gather` (first record to the batch closing), `handle` (handlers and their sends
    /// acknowledged), `offsets` (`send_offsets_to_transaction`), `commit` (`EndTxn`).
    pub phase: &'static str,
}

/// Labels of per-store metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// The store's name.
    pub store: String,
}

/// Labels of one kind of request: its method and route (the route's pattern, such as
/// `/api/orders/{id}`, so ids do not become labels; `unmatched` for paths no route serves).
#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub(crate) method: String,
    pub(crate) route: String,
}

/// [`RouteLabels`] and the answer's status code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct ResponseLabels {
    pub(crate) method: String,
    pub(crate) route: String,
    pub(crate) status: String,
}

/// Latency buckets from 0.5 ms to ~16 s.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0005, 2.0, 16))
    }
}

/// The runtime's metrics.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeMetrics {
    pub(crate) handled: Family<HandlerLabels, Counter>,
    pub(crate) retried: Family<HandlerLabels, Counter>,
    pub(crate) dead_lettered: Family<HandlerLabels, Counter>,
    pub(crate) unknown: Family<HandlerLabels, Counter>,
    pub(crate) duplicates: Family<HandlerLabels, Counter>,
    pub(crate) parked: Family<HandlerLabels, Counter>,
    pub(crate) handler_seconds: Family<HandlerLabels, Histogram, LatencyBuckets>,
    pub(crate) publish_seconds: Family<TopicLabels, Histogram, LatencyBuckets>,
    pub(crate) rebalances: Family<GroupLabels, Counter>,
    pub(crate) transaction_aborts: Family<GroupLabels, Counter>,
    pub(crate) transaction_phases: Family<PhaseLabels, Histogram, LatencyBuckets>,
    pub(crate) consumer_lag: Family<PartitionLabels, Gauge>,
    pub(crate) store_entries: Family<StoreLabels, Gauge>,
    pub(crate) store_expired: Family<StoreLabels, Counter>,
    pub(crate) store_quarantined: Family<StoreLabels, Counter>,
    pub(crate) http: HttpMetrics,
}

/// The RED metrics of the HTTP server (see [`crate::http::observed`]).
#[derive(Debug, Clone)]
pub(crate) struct HttpMetrics {
    pub(crate) requests: Family<ResponseLabels, Counter>,
    pub(crate) duration: Family<RouteLabels, Histogram, LatencyBuckets>,
}

/// Metrics and readiness of one process; clone it into every part that reports.
#[derive(Clone)]
pub struct Monitor {
    registry: Arc<Mutex<Registry>>,
    /// Name → (type, help) of every registered metric.
    declared: Arc<Mutex<BTreeMap<String, (&'static str, String)>>>,
    pub(crate) runtime: RuntimeMetrics,
    components: Arc<Mutex<BTreeMap<String, bool>>>,
    hearts: Arc<Mutex<BTreeMap<String, Arc<Heart>>>>,
    /// When the monitor was made: heartbeats count milliseconds from here.
    epoch: Instant,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("components", &self.components)
            .finish_non_exhaustive()
    }
}

impl Default for Monitor {
    fn default() -> Self {
        Self::new()
    }
}

impl Monitor {
    /// A monitor with the runtime's metrics registered under the `sagashop_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sagashop");
        let mut declared = BTreeMap::new();
        let runtime = RuntimeMetrics {
            handled: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            unknown: Family::default(),
            duplicates: Family::default(),
            parked: Family::default(),
            handler_seconds: Family::new_with_constructor(LatencyBuckets),
            publish_seconds: Family::new_with_constructor(LatencyBuckets),
            rebalances: Family::default(),
            transaction_aborts: Family::default(),
            transaction_phases: Family::new_with_constructor(LatencyBuckets),
            consumer_lag: Family::default(),
            store_entries: Family::default(),
            store_expired: Family::default(),
            store_quarantined: Family::default(),
            http: HttpMetrics {
                requests: Family::default(),
                duration: Family::new_with_constructor(LatencyBuckets),
            },
        };
        register_messages(&mut registry, &mut declared, &runtime);
        register_others(&mut registry, &mut declared, &runtime);
        Self {
            registry: Arc::new(Mutex::new(registry)),
            declared: Arc::new(Mutex::new(declared)),
            runtime,
            components: Arc::default(),
            hearts: Arc::default(),
            epoch: Instant::now(),
        }
    }

    /// Registers a service's own metric.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        declare(
            &mut self.registry.lock().unwrap_or_else(PoisonError::into_inner),
            &mut self.declared.lock().unwrap_or_else(PoisonError::into_inner),
            name,
            help,
            metric,
        );
    }

    /// Every metric registered, with its type and help, whether or not it has samples yet (a
    /// labelled family has none until its first use, and `/metrics` leaves it out until then):
    /// `# HELP` and `# TYPE` lines in the text format, served at `/metrics/catalogue`.
    pub fn catalogue(&self) -> String {
        let declared = self.declared.lock().unwrap_or_else(PoisonError::into_inner);
        let mut text = String::new();
        for (name, (kind, help)) in declared.iter() {
            text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        }
        text.push_str("# EOF\n");
        text
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    /// Declares a component that must be ready before the process is; it starts not ready.
    pub fn component(&self, name: impl Into<String>) -> ReadyFlag {
        let name = name.into();
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone(), false);
        ReadyFlag {
            name,
            components: Arc::clone(&self.components),
        }
    }

    /// The components that are not ready yet; empty means the process is ready.
    pub fn not_ready(&self) -> Vec<String> {
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, ready)| !**ready)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Declares a loop that must keep making progress for the process to be live: it fails
    /// liveness ([`Monitor::not_live`]) when it has not beaten for `bound`, or when its
    /// loop ended by itself ([`Heartbeat::stopped`]).
    pub fn heartbeat(&self, name: impl Into<String>, bound: Duration) -> Heartbeat {
        let name = name.into();
        let heart = Arc::new(Heart {
            bound,
            last: AtomicU64::new(elapsed_ms(self.epoch)),
            stopped: AtomicBool::new(false),
        });
        self.hearts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone(), Arc::clone(&heart));
        Heartbeat {
            name,
            heart,
            epoch: self.epoch,
            hearts: Arc::downgrade(&self.hearts),
        }
    }

    /// Why the process is not live, one line per loop: a loop that ended by itself, or one
    /// that has not made progress for longer than its bound. Empty means live.
    pub fn not_live(&self) -> Vec<String> {
        let now = elapsed_ms(self.epoch);
        let hearts = self.hearts.lock().unwrap_or_else(PoisonError::into_inner);
        let mut dead = Vec::new();
        for (name, heart) in hearts.iter() {
            let silent =
                Duration::from_millis(now.saturating_sub(heart.last.load(Ordering::SeqCst)));
            if heart.stopped.load(Ordering::SeqCst) {
                dead.push(format!("{name} stopped"));
            } else if silent > heart.bound {
                dead.push(format!(
                    "{name} made no progress for {:.1}s (bound {:.1}s)",
                    silent.as_secs_f64(),
                    heart.bound.as_secs_f64()
                ));
            }
        }
        dead
    }
}

fn elapsed_ms(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
struct Heart {
    bound: Duration,
    /// Milliseconds from the monitor's epoch to the last beat.
    last: AtomicU64,
    stopped: AtomicBool,
}

/// A loop's proof of life (see [`Monitor::heartbeat`]). Cheap to clone; every clone beats the
/// same heart.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    name: String,
    heart: Arc<Heart>,
    epoch: Instant,
    hearts: std::sync::Weak<Mutex<BTreeMap<String, Arc<Heart>>>>,
}

impl Heartbeat {
    /// A heartbeat nothing watches: for loops run outside a service (tests, tools).
    pub fn detached() -> Self {
        Monitor::new().heartbeat("detached", Duration::MAX)
    }

    /// The loop made progress (or waited, as it should, for work or for Kafka).
    pub fn beat(&self) {
        self.heart
            .last
            .store(elapsed_ms(self.epoch), Ordering::SeqCst);
    }

    /// The loop ended by itself: liveness fails until the process exits.
    pub fn stopped(&self) {
        self.heart.stopped.store(true, Ordering::SeqCst);
    }

    /// The loop ended as asked (at shutdown): it no longer counts for liveness.
    pub fn finish(&self) {
        if let Some(hearts) = self.hearts.upgrade() {
            let mut hearts = hearts.lock().unwrap_or_else(PoisonError::into_inner);
            if hearts
                .get(&self.name)
                .is_some_and(|h| Arc::ptr_eq(h, &self.heart))
            {
                hearts.remove(&self.name);
            }
        }
    }
}

/// One component's readiness.
#[derive(Debug, Clone)]
pub struct ReadyFlag {
    name: String,
    components: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl ReadyFlag {
    /// Marks the component ready or not.
    pub fn set(&self, ready: bool) {
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.name.clone(), ready);
    }
}

/// Registers the runtime's counters of records, by what became of them.
fn register_messages(
    registry: &mut Registry,
    declared: &mut BTreeMap<String, (&'static str, String)>,
    runtime: &RuntimeMetrics,
) {
    for (name, help, family) in [
        (
            "messages_handled",
            "Records a handler finished",
            &runtime.handled,
        ),
        (
            "messages_retried",
            "In-place retries of transient handler failures",
            &runtime.retried,
        ),
        (
            "messages_dead_lettered",
            "Records sent to the dead-letter topic",
            &runtime.dead_lettered,
        ),
        (
            "messages_unknown",
            "Records with an event type no handler knows, acknowledged",
            &runtime.unknown,
        ),
        (
            "messages_duplicate",
            "Records skipped because their message-id was handled before",
            &runtime.duplicates,
        ),
        (
            "messages_parked",
            "Records parked on the retry topic (after failing, or behind a parked record of their key)",
            &runtime.parked,
        ),
    ] {
        declare(registry, declared, name, help, family.clone());
    }
}

/// Registers the runtime's timings, gauges and HTTP metrics.
fn register_others(
    registry: &mut Registry,
    declared: &mut BTreeMap<String, (&'static str, String)>,
    runtime: &RuntimeMetrics,
) {
    declare(
        registry,
        declared,
        "handler_duration_seconds",
        "Time a handler took per attempt",
        runtime.handler_seconds.clone(),
    );
    declare(
        registry,
        declared,
        "publish_duration_seconds",
        "Time from send to the broker's acknowledgement",
        runtime.publish_seconds.clone(),
    );
    declare(
        registry,
        declared,
        "transaction_aborts",
        "Exactly-once batches whose transaction was aborted and redone",
        runtime.transaction_aborts.clone(),
    );
    declare(
        registry,
        declared,
        "transaction_phase_seconds",
        "Time of each phase of an exactly-once batch (gather, handle, offsets, commit)",
        runtime.transaction_phases.clone(),
    );
    declare(
        registry,
        declared,
        "consumer_lag",
        "Records in a partition after the group's committed offset (not yet done)",
        runtime.consumer_lag.clone(),
    );
    declare(
        registry,
        declared,
        "store_entries",
        "Keys a state store holds in memory",
        runtime.store_entries.clone(),
    );
    declare(
        registry,
        declared,
        "store_expired",
        "Entries a state store forgot after their retention",
        runtime.store_expired.clone(),
    );
    declare(
        registry,
        declared,
        "store_quarantined",
        "Changelog records a state store could not read on restore and skipped (the key keeps its previous value)",
        runtime.store_quarantined.clone(),
    );
    declare(
        registry,
        declared,
        "http_requests",
        "HTTP requests answered, by method, route pattern and status",
        runtime.http.requests.clone(),
    );
    declare(
        registry,
        declared,
        "http_request_duration_seconds",
        "Time from an HTTP request's arrival to its response, by method and route pattern",
        runtime.http.duration.clone(),
    );
    declare(
        registry,
        declared,
        "consumer_rebalances",
        "Partition assignments and revocations",
        runtime.rebalances.clone(),
    );
}

/// Registers `metric` as `sagashop_<name>` and remembers its type and help for
/// [`Monitor::catalogue`].
fn declare(
    registry: &mut Registry,
    declared: &mut BTreeMap<String, (&'static str, String)>,
    name: &str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
) {
    let kind = match metric.metric_type() {
        MetricType::Counter => "counter",
        MetricType::Gauge => "gauge",
        MetricType::Histogram => "histogram",
        MetricType::Info => "info",
        MetricType::Unknown => "unknown",
    };
    declared.insert(format!("sagashop_{name}"), (kind, format!("{help}.")));
    registry.register(name, help, metric);
}

pub(crate) fn seconds(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_is_ready_only_when_every_component_is() {
        let monitor = Monitor::new();
        assert!(
            monitor.not_ready().is_empty(),
            "no components: nothing to wait for"
        );
        let consumer = monitor.component("consumer:payment");
        let store = monitor.component("store:balances");
        assert_eq!(monitor.not_ready(), ["consumer:payment", "store:balances"]);
        consumer.set(true);
        store.set(true);
        assert!(monitor.not_ready().is_empty());
        store.set(false);
        assert_eq!(monitor.not_ready(), ["store:balances"]);
    }

    #[test]
    fn a_loop_is_live_while_it_beats_and_dead_once_silent_or_stopped() {
        let monitor = Monitor::new();
        let consumer = monitor.heartbeat("consumer:payment", Duration::from_millis(200));
        let other = monitor.heartbeat("consumer:shipping", Duration::from_secs(60));
        assert!(monitor.not_live().is_empty(), "{:?}", monitor.not_live());
        std::thread::sleep(Duration::from_millis(300));
        let dead = monitor.not_live();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert!(
            dead[0].starts_with("consumer:payment made no progress for 0.")
                && dead[0].ends_with("(bound 0.2s)"),
            "{dead:?}"
        );
        consumer.beat();
        assert!(monitor.not_live().is_empty(), "a beat revives it");
        other.stopped();
        assert_eq!(monitor.not_live(), ["consumer:shipping stopped"]);
        other.finish();
        consumer.finish();
        std::thread::sleep(Duration::from_millis(300));
        assert!(monitor.not_live().is_empty(), "finished loops do not count");
    }

    #[test]
    fn metrics_are_encoded_with_their_labels() {
        let monitor = Monitor::new();
        let labels = HandlerLabels {
            group: "payment".into(),
            topic: "payment.commands.v1".into(),
        };
        monitor.runtime.handled.get_or_create(&labels).inc_by(3);
        monitor
            .runtime
            .handler_seconds
            .get_or_create(&labels)
            .observe(0.002);
        let text = monitor.encode();
        assert!(
            text.contains(
                r#"sagashop_messages_handled_total{group="payment",topic="payment.commands.v1"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sagashop_handler_duration_seconds histogram"),
            "{text}"
        );
    }
}
