//! The consume loop: strictly ordered per key, concurrent across keys; at-least-once by
//! default, exactly-once with a `transactional_id` (see `exactly_once.rs` for that mode).
//!
//! Records of one key (one order) run one after another, in offset order; records of different
//! keys run concurrently (up to `concurrency` handlers at once, `max_in_flight` records received
//! but unfinished, after which fetching pauses). In at-least-once mode an offset is stored for
//! commit only when every record before it in its partition has finished, so a crash never
//! skips a record. Each record is handled in a `process` span that continues its trace, and
//! with a dedupe store a record whose `message-id` was handled before is skipped.
//!
//! Failures escalate per record: a transient error is retried in place with exponential backoff
//! and jitter; when those attempts run out and a retry topic is configured, the record is parked
//! there and re-consumed when due (see `redelivery.rs`, which also explains how later records of
//! its key stay behind it); a permanent error, exhausted redeliveries, a panicking handler or an
//! unreadable record goes to the dead-letter topic with its original bytes and `dlq-*` headers.
//! Either way the record counts as finished, so a poison message never blocks its partition.
//! Records with an `event-type` no handler knows are acknowledged and counted.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::dlq::dead_letter;
use crate::monitor::{GroupLabels, HandlerLabels, Monitor, PartitionLabels, ReadyFlag, seconds};
use crate::partitions::{Partition, Partitions};
use crate::publisher::{Delivered, Outgoing, PublishError, Publisher};
use crate::redelivery::{self, RetryTopic};
use crate::retry::RetryPolicy;
use crate::router::{HandlerError, Record, Route, Router};
use crate::store::{Reload, Store};
use crate::telemetry::{continue_trace, inject_current};
use crate::{Error, KafkaConfig};
use tracing::Instrument;

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
    /// Exactly-once mode: how long a batch waits for more records after its first.
    pub batch_linger: Duration,
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
            transaction_timeout: Duration::from_secs(30),
            dedupe: None,
            dedupe_retention: Duration::from_secs(7 * 24 * 3600),
            dedupe_key: DedupeKey::MessageId,
            retry_topic: None,
            lag_interval: Duration::from_secs(5),
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
    topic: String,
    partition: i32,
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

/// The consumer's view of group membership: ready once the group assigned us partitions.
pub(crate) struct GroupContext {
    group: String,
    ready: ReadyFlag,
    monitor: Monitor,
    /// At-least-once mode: what is running per partition, and how long a revoked partition's
    /// running records may take to finish before it is committed and let go.
    partitions: Arc<Partitions>,
    revoke_drain: Option<Duration>,
    /// After shutdown drained, a revocation (the consumer closing) has nothing to wait for.
    shutdown: CancellationToken,
    /// Set on every assignment and revocation: stores are restored for the partitions owned
    /// now before the next record, since another member may have written them meanwhile.
    pub(crate) assigned: Arc<AtomicBool>,
}

impl ClientContext for GroupContext {
    /// librdkafka's periodic statistics: publish each assigned partition's lag behind the
    /// group's committed offset (`-1`, "unknown", is skipped).
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                let labels = PartitionLabels {
                    group: self.group.clone(),
                    topic: topic.clone(),
                    partition: partition.to_string(),
                };
                self.monitor
                    .runtime
                    .consumer_lag
                    .get_or_create(&labels)
                    .set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    /// Before revoked partitions go: wait (bounded) for their running records, then commit
    /// what finished, so the next owner starts where we stopped.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (Rebalance::Revoke(list), Some(drain)) = (rebalance, self.revoke_drain) else {
            return;
        };
        let revoked: Vec<Partition> = list
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        // This runs on the thread polling the consumer. On a multi-threaded runtime the records
        // can finish elsewhere meanwhile; on a single-threaded one nothing could, so don't wait.
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let still_running = if multi_threaded && !self.shutdown.is_cancelled() {
            tokio::task::block_in_place(|| self.partitions.wait_idle(&revoked, drain))
        } else {
            self.partitions.wait_idle(&revoked, Duration::ZERO)
        };
        if still_running > 0 {
            tracing::warn!(group = %self.group, still_running, "revoked partitions still had records running; their next owner redoes them");
        }
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            commit_failed(&self.group, &e, "the commit before a revocation");
        }
        self.partitions.revoke(&revoked);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let labels = GroupLabels {
            group: self.group.clone(),
        };
        self.monitor.runtime.rebalances.get_or_create(&labels).inc();
        match rebalance {
            Rebalance::Assign(partitions) => {
                let list: Vec<Partition> = partitions
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                self.partitions.assigned(&list);
                tracing::info!(group = %self.group, partitions = partitions.count(), "partitions assigned");
                self.assigned.store(true, Ordering::SeqCst);
                self.ready.set(true);
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(group = %self.group, partitions = partitions.count(), "partitions revoked");
                self.assigned.store(true, Ordering::SeqCst);
            }
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.group, error = %e, "rebalance failed");
            }
        }
    }
}

/// A consumer group member running a [`Router`].
pub struct Processor {
    consumer: Arc<StreamConsumer<GroupContext>>,
    shared: Arc<Shared>,
    /// Set in exactly-once mode.
    transactional_producer: Option<rdkafka::ClientConfig>,
    /// Reloaded from Kafka after an aborted transaction and after every assignment.
    stores: Vec<Arc<dyn Reload>>,
    partitions: Arc<Partitions>,
    assigned: Arc<AtomicBool>,
    /// How the stores forget finished work (the dedupe store's rule is added here).
    expiry: crate::Expiry,
}

impl Processor {
    /// Creates the consumer and subscribes to every topic the router handles. It reports to
    /// `monitor` and declares the component `consumer:<group>`, ready once the group has
    /// assigned it partitions.
    pub fn new(
        kafka: &KafkaConfig,
        config: ProcessorConfig,
        router: Router,
        publisher: Publisher,
        monitor: &Monitor,
    ) -> Result<Self, Error> {
        if config.concurrency == 0 || config.max_in_flight == 0 {
            return Err(Error::InvalidConfig {
                setting: "concurrency",
                reason: "concurrency and max in-flight must be at least 1".to_owned(),
            });
        }
        if config.transactional_id.is_some() && config.retry_topic.is_some() {
            // A batch transaction cannot wait minutes for a parked record to come due.
            return Err(Error::InvalidConfig {
                setting: "retry topic",
                reason: "a retry topic needs at-least-once mode; in exactly-once mode failures \
                         retry in place and then go to the dead-letter topic"
                    .to_owned(),
            });
        }
        let partitions = Arc::new(Partitions::default());
        let shutdown = CancellationToken::new();
        let assigned = Arc::new(AtomicBool::new(false));
        let context = GroupContext {
            group: config.group_id.clone(),
            ready: monitor.component(format!("consumer:{}", config.group_id)),
            monitor: monitor.clone(),
            partitions: Arc::clone(&partitions),
            revoke_drain: config
                .transactional_id
                .is_none()
                .then_some(config.drain_timeout),
            assigned: Arc::clone(&assigned),
            shutdown: shutdown.clone(),
        };
        let mut consumer_config = kafka.consumer(&config.group_id, &config.group_id);
        if config.transactional_id.is_some() || config.dedupe.is_some() {
            // Stateful: the range assignor gives a member the same partition numbers of every
            // input topic (co-partitioning), so partition p's state has one owner. Rebalances
            // are eager: every member restores its partitions' state after each.
            consumer_config.set("partition.assignment.strategy", "range");
        }
        consumer_config.set(
            "statistics.interval.ms",
            config.lag_interval.as_millis().max(1).to_string(),
        );
        let transactional_producer = config.transactional_id.as_ref().map(|id| {
            // Offsets commit inside the transactions, never on their own.
            consumer_config.set("enable.auto.commit", "false");
            kafka.transactional_producer(&config.group_id, id)
        });
        let consumer: StreamConsumer<GroupContext> = consumer_config
            .create_with_context(context)
            .map_err(|cause| Error::Client {
            what: "consumer",
            cause,
        })?;
        let mut topics = router.topics();
        if let Some(retry) = &config.retry_topic {
            topics.push(retry.topic.clone());
        }
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topic_refs)
            .map_err(|cause| Error::Client {
                what: "consumer",
                cause,
            })?;
        let permits = Semaphore::new(config.concurrency);
        let mut stores: Vec<Arc<dyn Reload>> = Vec::new();
        let mut expiry = crate::Expiry::new();
        // The dedupe store is state like any other: roll it back with aborted batches. Its ids
        // are forgotten after the dedupe retention.
        if let Some(store) = config.dedupe.clone() {
            expiry = expiry.of(&store, config.dedupe_retention, |_| true);
            stores.push(Arc::new(store));
        }
        if let Some(retry) = &config.retry_topic {
            stores.push(Arc::new(retry.store().clone()));
        }
        Ok(Self {
            consumer: Arc::new(consumer),
            shared: Arc::new(Shared {
                router,
                publisher,
                config,
                permits,
                stats: Arc::default(),
                monitor: monitor.clone(),
                shutdown,
                stores: std::sync::OnceLock::new(),
            }),
            transactional_producer,
            stores,
            partitions,
            assigned,
            expiry,
        })
    }

    /// Reloads `store` from its changelog whenever a transaction aborts, so memory never keeps
    /// a change that Kafka rolled back. Register every store the handlers write.
    #[must_use]
    pub fn reloads(mut self, store: impl Reload + 'static) -> Self {
        self.stores.push(Arc::new(store));
        self
    }

    /// Forgets what `expiry` says while it runs, publishing the tombstones (see
    /// [`crate::expiry`]).
    #[must_use]
    pub fn expires(mut self, expiry: crate::Expiry) -> Self {
        self.expiry = self.expiry.and(expiry);
        self
    }

    /// The processor's counters.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.shared.stats)
    }

    /// Consumes until `shutdown` is cancelled, then drains in-flight records (up to the drain
    /// timeout), commits what finished and leaves the group. In exactly-once mode it stops
    /// between batches; an unfinished batch is simply never committed.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let pruning = tokio::spawn(
            self.expiry
                .clone()
                .run(self.shared.publisher.clone(), shutdown.clone()),
        );
        let result = self.consume(shutdown).await;
        pruning.abort();
        result
    }

    async fn consume(self, shutdown: CancellationToken) -> Result<(), Error> {
        // Set once, here: `run` consumes the processor.
        let _ = self.shared.stores.set(self.stores.clone());
        if let Some(producer) = self.transactional_producer.clone() {
            let result = crate::exactly_once::run(
                Arc::clone(&self.consumer),
                Arc::clone(&self.shared),
                producer,
                self.stores.clone(),
                Arc::clone(&self.assigned),
                shutdown,
            )
            .await;
            self.shared.shutdown.cancel();
            return result;
        }
        let queues = Arc::new(Queues::default());
        let mut tasks = JoinSet::new();
        let max_in_flight = self.shared.config.max_in_flight;
        loop {
            let full = queues.in_flight.load(Ordering::SeqCst) >= max_in_flight;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(done) = tasks.join_next() => joined(done)?,
                () = queues.freed.notified(), if full => {}
                // An idle member still restores the state of partitions assigned meanwhile.
                () = tokio::time::sleep(crate::exactly_once::IDLE_WAKE) => {
                    self.rebalanced(&queues).await?;
                }
                received = self.consumer.recv(), if !full => match received {
                    Ok(message) => {
                        let record = Record::from_message(&message);
                        drop(message);
                        self.rebalanced(&queues).await?;
                        self.accept(&queues, &mut tasks, record);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error; continuing");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        self.drain(&queues, tasks).await
    }

    /// Drops queued records of revoked partitions (their next owner reads them from the
    /// commit) and, after an assignment, reloads the stores before the next record.
    async fn rebalanced(&self, queues: &Queues) -> Result<(), Error> {
        let revoked = self.partitions.take_revoked();
        if !revoked.is_empty() {
            queues.drop_queued(|key| revoked.contains(&(key.topic.clone(), key.partition)));
        }
        if self.assigned.swap(false, Ordering::SeqCst) && !self.stores.is_empty() {
            // Writes of records still running would be lost from memory by the reload: let
            // them (and what is queued behind them) finish first, within the drain timeout.
            let deadline = tokio::time::Instant::now() + self.shared.config.drain_timeout;
            while queues.in_flight.load(Ordering::SeqCst) > 0 {
                tokio::select! {
                    () = queues.freed.notified() => {}
                    () = tokio::time::sleep_until(deadline) => {
                        tracing::warn!("records still running when the stores reload after an assignment");
                        break;
                    }
                }
            }
            assign(&self.consumer, &self.stores).await?;
        }
        Ok(())
    }

    fn accept(&self, queues: &Arc<Queues>, tasks: &mut JoinSet<()>, record: Record) {
        let Some(epoch) = self
            .partitions
            .received(&(record.topic.clone(), record.partition), record.offset)
        else {
            tracing::debug!(topic = %record.topic, partition = record.partition, offset = record.offset, "record of a revoked partition; dropped");
            return;
        };
        queues.in_flight.fetch_add(1, Ordering::SeqCst);
        let key = KeyId::of(&record);
        let mut waiting = queues.lock();
        match waiting.get_mut(&key) {
            // The key is busy: the record waits behind its predecessors.
            Some(queue) => queue.push_back((record, epoch)),
            None => {
                waiting.insert(key.clone(), VecDeque::new());
                drop(waiting);
                tasks.spawn(chain(
                    Arc::clone(&self.shared),
                    Arc::clone(&self.partitions),
                    Arc::clone(&self.consumer),
                    Arc::clone(queues),
                    key,
                    (record, epoch),
                ));
            }
        }
    }

    async fn drain(self, queues: &Queues, mut tasks: JoinSet<()>) -> Result<(), Error> {
        self.shared.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + self.shared.config.drain_timeout;
        loop {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(done)) => joined(done)?,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        abandoned = queues.in_flight.load(Ordering::SeqCst),
                        "drain timeout: abandoning in-flight records; they are not committed and will be redelivered"
                    );
                    tasks.abort_all();
                    break;
                }
            }
        }
        let consumer = Arc::clone(&self.consumer);
        // A synchronous commit blocks on the broker: keep it off the executor.
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync))
                .await
                .map_err(|e| Error::Internal(format!("the final commit panicked: {e}")))?;
        if let Err(e) = committed {
            commit_failed(&self.shared.config.group_id, &e, "the final commit");
        }
        Ok(())
    }
}

/// Reports a failed commit of stored offsets. Nothing stored since the last commit is the
/// common case and says nothing; anything else means the next owner of those partitions
/// redoes what was handled since the last commit that went through, so it is a warning.
fn commit_failed(group: &str, error: &KafkaError, what: &str) {
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) {
        tracing::debug!(group, "{what}: nothing new to commit");
    } else {
        tracing::warn!(group, %error, "{what} failed: the next owner redoes what was handled since the last commit");
    }
}

/// The input partitions assigned now, and their numbers, after checking that every input
/// topic has the same numbers (co-partitioning), as owned stores need: their partition p is the
/// state of every input's partition p.
pub(crate) fn assignment(
    consumer: &StreamConsumer<GroupContext>,
    stores: &[Arc<dyn Reload>],
) -> Result<(std::collections::HashSet<Partition>, Vec<i32>), Error> {
    let list = consumer.assignment().map_err(|cause| Error::Client {
        what: "consumer",
        cause,
    })?;
    let owned: std::collections::HashSet<Partition> = list
        .elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect();
    let mut by_topic: HashMap<&str, std::collections::BTreeSet<i32>> = HashMap::new();
    for (topic, partition) in &owned {
        by_topic.entry(topic).or_default().insert(*partition);
    }
    let mut numbers: std::collections::BTreeSet<i32> = std::collections::BTreeSet::new();
    for set in by_topic.values() {
        numbers.extend(set);
    }
    if stores.iter().any(|s| s.is_owned())
        && let Some((topic, set)) = by_topic.iter().find(|(_, set)| **set != numbers)
    {
        return Err(Error::InvalidConfig {
            setting: "partitions",
            reason: format!(
                "the input topics are not co-partitioned: `{topic}` has partitions {set:?} \
                 assigned here, the others {numbers:?}; give every input topic and state \
                 changelog of the service the same partition count"
            ),
        });
    }
    Ok((owned, numbers.into_iter().collect()))
}

/// Restores every store for the partitions assigned now; returns them.
pub(crate) async fn assign(
    consumer: &StreamConsumer<GroupContext>,
    stores: &[Arc<dyn Reload>],
) -> Result<std::collections::HashSet<Partition>, Error> {
    let (owned, numbers) = assignment(consumer, stores)?;
    for store in stores {
        store.assign(&numbers).await?;
    }
    tracing::debug!(partitions = ?numbers, "state restored for the assigned partitions");
    Ok(owned)
}

/// `process` catches handler panics, so a failed join is a bug in the runtime itself; without
/// its offset the partition could never commit again, so stop loudly.
fn joined(done: Result<(), tokio::task::JoinError>) -> Result<(), Error> {
    done.map_err(|e| Error::Internal(format!("a record task failed: {e}")))
}

/// Keys with a running chain and the records queued behind it (with their partition's epoch),
/// shared by the consume loop and the chains.
#[derive(Default)]
struct Queues {
    waiting: std::sync::Mutex<HashMap<KeyId, VecDeque<(Record, u64)>>>,
    /// Records received and not finished: running or queued.
    in_flight: AtomicUsize,
    /// Signalled whenever a record stops being in flight.
    freed: tokio::sync::Notify,
}

impl Queues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, VecDeque<(Record, u64)>>> {
        // Every update is one push, pop or removal.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn release(&self, n: usize) {
        if n > 0 {
            self.in_flight.fetch_sub(n, Ordering::SeqCst);
            self.freed.notify_one();
        }
    }

    /// The key's next record still worth running; forgets the key when there is none.
    fn next(&self, key: &KeyId, current: impl Fn(u64) -> bool) -> Option<(Record, u64)> {
        let mut waiting = self.lock();
        let mut stale = 0;
        let next = loop {
            match waiting.get_mut(key).and_then(VecDeque::pop_front) {
                // Queued before its partition was revoked: its next owner reads it again.
                Some((_, epoch)) if !current(epoch) => stale += 1,
                Some(next) => break Some(next),
                None => {
                    waiting.remove(key);
                    break None;
                }
            }
        };
        drop(waiting);
        self.release(stale);
        next
    }

    /// Drops what is queued behind the keys `matching` picks (their chains end by themselves).
    fn drop_queued(&self, matching: impl Fn(&KeyId) -> bool) {
        let mut dropped = 0;
        for (key, queue) in self.lock().iter_mut() {
            if matching(key) {
                dropped += queue.len();
                queue.clear();
            }
        }
        self.release(dropped);
    }
}

/// Runs one key's records one after another: the first, then whatever queues up behind it,
/// storing each partition's commit position as records finish.
async fn chain(
    shared: Arc<Shared>,
    partitions: Arc<Partitions>,
    consumer: Arc<StreamConsumer<GroupContext>>,
    queues: Arc<Queues>,
    key: KeyId,
    first: (Record, u64),
) {
    let partition: Partition = (key.topic.clone(), key.partition);
    let (mut record, mut epoch) = first;
    loop {
        partitions.started(&partition, epoch);
        let offset = record.offset;
        let done = process(&shared, record).await;
        if done
            && let Some((_, Err(e))) =
                partitions.finished_storing(&partition, epoch, offset, |through| {
                    consumer.store_offset(&partition.0, partition.1, through)
                })
        {
            // The partition went away meanwhile; its new owner re-reads from the last
            // commit (at-least-once).
            tracing::debug!(topic = %partition.0, partition = partition.1, error = %e, "offset not stored");
        }
        // Only now may a revocation waiting for this partition commit.
        partitions.ended(&partition, epoch);
        queues.release(1);
        if !done {
            // Abandoned on shutdown: what queued behind it stays uncommitted too.
            queues.drop_queued(|k| *k == key);
            queues.next(&key, |_| false);
            return;
        }
        match queues.next(&key, |e| partitions.current(&partition, e)) {
            Some(next) => (record, epoch) = next,
            None => return,
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
        Ok(Route::Unknown { event_type }) => {
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

fn letter(shared: &Shared, record: &Record, error: &str, attempts: u32) -> Outgoing {
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

/// At-least-once: handles one record to the end — outputs published, parked on the retry
/// topic, or dead-lettered. Returns `false` when shutdown abandoned it uncommitted.
async fn process(shared: &Shared, record: Record) -> bool {
    let Some(retry) = &shared.config.retry_topic else {
        let disposition = handle(shared, &record).await;
        return conclude(shared, &record, disposition, Vec::new()).await;
    };
    if record.topic == retry.topic {
        return process_parked(shared, retry, record).await;
    }
    let park_key = record
        .key
        .as_deref()
        .map(|key| redelivery::park_key(&record.topic, key));
    // Later records of a parked key queue behind it on the retry topic.
    if let Some(change) = park_key.as_deref().and_then(|k| retry.join_if_parked(k)) {
        tracing::debug!(topic = %record.topic, offset = record.offset, "its key is parked; queued behind it");
        let now = chrono::Utc::now().timestamp_millis();
        let queued = redelivery::park(&record, &retry.topic, 0, now, None);
        return park_or_dead_letter(shared, &record, queued, change, "queueing it").await;
    }
    match handle(shared, &record).await {
        Disposition::Exhausted {
            error,
            redeliveries,
            ..
        } if redeliveries.unwrap_or(retry.redeliveries) > 0 => {
            let parked = park_after_failure(retry, &record, 1, &error);
            let change = park_key.as_deref().and_then(|k| retry.add(k));
            park_or_dead_letter(shared, &record, parked, change, &error).await
        }
        other => conclude(shared, &record, other, Vec::new()).await,
    }
}

/// Publishes a parked copy of `record` with the parked-key bookkeeping; if Kafka refuses, the
/// record is dead-lettered instead (never dropped).
async fn park_or_dead_letter(
    shared: &Shared,
    record: &Record,
    parked: Outgoing,
    change: Option<Outgoing>,
    why: &str,
) -> bool {
    let mut outputs = vec![parked];
    outputs.extend(change);
    match publish(shared, &outputs).await {
        Ok(_) => {
            count(shared, record, &Disposition::Parked);
            true
        }
        Err(e) => {
            let error = format!("{why}; parking it on the retry topic failed: {e}");
            let letter = letter(shared, record, &error, 1);
            conclude(shared, record, Disposition::DeadLetter(letter), Vec::new()).await
        }
    }
}

/// The retry-topic record for `record`, failed with `error`, as redelivery `attempt`.
fn park_after_failure(retry: &RetryTopic, record: &Record, attempt: u32, error: &str) -> Outgoing {
    let wait = retry.delay.backoff(attempt);
    let due = chrono::Utc::now().timestamp_millis()
        + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
    tracing::info!(topic = %record.topic, offset = record.offset, attempt, ?wait, %error, "parking on the retry topic");
    redelivery::park(record, &retry.topic, attempt, due, Some(error))
}

/// A record consumed from the retry topic: waits until it is due, then is handled as the
/// record it was, under its original topic.
async fn process_parked(shared: &Shared, retry: &RetryTopic, consumed: Record) -> bool {
    let unparked = match redelivery::unpark(&consumed) {
        Ok(unparked) => unparked,
        Err(error) => {
            let letter = letter(shared, &consumed, &error, 0);
            return conclude(
                shared,
                &consumed,
                Disposition::DeadLetter(letter),
                Vec::new(),
            )
            .await;
        }
    };
    let original = unparked.original;
    let park_key = original
        .key
        .as_deref()
        .map(|key| redelivery::park_key(&original.topic, key));
    if let Some(key) = &park_key {
        let (behind, change) = retry.behind_head(key, consumed.offset);
        if behind {
            // Its key's failing record was parked again after it: queue behind it once more.
            let again = redelivery::park(
                &original,
                &retry.topic,
                unparked.attempt,
                unparked.not_before,
                None,
            );
            return park_or_dead_letter(shared, &original, again, change, "re-queueing it").await;
        }
        if let Some(change) = change {
            bookkeep(shared, change).await;
        }
    }
    let wait = unparked.not_before - chrono::Utc::now().timestamp_millis();
    if let Ok(wait) = u64::try_from(wait)
        && wait > 0
    {
        tokio::select! {
            () = shared.shutdown.cancelled() => return false,
            () = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
    let disposition = handle(shared, &original).await;
    if let Disposition::Exhausted {
        error,
        redeliveries,
        ..
    } = &disposition
    {
        let next = unparked.attempt + 1;
        if next <= redeliveries.unwrap_or(retry.redeliveries) {
            // Parked again: the key still waits (its count stays); the record's new position
            // is the key's head, which the records queued behind it must follow.
            let again = park_after_failure(retry, &original, next, error);
            match publish(shared, std::slice::from_ref(&again)).await {
                Ok(delivered) => {
                    if let (Some(key), Some(at)) = (&park_key, delivered.first())
                        && let Some(change) = retry.moved_head(key, at.offset)
                    {
                        bookkeep(shared, change).await;
                    }
                    count(shared, &original, &Disposition::Parked);
                    return true;
                }
                Err(e) => {
                    let error = format!("{error}; parking it again failed: {e}");
                    let letter = letter(shared, &original, &error, next);
                    let change = park_key.as_deref().and_then(|k| retry.finished(k));
                    let done = Disposition::DeadLetter(letter);
                    return conclude(shared, &original, done, change.into_iter().collect()).await;
                }
            }
        }
        let error = format!("{error} (after {} redeliveries)", unparked.attempt);
        let letter = letter(shared, &original, &error, next);
        let change = park_key.as_deref().and_then(|k| retry.finished(k));
        let done = Disposition::DeadLetter(letter);
        return conclude(shared, &original, done, change.into_iter().collect()).await;
    }
    let change = park_key.as_deref().and_then(|k| retry.finished(k));
    conclude(shared, &original, disposition, change.into_iter().collect()).await
}

/// Publishes a retry-topic bookkeeping change on its own.
async fn bookkeep(shared: &Shared, change: Outgoing) {
    if let Err(e) = publish(shared, std::slice::from_ref(&change)).await {
        // Memory holds the change; only a restart before the next change could lose it, and
        // then records are at worst parked behind their key once more.
        tracing::warn!(error = %e, "could not record the retry topic's bookkeeping");
    }
}

/// Publishes a disposition together with `extra` state changes and counts it. Outputs Kafka
/// refuses dead-letter the record; a dead letter Kafka refuses is retried until shutdown,
/// which abandons the record uncommitted. Returns whether the record is finished.
async fn conclude(
    shared: &Shared,
    record: &Record,
    mut disposition: Disposition,
    extra: Vec<Outgoing>,
) -> bool {
    if let Disposition::Exhausted { letter, .. } = disposition {
        disposition = Disposition::DeadLetter(letter);
    }
    match &mut disposition {
        Disposition::Outputs(outputs) => {
            outputs.extend(extra);
            if let Err(e) = publish(shared, outputs).await {
                let error = format!("publishing the handler's output failed: {e}");
                disposition = Disposition::DeadLetter(letter(shared, record, &error, 1));
                // Not handled after all: forget its id, so a replay of the dead letter runs.
                if let (Some(store), Some(id)) =
                    (&shared.config.dedupe, shared.config.dedupe_key.of(record))
                    && store.get(&id).is_some()
                {
                    bookkeep(shared, store.delete(&id)).await;
                }
            }
        }
        _ => {
            for change in extra {
                bookkeep(shared, change).await;
            }
        }
    }
    // A dead letter is the last copy we will keep: if Kafka refuses it, say so and keep trying
    // (the key stalls, nothing is lost) until shutdown abandons it for redelivery.
    if let Disposition::DeadLetter(letter) = &disposition
        && let Err(e) = publish(shared, std::slice::from_ref(letter)).await
    {
        tracing::error!(error = %e, topic = %letter.topic, "the dead-letter topic refused the record");
        if !retry_until_shutdown(shared, letter).await {
            return false;
        }
    }
    count(shared, record, &disposition);
    true
}

/// Publishes outputs; waits out Kafka outages (with backoff) rather than failing the record.
async fn publish(shared: &Shared, outputs: &[Outgoing]) -> Result<Vec<Delivered>, PublishError> {
    let outage = RetryPolicy::unbounded(Duration::from_millis(200), Duration::from_secs(5));
    let mut attempt = 1;
    loop {
        match shared
            .publisher
            .send_all_sequenced(outputs, shared.stores())
            .await
        {
            Ok(delivered) => return Ok(delivered),
            Err(e) if e.is_unavailable() && !shared.shutdown.is_cancelled() => {
                tracing::warn!(error = %e, attempt, "Kafka unavailable while publishing; waiting");
                tokio::time::sleep(outage.backoff(attempt)).await;
                attempt = attempt.saturating_add(1);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Returns `true` once the letter is published, `false` when shutdown comes first.
async fn retry_until_shutdown(shared: &Shared, letter: &Outgoing) -> bool {
    let mut attempt = 1;
    while !shared.shutdown.is_cancelled() {
        tokio::time::sleep(RetryPolicy::default().backoff(attempt.min(8))).await;
        if publish(shared, std::slice::from_ref(letter)).await.is_ok() {
            return true;
        }
        attempt += 1;
    }
    false
}
