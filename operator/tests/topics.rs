//! The KafkaTopic reconciler against the real API server and the real broker: create, raise
//! partitions, apply and revert configuration, refuse what Kafka cannot do, adopt, resolve
//! conflicts, honour the deletion policy and the `managed` annotation.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use sagashop_kit::admin::{TopicSpec, TopicState, describe_topics, replace_config};
use sagashop_operator::{DeletionPolicy, KafkaTopic, KafkaTopicSpec};
use sagashop_testkit::{TestKafka, TestKube, eventually, unique_name};

const WAIT: Duration = Duration::from_secs(60);

struct Operator {
    api: Api<KafkaTopic>,
    namespace: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn operator(kube: &TestKube, kafka: &TestKafka) -> Operator {
    // The operator's own account of what it did, shown when a test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("sagashop_operator=debug,info")
        .with_test_writer()
        .try_init();
    let output = kube
        .kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sagashop/crds"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let wait = kube
        .kubectl()
        .args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/kafkatopics.sagashop.dev",
        ])
        .output()
        .unwrap();
    assert!(wait.status.success());
    let namespace = kube.namespace("topics").await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (client, config, ns) = (kube.client.clone(), kafka.config.clone(), namespace.clone());
    let task = tokio::spawn(async move {
        sagashop_operator::topics::run(client, config, Some(ns), 4, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Operator {
        api: Api::namespaced(kube.client.clone(), &namespace),
        namespace,
        stop,
        task,
    }
}

impl Operator {
    async fn stop(self, kube: &TestKube) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
        // Finalizers of what is left would hold the namespace: let them go first.
        for topic in self.api.list(&Default::default()).await.unwrap() {
            let name = topic.metadata.name.clone().unwrap();
            let patch = serde_json::json!({"metadata": {"finalizers": []}});
            let _ = self
                .api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
        kube.delete_namespace(&self.namespace).await;
    }

    async fn create(&self, name: &str, spec: KafkaTopicSpec) {
        self.api
            .create(&PostParams::default(), &KafkaTopic::new(name, spec))
            .await
            .unwrap();
    }

    /// Deletes a resource and waits until it is gone (its finalizer done).
    async fn delete(&self, name: &str) {
        self.api
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        eventually(&format!("{name} to go"), WAIT, || async {
            self.api
                .get_opt(name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
    }

    /// Waits until the resource's Ready condition has `reason`; returns the resource.
    async fn reason(&self, name: &str, reason: &str) -> KafkaTopic {
        let api = self.api.clone();
        eventually(&format!("{name} to report {reason}"), WAIT, || {
            let api = api.clone();
            async move {
                let r = api.get(name).await.ok()?;
                let ready = r
                    .status
                    .as_ref()?
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Ready")?;
                (ready.reason == reason).then_some(r)
            }
        })
        .await
    }
}

fn spec(topic: &str, partitions: i32, policy: DeletionPolicy) -> KafkaTopicSpec {
    KafkaTopicSpec {
        topic_name: Some(topic.to_owned()),
        partitions,
        replicas: 1,
        config: BTreeMap::new(),
        deletion_policy: policy,
    }
}

async fn in_kafka(kafka: &TestKafka, topic: &str) -> Option<TopicState> {
    let admin = kafka.config.admin_client("test").unwrap();
    describe_topics(&kafka.config, &admin, &[topic.to_owned()], WAIT)
        .await
        .unwrap()
        .remove(topic)
}

async fn until_in_kafka(kafka: &TestKafka, topic: &str, check: impl Fn(&TopicState) -> bool) {
    eventually(&format!("{topic} in Kafka"), WAIT, || async {
        in_kafka(kafka, topic)
            .await
            .filter(|s| check(s))
            .map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_is_created_raised_configured_reverted_and_deleted_as_declared() {
    let (kube, kafka) = (TestKube::connect().await, TestKafka::connect().await);
    let op = operator(&kube, &kafka).await;
    let topic = unique_name("op-orders");
    op.create("orders", spec(&topic, 2, DeletionPolicy::Delete))
        .await;
    let created = op.reason("orders", "Created").await;
    assert_eq!(created.status.unwrap().partitions, Some(2));
    until_in_kafka(&kafka, &topic, |s| s.partitions == 2).await;

    let patch =
        serde_json::json!({"spec": {"partitions": 5, "config": {"retention.ms": "3600000"}}});
    op.api
        .patch("orders", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    until_in_kafka(&kafka, &topic, |s| {
        s.partitions == 5 && s.config.get("retention.ms").map(String::as_str) == Some("3600000")
    })
    .await;

    // Drift made outside the operator is reverted on the next reconcile (a spec touch here,
    // the five-minute resync in production).
    let admin = kafka.config.admin_client("test").unwrap();
    let drift = BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned())]);
    replace_config(&admin, &topic, &drift, WAIT).await.unwrap();
    let touch = serde_json::json!({"metadata": {"labels": {"touched": "yes"}}});
    op.api
        .patch("orders", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
    until_in_kafka(&kafka, &topic, |s| {
        s.config.get("retention.ms").map(String::as_str) == Some("3600000")
    })
    .await;

    op.api
        .delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the topic to be deleted with its resource",
        WAIT,
        || async { in_kafka(&kafka, &topic).await.is_none().then_some(()) },
    )
    .await;
    op.stop(&kube).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_topics_are_adopted_and_what_kafka_cannot_do_is_reported_not_retried() {
    let (kube, kafka) = (TestKube::connect().await, TestKafka::connect().await);
    let op = operator(&kube, &kafka).await;
    let existing = unique_name("op-existing");
    kafka.create(TopicSpec::new(&existing, 3)).await;

    op.create("adopted", spec(&existing, 3, DeletionPolicy::Retain))
        .await;
    op.reason("adopted", "Adopted").await;

    let fewer = unique_name("op-fewer");
    kafka.create(TopicSpec::new(&fewer, 6)).await;
    op.create("fewer", spec(&fewer, 2, DeletionPolicy::Retain))
        .await;
    let refused = op.reason("fewer", "PartitionDecrease").await;
    let message = &refused.status.unwrap().conditions[0].message;
    assert!(message.contains("declare at least 6"), "{message}");
    assert_eq!(in_kafka(&kafka, &fewer).await.unwrap().partitions, 6);

    let mut wider = spec(&unique_name("op-wider"), 1, DeletionPolicy::Retain);
    kafka
        .create(TopicSpec::new(wider.topic_name.clone().unwrap(), 1))
        .await;
    wider.replicas = 3;
    op.create("wider", wider).await;
    op.reason("wider", "ReplicationFactorMismatch").await;

    // Retain: deleting the resource keeps the topic.
    op.delete("adopted").await;
    assert!(
        in_kafka(&kafka, &existing).await.is_some(),
        "Retain deleted the topic"
    );
    op.stop(&kube).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_claim_conflicts_and_inherits_the_topic_when_the_owner_goes() {
    let (kube, kafka) = (TestKube::connect().await, TestKafka::connect().await);
    let op = operator(&kube, &kafka).await;
    let topic = unique_name("op-shared");
    op.create("first", spec(&topic, 2, DeletionPolicy::Delete))
        .await;
    op.reason("first", "Created").await;
    // Created a second later: the younger claim conflicts.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    op.create("second", spec(&topic, 2, DeletionPolicy::Delete))
        .await;
    let conflict = op.reason("second", "ResourceConflict").await;
    assert!(
        conflict.status.unwrap().conditions[0]
            .message
            .contains("first")
    );

    // The owner goes with deletionPolicy Delete: the topic is handed over, not deleted.
    op.delete("first").await;
    assert!(
        in_kafka(&kafka, &topic).await.is_some(),
        "the topic was deleted under its heir"
    );
    op.reason("second", "Adopted").await;

    // Unmanaged: the finalizer goes, the topic stays, deleting the resource deletes nothing.
    let unmanage =
        serde_json::json!({"metadata": {"annotations": {"sagashop.dev/managed": "false"}}});
    op.api
        .patch("second", &PatchParams::default(), &Patch::Merge(&unmanage))
        .await
        .unwrap();
    let unmanaged = op.reason("second", "Unmanaged").await;
    assert!(unmanaged.metadata.finalizers.unwrap_or_default().is_empty());
    op.api
        .delete("second", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        in_kafka(&kafka, &topic).await.is_some(),
        "an unmanaged topic was deleted"
    );
    op.stop(&kube).await;
}
