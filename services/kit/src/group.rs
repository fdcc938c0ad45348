//! Consumer group membership: readiness and lag from librdkafka's callbacks, the bounded drain
//! before a revocation, and restoring state stores for the partitions assigned.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::monitor::{GroupLabels, Monitor, PartitionLabels, ReadyFlag};
use crate::partitions::{Partition, Partitions};
use crate::store::Reload;

/// The consumer's view of group membership: ready once the group assigned us partitions.
pub(crate) struct GroupContext {
    pub(crate) group: String,
    pub(crate) ready: ReadyFlag,
    pub(crate) monitor: Monitor,
    /// At-least-once mode: what is running per partition, and how long a revoked partition's
    /// running records may take to finish before it is committed and let go.
    pub(crate) partitions: Arc<Partitions>,
    pub(crate) revoke_drain: Option<Duration>,
    /// After shutdown drained, a revocation (the consumer closing) has nothing to wait for.
    pub(crate) shutdown: CancellationToken,
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

/// Reports a failed commit of stored offsets. Nothing stored since the last commit is the
/// common case and says nothing; anything else means the next owner of those partitions
/// redoes what was handled since the last commit that went through, so it is a warning.
pub(crate) fn commit_failed(group: &str, error: &KafkaError, what: &str) {
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
