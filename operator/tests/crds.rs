//! The committed CRDs on the real API server: valid resources are accepted, and the schema and
//! CEL rules refuse bad ones and bad edits at `apply` time.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use sagashop_operator::{KafkaTopic, KafkaTopicSpec, Saga};
use sagashop_testkit::TestKube;

async fn install_crds(kube: &TestKube) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sagashop/crds");
    for file in ["kafkatopics.sagashop.dev.yaml", "sagas.sagashop.dev.yaml"] {
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
    for crd in ["kafkatopics.sagashop.dev", "sagas.sagashop.dev"] {
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
