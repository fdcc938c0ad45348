//! The operator, started in-process against the real API server and broker, and helpers.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    dead_code,
    unreachable_pub,
    reason = "test code: a panic is the failure report; not every test uses every helper"
)]

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use sagashop_kit::Monitor;
use sagashop_kit::admin::{TopicState, describe_topics};
use sagashop_operator::{DeletionPolicy, KafkaTopic, KafkaTopicSpec, OperatorConfig, Scope};
use sagashop_testkit::{TestKafka, TestKube, eventually};
use tokio_util::sync::CancellationToken;

/// How long any wait lasts.
pub const WAIT: Duration = Duration::from_secs(60);

/// Runs kubectl with `args` and panics with its stderr when it fails; returns its stdout.
pub fn kubectl(kube: &TestKube, args: &[&str]) -> String {
    let output = kube.kubectl().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The repository's root.
pub fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart's directory, as helm takes it.
pub fn chart() -> String {
    root().join("charts/sagashop").display().to_string()
}

/// Runs helm against the test API server; panics with its stderr when it fails.
pub fn helm(kube: &TestKube, args: &[&str]) -> String {
    let output = std::process::Command::new(sagashop_testkit::tool("helm"))
        .args(args)
        .env("KUBECONFIG", &kube.kubeconfig)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "helm {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The saga configuration hash the operator stamped on a Deployment's pod template.
pub fn config_hash(deployment: &k8s_openapi::api::apps::v1::Deployment) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(sagashop_operator::sagas::CONFIG_HASH)
        .cloned()
}

/// Installs (or updates) the chart's CRDs and waits until the API server serves them.
pub fn install_crds(kube: &TestKube) {
    let crds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sagashop/crds");
    let crds = crds.to_str().unwrap();
    kubectl(
        kube,
        &["apply", "--server-side", "--force-conflicts", "-f", crds],
    );
    kubectl(
        kube,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/sagashoptopics.sagashop.dev",
            "crd/sagas.sagashop.dev",
        ],
    );
}

/// Removes every KafkaTopic's finalizers in `namespace` (no operator is left to do it), then
/// deletes the namespace.
pub async fn delete_namespace(kube: &TestKube, namespace: &str) {
    let api: Api<KafkaTopic> = Api::namespaced(kube.client.clone(), namespace);
    for topic in api.list(&Default::default()).await.unwrap() {
        let name = topic.metadata.name.clone().unwrap();
        let patch = serde_json::json!({"metadata": {"finalizers": []}});
        let _ = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
    }
    kube.delete_namespace(namespace).await;
}

/// A running operator and its namespace.
pub struct Operator {
    /// KafkaTopics in the namespace.
    pub api: Api<KafkaTopic>,
    /// The namespace it manages.
    pub namespace: String,
    /// Its metrics.
    pub monitor: Monitor,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the whole operator (both reconcilers, no leader election) on a new namespace, with a
/// `resync` period short enough for drift tests.
pub async fn operator(kube: &TestKube, kafka: &TestKafka) -> Operator {
    operator_with(
        kube,
        kafka,
        Duration::from_secs(3),
        Duration::from_millis(20),
        8,
    )
    .await
}

/// Starts the whole operator with this resync period, batch linger and concurrency.
pub async fn operator_with(
    kube: &TestKube,
    kafka: &TestKafka,
    resync: Duration,
    batch_linger: Duration,
    concurrency: u16,
) -> Operator {
    // The operator's own account of what it did, shown when a test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("sagashop_operator=debug,info")
        .with_test_writer()
        .try_init();
    install_crds(kube);
    let namespace = kube.namespace("operator").await;
    let stop = CancellationToken::new();
    let config = OperatorConfig {
        kafka: kafka.config.clone(),
        scope: Scope::only([namespace.clone()]),
        concurrency,
        resync,
        batch_linger,
        lease: None,
        instance: Some("test".into()),
    };
    let monitor = Monitor::new();
    let task = tokio::spawn({
        let (client, monitor, stop) = (kube.client.clone(), monitor.clone(), stop.clone());
        async move {
            sagashop_operator::run(client, config, &monitor, stop)
                .await
                .unwrap();
        }
    });
    Operator {
        api: Api::namespaced(kube.client.clone(), &namespace),
        namespace,
        monitor,
        stop,
        task,
    }
}

impl Operator {
    /// Stops it and deletes the namespace.
    pub async fn stop(self, kube: &TestKube) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap();
        // Finalizers of what is left would hold the namespace: let them go first.
        delete_namespace(kube, &self.namespace).await;
    }

    /// Creates a KafkaTopic.
    pub async fn create(&self, name: &str, spec: KafkaTopicSpec) {
        self.api
            .create(&PostParams::default(), &KafkaTopic::new(name, spec))
            .await
            .unwrap();
    }

    /// Deletes a resource and waits until it is gone (its finalizer done).
    pub async fn delete(&self, name: &str) {
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
    pub async fn reason(&self, name: &str, reason: &str) -> KafkaTopic {
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

/// A KafkaTopic spec.
pub fn spec(topic: &str, partitions: i32, policy: DeletionPolicy) -> KafkaTopicSpec {
    KafkaTopicSpec {
        topic_name: Some(topic.to_owned()),
        partitions,
        replicas: 1,
        config: BTreeMap::new(),
        deletion_policy: policy,
    }
}

/// How Kafka has the topic.
pub async fn in_kafka(kafka: &TestKafka, topic: &str) -> Option<TopicState> {
    let admin = std::sync::Arc::new(kafka.config.admin_client("test").unwrap());
    describe_topics(&admin, &[topic.to_owned()], WAIT)
        .await
        .unwrap()
        .remove(topic)
}

/// Waits until Kafka has the topic as `check` wants.
pub async fn until_in_kafka(kafka: &TestKafka, topic: &str, check: impl Fn(&TopicState) -> bool) {
    eventually(&format!("{topic} in Kafka"), WAIT, || async {
        in_kafka(kafka, topic)
            .await
            .filter(|s| check(s))
            .map(|_| ())
    })
    .await;
}
