//! The event runtime against the real broker: order per key, concurrency across keys, commits
//! that never pass an unfinished record, retries, dead letters, and shutdown.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::topic_partition_list::TopicPartitionList;
use sagashop_contracts::Envelope;
use sagashop_contracts::events::SagaStepChanged;
use sagashop_kit::{
    HandlerError, KafkaConfig, Monitor, Outgoing, Processor, ProcessorConfig, Publisher,
    RetryPolicy, Router, Stats,
};
use sagashop_testkit::{TestKafka, eventually, sequenced, unique_name};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

struct Running {
    stats: Arc<Stats>,
    monitor: Monitor,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), sagashop_kit::Error>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the processor did not shut down")
            .unwrap()
            .unwrap();
    }
}

fn start(kafka: &TestKafka, config: ProcessorConfig, router: Router) -> Running {
    let monitor = Monitor::new();
    let publisher = Publisher::new(&kafka.config, "test")
        .unwrap()
        .observed(&monitor);
    let processor = Processor::new(&kafka.config, config, router, publisher, &monitor).unwrap();
    let stats = processor.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(processor.run(shutdown.clone()));
    Running {
        stats,
        monitor,
        shutdown,
        task,
    }
}

async fn publish_all(kafka: &TestKafka, records: &[Outgoing]) {
    Publisher::new(&kafka.config, "test")
        .unwrap()
        .send_all(records)
        .await
        .unwrap();
}

/// The group's committed offset for partition 0 of `topic` (the next offset it will read).
async fn committed(config: &KafkaConfig, group: &str, topic: &str) -> Option<i64> {
    let consumer: BaseConsumer = config.consumer("probe", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    tokio::task::spawn_blocking(move || {
        let offsets = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        match offsets.elements()[0].offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn one_key_stays_in_order_while_a_stuck_key_stalls_no_other_and_holds_the_commit() {
    let kafka = TestKafka::connect().await;
    let topic = kafka.topic("ordered", 1).await;
    let dlq = kafka.topic("ordered-dlq", 1).await;
    let group = unique_name("ordered");

    // "stuck" is first in the partition; 5 other keys interleave 20 records each behind it.
    let mut records = vec![Outgoing::event(&topic, &sequenced("stuck", 0)).unwrap()];
    for seq in 0..20 {
        for k in 0..5 {
            records.push(Outgoing::event(&topic, &sequenced(&format!("key-{k}"), seq)).unwrap());
        }
    }
    records.push(Outgoing::event(&topic, &sequenced("stuck", 1)).unwrap());
    publish_all(&kafka, &records).await;

    let seen: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let running_now = Arc::new(AtomicUsize::new(0));
    let most_at_once = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let router = {
        let (seen, running_now, most_at_once, release) = (
            seen.clone(),
            running_now.clone(),
            most_at_once.clone(),
            release.clone(),
        );
        Router::new().on(&topic, move |env: Envelope<SagaStepChanged>| {
            let (seen, running_now, most_at_once, release) = (
                seen.clone(),
                running_now.clone(),
                most_at_once.clone(),
                release.clone(),
            );
            async move {
                let now = running_now.fetch_add(1, Ordering::SeqCst) + 1;
                most_at_once.fetch_max(now, Ordering::SeqCst);
                if env.key == "stuck" && env.payload.attempt == 0 {
                    release.notified().await;
                } else {
                    // Vary the work so that finishing order differs from offset order.
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..5))).await;
                }
                seen.lock()
                    .unwrap()
                    .entry(env.key.clone())
                    .or_default()
                    .push(env.payload.attempt);
                running_now.fetch_sub(1, Ordering::SeqCst);
                Ok(vec![])
            }
        })
    };
    let config = ProcessorConfig {
        concurrency: 8,
        ..ProcessorConfig::new(&group, &dlq)
    };
    let running = start(&kafka, config, router);

    let fast_done = |seen: &HashMap<String, Vec<u32>>| {
        (0..5).all(|k| seen.get(&format!("key-{k}")).is_some_and(|v| v.len() == 20))
    };
    eventually(
        "every other key to finish while `stuck` is held",
        WAIT,
        || {
            let done = fast_done(&seen.lock().unwrap());
            async move { done.then_some(()) }
        },
    )
    .await;
    assert!(
        !seen.lock().unwrap().contains_key("stuck"),
        "stuck's first record cannot be done"
    );

    // Auto-commit runs every second; give it two rounds to (wrongly) pass offset 0.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let held = committed(&kafka.config, &group, &topic).await;
    assert!(
        held.is_none_or(|o| o <= 0),
        "committed {held:?} past the unfinished offset 0"
    );

    release.notify_one();
    eventually("all 102 records to be committed", WAIT, || {
        let (config, group, topic) = (kafka.config.clone(), group.clone(), topic.clone());
        async move { (committed(&config, &group, &topic).await == Some(102)).then_some(()) }
    })
    .await;

    let seen = seen.lock().unwrap().clone();
    for (key, seqs) in &seen {
        let expected: Vec<u32> = (0..seqs.len() as u32).collect();
        assert_eq!(seqs, &expected, "{key} ran out of order");
    }
    assert_eq!(seen["stuck"], [0, 1]);
    assert!(
        most_at_once.load(Ordering::SeqCst) > 1,
        "handlers never ran concurrently"
    );
    assert_eq!(running.stats.snapshot().handled, 102);
    running.stop().await;
}

#[tokio::test]
async fn a_transient_failure_is_retried_until_the_handler_succeeds() {
    let kafka = TestKafka::connect().await;
    let topic = kafka.topic("retry", 1).await;
    let out = kafka.topic("retry-out", 1).await;
    let dlq = kafka.topic("retry-dlq", 1).await;
    publish_all(
        &kafka,
        &[Outgoing::event(&topic, &sequenced("order-1", 0)).unwrap()],
    )
    .await;

    let calls = Arc::new(AtomicU32::new(0));
    let router = {
        let (calls, out) = (calls.clone(), out.clone());
        Router::new().on(&topic, move |env: Envelope<SagaStepChanged>| {
            let (calls, out) = (calls.clone(), out.clone());
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err(HandlerError::Transient("the bank timed out".into()));
                }
                let reply = Envelope::caused_by(&env.metadata, env.key.clone(), env.payload);
                Ok(vec![Outgoing::event(&out, &reply).unwrap()])
            }
        })
    };
    let config = ProcessorConfig {
        retry: RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        },
        ..ProcessorConfig::new(unique_name("retry"), &dlq)
    };
    let running = start(&kafka, config, router);
    let stats = running.stats.clone();
    eventually("the record to be handled", WAIT, || {
        let s = stats.snapshot();
        async move { (s.handled == 1).then_some(()) }
    })
    .await;
    let s = running.stats.snapshot();
    assert_eq!((s.retried, s.dead_lettered), (2, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let reader = kafka.consumer(&unique_name("retry-out"));
    reader.subscribe(&[&out]).unwrap();
    let reply = tokio::time::timeout(WAIT, reader.recv())
        .await
        .unwrap()
        .unwrap();
    let reply = sagashop_kit::headers::decode::<SagaStepChanged, _>(&reply).unwrap();
    assert_eq!(reply.key, "order-1");
    assert!(reply.metadata.causation_id.is_some());
    running.stop().await;
}

fn header<'a>(message: &'a impl Message, name: &str) -> &'a str {
    let headers = message.headers().expect("a dead letter has headers");
    let value = headers
        .iter()
        .filter(|h| h.key == name)
        .last()
        .and_then(|h| h.value)
        .unwrap_or_else(|| panic!("dead letter lacks header {name}"));
    std::str::from_utf8(value).unwrap()
}

#[tokio::test]
async fn poison_records_go_to_the_dead_letter_topic_without_blocking_their_key() {
    let kafka = TestKafka::connect().await;
    let topic = kafka.topic("poison", 1).await;
    let dlq = kafka.topic("poison-dlq", 1).await;
    let group = unique_name("poison");

    // Everything on one key: a blocked record would hold back every one behind it.
    let good = sequenced("order-9", 4);
    let header_of = |name: &str| {
        good.metadata
            .to_headers()
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(k, v)| (k.to_owned(), v.into_bytes()))
            .unwrap()
    };
    let garbage = Outgoing {
        payload: Some(b"\x00\xffnot json".to_vec()),
        ..Outgoing::event(&topic, &sequenced("order-9", 0)).unwrap()
    };
    let headerless = Outgoing {
        topic: topic.clone(),
        key: Some(b"order-9".to_vec()),
        partition: None,
        payload: Some(b"{}".to_vec()),
        headers: vec![],
    };
    let mut unknown = Outgoing::event(&topic, &sequenced("order-9", 1)).unwrap();
    unknown.headers.retain(|(k, _)| k != "event-type");
    unknown
        .headers
        .push(("event-type".into(), b"SomethingNew".to_vec()));
    let always_transient = Outgoing::event(&topic, &sequenced("order-9", 2)).unwrap();
    let permanent = Outgoing::event(&topic, &sequenced("order-9", 3)).unwrap();
    publish_all(
        &kafka,
        &[
            garbage.clone(),
            headerless,
            unknown,
            always_transient,
            permanent,
            Outgoing::event(&topic, &good).unwrap(),
        ],
    )
    .await;
    assert_eq!(header_of("event-type").1, b"SagaStepChanged");

    let router = Router::new().on(&topic, |env: Envelope<SagaStepChanged>| async move {
        match env.payload.attempt {
            2 => Err(HandlerError::Transient("still down".into())),
            3 => Err(HandlerError::Permanent("card declined".into())),
            _ => Ok(vec![]),
        }
    });
    let config = ProcessorConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
        },
        ..ProcessorConfig::new(&group, &dlq)
    };
    let running = start(&kafka, config, router);
    let stats = running.stats.clone();
    eventually(
        "the good record behind four poison ones to be handled",
        WAIT,
        || {
            let s = stats.snapshot();
            async move { (s.handled == 1).then_some(s) }
        },
    )
    .await;
    let s = running.stats.snapshot();
    assert_eq!((s.dead_lettered, s.unknown, s.retried), (4, 1, 2));
    let metrics = running.monitor.encode();
    let labels = format!(r#"{{group="{group}",topic="{topic}"}}"#);
    for line in [
        format!("sagashop_messages_dead_lettered_total{labels} 4"),
        format!("sagashop_messages_unknown_total{labels} 1"),
        format!("sagashop_messages_retried_total{labels} 2"),
        format!(r#"sagashop_publish_duration_seconds_count{{topic="{dlq}"}} 4"#),
    ] {
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }

    let reader = kafka.consumer(&unique_name("poison-dlq"));
    reader.subscribe(&[&dlq]).unwrap();
    let mut letters = Vec::new();
    for _ in 0..4 {
        letters.push(
            tokio::time::timeout(WAIT, reader.recv())
                .await
                .unwrap()
                .unwrap()
                .detach(),
        );
    }
    let offsets: Vec<&str> = letters
        .iter()
        .map(|l| header(l, "dlq-original-offset"))
        .collect();
    assert_eq!(offsets, ["0", "1", "3", "4"]);
    let attempts: Vec<&str> = letters.iter().map(|l| header(l, "dlq-attempts")).collect();
    assert_eq!(
        attempts,
        ["0", "0", "3", "1"],
        "decode failures are never retried"
    );
    for letter in &letters {
        assert_eq!(letter.key(), Some(&b"order-9"[..]));
        assert_eq!(header(letter, "dlq-original-topic"), topic);
        assert_eq!(header(letter, "dlq-original-partition"), "0");
        assert_eq!(header(letter, "dlq-consumer-group"), group);
        assert!(chrono::DateTime::parse_from_rfc3339(header(letter, "dlq-failed-at")).is_ok());
    }
    assert_eq!(
        letters[0].payload(),
        garbage.payload.as_deref(),
        "original bytes kept"
    );
    assert_eq!(
        header(&letters[0], "message-id"),
        std::str::from_utf8(&garbage.headers[2].1).unwrap()
    );
    assert!(header(&letters[0], "dlq-error").contains("invalid `SagaStepChanged` payload"));
    assert_eq!(
        header(&letters[1], "dlq-error"),
        "missing header `event-type`"
    );
    assert_eq!(header(&letters[2], "dlq-error"), "still down");
    assert_eq!(header(&letters[3], "dlq-error"), "card declined");
    running.stop().await;
}

#[tokio::test]
async fn shutdown_drains_and_commits_what_was_handled() {
    let kafka = TestKafka::connect().await;
    let topic = kafka.topic("drain", 1).await;
    let dlq = kafka.topic("drain-dlq", 1).await;
    let group = unique_name("drain");
    let records: Vec<_> = (0..30)
        .map(|i| Outgoing::event(&topic, &sequenced(&format!("order-{}", i % 7), i)).unwrap())
        .collect();
    publish_all(&kafka, &records).await;

    let router = Router::new().on(&topic, |_: Envelope<SagaStepChanged>| async { Ok(vec![]) });
    let running = start(&kafka, ProcessorConfig::new(&group, &dlq), router);
    let stats = running.stats.clone();
    eventually("30 records to be handled", WAIT, || {
        let s = stats.snapshot();
        async move { (s.handled == 30).then_some(()) }
    })
    .await;
    running.stop().await;
    // The final commit is synchronous: right after run() returns, the group is at the end.
    assert_eq!(committed(&kafka.config, &group, &topic).await, Some(30));
}

#[tokio::test]
async fn publishing_to_an_unreachable_broker_fails_as_unavailable() {
    let config = KafkaConfig {
        delivery_timeout: Duration::from_secs(1),
        ..KafkaConfig::new("127.0.0.1:1")
    };
    let publisher = Publisher::new(&config, "test").unwrap();
    let err = publisher
        .publish("orders.v1", &sequenced("order-1", 0))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().starts_with("Kafka is unavailable"), "{err}");
}

#[tokio::test]
async fn consumer_lag_counts_unfinished_records_and_falls_to_zero() {
    let kafka = TestKafka::connect().await;
    let topic = kafka.topic("lag", 1).await;
    let dlq = kafka.topic("lag-dlq", 1).await;
    let group = unique_name("lag");
    let records: Vec<_> = (0..30)
        .map(|i| Outgoing::event(&topic, &sequenced("order-0", i)).unwrap())
        .collect();
    publish_all(&kafka, &records).await;

    let release = Arc::new(Notify::new());
    let router = {
        let release = release.clone();
        Router::new().on(&topic, move |env: Envelope<SagaStepChanged>| {
            let release = release.clone();
            async move {
                // librdkafka knows no lag before the group's first commit: let 10 records
                // through (and be committed), then hold the 11th.
                if env.payload.attempt == 10 {
                    release.notified().await;
                }
                Ok(vec![])
            }
        })
    };
    let config = ProcessorConfig {
        lag_interval: Duration::from_millis(200),
        ..ProcessorConfig::new(&group, &dlq)
    };
    let running = start(&kafka, config, router);
    let lag = |n: u32| {
        format!(r#"sagashop_consumer_lag{{group="{group}",topic="{topic}",partition="0"}} {n}"#)
    };

    let monitor = running.monitor.clone();
    let held = lag(20);
    eventually("the lag to show 20 unfinished records", WAIT, || {
        let shown = monitor.encode().contains(&held);
        async move { shown.then_some(()) }
    })
    .await;
    release.notify_one();
    let caught_up = lag(0);
    eventually("the lag to fall to 0", WAIT, || {
        let shown = monitor.encode().contains(&caught_up);
        async move { shown.then_some(()) }
    })
    .await;
    running.stop().await;
}

/// What `/healthz` serves: the loops that stopped or stalled.
fn not_live(monitor: &Monitor) -> Option<String> {
    let dead = monitor.not_live();
    (!dead.is_empty()).then(|| dead.join(", "))
}

#[tokio::test]
async fn a_loop_stuck_on_a_record_fails_liveness_until_it_moves_and_an_idle_one_does_not() {
    let kafka = TestKafka::connect().await;
    let topic = kafka.topic("stall", 1).await;
    let dlq = kafka.topic("stall-dlq", 1).await;
    let group = unique_name("stall");
    let release = Arc::new(Notify::new());
    let router = {
        let release = release.clone();
        Router::new().on(&topic, move |_: Envelope<SagaStepChanged>| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok(vec![])
            }
        })
    };
    let config = ProcessorConfig {
        stall_after: Duration::from_secs(2),
        ..ProcessorConfig::new(&group, &dlq)
    };
    let running = start(&kafka, config, router);
    let monitor = running.monitor.clone();
    // Idle for longer than the bound: waiting for work is not a stall.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(not_live(&monitor), None);

    publish_all(
        &kafka,
        &[Outgoing::event(&topic, &sequenced("order-1", 0)).unwrap()],
    )
    .await;
    let stalled = eventually("the stuck loop to fail liveness", WAIT, || {
        let dead = not_live(&monitor);
        async move { dead }
    })
    .await;
    assert!(
        stalled.starts_with(&format!("consumer:{group} made no progress for ")),
        "{stalled}"
    );
    release.notify_one();
    eventually(
        "liveness to come back once the record finishes",
        WAIT,
        || {
            let live = not_live(&monitor).is_none();
            async move { live.then_some(()) }
        },
    )
    .await;
    running.stop().await;
    assert_eq!(
        not_live(&monitor),
        None,
        "a loop stopped as asked is not dead"
    );
}

#[tokio::test]
async fn a_loop_that_ends_by_itself_fails_liveness_naming_it() {
    let kafka = TestKafka::connect().await;
    // State on one partition for input on two: a fault no retry cures.
    let topic = kafka.topic("dies", 2).await;
    let changelog = kafka.topic("dies-state", 1).await;
    let dlq = kafka.topic("dies-dlq", 1).await;
    let group = unique_name("dies");
    let monitor = Monitor::new();
    let router = Router::new().on(&topic, |_: Envelope<SagaStepChanged>| async { Ok(vec![]) });
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    let config = ProcessorConfig::exactly_once(&group, &dlq, unique_name("dies-txn"));
    let state: sagashop_kit::Store<u32> =
        sagashop_kit::Store::owned(&kafka.config, "state", &changelog, &monitor);
    let processor = Processor::new(&kafka.config, config, router, publisher, &monitor)
        .unwrap()
        .reloads(state);
    let ended = tokio::time::timeout(WAIT, processor.run(CancellationToken::new()))
        .await
        .expect("the loop did not end");
    let error = ended.unwrap_err().to_string();
    assert!(error.contains("needs as many partitions"), "{error}");
    assert_eq!(
        not_live(&monitor),
        Some(format!("consumer:{group} stopped"))
    );
}
