//! The committed CRDs on the real API server: valid resources are accepted, and the schema and
//! CEL rules refuse bad ones and bad edits at `apply` time.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, CustomResourceExt};
use sagashop_operator::{KafkaTopic, KafkaTopicSpec, Saga};
use sagashop_testkit::TestKube;

async fn install_crds(kube: &TestKube) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sagashop/crds");
    for file in [
        "sagashoptopics.sagashop.dev.yaml",
        "sagas.sagashop.dev.yaml",
    ] {
        let applied = kube
            .kubectl()
            .args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(dir.join(file))
            .output()
            .unwrap();
        assert!(
            applied.status.success(),
            "kubectl apply {file}: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
    }
    for crd in ["sagashoptopics.sagashop.dev", "sagas.sagashop.dev"] {
        let established = kube
            .kubectl()
            .args(["wait", "--for=condition=Established", "--timeout=60s"])
            .arg(format!("crd/{crd}"))
            .output()
            .unwrap();
        assert!(established.status.success(), "{crd} not established");
    }
}

/// The API server's refusal message, or a panic if it accepted.
fn refused<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        other => panic!("expected a 422, got {other:?}"),
    }
}

fn topic(name: &str, partitions: i32) -> KafkaTopic {
    KafkaTopic::new(
        name,
        KafkaTopicSpec {
            topic_name: Some(format!("{name}.v1")),
            partitions,
            replicas: 1,
            config: Default::default(),
            deletion_policy: Default::default(),
        },
    )
}

#[tokio::test]
async fn kafka_topic_edits_kafka_cannot_do_are_refused_at_apply_time() {
    let kube = TestKube::connect().await;
    install_crds(&kube).await;
    let namespace = kube.namespace("crds").await;
    let api: Api<KafkaTopic> = Api::namespaced(kube.client.clone(), &namespace);

    api.create(&PostParams::default(), &topic("orders", 4))
        .await
        .unwrap();
    let message = refused(api.create(&PostParams::default(), &topic("none", 0)).await);
    assert!(message.contains("spec.partitions"), "{message}");

    let patch = |spec: serde_json::Value| {
        let api = api.clone();
        async move {
            api.patch(
                "orders",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": spec })),
            )
            .await
        }
    };
    let message = refused(patch(serde_json::json!({"partitions": 2})).await);
    assert!(message.contains("partitions cannot decrease"), "{message}");
    let message = refused(patch(serde_json::json!({"replicas": 3})).await);
    assert!(message.contains("replicas cannot change"), "{message}");
    let message = refused(patch(serde_json::json!({"topicName": "renamed.v1"})).await);
    assert!(message.contains("topicName cannot change"), "{message}");
    // What Kafka can do is accepted.
    let raised = patch(serde_json::json!({"partitions": 8})).await.unwrap();
    assert_eq!(raised.spec.partitions, 8);
    kube.delete_namespace(&namespace).await;
}

#[tokio::test]
async fn the_shipped_saga_is_accepted_and_duplicate_step_names_are_not() {
    let kube = TestKube::connect().await;
    install_crds(&kube).await;
    let namespace = kube.namespace("saga-crd").await;
    let api: Api<Saga> = Api::namespaced(kube.client.clone(), &namespace);
    let shipped: Saga =
        serde_saphyr::from_str(include_str!("../../k8s/sagas/order-fulfilment.yaml")).unwrap();
    api.create(&PostParams::default(), &shipped).await.unwrap();

    let mut duplicate = shipped.clone();
    duplicate.metadata.name = Some("duplicate".into());
    duplicate.spec.steps[1].name = duplicate.spec.steps[0].name.clone();
    let message = refused(api.create(&PostParams::default(), &duplicate).await);
    assert!(message.contains("step names must be unique"), "{message}");
    kube.delete_namespace(&namespace).await;
}

/// Strimzi's `KafkaTopic` CRD as far as names go (group, kind, plural, singular, short name are
/// Strimzi's; the schema is left open): what a GKE cluster running Strimzi has installed.
const STRIMZI_KAFKA_TOPIC_CRD: &str = r"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: kafkatopics.kafka.strimzi.io
spec:
  group: kafka.strimzi.io
  scope: Namespaced
  names: {kind: KafkaTopic, listKind: KafkaTopicList, plural: kafkatopics, singular: kafkatopic, shortNames: [kt], categories: [strimzi]}
  versions:
    - name: v1beta2
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

#[tokio::test]
async fn our_topic_crd_installs_beside_strimzis_and_each_is_reached_by_its_own_names() {
    let kube = TestKube::connect().await;
    install_crds(&kube).await;
    let strimzi = kube
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut strimzi = strimzi;
    std::io::Write::write_all(
        &mut strimzi.stdin.take().unwrap(),
        STRIMZI_KAFKA_TOPIC_CRD.as_bytes(),
    )
    .unwrap();
    assert!(strimzi.wait().unwrap().success(), "Strimzi's CRD refused");
    let kubectl = |args: &[&str]| {
        let out = kube.kubectl().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/kafkatopics.kafka.strimzi.io",
    ]);
    // Both CRDs accepted their names: nothing of ours collides with Strimzi's.
    let names = kubectl(&[
        "get",
        "crd/sagashoptopics.sagashop.dev",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="NamesAccepted")].status}"#,
    ]);
    assert_eq!(names, "True");

    let namespace = kube.namespace("strimzi").await;
    let ours: Api<KafkaTopic> = Api::namespaced(kube.client.clone(), &namespace);
    ours.create(&PostParams::default(), &topic("ours", 4))
        .await
        .unwrap();
    let theirs = format!(
        "apiVersion: kafka.strimzi.io/v1beta2\nkind: KafkaTopic\nmetadata: {{name: theirs, namespace: {namespace}}}\nspec: {{partitions: 1, replicas: 1}}\n"
    );
    let mut apply = kube
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut apply.stdin.take().unwrap(), theirs.as_bytes()).unwrap();
    assert!(apply.wait().unwrap().success());

    // Our names reach ours only; Strimzi's plural and short name reach Strimzi's only.
    let list = |resource: &str| {
        kubectl(&["get", resource, "-n", &namespace, "-o", "name"])
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    for resource in [
        "sagashoptopics",
        "sagashoptopic",
        "sst",
        "sagashoptopics.sagashop.dev",
    ] {
        assert_eq!(
            list(resource),
            ["kafkatopic.sagashop.dev/ours"],
            "kubectl get {resource}"
        );
    }
    for resource in [
        "kafkatopics",
        "kafkatopic",
        "kt",
        "kafkatopics.kafka.strimzi.io",
    ] {
        assert_eq!(
            list(resource),
            ["kafkatopic.kafka.strimzi.io/theirs"],
            "kubectl get {resource}"
        );
    }
    kube.delete_namespace(&namespace).await;
}

/// Every field of both CRDs' `spec` and `status`, as dotted paths (`spec.steps[].retry`).
fn field_paths(schema: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    for (name, field) in schema["properties"].as_object().into_iter().flatten() {
        let path = if at.is_empty() {
            name.clone()
        } else {
            format!("{at}.{name}")
        };
        out.push(path.clone());
        field_paths(field, &path, out);
        field_paths(&field["items"], &format!("{path}[]"), out);
    }
}

#[test]
fn the_crd_reference_names_every_field() {
    let reference = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md"),
    )
    .unwrap();
    let mut missing = Vec::new();
    for (kind, crd) in [
        (
            "KafkaTopic",
            serde_json::to_value(KafkaTopic::crd()).unwrap(),
        ),
        ("Saga", serde_json::to_value(Saga::crd()).unwrap()),
    ] {
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut paths = Vec::new();
        field_paths(&schema["properties"]["spec"], "spec", &mut paths);
        field_paths(&schema["properties"]["status"], "status", &mut paths);
        assert!(paths.len() > 10, "{kind}: {paths:?}");
        for path in paths {
            // `spec.steps[].retry.maxAttempts` is documented as `spec.steps[].retry.maxAttempts`
            // or, in a row that starts with its parent, as `.maxAttempts`.
            let (parent, leaf) = path.rsplit_once('.').unwrap_or(("", &path));
            // An object's own row, or a row of one of its fields (`spec.outcome.topic`).
            let whole = reference.contains(&format!("`{path}`"))
                || reference.contains(&format!("`{path}."))
                || reference.contains(&format!("`{path}[]"));
            let in_row = reference.lines().any(|l| {
                l.starts_with('|')
                    && l.contains(&format!("`{parent}"))
                    && (l.contains(&format!("`.{leaf}`"))
                        || l.contains(&format!("`{parent}.{leaf}`")))
            });
            if !whole && !in_row {
                missing.push(format!("{kind} {path}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/api.md does not describe these fields: {missing:?}"
    );
}
