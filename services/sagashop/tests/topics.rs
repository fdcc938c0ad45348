//! One list of topics: what `sagashop topics` says the services need is what Kubernetes gets —
//! the saga's topics from the operator, the rest from the chart's and `k8s/topics.yaml`'s
//! KafkaTopics, with the same configuration.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use sagashop_testkit::tool;
use serde_json::Value;

type Topics = BTreeMap<String, BTreeMap<String, String>>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kafka_topics(yaml: &str) -> Topics {
    serde_saphyr::from_multiple::<Option<Value>>(yaml)
        .unwrap()
        .into_iter()
        .flatten()
        .filter(|o| o["kind"] == "KafkaTopic")
        .map(|o| {
            let name = o["spec"]["topicName"]
                .as_str()
                .or(o["metadata"]["name"].as_str())
                .unwrap()
                .to_owned();
            let config = serde_json::from_value(o["spec"]["config"].clone()).unwrap_or_default();
            (name, config)
        })
        .collect()
}

#[test]
fn the_chart_and_the_plain_manifests_declare_exactly_the_topics_the_services_need() {
    let output = Command::new(env!("CARGO_BIN_EXE_sagashop"))
        .arg("topics")
        .output()
        .unwrap();
    assert!(output.status.success());
    let all: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let services: Topics = all
        .iter()
        .filter(|t| t["declaredBy"] == "services")
        .map(|t| {
            let config = serde_json::from_value(t["config"].clone()).unwrap();
            (t["name"].as_str().unwrap().to_owned(), config)
        })
        .collect();
    assert_eq!(services.len(), 14, "{services:?}");
    assert_eq!(all.len(), 25);

    let plain = std::fs::read_to_string(root().join("k8s/topics.yaml")).unwrap();
    assert_eq!(
        kafka_topics(&plain),
        services,
        "k8s/topics.yaml differs from `sagashop topics`"
    );

    let chart = root().join("charts/sagashop");
    let rendered = Command::new(tool("helm"))
        .args(["template", "sagashop"])
        .arg(&chart)
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let rendered = String::from_utf8(rendered.stdout).unwrap();
    assert_eq!(
        kafka_topics(&rendered),
        services,
        "charts/sagashop/templates/topics.yaml differs from `sagashop topics`"
    );
}
