//! What both reconcilers share: the clients, the namespaces the operator manages, status
//! conditions, events and per-object backoff.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use sagashop_kit::RetryPolicy;

use crate::Condition;
use crate::admin::{KafkaError, TopicAdmin};
use crate::metrics::Metrics;

/// The field manager of everything the operator writes by server-side apply.
pub const MANAGER: &str = "sagashop-operator";

/// The namespaces whose resources the operator manages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// `None`: every namespace.
    namespaces: Option<BTreeSet<String>>,
}

impl Scope {
    /// Every namespace.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only these namespaces (every namespace when the list is empty).
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(namespaces: I) -> Self {
        let set: BTreeSet<String> = namespaces
            .into_iter()
            .map(Into::into)
            .filter(|n| !n.is_empty())
            .collect();
        Self {
            namespaces: (!set.is_empty()).then_some(set),
        }
    }

    /// The one namespace to watch when the operator manages exactly one (a namespaced watch
    /// needs only a namespaced Role); `None` means watch every namespace.
    pub fn single(&self) -> Option<&str> {
        match &self.namespaces {
            Some(set) if set.len() == 1 => set.iter().next().map(String::as_str),
            _ => None,
        }
    }

    /// Whether the operator manages resources in `namespace`.
    pub fn manages(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|set| set.contains(namespace))
    }

    /// The condition message for a resource outside the scope.
    pub fn refusal(&self, namespace: &str) -> String {
        let list = self
            .namespaces
            .as_ref()
            .map(|s| s.iter().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        format!(
            "namespace `{namespace}` is not managed by this operator (it manages: {list}); \
             add it to WATCH_NAMESPACES or run an operator there"
        )
    }
}

/// Why a reconciliation failed (it is retried with per-object backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kafka refused or did not answer.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The API server refused or did not answer.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// The metric label of this kind of failure.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kafka(_) => "kafka",
            Self::Kube(_) => "kubernetes",
            Self::Finalizer(_) => "finalizer",
        }
    }
}

/// What both reconcilers share.
pub struct Shared {
    /// The API client.
    pub client: Client,
    /// Kafka, batched.
    pub admin: TopicAdmin,
    /// Publishes Kubernetes events.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// The namespaces it manages.
    pub scope: Scope,
    /// How often every object is reconciled even when nothing changed (drift detection).
    pub resync: Duration,
    /// Kafka, to read what the orchestrators publish (sagas' versions); `None` reads nothing.
    pub kafka: Option<sagashop_kit::KafkaConfig>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Shared {
    /// Bundles what the reconcilers need.
    pub fn new(
        client: Client,
        admin: TopicAdmin,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        scope: Scope,
        resync: Duration,
    ) -> Self {
        Self {
            client,
            admin,
            recorder,
            metrics,
            scope,
            resync,
            kafka: None,
            failures: Mutex::default(),
        }
    }

    /// Reads what the orchestrators publish to `kafka` (sagas' versions) into the status.
    #[must_use]
    pub fn reading(mut self, kafka: sagashop_kit::KafkaConfig) -> Self {
        self.kafka = Some(kafka);
        self
    }

    /// Publishes an event about `resource`; a failure to publish is logged, never fatal.
    pub async fn event<K>(&self, resource: &K, warning: bool, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &resource.object_ref(&()))
            .await
        {
            tracing::warn!(name = %resource.name_any(), error = %e, "could not publish an event");
        }
    }

    /// The backoff after the `key`'s next consecutive failure: exponential from 500 ms to five
    /// minutes, with jitter, per object, so one broken object never slows the others.
    pub fn backoff(&self, key: String) -> (u32, Duration) {
        let attempt = {
            let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            let n = failures.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let policy = RetryPolicy::unbounded(Duration::from_millis(500), Duration::from_secs(300));
        (attempt, policy.backoff(attempt))
    }

    /// Forgets `key`'s failures after a success.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Runs one reconciliation of `resource`, timing and counting it, and forgetting the
    /// object's past failures when it succeeds.
    pub async fn measured<K, F>(
        &self,
        kind: &'static str,
        resource: &K,
        reconcile: F,
    ) -> Result<Action, Error>
    where
        K: Resource<DynamicType = ()>,
        F: Future<Output = Result<Action, Error>>,
    {
        let started = std::time::Instant::now();
        let object = key(resource);
        let result = reconcile.await;
        let error = result.as_ref().err().map(Error::label);
        self.metrics.reconciled(kind, started.elapsed(), error);
        if result.is_ok() {
            self.succeeded(&object);
        }
        result
    }

    /// The requeue after a failed reconciliation of `resource`.
    pub fn error_action<K: Resource<DynamicType = ()>>(
        &self,
        resource: &K,
        error: &Error,
    ) -> Action {
        let (attempt, backoff) = self.backoff(key(resource));
        tracing::warn!(
            kind = %K::kind(&()),
            name = %resource.name_any(),
            %error,
            attempt,
            ?backoff,
            "reconcile failed; retrying"
        );
        Action::requeue(backoff)
    }
}

/// Drives a controller's stream of results to its end; failures were logged where they happened.
pub async fn drain<T, E: std::fmt::Display>(results: impl Stream<Item = Result<T, E>>) {
    results
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
}

/// `<kind>/<namespace>/<name>`: one object's key in backoff and metrics.
pub fn key<K: Resource<DynamicType = ()>>(resource: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        resource.namespace().unwrap_or_default(),
        resource.name_any()
    )
}

/// A condition of `type_`, keeping `previous`'s transition time when the status is unchanged.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ready: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if ready { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_of_one_namespace_watches_only_it_and_refuses_the_rest_by_name() {
        let scope = Scope::only(["shop"]);
        assert_eq!(scope.single(), Some("shop"));
        assert!(scope.manages("shop"));
        assert!(!scope.manages("other"));
        let message = scope.refusal("other");
        assert!(message.contains("`other`") && message.contains("manages: shop"));
    }

    #[test]
    fn an_empty_scope_manages_everything_and_several_namespaces_need_a_cluster_watch() {
        assert!(Scope::only(Vec::<String>::new()).manages("any"));
        assert_eq!(Scope::all().single(), None);
        let two = Scope::only(["a", "b"]);
        assert_eq!(two.single(), None);
        assert!(two.manages("b") && !two.manages("c"));
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let first = condition(&[], "Ready", true, "Created", "made".into(), Some(1));
        let mut earlier = first.clone();
        earlier.last_transition_time = "2020-01-01T00:00:00Z".into();
        let same = condition(
            &[earlier.clone()],
            "Ready",
            true,
            "UpToDate",
            "ok".into(),
            Some(2),
        );
        assert_eq!(same.last_transition_time, "2020-01-01T00:00:00Z");
        let flipped = condition(
            &[earlier],
            "Ready",
            false,
            "PartitionDecrease",
            "no".into(),
            Some(3),
        );
        assert_ne!(flipped.last_transition_time, "2020-01-01T00:00:00Z");
        assert_eq!(flipped.status, "False");
    }
}
