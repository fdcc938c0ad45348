//! The Saga reconciler against the real API server and the real broker: the shipped saga,
//! applied with `kubectl`, becomes KafkaTopics, real topics, a ConfigMap and a rolled
//! Deployment; an invalid one is reported, not acted on.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use common::{WAIT, config_hash, in_kafka, kubectl, operator};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use sagashop_kit::{Outgoing, Publisher};
use sagashop_operator::{KafkaTopic, Saga};
use sagashop_saga::definition::VersionStatus;
use sagashop_saga::versions::VersionRecord;
use sagashop_testkit::{TestKafka, TestKube, eventually, unique_name};
use serde_json::json;

/// The shipped saga with every topic renamed to be unique to this test run.
fn unique_saga(run: &str, deployment: &str) -> String {
    let shipped = include_str!("../../k8s/sagas/order-fulfilment.yaml");
    let mut saga: serde_json::Value = serde_saphyr::from_str(shipped).unwrap();
    let spec = &mut saga["spec"];
    let rename = |v: &mut serde_json::Value| *v = json!(format!("{run}.{}", v.as_str().unwrap()));
    rename(&mut spec["trigger"]["topic"]);
    rename(&mut spec["outcome"]["topic"]);
    rename(&mut spec["replyTopic"]);
    for p in spec["participants"].as_array_mut().unwrap() {
        rename(&mut p["commandTopic"]);
    }
    spec["deployments"] = json!([deployment]);
    serde_json::to_string(&saga).unwrap()
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "sagashop:test"}]}
            }
        }
    }))
    .unwrap()
}

fn condition(saga: &Saga, type_: &str) -> Option<(String, String, String)> {
    saga.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_saga_gets_its_topics_config_and_rollout_and_reports_ready() {
    let (kube, kafka) = (TestKube::connect().await, TestKafka::connect().await);
    let op = operator(&kube, &kafka).await;
    let ns = op.namespace.clone();
    let run = unique_name("saga");
    let deployments: Api<Deployment> = Api::namespaced(kube.client.clone(), &ns);
    deployments
        .create(&PostParams::default(), &deployment("orchestrator"))
        .await
        .unwrap();

    let manifest = std::env::temp_dir().join(format!("{run}.json"));
    std::fs::write(&manifest, unique_saga(&run, "orchestrator")).unwrap();
    kubectl(
        &kube,
        &["apply", "-n", &ns, "-f", manifest.to_str().unwrap()],
    );

    let sagas: Api<Saga> = Api::namespaced(kube.client.clone(), &ns);
    let ready = eventually("the saga to be Ready", WAIT, || async {
        let saga = sagas.get("order-fulfilment").await.ok()?;
        (condition(&saga, "Ready")?.0 == "True").then_some(saga)
    })
    .await;
    let status = ready.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Ready"));
    assert_eq!(status.topics.len(), 12, "{:?}", status.topics);
    assert_eq!(condition(&ready, "TopicsReady").unwrap().0, "True");
    assert_eq!(condition(&ready, "ConfigReady").unwrap().0, "True");

    // Every topic is a KafkaTopic owned by the saga, and a real topic in Kafka.
    let topics: Api<KafkaTopic> = Api::namespaced(kube.client.clone(), &ns);
    let trigger = format!("{run}.orders.v1");
    let owned = topics.get(&trigger).await.unwrap();
    assert_eq!(
        owned.metadata.owner_references.unwrap()[0].uid,
        ready.metadata.uid.clone().unwrap()
    );
    for topic in &status.topics {
        assert!(
            in_kafka(&kafka, topic).await.is_some(),
            "{topic} not in Kafka"
        );
    }
    let state = in_kafka(&kafka, "saga.order-fulfilment.state")
        .await
        .unwrap();
    assert_eq!(
        state.config.get("cleanup.policy").map(String::as_str),
        Some("compact")
    );

    // Kubernetes events say what happened, and the metrics count it.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(kube.client.clone(), &ns);
    eventually("events for the saga and its topics", WAIT, || async {
        let reasons: Vec<String> = events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        (reasons.iter().any(|r| r == "Created") && reasons.iter().any(|r| r == "Ready"))
            .then_some(())
    })
    .await;
    let metrics = op.monitor.encode();
    for needle in [
        "sagashop_operator_reconciliations_total{kind=\"Saga\"} ",
        "sagashop_operator_objects{kind=\"KafkaTopic\",ready=\"True\"} 12",
        "sagashop_operator_kafka_requests_total{request=\"create_topics\"} ",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(needle)),
            "no line starts with {needle} in\n{metrics}"
        );
    }
    // Every operator metric the chart's dashboard and alerts query is one it exposes.
    let exposed = sagashop_testkit::metrics::exposed(&op.monitor.catalogue());
    let missing: Vec<_> = sagashop_testkit::metrics::chart_queries()
        .into_iter()
        .filter(|name| name.starts_with("sagashop_operator_") && !exposed.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard or alerts query {missing:?}, which the operator does not expose"
    );

    // The ConfigMap holds the consumer configuration; the Deployment carries its hash.
    let config_maps: Api<ConfigMap> = Api::namespaced(kube.client.clone(), &ns);
    let config = config_maps.get("saga-order-fulfilment").await.unwrap();
    let data = config.data.unwrap();
    let inventory: serde_json::Value = serde_json::from_str(&data["inventory.json"]).unwrap();
    assert_eq!(inventory["groupId"], "inventory");
    assert_eq!(
        inventory["topics"]["commands"],
        json!(format!("{run}.inventory.commands.v1"))
    );
    assert_eq!(inventory["inputs"], json!(["commands", "slips"]));
    assert_eq!(inventory["isolationLevel"], "read_committed");
    let hash = status.config_hash.clone().unwrap();
    let rolled = deployments.get("orchestrator").await.unwrap();
    assert_eq!(config_hash(&rolled), Some(hash.clone()));

    // A changed step rolls the Deployment to the new configuration.
    let patch = json!({"spec": {"steps": [
        {"name": "reserve-inventory", "participant": "inventory", "command": "ReserveInventory",
         "compensation": "ReleaseInventory", "timeout": "7s"},
        {"name": "authorize-payment", "participant": "payment", "command": "AuthorizePayment",
         "compensation": "RefundPayment", "timeout": "5s"},
        {"name": "create-shipment", "participant": "shipping", "command": "CreateShipment",
         "compensation": "CancelShipment", "timeout": "5s"}
    ]}});
    sagas
        .patch(
            "order-fulfilment",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    eventually("the Deployment to roll to the new hash", WAIT, || async {
        let d = deployments.get("orchestrator").await.ok()?;
        let now = config_hash(&d)?;
        (now != hash).then_some(())
    })
    .await;

    // The versions the orchestrators publish, with their instances, reach the status: the
    // edited spec's first, the first spec's while instances still run on it, until retired.
    let first: Saga = serde_json::from_str(&unique_saga(&run, "orchestrator")).unwrap();
    let first = first.spec.validate("order-fulfilment").unwrap();
    let edited = sagas.get("order-fulfilment").await.unwrap();
    let edited = edited.spec.validate("order-fulfilment").unwrap();
    assert_ne!(
        first.version, edited.version,
        "a changed step is a new version"
    );
    let record = |d: &sagashop_saga::Definition, instances: Option<usize>| Outgoing {
        topic: d.versions_topic.clone(),
        key: Some(d.version.clone().into_bytes()),
        partition: None,
        payload: instances.map(|n| {
            serde_json::to_vec(&VersionRecord {
                saga: d.name.clone(),
                version: d.version.clone(),
                spec: d.spec.clone(),
                published_at: chrono::Utc::now(),
                instances: Some(n),
            })
            .unwrap()
        }),
        headers: vec![],
    };
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    publisher
        .send_all(&[record(&first, Some(2)), record(&edited, Some(5))])
        .await
        .unwrap();
    let shown = |versions: &[VersionStatus]| -> Vec<(String, bool, Option<i64>)> {
        versions
            .iter()
            .filter(|v| v.version == first.version || v.version == edited.version)
            .map(|v| (v.version.clone(), v.current, v.instances))
            .collect()
    };
    let both = vec![
        (edited.version.clone(), true, Some(5)),
        (first.version.clone(), false, Some(2)),
    ];
    eventually(
        "the status to show both versions with their instances",
        WAIT,
        || async {
            let saga = sagas.get("order-fulfilment").await.ok()?;
            (shown(&saga.status?.versions) == both).then_some(())
        },
    )
    .await;
    publisher.send_all(&[record(&first, None)]).await.unwrap();
    eventually("the status to drop the retired version", WAIT, || async {
        let saga = sagas.get("order-fulfilment").await.ok()?;
        (shown(&saga.status?.versions) == both[..1]).then_some(())
    })
    .await;
    op.stop(&kube).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_the_schema_accepts_but_validation_refuses_is_reported_and_not_acted_on() {
    let (kube, kafka) = (TestKube::connect().await, TestKafka::connect().await);
    let op = operator(&kube, &kafka).await;
    let ns = op.namespace.clone();
    let run = unique_name("bad");
    // A step whose participant does not exist, and a zero timeout: the schema cannot see these.
    let mut saga: serde_json::Value =
        serde_json::from_str(&unique_saga(&run, "orchestrator")).unwrap();
    saga["spec"]["steps"][1]["participant"] = json!("billing");
    saga["spec"]["steps"][2]["timeout"] = json!("0s");
    let sagas: Api<Saga> = Api::namespaced(kube.client.clone(), &ns);
    sagas
        .create(
            &PostParams::default(),
            &serde_json::from_value(saga).unwrap(),
        )
        .await
        .unwrap();
    let refused = eventually("the saga to be reported invalid", WAIT, || async {
        let saga = sagas.get("order-fulfilment").await.ok()?;
        let (_, reason, message) = condition(&saga, "Ready")?;
        (reason == "InvalidSpec").then_some((saga, message))
    })
    .await;
    let (saga, message) = refused;
    assert_eq!(saga.status.unwrap().phase.as_deref(), Some("Invalid"));
    assert!(message.contains("spec.steps[1].participant"), "{message}");
    assert!(message.contains("spec.steps[2].timeout"), "{message}");
    let topics: Api<KafkaTopic> = Api::namespaced(kube.client.clone(), &ns);
    assert!(
        topics
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "an invalid saga declared topics"
    );
    op.stop(&kube).await;
}
