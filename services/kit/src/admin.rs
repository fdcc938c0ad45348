//! Topic administration: create what a service needs, batched, tolerant of what already exists.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    OwnedResourceSpecifier, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::kafka::KafkaConfig;

/// How often a changelog rolls a segment, and how long it keeps tombstones (a minute).
pub const CHANGELOG_SEGMENT_MS: &str = "60000";

/// `min.insync.replicas` of a topic with three or more replicas ([`TopicSpec::replicated`]).
pub const DURABLE_MIN_INSYNC: &str = "2";

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// The topic's name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor.
    pub replicas: i32,
    /// Topic configuration, e.g. `cleanup.policy=compact`.
    pub config: BTreeMap<String, String>,
}

impl TopicSpec {
    /// A topic with `partitions` partitions, one replica and the broker's default config.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replicas: 1,
            config: BTreeMap::new(),
        }
    }

    /// A state store's changelog: compacted, so Kafka keeps the latest record per key and drops
    /// keys whose latest record is a tombstone. Segments roll every minute (only closed
    /// segments are compacted) and tombstones stay a minute (longer than a restore takes; one
    /// that missed a tombstone would only bring back an expired entry, swept again), so what
    /// a restore reads stays proportional to the live state and a minute of writes, not to
    /// history.
    #[must_use]
    pub fn changelog(self) -> Self {
        self.with_config("cleanup.policy", "compact")
            .with_config("segment.ms", CHANGELOG_SEGMENT_MS)
            .with_config("delete.retention.ms", CHANGELOG_SEGMENT_MS)
    }

    /// With `replicas` replicas; three or more also set `min.insync.replicas=2`, so that a
    /// write acknowledged (`acks=all`) is on at least two brokers and survives losing any one,
    /// while one broker may be down (a rolling restart) without refusing writes. Fewer
    /// replicas keep the broker's default (one broker: a write is on that broker alone).
    #[must_use]
    pub fn replicated(mut self, replicas: i32) -> Self {
        self.replicas = replicas;
        if replicas >= 3 {
            self.config
                .entry("min.insync.replicas".to_owned())
                .or_insert_with(|| DURABLE_MIN_INSYNC.to_owned());
        }
        self
    }

    /// Sets one configuration entry.
    #[must_use]
    pub fn with_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }
}

/// What happened to one topic of a [`create_topics`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The topic did not exist and was created.
    New,
    /// The topic already existed; it was left as it was.
    Existed,
}

/// Creates every topic in one batched request; topics that already exist are reported, not
/// treated as errors. Fails on the first topic the broker refused, naming it and the reason.
pub async fn create_topics(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<(String, Created)>, Error> {
    create_each(admin, topics, timeout)
        .await?
        .into_iter()
        .map(|(name, result)| result.map(|created| (name, created)))
        .collect()
}

/// Creates every topic in one batched request and answers for each topic on its own: a topic
/// the broker refused does not fail the others. The outer error is the request's.
pub async fn create_each(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<(String, Result<Created, Error>)>, Error> {
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            t.config.iter().fold(
                NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replicas)),
                |topic, (k, v)| topic.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|cause| Error::Admin {
            action: "create topics",
            cause,
        })?;
    Ok(results
        .into_iter()
        .map(|result| match result {
            Ok(name) => (name, Ok(Created::New)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => (name, Ok(Created::Existed)),
            Err((topic, code)) => (topic.clone(), Err(Error::TopicRefused { topic, code })),
        })
        .collect())
}

/// Waits until every topic in `names` is in the cluster metadata with a leader for each
/// partition: a topic is usable a moment after its creation is acknowledged, not at once.
pub async fn wait_for_leaders(
    kafka: &KafkaConfig,
    names: Vec<String>,
    timeout: Duration,
) -> Result<(), Error> {
    let client = metadata_client(kafka)?;
    let waiting = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let missing = unusable(&client, &names, timeout)?;
            if missing.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Internal(format!(
                    "topics created but without partition leaders after {timeout:?}: {missing:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    waiting
        .await
        .map_err(|e| Error::Internal(format!("waiting for topic leaders panicked: {e}")))?
}

/// Waits up to `wait` until every topic in `names` exists with a leader for each partition,
/// saying once which ones it waits for: in a fresh install the operator makes the topics while
/// the services start. Past `wait` it is [`Error::missing_topic`] for the first one missing.
/// `false` when `shutdown` came first: the wait runs on a blocking thread, which would
/// otherwise hold the process's exit until it ends.
pub async fn wait_for_topics(
    kafka: &KafkaConfig,
    names: Vec<String>,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Result<bool, Error> {
    let client = metadata_client(kafka)?;
    let shutdown = shutdown.clone();
    let waiting = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut told = false;
        loop {
            if shutdown.is_cancelled() {
                return Ok(false);
            }
            let missing = match unusable(&client, &names, Duration::from_secs(10)) {
                Ok(missing) => missing,
                // Kafka away or slow: the same as a topic not there yet, within the wait.
                Err(e) if e.is_transient() && started.elapsed() < wait => names.clone(),
                Err(e) => return Err(e),
            };
            let Some(first) = missing.first() else {
                if told {
                    tracing::info!(waited = ?started.elapsed(), "the topics exist now");
                }
                return Ok(true);
            };
            if started.elapsed() >= wait {
                return Err(Error::missing_topic(first));
            }
            if !told {
                tracing::warn!(
                    ?missing,
                    "waiting for topics that do not exist yet (the operator makes them)"
                );
                told = true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    waiting
        .await
        .map_err(|e| Error::Internal(format!("waiting for topics panicked: {e}")))?
}

fn metadata_client(kafka: &KafkaConfig) -> Result<BaseProducer, Error> {
    kafka
        .admin("topic-metadata")
        .create()
        .map_err(|cause| Error::Client {
            what: "metadata client",
            cause,
        })
}

/// Which of `names` are not in the cluster metadata, or have a partition without a leader.
fn unusable(
    client: &BaseProducer,
    names: &[String],
    timeout: Duration,
) -> Result<Vec<String>, Error> {
    let metadata = client
        .client()
        .fetch_metadata(None, timeout)
        .map_err(|cause| Error::Admin {
            action: "read topic metadata",
            cause,
        })?;
    Ok(names
        .iter()
        .filter(|name| {
            !metadata.topics().iter().any(|t| {
                t.name() == name.as_str()
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                    && t.partitions()
                        .iter()
                        .all(|p| p.leader() >= 0 && p.error().is_none())
            })
        })
        .cloned()
        .collect())
}

/// A topic as it is in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    /// Partitions.
    pub partitions: i32,
    /// Replicas of partition 0 (the replication factor).
    pub replicas: i32,
    /// The configuration set on the topic itself (not broker defaults).
    pub config: BTreeMap<String, String>,
}

/// How `names` are in Kafka; topics that do not exist are absent from the answer. Two requests
/// whatever the number of names: one for metadata, one for the topics' configuration.
pub async fn describe_topics(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    names: &[String],
    timeout: Duration,
) -> Result<std::collections::HashMap<String, TopicState>, Error> {
    let client = Arc::clone(admin);
    let metadata =
        tokio::task::spawn_blocking(move || client.inner().fetch_metadata(None, timeout))
            .await
            .map_err(|e| Error::Internal(format!("reading topic metadata panicked: {e}")))?
            .map_err(|cause| Error::Admin {
                action: "read topic metadata",
                cause,
            })?;
    let mut found = std::collections::HashMap::new();
    for topic in metadata.topics() {
        if topic.error().is_some() || !names.iter().any(|n| n == topic.name()) {
            continue;
        }
        let replicas = topic
            .partitions()
            .iter()
            .find(|p| p.id() == 0)
            .map_or(0, |p| i32::try_from(p.replicas().len()).unwrap_or(i32::MAX));
        found.insert(
            topic.name().to_owned(),
            TopicState {
                partitions: i32::try_from(topic.partitions().len()).unwrap_or(i32::MAX),
                replicas,
                config: BTreeMap::new(),
            },
        );
    }
    if found.is_empty() {
        return Ok(found);
    }
    let specifiers: Vec<ResourceSpecifier<'_>> = found
        .keys()
        .map(|name| ResourceSpecifier::Topic(name.as_str()))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let described = admin
        .describe_configs(&specifiers, &options)
        .await
        .map_err(|cause| Error::Admin {
            action: "describe topic configs",
            cause,
        })?;
    let mut configs = Vec::new();
    for resource in described.into_iter().flatten() {
        if let OwnedResourceSpecifier::Topic(name) = &resource.specifier {
            let set: BTreeMap<String, String> = resource
                .entries
                .iter()
                .filter(|e| e.source == ConfigSource::DynamicTopic)
                .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                .collect();
            configs.push((name.clone(), set));
        }
    }
    for (name, set) in configs {
        if let Some(state) = found.get_mut(&name) {
            state.config = set;
        }
    }
    Ok(found)
}

/// Raises `topic` to `partitions` partitions.
pub async fn raise_partitions(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<(), Error> {
    let count = usize::try_from(partitions).unwrap_or(0);
    let request = [NewPartitions::new(topic, count)];
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_partitions(&request, &options)
        .await
        .map_err(|cause| Error::Admin {
            action: "create partitions",
            cause,
        })?;
    results.into_iter().try_for_each(|r| {
        r.map(|_| ())
            .map_err(|(topic, code)| Error::TopicRefused { topic, code })
    })
}

/// Makes `config` the whole of `topic`'s own configuration: keys it does not name go back to the
/// broker's defaults.
pub async fn replace_config(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    config: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<(), Error> {
    let alter = config.iter().fold(
        AlterConfig::new(ResourceSpecifier::Topic(topic)),
        |alter, (k, v)| alter.set(k, v),
    );
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let results = admin
        .alter_configs([&alter], &options)
        .await
        .map_err(|cause| Error::Admin {
            action: "alter topic config",
            cause,
        })?;
    results.into_iter().try_for_each(|r| {
        r.map(|_| ()).map_err(|(_, code)| Error::TopicRefused {
            topic: topic.to_owned(),
            code,
        })
    })
}

/// Deletes `topic`; a topic that is already gone is not an error.
pub async fn delete_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<(), Error> {
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .delete_topics(&[topic], &options)
        .await
        .map_err(|cause| Error::Admin {
            action: "delete topics",
            cause,
        })?;
    results.into_iter().try_for_each(|r| match r {
        Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => Ok(()),
        Err((topic, code)) => Err(Error::TopicRefused { topic, code }),
    })
}

/// How far a consumer group is behind on one topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicLag {
    /// The group.
    pub group: String,
    /// The topic it reads.
    pub topic: String,
    /// Records written and not yet committed by the group, over every partition (a partition
    /// the group never committed counts from its log start).
    pub lag: i64,
    /// Each partition's end offset, the group's committed offset (absent: never committed) and
    /// its lag.
    pub partitions: Vec<PartitionLag>,
}

/// One partition of a [`TopicLag`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionLag {
    /// The partition.
    pub partition: i32,
    /// The offset the next record will get.
    pub end: i64,
    /// Where the group will resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub committed: Option<i64>,
    /// `end - committed` (`end - log start` when nothing is committed).
    pub lag: i64,
}

/// How far `group` is behind on each of `topics` (name and partition count), read from the
/// group's committed offsets and the partitions' watermarks. It never joins the group: a
/// consumer that only asks, so it can be called while the group runs.
pub async fn group_lag(
    kafka: &KafkaConfig,
    group: &str,
    topics: &[(String, i32)],
    timeout: Duration,
) -> Result<Vec<TopicLag>, Error> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let mut config = kafka.consumer("lag", group);
    config.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().map_err(|cause| Error::Client {
        what: "consumer",
        cause,
    })?;
    let group = group.to_owned();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut wanted = rdkafka::TopicPartitionList::new();
        for (topic, partitions) in &topics {
            for p in 0..*partitions {
                wanted.add_partition(topic, p);
            }
        }
        let committed = consumer
            .committed_offsets(wanted, timeout)
            .map_err(|cause| Error::Admin {
                action: "read a group's committed offsets",
                cause,
            })?;
        let mut lags = Vec::new();
        for (topic, partitions) in &topics {
            let mut lag = TopicLag {
                group: group.clone(),
                topic: topic.clone(),
                lag: 0,
                partitions: Vec::new(),
            };
            for p in 0..*partitions {
                let (start, end) =
                    consumer
                        .fetch_watermarks(topic, p, timeout)
                        .map_err(|cause| Error::Admin {
                            action: "read a partition's watermarks",
                            cause,
                        })?;
                let at = committed
                    .find_partition(topic, p)
                    .and_then(|e| e.offset().to_raw())
                    .filter(|o| *o >= 0);
                let behind = (end - at.unwrap_or(start)).max(0);
                lag.lag += behind;
                lag.partitions.push(PartitionLag {
                    partition: p,
                    end,
                    committed: at,
                    lag: behind,
                });
            }
            lags.push(lag);
        }
        Ok(lags)
    })
    .await
    .map_err(|e| Error::Internal(format!("reading a group's lag panicked: {e}")))?
}
