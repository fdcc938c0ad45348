//! Bounded state: with a short `--retention`, finished work leaves every store, its changelog
//! and the order read model, and a restart restores none of it, while stock and balances stay.
//! `sagashop dev` (the real binary) on the real broker.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::collections::BTreeMap;

use common::{Dev, WAIT, finished, metrics_page, order, post, sample};

use reqwest::StatusCode;
use sagashop_kit::reader::read_settled;
use sagashop_testkit::{TestKafka, eventually, unique_name};
use serde_json::{Value, json};

/// The stores that hold finished work, by their metric name.
const FORGETTING: [&str; 6] = [
    "saga:order-fulfilment",
    "payment-payments",
    "inventory-holds",
    "shipping-shipments",
    "notification-sent",
    "order-idempotency",
];

/// `sagashop_store_entries` per store.
async fn entries(base: &str) -> BTreeMap<String, i64> {
    metrics_page(base)
        .await
        .lines()
        .filter_map(|line| line.strip_prefix("sagashop_store_entries{store=\""))
        .filter_map(|rest| {
            let (store, value) = rest.split_once("\"} ")?;
            Some((store.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

fn holding_finished_work(entries: &BTreeMap<String, i64>) -> Vec<(&str, i64)> {
    FORGETTING
        .iter()
        .map(|store| (*store, entries.get(*store).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Keys whose latest record in `topic` is a value, not a tombstone.
async fn live_keys(kafka: &TestKafka, topic: &str) -> usize {
    let records = read_settled(&kafka.config, "test-retention", topic, WAIT)
        .await
        .unwrap();
    let mut live = BTreeMap::new();
    for record in records {
        live.insert(record.key.unwrap(), record.payload.is_some());
    }
    live.values().filter(|v| **v).count()
}

#[tokio::test]
async fn finished_work_is_forgotten_after_the_retention_and_stays_forgotten_after_a_restart() {
    let kafka = TestKafka::connect().await;
    let prefix = unique_name("retention");
    let args = [
        "--retention",
        "4s",
        "--idempotency-window",
        "4s",
        "--ship-after",
        "200ms",
        "--deliver-after",
        "200ms",
    ];
    let dev = Dev::start(&kafka, &format!("{prefix}."), &args).await;
    let client = reqwest::Client::new();
    let mut orders = Vec::new();
    for i in 0..12 {
        let mut request = client
            .post(format!("{}/api/orders", dev.base))
            .json(&json!({
                "customerId": format!("c-{}", i % 4),
                "currency": "EUR",
                "items": [{"productId": "sku-1", "quantity": 1, "unitPrice": 1000}],
            }));
        if i % 2 == 0 {
            request = request.header("Idempotency-Key", format!("key-{i}"));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        orders.push(body["orderId"].as_str().unwrap().to_owned());
    }
    for id in &orders {
        assert_eq!(finished(&dev.base, id).await["status"], "COMPLETED");
    }
    let held = entries(&dev.base).await;
    assert!(
        held.get("saga:order-fulfilment").copied().unwrap_or(0) >= 12,
        "finished sagas are kept within the retention: {held:?}"
    );

    // Past the retention: every store of finished work is empty, the read model too, while
    // stock and balances (state, not history) stay.
    eventually("finished work to be forgotten", WAIT, || {
        let base = dev.base.clone();
        async move {
            let held = entries(&base).await;
            holding_finished_work(&held).is_empty().then_some(())
        }
    })
    .await;
    let held = entries(&dev.base).await;
    assert!(
        held.get("inventory-stock").copied().unwrap_or(0) > 0
            && held.get("payment-balances").copied().unwrap_or(0) > 0,
        "stock and balances are never forgotten: {held:?}"
    );
    eventually("the read model to forget the orders", WAIT, || {
        let url = format!("{}/api/orders/{}", dev.base, orders[0]);
        let client = client.clone();
        async move {
            let status = client.get(&url).send().await.ok()?.status();
            (status == StatusCode::NOT_FOUND).then_some(())
        }
    })
    .await;

    // Kafka forgot them too: the changelogs end in tombstones for every finished saga.
    let state_topic = dev.topic("saga.order-fulfilment.state");
    assert_eq!(live_keys(&kafka, &state_topic).await, 0, "{state_topic}");
    assert_eq!(
        live_keys(&kafka, &dev.topic("payment.payments.v1")).await,
        0
    );

    // A restart restores nothing of it, and rebuilds no forgotten order.
    dev.terminate();
    let dev = Dev::start(&kafka, &format!("{prefix}."), &args).await;
    let held = entries(&dev.base).await;
    assert_eq!(
        holding_finished_work(&held),
        [],
        "restored after a restart: {held:?}"
    );
    for id in &orders {
        let status = client
            .get(format!("{}/api/orders/{id}", dev.base))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::NOT_FOUND, "order {id} came back");
    }
    dev.terminate();
}

/// `sagashop_saga_started_total` of the order saga.
async fn sagas_started(base: &str) -> f64 {
    let series = r#"sagashop_saga_started_total{saga="order-fulfilment"}"#;
    sample(&metrics_page(base).await, series).unwrap_or(0.0)
}

#[tokio::test]
async fn a_keyed_retry_after_the_retention_but_inside_the_idempotency_window_starts_no_second_saga()
{
    let kafka = TestKafka::connect().await;
    let prefix = unique_name("idem-window");
    // Everything finished is forgotten after 2 s; the keys keep their default window (a day).
    let args = [
        "--retention",
        "2s",
        "--ship-after",
        "100ms",
        "--deliver-after",
        "100ms",
    ];
    let dev = Dev::start(&kafka, &format!("{prefix}."), &args).await;
    let body = order("c-window", "sku-1", 1, 700);
    let (status, first) = post(&dev.base, &body, Some("pay-once")).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let order_id = first["orderId"].as_str().unwrap().to_owned();
    assert_eq!(finished(&dev.base, &order_id).await["status"], "COMPLETED");

    // The orchestrator forgets the finished saga and the read model the order: what a retry
    // used to meet five minutes (the default retention) after its order.
    eventually("the finished saga to be forgotten", WAIT, || {
        let base = dev.base.clone();
        async move {
            let held = entries(&base).await;
            (held.get("saga:order-fulfilment").copied().unwrap_or(0) == 0).then_some(())
        }
    })
    .await;
    assert_eq!(entries(&dev.base).await.get("order-idempotency"), Some(&1));

    let (status, retry) = post(&dev.base, &body, Some("pay-once")).await.unwrap();
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "the retry is answered as the first"
    );
    assert_eq!(retry["orderId"], order_id.as_str(), "the first order's id");

    // Nothing was written for the retry: one OrderPlaced in Kafka, one saga ever started, and
    // still after a restart (the key is restored from its changelog).
    let orders = read_settled(&kafka.config, "test-window", &dev.topic("orders.v1"), WAIT)
        .await
        .unwrap();
    assert_eq!(orders.len(), 1, "one OrderPlaced for one key");
    assert_eq!(sagas_started(&dev.base).await, 1.0);
    dev.terminate();
    let dev = Dev::start(&kafka, &format!("{prefix}."), &args).await;
    let (_, again) = post(&dev.base, &body, Some("pay-once")).await.unwrap();
    assert_eq!(again["orderId"], order_id.as_str());
    let orders = read_settled(&kafka.config, "test-window", &dev.topic("orders.v1"), WAIT)
        .await
        .unwrap();
    assert_eq!(
        orders.len(),
        1,
        "a restarted edge still writes nothing for the key"
    );
    assert_eq!(
        sagas_started(&dev.base).await,
        0.0,
        "no saga started after the restart"
    );
    dev.terminate();
}
