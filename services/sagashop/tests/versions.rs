//! Editing a saga while instances run: each instance runs to its end on the definition it
//! started with. Every service its own `sagashop` process on the real broker, the orchestrator
//! replaced as a rolling update replaces it.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Dev, WAIT, finished, order, post};
use reqwest::StatusCode;
use sagashop_kit::reader::read_settled;
use sagashop_testkit::{TestKafka, eventually, unique_name};
use serde_json::Value;

const SHIPPED: &str = include_str!("../../../k8s/sagas/order-fulfilment.yaml");

/// The shipped saga with long deadlines (instances wait for payment without timing out).
fn first_version() -> String {
    SHIPPED.replace("timeout: 5s", "timeout: 90s")
}

/// The first version edited: payment first, then stock (reordered), and `create-shipment`
/// removed for a new last step `ship-order` (the same participant and command).
fn second_version() -> String {
    let first = first_version();
    let at = |name: &str| first.find(&format!("    - name: {name}")).unwrap();
    let (reserve, authorize, create) = (
        at("reserve-inventory"),
        at("authorize-payment"),
        at("create-shipment"),
    );
    format!(
        "{}{}{}{}",
        &first[..reserve],
        &first[authorize..create],
        &first[reserve..authorize],
        &first[create..].replacen("name: create-shipment", "name: ship-order", 1)
    )
}

/// The steps an instance ran forward, in order.
fn steps_run(saga: &Value) -> Vec<String> {
    saga["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["phase"] == "SUCCEEDED")
        .map(|l| l["step"].as_str().unwrap().to_owned())
        .collect()
}

async fn versions(base: &str) -> Option<Vec<Value>> {
    let body: Value = reqwest::get(format!("{base}/api/sagas/versions"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["versions"].as_array().cloned()
}

async fn saga(base: &str, id: &str) -> Value {
    reqwest::get(format!("{base}/api/sagas/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Places an order every 50 ms until `stop`; returns their ids.
fn keep_ordering(base: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let body = order(&format!("c-load-{}", n % 7), "sku-2", 1, 300);
            let (status, answer) = post(&base, &body, None).await.unwrap();
            assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
            ids.push(answer["orderId"].as_str().unwrap().to_owned());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ids
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_saga_finishes_old_instances_on_their_steps_and_runs_new_ones_on_the_new() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("versions"));
    let file = |name: &str, text: String| {
        let path = std::env::temp_dir().join(format!("{prefix}{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (v1, v2) = (file("v1", first_version()), file("v2", second_version()));
    let service = |name: &'static str, saga: String, instance: &'static str| {
        let (kafka, prefix) = (&kafka, prefix.clone());
        async move {
            let mut args = vec!["--saga", saga.as_str(), "--instance", instance];
            if name == "order" {
                args.push("--create-topics");
            }
            Dev::service(kafka, name, &prefix, &args).await
        }
    };
    let edge = service("order", v1.clone(), "edge").await;
    let old = service("orchestrator", v1.clone(), "old").await;
    let inventory = service("inventory", v1.clone(), "inventory").await;
    let shipping = service("shipping", v1.clone(), "shipping").await;

    // Payment is not up yet: instances of the first version wait at authorize-payment.
    let mut before = Vec::new();
    for n in 0..8 {
        let (status, body) = post(&edge.base, &order(&format!("c-{n}"), "sku-1", 1, 500), None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        before.push(body["orderId"].as_str().unwrap().to_owned());
    }
    let waiting = format!(
        "{}/api/sagas?status=RUNNING&step=authorize-payment",
        old.base
    );
    let placed = before.len();
    eventually(
        "the first version's instances to wait for payment",
        WAIT,
        || {
            let url = waiting.clone();
            async move {
                let page: Value = reqwest::get(url).await.ok()?.json().await.ok()?;
                (page["sagas"].as_array()?.len() == placed).then_some(())
            }
        },
    )
    .await;
    let v1_version = saga(&old.base, &before[0]).await["version"]
        .as_str()
        .unwrap()
        .to_owned();

    // The edit rolls out under load: the new orchestrator joins, the old one leaves.
    let stop = Arc::new(AtomicBool::new(false));
    let during = keep_ordering(edge.base.clone(), Arc::clone(&stop));
    let new = service("orchestrator", v2.clone(), "new").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    old.terminate();
    let known = eventually("the new orchestrator to know both versions", WAIT, || {
        let base = new.base.clone();
        async move { versions(&base).await.filter(|v| v.len() == 2) }
    })
    .await;
    assert_eq!(known[0]["current"], true, "{known:?}");
    assert_eq!(
        known[0]["steps"],
        serde_json::json!(["authorize-payment", "reserve-inventory", "ship-order"])
    );
    assert_eq!(known[1]["version"], v1_version.as_str(), "{known:?}");
    assert!(known[1]["instances"].as_u64().unwrap() >= 8, "{known:?}");
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_sagashop"))
        .args(["saga", "--url", &new.base, "versions"])
        .output()
        .unwrap();
    let printed = common::output_text(&cli);
    assert!(cli.status.success(), "{printed}");
    assert!(
        printed.contains("authorize-payment > reserve-inventory > ship-order")
            && printed.contains("reserve-inventory > authorize-payment > create-shipment")
            && printed.contains(&v1_version),
        "{printed}"
    );
    eprintln!("versions: `sagashop saga versions` during the rollout:\n{printed}");
    // The orchestrator that leads publishes the counts on the versions topic (for the
    // operator's Saga status).
    let topic = edge.topic("saga.order-fulfilment.versions");
    eventually(
        "the versions topic to carry both versions' counts",
        WAIT,
        || {
            let (config, topic) = (kafka.config.clone(), topic.clone());
            async move {
                let records = read_settled(&config, "test-versions", &topic, WAIT)
                    .await
                    .ok()?;
                let counted: std::collections::HashSet<String> = records
                    .iter()
                    .filter_map(|r| serde_json::from_slice::<Value>(r.payload.as_deref()?).ok())
                    .filter(|r| r["instances"].is_u64())
                    .filter_map(|r| r["version"].as_str().map(str::to_owned))
                    .collect();
                (counted.len() == 2).then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_edit: Vec<String> = {
        let mut after = Vec::new();
        for n in 0..5 {
            let (_, body) = post(
                &edge.base,
                &order(&format!("c-new-{n}"), "sku-1", 1, 400),
                None,
            )
            .await
            .unwrap();
            after.push(body["orderId"].as_str().unwrap().to_owned());
        }
        after
    };
    let payment = service("payment", v1.clone(), "payment").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let during = during.await.unwrap();
    assert!(!during.is_empty());

    // Every order completes; each instance ran the steps of the version it started on.
    let old_steps = ["reserve-inventory", "authorize-payment", "create-shipment"];
    let new_steps = ["authorize-payment", "reserve-inventory", "ship-order"];
    let mut on_version = [0, 0];
    for id in before.iter().chain(&after_edit).chain(&during) {
        let outcome = finished(&edge.base, id).await;
        assert_eq!(outcome["status"], "COMPLETED", "{outcome}");
        let instance = saga(&new.base, id).await;
        let on_old = instance["version"] == v1_version.as_str();
        let expected = if on_old { old_steps } else { new_steps };
        assert_eq!(steps_run(&instance), expected, "{instance}");
        on_version[usize::from(!on_old)] += 1;
        if before.contains(id) {
            assert!(on_old, "started before the edit: {instance}");
        }
        if after_edit.contains(id) {
            assert!(!on_old, "started after the edit: {instance}");
        }
    }
    eprintln!(
        "versions: {} instances on the first version, {} on the second ({} placed during the rollout)",
        on_version[0],
        on_version[1],
        during.len()
    );

    // The old version is retired once its last instance has ended.
    let retired = eventually("the first version to be retired", WAIT, || {
        let base = new.base.clone();
        async move { versions(&base).await.filter(|v| v.len() == 1) }
    })
    .await;
    assert_ne!(retired[0]["version"], v1_version.as_str(), "{retired:?}");
    for p in [payment, new, shipping, inventory, edge] {
        p.terminate();
    }
}
