//! Kafka admin calls for the operator, batched across resources.
//!
//! Many `KafkaTopic`s reconcile at once (an `apply` of a whole chart, a resync). Each asks "how
//! is my topic?" and maybe "create it": asked one by one that is two or three broker requests
//! per resource. [`TopicAdmin`] gathers the questions that arrive within a short linger window
//! and asks them together: one metadata request and one `DescribeConfigs` for every topic
//! described, one `CreateTopics` for every topic created. Rarer changes (partitions, config,
//! deletion) go straight through. Every broker request is counted in
//! `sagashop_operator_kafka_requests_total`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use sagashop_kit::admin::{Created, TopicSpec, TopicState};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// How long a broker request may take.
pub const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// A Kafka admin failure, shared by every resource of the batch it happened in.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct KafkaError(pub String);

impl From<sagashop_kit::Error> for KafkaError {
    fn from(e: sagashop_kit::Error) -> Self {
        Self(e.to_string())
    }
}

enum Request {
    Describe {
        name: String,
        reply: oneshot::Sender<Result<Option<TopicState>, KafkaError>>,
    },
    Create {
        spec: TopicSpec,
        reply: oneshot::Sender<Result<Created, KafkaError>>,
    },
}

/// The operator's admin client: batched describe and create, direct everything else.
#[derive(Clone)]
pub struct TopicAdmin {
    admin: Arc<AdminClient<DefaultClientContext>>,
    requests: mpsc::Sender<Request>,
    metrics: Arc<Metrics>,
}

impl TopicAdmin {
    /// Starts the batching task: requests arriving within `linger` of the first go together, up
    /// to `max_batch`. The task ends when every clone of the handle is dropped.
    pub fn start(
        admin: AdminClient<DefaultClientContext>,
        metrics: Arc<Metrics>,
        linger: Duration,
        max_batch: usize,
    ) -> Self {
        let admin = Arc::new(admin);
        let (requests, inbox) = mpsc::channel(max_batch.max(1) * 4);
        tokio::spawn(batches(
            Arc::clone(&admin),
            Arc::clone(&metrics),
            inbox,
            linger,
            max_batch.max(1),
        ));
        Self {
            admin,
            requests,
            metrics,
        }
    }

    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, KafkaError>>) -> Request,
    ) -> Result<T, KafkaError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(request(reply))
            .await
            .map_err(|_| KafkaError("the Kafka admin task has stopped".into()))?;
        answer
            .await
            .map_err(|_| KafkaError("the Kafka admin task dropped a request".into()))?
    }

    /// How `name` is in Kafka, or `None` when it does not exist.
    pub async fn describe(&self, name: &str) -> Result<Option<TopicState>, KafkaError> {
        let name = name.to_owned();
        self.ask(|reply| Request::Describe { name, reply }).await
    }

    /// Creates a topic; one that exists already is `Created::Existed`.
    pub async fn create(&self, spec: TopicSpec) -> Result<Created, KafkaError> {
        self.ask(|reply| Request::Create { spec, reply }).await
    }

    /// Raises a topic's partitions.
    pub async fn raise_partitions(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        self.metrics.kafka_request("create_partitions");
        Ok(
            sagashop_kit::admin::raise_partitions(&self.admin, name, partitions, KAFKA_TIMEOUT)
                .await?,
        )
    }

    /// Makes `config` the topic's whole own configuration.
    pub async fn replace_config(
        &self,
        name: &str,
        config: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), KafkaError> {
        self.metrics.kafka_request("alter_configs");
        Ok(sagashop_kit::admin::replace_config(&self.admin, name, config, KAFKA_TIMEOUT).await?)
    }

    /// Deletes a topic (gone already is fine).
    pub async fn delete(&self, name: &str) -> Result<(), KafkaError> {
        self.metrics.kafka_request("delete_topics");
        Ok(sagashop_kit::admin::delete_topic(&self.admin, name, KAFKA_TIMEOUT).await?)
    }
}

async fn batches(
    admin: Arc<AdminClient<DefaultClientContext>>,
    metrics: Arc<Metrics>,
    mut inbox: mpsc::Receiver<Request>,
    linger: Duration,
    max_batch: usize,
) {
    while let Some(first) = inbox.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + linger;
        while batch.len() < max_batch {
            match tokio::time::timeout_at(until, inbox.recv()).await {
                Ok(Some(request)) => batch.push(request),
                Ok(None) | Err(_) => break,
            }
        }
        let mut describes: Vec<(String, oneshot::Sender<_>)> = Vec::new();
        let mut creates: Vec<(TopicSpec, oneshot::Sender<_>)> = Vec::new();
        for request in batch {
            match request {
                Request::Describe { name, reply } => describes.push((name, reply)),
                Request::Create { spec, reply } => creates.push((spec, reply)),
            }
        }
        if !describes.is_empty() {
            describe_all(&admin, &metrics, describes).await;
        }
        if !creates.is_empty() {
            create_all(&admin, &metrics, creates).await;
        }
    }
}

type DescribeReply = oneshot::Sender<Result<Option<TopicState>, KafkaError>>;

async fn describe_all(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    metrics: &Metrics,
    describes: Vec<(String, DescribeReply)>,
) {
    let mut names: Vec<String> = describes.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    names.dedup();
    metrics.kafka_request("metadata");
    metrics.kafka_request("describe_configs");
    let found = sagashop_kit::admin::describe_topics(admin, &names, KAFKA_TIMEOUT)
        .await
        .map_err(KafkaError::from);
    for (name, reply) in describes {
        let answer = match &found {
            Ok(found) => Ok(found.get(&name).cloned()),
            Err(e) => Err(e.clone()),
        };
        // A reconciler that gave up waiting is not an error here.
        let _ = reply.send(answer);
    }
}

type CreateReply = oneshot::Sender<Result<Created, KafkaError>>;

async fn create_all(
    admin: &AdminClient<DefaultClientContext>,
    metrics: &Metrics,
    creates: Vec<(TopicSpec, CreateReply)>,
) {
    // Two resources may ask for one topic in one batch (a conflict being sorted out): ask once.
    let mut specs: Vec<TopicSpec> = Vec::new();
    for (spec, _) in &creates {
        if !specs.iter().any(|s| s.name == spec.name) {
            specs.push(spec.clone());
        }
    }
    metrics.kafka_request("create_topics");
    let results = sagashop_kit::admin::create_each(admin, &specs, KAFKA_TIMEOUT).await;
    let mut by_name: HashMap<String, Result<Created, KafkaError>> = match results {
        Ok(results) => results
            .into_iter()
            .map(|(name, r)| (name, r.map_err(KafkaError::from)))
            .collect(),
        Err(e) => {
            let e = KafkaError::from(e);
            specs
                .iter()
                .map(|s| (s.name.clone(), Err(e.clone())))
                .collect()
        }
    };
    for (spec, reply) in creates {
        let answer = by_name.get(&spec.name).cloned().unwrap_or_else(|| {
            Err(KafkaError(format!(
                "Kafka did not answer for topic `{}`",
                spec.name
            )))
        });
        // A second asker of the same topic sees it as existing, which it now does.
        if let Ok(Created::New) = &answer {
            by_name.insert(spec.name.clone(), Ok(Created::Existed));
        }
        let _ = reply.send(answer);
    }
}
