//! The KafkaTopic reconciler against the real API server and the real broker: create, raise
//! partitions, apply and revert configuration, refuse what Kafka cannot do, adopt, resolve
//! conflicts, honour the deletion policy and the `managed` annotation.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{WAIT, in_kafka, operator, spec, until_in_kafka};
use kube::api::{DeleteParams, Patch, PatchParams};
use sagashop_kit::admin::{TopicSpec, replace_config};
use sagashop_operator::DeletionPolicy;
use sagashop_testkit::{TestKafka, TestKube, eventually, unique_name};

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

    // Drift made outside the operator is reverted by the periodic resync alone (3 s here,
    // five minutes by default).
    let admin = kafka.config.admin_client("test").unwrap();
    let drift = BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned())]);
    replace_config(&admin, &topic, &drift, WAIT).await.unwrap();
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
    // Reported, not retried: a refusal is an answer, not a failure with backoff. Two resyncs
    // (3 s each here) later, no KafkaTopic reconciliation has failed.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let metrics = op.monitor.encode();
    let failed: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("sagashop_operator_reconcile_failures_total{") && l.contains("KafkaTopic")
        })
        .collect();
    assert!(
        failed.is_empty(),
        "refusals were retried as failures: {failed:?}"
    );
    assert!(
        metrics.contains(r#"sagashop_operator_reconciliations_total{kind="KafkaTopic"}"#),
        "the reconciliations are counted where the failures would be: {metrics}"
    );

    // Only Delete puts the finalizer on: a Retain resource goes without the operator (helm
    // uninstall removes the operator and the Saga's KafkaTopics at once).
    let adopted = op.api.get("adopted").await.unwrap();
    assert!(
        adopted.metadata.finalizers.unwrap_or_default().is_empty(),
        "a Retain KafkaTopic has a finalizer"
    );
    // Retain: deleting the resource keeps the topic.
    op.delete("adopted").await;
    assert!(
        in_kafka(&kafka, &existing).await.is_some(),
        "Retain deleted the topic"
    );
    op.stop(&kube).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_partitions_on_a_changelog_or_a_keyed_topic_are_refused_and_kafka_is_left_as_it_was() {
    let (kube, kafka) = (TestKube::connect().await, TestKafka::connect().await);
    let op = operator(&kube, &kafka).await;
    let changelog = unique_name("op-changelog");
    let mut compacted = spec(&changelog, 2, DeletionPolicy::Delete);
    compacted
        .config
        .insert("cleanup.policy".into(), "compact".into());
    op.create("changelog", compacted).await;
    op.reason("changelog", "Created").await;
    let keyed = unique_name("op-keyed");
    let mut annotated =
        sagashop_operator::KafkaTopic::new("keyed", spec(&keyed, 2, DeletionPolicy::Delete));
    annotated.metadata.annotations = Some(BTreeMap::from([(
        "sagashop.dev/partitioning".to_owned(),
        "keyed".to_owned(),
    )]));
    op.api
        .create(&kube::api::PostParams::default(), &annotated)
        .await
        .unwrap();
    op.reason("keyed", "Created").await;

    // What `helm upgrade --set saga.partitions=8 --set topics.partitions=8` does to them.
    let more = serde_json::json!({"spec": {"partitions": 8}});
    for name in ["changelog", "keyed"] {
        op.api
            .patch(name, &PatchParams::default(), &Patch::Merge(&more))
            .await
            .unwrap();
        let refused = op.reason(name, "PartitionsFixed").await;
        let ready = &refused.status.unwrap().conditions[0];
        assert_eq!(ready.status, "False");
        assert!(ready.message.contains("declare 2"), "{}", ready.message);
    }
    assert_eq!(in_kafka(&kafka, &changelog).await.unwrap().partitions, 2);
    assert_eq!(in_kafka(&kafka, &keyed).await.unwrap().partitions, 2);
    op.delete("changelog").await;
    op.delete("keyed").await;
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
