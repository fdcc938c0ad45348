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

/// [`assign`], tried again while Kafka is away: a rebalance during a broker outage must not
/// stop the service. No record of the new assignment is worked on until its state is
/// restored. `None` when `shutdown` comes first.
pub(crate) async fn assign_when_reachable(
    consumer: &StreamConsumer<GroupContext>,
    stores: &[Arc<dyn Reload>],
    shutdown: &CancellationToken,
    alive: &crate::monitor::Heartbeat,
) -> Result<Option<std::collections::HashSet<Partition>>, Error> {
    crate::retry::while_kafka_away(
        "restoring the state of the assigned partitions",
        shutdown,
        alive,
        || assign(consumer, stores),
    )
    .await
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::AtomicU32;

    use rdkafka::ClientConfig;

    use super::*;
    use crate::record::Outgoing;

    /// What a restore meets while the broker is away.
    fn away() -> Error {
        Error::Client {
            what: "consumer",
            cause: KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure),
        }
    }

    /// A store whose restore number `n` (from 0) fails with `fail(n)`, if that is an error.
    struct Failing {
        fail: fn(u32) -> Option<Error>,
        tried: AtomicU32,
    }

    impl Failing {
        fn new(fail: fn(u32) -> Option<Error>) -> Arc<Self> {
            Arc::new(Self {
                fail,
                tried: AtomicU32::new(0),
            })
        }
    }

    impl Reload for Failing {
        fn changelog(&self) -> &str {
            "failing"
        }

        fn reload(&self) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + '_>> {
            Box::pin(async { Ok(()) })
        }

        fn assign<'a>(
            &'a self,
            _: &'a [i32],
        ) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>> {
            let n = self.tried.fetch_add(1, Ordering::SeqCst);
            let result = (self.fail)(n).map_or(Ok(()), Err);
            Box::pin(async move { result })
        }

        fn is_owned(&self) -> bool {
            false
        }

        fn enqueue_current(&self, _: &Outgoing, _: &mut dyn FnMut(&Outgoing)) -> bool {
            false
        }
    }

    /// A consumer that never connects (nothing listens on port 9): its assignment is empty.
    fn consumer() -> StreamConsumer<GroupContext> {
        let monitor = Monitor::new();
        let context = GroupContext {
            group: "g".into(),
            ready: monitor.component("consumer:g".to_owned()),
            monitor,
            partitions: Arc::new(Partitions::default()),
            revoke_drain: None,
            shutdown: CancellationToken::new(),
            assigned: Arc::new(AtomicBool::new(false)),
        };
        ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("group.id", "g")
            .create_with_context(context)
            .unwrap()
    }

    #[tokio::test]
    async fn a_restore_while_kafka_is_away_is_tried_until_it_works() {
        let store = Failing::new(|n| (n < 3).then(away));
        let stores: Vec<Arc<dyn Reload>> = vec![store.clone()];
        let restored = assign_when_reachable(
            &consumer(),
            &stores,
            &CancellationToken::new(),
            &crate::monitor::Heartbeat::detached(),
        )
        .await
        .unwrap();
        assert!(restored.is_some());
        assert_eq!(store.tried.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn shutdown_ends_the_tries_and_a_bug_is_not_tried_again() {
        let stores: Vec<Arc<dyn Reload>> = vec![Failing::new(|_| Some(away()))];
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.cancel();
        });
        let restored = assign_when_reachable(
            &consumer(),
            &stores,
            &shutdown,
            &crate::monitor::Heartbeat::detached(),
        )
        .await;
        assert!(matches!(restored, Ok(None)));

        let broken = Failing::new(|_| Some(Error::Internal("a bug".into())));
        let stores: Vec<Arc<dyn Reload>> = vec![broken.clone()];
        let result = assign_when_reachable(
            &consumer(),
            &stores,
            &CancellationToken::new(),
            &crate::monitor::Heartbeat::detached(),
        )
        .await;
        assert!(matches!(result, Err(Error::Internal(_))));
        assert_eq!(broken.tried.load(Ordering::SeqCst), 1);
    }
}
