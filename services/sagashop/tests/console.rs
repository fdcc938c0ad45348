//! The console at `/console`, in a real headless Chromium against `sagashop dev` on the real
//! broker: the list shows the orders placed here and filters them, a completed and a
//! compensated order show their steps on the timeline, retry and cancel act on a stuck saga
//! (refused without the admin token), a dead letter is replayed from its page, and the flow,
//! topics and load pages draw. Screenshots of every page go to `target/console/`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::browser::Browser;
use common::{ADMIN_TOKEN, Dev, WAIT, finished, order, post};
use reqwest::StatusCode;
use sagashop_testkit::{TestKafka, eventually, unique_name};
use serde_json::{Value, json};

const SEE: Duration = Duration::from_secs(30);

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console")
}

/// The shipped saga with `create-shipment` given ten minutes to answer, so that a saga whose
/// shipping command is lost stays stuck there (and its compensation too) for the whole test.
fn patient_saga() -> PathBuf {
    let shipped = include_str!("../../../k8s/sagas/order-fulfilment.yaml");
    let (before, after) = shipped.split_once("- name: create-shipment").unwrap();
    let after = after.replacen("timeout: 5s", "timeout: 10m", 1);
    let path = std::env::temp_dir().join(format!("{}.yaml", unique_name("patient-saga")));
    std::fs::write(&path, format!("{before}- name: create-shipment{after}")).unwrap();
    path
}

async fn place(base: &str, customer: &str, product: &str) -> String {
    let (status, placed) = post(base, &order(customer, product, 1, 500), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{placed}");
    placed["orderId"].as_str().unwrap().to_owned()
}

async fn saga(base: &str, id: &str) -> Option<Value> {
    reqwest::get(format!("{base}/api/sagas/{id}"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn dead_letters(base: &str, topic: &str) -> usize {
    let all: Value = reqwest::get(format!("{base}/api/dead-letters"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    all["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == topic)
        .and_then(|t| t["count"].as_u64())
        .map_or(0, |n| usize::try_from(n).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_sagas_and_acts_on_them_in_a_real_browser() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("console"));
    let saga_file = patient_saga();
    let saga_arg = saga_file.display().to_string();

    // A completed order and a compensated one (sku-9 is out of stock).
    let dev = Dev::start(
        &kafka,
        &prefix,
        &["--saga", &saga_arg, "--out-of-stock", "sku-9"],
    )
    .await;
    let completed = place(&dev.base, "c-done", "sku-1").await;
    let cancelled = place(&dev.base, "c-none", "sku-9").await;
    assert_eq!(finished(&dev.base, &completed).await["status"], "COMPLETED");
    assert_eq!(finished(&dev.base, &cancelled).await["status"], "CANCELLED");
    dev.terminate();

    // Then shipping breaks: its commands are dead-lettered and the next saga is stuck.
    let dev = Dev::start(
        &kafka,
        &prefix,
        &["--saga", &saga_arg, "--shipping-transient-rate", "1"],
    )
    .await;
    let stuck = place(&dev.base, "c-stuck", "sku-1").await;
    let shipping = sagashop_topology::Topology::load(None, &prefix)
        .unwrap()
        .wiring(sagashop_topology::Service::Shipping)
        .unwrap();
    let shipping_dlq = shipping.dead_letter_topic.clone();
    eventually("the shipping command to be dead-lettered", WAIT, || {
        let (base, topic) = (dev.base.clone(), shipping_dlq.clone());
        async move { (dead_letters(&base, &topic).await >= 1).then_some(()) }
    })
    .await;
    let waiting = saga(&dev.base, &stuck).await.unwrap();
    assert_eq!(waiting["status"], "RUNNING", "{waiting}");
    assert_eq!(waiting["step"], "create-shipment", "{waiting}");

    let browser = Browser::start(1400, 1000).await;
    let console = format!("{}/console", dev.base);

    // The list: every order placed here, with its status.
    browser.open(&format!("{console}#/sagas")).await;
    for id in [&completed, &cancelled, &stuck] {
        browser
            .wait_for(&format!("#saga-rows tr[data-id='{id}']"), SEE)
            .await;
    }
    let counts = browser.text("#counts").await;
    assert!(counts.contains("completed"), "{counts}");
    browser.screenshot(&shots().join("sagas.png")).await;

    // A filter: only the cancelled one.
    browser
        .click("#filter-status option[value='CANCELLED']")
        .await;
    browser
        .wait_for(&format!("#saga-rows tr[data-id='{cancelled}']"), SEE)
        .await;
    let rows = browser.all("#saga-rows tr[data-id]").await;
    let statuses = browser
        .run(
            "return [...document.querySelectorAll('#saga-rows tr[data-id]')].map(r => r.dataset.status);",
            json!([]),
        )
        .await;
    assert!(!rows.is_empty());
    assert!(
        statuses
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s == "CANCELLED"),
        "the filter let through {statuses}"
    );

    // The timeline of the completed order: every step succeeded.
    browser.open(&format!("{console}#/saga/{completed}")).await;
    browser.wait_for("#timeline", SEE).await;
    let succeeded = browser
        .all("#timeline circle[data-phase='SUCCEEDED']")
        .await;
    assert_eq!(succeeded.len(), 3, "three steps succeeded");
    let rows = browser.text("#timeline-rows").await;
    for step in ["reserve-inventory", "authorize-payment", "create-shipment"] {
        assert!(rows.contains(step), "{rows}");
    }
    browser
        .screenshot(&shots().join("timeline-completed.png"))
        .await;

    // The compensated order: the failed step and its compensation.
    browser.open(&format!("{console}#/saga/{cancelled}")).await;
    browser
        .wait_for("#timeline circle[data-phase='FAILED']", SEE)
        .await;
    let head = browser.text("#saga-head").await;
    assert!(head.contains("CANCELLED"), "{head}");
    browser
        .screenshot(&shots().join("timeline-cancelled.png"))
        .await;

    // The stuck saga: retry without the token is refused and writes nothing.
    browser.open(&format!("{console}#/saga/{stuck}")).await;
    browser.wait_for("#retry", SEE).await;
    browser.click("#retry").await;
    browser
        .type_into("#confirm-reason", "shipping fixed?")
        .await;
    browser.click("#confirm-yes").await;
    browser
        .wait_text("#message", SEE, |t| t.contains("Admin token required"))
        .await;
    let still = saga(&dev.base, &stuck).await.unwrap();
    assert_eq!(
        still["attempt"], 1,
        "a refused retry changes nothing: {still}"
    );

    // With the token: retry sends attempt 2, cancel compensates.
    browser.type_into("#token", ADMIN_TOKEN).await;
    browser.click("#token-use").await;
    browser.click("#retry").await;
    browser
        .type_into("#confirm-reason", "try shipping again")
        .await;
    browser.click("#confirm-yes").await;
    browser
        .wait_text("#message", SEE, |t| t.contains("retry requested"))
        .await;
    browser
        .wait_text("#timeline-rows", SEE, |t| {
            t.lines().any(|l| l.contains("create-shipment\tSTARTED\t2"))
        })
        .await;
    browser.click("#cancel").await;
    browser
        .type_into("#confirm-reason", "customer called")
        .await;
    browser.click("#confirm-yes").await;
    browser
        .wait_text("#saga-head", SEE, |t| !t.contains("RUNNING"))
        .await;
    let acted = saga(&dev.base, &stuck).await.unwrap();
    assert_ne!(acted["status"], "RUNNING", "{acted}");
    assert!(
        acted["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("customer called"),
        "{acted}"
    );
    browser
        .screenshot(&shots().join("timeline-stuck.png"))
        .await;

    // Dead letters: shipping's, shown and replayed; shipping is still broken, so the replayed
    // command comes back as a dead letter of its own, from where the replay put it.
    browser.open(&format!("{console}#/dlq")).await;
    let row = format!("#dlq div[data-topic='{shipping_dlq}'] tr.letter");
    browser.click(&row).await;
    let payload = browser.text("#payload").await;
    assert!(
        payload.contains(&stuck),
        "the letter is the stuck saga's: {payload}"
    );
    browser.screenshot(&shots().join("dead-letters.png")).await;
    browser.click("#replay").await;
    browser.click("#confirm-yes").await;
    let said = browser
        .wait_text("#message", SEE, |t| t.contains("replayed to"))
        .await;
    // "replayed to <topic> (partition P, offset O)"
    let numbers: Vec<String> = said
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    let (partition, offset) = (
        numbers[numbers.len() - 2].clone(),
        numbers[numbers.len() - 1].clone(),
    );
    let commands = shipping.topic("commands").unwrap().to_owned();
    assert!(said.contains(&commands), "{said}");
    eventually("the replayed command to be handled again", WAIT, || {
        let url = format!("{}/api/dead-letters", dev.base);
        let (topic, commands) = (shipping_dlq.clone(), commands.clone());
        let (partition, offset) = (partition.clone(), offset.clone());
        async move {
            let all: Value = reqwest::get(url).await.ok()?.json().await.ok()?;
            let letters = all["topics"]
                .as_array()?
                .iter()
                .find(|t| t["topic"] == topic)?["letters"]
                .as_array()?
                .clone();
            letters
                .iter()
                .any(|l| {
                    l["from"]["topic"] == commands
                        && l["from"]["partition"] == partition.as_str()
                        && l["from"]["offset"] == offset.as_str()
                })
                .then_some(())
        }
    })
    .await;

    // The flow: three steps, with the stuck saga counted where it stands.
    browser.open(&format!("{console}#/flow")).await;
    browser.wait_for("#flow g[data-step]", SEE).await;
    assert_eq!(browser.all("#flow g[data-step]").await.len(), 3);
    browser.screenshot(&shots().join("flow.png")).await;

    // Topics: every topic of the system, and the groups with their lag.
    browser.open(&format!("{console}#/topics")).await;
    browser.wait_for("#group-rows tr[data-group]", SEE).await;
    let topics = browser.all("#topic-rows tr[data-topic]").await.len();
    let expected: Value = reqwest::get(format!("{}/api/topics", dev.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(topics, expected["topics"].as_array().unwrap().len());
    let missing = browser.text("#topic-rows").await;
    assert!(
        !missing.contains("missing"),
        "every topic exists: {missing}"
    );
    browser.screenshot(&shots().join("topics.png")).await;

    // Load: the charts of the last minutes, with the starts of this test in them.
    browser.open(&format!("{console}#/load")).await;
    browser.wait_for("#charts svg path", SEE).await;
    browser.screenshot(&shots().join("load.png")).await;

    // Nothing was asked of any origin but sagashop's.
    let foreign = browser
        .run(
            "return performance.getEntriesByType('resource').map(e => e.name)\
             .filter(n => !n.startsWith(location.origin));",
            json!([]),
        )
        .await;
    assert_eq!(foreign, json!([]), "requests left the origin");

    drop(browser);
    dev.terminate();
    let _ = std::fs::remove_file(saga_file);
}
