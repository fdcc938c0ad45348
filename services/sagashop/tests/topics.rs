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
    let all = topics_json();
    let services: Topics = all
        .iter()
        .filter(|t| t["declaredBy"] == "services")
        .map(|t| {
            let config = serde_json::from_value(t["config"].clone()).unwrap();
            (t["name"].as_str().unwrap().to_owned(), config)
        })
        .collect();
    assert_eq!(services.len(), 14, "{services:?}");
    assert_eq!(all.len(), 26);

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

/// `sagashop topics` as JSON.
fn topics_json() -> Vec<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_sagashop"))
        .arg("topics")
        .output()
        .unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_charts_topic_list_is_generated_from_sagashop_topics() {
    let kept: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(root().join("charts/sagashop/files/topics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        kept,
        topics_json(),
        "charts/sagashop/files/topics.json is stale: regenerate it with \
         `cargo run -p sagashop -- topics > charts/sagashop/files/topics.json`"
    );
}

#[test]
fn the_charts_service_list_is_generated_from_sagashop_services_and_each_runs() {
    let output = Command::new(env!("CARGO_BIN_EXE_sagashop"))
        .arg("services")
        .output()
        .unwrap();
    assert!(output.status.success());
    let services: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let kept: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(root().join("charts/sagashop/files/services.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        kept, services,
        "charts/sagashop/files/services.json is stale: regenerate it with \
         `cargo run -p sagashop -- services > charts/sagashop/files/services.json`"
    );
    assert_eq!(services.len(), 7);
    // Each is a subcommand (what the chart's pods run), with its own help.
    for service in &services {
        let name = service["name"].as_str().unwrap();
        let help = Command::new(env!("CARGO_BIN_EXE_sagashop"))
            .args([name, "--help"])
            .output()
            .unwrap();
        assert!(help.status.success(), "sagashop {name} --help");
        let text = String::from_utf8(help.stdout).unwrap();
        assert!(
            text.starts_with(service["about"].as_str().unwrap()),
            "sagashop {name} --help: {text}"
        );
        assert!(text.contains("--kafka-bootstrap-servers"), "{text}");
    }
}

/// `name` as a whole token of `text` (not part of a longer name).
fn mentions(text: &str, name: &str) -> bool {
    let part = |c: char| c.is_alphanumeric() || matches!(c, '_' | '.' | '-');
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(part) && !after.is_some_and(part)
    })
}

/// The code of every source file, template and script under `dir`, but not tests or
/// benchmarks (whose names are what they check).
fn code_under(dir: &std::path::Path, found: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(
                name.as_str(),
                "tests" | "benches" | "target" | "fuzz" | "node_modules"
            ) {
                code_under(&path, found);
            }
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let code = if name.ends_with(".rs") {
            text.split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .to_owned()
        } else {
            text
        };
        found.push((path, code));
    }
}

#[test]
fn every_topic_and_group_name_is_written_in_one_place() {
    let mut names: Vec<String> = topics_json()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    names.push(sagashop_topology::ORDER_VIEW_GROUP.to_owned());
    let mut files = Vec::new();
    for dir in [
        "services",
        "operator/src",
        "xtask/src",
        "charts/sagashop/templates",
        "scripts",
        "k6",
    ] {
        code_under(&root().join(dir), &mut files);
    }
    assert!(files.len() > 50, "only {} files read", files.len());
    let topology = root().join("services/topology/src/lib.rs");
    let mut twice = Vec::new();
    for name in &names {
        let elsewhere: Vec<String> = files
            .iter()
            .filter(|(path, code)| {
                !path.ends_with("services/topology/src/lib.rs") && mentions(code, name)
            })
            .map(|(path, _)| {
                path.strip_prefix(root())
                    .unwrap_or(path)
                    .display()
                    .to_string()
            })
            .collect();
        if !elsewhere.is_empty() {
            twice.push(format!("{name}: {}", elsewhere.join(", ")));
        }
    }
    assert!(
        twice.is_empty(),
        "these names are written outside {} (the saga's come from its Saga file, the rest \
         from the topology's table; take them from there):\n{}",
        topology.display(),
        twice.join("\n")
    );
    // The check sees a name where it is written.
    assert!(mentions(
        "let t = \"payment.balances.v1\";",
        "payment.balances.v1"
    ));
    assert!(!mentions(
        "let t = \"payment.balances.v10\";",
        "payment.balances.v1"
    ));
}
