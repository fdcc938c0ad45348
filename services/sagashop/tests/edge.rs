//! Hostile and careless input against the real binary on the real broker: random and
//! malformed HTTP bodies, huge and deeply nested ones, too many requests, slow clients, and
//! poison records on a command topic. Every one gets a clear refusal; nothing panics, nothing
//! is written for a refusal, and orders placed afterwards still finish.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::time::Duration;

use common::{Dev, WAIT, finished, post};
use reqwest::StatusCode;
use sagashop_kit::reader::read_settled;
use sagashop_kit::{Outgoing, Publisher};
use sagashop_testkit::{TestKafka, eventually, unique_name};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn good_order(customer: &str) -> Value {
    json!({
        "customerId": customer,
        "currency": "EUR",
        "items": [{"productId": "sku-2", "quantity": 1, "unitPrice": 100}],
    })
}

/// Bodies a fuzzer would send, each labelled, from a fixed seed (a failure is reproducible).
fn hostile_bodies() -> Vec<(String, Vec<u8>)> {
    let mut rng = fastrand::Rng::with_seed(9);
    let mut bodies = Vec::new();
    for i in 0..150 {
        let len = rng.usize(0..2000);
        bodies.push((
            format!("random bytes #{i}"),
            (0..len).map(|_| rng.u8(..)).collect(),
        ));
    }
    let valid = good_order("c-1").to_string();
    for i in 0..50 {
        let cut = rng.usize(1..valid.len());
        bodies.push((format!("truncated #{i}"), valid.as_bytes()[..cut].to_vec()));
    }
    let item = |q: Value, p: Value| json!({"customerId": "c", "currency": "EUR", "items": [{"productId": "p", "quantity": q, "unitPrice": p}]});
    for (label, body) in [
        ("quantity as text", item(json!("two"), json!(1))),
        ("negative quantity", item(json!(-3), json!(1))),
        ("zero quantity", item(json!(0), json!(1))),
        ("huge quantity", item(json!(1u64 << 62), json!(1))),
        ("fractional quantity", item(json!(1.5), json!(1))),
        ("negative price", item(json!(1), json!(-1))),
        (
            "items as object",
            json!({"customerId": "c", "currency": "EUR", "items": {}}),
        ),
        (
            "customer as number",
            json!({"customerId": 7, "currency": "EUR", "items": []}),
        ),
        ("array body", json!([1, 2, 3])),
        ("null body", Value::Null),
        ("empty object", json!({})),
    ] {
        bodies.push((label.to_owned(), body.to_string().into_bytes()));
    }
    let ten_thousand = vec![json!({"productId": "p", "quantity": 1, "unitPrice": 1}); 10_000];
    bodies.push((
        "10,000 items".into(),
        json!({"customerId": "c", "currency": "EUR", "items": ten_thousand})
            .to_string()
            .into_bytes(),
    ));
    bodies.push(("2 MiB of spaces".into(), vec![b' '; 2 << 20]));
    bodies.push(("100,000 open brackets".into(), vec![b'['; 100_000]));
    bodies.push((
        "unicode everywhere".into(),
        good_order("Zoë 🚀 ∑ \u{202e}").to_string().into_bytes(),
    ));
    bodies.push(("invalid UTF-8 in a string".into(), {
        let mut b = br#"{"customerId":""#.to_vec();
        b.extend([0xff, 0xfe]);
        b.extend(br#"","currency":"EUR","items":[]}"#);
        b
    }));
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_clear_refusals_and_the_edge_keeps_serving() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("edge-fuzz"));
    let dev = Dev::start(&kafka, &prefix, &["--body-limit", "1048576"]).await;
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    for (label, body) in hostile_bodies() {
        let response = client
            .post(format!("{}/api/orders", dev.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{label}: no answer: {e}"));
        let status = response.status();
        if status == StatusCode::ACCEPTED {
            let body: Value = response.json().await.unwrap();
            accepted.push(body["orderId"].as_str().unwrap().to_owned());
            continue;
        }
        assert!(
            [
                StatusCode::BAD_REQUEST,
                StatusCode::PAYLOAD_TOO_LARGE,
                StatusCode::UNPROCESSABLE_ENTITY
            ]
            .contains(&status),
            "{label}: {status}"
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{label}"
        );
        let problem: Value = response.json().await.unwrap();
        assert!(
            !problem["detail"].as_str().unwrap_or_default().is_empty(),
            "{label}: {problem}"
        );
        if label == "10,000 items" {
            assert_eq!(
                (status, problem["field"].as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, Some("items"))
            );
        }
    }
    // Only the well-formed order among them was accepted, and only it was written.
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    let written = read_settled(&kafka.config, "test", &dev.topic("orders.v1"), WAIT)
        .await
        .unwrap();
    assert_eq!(written.len(), 1);
    // The edge still serves, and orders still finish.
    let (status, body) = {
        let r = client
            .post(format!("{}/api/orders", dev.base))
            .json(&good_order("after-the-storm"))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, StatusCode::ACCEPTED);
    let order = finished(&dev.base, body["orderId"].as_str().unwrap()).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    dev.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_records_are_quarantined_and_dead_lettered_and_every_service_starts() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("edge-corrupt"));
    let dev = Dev::start(&kafka, &prefix, &[]).await;
    let body = good_order("c-corrupt");
    let (status, first) = post(&dev.base, &body, Some("k-1")).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    dev.terminate();
    // Someone (a tool, a bug) wrote a record the edge cannot read into its key store.
    let garbage = Outgoing {
        topic: format!("{prefix}orders.idempotency.v1"),
        key: Some(b"c-other/k-9".to_vec()),
        partition: None,
        payload: Some(b"{not json".to_vec()),
        headers: vec![],
    };
    // And into payment's payments, a store its processor restores per partition.
    let payments = Outgoing {
        topic: format!("{prefix}payment.payments.v1"),
        key: Some(b"some-saga".to_vec()),
        payload: Some(b"[1, 2".to_vec()),
        ..garbage.clone()
    };
    Publisher::new(&kafka.config, "test")
        .unwrap()
        .send_all(&[garbage.clone(), payments.clone()])
        .await
        .unwrap();

    // Every service starts anyway; the edge says what it skipped and still knows the good key.
    let dev = Dev::start(&kafka, &prefix, &[]).await;
    let metrics = reqwest::get(format!("{}/metrics", dev.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"sagashop_store_quarantined_total{store="order-idempotency"} 1"#),
        "{metrics}"
    );
    let (status, again) = post(&dev.base, &body, Some("k-1")).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        again["orderId"], first["orderId"],
        "the key survived beside the bad record"
    );
    assert!(
        dev.logs()
            .contains("unreadable changelog record quarantined")
    );
    // And its bytes and place are in the edge's dead letters.
    let dead = read_settled(&kafka.config, "test", &dev.topic("order.dlq.v1"), WAIT)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "one letter for the one bad record");
    assert_eq!(dead[0].payload.as_deref(), Some(&b"{not json"[..]));
    let header = |name: &str| {
        dead[0]
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    assert_eq!(header("dlq-original-topic"), garbage.topic);
    assert!(
        header("dlq-error").contains("quarantined on restore"),
        "{}",
        header("dlq-error")
    );
    // Payment's processor dead-lettered its bad record once it restored the partition (just
    // after it reported ready).
    let payment_dlq = dev.topic("payment.dlq.v1");
    let letters = eventually("payment's bad record to be dead-lettered", WAIT, || {
        let (config, topic) = (kafka.config.clone(), payment_dlq.clone());
        let bad = payments.payload.clone();
        async move {
            let dead = read_settled(&config, "test", &topic, WAIT).await.ok()?;
            let n = dead.iter().filter(|l| l.payload == bad).count();
            (n > 0).then_some(n)
        }
    })
    .await;
    assert_eq!(letters, 1, "payment's bad record dead-lettered once");
    // Orders still go through the whole saga.
    let (status, placed) = post(&dev.base, &good_order("c-after"), None).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let order = finished(&dev.base, placed["orderId"].as_str().unwrap()).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    dev.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_their_partitions_move_on() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("edge-poison"));
    let dev = Dev::start(&kafka, &prefix, &[]).await;
    let topic = dev.topic("inventory.commands.v1");
    let headers = |event: &str, version: &str| {
        vec![
            ("event-type".to_owned(), event.as_bytes().to_vec()),
            ("schema-version".to_owned(), version.as_bytes().to_vec()),
            // A real id, so that only what each kind breaks is wrong with it.
            (
                "message-id".to_owned(),
                uuid::Uuid::now_v7().to_string().into_bytes(),
            ),
            ("correlation-id".to_owned(), b"poison".to_vec()),
        ]
    };
    let mut rng = fastrand::Rng::with_seed(11);
    let mut poison = Vec::new();
    for i in 0..40 {
        // A key per record spreads them over every partition.
        let key = Some(format!("poison-{i}").into_bytes());
        let random: Vec<u8> = (0..rng.usize(0..300)).map(|_| rng.u8(..)).collect();
        let (payload, headers) = match i % 5 {
            0 => (Some(random), vec![]),
            1 => (Some(random), headers("ReserveInventory", "1")),
            2 => (
                Some(br#"{"orderId":"#.to_vec()),
                headers("ReserveInventory", "1"),
            ),
            3 => (Some(b"{}".to_vec()), headers("ReserveInventory", "99")),
            _ => (None, headers("NoSuchCommand", "1")),
        };
        poison.push(Outgoing {
            topic: topic.clone(),
            key,
            partition: None,
            payload,
            headers,
        });
    }
    Publisher::new(&kafka.config, "test")
        .unwrap()
        .send_all(&poison)
        .await
        .unwrap();
    // Orders placed after the poison (on every partition) still finish.
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..12 {
        let r = client
            .post(format!("{}/api/orders", dev.base))
            .json(&good_order(&format!("c-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        ids.push(
            r.json::<Value>().await.unwrap()["orderId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids {
        let order = finished(&dev.base, id).await;
        assert_eq!(order["status"], "COMPLETED", "{order}");
    }
    let dead = read_settled(&kafka.config, "test", &dev.topic("inventory.dlq.v1"), WAIT)
        .await
        .unwrap();
    assert_eq!(
        dead.len(),
        poison.len(),
        "every poison record is dead-lettered once"
    );
    // Each kind was refused for what is wrong with it, not all for one shared flaw.
    let expected = [
        "missing header `event-type`",
        "invalid `ReserveInventory` payload",
        "invalid `ReserveInventory` payload",
        "schema version 99 is not supported",
        "no handler for event type `NoSuchCommand`",
    ];
    for letter in &dead {
        let key = String::from_utf8(letter.key.clone().unwrap()).unwrap();
        let i: usize = key.strip_prefix("poison-").unwrap().parse().unwrap();
        let error = letter
            .headers
            .iter()
            .find(|(name, _)| name == "dlq-error")
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        assert!(
            error.contains(expected[i % 5]),
            "{key} (kind {}) was dead-lettered for `{error}`",
            i % 5
        );
    }
    dev.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_limits_rate_slow_bodies_and_slow_headers() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("edge-limits"));
    let dev = Dev::start(
        &kafka,
        &prefix,
        &[
            "--rate-limit",
            "5",
            "--rate-burst",
            "5",
            "--body-timeout",
            "1s",
            "--header-timeout",
            "1s",
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..20 {
        let request = client
            .post(format!("{}/api/orders", dev.base))
            .json(&good_order(&format!("c-{i}")))
            .send();
        posts.spawn(request);
    }
    let (mut accepted, mut limited) = (0, 0);
    while let Some(r) = posts.join_next().await {
        let r = r.unwrap().unwrap();
        match r.status() {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let wait: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&wait), "Retry-After {wait}");
                limited += 1;
            }
            other => panic!("{other}"),
        }
    }
    // The burst of 5, plus what the rate refilled while the requests arrived.
    assert!((5..=8).contains(&accepted), "{accepted} accepted");
    assert_eq!(accepted + limited, 20);
    let written = read_settled(&kafka.config, "test", &dev.topic("orders.v1"), WAIT)
        .await
        .unwrap();
    assert_eq!(written.len(), accepted, "a 429 wrote an order");

    // A body that stops arriving gets 408 once the body timeout passes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let address = dev.base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(
        b"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"custo",
    )
    .await
    .unwrap();
    let answer = read_all(&mut slow, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Headers that never finish: the connection is closed after the header timeout.
    let mut slower = tokio::net::TcpStream::connect(&address).await.unwrap();
    slower
        .write_all(b"POST /api/orders HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let answer = read_all(&mut slower, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the connection stayed open {took:?}: {answer}"
    );
    dev.terminate();
}

/// The edge sheds load on the work behind it: with no orchestrator running, nothing it accepts
/// finishes, so after `--max-pending-orders` orders a new one gets `503` with `Retry-After` and
/// nothing is written, while a keyed retry of an accepted order still gets its `202`. Once
/// the rest of the system runs and those sagas finish, the edge takes orders again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_sheds_new_orders_while_too_many_wait_for_their_outcome() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("edge-shed"));
    let edge = Dev::service(
        &kafka,
        "order",
        &prefix,
        &[
            "--create-topics",
            "--instance",
            "edge",
            "--max-pending-orders",
            "3",
        ],
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let key = (i == 0).then_some("key-0");
        let (status, body) = post(&edge.base, &good_order(&format!("c-{i}")), key)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.push(body["orderId"].as_str().unwrap().to_owned());
    }
    let client = reqwest::Client::new();
    let refused = client
        .post(format!("{}/api/orders", edge.base))
        .json(&good_order("c-3"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["title"], "Too many orders in flight", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was written"),
        "{problem}"
    );
    // A retry of an accepted order is not new work: its 202 and its first id.
    let (status, body) = post(&edge.base, &good_order("c-0"), Some("key-0"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["orderId"], ids[0].as_str());
    let written = read_settled(&kafka.config, "test", &edge.topic("orders.v1"), WAIT)
        .await
        .unwrap();
    assert_eq!(written.len(), 3, "a shed order was written");

    // The rest of the system starts; the three sagas finish and the edge takes orders again.
    let rest = Dev::start(&kafka, &prefix, &["--instance", "rest"]).await;
    for id in &ids {
        let order = finished(&edge.base, id).await;
        assert_eq!(order["status"], "COMPLETED", "{order}");
    }
    let (status, body) = post(&edge.base, &good_order("c-4"), None).await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    rest.terminate();
    edge.terminate();
}

/// Reads until the peer closes or answers (at most `limit`).
async fn read_all(stream: &mut tokio::net::TcpStream, limit: Duration) -> String {
    let mut buffer = vec![0u8; 4096];
    let mut text = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                text.extend_from_slice(&buffer[..n]);
                if text.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}
