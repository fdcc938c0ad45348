//! The test infrastructure itself: a real API server that enforces CRD schemas, and the
//! project-local tools at their pinned versions.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::process::Output;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use sagashop_testkit::{TestKube, tool};
use serde_json::json;

fn succeeded(what: &str, output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn crd_yaml(group: &str, plural: &str, kind: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: {plural}, singular: {plural}-one, kind: {kind}}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {{type: integer, minimum: 1}}
              colour: {{type: string, enum: [red, green]}}
"#
    )
}

#[tokio::test]
async fn a_crd_applied_server_side_serves_objects_and_refuses_invalid_ones() {
    let kube = TestKube::connect().await;
    let suffix = sagashop_testkit::unique_name("w").replace('-', "");
    let (group, plural, kind) = (
        "testkit.sagashop.dev",
        suffix.clone(),
        format!("Widget{suffix}"),
    );
    let crd_name = format!("{plural}.{group}");

    let dir = std::env::temp_dir().join(&suffix);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("crd.yaml");
    std::fs::write(&file, crd_yaml(group, &plural, &kind)).unwrap();
    let applied = kube
        .kubectl()
        .args([
            "apply",
            "--server-side",
            "--field-manager",
            "sagashop-test",
            "-f",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = succeeded("kubectl apply --server-side", &applied);
    assert!(stdout.contains("serverside-applied"), "{stdout}");
    let established = kube
        .kubectl()
        .args(["wait", "--for=condition=Established", "--timeout=60s"])
        .arg(format!("crd/{crd_name}"))
        .output()
        .unwrap();
    succeeded("kubectl wait Established", &established);

    let namespace = kube.namespace("crd").await;
    let gvk = GroupVersionKind::gvk(group, "v1", &kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<DynamicObject> = Api::namespaced_with(kube.client.clone(), &namespace, &resource);

    let valid =
        DynamicObject::new("small", &resource).data(json!({"spec": {"size": 3, "colour": "red"}}));
    api.create(&PostParams::default(), &valid).await.unwrap();
    let back = api.get("small").await.unwrap();
    assert_eq!(back.data["spec"], json!({"size": 3, "colour": "red"}));

    let invalid = DynamicObject::new("broken", &resource)
        .data(json!({"spec": {"size": 0, "colour": "blue"}}));
    let err = api
        .create(&PostParams::default(), &invalid)
        .await
        .expect_err("the API server accepted an object its CRD schema forbids");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("spec.size"), "{}", status.message);
            assert!(status.message.contains("spec.colour"), "{}", status.message);
        }
        other => panic!("expected a 422 from the API server, got {other:?}"),
    }
    assert!(api.get_opt("broken").await.unwrap().is_none());

    kube.delete_namespace(&namespace).await;
    let deleted = kube
        .kubectl()
        .args(["delete", "crd", &crd_name, "--wait=false"])
        .output()
        .unwrap();
    succeeded("kubectl delete crd", &deleted);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn project_tools_run_at_their_pinned_versions() {
    for (name, args, expected) in [
        (
            "kubectl",
            &["version", "--client"][..],
            "Client Version: v1.36.3",
        ),
        ("helm", &["version", "--short"][..], "v3.22.0"),
        ("k6", &["version"][..], "k6 v1.1.0"),
        (
            "kcat",
            &["-V"][..],
            "kcat - Apache Kafka producer and consumer tool",
        ),
    ] {
        let output = std::process::Command::new(tool(name))
            .args(args)
            .output()
            .unwrap();
        let stdout = succeeded(name, &output);
        assert!(stdout.contains(expected), "{name}: {stdout}");
    }
}
