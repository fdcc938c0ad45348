//! A service runs on its wiring: the `<service>.json` the operator derives from the Saga (the
//! same `Topology` code) and mounts for it. Changing the Saga changes what the running
//! consumer does: here a participant's in-place retry, seen in the attempts its dead letters
//! record, and its wiring on `GET /wiring`.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Dev, WAIT};
use sagashop_contracts::Envelope;
use sagashop_contracts::commands::{AuthorizePayment, StepContext};
use sagashop_kit::reader::read_to_end;
use sagashop_kit::{Outgoing, Publisher, Wiring};
use sagashop_testkit::{TestKafka, eventually, unique_name};
use sagashop_topology::{SHIPPED_SAGA, Service, Topology};

/// The shipped saga with payment's in-place retry set to `attempts` (short backoffs).
fn saga_with_payment_retry(attempts: u32) -> String {
    let retry = format!(
        "      commandTopic: payment.commands.v1\n      retry: {{ maxAttempts: {attempts}, initialBackoff: 10ms, maxBackoff: 40ms }}\n"
    );
    let saga = SHIPPED_SAGA.replace("      commandTopic: payment.commands.v1\n", &retry);
    assert_ne!(
        saga, SHIPPED_SAGA,
        "the shipped saga's payment participant moved"
    );
    saga
}

/// Writes what the operator writes into the saga's ConfigMap (the saga and every wiring, the
/// names unprefixed); returns the names the run uses, with its own prefix.
fn write_config(dir: &Path, saga: &str, prefix: &str) -> Topology {
    let written = Topology::load(Some((saga, "test saga")), "").unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("saga.yaml"), saga).unwrap();
    for (service, wiring) in written.wirings() {
        let json = serde_json::to_string_pretty(&wiring).unwrap();
        std::fs::write(dir.join(format!("{service}.json")), json).unwrap();
    }
    Topology::load(Some((saga, "test saga")), prefix).unwrap()
}

/// Sends one authorisation for `customer` to payment's command topic.
async fn authorize(kafka: &TestKafka, topology: &Topology, customer: &str) {
    let wiring = topology.wiring(Service::Payment).unwrap();
    let order = uuid::Uuid::now_v7();
    let command = AuthorizePayment {
        context: StepContext {
            saga_id: order.to_string(),
            saga_name: topology.definition().name.clone(),
            step: "authorize-payment".into(),
            attempt: 1,
            succeeded_before: false,
        },
        order_id: order,
        customer_id: customer.to_owned(),
        total_minor: 100,
        currency: "EUR".into(),
    };
    let envelope = Envelope::new(customer, order.to_string(), command);
    let record = Outgoing::event(wiring.topic("commands").unwrap(), &envelope)
        .unwrap()
        .with_header("reply-to", wiring.topic("replies").unwrap());
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    publisher.send(&record).await.unwrap();
}

/// The `dlq-attempts` of `customer`'s dead letter on payment's dead-letter topic.
async fn dead_letter_attempts(kafka: &TestKafka, topology: &Topology, customer: &str) -> String {
    let topic = topology.wiring(Service::Payment).unwrap().dead_letter_topic;
    eventually("payment's dead letter", WAIT, || async {
        let records = read_to_end(&kafka.config, "test", &topic, Duration::from_secs(30))
            .await
            .unwrap();
        records
            .into_iter()
            .find(|r| r.key.as_deref() == Some(customer.as_bytes()))
            .and_then(|r| {
                r.headers
                    .into_iter()
                    .find(|(name, _)| name == "dlq-attempts")
                    .and_then(|(_, v)| String::from_utf8(v?).ok())
            })
    })
    .await
}

/// `sagashop payment` on the wiring in `dir` with the run's prefix, failing every command
/// transiently.
async fn payment(kafka: &TestKafka, dir: &Path, prefix: &str) -> Dev {
    let env = [
        ("SAGASHOP_WIRING".to_owned(), dir.display().to_string()),
        (
            "SAGASHOP_SAGA".to_owned(),
            dir.join("saga.yaml").display().to_string(),
        ),
        ("PAYMENT_TRANSIENT_RATE".to_owned(), "1".to_owned()),
    ];
    Dev::run_with(
        "payment",
        &kafka.config.bootstrap_servers,
        &env,
        prefix,
        &[],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_the_saga_reaches_the_running_services_consumer() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("wiring"));
    let dir = std::env::temp_dir().join(unique_name("wiring"));

    let topology = write_config(&dir, &saga_with_payment_retry(2), &prefix);
    for (spec, _) in topology.topics() {
        kafka.create(spec).await;
    }
    let dev = payment(&kafka, &dir, &prefix).await;
    // It says what it runs on: the file, with the prefix before its names.
    let served: Vec<Wiring> = reqwest::get(format!("{}/wiring", dev.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, [topology.wiring(Service::Payment).unwrap()]);
    assert_eq!(served[0].retry.max_attempts, 2);
    authorize(&kafka, &topology, "customer-a").await;
    assert_eq!(
        dead_letter_attempts(&kafka, &topology, "customer-a").await,
        "2",
        "{}",
        dev.logs()
    );
    dev.terminate();

    // The Saga changes; the operator rewrites the wiring and rolls the pods (here: restarts).
    let topology = write_config(&dir, &saga_with_payment_retry(4), &prefix);
    let dev = payment(&kafka, &dir, &prefix).await;
    authorize(&kafka, &topology, "customer-b").await;
    assert_eq!(
        dead_letter_attempts(&kafka, &topology, "customer-b").await,
        "4",
        "{}",
        dev.logs()
    );
    dev.terminate();

    // A wiring that names another service is refused at start.
    std::fs::copy(dir.join("inventory.json"), dir.join("payment.json")).unwrap();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_sagashop"))
        .arg("payment")
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.config.bootstrap_servers)
        .env("SAGASHOP_WIRING", &dir)
        .env("SAGASHOP_SAGA", dir.join("saga.yaml"))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(64));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("wiring of `inventory`, not `payment`"),
        "{said}"
    );

    // So is one whose in-place retries can outlast the 10 s transaction timeout: a record
    // retried that long would have its transaction aborted under it, again and again.
    let long = saga_with_payment_retry(6).replace("maxBackoff: 40ms", "maxBackoff: 5s");
    let long = long.replace("initialBackoff: 10ms", "initialBackoff: 2s");
    write_config(&dir, &long, &prefix);
    let mut started = std::process::Command::new(env!("CARGO_BIN_EXE_sagashop"))
        .arg("payment")
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.config.bootstrap_servers)
        .env("SAGASHOP_WIRING", &dir)
        .env("SAGASHOP_SAGA", dir.join("saga.yaml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal is immediate; a service that starts instead is stopped and the test fails.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if let Some(status) = started.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            started.kill().unwrap();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let refused = started.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(exited, Some(64), "{said}");
    assert!(
        said.contains("reaches the 10s transaction timeout"),
        "{said}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fresh install starts every service at once while the operator makes the topics one by
/// one: every service waits for all of its topics, not ready meanwhile, instead of exiting or
/// joining its group with some of them. Two orchestrators, as the chart runs: a member that
/// joined knowing only the input topics was assigned them and then failed restoring state from
/// a changelog that was not there yet (which, before it stopped the process, left it running and
/// never ready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_started_before_their_topics_exist_wait_for_all_of_them_and_work() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("late-topics"));
    let services = [
        "inventory",
        "order",
        "orchestrator",
        "orchestrator",
        "payment",
        "shipping",
    ];
    let early = services.map(|service| {
        let (kafka, prefix) = (kafka.clone(), prefix.clone());
        tokio::spawn(async move { Dev::service(&kafka, service, &prefix, &[]).await })
    });
    // Longer than a record waits for its topic before the producer gives up (10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    for started in &early {
        assert!(
            !started.is_finished(),
            "a service was ready (or gave up) before its topics existed"
        );
    }
    // The topics appear one at a time, as the operator reconciles them: the inputs in an order
    // of this run's own, the compacted state changelogs last (the worst case above).
    let mut specs: Vec<_> = Topology::load(None, &prefix)
        .unwrap()
        .topics()
        .into_iter()
        .map(|(spec, _)| spec)
        .collect();
    let seed = prefix.bytes().fold(7_usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    specs.sort_by_key(|spec| {
        let state = spec
            .config
            .get("cleanup.policy")
            .is_some_and(|p| p == "compact");
        (
            state,
            spec.name.bytes().fold(seed, |h, b| {
                h.wrapping_mul(131).wrapping_add(usize::from(b))
            }),
        )
    });
    eprintln!(
        "creating, in this order: {:?}",
        specs.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let admin = kafka.config.admin_client("test").unwrap();
    for spec in &specs {
        sagashop_kit::admin::create_topics(&admin, std::slice::from_ref(spec), WAIT)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut running = Vec::new();
    for started in early {
        running.push(
            tokio::time::timeout(WAIT, started)
                .await
                .expect("a service did not become ready once its topics existed")
                .expect("a service exited while waiting for its topics"),
        );
    }
    let (status, body) = common::post(
        &running[1].base,
        &common::order("c-late", "sku-1", 1, 100),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    let id = body["orderId"].as_str().unwrap().to_owned();
    assert_eq!(
        common::finished(&running[1].base, &id).await["status"],
        "COMPLETED"
    );
    for dev in running {
        dev.terminate();
    }
}

/// A service whose work ends while the process runs (here the orchestrator, whose state
/// changelog has fewer partitions than its inputs, which it finds at its first assignment)
/// stops the process, non-zero and saying why, so that its supervisor starts it again rather
/// than leaving a process that answers `/healthz` and does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_work_ends_stops_the_process_saying_why() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("work-ends"));
    let state = format!("{prefix}saga.order-fulfilment.state");
    let specs: Vec<_> = Topology::load(None, &prefix)
        .unwrap()
        .topics()
        .into_iter()
        .map(|(mut spec, _)| {
            if spec.name == state {
                spec.partitions = 1;
            }
            spec
        })
        .collect();
    let admin = kafka.config.admin_client("test").unwrap();
    sagashop_kit::admin::create_topics(&admin, &specs, WAIT)
        .await
        .unwrap();
    let log = std::env::temp_dir().join(format!("{prefix}log"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sagashop"))
        .args([
            "orchestrator",
            "--topic-prefix",
            &prefix,
            "--http",
            "127.0.0.1:0",
        ])
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.config.bootstrap_servers)
        .env("RUST_LOG", "warn")
        .env("LOG_FORMAT", "text")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let status = eventually("the process to stop", WAIT, || {
        std::future::ready(child.try_wait().unwrap())
    })
    .await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(70), "{logged}");
    assert!(
        logged.contains("a service stopped before shutdown")
            && logged.contains(&format!("`{state}` has 1 partitions")),
        "{logged}"
    );
    let _ = std::fs::remove_file(&log);
}

/// A broker that starts after the services (the chart's bundled Kafka beside them): a start
/// waits for it up to `SAGASHOP_KAFKA_WAIT`, alive meanwhile (`/healthz` 200), not ready
/// (`/readyz` 503 naming kafka) and refusing orders with a 503 and Retry-After, then starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waits_for_a_broker_that_comes_later_answering_health_meanwhile() {
    let kafka = TestKafka::connect().await;
    let free = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (broker_port, http_port) = (free(), free());
    let prefix = format!("{}.", unique_name("late-broker"));
    let log = std::env::temp_dir().join(format!("{prefix}log"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sagashop"))
        .args(["dev", "--topic-prefix", &prefix, "--summary-every", "0s"])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .env(
            "KAFKA_BOOTSTRAP_SERVERS",
            format!("127.0.0.1:{broker_port}"),
        )
        .env("SAGASHOP_KAFKA_WAIT", "90s")
        .env("RUST_LOG", "warn")
        .env("LOG_FORMAT", "text")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{http_port}");
    let client = reqwest::Client::new();
    let readyz = eventually("/readyz to answer while Kafka is away", WAIT, || {
        let request = client.get(format!("{base}/readyz")).send();
        async move {
            let response = request.await.ok()?;
            Some((response.status(), response.text().await.ok()?))
        }
    })
    .await;
    assert_eq!(
        readyz.0,
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "{readyz:?}"
    );
    assert!(readyz.1.contains("kafka"), "{readyz:?}");
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    let order = client
        .post(format!("{base}/api/orders"))
        .json(&common::order("c-late", "sku-1", 1, 100))
        .send()
        .await
        .unwrap();
    assert_eq!(order.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(order.headers().contains_key("retry-after"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(child.try_wait().unwrap().is_none(), "it gave up on Kafka");

    // The broker "comes up": its address now leads to the real one.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", broker_port))
        .await
        .unwrap();
    let upstream = kafka.config.bootstrap_servers.clone();
    let relay = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    eventually(
        "the process to become ready once Kafka answers",
        WAIT,
        || {
            let request = client.get(format!("{base}/readyz")).send();
            async move { (request.await.ok()?.status() == reqwest::StatusCode::OK).then_some(()) }
        },
    )
    .await;
    let (status, body) = common::post(&base, &common::order("c-late", "sku-1", 1, 100), None)
        .await
        .unwrap();
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    let _ = child.kill();
    let _ = child.wait();
    relay.abort();
    let _ = std::fs::remove_file(&log);
}
