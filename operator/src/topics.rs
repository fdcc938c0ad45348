//! The `KafkaTopic` reconciler: makes each resource's topic exist in Kafka as declared.
//!
//! | situation | result |
//! | --- | --- |
//! | the topic does not exist | created; `Ready=True`, reason `Created` |
//! | it exists (made outside the operator) | adopted and brought to the spec; reason `Adopted` on first sight |
//! | more partitions declared | raised; reason `PartitionsIncreased` |
//! | more partitions declared on a keyed topic (a changelog, a Saga's topic, annotation `sagashop.dev/partitioning: keyed`) | `Ready=False`, reason `PartitionsFixed`; nothing changed (keys would move away from their state) |
//! | configuration differs (also drift made outside) | the spec's set replaces the topic's own (undeclared keys reset); reason `ConfigUpdated` |
//! | fewer partitions or another replication factor than Kafka has | `Ready=False`, reason `PartitionDecrease` / `ReplicationFactorMismatch`; nothing changed, no retry storm |
//! | another resource claimed the topic name first | `Ready=False`, reason `ResourceConflict` |
//! | annotation `sagashop.dev/managed: "false"` | `Ready=False`, reason `Unmanaged`; the finalizer is removed, the topic left alone |
//! | the resource is deleted | `deletionPolicy: Delete` deletes the topic (unless another resource claims it, which then owns it); `Retain` keeps it |
//!
//! Only `deletionPolicy: Delete` puts the finalizer on: a `Retain` resource has nothing for the
//! operator to do when it goes, so it goes without the operator — `helm uninstall` removes the
//! operator and the Saga's KafkaTopics at once, and a finalizer nobody removes would hold them
//! (and their namespace) forever.
//!
//! | the resource's namespace is outside the operator's scope | `Ready=False`, reason `NotWatched` (unless another operator manages it) |
//!
//! Every object is resynced periodically (five minutes by default), which detects and reverts
//! drift. Errors back off exponentially per object, with jitter. Status goes through server-side
//! apply; every change and refusal is also a Kubernetes event. Kafka calls are batched across
//! resources ([`crate::admin`]). The decision itself is [`decide`], a pure function.

use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::Store;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use sagashop_kit::admin::{TopicSpec, TopicState};
use serde_json::json;

use crate::context::{Error, MANAGER, Shared, condition, drain, key};
use crate::{DeletionPolicy, KafkaTopic, KafkaTopicSpec, KafkaTopicStatus};

/// The finalizer the operator puts on every managed `KafkaTopic`.
pub const FINALIZER: &str = "sagashop.dev/topic";
/// Set to `"false"` to stop managing a topic without deleting it.
pub const MANAGED: &str = "sagashop.dev/managed";
const KIND: &str = "KafkaTopic";

/// What the reconciler shares.
pub struct Context {
    shared: Arc<Shared>,
    store: Store<KafkaTopic>,
}

/// The topic name a resource declares.
pub fn topic_name(resource: &KafkaTopic) -> String {
    resource
        .spec
        .topic_name
        .clone()
        .unwrap_or_else(|| resource.name_any())
}

fn managed(resource: &KafkaTopic) -> bool {
    resource.annotations().get(MANAGED).map(String::as_str) != Some("false")
}

/// The resource that owns `name`: the oldest managed, undeleted claimant (name breaks ties).
fn owner(store: &Store<KafkaTopic>, name: &str) -> Option<Arc<KafkaTopic>> {
    store
        .state()
        .into_iter()
        .filter(|r| managed(r) && r.meta().deletion_timestamp.is_none() && topic_name(r) == name)
        .min_by(|a, b| {
            a.meta()
                .creation_timestamp
                .cmp(&b.meta().creation_timestamp)
                .then_with(|| a.namespace().cmp(&b.namespace()))
                .then_with(|| a.name_any().cmp(&b.name_any()))
        })
}

fn same(a: &KafkaTopic, b: &KafkaTopic) -> bool {
    a.namespace() == b.namespace() && a.name_any() == b.name_any()
}

/// What to do about one topic, given the spec and how Kafka has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The topic does not exist: create it as declared.
    Create,
    /// Kafka cannot do what the spec asks: change nothing and say why.
    Refuse {
        /// The condition's reason.
        reason: &'static str,
        /// What to do about it.
        message: String,
    },
    /// Bring the existing topic to the spec (possibly nothing to do).
    Update {
        /// Raise the partitions to this many.
        raise_partitions: Option<i32>,
        /// Replace the topic's own configuration with the spec's.
        replace_config: bool,
    },
}

/// The annotation that marks a topic whose records are keyed to state held per partition;
/// `keyed` makes the operator refuse to raise its partitions.
pub const PARTITIONING: &str = "sagashop.dev/partitioning";

/// Whether `resource`'s topic is keyed to state held per partition, so that more partitions
/// would move keys away from their state: a changelog (`cleanup.policy` with `compact`), a
/// topic of a Saga (its trigger, commands, replies and state are co-partitioned by key), or
/// one annotated `sagashop.dev/partitioning: keyed` (the chart's service topics).
pub fn keyed(resource: &KafkaTopic) -> bool {
    resource.annotations().get(PARTITIONING).map(String::as_str) == Some("keyed")
        || resource.owner_references().iter().any(|o| o.kind == "Saga")
        || resource
            .spec
            .config
            .get("cleanup.policy")
            .is_some_and(|policy| policy.contains("compact"))
}

/// Decides what to do with the topic `spec` declares when Kafka has it as `kafka`; `keyed`
/// says whether the topic's partitions are fixed ([`keyed`]).
pub fn decide(spec: &KafkaTopicSpec, kafka: Option<&TopicState>, keyed: bool) -> Decision {
    let Some(state) = kafka else {
        return Decision::Create;
    };
    if state.replicas != spec.replicas {
        return Decision::Refuse {
            reason: "ReplicationFactorMismatch",
            message: format!(
                "the topic has replication factor {} and Kafka cannot change it in place; \
                 declare {} or recreate the topic",
                state.replicas, state.replicas
            ),
        };
    }
    if state.partitions > spec.partitions {
        return Decision::Refuse {
            reason: "PartitionDecrease",
            message: format!(
                "the topic has {} partitions and Kafka cannot remove partitions; declare at least {}",
                state.partitions, state.partitions
            ),
        };
    }
    if keyed && state.partitions < spec.partitions {
        return Decision::Refuse {
            reason: "PartitionsFixed",
            message: format!(
                "the topic's records are keyed to state kept per partition (a changelog or a \
                 co-partitioned input): raising {} to {} partitions would move keys away from \
                 their state; declare {}, or grow the system as docs/operations.md (\"Growing \
                 partitions\") says",
                state.partitions, spec.partitions, state.partitions
            ),
        };
    }
    Decision::Update {
        raise_partitions: (state.partitions < spec.partitions).then_some(spec.partitions),
        replace_config: state.config != spec.config,
    }
}

/// The `Ready` reason and message after an update: `Adopted` the first time the operator
/// manages an existing topic, then what changed, else what was last said.
pub fn update_outcome(
    adopted: bool,
    changes: &[String],
    previous: Option<(&str, &str)>,
) -> (String, String) {
    let joined = changes.join(", ");
    if adopted {
        let message = format!("adopted the existing topic {joined}");
        return ("Adopted".to_owned(), message.trim().to_owned());
    }
    match (changes, previous) {
        ([], Some((reason, message))) => (reason.to_owned(), message.to_owned()),
        ([], None) => (
            "UpToDate".to_owned(),
            "the topic matches the spec".to_owned(),
        ),
        ([only], _) if only.starts_with("partitions") => ("PartitionsIncreased".to_owned(), joined),
        _ => ("ConfigUpdated".to_owned(), joined),
    }
}

/// Writes the status (one `Ready` condition) and, when the reason changes, an event.
async fn report(
    ctx: &Context,
    resource: &KafkaTopic,
    ready: bool,
    reason: &str,
    message: String,
    kafka: Option<&TopicState>,
) -> Result<(), Error> {
    let previous = resource
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = resource.meta().generation;
    let ready_condition = condition(previous, "Ready", ready, reason, message, generation);
    let new = KafkaTopicStatus {
        conditions: vec![ready_condition],
        observed_generation: generation,
        topic_name: Some(topic_name(resource)),
        partitions: kafka.map(|k| k.partitions),
        replicas: kafka.map(|k| k.replicas),
    };
    ctx.shared.metrics.readiness(
        KIND,
        key(resource),
        Some(if ready { "True" } else { "False" }),
    );
    if resource.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let said_before = previous.iter().any(|c| {
        c.type_ == "Ready" && c.reason == reason && c.message == new.conditions[0].message
    });
    let api: Api<KafkaTopic> = Api::namespaced(
        ctx.shared.client.clone(),
        &resource.namespace().unwrap_or_default(),
    );
    let patch = json!({
        "apiVersion": "sagashop.dev/v1alpha1",
        "kind": "KafkaTopic",
        "status": new,
    });
    api.patch_status(
        &resource.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    if !said_before {
        let note = new.conditions[0].message.clone();
        ctx.shared.event(resource, !ready, reason, note).await;
    }
    Ok(())
}

fn previous_ready(resource: &KafkaTopic) -> Option<(&str, &str)> {
    resource
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| (c.reason.as_str(), c.message.as_str()))
}

async fn apply(resource: Arc<KafkaTopic>, ctx: &Context) -> Result<Action, Error> {
    let resync = Action::requeue(ctx.shared.resync);
    let name = topic_name(&resource);
    if let Some(owner) = owner(&ctx.store, &name)
        && !same(&owner, &resource)
    {
        let message = format!(
            "topic `{name}` is managed by KafkaTopic {}/{}",
            owner.namespace().unwrap_or_default(),
            owner.name_any()
        );
        report(ctx, &resource, false, "ResourceConflict", message, None).await?;
        return Ok(resync);
    }
    let spec = &resource.spec;
    let admin = &ctx.shared.admin;
    let existing = admin.describe(&name).await?;
    match decide(spec, existing.as_ref(), keyed(&resource)) {
        Decision::Create => {
            let topic = TopicSpec {
                replicas: spec.replicas,
                config: spec.config.clone(),
                ..TopicSpec::new(&name, spec.partitions)
            };
            admin.create(topic).await?;
            let state = TopicState {
                partitions: spec.partitions,
                replicas: spec.replicas,
                config: spec.config.clone(),
            };
            let message = format!("created with {} partitions", spec.partitions);
            tracing::info!(topic = %name, %message, "topic created");
            report(ctx, &resource, true, "Created", message, Some(&state)).await?;
        }
        Decision::Refuse { reason, message } => {
            report(ctx, &resource, false, reason, message, existing.as_ref()).await?;
        }
        Decision::Update {
            raise_partitions,
            replace_config,
        } => {
            let Some(mut state) = existing else {
                return Ok(resync);
            };
            // Never reported the topic's state as ours: this is the first time we manage it.
            let adopted = resource
                .status
                .as_ref()
                .and_then(|s| s.partitions)
                .is_none();
            let mut changes = Vec::new();
            if let Some(partitions) = raise_partitions {
                admin.raise_partitions(&name, partitions).await?;
                changes.push(format!(
                    "partitions raised from {} to {partitions}",
                    state.partitions
                ));
                state.partitions = partitions;
            }
            if replace_config {
                admin.replace_config(&name, &spec.config).await?;
                changes.push("configuration updated".to_owned());
                state.config = spec.config.clone();
            }
            let (reason, message) = update_outcome(adopted, &changes, previous_ready(&resource));
            if !changes.is_empty() {
                tracing::info!(topic = %name, %message, "topic changed");
            }
            report(ctx, &resource, true, &reason, message, Some(&state)).await?;
        }
    }
    Ok(resync)
}

async fn cleanup(resource: Arc<KafkaTopic>, ctx: &Context) -> Result<Action, Error> {
    let name = topic_name(&resource);
    let successor = owner(&ctx.store, &name).filter(|o| !same(o, &resource));
    let note = match (resource.spec.deletion_policy, &successor) {
        (DeletionPolicy::Delete, None) => {
            ctx.shared.admin.delete(&name).await?;
            format!("topic `{name}` deleted with its resource")
        }
        (DeletionPolicy::Delete, Some(next)) => format!(
            "topic `{name}` kept: KafkaTopic {}/{} claims it and now manages it",
            next.namespace().unwrap_or_default(),
            next.name_any()
        ),
        (DeletionPolicy::Retain, _) => format!("resource deleted; topic `{name}` retained"),
    };
    tracing::info!(topic = %name, "{note}");
    ctx.shared.event(&*resource, false, "Deleted", note).await;
    ctx.shared.metrics.readiness(KIND, key(&*resource), None);
    // The next claimant takes over now, not at its next resync: tell it.
    if let Some(next) = successor {
        let api: Api<KafkaTopic> = Api::namespaced(
            ctx.shared.client.clone(),
            &next.namespace().unwrap_or_default(),
        );
        let from = format!(
            "{}/{}",
            resource.namespace().unwrap_or_default(),
            resource.name_any()
        );
        let patch = json!({"metadata": {"annotations": {"sagashop.dev/inherited-from": from}}});
        api.patch(
            &next.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(Action::await_change())
}

/// Removes the operator's finalizer from `resource`, if it has it.
async fn release(api: &Api<KafkaTopic>, resource: &KafkaTopic) -> Result<(), Error> {
    if resource.finalizers().iter().any(|f| f == FINALIZER) {
        let kept: Vec<&String> = resource
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .collect();
        let patch = json!({"metadata": {"finalizers": kept}});
        api.patch(
            &resource.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    Ok(())
}

/// Whether an operator that manages the resource's namespace has taken it: its finalizer
/// (`Delete`), or a status it wrote (any reason but this operator's own `NotWatched`).
fn claimed(resource: &KafkaTopic) -> bool {
    resource.finalizers().iter().any(|f| f == FINALIZER)
        || resource.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason != "NotWatched")
        })
}

async fn reconcile(resource: Arc<KafkaTopic>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = resource.namespace().unwrap_or_default();
    let api: Api<KafkaTopic> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    if !ctx.shared.scope.manages(&namespace) {
        // Another operator that manages this namespace has put its finalizer on, or reported on
        // it: leave it to it.
        if !claimed(&resource) && resource.meta().deletion_timestamp.is_none() {
            let message = ctx.shared.scope.refusal(&namespace);
            report(&ctx, &resource, false, "NotWatched", message, None).await?;
        }
        return Ok(Action::await_change());
    }
    if !managed(&resource) {
        // Stop managing, delete nothing.
        release(&api, &resource).await?;
        if resource.meta().deletion_timestamp.is_none() {
            let message =
                format!("annotation {MANAGED}=false: the operator leaves this topic alone");
            report(&ctx, &resource, false, "Unmanaged", message, None).await?;
        }
        return Ok(Action::await_change());
    }
    if resource.spec.deletion_policy == DeletionPolicy::Retain {
        // Nothing to do when it goes: no finalizer (and none left from a `Delete` before).
        release(&api, &resource).await?;
        if resource.meta().deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        return apply(resource, &ctx).await;
    }
    let action = finalizer(&api, FINALIZER, resource, |event| async {
        match event {
            Event::Apply(resource) => apply(resource, &ctx).await,
            Event::Cleanup(resource) => cleanup(resource, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })?;
    Ok(action)
}

/// Runs the reconciler over `KafkaTopic`s in the shared scope until `shutdown`.
pub async fn run(
    shared: Arc<Shared>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<KafkaTopic> = match shared.scope.single() {
        Some(ns) => Api::namespaced(shared.client.clone(), ns),
        None => Api::all(shared.client.clone()),
    };
    let controller = Controller::new(api, watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown);
    let ctx = Arc::new(Context {
        shared,
        store: controller.store(),
    });
    drain(controller.run(
        |resource, ctx: Arc<Context>| async move {
            let shared = Arc::clone(&ctx.shared);
            shared
                .measured(KIND, &*resource, reconcile(Arc::clone(&resource), ctx))
                .await
        },
        |resource, error, ctx| ctx.shared.error_action(&*resource, error),
        ctx,
    ))
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::collections::BTreeMap;

    use super::*;
    use crate::context::Scope;
    use crate::fixtures::{api_server, event_answer, shared};

    /// A KafkaTopic in namespace `shop` as the API server returns it.
    fn resource(annotations: serde_json::Value, finalizers: &[&str]) -> KafkaTopic {
        serde_json::from_value(json!({
            "apiVersion": "sagashop.dev/v1alpha1",
            "kind": "KafkaTopic",
            "metadata": {"name": "orders", "namespace": "shop", "uid": "u1", "generation": 1,
                         "annotations": annotations, "finalizers": finalizers},
            "spec": {"topicName": "orders.v1", "partitions": 4},
        }))
        .unwrap()
    }

    async fn reconciled(scope: Scope, topic: KafkaTopic) -> crate::fixtures::Calls {
        let echo = serde_json::to_value(&topic).unwrap();
        let (client, calls) = api_server(move |_, path| {
            if path.contains("/events") {
                event_answer()
            } else {
                echo.clone()
            }
        });
        let ctx = Arc::new(Context {
            shared: shared(client, scope),
            store: kube::runtime::reflector::store::<KafkaTopic>().0,
        });
        let action = reconcile(Arc::new(topic), ctx).await.unwrap();
        assert_eq!(action, Action::await_change());
        calls
    }

    #[tokio::test]
    async fn an_unmanaged_topic_loses_the_finalizer_and_says_so_without_touching_kafka() {
        let topic = resource(json!({MANAGED: "false"}), &[FINALIZER, "other/keep"]);
        let calls = reconciled(Scope::all(), topic).await;
        assert_eq!(
            calls.summary(),
            [
                "PATCH /apis/sagashop.dev/v1alpha1/namespaces/shop/sagashoptopics/orders",
                "PATCH /apis/sagashop.dev/v1alpha1/namespaces/shop/sagashoptopics/orders/status",
            ]
        );
        let all = calls.all();
        assert!(
            all[0].body.contains("other/keep") && !all[0].body.contains(FINALIZER),
            "{}",
            all[0].body
        );
        assert!(all[1].body.contains("\"Unmanaged\""), "{}", all[1].body);
        assert_eq!(calls.event_reasons(), ["Unmanaged"]);
    }

    #[tokio::test]
    async fn a_topic_outside_the_managed_namespaces_is_told_so_and_left_alone() {
        let calls = reconciled(Scope::only(["payments"]), resource(json!({}), &[])).await;
        assert_eq!(
            calls.summary(),
            ["PATCH /apis/sagashop.dev/v1alpha1/namespaces/shop/sagashoptopics/orders/status"]
        );
        let status = &calls.all()[0].body;
        assert!(
            status.contains("\"NotWatched\"") && status.contains("payments"),
            "{status}"
        );
    }

    #[tokio::test]
    async fn a_topic_another_operator_manages_is_not_claimed_as_unwatched() {
        let calls = reconciled(Scope::only(["payments"]), resource(json!({}), &[FINALIZER])).await;
        assert!(calls.all().is_empty(), "{:?}", calls.summary());
    }

    #[tokio::test]
    async fn a_retain_topic_another_operator_reported_on_is_not_claimed_as_unwatched() {
        // No finalizer (Retain), but a status the managing operator wrote.
        let mut topic = resource(json!({}), &[]);
        topic.status = Some(KafkaTopicStatus {
            conditions: vec![condition(
                &[],
                "Ready",
                true,
                "Created",
                String::new(),
                Some(1),
            )],
            ..KafkaTopicStatus::default()
        });
        let calls = reconciled(Scope::only(["payments"]), topic).await;
        assert!(calls.all().is_empty(), "{:?}", calls.summary());
    }

    fn spec(partitions: i32, replicas: i32, config: &[(&str, &str)]) -> KafkaTopicSpec {
        KafkaTopicSpec {
            topic_name: None,
            partitions,
            replicas,
            config: config
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            deletion_policy: DeletionPolicy::Retain,
        }
    }

    fn kafka(partitions: i32, replicas: i32, config: &[(&str, &str)]) -> TopicState {
        TopicState {
            partitions,
            replicas,
            config: config
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn a_missing_topic_is_created() {
        assert_eq!(decide(&spec(3, 1, &[]), None, false), Decision::Create);
    }

    #[test]
    fn fewer_partitions_than_kafka_has_is_refused_with_the_number_to_declare() {
        let Decision::Refuse { reason, message } =
            decide(&spec(2, 1, &[]), Some(&kafka(6, 1, &[])), false)
        else {
            panic!("not refused");
        };
        assert_eq!(reason, "PartitionDecrease");
        assert!(message.contains("declare at least 6"), "{message}");
    }

    #[test]
    fn another_replication_factor_is_refused_before_anything_changes() {
        // Partitions would also be raised: nothing happens while the refusal stands.
        let decision = decide(&spec(8, 3, &[]), Some(&kafka(4, 1, &[])), false);
        assert!(
            matches!(
                decision,
                Decision::Refuse {
                    reason: "ReplicationFactorMismatch",
                    ..
                }
            ),
            "{decision:?}"
        );
    }

    #[test]
    fn more_partitions_and_other_config_are_both_applied() {
        let decision = decide(
            &spec(8, 1, &[("retention.ms", "1000")]),
            Some(&kafka(4, 1, &[("cleanup.policy", "compact")])),
            false,
        );
        assert_eq!(
            decision,
            Decision::Update {
                raise_partitions: Some(8),
                replace_config: true
            }
        );
    }

    #[test]
    fn a_topic_as_declared_needs_nothing() {
        let decision = decide(
            &spec(4, 1, &[("cleanup.policy", "compact")]),
            Some(&kafka(4, 1, &[("cleanup.policy", "compact")])),
            true,
        );
        assert_eq!(
            decision,
            Decision::Update {
                raise_partitions: None,
                replace_config: false
            }
        );
    }

    #[test]
    fn a_keyed_topic_refuses_more_partitions_and_names_what_to_declare() {
        let decision = decide(&spec(8, 1, &[]), Some(&kafka(4, 1, &[])), true);
        match decision {
            Decision::Refuse { reason, message } => {
                assert_eq!(reason, "PartitionsFixed");
                assert!(message.contains("raising 4 to 8 partitions"), "{message}");
                assert!(message.contains("declare 4"), "{message}");
            }
            other => panic!("a keyed topic was grown: {other:?}"),
        }
    }

    #[test]
    fn changelogs_saga_topics_and_annotated_topics_are_keyed_others_are_not() {
        let topic = |annotations: serde_json::Value,
                     owners: serde_json::Value,
                     config: serde_json::Value| {
            serde_json::from_value::<KafkaTopic>(json!({
                "apiVersion": "sagashop.dev/v1alpha1", "kind": "KafkaTopic",
                "metadata": {"name": "t", "namespace": "ns", "annotations": annotations,
                             "ownerReferences": owners},
                "spec": {"partitions": 4, "config": config},
            }))
            .unwrap()
        };
        let saga = json!([{"apiVersion": "sagashop.dev/v1alpha1", "kind": "Saga", "name": "s", "uid": "u"}]);
        assert!(keyed(&topic(
            json!({}),
            json!([]),
            json!({"cleanup.policy": "compact,delete"})
        )));
        assert!(keyed(&topic(json!({}), saga, json!({}))));
        assert!(keyed(&topic(
            json!({PARTITIONING: "keyed"}),
            json!([]),
            json!({})
        )));
        assert!(!keyed(&topic(
            json!({}),
            json!([]),
            json!({"cleanup.policy": "delete"})
        )));
    }

    #[test]
    fn the_outcome_names_adoption_then_the_change_then_keeps_the_last_words() {
        let adopted = update_outcome(true, &[], None);
        assert_eq!(adopted.0, "Adopted");
        let raised = update_outcome(false, &["partitions raised from 4 to 8".into()], None);
        assert_eq!(raised.0, "PartitionsIncreased");
        let both = update_outcome(
            false,
            &[
                "partitions raised from 4 to 8".into(),
                "configuration updated".into(),
            ],
            None,
        );
        assert_eq!(both.0, "ConfigUpdated");
        let quiet = update_outcome(false, &[], Some(("Created", "created with 4 partitions")));
        assert_eq!(
            quiet,
            ("Created".into(), "created with 4 partitions".into())
        );
    }
}
