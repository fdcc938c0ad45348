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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::kafka::IsolationLevel;
use crate::kafka::KafkaConfig;
use crate::monitor::Monitor;
use crate::partitions::{Partition, Partitions};
use crate::publisher::{Delivered, PublishError, Publisher};
use crate::record::Outgoing;
use crate::record::Record;
use crate::redelivery::{self, RetryTopic};
use crate::retry::RetryPolicy;
use crate::router::Router;
use crate::store::Reload;

use crate::group::{GroupContext, assign_when_reachable, commit_failed};
pub use crate::handling::{BusinessKey, DedupeKey, ProcessorConfig, Stats, StatsSnapshot};
use crate::handling::{Disposition, KeyId, Shared, count, handle, letter};
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
    expiry: crate::expiry::Expiry,
    /// Where the topics are waited for before subscribing.
    kafka: KafkaConfig,
    /// What the consumer subscribes to when it runs: the router's topics and the retry topic.
    topics: Vec<String>,
}

impl Processor {
    /// Creates the consumer of every topic the router handles (it subscribes when it
    /// [runs](Self::run)). It reports to `monitor` and declares the component
    /// `consumer:<group>`, ready once the group has assigned it partitions.
    pub fn new(
        kafka: &KafkaConfig,
        config: ProcessorConfig,
        router: Router,
        publisher: Publisher,
        monitor: &Monitor,
    ) -> Result<Self, Error> {
        check(&config)?;
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
        consumer_config.set("isolation.level", config.isolation_level.as_str());
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
        let permits = Semaphore::new(config.concurrency);
        let alive = monitor.heartbeat(format!("consumer:{}", config.group_id), config.stall_after);
        let mut stores: Vec<Arc<dyn Reload>> = Vec::new();
        let mut expiry = crate::expiry::Expiry::new();
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
                alive,
                stores: std::sync::OnceLock::new(),
            }),
            transactional_producer,
            stores,
            partitions,
            assigned,
            expiry,
            kafka: kafka.clone(),
            topics,
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
    pub fn expires(mut self, expiry: crate::expiry::Expiry) -> Self {
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
        let mut ending = Ending {
            alive: self.shared.alive.clone(),
            asked: false,
        };
        ending.alive.beat();
        let result = self.consume(shutdown.clone()).await;
        pruning.abort();
        ending.asked = result.is_ok() && shutdown.is_cancelled();
        result
    }

    async fn consume(self, shutdown: CancellationToken) -> Result<(), Error> {
        if !self.subscribe(&shutdown).await? {
            return Ok(());
        }
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
                Some(done) = tasks.join_next() => {
                    self.shared.alive.beat();
                    joined(done)?;
                }
                () = queues.freed.notified(), if full => self.shared.alive.beat(),
                // An idle member still restores the state of partitions assigned meanwhile.
                () = tokio::time::sleep(crate::exactly_once::IDLE_WAKE) => {
                    // Nothing in flight is nothing stuck; records in flight that never
                    // finish are a stall.
                    if queues.in_flight.load(Ordering::SeqCst) == 0 {
                        self.shared.alive.beat();
                    }
                    if !self.rebalanced(&queues, &shutdown).await? {
                        break;
                    }
                }
                received = self.consumer.recv(), if !full => match received {
                    Ok(message) => {
                        let record = Record::from_message(&message);
                        drop(message);
                        // Shutting down before the state was restored: the record is not
                        // committed, so it is redelivered.
                        if !self.rebalanced(&queues, &shutdown).await? {
                            break;
                        }
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

    /// Waits (up to [`crate::reader::TOPIC_WAIT`]) until every topic it consumes and every
    /// store's changelog exists, then subscribes; `false` when `shutdown` came first.
    ///
    /// In a fresh install the operator makes the topics while the services start. A member
    /// that joined its group knowing only some of them would be assigned partitions of those
    /// alone, whatever its peers knew: input topics assigned out of step (not co-partitioned),
    /// and state restored from a changelog that is not there yet.
    async fn subscribe(&self, shutdown: &CancellationToken) -> Result<bool, Error> {
        let mut needed = self.topics.clone();
        needed.extend(self.stores.iter().map(|s| s.changelog().to_owned()));
        needed.sort();
        needed.dedup();
        let wait = crate::reader::TOPIC_WAIT;
        if !crate::admin::wait_for_topics(&self.kafka, needed, wait, shutdown).await? {
            return Ok(false);
        }
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&topics)
            .map_err(|cause| Error::Client {
                what: "consumer",
                cause,
            })?;
        Ok(true)
    }

    /// Drops queued records of revoked partitions (their next owner reads them from the
    /// commit) and, after an assignment, reloads the stores before the next record (trying
    /// again while Kafka is away). `false` when `shutdown` came first.
    async fn rebalanced(
        &self,
        queues: &Queues,
        shutdown: &CancellationToken,
    ) -> Result<bool, Error> {
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
            let restored =
                assign_when_reachable(&self.consumer, &self.stores, shutdown, &self.shared.alive)
                    .await?;
            crate::handling::dead_letter_quarantined(&self.shared, &self.stores).await;
            return Ok(restored.is_some());
        }
        Ok(true)
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

/// Refuses settings no processor can run with.
fn check(config: &ProcessorConfig) -> Result<(), Error> {
    if config.concurrency == 0 || config.max_in_flight == 0 {
        return Err(Error::InvalidConfig {
            setting: "concurrency",
            reason: "concurrency and max in-flight must be at least 1".to_owned(),
        });
    }
    if config.transactional_id.is_some() && config.isolation_level != IsolationLevel::ReadCommitted
    {
        return Err(Error::InvalidConfig {
            setting: "isolation level",
            reason: "exactly-once mode reads committed data only (isolation.level=read_committed)"
                .to_owned(),
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
    Ok(())
}

/// `process` catches handler panics, so a failed join is a bug in the runtime itself; without
/// its offset the partition could never commit again, so stop loudly.
/// Tells liveness how the consume loop ended, however it did (a panic included): asked to
/// (at shutdown) or by itself, which fails `/healthz` until the process exits.
struct Ending {
    alive: crate::monitor::Heartbeat,
    asked: bool,
}

impl Drop for Ending {
    fn drop(&mut self) {
        if self.asked {
            self.alive.finish();
        } else {
            self.alive.stopped();
        }
    }
}

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

/// Parks a redelivered record that failed again (attempt `next`): the key still waits (its
/// count stays); the record's new position is the key's head, which the records queued behind
/// it must follow. Dead-letters it if it cannot be parked.
async fn park_again(
    shared: &Shared,
    retry: &RetryTopic,
    original: &Record,
    next: u32,
    error: &str,
    park_key: Option<&str>,
) -> bool {
    let again = park_after_failure(retry, original, next, error);
    match publish(shared, std::slice::from_ref(&again)).await {
        Ok(delivered) => {
            if let (Some(key), Some(at)) = (park_key, delivered.first())
                && let Some(change) = retry.moved_head(key, at.offset)
            {
                bookkeep(shared, change).await;
            }
            count(shared, original, &Disposition::Parked);
            true
        }
        Err(e) => {
            let error = format!("{error}; parking it again failed: {e}");
            let letter = letter(shared, original, &error, next);
            let change = park_key.and_then(|k| retry.finished(k));
            let done = Disposition::DeadLetter(letter);
            conclude(shared, original, done, change.into_iter().collect()).await
        }
    }
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
            return park_again(shared, retry, &original, next, error, park_key.as_deref()).await;
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
