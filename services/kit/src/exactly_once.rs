//! Exactly-once processing: consume → handle → produce and commit the input offsets in one Kafka
//! transaction.
//!
//! Records are taken in batches (up to `batch_size`, or what arrives within `batch_linger`).
//! Within a batch keys still run concurrently and each key in order; every record's outputs and
//! dead letters are produced into the open transaction as soon as the record is done, and when
//! the whole batch is done its offsets are added with `send_offsets_to_transaction` and the
//! transaction commits. Readers with `isolation.level=read_committed` see a batch's outputs if
//! and only if its offsets are committed, so a crash anywhere means the batch is redone and its
//! first try is invisible.
//!
//! On any failure the transaction is aborted, the consumer rewinds to the committed offsets and
//! the batch is tried again after a backoff. A fenced or otherwise fatally broken producer is
//! replaced. librdkafka's transaction calls block, so they run on the blocking pool under a
//! watchdog timeout.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::group::GroupContext;
use crate::handling::{Disposition, KeyId, Shared, count, handle};
use crate::publisher::{PublishError, Publisher};
use crate::record::Record;
use crate::retry::RetryPolicy;
use crate::store::Reload;
use crate::transaction::{
    SHUTDOWN_GRACE, TxnError, abort, blocking, commit_now, grace_after, producer_when_reachable,
};

/// The longest `send_offsets_to_transaction` may take. It takes milliseconds, but when the
/// group coordinator's broker dies librdkafka 2.12 can wait for it past its own timeout
/// (confluentinc/librdkafka#5456, #5511): seen in the `broker-failover` fault, a payment member
/// stalled 35 s under the full transaction timeout, and sagas waiting on it gave up. The
/// watchdog then abandons the call and the producer is replaced (its `FindCoordinator` is
/// fresh), so the stall is about this long.
const OFFSETS_TIMEOUT: Duration = Duration::from_secs(5);

/// Transactions failed in a row after which the producer is replaced even when aborting worked.
const STUCK_AFTER: u32 = 3;

/// The transactional consume loop; returns when `shutdown` is cancelled between batches.
pub(crate) async fn run(
    consumer: Arc<StreamConsumer<GroupContext>>,
    shared: Arc<Shared>,
    producer_config: ClientConfig,
    stores: Vec<Arc<dyn Reload>>,
    assigned: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let timeout = shared.config.transaction_timeout;
    let alive = &shared.alive;
    let Some(mut txn) =
        producer_when_reachable(&producer_config, timeout, &shutdown, alive).await?
    else {
        return Ok(());
    };
    let failures = RetryPolicy::unbounded(Duration::from_millis(200), Duration::from_secs(10));
    let mut failed_in_a_row = 0;
    let mut owned = HashSet::new();
    loop {
        let mut batch = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            batch = next_batch(&consumer, &shared) => batch,
        };
        // Back from a batch, or from waiting a moment for one: not stuck.
        alive.beat();
        // The assignment changed: restore the state of the partitions owned now (another
        // member may have written it) and drop the rest.
        if assigned.swap(false, Ordering::SeqCst) {
            match crate::group::assign_when_reachable(&consumer, &stores, &shutdown, alive).await? {
                Some(now) => owned = now,
                None => break,
            }
            crate::handling::dead_letter_quarantined(&shared, &stores).await;
        }
        // Records fetched before a rebalance took their partition away: its new owner has them.
        batch.retain(|r| owned.contains(&(r.topic.clone(), r.partition)));
        if batch.is_empty() {
            continue;
        }
        // A batch stuck on a broker that went away must not hold up shutdown for long: after
        // the grace period the process leaves its transaction open, and the broker aborts it
        // (or the next owner's producer fences it), so the batch is redone elsewhere.
        let finished = tokio::select! {
            finished = run_batch(&consumer, &txn, &shared, &assigned, batch) => finished,
            () = grace_after(&shutdown) => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "shutting down with a transaction still open; the batch will be redone");
                break;
            }
        };
        match finished {
            Ok(done) => {
                failed_in_a_row = 0;
                for (record, disposition) in &done {
                    count(&shared, record, disposition);
                }
            }
            Err(e) => {
                failed_in_a_row += 1;
                tracing::warn!(error = %e, attempt = failed_in_a_row, "transaction failed; aborting and rewinding");
                count_abort(&shared);
                let fatal = e.is_fatal() || abort(&txn, timeout).await;
                // After a broker restart librdkafka can keep one partition's records waiting
                // for a leader it no longer finds in its metadata cache until they time out,
                // transaction after transaction (seen: 20 in a row over three minutes, the
                // outcome topic never acknowledging). A new producer starts from fresh metadata.
                let stuck = failed_in_a_row >= STUCK_AFTER;
                if fatal || stuck {
                    tracing::warn!(
                        fatal,
                        failed_in_a_row,
                        "replacing the transactional producer"
                    );
                    txn = match producer_when_reachable(&producer_config, timeout, &shutdown, alive)
                        .await?
                    {
                        Some(txn) => txn,
                        None => break,
                    };
                }
                if !forget_batch(&consumer, &stores, &assigned, timeout, &shutdown, alive).await? {
                    break;
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(failures.backoff(failed_in_a_row)) => {}
                }
            }
        }
    }
    Ok(())
}

/// Counts an aborted batch (`sagashop_transaction_aborts_total`).
fn count_abort(shared: &Shared) {
    let labels = crate::monitor::GroupLabels {
        group: shared.config.group_id.clone(),
    };
    let aborts = &shared.monitor.runtime.transaction_aborts;
    aborts.get_or_create(&labels).inc();
}

/// Forgets an aborted batch: handlers changed their stores in memory for it, so reload them
/// (after a rebalance the next batch restores the new assignment instead), and rewind the
/// consumer to the committed offsets, trying again while Kafka is away: no record is read
/// until it is back where the last commit left it. `false` when `shutdown` came first.
async fn forget_batch(
    consumer: &Arc<StreamConsumer<GroupContext>>,
    stores: &[Arc<dyn Reload>],
    assigned: &AtomicBool,
    timeout: Duration,
    shutdown: &CancellationToken,
    alive: &crate::monitor::Heartbeat,
) -> Result<bool, Error> {
    if !assigned.load(Ordering::SeqCst) {
        for store in stores {
            match store.reload().await {
                Ok(()) => {}
                // Kafka is away (what failed the batch, often): restore the whole assignment
                // before the next batch instead, trying until it is back.
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "reloading the stores after an abort failed; restoring them before the next batch");
                    assigned.store(true, Ordering::SeqCst);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    let rewound = crate::retry::while_kafka_away(
        "rewinding to the committed offsets",
        shutdown,
        alive,
        || rewind(consumer, timeout),
    )
    .await?;
    Ok(rewound.is_some())
}

/// Seeks every assigned partition back to its committed offset (or to the beginning where
/// nothing is committed yet, as `auto.offset.reset=earliest` would), dropping what was fetched
/// beyond it.
async fn rewind(
    consumer: &Arc<StreamConsumer<GroupContext>>,
    timeout: Duration,
) -> Result<(), Error> {
    let consumer = Arc::clone(consumer);
    blocking("rewind", timeout, move || {
        let assignment = consumer.assignment()?;
        if assignment.count() == 0 {
            return Ok(());
        }
        let committed = consumer.committed_offsets(assignment, timeout)?;
        let mut targets = TopicPartitionList::new();
        for partition in committed.elements() {
            let offset = match partition.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            targets.add_partition_offset(partition.topic(), partition.partition(), offset)?;
        }
        let sought = consumer.seek_partitions(targets, timeout)?;
        for partition in sought.elements() {
            partition.error()?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.into_error("consumer (rewinding to the committed offsets)"))
}

/// How long an idle member waits for a record before looking at its assignment again.
pub(crate) const IDLE_WAKE: Duration = Duration::from_millis(250);

/// Waits for one record, then takes what else arrives, up to the batch size: until no record
/// came for `batch_gap`, at most `batch_linger` after the first.
async fn next_batch(consumer: &StreamConsumer<GroupContext>, shared: &Shared) -> Vec<Record> {
    let mut batch = Vec::new();
    // An idle member still comes back now and then, so that state for partitions assigned
    // meanwhile is restored (their deadlines are due there) without waiting for a record.
    let Ok(received) = tokio::time::timeout(IDLE_WAKE, consumer.recv()).await else {
        return batch;
    };
    match received {
        Ok(message) => batch.push(Record::from_message(&message)),
        Err(e) => {
            tracing::warn!(error = %e, "consumer error; continuing");
            tokio::time::sleep(Duration::from_millis(100)).await;
            return batch;
        }
    }
    let first = tokio::time::Instant::now();
    let linger = first + shared.config.batch_linger;
    while batch.len() < shared.config.batch_size {
        let until = linger.min(tokio::time::Instant::now() + shared.config.batch_gap);
        match tokio::time::timeout_at(until, consumer.recv()).await {
            Ok(Ok(message)) => batch.push(Record::from_message(&message)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "consumer error; closing the batch");
                break;
            }
            Err(_) => break,
        }
    }
    observe(shared, "gather", first);
    batch
}

/// Records how long `phase` of a batch took (`sagashop_transaction_phase_seconds`): the
/// budget of one exactly-once hop.
fn observe(shared: &Shared, phase: &'static str, since: tokio::time::Instant) {
    let labels = crate::monitor::PhaseLabels {
        group: shared.config.group_id.clone(),
        phase,
    };
    let phases = &shared.monitor.runtime.transaction_phases;
    phases
        .get_or_create(&labels)
        .observe(since.elapsed().as_secs_f64());
}

/// A send into the open transaction whose acknowledgement is still to come, with its topic.
type Pending = (String, rdkafka::producer::DeliveryFuture);

/// Handles one key's records of a batch in order, producing each record's outputs (or dead
/// letter) into the open transaction as soon as it is done. Returns the sends unanswered: the
/// batch waits for them while its offsets go to the coordinator.
async fn handle_key(
    shared: Arc<Shared>,
    txn: FutureProducer,
    records: Vec<Record>,
) -> Result<(Vec<(Record, Disposition)>, Vec<Pending>), TxnError> {
    let mut done = Vec::with_capacity(records.len());
    let mut deliveries = Vec::new();
    for record in records {
        let disposition = handle(&shared, &record).await;
        let outputs = match &disposition {
            Disposition::Outputs(outputs) => outputs.as_slice(),
            Disposition::DeadLetter(letter) | Disposition::Exhausted { letter, .. } => {
                std::slice::from_ref(letter)
            }
            Disposition::Unknown | Disposition::Duplicate | Disposition::Parked => &[],
        };
        for out in outputs {
            let mut sent = None;
            let mut enqueue = |record: &crate::record::Outgoing| {
                sent = Some(
                    txn.send_result(Publisher::record(record))
                        .map_err(|(cause, _)| PublishError::classify(&record.topic, cause)),
                );
            };
            if !shared
                .stores()
                .iter()
                .any(|s| s.enqueue_current(out, &mut enqueue))
            {
                enqueue(out);
            }
            if let Some(sent) = sent {
                deliveries.push((out.topic.clone(), sent?));
            }
        }
        done.push((record, disposition));
    }
    Ok((done, deliveries))
}

/// Waits for every send of a batch to be acknowledged; the first failure fails the batch.
async fn answered(deliveries: Vec<Pending>) -> Result<(), TxnError> {
    for (topic, delivery) in deliveries {
        Publisher::answer(&topic, delivery.await)?;
    }
    Ok(())
}

/// One batch in one transaction.
async fn run_batch(
    consumer: &StreamConsumer<GroupContext>,
    txn: &FutureProducer,
    shared: &Arc<Shared>,
    assigned: &AtomicBool,
    batch: Vec<Record>,
) -> Result<Vec<(Record, Disposition)>, TxnError> {
    let timeout = shared.config.transaction_timeout;
    // The generation the batch was read in: should the group have moved on by the commit, the
    // broker refuses the offsets and the batch aborts (KIP-447).
    let group = consumer
        .group_metadata()
        .ok_or_else(|| TxnError::Internal("the consumer has no group metadata".into()))?;
    let begin = txn.clone();
    blocking("begin_transaction", timeout, move || {
        begin.begin_transaction()
    })
    .await?;

    let handling = tokio::time::Instant::now();
    let mut next_offsets: HashMap<(String, i32), i64> = HashMap::new();
    let mut by_key: HashMap<KeyId, Vec<Record>> = HashMap::new();
    for record in batch {
        let next = next_offsets
            .entry((record.topic.clone(), record.partition))
            .or_default();
        *next = (*next).max(record.offset + 1);
        by_key.entry(KeyId::of(&record)).or_default().push(record);
    }

    let mut tasks = JoinSet::new();
    for records in by_key.into_values() {
        let (shared, txn) = (Arc::clone(shared), txn.clone());
        tasks.spawn(handle_key(shared, txn, records));
    }
    let mut done = Vec::new();
    let mut deliveries = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (key_done, key_sends) =
            joined.map_err(|e| TxnError::Internal(format!("a record task failed: {e}")))??;
        done.extend(key_done);
        deliveries.extend(key_sends);
    }
    observe(shared, "handle", handling);

    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), next) in next_offsets {
        offsets
            .add_partition_offset(&topic, partition, Offset::Offset(next))
            .map_err(|e| TxnError::Kafka("building the offsets", e))?;
    }
    if assigned.load(Ordering::SeqCst) {
        // The group rebalanced while the batch ran: its partitions may have a new owner that
        // restored their state without this batch's changes. Redo it after restoring.
        return Err(TxnError::Internal(
            "the group rebalanced during the batch".into(),
        ));
    }
    // The offsets go to the coordinator while the outputs are still being acknowledged: the
    // two round trips overlap instead of adding up. Nothing commits until both are done, and
    // a failed send fails the batch as before.
    // Two calls, each under its own watchdog: together they may take twice the timeout.
    let send = txn.clone();
    let sending = tokio::time::Instant::now();
    let offsets_timeout = timeout.min(OFFSETS_TIMEOUT);
    let (offsets_sent, acknowledged) = tokio::join!(
        blocking("send_offsets_to_transaction", offsets_timeout, move || {
            send.send_offsets_to_transaction(&offsets, &group, offsets_timeout)
        }),
        answered(deliveries),
    );
    acknowledged?;
    offsets_sent?;
    observe(shared, "offsets", sending);
    let commit = txn.clone();
    let committing = tokio::time::Instant::now();
    blocking("commit_transaction", timeout, move || {
        commit_now(&commit, timeout)
    })
    .await?;
    observe(shared, "commit", committing);
    Ok(done)
}
