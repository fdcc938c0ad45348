//! The `KafkaTopic` reconciler: makes each resource's topic exist in Kafka as declared.
//!
//! | situation | result |
//! | --- | --- |
//! | the topic does not exist | created; `Ready=True`, reason `Created` |
//! | it exists (made outside the operator) | adopted and brought to the spec; reason `Adopted` on first sight |
//! | more partitions declared | raised; reason `PartitionsIncreased` |
//! | configuration differs (also drift made outside) | the spec's set replaces the topic's own (undeclared keys reset); reason `ConfigUpdated` |
//! | fewer partitions or another replication factor than Kafka has | `Ready=False`, reason `PartitionDecrease` / `ReplicationFactorMismatch`; nothing changed, no retry storm |
//! | another resource claimed the topic name first | `Ready=False`, reason `ResourceConflict` |
//! | annotation `sagashop.dev/managed: "false"` | `Ready=False`, reason `Unmanaged`; the finalizer is removed, the topic left alone |
//! | the resource is deleted | `deletionPolicy: Delete` deletes the topic (unless another resource claims it, which then owns it); `Retain` keeps it |
//!
//! Every object is resynced every five minutes, which detects and reverts drift. Errors back off
//! exponentially per object, with jitter. Status goes through server-side apply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use sagashop_kit::admin::{TopicSpec, TopicState};
use sagashop_kit::{KafkaConfig, RetryPolicy};
use serde_json::json;

use crate::{Condition, DeletionPolicy, KafkaTopic, KafkaTopicStatus};

/// The finalizer the operator puts on every managed `KafkaTopic`.
pub const FINALIZER: &str = "sagashop.dev/topic";
/// Set to `"false"` to stop managing a topic without deleting it.
pub const MANAGED: &str = "sagashop.dev/managed";
const MANAGER: &str = "sagashop-operator";
const RESYNC: Duration = Duration::from_secs(300);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a reconciliation failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kafka refused or did not answer.
    #[error("kafka: {0}")]
    Kafka(#[from] sagashop_kit::Error),
    /// The API server refused or did not answer.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

/// What the reconciler shares.
pub struct Context {
    client: Client,
    kafka: KafkaConfig,
    admin: AdminClient<DefaultClientContext>,
    store: Store<KafkaTopic>,
    failures: Mutex<HashMap<ObjectRef<KafkaTopic>, u32>>,
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

/// Writes the status: one `Ready` condition, keeping its transition time when unchanged.
async fn report(
    ctx: &Context,
    resource: &KafkaTopic,
    ready: bool,
    reason: &str,
    message: String,
    kafka: Option<&TopicState>,
) -> Result<(), Error> {
    let status = if ready { "True" } else { "False" };
    let previous = resource
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let last_transition_time = previous
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let generation = resource.meta().generation;
    let new = KafkaTopicStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time,
            observed_generation: generation,
        }],
        observed_generation: generation,
        topic_name: Some(topic_name(resource)),
        partitions: kafka.map(|k| k.partitions),
        replicas: kafka.map(|k| k.replicas),
    };
    if resource.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let api: Api<KafkaTopic> = Api::namespaced(
        ctx.client.clone(),
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
    Ok(())
}

async fn apply(resource: Arc<KafkaTopic>, ctx: &Context) -> Result<Action, Error> {
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
        return Ok(Action::requeue(RESYNC));
    }
    let spec = &resource.spec;
    let existing = sagashop_kit::admin::describe_topics(
        &ctx.kafka,
        &ctx.admin,
        std::slice::from_ref(&name),
        KAFKA_TIMEOUT,
    )
    .await?
    .remove(&name);
    let Some(mut state) = existing else {
        let topic = TopicSpec {
            replicas: spec.replicas,
            config: spec.config.clone(),
            ..TopicSpec::new(&name, spec.partitions)
        };
        sagashop_kit::admin::create_topics(&ctx.admin, &[topic], KAFKA_TIMEOUT).await?;
        let state = TopicState {
            partitions: spec.partitions,
            replicas: spec.replicas,
            config: spec.config.clone(),
        };
        let message = format!("created with {} partitions", spec.partitions);
        report(ctx, &resource, true, "Created", message, Some(&state)).await?;
        return Ok(Action::requeue(RESYNC));
    };
    if state.replicas != spec.replicas {
        let message = format!(
            "the topic has replication factor {} and Kafka cannot change it in place; declare {} or recreate the topic",
            state.replicas, state.replicas
        );
        report(
            ctx,
            &resource,
            false,
            "ReplicationFactorMismatch",
            message,
            Some(&state),
        )
        .await?;
        return Ok(Action::requeue(RESYNC));
    }
    if state.partitions > spec.partitions {
        let message = format!(
            "the topic has {} partitions and Kafka cannot remove partitions; declare at least {}",
            state.partitions, state.partitions
        );
        report(
            ctx,
            &resource,
            false,
            "PartitionDecrease",
            message,
            Some(&state),
        )
        .await?;
        return Ok(Action::requeue(RESYNC));
    }
    // Never reported the topic's state as ours: this is the first time we manage it.
    let adopted = resource
        .status
        .as_ref()
        .and_then(|s| s.partitions)
        .is_none();
    let mut changes = Vec::new();
    if state.partitions < spec.partitions {
        sagashop_kit::admin::raise_partitions(&ctx.admin, &name, spec.partitions, KAFKA_TIMEOUT)
            .await?;
        changes.push(format!(
            "partitions raised from {} to {}",
            state.partitions, spec.partitions
        ));
        state.partitions = spec.partitions;
    }
    if state.config != spec.config {
        sagashop_kit::admin::replace_config(&ctx.admin, &name, &spec.config, KAFKA_TIMEOUT).await?;
        changes.push("configuration updated".to_owned());
        state.config = spec.config.clone();
    }
    let (reason, message) = match (adopted, changes.is_empty()) {
        (true, _) => (
            "Adopted",
            format!("adopted the existing topic {}", changes.join(", ")),
        ),
        // Nothing to do: keep saying what was last done.
        (false, true) => match resource
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .filter(|c| c.status == "True")
        {
            Some(c) => (c.reason.as_str(), c.message.clone()),
            None => ("UpToDate", "the topic matches the spec".to_owned()),
        },
        (false, false) if changes.len() == 1 && changes[0].starts_with("partitions") => {
            ("PartitionsIncreased", changes.join(", "))
        }
        (false, false) => ("ConfigUpdated", changes.join(", ")),
    };
    if !changes.is_empty() {
        tracing::info!(topic = %name, %message, "topic changed");
    }
    report(
        ctx,
        &resource,
        true,
        reason,
        message.trim().to_owned(),
        Some(&state),
    )
    .await?;
    Ok(Action::requeue(RESYNC))
}

async fn cleanup(resource: Arc<KafkaTopic>, ctx: &Context) -> Result<Action, Error> {
    let name = topic_name(&resource);
    let successor = owner(&ctx.store, &name).filter(|o| !same(o, &resource));
    match (resource.spec.deletion_policy, successor) {
        (DeletionPolicy::Delete, None) => {
            sagashop_kit::admin::delete_topic(&ctx.admin, &name, KAFKA_TIMEOUT).await?;
            tracing::info!(topic = %name, "topic deleted with its resource");
        }
        (DeletionPolicy::Delete, Some(next)) => {
            tracing::info!(topic = %name, next = %next.name_any(), "topic handed to the next claimant instead of being deleted");
        }
        (DeletionPolicy::Retain, _) => {
            tracing::info!(topic = %name, "resource deleted; topic retained");
        }
    }
    // The next claimant takes over now, not at its next resync: tell it.
    if let Some(next) = owner(&ctx.store, &name).filter(|o| !same(o, &resource)) {
        let api: Api<KafkaTopic> =
            Api::namespaced(ctx.client.clone(), &next.namespace().unwrap_or_default());
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

async fn reconcile(resource: Arc<KafkaTopic>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<KafkaTopic> = Api::namespaced(
        ctx.client.clone(),
        &resource.namespace().unwrap_or_default(),
    );
    if !managed(&resource) {
        // Stop managing, delete nothing: drop our finalizer if it is there.
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
        if resource.meta().deletion_timestamp.is_none() {
            let message =
                format!("annotation {MANAGED}=false: the operator leaves this topic alone");
            report(&ctx, &resource, false, "Unmanaged", message, None).await?;
        }
        return Ok(Action::await_change());
    }
    let action = finalizer(&api, FINALIZER, resource, |event| async {
        match event {
            Event::Apply(resource) => apply(resource, &ctx).await,
            Event::Cleanup(resource) => cleanup(resource, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(e.to_string()))?;
    Ok(action)
}

fn error_policy(resource: Arc<KafkaTopic>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(&*resource);
    let attempt = {
        let mut failures = ctx.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let backoff = RetryPolicy::unbounded(Duration::from_millis(500), Duration::from_secs(300))
        .backoff(attempt);
    tracing::warn!(name = %resource.name_any(), %error, attempt, ?backoff, "reconcile failed; retrying");
    Action::requeue(backoff)
}

/// Runs the reconciler over `KafkaTopic`s in `namespace` (every namespace when `None`) until
/// `shutdown`.
pub async fn run(
    client: Client,
    kafka: KafkaConfig,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), sagashop_kit::Error> {
    let api: Api<KafkaTopic> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let admin = kafka.admin_client("operator")?;
    let controller = Controller::new(api, watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown);
    let ctx = Arc::new(Context {
        client,
        kafka,
        admin,
        store: controller.store(),
        failures: Mutex::default(),
    });
    controller
        .run(
            |resource, ctx: Arc<Context>| async move {
                let key = ObjectRef::from_obj(&*resource);
                let result = reconcile(resource, Arc::clone(&ctx)).await;
                if result.is_ok() {
                    ctx.failures
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&key);
                }
                result
            },
            error_policy,
            ctx,
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
    Ok(())
}
