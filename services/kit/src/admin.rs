//! Topic administration: create what a service needs, batched, tolerant of what already exists.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::{Error, KafkaConfig};

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
    results
        .into_iter()
        .map(|result| match result {
            Ok(name) => Ok((name, Created::New)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => Ok((name, Created::Existed)),
            Err((topic, code)) => Err(Error::TopicRefused { topic, code }),
        })
        .collect()
}

/// Waits until every topic in `names` is in the cluster metadata with a leader for each
/// partition: a topic is usable a moment after its creation is acknowledged, not at once.
pub async fn wait_for_leaders(
    kafka: &KafkaConfig,
    names: Vec<String>,
    timeout: Duration,
) -> Result<(), Error> {
    let client: BaseProducer =
        kafka
            .admin("topic-metadata")
            .create()
            .map_err(|cause| Error::Client {
                what: "metadata client",
                cause,
            })?;
    let waiting = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let metadata = client
                .client()
                .fetch_metadata(None, timeout)
                .map_err(|cause| Error::Admin {
                    action: "read topic metadata",
                    cause,
                })?;
            let missing: Vec<&String> = names
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
                .collect();
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
