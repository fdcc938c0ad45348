//! The `Saga` reconciler: turns a saga definition into what its services need to run.
//!
//! For each `Saga` it
//! 1. validates the spec with the same [`SagaSpec::validate`](crate::Saga) `sagashop dev`
//!    uses; an invalid one gets `phase: Invalid` and `Ready=False` naming every bad field, and
//!    nothing else is touched;
//! 2. declares an owned `KafkaTopic` for every topic the saga needs (trigger, commands, replies,
//!    state, outcome, dead letters: [`Definition::topic_specs`]), which the KafkaTopic
//!    reconciler turns into real topics. A `KafkaTopic` of that name that the saga does not own
//!    is left alone and counted as the saga's if it is Ready;
//! 3. writes the ConfigMap `saga-<name>`: `saga.yaml` (the definition the services load with
//!    `SAGASHOP_SAGA`) and one `<service>.json` per service with its wiring ([`Wiring`](sagashop_kit::Wiring):
//!    group id, topics by role, inputs, dead letters, isolation level, processing, retry,
//!    transactional ids), which the services read with `SAGASHOP_WIRING`;
//! 4. stamps the hash of that configuration on the pod template of every Deployment the saga
//!    names (`spec.deployments`), so a changed saga rolls its services;
//! 5. reports `TopicsReady`, `ConfigReady` and `Ready`, the phase, the topics and the hash,
//!    and the versions of the definition instances run on with their instances, read from the
//!    saga's `saga.<name>.versions` topic where the orchestrators publish them (every 30 s
//!    while an old version is still running).
//!
//! Deleting the saga deletes what it owns (garbage collection); its topics stay in Kafka
//! (`deletionPolicy: Retain`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use sagashop_saga::definition::{Definition, SagaStatus, VersionStatus};
use sagashop_saga::versions::VersionRecord;
use sagashop_topology::Topology;
use serde_json::json;

use crate::context::{Error, MANAGER, Shared, condition, drain, key};
use crate::{Condition, DeletionPolicy, KafkaTopic, KafkaTopicSpec, Saga};

const KIND: &str = "Saga";
/// The label on everything a saga owns, naming the saga.
pub const SAGA_LABEL: &str = "sagashop.dev/saga";
/// The pod-template annotation that carries the saga's configuration hash.
pub const CONFIG_HASH: &str = "sagashop.dev/config-hash";

/// What a saga should have in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// `(resource name, spec)` of each `KafkaTopic`.
    pub topics: Vec<(String, KafkaTopicSpec)>,
    /// The ConfigMap's name.
    pub config_map: String,
    /// Its data.
    pub config: BTreeMap<String, String>,
    /// A stable hash of the data (FNV-1a, hex).
    pub hash: String,
}

/// A Kubernetes object name for a Kafka topic: lower case, `[a-z0-9.-]`, alphanumeric ends.
pub fn resource_name(topic: &str) -> String {
    let mapped: String = topic
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '.' | '-') => c,
            _ => '-',
        })
        .collect();
    let not_alphanumeric = |c: char| !c.is_ascii_alphanumeric();
    // Cut to 253 first, then trim: a cut can end on a `.` or `-` (found by `scripts/fuzz`).
    let cut: String = mapped
        .trim_start_matches(not_alphanumeric)
        .chars()
        .take(253)
        .collect();
    let mut name = cut.trim_end_matches(not_alphanumeric).to_owned();
    if name.is_empty() {
        name = "topic".to_owned();
    }
    name
}

fn fnv1a(data: &BTreeMap<String, String>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in data {
        for byte in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Computes what `saga` (valid, compiled into `definition`) should have.
pub fn desired(saga: &Saga, definition: &Definition) -> Desired {
    let topics = definition
        .topic_specs()
        .into_iter()
        .map(|t| {
            let spec = KafkaTopicSpec {
                topic_name: Some(t.name.clone()),
                partitions: t.partitions,
                replicas: t.replicas,
                config: t.config,
                deletion_policy: DeletionPolicy::Retain,
            };
            (resource_name(&t.name), spec)
        })
        .collect();
    let mut config = BTreeMap::new();
    let manifest = json!({
        "apiVersion": "sagashop.dev/v1alpha1",
        "kind": "Saga",
        "metadata": {"name": saga.name_any()},
        "spec": saga.spec,
    });
    // JSON is YAML: the services' loader reads it as it reads the shipped manifest.
    config.insert(
        "saga.yaml".to_owned(),
        serde_json::to_string_pretty(&manifest).unwrap_or_default(),
    );
    // Each service's wiring, which it reads from the mounted ConfigMap: the same value
    // `sagashop dev` builds from the same saga.
    for (service, wiring) in Topology::new(definition.clone(), "").wirings() {
        config.insert(
            format!("{service}.json"),
            serde_json::to_string_pretty(&wiring).unwrap_or_default(),
        );
    }
    let hash = fnv1a(&config);
    Desired {
        topics,
        config_map: format!("saga-{}", saga.name_any()),
        config,
        hash,
    }
}

/// How the saga's topics are: `(ready, not ready yet)` by topic name.
pub fn topics_readiness(
    desired: &[(String, KafkaTopicSpec)],
    existing: &BTreeMap<String, KafkaTopic>,
) -> (Vec<String>, Vec<String>) {
    let mut ready = Vec::new();
    let mut waiting = Vec::new();
    for (name, spec) in desired {
        let topic = spec.topic_name.clone().unwrap_or_else(|| name.clone());
        let is_ready = existing.get(name).is_some_and(|r| {
            r.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        });
        if is_ready {
            ready.push(topic);
        } else {
            waiting.push(topic);
        }
    }
    (ready, waiting)
}

fn owned_by(resource: &KafkaTopic, saga: &Saga) -> bool {
    let uid = saga.uid();
    resource
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == uid.as_ref())
}

async fn write_status(shared: &Shared, saga: &Saga, status: SagaStatus) -> Result<(), Error> {
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map_or(
            "Unknown",
            |c| if c.status == "True" { "True" } else { "False" },
        );
    shared.metrics.readiness(KIND, key(saga), Some(ready));
    if saga.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<Saga> =
        Api::namespaced(shared.client.clone(), &saga.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": "sagashop.dev/v1alpha1", "kind": "Saga", "status": status});
    api.patch_status(
        &saga.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    let before = saga
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    for c in &status.conditions {
        let said = before
            .iter()
            .any(|b| b.type_ == c.type_ && b.status == c.status && b.reason == c.reason);
        if c.type_ == "Ready" && !said {
            shared
                .event(saga, c.status != "True", &c.reason, c.message.clone())
                .await;
        }
    }
    Ok(())
}

/// The conditions the saga had, to keep their transition times.
fn previous(saga: &Saga) -> &[Condition] {
    saga.status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default()
}

/// Makes the cluster hold what the saga needs, step by step: scope, validation, topics,
/// ConfigMap, rollout, events, status.
async fn reconcile(saga: Arc<Saga>, shared: Arc<Shared>) -> Result<Action, Error> {
    let namespace = saga.namespace().unwrap_or_default();
    if !shared.scope.manages(&namespace) {
        return not_watched(&shared, &saga, &namespace).await;
    }
    let definition = match saga.spec.validate(&saga.name_any()) {
        Ok(definition) => definition,
        Err(invalid) => return refuse_invalid(&shared, &saga, &invalid.problems).await,
    };
    let want = desired(&saga, &definition);
    let owned = Owned::by(&saga);
    let topics = apply_topics(&shared, &saga, &namespace, &want, &owned).await?;
    apply_config_map(&shared, &namespace, &want, &owned).await?;
    let rollout = roll_out(&shared, &saga, &namespace, &want).await?;
    announce_config(&shared, &saga, &want, &rollout).await;
    let config_ready = rollout.missing.is_empty();
    let mut status = status(&saga, &want, &topics, &rollout);
    status.versions = versions(&shared, &saga, &definition).await;
    let old_running = status.versions.len() > 1;
    write_status(&shared, &saga, status).await?;
    // Children's status changes wake the saga; a missing Deployment is looked for again, and
    // old versions' instances are counted again until they have ended.
    Ok(if config_ready && !old_running {
        Action::requeue(shared.resync)
    } else {
        Action::requeue(Duration::from_secs(30).min(shared.resync))
    })
}

/// Outside the operator's namespaces: says so, unless another operator reported on the saga.
async fn not_watched(shared: &Shared, saga: &Saga, namespace: &str) -> Result<Action, Error> {
    let previous = previous(saga);
    if previous.iter().all(|c| c.reason == "NotWatched") {
        let generation = saga.meta().generation;
        let status = SagaStatus {
            observed_generation: generation,
            conditions: vec![condition(
                previous,
                "Ready",
                false,
                "NotWatched",
                shared.scope.refusal(namespace),
                generation,
            )],
            ..SagaStatus::default()
        };
        write_status(shared, saga, status).await?;
    }
    Ok(Action::await_change())
}

/// An invalid spec: `phase: Invalid` naming every problem; nothing else is touched.
async fn refuse_invalid(
    shared: &Shared,
    saga: &Saga,
    problems: &[String],
) -> Result<Action, Error> {
    let generation = saga.meta().generation;
    let status = SagaStatus {
        observed_generation: generation,
        steps: i32::try_from(saga.spec.steps.len()).ok(),
        phase: Some("Invalid".to_owned()),
        conditions: vec![condition(
            previous(saga),
            "Ready",
            false,
            "InvalidSpec",
            problems.join("; "),
            generation,
        )],
        ..SagaStatus::default()
    };
    write_status(shared, saga, status).await?;
    Ok(Action::await_change())
}

/// The owner reference and labels on everything the saga owns.
struct Owned {
    owner: Vec<OwnerReference>,
    labels: BTreeMap<String, String>,
}

impl Owned {
    fn by(saga: &Saga) -> Self {
        Self {
            owner: saga
                .controller_owner_ref(&())
                .map(|o| vec![o])
                .unwrap_or_default(),
            labels: BTreeMap::from([
                (SAGA_LABEL.to_owned(), saga.name_any()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    MANAGER.to_owned(),
                ),
            ]),
        }
    }
}

/// Applies the saga's KafkaTopics, leaving alone one of the same name it does not own; returns
/// every KafkaTopic of the namespace as it is now, by resource name.
async fn apply_topics(
    shared: &Shared,
    saga: &Saga,
    namespace: &str,
    want: &Desired,
    owned: &Owned,
) -> Result<BTreeMap<String, KafkaTopic>, Error> {
    let topics_api: Api<KafkaTopic> = Api::namespaced(shared.client.clone(), namespace);
    let mut existing: BTreeMap<String, KafkaTopic> = topics_api
        .list(&ListParams::default())
        .await?
        .into_iter()
        .map(|t| (t.name_any(), t))
        .collect();
    let apply = PatchParams::apply(MANAGER).force();
    for (name, spec) in &want.topics {
        if existing.get(name).is_some_and(|t| !owned_by(t, saga)) {
            continue; // declared by someone else: theirs to manage
        }
        let patch = json!({
            "apiVersion": "sagashop.dev/v1alpha1",
            "kind": "KafkaTopic",
            "metadata": {"name": name, "labels": owned.labels, "ownerReferences": owned.owner},
            "spec": spec,
        });
        let applied = topics_api
            .patch(name, &apply, &Patch::Apply(&patch))
            .await?;
        existing.insert(name.clone(), applied);
    }
    Ok(existing)
}

/// Writes the ConfigMap the services mount: the saga and each service's consumer configuration.
async fn apply_config_map(
    shared: &Shared,
    namespace: &str,
    want: &Desired,
    owned: &Owned,
) -> Result<(), Error> {
    let config_maps: Api<ConfigMap> = Api::namespaced(shared.client.clone(), namespace);
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": want.config_map, "labels": owned.labels, "ownerReferences": owned.owner,
                     "annotations": {CONFIG_HASH: want.hash}},
        "data": want.config,
    });
    config_maps
        .patch(
            &want.config_map,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&config_map),
        )
        .await?;
    Ok(())
}

/// What stamping the configuration hash on the saga's Deployments did.
struct Rollout {
    /// Deployments the saga names that do not exist.
    missing: Vec<String>,
    /// Deployments whose pods roll because their hash changed.
    rolled: Vec<String>,
}

/// Stamps the configuration hash on the pod template of every Deployment the saga names whose
/// hash differs, so they roll onto the new configuration.
async fn roll_out(
    shared: &Shared,
    saga: &Saga,
    namespace: &str,
    want: &Desired,
) -> Result<Rollout, Error> {
    let deployments: Api<Deployment> = Api::namespaced(shared.client.clone(), namespace);
    let mut rollout = Rollout {
        missing: Vec::new(),
        rolled: Vec::new(),
    };
    for name in &saga.spec.deployments {
        let Some(deployment) = deployments.get_opt(name).await? else {
            rollout.missing.push(name.clone());
            continue;
        };
        let current = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(CONFIG_HASH));
        if current != Some(&want.hash) {
            let patch = json!({"spec": {"template": {"metadata": {"annotations": {CONFIG_HASH: want.hash}}}}});
            deployments
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            rollout.rolled.push(name.clone());
        }
    }
    Ok(rollout)
}

/// A `ConfigChanged` event when the configuration changed or Deployments rolled.
async fn announce_config(shared: &Shared, saga: &Saga, want: &Desired, rollout: &Rollout) {
    let hash_changed =
        saga.status.as_ref().and_then(|s| s.config_hash.as_deref()) != Some(want.hash.as_str());
    if !hash_changed && rollout.rolled.is_empty() {
        return;
    }
    let note = if rollout.rolled.is_empty() {
        format!(
            "configuration {} written to ConfigMap {}",
            want.hash, want.config_map
        )
    } else {
        format!(
            "configuration {} written; rolled Deployments {}",
            want.hash,
            rollout.rolled.join(", ")
        )
    };
    shared.event(saga, false, "ConfigChanged", note).await;
}

/// The versions of the saga's definition, from its versions topic: the spec's own first (with
/// no count before an orchestrator has published one), then the older ones still kept. Kafka
/// not answering keeps what the status said.
async fn versions(shared: &Shared, saga: &Saga, definition: &Definition) -> Vec<VersionStatus> {
    let kept = || {
        saga.status
            .as_ref()
            .map(|s| s.versions.clone())
            .unwrap_or_default()
    };
    let Some(kafka) = &shared.kafka else {
        return kept();
    };
    let topic = &definition.versions_topic;
    let records = match sagashop_kit::reader::read_to_end(
        kafka,
        "operator-versions",
        topic,
        Duration::from_secs(10),
    )
    .await
    {
        Ok(records) => records,
        Err(e) => {
            tracing::debug!(%topic, error = %e, "could not read the saga's versions");
            return kept();
        }
    };
    let mut latest: BTreeMap<String, VersionRecord> = BTreeMap::new();
    for record in records {
        let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
        match record
            .payload
            .as_deref()
            .map(serde_json::from_slice::<VersionRecord>)
        {
            Some(Ok(version)) => {
                latest.insert(key, version);
            }
            Some(Err(e)) => tracing::warn!(%topic, %key, error = %e, "an unreadable saga version"),
            None => {
                latest.remove(&key);
            }
        }
    }
    version_statuses(definition, &latest)
}

/// The status's versions: `definition`'s own first, then the others of `latest` by version.
pub fn version_statuses(
    definition: &Definition,
    latest: &BTreeMap<String, VersionRecord>,
) -> Vec<VersionStatus> {
    let count = |r: &VersionRecord| r.instances.and_then(|n| i64::try_from(n).ok());
    let own = VersionStatus {
        version: definition.version.clone(),
        current: true,
        steps: definition.steps.iter().map(|s| s.name.clone()).collect(),
        instances: latest.get(&definition.version).and_then(count),
    };
    std::iter::once(own)
        .chain(
            latest
                .values()
                .filter(|r| r.version != definition.version)
                .map(|r| VersionStatus {
                    version: r.version.clone(),
                    current: false,
                    steps: r.spec.steps.iter().map(|s| s.name.clone()).collect(),
                    instances: count(r),
                }),
        )
        .collect()
}

/// The saga's status once its topics, ConfigMap and rollout are applied.
fn status(
    saga: &Saga,
    want: &Desired,
    topics: &BTreeMap<String, KafkaTopic>,
    rollout: &Rollout,
) -> SagaStatus {
    let generation = saga.meta().generation;
    let previous = previous(saga);
    let (ready_topics, waiting) = topics_readiness(&want.topics, topics);
    let topics_ready = waiting.is_empty();
    let config_ready = rollout.missing.is_empty();
    let ready = topics_ready && config_ready;
    let (reason, message) = match (ready, topics_ready) {
        (true, _) => ("Ready", "topics and configuration are in place"),
        (false, true) => (
            "DeploymentMissing",
            "see the TopicsReady and ConfigReady conditions",
        ),
        (false, false) => (
            "TopicsPending",
            "see the TopicsReady and ConfigReady conditions",
        ),
    };
    let (topics_reason, topics_message) = if topics_ready {
        (
            "TopicsReady",
            format!("all {} topics are ready", ready_topics.len()),
        )
    } else {
        let (have, of, waiting) = (ready_topics.len(), want.topics.len(), waiting.join(", "));
        (
            "TopicsPending",
            format!("{have} of {of} topics ready; waiting for {waiting}"),
        )
    };
    let (config_reason, config_message) = if config_ready {
        let message = format!(
            "ConfigMap {} holds configuration {}",
            want.config_map, want.hash
        );
        ("ConfigWritten", message)
    } else {
        let (map, missing) = (&want.config_map, rollout.missing.join(", "));
        let message =
            format!("ConfigMap {map} written, but Deployments {missing} do not exist to roll");
        ("DeploymentMissing", message)
    };
    let said = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(previous, type_, ok, reason, message, generation)
    };
    SagaStatus {
        observed_generation: generation,
        steps: i32::try_from(saga.spec.steps.len()).ok(),
        phase: Some(if ready { "Ready" } else { "Pending" }.to_owned()),
        conditions: vec![
            said("TopicsReady", topics_ready, topics_reason, topics_message),
            said("ConfigReady", config_ready, config_reason, config_message),
            said("Ready", ready, reason, message.to_owned()),
        ],
        topics: want
            .topics
            .iter()
            .filter_map(|(_, s)| s.topic_name.clone())
            .collect(),
        config_map: Some(want.config_map.clone()),
        config_hash: Some(want.hash.clone()),
        versions: Vec::new(),
    }
}

/// Runs the reconciler over `Saga`s in the shared scope until `shutdown`.
pub async fn run(
    shared: Arc<Shared>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (sagas, topics, config_maps) = match shared.scope.single() {
        Some(ns) => (
            Api::<Saga>::namespaced(shared.client.clone(), ns),
            Api::<KafkaTopic>::namespaced(shared.client.clone(), ns),
            Api::<ConfigMap>::namespaced(shared.client.clone(), ns),
        ),
        None => (
            Api::all(shared.client.clone()),
            Api::all(shared.client.clone()),
            Api::all(shared.client.clone()),
        ),
    };
    let owned = watcher::Config::default().labels(SAGA_LABEL);
    drain(
        Controller::new(sagas, watcher::Config::default())
            .owns(topics, owned.clone())
            .owns(config_maps, owned)
            .with_config(ControllerConfig::default().concurrency(concurrency))
            .graceful_shutdown_on(shutdown)
            .run(
                |saga, shared: Arc<Shared>| async move {
                    shared
                        .measured(
                            KIND,
                            &*saga,
                            reconcile(Arc::clone(&saga), Arc::clone(&shared)),
                        )
                        .await
                },
                |saga, error, shared| shared.error_action(&*saga, error),
                shared,
            ),
    )
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use crate::context::Scope;
    use crate::fixtures::{api_server, event_answer, shared};
    use serde_json::Value;

    #[tokio::test]
    async fn an_invalid_saga_gets_a_status_naming_the_fields_and_nothing_else() {
        let mut saga = shipped();
        saga.metadata.namespace = Some("shop".into());
        saga.metadata.uid = Some("u1".into());
        saga.spec.steps[0].participant = "billing".into();
        saga.spec.steps[1].compensation = None;
        let echo = serde_json::to_value(&saga).unwrap();
        let (client, calls) = api_server(move |_, path| {
            if path.contains("/events") {
                event_answer()
            } else {
                echo.clone()
            }
        });
        let action = reconcile(Arc::new(saga), shared(client, Scope::all()))
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
        assert_eq!(
            calls.summary(),
            ["PATCH /apis/sagashop.dev/v1alpha1/namespaces/shop/sagas/order-fulfilment/status"]
        );
        let status = &calls.all()[0].body;
        for needle in [
            "InvalidSpec",
            "Invalid",
            "spec.steps[0].participant",
            "spec.steps[1].compensation",
        ] {
            assert!(status.contains(needle), "{needle} not in {status}");
        }
        assert_eq!(calls.event_reasons(), ["InvalidSpec"]);
    }

    fn shipped() -> Saga {
        let yaml = include_str!("../../k8s/sagas/order-fulfilment.yaml");
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn the_order_saga_needs_its_topics_with_the_state_compacted_and_a_dead_letter_topic_each() {
        let saga = shipped();
        let definition = saga.spec.validate(&saga.name_any()).unwrap();
        let want = desired(&saga, &definition);
        let names: Vec<&str> = want.topics.iter().map(|(n, _)| n.as_str()).collect();
        for topic in [
            "orders.v1",
            "inventory.commands.v1",
            "payment.commands.v1",
            "shipping.commands.v1",
            "saga.order-fulfilment.replies.v1",
            "saga.order-fulfilment.state",
            "saga.order-fulfilment.versions",
            "orders.outcome.v1",
            "orchestrator.dlq.v1",
            "inventory.dlq.v1",
            "payment.dlq.v1",
            "shipping.dlq.v1",
        ] {
            assert!(names.contains(&topic), "{topic} missing from {names:?}");
        }
        assert_eq!(want.topics.len(), 12);
        let topic = |name: &str| &want.topics.iter().find(|(n, _)| n == name).unwrap().1;
        for compacted in [
            "saga.order-fulfilment.state",
            "saga.order-fulfilment.versions",
        ] {
            assert_eq!(
                topic(compacted)
                    .config
                    .get("cleanup.policy")
                    .map(String::as_str),
                Some("compact"),
                "{compacted}"
            );
        }
        assert_eq!(topic("saga.order-fulfilment.versions").partitions, 1);
        assert!(want.topics.iter().all(|(n, s)| {
            (s.partitions == 4 || n.ends_with(".versions"))
                && s.deletion_policy == DeletionPolicy::Retain
        }));
    }

    #[test]
    fn each_participant_gets_its_consumer_configuration_and_the_services_can_load_the_saga() {
        let saga = shipped();
        let definition = saga.spec.validate(&saga.name_any()).unwrap();
        let want = desired(&saga, &definition);
        assert_eq!(want.config_map, "saga-order-fulfilment");
        let payment: Value = serde_json::from_str(&want.config["payment.json"]).unwrap();
        assert_eq!(payment["groupId"], "payment");
        assert_eq!(payment["topics"]["commands"], "payment.commands.v1");
        assert_eq!(payment["inputs"], json!(["commands"]));
        assert_eq!(payment["isolationLevel"], "read_committed");
        assert_eq!(payment["deadLetterTopic"], "payment.dlq.v1");
        assert!(payment["retry"]["maxAttempts"].as_u64().unwrap() >= 1);
        let orchestrator: Value = serde_json::from_str(&want.config["orchestrator.json"]).unwrap();
        assert_eq!(orchestrator["groupId"], "saga-order-fulfilment");
        // Every service gets its wiring, and each is one the service accepts.
        for service in sagashop_topology::Service::ALL {
            let text = &want.config[&format!("{}.json", service.name())];
            let wiring: sagashop_kit::Wiring = serde_json::from_str(text).unwrap();
            wiring.validate().unwrap();
        }
        // The manifest in the ConfigMap is one `sagashop dev --saga` accepts.
        let loaded = Saga::load(&want.config["saga.yaml"], "configmap").unwrap();
        assert_eq!(loaded, definition);
    }

    #[test]
    fn the_hash_changes_with_the_definition_and_only_then() {
        let saga = shipped();
        let definition = saga.spec.validate(&saga.name_any()).unwrap();
        let first = desired(&saga, &definition).hash;
        assert_eq!(desired(&saga, &definition).hash, first);
        let mut changed = saga.clone();
        changed.spec.steps[0].timeout = "9s".to_owned();
        let definition = changed.spec.validate(&changed.name_any()).unwrap();
        assert_ne!(desired(&changed, &definition).hash, first);
    }

    #[test]
    fn the_status_lists_the_specs_version_first_then_older_ones_with_their_counts() {
        let saga = shipped();
        let definition = saga.spec.validate(&saga.name_any()).unwrap();
        let none = version_statuses(&definition, &BTreeMap::new());
        assert_eq!(none.len(), 1);
        assert!(none[0].current && none[0].instances.is_none());
        assert_eq!(none[0].steps[0], "reserve-inventory");
        let mut spec = saga.spec.clone();
        spec.steps.swap(0, 1);
        let old = spec.validate("order-fulfilment").unwrap();
        let record = |d: &Definition, instances| VersionRecord {
            saga: d.name.clone(),
            version: d.version.clone(),
            spec: d.spec.clone(),
            published_at: chrono::Utc::now(),
            instances,
        };
        let latest = BTreeMap::from([
            (old.version.clone(), record(&old, Some(4))),
            (definition.version.clone(), record(&definition, Some(9))),
        ]);
        let both = version_statuses(&definition, &latest);
        assert_eq!(
            both.iter()
                .map(|v| (v.version.as_str(), v.current, v.instances))
                .collect::<Vec<_>>(),
            [
                (definition.version.as_str(), true, Some(9)),
                (old.version.as_str(), false, Some(4))
            ]
        );
        assert_eq!(both[1].steps[0], "authorize-payment");
    }

    #[test]
    fn a_long_topic_name_cut_to_253_still_ends_alphanumeric() {
        // Found by `scripts/fuzz` (kafka_topic): the cut came after the trim.
        let topic = format!("{}.{}", "a".repeat(252), "b".repeat(10));
        let name = resource_name(&topic);
        assert_eq!(name, "a".repeat(252));
        let dashes = format!("x{}", "-".repeat(300));
        assert_eq!(resource_name(&dashes), "x");
    }

    #[test]
    fn topic_names_become_valid_object_names() {
        assert_eq!(resource_name("orders.v1"), "orders.v1");
        assert_eq!(resource_name("Orders_Topic.V2"), "orders-topic.v2");
        assert_eq!(resource_name("__internal"), "internal");
    }

    #[test]
    fn topics_count_as_ready_only_with_a_ready_condition() {
        let spec = KafkaTopicSpec {
            topic_name: Some("a.v1".into()),
            partitions: 1,
            replicas: 1,
            config: BTreeMap::new(),
            deletion_policy: DeletionPolicy::Retain,
        };
        let mut ready = KafkaTopic::new("a.v1", spec.clone());
        ready.status = Some(crate::KafkaTopicStatus {
            conditions: vec![condition(
                &[],
                "Ready",
                true,
                "Created",
                String::new(),
                None,
            )],
            ..Default::default()
        });
        let desired = vec![
            ("a.v1".to_owned(), spec.clone()),
            (
                "b.v1".to_owned(),
                KafkaTopicSpec {
                    topic_name: Some("b.v1".into()),
                    ..spec
                },
            ),
        ];
        let existing = BTreeMap::from([("a.v1".to_owned(), ready)]);
        let (ok, waiting) = topics_readiness(&desired, &existing);
        assert_eq!(
            (ok, waiting),
            (vec!["a.v1".to_owned()], vec!["b.v1".to_owned()])
        );
    }
}
