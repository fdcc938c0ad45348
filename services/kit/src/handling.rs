//! What handling one consumed record means, the same in both delivery modes (at-least-once in
//! `processor.rs`, exactly-once in `exactly_once.rs`): the processor's settings and counters,
//! the identity of a record's ordering key, and routing a record to its handler with in-place
//! retries, dedupe and tracing, down to a [`Disposition`] the delivery loop then carries out.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::dlq::dead_letter;
use crate::kafka::IsolationLevel;
use crate::monitor::{HandlerLabels, Monitor, seconds};
use crate::publisher::Publisher;
use crate::record::Outgoing;
use crate::record::Record;
use crate::redelivery::RetryTopic;
use crate::retry::RetryPolicy;
use crate::router::{HandlerError, Route, Router};
use crate::store::{Reload, Store};
use crate::telemetry::{continue_trace, inject_current};
use tracing::Instrument;

/// The default [`ProcessorConfig::stall_after`]: three minutes, past the two that a state
/// restore or a wait for topics may take.
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(180);

/// How a processor consumes.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    /// The consumer group.
    pub group_id: String,
    /// Handlers running at once.
    pub concurrency: usize,
    /// Records received but not finished before fetching pauses.
    pub max_in_flight: usize,
    /// In-place retry of transient failures.
    pub retry: RetryPolicy,
    /// Where records the runtime gives up on go.
    pub dead_letter_topic: String,
    /// How long shutdown waits for in-flight records before abandoning them (uncommitted, so
    /// they are redelivered).
    pub drain_timeout: Duration,
    /// Exactly-once mode when set: outputs and input offsets commit in one Kafka transaction
    /// per batch. The id must be stable across restarts of this member (e.g. the pod name) and
    /// unique among the group's members: the broker fences an older instance with the same id.
    pub transactional_id: Option<String>,
    /// Exactly-once mode: the most records in one transaction.
    pub batch_size: usize,
    /// Exactly-once mode: the longest a batch waits for more records after its first.
    pub batch_linger: Duration,
    /// Exactly-once mode: a batch closes once no record has arrived for this long (or at
    /// `batch_linger`): an idle hop commits at once, a busy one fills its batch. Group commit,
    /// not a fixed wait: records that arrive during a commit are the next batch.
    pub batch_gap: Duration,
    /// Exactly-once mode: the timeout of each transaction call.
    pub transaction_timeout: Duration,
    /// How often librdkafka reports statistics, from which consumer lag per partition is
    /// published (`sagashop_consumer_lag`).
    pub lag_interval: Duration,
    /// Skip records whose `message-id` this store has seen (message id → when it was handled,
    /// in Unix milliseconds). Its changelog should be compacted with a retention
    /// (`cleanup.policy=compact,delete`, `retention.ms` = how long duplicates can arrive).
    pub dedupe: Option<Store<i64>>,
    /// How long a message id is remembered: older ids are deleted from the dedupe store (and
    /// its changelog), so memory stays bounded. At least as long as a duplicate can arrive.
    pub dedupe_retention: Duration,
    /// What makes two records "the same" for the dedupe store: the `message-id` header unless
    /// the service names a business key (e.g. saga id + step).
    pub dedupe_key: DedupeKey,
    /// At-least-once mode: where records go when in-place retries run out, to be re-consumed
    /// when due instead of being dead-lettered at once.
    pub retry_topic: Option<RetryTopic>,
    /// How the consumer reads: read committed unless an at-least-once service chooses
    /// otherwise (exactly-once mode refuses anything else).
    pub isolation_level: IsolationLevel,
    /// How long the consume loop may go without progress (a record finished, or nothing to
    /// do) before `/healthz` fails and Kubernetes restarts the process. Longer than any one
    /// bounded wait inside it: a transaction call, a state restore.
    pub stall_after: Duration,
}

impl ProcessorConfig {
    /// Defaults for an exactly-once member of `group_id` with `transactional_id`.
    pub fn exactly_once(
        group_id: impl Into<String>,
        dead_letter_topic: impl Into<String>,
        transactional_id: impl Into<String>,
    ) -> Self {
        Self {
            transactional_id: Some(transactional_id.into()),
            ..Self::new(group_id, dead_letter_topic)
        }
    }

    /// Defaults for `group_id` dead-lettering to `dead_letter_topic`.
    pub fn new(group_id: impl Into<String>, dead_letter_topic: impl Into<String>) -> Self {
        Self {
            group_id: group_id.into(),
            concurrency: 16,
            max_in_flight: 1024,
            retry: RetryPolicy::default(),
            dead_letter_topic: dead_letter_topic.into(),
            drain_timeout: Duration::from_secs(10),
            transactional_id: None,
            batch_size: 200,
            batch_linger: Duration::from_millis(20),
            batch_gap: Duration::from_millis(2),
            transaction_timeout: Duration::from_secs(30),
            dedupe: None,
            dedupe_retention: Duration::from_secs(7 * 24 * 3600),
            dedupe_key: DedupeKey::MessageId,
            retry_topic: None,
            lag_interval: Duration::from_secs(5),
            isolation_level: IsolationLevel::ReadCommitted,
            stall_after: STALL_AFTER,
        }
    }
}

/// How the dedupe store identifies a record.
#[derive(Clone, Default)]
pub enum DedupeKey {
    /// The `message-id` header: the same message delivered again.
    #[default]
    MessageId,
    /// A business key computed from the record (`None`: do not dedupe this record), for
    /// different messages that must take effect once, such as a command re-sent with a new id.
    Business(BusinessKey),
}

/// Computes a record's business key for [`DedupeKey::Business`].
pub type BusinessKey = Arc<dyn Fn(&Record) -> Option<String> + Send + Sync>;

impl DedupeKey {
    /// A business key from `key`.
    pub fn business(key: impl Fn(&Record) -> Option<String> + Send + Sync + 'static) -> Self {
        Self::Business(Arc::new(key))
    }

    /// The key of `record`, if it has one.
    pub fn of(&self, record: &Record) -> Option<String> {
        match self {
            Self::MessageId => record.metadata().ok().map(|m| m.message_id.to_string()),
            Self::Business(key) => key(record),
        }
    }
}

impl std::fmt::Debug for DedupeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::MessageId => "MessageId",
            Self::Business(_) => "Business(..)",
        })
    }
}

/// Counters of what a processor did; read them at any time.
#[derive(Debug, Default)]
pub struct Stats {
    handled: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    unknown: AtomicU64,
    duplicates: AtomicU64,
    parked: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Records a handler finished.
    pub handled: u64,
    /// Retries of transient failures.
    pub retried: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Records with an event type no handler knows, acknowledged.
    pub unknown: u64,
    /// Records skipped because their `message-id` was handled before.
    pub duplicates: u64,
    /// Records parked on the retry topic.
    pub parked: u64,
}

impl Stats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            handled: self.handled.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            unknown: self.unknown.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            parked: self.parked.load(Ordering::Relaxed),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Records of one ordering key in one partition run in sequence. Keyless records are their own
/// key (by offset): they have no order to keep.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct KeyId {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    key: Result<Vec<u8>, i64>,
}

impl KeyId {
    pub(crate) fn of(record: &Record) -> Self {
        Self {
            topic: record.topic.clone(),
            partition: record.partition,
            key: record.key.clone().ok_or(record.offset),
        }
    }
}

/// What one record's task needs.
pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) publisher: Publisher,
    pub(crate) config: ProcessorConfig,
    pub(crate) permits: Semaphore,
    pub(crate) stats: Arc<Stats>,
    pub(crate) monitor: Monitor,
    pub(crate) shutdown: CancellationToken,
    /// The consume loop's liveness: beaten while it makes progress or waits as it should.
    pub(crate) alive: crate::monitor::Heartbeat,
    /// Every store the handlers write, set when the processor runs: their changelog records
    /// are written with the store's current value (see `Reload::enqueue_current`).
    pub(crate) stores: std::sync::OnceLock<Vec<Arc<dyn Reload>>>,
}

impl Shared {
    pub(crate) fn stores(&self) -> &[Arc<dyn Reload>] {
        self.stores.get().map_or(&[], Vec::as_slice)
    }

    fn labels(&self, record: &Record) -> HandlerLabels {
        HandlerLabels {
            group: self.config.group_id.clone(),
            topic: record.topic.clone(),
        }
    }
}

/// What became of one record once its handler is done with it.
pub(crate) enum Disposition {
    /// Handled: publish these records.
    Outputs(Vec<Outgoing>),
    /// Given up on: publish this dead letter.
    DeadLetter(Outgoing),
    /// No handler for its event type: nothing to publish.
    Unknown,
    /// Its `message-id` was handled before: nothing to do again.
    Duplicate,
    /// Transient failures used up the in-place attempts: park it on the retry topic, or
    /// publish the dead letter when it may not be parked (again).
    Exhausted {
        /// The dead letter, should it come to that.
        letter: Outgoing,
        /// The last error.
        error: String,
        /// The handler's own redelivery budget, if it set one.
        redeliveries: Option<u32>,
    },
    /// Parked on the retry topic.
    Parked,
}

/// Routes a record and runs its handler, retrying transient failures in place, inside a
/// `process <topic>` consumer span that continues the record's trace; the handler's outputs
/// carry this span's trace context onwards.
pub(crate) async fn handle(shared: &Shared, record: &Record) -> Disposition {
    crate::store::handling(record.partition, handle_record(shared, record)).await
}

/// [`handle`], with owned stores writing to the record's partition.
async fn handle_record(shared: &Shared, record: &Record) -> Disposition {
    let span = tracing::info_span!(
        "process",
        otel.name = %format!("process {}", record.topic),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = %record.topic,
        messaging.destination.partition.id = record.partition,
        messaging.kafka.offset = record.offset,
        messaging.consumer.group.name = %shared.config.group_id,
        correlation_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    continue_trace(&span, &record.headers);
    if let Ok(metadata) = record.metadata() {
        span.record("correlation_id", metadata.correlation_id.as_str());
    }
    let dedupe_id = shared.config.dedupe_key.of(record);
    if let (Some(store), Some(id)) = (&shared.config.dedupe, &dedupe_id)
        && store.get(id).is_some()
    {
        tracing::debug!(parent: &span, dedupe_id = %id, "duplicate; skipped");
        return Disposition::Duplicate;
    }
    let mut disposition = handle_in_span(shared, record)
        .instrument(span.clone())
        .await;
    if let Disposition::Outputs(outputs) = &mut disposition {
        let _entered = span.enter();
        for output in outputs.iter_mut() {
            inject_current(&mut output.headers);
        }
        // Remembered with the outputs, so (in exactly-once mode) in the same transaction.
        if let (Some(store), Some(id)) = (&shared.config.dedupe, dedupe_id) {
            match store.put(&id, chrono::Utc::now().timestamp_millis()) {
                Ok(remember) => outputs.push(remember),
                Err(e) => tracing::error!(error = %e, "could not remember the message id"),
            }
        }
    }
    disposition
}

async fn handle_in_span(shared: &Shared, record: &Record) -> Disposition {
    let (error, attempts) = match shared.router.route(record.clone()) {
        Err(decode) => (decode.to_string(), 0),
        Ok(Route::Unknown {
            event_type,
            strict: true,
        }) => (
            format!(
                "no handler for event type `{event_type}` on `{}`: every record there must be one \
                 this service handles (forged, mistyped, or from a newer version?)",
                record.topic
            ),
            0,
        ),
        Ok(Route::Unknown { event_type, .. }) => {
            tracing::debug!(topic = %record.topic, offset = record.offset, %event_type, "no handler; acknowledged");
            return Disposition::Unknown;
        }
        Ok(Route::Handler(call)) => {
            let policy = call.policy();
            let retry = policy.retry.unwrap_or(shared.config.retry);
            let mut attempt = 1;
            loop {
                let result = {
                    // The semaphore is never closed, so acquire cannot fail; if it did, running
                    // without a permit is better than dropping the record.
                    let _permit = shared.permits.acquire().await.ok();
                    let started = tokio::time::Instant::now();
                    let result = AssertUnwindSafe(call.call())
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| {
                            Err(HandlerError::Permanent("the handler panicked".into()))
                        });
                    shared
                        .monitor
                        .runtime
                        .handler_seconds
                        .get_or_create(&shared.labels(record))
                        .observe(seconds(started.elapsed()));
                    result
                };
                let error = match result {
                    Ok(outputs) => return Disposition::Outputs(outputs),
                    Err(e) => e,
                };
                if error.is_transient() && retry.retries_after(attempt) {
                    tracing::info!(topic = %record.topic, offset = record.offset, attempt, %error, "transient failure; retrying");
                    Stats::bump(&shared.stats.retried);
                    shared
                        .monitor
                        .runtime
                        .retried
                        .get_or_create(&shared.labels(record))
                        .inc();
                    tokio::time::sleep(retry.backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
                if error.is_transient() {
                    let error = error.to_string();
                    return Disposition::Exhausted {
                        letter: letter(shared, record, &error, attempt),
                        error,
                        redeliveries: policy.redeliveries,
                    };
                }
                // An unreadable payload never reached the handler: zero attempts.
                let attempts = if matches!(error, HandlerError::Decode(_)) {
                    0
                } else {
                    attempt
                };
                break (error.to_string(), attempts);
            }
        }
    };
    Disposition::DeadLetter(letter(shared, record, &error, attempts))
}

/// Dead-letters what the stores' restores quarantined (see
/// [`crate::dlq::dead_letter_quarantined`]); called after every restore of an assignment.
pub(crate) async fn dead_letter_quarantined(shared: &Shared, stores: &[Arc<dyn Reload>]) {
    let config = &shared.config;
    for store in stores {
        crate::dlq::dead_letter_quarantined(
            store.as_ref(),
            &shared.publisher,
            &config.dead_letter_topic,
            &config.group_id,
        )
        .await;
    }
}

pub(crate) fn letter(shared: &Shared, record: &Record, error: &str, attempts: u32) -> Outgoing {
    tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, attempts, %error, "dead-lettering record");
    dead_letter(
        record,
        &shared.config.dead_letter_topic,
        &shared.config.group_id,
        error,
        attempts,
    )
}

/// Counts a record whose disposition was delivered.
pub(crate) fn count(shared: &Shared, record: &Record, disposition: &Disposition) {
    let (stat, family) = match disposition {
        Disposition::Outputs(_) => (&shared.stats.handled, &shared.monitor.runtime.handled),
        Disposition::DeadLetter(_) | Disposition::Exhausted { .. } => (
            &shared.stats.dead_lettered,
            &shared.monitor.runtime.dead_lettered,
        ),
        Disposition::Parked => (&shared.stats.parked, &shared.monitor.runtime.parked),
        Disposition::Unknown => (&shared.stats.unknown, &shared.monitor.runtime.unknown),
        Disposition::Duplicate => (&shared.stats.duplicates, &shared.monitor.runtime.duplicates),
    };
    Stats::bump(stat);
    family.get_or_create(&shared.labels(record)).inc();
}
