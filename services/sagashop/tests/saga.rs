//! The order saga end to end: `sagashop dev` (the real binary) on the real broker, driven over
//! HTTP. Each test uses its own topic prefix, so tests never see each other's orders.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{ADMIN_TOKEN, Dev, WAIT, finished, metrics_page, order, post, sample};

use reqwest::StatusCode;
use sagashop_kit::reader::read_settled;
use sagashop_kit::{KafkaConfig, Outgoing, Publisher};
use sagashop_testkit::{TestKafka, eventually, metrics, unique_name};
use serde_json::{Value, json};

/// The latest value per key of a compacted store topic.
async fn latest(kafka: &KafkaConfig, topic: &str) -> HashMap<String, Value> {
    let records = read_settled(kafka, "test-books", topic, WAIT)
        .await
        .unwrap();
    let mut latest = HashMap::new();
    for record in records {
        let key = String::from_utf8(record.key.unwrap()).unwrap();
        match record.payload {
            Some(bytes) => latest.insert(key, serde_json::from_slice(&bytes).unwrap()),
            None => latest.remove(&key),
        };
    }
    latest
}

struct Placed {
    order_id: String,
    customer: String,
    product: String,
    quantity: i64,
    total: i64,
}

/// Checks that stock and balances equal their opening values minus exactly the completed
/// orders: nothing reserved or charged twice, nothing left reserved or charged by a cancelled
/// order.
async fn books_balance(
    kafka: &KafkaConfig,
    dev_prefix: &str,
    placed: &[Placed],
    outcomes: &HashMap<String, Value>,
    stock: &[(&str, i64)],
    opening_balance: i64,
) {
    let mut used: HashMap<&str, i64> = HashMap::new();
    let mut spent: HashMap<&str, i64> = HashMap::new();
    for p in placed {
        if outcomes[&p.order_id]["status"] == "COMPLETED" {
            *used.entry(p.product.as_str()).or_default() += p.quantity;
            *spent.entry(p.customer.as_str()).or_default() += p.total;
        }
    }
    let stock_now = latest(kafka, &format!("{dev_prefix}inventory.stock.v1")).await;
    for (product, seeded) in stock {
        let now = stock_now.get(*product).and_then(Value::as_i64).unwrap();
        assert_eq!(
            now,
            seeded - used.get(product).copied().unwrap_or(0),
            "stock of {product}"
        );
    }
    let balances = latest(kafka, &format!("{dev_prefix}payment.balances.v1")).await;
    for p in placed {
        let balance = balances
            .get(&p.customer)
            .and_then(Value::as_i64)
            .unwrap_or(opening_balance);
        assert_eq!(
            balance,
            opening_balance - spent.get(p.customer.as_str()).copied().unwrap_or(0),
            "balance of {}",
            p.customer
        );
    }
}

/// Posts `n` orders, `concurrency` at a time, over a mix of products and customers; returns
/// those the edge accepted (`202`).
async fn place_orders(base: &str, n: usize, concurrency: usize) -> Vec<Placed> {
    let products = ["sku-1", "sku-2", "ghost"];
    let mut tasks = tokio::task::JoinSet::new();
    let mut placed = Vec::new();
    for i in 0..n {
        let (base, customer) = (base.to_owned(), format!("c-{}", i % 20));
        let product = products[i % 7 % 3].to_owned();
        let (quantity, price) = (1 + (i % 3) as i64, 1000 + 500 * (i % 5) as i64);
        tasks.spawn(async move {
            let answer = post(&base, &order(&customer, &product, quantity, price), None).await;
            (answer, customer, product, quantity, price)
        });
        if tasks.len() >= concurrency
            && let Some(done) = tasks.join_next().await
        {
            placed.extend(accepted(done.unwrap()));
        }
    }
    while let Some(done) = tasks.join_next().await {
        placed.extend(accepted(done.unwrap()));
    }
    placed
}

type Answer = (
    Result<(StatusCode, Value), String>,
    String,
    String,
    i64,
    i64,
);

fn accepted((answer, customer, product, quantity, price): Answer) -> Option<Placed> {
    let (status, body) = answer.ok()?;
    if status != StatusCode::ACCEPTED {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        return None;
    }
    assert_eq!(body["status"], "PENDING");
    Some(Placed {
        order_id: body["orderId"].as_str().unwrap().to_owned(),
        customer,
        product,
        quantity,
        total: quantity * price,
    })
}

async fn outcomes(base: &str, placed: &[Placed]) -> HashMap<String, Value> {
    let mut outcomes = HashMap::new();
    for p in placed {
        outcomes.insert(p.order_id.clone(), finished(base, &p.order_id).await);
    }
    outcomes
}

const STOCK: [(&str, i64); 2] = [("sku-1", 60), ("sku-2", 100_000)];
const OPENING: &str = "20000";

fn stock_arg() -> String {
    STOCK
        .iter()
        .map(|(p, q)| format!("{p}={q}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_orders_finish_and_the_books_balance() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("e2e"));
    let stock = stock_arg();
    let dev = Dev::start(
        &kafka,
        &prefix,
        &["--stock", &stock, "--opening-balance", OPENING],
    )
    .await;
    let placed = place_orders(&dev.base, 200, 50).await;
    assert_eq!(
        placed.len(),
        200,
        "every order is accepted while Kafka is up"
    );
    let outcomes = outcomes(&dev.base, &placed).await;

    let mut by_reason: HashMap<String, usize> = HashMap::new();
    for p in &placed {
        let o = &outcomes[&p.order_id];
        match o["status"].as_str().unwrap() {
            "COMPLETED" => *by_reason.entry("completed".into()).or_default() += 1,
            "CANCELLED" => {
                let step = o["failedStep"].as_str().unwrap();
                let reason = o["reason"].as_str().unwrap();
                if p.product == "ghost" {
                    assert_eq!(step, "reserve-inventory", "{o}");
                    assert!(reason.contains("out of stock"), "{o}");
                }
                *by_reason
                    .entry(format!("{step}: {}", reason.split(':').next().unwrap()))
                    .or_default() += 1;
            }
            other => panic!("unexpected status {other}"),
        }
        assert!(!o["history"].as_array().unwrap().is_empty(), "{o}");
    }
    // The mix must exercise every path: success, out of stock, declined payment.
    assert!(
        by_reason.get("completed").copied().unwrap_or(0) > 0,
        "{by_reason:?}"
    );
    assert!(
        by_reason.keys().any(|k| k.starts_with("reserve-inventory")),
        "{by_reason:?}"
    );
    assert!(
        by_reason.keys().any(|k| k.starts_with("authorize-payment")),
        "{by_reason:?}"
    );
    books_balance(&kafka.config, &prefix, &placed, &outcomes, &STOCK, 20000).await;

    // Analytics counted every outcome once; notification told every customer once.
    let completed = by_reason.get("completed").copied().unwrap_or(0) as u64;
    let cancelled = placed.len() as u64 - completed;
    let revenue: i64 = placed
        .iter()
        .filter(|p| outcomes[&p.order_id]["status"] == "COMPLETED")
        .map(|p| p.total)
        .sum();
    let summary_url = format!("{}/api/analytics/summary", dev.base);
    let total = placed.len() as u64;
    let summary = eventually("analytics to count every outcome", WAIT, || {
        let request = reqwest::get(summary_url.clone());
        async move {
            let summary: Value = request.await.ok()?.json().await.ok()?;
            let counted = summary["completed"].as_u64()? + summary["cancelled"].as_u64()?;
            (counted >= total).then_some(summary)
        }
    })
    .await;
    assert_eq!(summary["completed"], json!(completed), "{summary}");
    assert_eq!(summary["cancelled"], json!(cancelled), "{summary}");
    assert_eq!(summary["revenueMinor"]["EUR"], json!(revenue), "{summary}");
    let metrics_url = format!("{}/metrics", dev.base);
    eventually("a notification per outcome", WAIT, || {
        let request = reqwest::get(metrics_url.clone());
        async move {
            let text = request.await.ok()?.text().await.ok()?;
            let sent = |kind: &str| -> u64 {
                text.lines()
                    .filter(|l| {
                        l.starts_with("sagashop_notifications_sent_total")
                            && l.contains(&format!("kind=\"{kind}\""))
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as u64
            };
            (sent("completed") == completed && sent("cancelled") == cancelled).then_some(())
        }
    })
    .await;

    // The saga and edge metrics count what happened; nothing is left running.
    let page = eventually("no saga left running", WAIT, || {
        let request = reqwest::get(metrics_url.clone());
        async move {
            let page = request.await.ok()?.text().await.ok()?;
            let running = sample(&page, "sagashop_sagas_running{saga=\"order-fulfilment\"}")?;
            (running == 0.0).then_some(page)
        }
    })
    .await;
    let saga = |name: &str, labels: &str| {
        sample(
            &page,
            &format!("{name}{{saga=\"order-fulfilment\"{labels}}}"),
        )
        .unwrap_or_else(|| panic!("no {name}{labels} in\n{page}"))
    };
    assert_eq!(saga("sagashop_saga_started_total", ""), 200.0);
    let ended = |outcome: &str| {
        saga(
            "sagashop_saga_finished_total",
            &format!(",outcome=\"{outcome}\""),
        )
    };
    assert_eq!(ended("completed"), completed as f64);
    assert_eq!(ended("cancelled"), cancelled as f64);
    assert_eq!(
        saga(
            "sagashop_saga_duration_seconds_count",
            ",outcome=\"completed\""
        ),
        completed as f64
    );
    let step = |step: &str, outcome: &str| {
        saga(
            "sagashop_saga_step_replies_total",
            &format!(",step=\"{step}\",direction=\"forward\",outcome=\"{outcome}\""),
        )
    };
    assert!(
        step("reserve-inventory", "failed") > 0.0,
        "out of stock: {page}"
    );
    assert!(
        step("authorize-payment", "failed") > 0.0,
        "declined: {page}"
    );
    assert_eq!(
        step("reserve-inventory", "succeeded"),
        200.0 - step("reserve-inventory", "failed")
    );
    assert_eq!(
        sample(
            &page,
            "sagashop_http_requests_total{method=\"POST\",route=\"/api/orders\",status=\"202\"}"
        ),
        Some(200.0),
        "{page}"
    );
    // Every metric the chart's dashboard and alerts query is one the services expose (the
    // operator's are checked by its own test).
    let catalogue = reqwest::get(format!("{metrics_url}/catalogue"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exposed = metrics::exposed(&catalogue);
    assert!(exposed.is_superset(&metrics::exposed(&page)), "{catalogue}");
    let missing: Vec<_> = metrics::chart_queries()
        .into_iter()
        .filter(|name| !name.starts_with("sagashop_operator_") && !exposed.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard or alerts query {missing:?}, which the services do not register"
    );

    sagas_are_found_and_inspected(&dev.base, &placed, &outcomes).await;
    dev.terminate();
}

/// `GET /api/sagas` (and `sagashop saga`) find every placed order's saga by status and
/// customer, page through them with the cursor, show a cancelled one's timeline, and refuse bad
/// filters naming them.
async fn sagas_are_found_and_inspected(
    base: &str,
    placed: &[Placed],
    outcomes: &HashMap<String, Value>,
) {
    let get = |path: String| async move {
        let response = reqwest::get(format!("{base}{path}")).await.unwrap();
        let status = response.status();
        (status, response.json::<Value>().await.unwrap())
    };
    let ended = |status: &str| {
        placed
            .iter()
            .filter(|p| outcomes[&p.order_id]["status"] == status)
            .map(|p| p.order_id.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    // Every saga, in pages of 70, oldest first: each placed order exactly once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for page in 0.. {
        assert!(page < 5, "200 sagas in pages of 70 take 3 pages");
        let (status, body) = get(format!("/api/sagas?limit=70{cursor}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let sagas = body["sagas"].as_array().unwrap();
        // As times, not strings: RFC 3339 leaves out a zero fraction (`…:52Z` is before
        // `…:52.001Z`).
        let started: Vec<chrono::DateTime<chrono::FixedOffset>> = sagas
            .iter()
            .map(|s| {
                chrono::DateTime::parse_from_rfc3339(s["startedAt"].as_str().unwrap()).unwrap()
            })
            .collect();
        assert!(
            started.windows(2).all(|w| w[0] <= w[1]),
            "oldest first: {started:?}"
        );
        seen.extend(
            sagas
                .iter()
                .map(|s| s["sagaId"].as_str().unwrap().to_owned()),
        );
        match body["next"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => {
                assert_eq!(body["counts"]["RUNNING"], 0, "{body}");
                assert_eq!(
                    body["counts"]["COMPLETED"],
                    ended("COMPLETED").len(),
                    "{body}"
                );
                break;
            }
        }
    }
    let all: std::collections::BTreeSet<String> =
        placed.iter().map(|p| p.order_id.clone()).collect();
    assert_eq!(seen.len(), all.len(), "no saga twice");
    assert_eq!(
        seen.into_iter().collect::<std::collections::BTreeSet<_>>(),
        all
    );

    // By status: exactly the cancelled orders; by customer: that customer's orders.
    let (_, body) = get("/api/sagas?status=CANCELLED&limit=1000".into()).await;
    let cancelled: std::collections::BTreeSet<String> = body["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sagaId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cancelled, ended("CANCELLED"));
    let customer = &placed[0].customer;
    let (_, body) = get(format!("/api/sagas?customer={customer}&limit=1000")).await;
    let theirs = placed.iter().filter(|p| &p.customer == customer).count();
    assert_eq!(body["sagas"].as_array().unwrap().len(), theirs, "{body}");

    // One cancelled saga's timeline: the failing step's command and its failure, with times.
    let id = cancelled.iter().next().unwrap();
    let (status, saga) = get(format!("/api/sagas/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(saga["status"], "CANCELLED");
    let phases: Vec<&str> = saga["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases.first(), Some(&"STARTED"), "{saga}");
    assert!(phases.contains(&"FAILED"), "{saga}");
    assert_eq!(saga["failedStep"], outcomes[id]["failedStep"], "{saga}");

    // Refusals name what is wrong, and an unknown id is a 404.
    for (query, field) in [
        ("status=DONE", "status"),
        ("step=nowhere", "step"),
        ("olderThan=soon", "olderThan"),
        ("limit=0", "limit"),
        ("cursor=12", "cursor"),
        ("colour=red", "query"),
    ] {
        let (status, body) = get(format!("/api/sagas?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["field"], field, "{query}: {body}");
    }
    let (status, _) = get("/api/sagas/no-such-saga".into()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The command line says the same.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sagashop"))
            .args(["saga", "--url", base])
            .args(args)
            .output()
            .unwrap()
    };
    let listed = cli(&["list", "--status", "CANCELLED", "--limit", "1000"]);
    assert!(listed.status.success());
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains(id.as_str()) && text.contains("CANCELLED"),
        "{text}"
    );
    let shown = cli(&["show", id]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("FAILED"));
    assert_eq!(cli(&["list", "--status", "DONE"]).status.code(), Some(64));
}

/// The value of the sample `series` (name and labels exactly as exposed) on a metrics page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_resumes_every_saga_and_a_replay_changes_nothing() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("e2e-kill"));
    let stock = stock_arg();
    let args = ["--stock", stock.as_str(), "--opening-balance", OPENING];
    let dev = Dev::start(&kafka, &prefix, &args).await;
    let base = dev.base.clone();
    // Kill it while orders are still being placed and sagas are running.
    let placing = tokio::spawn(async move { place_orders(&base, 120, 20).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    dev.kill();
    let placed = placing.await.unwrap();
    assert!(!placed.is_empty(), "no order was accepted before the kill");

    let dev = Dev::start(&kafka, &prefix, &args).await;
    let outcomes = outcomes(&dev.base, &placed).await;
    books_balance(&kafka.config, &prefix, &placed, &outcomes, &STOCK, 20000).await;
    let balances_before = latest(&kafka.config, &dev.topic("payment.balances.v1")).await;
    let stock_before = latest(&kafka.config, &dev.topic("inventory.stock.v1")).await;
    dev.terminate();

    // Replay: the participants read their command topics again from the beginning.
    for (group, topic) in [
        ("payment", "payment.commands.v1"),
        ("inventory", "inventory.commands.v1"),
    ] {
        rewind_group(
            &kafka,
            &format!("{prefix}{group}"),
            &format!("{prefix}{topic}"),
        )
        .await;
    }
    let dev = Dev::start(&kafka, &prefix, &args).await;
    let commands = read_settled(
        &kafka.config,
        "test",
        &dev.topic("payment.commands.v1"),
        WAIT,
    )
    .await
    .unwrap()
    .len();
    let metrics_url = format!("{}/metrics", dev.base);
    let group = format!("{prefix}payment");
    eventually("the payment replay to finish", WAIT, || {
        let request = reqwest::get(metrics_url.clone());
        let group = group.clone();
        async move {
            let text = request.await.ok()?.text().await.ok()?;
            let handled: f64 = text
                .lines()
                .filter(|l| {
                    l.starts_with("sagashop_messages_handled_total")
                        && l.contains(&format!("group=\"{group}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            (handled as usize >= commands).then_some(())
        }
    })
    .await;
    assert_eq!(
        latest(&kafka.config, &dev.topic("payment.balances.v1")).await,
        balances_before
    );
    assert_eq!(
        latest(&kafka.config, &dev.topic("inventory.stock.v1")).await,
        stock_before
    );
    dev.terminate();
}

/// Commits offset 0 on every partition of `topic` for `group` (no member may be running).
async fn rewind_group(kafka: &TestKafka, group: &str, topic: &str) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = kafka
        .config
        .consumer("test-rewind", group)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut offsets = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        offsets
            .add_partition_offset(topic, partition.id(), Offset::Offset(0))
            .unwrap();
    }
    consumer.commit(&offsets, CommitMode::Sync).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_status_and_a_failing_participant_is_compensated_after_its_timeout() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("e2e-bad"));
    // Short step timeouts, and a payment service that always fails transiently.
    let saga = std::env::temp_dir().join(format!("{prefix}saga.yaml"));
    let shipped = include_str!("../../../k8s/sagas/order-fulfilment.yaml");
    std::fs::write(&saga, shipped.replace("timeout: 5s", "timeout: 1s")).unwrap();
    let stock = stock_arg();
    let dev = Dev::start(
        &kafka,
        &prefix,
        &[
            "--saga",
            saga.to_str().unwrap(),
            "--stock",
            &stock,
            "--payment-transient-rate",
            "1",
            "--body-limit",
            "4096",
        ],
    )
    .await;
    let base = &dev.base;
    let client = reqwest::Client::new();
    let raw = |body: String| {
        client
            .post(format!("{base}/api/orders"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let problem = |r: reqwest::Response| async move {
        let status = r.status();
        let kind = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(kind, "application/problem+json");
        (status, r.json::<Value>().await.unwrap())
    };
    let (status, body) = problem(raw("{not json".into()).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let wrong = order("c", "sku-1", 1, 1)
        .to_string()
        .replace("1,", "\"one\",");
    let (status, body) = problem(raw(wrong).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "items[0].quantity");
    let (status, _) = problem(raw("x".repeat(10_000)).await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let unknown = client
        .get(format!(
            "{base}/api/orders/01a203cb-ce77-70d6-ac0a-b7dda30dbb8e"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    // A retried request with the same Idempotency-Key places one order.
    let body = order("c-9", "sku-2", 1, 700);
    let (first, a) = post(base, &body, Some("retry-me")).await.unwrap();
    let (second, b) = post(base, &body, Some("retry-me")).await.unwrap();
    assert_eq!(
        (first, second),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED)
    );
    assert_eq!(a["orderId"], b["orderId"]);
    let placed = read_settled(&kafka.config, "test", &dev.topic("orders.v1"), WAIT)
        .await
        .unwrap();
    assert_eq!(placed.len(), 1, "the retry wrote a second OrderPlaced");

    // Garbage on a command topic is dead-lettered; the saga still goes on.
    Publisher::new(&kafka.config, "test")
        .unwrap()
        .send(&Outgoing {
            topic: dev.topic("inventory.commands.v1"),
            key: Some(b"poison".to_vec()),
            partition: None,
            payload: Some(b"\x00garbage".to_vec()),
            headers: vec![],
        })
        .await
        .unwrap();
    // Payment timed out (it may have charged), and cannot refund either: the saga stops FAILED
    // there, and the stock stays reserved until someone retries it.
    let id = a["orderId"].as_str().unwrap();
    let saga = eventually("the saga to fail at the refund", WAIT, || {
        let url = format!("{base}/api/sagas/{id}");
        async move {
            let s: Value = reqwest::get(url).await.ok()?.json().await.ok()?;
            (s["status"] == "FAILED").then_some(s)
        }
    })
    .await;
    assert_eq!(saga["failedStep"], "authorize-payment", "{saga}");
    assert!(
        saga["incident"]
            .as_str()
            .unwrap_or_default()
            .contains("RefundPayment gave up"),
        "{saga}"
    );
    let stock_now = latest(&kafka.config, &dev.topic("inventory.stock.v1")).await;
    assert_eq!(
        stock_now["sku-2"],
        json!(99_999),
        "the reservation was released before the refund was done"
    );
    let poisoned = read_settled(&kafka.config, "test", &dev.topic("inventory.dlq.v1"), WAIT)
        .await
        .unwrap();
    assert_eq!(poisoned.len(), 1);
    let payment_dlq = read_settled(&kafka.config, "test", &dev.topic("payment.dlq.v1"), WAIT)
        .await
        .unwrap();
    assert!(
        !payment_dlq.is_empty(),
        "the failing payment commands were not dead-lettered"
    );
    dev.terminate();
}

/// The saga deadline survives a change of owner: an orchestrator that started a saga stops
/// before the step's deadline, another replica takes its partitions over, restores the saga
/// and times it out and compensates it there (no participant runs, so nothing ever answers:
/// the compensation gives up too, and the saga stops FAILED on the new owner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_whose_orchestrator_goes_away_times_out_and_compensates_on_the_next_owner() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("e2e-move"));
    let saga = std::env::temp_dir().join(format!("{prefix}saga.yaml"));
    let shipped = include_str!("../../../k8s/sagas/order-fulfilment.yaml");
    let short = shipped
        .replace("timeout: 5s", "timeout: 6s")
        .replace("maxAttempts: 3", "maxAttempts: 1");
    std::fs::write(&saga, short).unwrap();
    let saga = saga.to_str().unwrap();
    let edge = Dev::service(
        &kafka,
        "order",
        &prefix,
        &["--saga", saga, "--create-topics", "--instance", "edge"],
    )
    .await;
    let first = Dev::service(
        &kafka,
        "orchestrator",
        &prefix,
        &["--saga", saga, "--instance", "first"],
    )
    .await;
    let (status, body) = post(&edge.base, &order("c-move", "sku-1", 1, 100), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["orderId"].as_str().unwrap().to_owned();
    // The first owner started the saga (its first command is out), then goes away before the
    // step's deadline.
    let client = reqwest::Client::new();
    let url = format!("{}/api/orders/{id}", edge.base);
    eventually("the saga to start", WAIT, || {
        let request = client.get(&url).send();
        async move {
            let order: Value = request.await.ok()?.json().await.ok()?;
            (!order["history"].as_array()?.is_empty()).then_some(())
        }
    })
    .await;
    first.terminate();
    let second = Dev::service(
        &kafka,
        "orchestrator",
        &prefix,
        &["--saga", saga, "--instance", "second"],
    )
    .await;
    let url = format!("{}/api/sagas/{id}", second.base);
    let saga = eventually(
        "the saga to time out and fail on the new owner",
        WAIT,
        || {
            let url = url.clone();
            async move {
                let s: Value = reqwest::get(url).await.ok()?.json().await.ok()?;
                (s["status"] == "FAILED").then_some(s)
            }
        },
    )
    .await;
    let timeline = saga["timeline"].to_string();
    assert!(timeline.contains("TIMED_OUT"), "{timeline}");
    assert!(
        saga["incident"]
            .as_str()
            .unwrap_or_default()
            .contains("ReleaseInventory gave up"),
        "{saga}"
    );
    second.terminate();
    edge.terminate();
}

/// `sagashop_store_entries` of `store` on the process at `base`.
async fn store_entries(base: &str, store: &str) -> f64 {
    let series = format!("sagashop_store_entries{{store=\"{store}\"}}");
    sample(&metrics_page(base).await, &series).unwrap_or(0.0)
}

/// A compensation that gives up puts the saga in FAILED; once the participant is fixed, a
/// retry by hand sends it again, the saga goes on compensating and ends CANCELLED, with the
/// stock and money given back exactly — also when the retry comes long after the retention of
/// finished work, since a FAILED saga's holds and payments are kept until it ends — and only
/// then are they forgotten. Every service its own process, so shipping can be fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_saga_retried_once_its_participant_is_fixed_compensates_and_ends_cancelled() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("retry"));
    // Short deadlines, one attempt per step: shipping's failures fail the saga within seconds.
    let saga = std::env::temp_dir().join(format!("{prefix}saga.yaml"));
    let short = include_str!("../../../k8s/sagas/order-fulfilment.yaml")
        .replace("timeout: 5s", "timeout: 3s")
        .replace("maxAttempts: 3", "maxAttempts: 1");
    std::fs::write(&saga, short).unwrap();
    let saga = saga.to_str().unwrap();
    let service = |name: &'static str, extra: &'static [&'static str]| {
        let kafka = &kafka;
        let prefix = prefix.clone();
        async move {
            // Finished work is forgotten 2 s after it ends: the retry below comes later.
            let mut args = vec!["--saga", saga, "--instance", name, "--retention", "2s"];
            args.extend_from_slice(extra);
            Dev::service(kafka, name, &prefix, &args).await
        }
    };
    let edge = service("order", &["--create-topics"]).await;
    let orchestrator = service("orchestrator", &[]).await;
    let inventory = service("inventory", &[]).await;
    let payment = service("payment", &[]).await;
    let broken = service("shipping", &["--shipping-transient-rate", "1"]).await;

    let (status, body) = post(&edge.base, &order("c-retry", "sku-1", 1, 700), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["orderId"].as_str().unwrap().to_owned();
    let saga_url = format!("{}/api/sagas/{id}", orchestrator.base);
    let saga =
        |url: String| async move { reqwest::get(url).await.ok()?.json::<Value>().await.ok() };
    // create-shipment times out, so its CancelShipment is sent, and fails too: FAILED.
    let failed = eventually("the saga to fail", WAIT, || {
        let s = saga(saga_url.clone());
        async move {
            let s = s.await?;
            (s["status"] == "FAILED").then_some(s)
        }
    })
    .await;
    assert!(
        failed["incident"]
            .as_str()
            .unwrap_or_default()
            .contains("CancelShipment gave up after 1 attempt"),
        "{failed}"
    );

    // Stock and money are taken, and stay taken while the saga is FAILED, however long past
    // the retention: the holds and the payment are its participants' only record of them.
    let taken = (
        latest(&kafka.config, &format!("{prefix}inventory.stock.v1")).await["sku-1"].clone(),
        latest(&kafka.config, &format!("{prefix}payment.balances.v1")).await["c-retry"].clone(),
    );
    assert_eq!(
        taken,
        (json!(999_999), json!(10_000_000 - 700)),
        "the order took its stock and money"
    );
    // Time itself is the condition here: three retentions pass with the saga FAILED.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(store_entries(&payment.base, "payment-payments").await, 1.0);
    assert_eq!(store_entries(&inventory.base, "inventory-holds").await, 1.0);

    // Shipping is fixed (restarted without the fault); someone retries the saga.
    broken.terminate();
    let shipping = service("shipping", &[]).await;
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_sagashop"))
        .args(["saga", "--url", &orchestrator.base, "retry", &id])
        .args(["--reason", "shipping fixed", "--by", "ops"])
        .env("SAGASHOP_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let order = finished(&edge.base, &id).await;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    let ended = saga(saga_url.clone()).await.unwrap();
    assert_eq!(ended["status"], "CANCELLED", "{ended}");
    assert!(ended["incident"].is_null(), "{ended}");
    let compensated: Vec<&str> = ended["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["phase"] == "COMPENSATED")
        .map(|l| l["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        compensated,
        ["create-shipment", "authorize-payment", "reserve-inventory"],
        "{ended}"
    );
    let retried = ended["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["detail"] == "retry requested by ops: shipping fixed" && l["attempt"] == 2);
    assert!(retried, "the retry is not in the timeline: {ended}");
    // An ended saga is not retried.
    let again = reqwest::Client::new()
        .post(format!("{saga_url}/retry"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"requestedBy": "ops", "reason": "again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    // Exactly what was taken is given back.
    let books = (
        latest(&kafka.config, &format!("{prefix}inventory.stock.v1")).await["sku-1"].clone(),
        latest(&kafka.config, &format!("{prefix}payment.balances.v1")).await["c-retry"].clone(),
    );
    assert_eq!(
        books,
        (json!(1_000_000), json!(10_000_000)),
        "stock and money given back"
    );
    // Now that the saga has ended, its participants forget it after the retention.
    eventually(
        "the ended saga's hold and payment to be forgotten",
        WAIT,
        || {
            let (payment, inventory) = (payment.base.clone(), inventory.base.clone());
            async move {
                let held = store_entries(&payment, "payment-payments").await
                    + store_entries(&inventory, "inventory-holds").await;
                (held == 0.0).then_some(())
            }
        },
    )
    .await;
    for p in [shipping, payment, inventory, orchestrator, edge] {
        p.terminate();
    }
}

/// A saga stuck at a step whose participant never answers is found, cancelled by hand through
/// the API and the command line (who asked and why kept), and compensates; the compensation
/// that cannot be done either puts it in FAILED, counted, and a retry while the participant is
/// still broken fails it again. Refusals write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_saga_is_cancelled_by_hand_and_fails_where_a_compensation_cannot_be_done() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("cancel"));
    // Shipping fails every command: create-shipment never answers, nor does its compensation.
    let dev = Dev::start(&kafka, &prefix, &["--shipping-transient-rate", "1"]).await;
    let (status, placed) = post(&dev.base, &order("c-cancel", "sku-1", 1, 500), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = placed["orderId"].as_str().unwrap().to_owned();
    let saga_url = format!("{}/api/sagas/{id}", dev.base);
    let saga =
        |url: String| async move { reqwest::get(url).await.ok()?.json::<Value>().await.ok() };
    eventually("the saga to wait at create-shipment", WAIT, || {
        let s = saga(saga_url.clone());
        async move {
            let s = s.await?;
            (s["status"] == "RUNNING" && s["step"] == "create-shipment").then_some(())
        }
    })
    .await;

    let cancel_as = |token: Option<&'static str>, body: Value, id: String| {
        let url = format!("{}/api/sagas/{id}/cancel", dev.base);
        async move {
            let mut request = reqwest::Client::new().post(url).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let cancel = |body: Value, id: String| cancel_as(Some(ADMIN_TOKEN), body, id);
    let (status, refused) = cancel(json!({ "reason": "who?" }), id.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["field"], "requestedBy");
    let (status, _) = cancel(json!({ "requestedBy": "t", "reason": "r" }), "nope".into()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Without the admin token, or with another, nothing is done.
    let asked = json!({ "requestedBy": "t", "reason": "r" });
    for token in [None, Some("not-the-token")] {
        let (status, refused) = cancel_as(token, asked.clone(), id.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    }
    let (status, still) = saga(saga_url.clone())
        .await
        .map(|s| (s["status"].clone(), s))
        .unwrap();
    assert_eq!(status, "RUNNING", "refusals change nothing: {still}");

    let cli = |token: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sagashop"))
            .args(["saga", "--url", &dev.base, "cancel", &id])
            .args(["--reason", "customer called", "--by", "tester"])
            .env("SAGASHOP_ADMIN_TOKEN", token)
            .output()
            .unwrap()
    };
    let refused = cli("");
    assert_eq!(
        refused.status.code(),
        Some(64),
        "a usage error without the token"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Authorization: Bearer"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let cli = cli(ADMIN_TOKEN);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    eventually("the cancel to reach the saga", WAIT, || {
        let s = saga(saga_url.clone());
        async move { (s.await?["status"] != "RUNNING").then_some(()) }
    })
    .await;
    let (status, conflict) =
        cancel(json!({ "requestedBy": "t", "reason": "again" }), id.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");

    // Shipping cannot cancel either: that compensation gives up after its attempts, and the
    // saga stops FAILED, the payment and stock still taken, until someone retries it.
    let failed = eventually("the saga to fail", WAIT, || {
        let s = saga(saga_url.clone());
        async move {
            let s = s.await?;
            (s["status"] == "FAILED").then_some(s)
        }
    })
    .await;
    assert_eq!(
        failed["reason"], "cancelled by tester: customer called",
        "{failed}"
    );
    assert_eq!(failed["failedStep"], "create-shipment", "{failed}");
    let incident = failed["incident"].as_str().unwrap_or_default();
    assert!(
        incident.contains("CancelShipment gave up after 3 attempts"),
        "{failed}"
    );
    assert!(
        !failed["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["phase"] == "COMPENSATED"),
        "nothing after the failed compensation was undone: {failed}"
    );
    let order: Value = reqwest::get(format!("{}/api/orders/{id}", dev.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(order["status"], "CANCELLED", "{order}");
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_sagashop"))
        .args(["saga", "--url", &dev.base, "list", "--status", "FAILED"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains(&id), "saga list --status FAILED:\n{listed}");
    let (status, refused) =
        cancel(json!({ "requestedBy": "t", "reason": "again" }), id.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("retry it"),
        "{refused}"
    );
    // The gauge follows on the orchestrator's next deadline sweep.
    let metrics_url = format!("{}/metrics", dev.base);
    eventually("the failed saga in /metrics", WAIT, || {
        let page = reqwest::get(metrics_url.clone());
        async move {
            let page = page.await.ok()?.text().await.ok()?;
            [
                r#"sagashop_saga_compensations_abandoned_total{saga="order-fulfilment",step="create-shipment"} 1"#,
                r#"sagashop_sagas_failed{saga="order-fulfilment"} 1"#,
            ]
            .iter()
            .all(|line| page.lines().any(|l| l == *line))
            .then_some(())
        }
    })
    .await;
    // A retry while shipping is still broken: one more attempt, and FAILED again.
    let retried = std::process::Command::new(env!("CARGO_BIN_EXE_sagashop"))
        .args(["saga", "--url", &dev.base, "retry", &id])
        .args(["--reason", "try once more", "--by", "tester"])
        .env("SAGASHOP_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    eventually("the retried compensation to fail again", WAIT, || {
        let s = saga(saga_url.clone());
        async move {
            let s = s.await?;
            let tried = s["timeline"].as_array()?.iter().any(|l| {
                l["attempt"] == 4 && l["detail"] == "retry requested by tester: try once more"
            });
            (tried && s["status"] == "FAILED").then_some(())
        }
    })
    .await;
    dev.terminate();
}
