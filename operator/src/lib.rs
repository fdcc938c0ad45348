//! sagashop's operator: it reconciles [`KafkaTopic`] resources into real Kafka topics
//! ([`topics`]) and [`Saga`] resources into the topics, configuration and rollouts their
//! services need ([`sagas`]), one replica at a time ([`lease`]), with `/healthz`, `/readyz` and
//! `/metrics` ([`metrics`]). [`run`] is the whole operator; the binary parses flags and calls it.
//!
//! The custom resources: [`KafkaTopic`] (here) and [`Saga`] (defined with the saga it
//! describes, in `sagashop-saga`), both `sagashop.dev/v1alpha1`.
//!
//! Validation lives in the CRD schemas, so that a bad edit is refused by `kubectl apply`, not
//! discovered later in a status: minimums, enums, patterns, and CEL transition rules
//! (`partitions` never decreases, `topicName` and `replicas` never change once set, step names
//! of a saga are unique). `sagashop-operator crds` prints the definitions; the copies in
//! `charts/sagashop/crds/` are checked by a test to be current.

use std::sync::Arc;
use std::time::Duration;

use kube::CustomResourceExt;
use kube::runtime::events::{Recorder, Reporter};
use sagashop_kit::{KafkaConfig, Monitor};
use tokio_util::sync::CancellationToken;

pub mod admin;
pub mod context;
#[cfg(test)]
mod fixtures;
pub mod lease;
pub mod metrics;
pub mod sagas;
pub mod topics;

pub use context::Scope;

pub use sagashop_saga::definition::Saga;

pub use sagashop_saga::definition::Condition;
pub use topic::{DeletionPolicy, KafkaTopic, KafkaTopicSpec, KafkaTopicStatus};

#[allow(
    unreachable_pub,
    reason = "KubeSchema re-emits the spec in a private module to build its schema"
)]
mod topic {
    use std::collections::BTreeMap;

    use kube::{CustomResource, KubeSchema};
    use sagashop_saga::definition::Condition;
    use serde::{Deserialize, Serialize};

    /// What happens to the Kafka topic when its `KafkaTopic` is deleted.
    #[derive(
        Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
    )]
    pub enum DeletionPolicy {
        /// The topic is deleted with the resource.
        Delete,
        /// The topic (and its data) stays.
        #[default]
        Retain,
    }

    /// A Kafka topic, managed by the operator. Field names follow Strimzi's `KafkaTopic`; the
    /// resource's names do not (`sagashoptopics`, short `sst`), so both CRDs can be installed
    /// side by side and `kubectl get kafkatopics` stays Strimzi's.
    #[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[kube(
        group = "sagashop.dev",
        version = "v1alpha1",
        kind = "KafkaTopic",
        namespaced,
        plural = "sagashoptopics",
        singular = "sagashoptopic",
        shortname = "sst",
        status = "KafkaTopicStatus",
        printcolumn = r#"{"name":"Topic","type":"string","jsonPath":".status.topicName"}"#,
        printcolumn = r#"{"name":"Partitions","type":"integer","jsonPath":".spec.partitions"}"#,
        printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
        doc = "A Kafka topic managed by the sagashop operator"
    )]
    #[x_kube(
        validation = Rule::new("!has(oldSelf.topicName) || (has(self.topicName) && self.topicName == oldSelf.topicName)").message("topicName cannot change once set"),
        validation = Rule::new("self.replicas == oldSelf.replicas").message("replicas cannot change: Kafka cannot change a topic's replication factor in place"),
        validation = Rule::new("self.partitions >= oldSelf.partitions").message("partitions cannot decrease: Kafka can only add partitions"),
    )]
    #[serde(rename_all = "camelCase")]
    pub struct KafkaTopicSpec {
        /// The topic's name in Kafka (the resource's name when unset).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
        pub topic_name: Option<String>,
        /// Partitions (only ever raised).
        #[schemars(range(min = 1, max = 10000))]
        pub partitions: i32,
        /// Replicas of each partition (fixed at creation).
        #[serde(default = "one")]
        #[schemars(range(min = 1, max = 32767))]
        pub replicas: i32,
        /// Topic configuration (`cleanup.policy`, `retention.ms`, …); a key removed from here is
        /// reset to the broker's default.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub config: BTreeMap<String, String>,
        /// `Retain` (default) keeps the Kafka topic when the resource is deleted; `Delete` deletes it.
        #[serde(default)]
        pub deletion_policy: DeletionPolicy,
    }

    fn one() -> i32 {
        1
    }

    /// What the operator last saw and did.
    #[derive(
        Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
    )]
    #[serde(rename_all = "camelCase")]
    pub struct KafkaTopicStatus {
        /// `Ready` with reason and message.
        #[serde(default)]
        pub conditions: Vec<Condition>,
        /// The generation the status describes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub observed_generation: Option<i64>,
        /// The topic in Kafka.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub topic_name: Option<String>,
        /// Its partitions in Kafka.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub partitions: Option<i32>,
        /// Its replicas in Kafka.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub replicas: Option<i32>,
    }
}

/// The CRDs, in the order they are written, with the file name each goes to.
pub fn crds() -> Vec<(&'static str, String)> {
    let render = |crd| {
        serde_saphyr::to_string(&crd).unwrap_or_else(|e| {
            // Serializing a generated CRD cannot fail; if it did, the output says so.
            format!("# could not render the CRD: {e}\n")
        })
    };
    vec![
        (
            "sagashoptopics.sagashop.dev.yaml",
            render(KafkaTopic::crd()),
        ),
        ("sagas.sagashop.dev.yaml", render(Saga::crd())),
    ]
}

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Kafka, where the topics go.
    pub kafka: KafkaConfig,
    /// The namespaces it manages.
    pub scope: Scope,
    /// Objects of each kind reconciled at once.
    pub concurrency: u16,
    /// How often every object is reconciled even when nothing changed.
    pub resync: Duration,
    /// How long Kafka admin requests wait to be batched with others.
    pub batch_linger: Duration,
    /// Leader election; `None` runs without (one replica only).
    pub lease: Option<lease::LeaseConfig>,
    /// The name events are reported under (the pod name).
    pub instance: Option<String>,
}

/// Why the operator stopped other than by request.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Kafka's admin client could not be created.
    #[error(transparent)]
    Kafka(#[from] sagashop_kit::Error),
    /// Another replica took over: this one must not go on reconciling.
    #[error("lost the leader lease `{0}`; stopping so that only one replica reconciles")]
    LeaseLost(String),
    /// A controller's watch ended before shutdown: reconciling half the kinds is worse than
    /// a restart.
    #[error(
        "the {0} controller stopped before shutdown; exiting so that Kubernetes restarts the operator"
    )]
    ControllerEnded(&'static str),
}

/// Runs both reconcilers until `shutdown` (or until leadership is lost), reporting readiness
/// and metrics through `monitor`.
pub async fn run(
    client: kube::Client,
    config: OperatorConfig,
    monitor: &Monitor,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let metrics = Arc::new(metrics::Metrics::new(monitor));
    let ready = monitor.component("operator:leading-or-standby");
    let admin = admin::TopicAdmin::start(
        config.kafka.admin_client("operator")?,
        Arc::clone(&metrics),
        config.batch_linger,
        500,
    );
    let reporter = Reporter {
        controller: context::MANAGER.to_owned(),
        instance: config.instance.clone(),
    };
    let shared = Arc::new(
        context::Shared::new(
            client.clone(),
            admin,
            Recorder::new(client.clone(), reporter),
            Arc::clone(&metrics),
            config.scope.clone(),
            config.resync,
        )
        .reading(config.kafka.clone()),
    );
    // A standby is healthy and ready: it is doing its job, which is to wait.
    ready.set(true);
    let leadership = match config.lease.clone() {
        Some(lease) => match lease::acquire(client, lease, &shutdown).await {
            Some(held) => Some(held),
            None => return Ok(()),
        },
        None => None,
    };
    metrics.leader.set(1);
    let stop = shutdown.child_token();
    if let Some(held) = &leadership {
        let (lost, stop) = (held.lost.clone(), stop.clone());
        tokio::spawn(async move {
            lost.cancelled().await;
            stop.cancel();
        });
    }
    tracing::info!(scope = ?config.scope, concurrency = config.concurrency, "reconciling KafkaTopics and Sagas");
    let (a, b) = (stop.clone(), stop.clone());
    let ended = side_by_side(
        &stop,
        (
            "KafkaTopic",
            topics::run(Arc::clone(&shared), config.concurrency, async move {
                a.cancelled().await;
            }),
        ),
        (
            "Saga",
            sagas::run(Arc::clone(&shared), config.concurrency, async move {
                b.cancelled().await;
            }),
        ),
    )
    .await;
    metrics.leader.set(0);
    ready.set(false);
    let lost = leadership
        .as_ref()
        .is_some_and(|held| held.lost.is_cancelled());
    if let Some(held) = leadership {
        held.release().await;
    }
    if let Some(kind) = ended {
        return Err(RunError::ControllerEnded(kind));
    }
    if lost && !shutdown.is_cancelled() {
        let name = config.lease.map(|l| l.name).unwrap_or_default();
        return Err(RunError::LeaseLost(name));
    }
    Ok(())
}

/// Runs both controllers until `stop`; when one ends before `stop` (its watch stream ended:
/// a bug, or kube-rs giving up), stops the other and names the first, so that the process
/// exits instead of reconciling one kind and not the other.
async fn side_by_side(
    stop: &CancellationToken,
    (first, a): (&'static str, impl std::future::Future<Output = ()>),
    (second, b): (&'static str, impl std::future::Future<Output = ()>),
) -> Option<&'static str> {
    let ended = std::sync::Mutex::new(None);
    tokio::join!(
        watch(first, a, stop, &ended),
        watch(second, b, stop, &ended)
    );
    ended
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs one controller; if it ends before `stop`, records its name (the first one only) and
/// stops the rest.
async fn watch(
    name: &'static str,
    run: impl std::future::Future<Output = ()>,
    stop: &CancellationToken,
    ended: &std::sync::Mutex<Option<&'static str>>,
) {
    run.await;
    if !stop.is_cancelled() {
        tracing::error!(
            controller = name,
            "a controller stopped before shutdown; stopping the other"
        );
        ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(name);
        stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[tokio::test]
    async fn a_controller_that_ends_by_itself_stops_the_other_and_is_named() {
        let stop = CancellationToken::new();
        let (other_stopped, watched) = (stop.clone(), stop.clone());
        let ended = side_by_side(
            &stop,
            ("KafkaTopic", async {}),
            ("Saga", async move { watched.cancelled().await }),
        )
        .await;
        assert_eq!(ended, Some("KafkaTopic"));
        assert!(other_stopped.is_cancelled());

        let stop = CancellationToken::new();
        let (a, b) = (stop.clone(), stop.clone());
        stop.cancel();
        let ended = side_by_side(
            &stop,
            ("KafkaTopic", async move { a.cancelled().await }),
            ("Saga", async move { b.cancelled().await }),
        )
        .await;
        assert_eq!(ended, None, "both stopped as asked");
    }

    #[test]
    fn the_committed_crds_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sagashop/crds");
        for (file, yaml) in crds() {
            let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            assert!(
                committed == yaml,
                "charts/sagashop/crds/{file} is out of date; run \
                 `cargo run -p sagashop-operator -- crds --out charts/sagashop/crds`"
            );
        }
    }

    #[test]
    fn the_kafka_topic_crd_carries_its_rules_and_columns() {
        let crd = serde_json::to_string(&KafkaTopic::crd()).unwrap();
        for needle in [
            "self.partitions >= oldSelf.partitions",
            "self.replicas == oldSelf.replicas",
            "\"minimum\":1",
            "\"Retain\"",
            "\"shortNames\":[\"sst\"]",
            "\"plural\":\"sagashoptopics\"",
            "\"subresources\":{\"status\":{}}",
        ] {
            assert!(crd.contains(needle), "missing {needle}");
        }
    }
}
