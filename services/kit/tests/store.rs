//! State stores against the real broker: restore from the changelog, and state written in the
//! same transaction as the outputs.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use sagashop_contracts::Envelope;
use sagashop_contracts::events::SagaStepChanged;
use sagashop_kit::admin::TopicSpec;
use sagashop_kit::{
    DedupeKey, Expiry, Monitor, Outgoing, Processor, ProcessorConfig, Publisher, Router, Store,
};
use sagashop_testkit::{TestKafka, unique_name};
use tokio_util::sync::CancellationToken;

mod common;

const WAIT: Duration = Duration::from_secs(60);

async fn changelog(kafka: &TestKafka, prefix: &str) -> String {
    let name = unique_name(prefix);
    kafka
        .create(TopicSpec::new(&name, 1).with_config("cleanup.policy", "compact"))
        .await;
    name
}

#[tokio::test]
async fn a_store_restores_the_latest_values_and_forgets_deleted_keys() {
    let kafka = TestKafka::connect().await;
    let topic = changelog(&kafka, "store").await;
    let monitor = Monitor::new();
    let store: Store<u32> = Store::open(&kafka.config, "stock", &topic, &monitor)
        .await
        .unwrap();
    assert!(store.is_empty());
    assert!(monitor.not_ready().is_empty(), "an opened store is ready");

    let writes = vec![
        store.put("sku-1", 5).unwrap(),
        store.put("sku-2", 7).unwrap(),
        store.put("sku-1", 3).unwrap(),
        store.delete("sku-2"),
    ];
    assert_eq!((store.get("sku-1"), store.get("sku-2")), (Some(3), None));
    Publisher::new(&kafka.config, "test")
        .unwrap()
        .send_all(&writes)
        .await
        .unwrap();

    // A new process: memory comes only from the changelog.
    let restored: Store<u32> = Store::open(&kafka.config, "stock", &topic, &Monitor::new())
        .await
        .unwrap();
    assert_eq!(restored.entries(), [("sku-1".to_owned(), 3)]);
}

#[tokio::test]
async fn finished_entries_expire_after_the_retention_counted_from_their_last_write() {
    let kafka = TestKafka::connect().await;
    let topic = changelog(&kafka, "store-expiry").await;
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    let monitor = Monitor::new();
    let store: Store<String> = Store::open(&kafka.config, "sagas", &topic, &monitor)
        .await
        .unwrap();
    let retention = Duration::from_millis(800);
    let finished = |v: &String| v == "done";
    let expiry = |store: &Store<String>| Expiry::new().of(store, retention, finished);
    let writes = vec![
        store.put("old-done", "done".into()).unwrap(),
        store.put("old-running", "running".into()).unwrap(),
    ];
    publisher.send_all(&writes).await.unwrap();
    assert!(expiry(&store).sweep().is_empty(), "nothing is old yet");

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let young = store.put("young-done", "done".into()).unwrap();
    publisher.send(&young).await.unwrap();
    let tombstones = expiry(&store).sweep();
    assert_eq!(
        tombstones
            .iter()
            .map(|t| (t.key.clone().unwrap(), t.payload.is_none()))
            .collect::<Vec<_>>(),
        [(b"old-done".to_vec(), true)],
        "only the finished entry past its retention goes"
    );
    let mut left: Vec<String> = store.entries().into_iter().map(|(k, _)| k).collect();
    left.sort();
    assert_eq!(
        left,
        ["old-running", "young-done"],
        "running work is never forgotten"
    );
    let metrics = monitor.encode();
    assert!(
        metrics.contains(r#"sagashop_store_entries{store="sagas"} 2"#)
            && metrics.contains(r#"sagashop_store_expired_total{store="sagas"} 1"#),
        "{metrics}"
    );
    publisher.send_all(&tombstones).await.unwrap();

    // A restore forgets what the tombstones removed, and ages what it reads from the records'
    // timestamps: a second later, the young entry is past its retention straight away.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let restored: Store<String> = Store::open(&kafka.config, "sagas", &topic, &Monitor::new())
        .await
        .unwrap();
    let mut keys: Vec<String> = restored.entries().into_iter().map(|(k, _)| k).collect();
    keys.sort();
    assert_eq!(keys, ["old-running", "young-done"]);
    let aged = expiry(&restored).sweep();
    assert_eq!(aged.len(), 1, "{aged:?}");
    assert_eq!(
        restored.entries(),
        [("old-running".to_owned(), "running".to_owned())]
    );
}

#[tokio::test]
async fn a_corrupt_changelog_record_is_quarantined_and_its_key_keeps_its_previous_value() {
    let kafka = TestKafka::connect().await;
    let topic = changelog(&kafka, "store-corrupt").await;
    let record = |key: &[u8], payload: &[u8]| Outgoing {
        topic: topic.clone(),
        key: Some(key.to_vec()),
        partition: None,
        payload: Some(payload.to_vec()),
        headers: vec![],
    };
    let writes = [
        record(b"sku-1", b"5"),
        record(b"sku-1", b"not a number"),
        record(b"sku-2", b"7"),
        record(&[0xff, 0xfe], b"1"),
    ];
    Publisher::new(&kafka.config, "test")
        .unwrap()
        .send_all(&writes)
        .await
        .unwrap();
    let monitor = Monitor::new();
    let store = Store::<u32>::open(&kafka.config, "stock", &topic, &monitor)
        .await
        .expect("a bad record does not stop the restore");
    let mut entries = store.entries();
    entries.sort();
    assert_eq!(
        entries,
        [("sku-1".to_owned(), 5), ("sku-2".to_owned(), 7)],
        "the unreadable value is skipped, the key keeps the one before it"
    );
    let metrics = monitor.encode();
    assert!(
        metrics.contains(r#"sagashop_store_quarantined_total{store="stock"} 2"#),
        "{metrics}"
    );
    assert!(monitor.not_ready().is_empty(), "the store is ready");
    // Kept for the owner to dead-letter, with their place and why, once.
    let quarantined = store.take_quarantined();
    let offsets: Vec<i64> = quarantined.iter().map(|(r, _)| r.offset).collect();
    assert_eq!(offsets, [1, 3]);
    assert!(
        quarantined[0].1.contains("expected"),
        "{:?}",
        quarantined[0].1
    );
    assert!(store.take_quarantined().is_empty(), "taken once");
}

/// Counts inputs per key in a store; hangs on `hang_at` (a member dying mid-transaction).
fn counter(input: &str, store: Store<u32>, hang_at: Option<u32>) -> Router {
    Router::new().on(input, move |env: Envelope<SagaStepChanged>| {
        let store = store.clone();
        async move {
            if Some(env.payload.attempt) == hang_at {
                std::future::pending::<()>().await;
            }
            let count = store.get(&env.key).unwrap_or(0) + 1;
            Ok(vec![store.put(&env.key, count).unwrap()])
        }
    })
}

#[tokio::test]
async fn state_written_in_the_transaction_counts_every_input_once_across_a_crash() {
    let kafka = TestKafka::connect().await;
    let input = kafka.topic("count-in", 1).await;
    let dlq = kafka.topic("count-dlq", 1).await;
    let topic = changelog(&kafka, "counts").await;
    let group = unique_name("count");
    common::publish_sequenced(&kafka, &input, 50, 5).await;

    let config = ProcessorConfig {
        transactional_id: Some(unique_name("count-member")),
        batch_size: 10,
        ..ProcessorConfig::new(&group, &dlq)
    };
    let member = |store: &Store<u32>, monitor: &Monitor, hang_at| {
        let publisher = Publisher::new(&kafka.config, "test").unwrap();
        let router = counter(&input, store.clone(), hang_at);
        Processor::new(&kafka.config, config.clone(), router, publisher, monitor)
            .unwrap()
            .reloads(store.clone())
    };

    // The first member commits three batches, then hangs in the fourth with its increments
    // already produced into the open transaction.
    let monitor = Monitor::new();
    let store = Store::open(&kafka.config, "counts", &topic, &monitor)
        .await
        .unwrap();
    let first = member(&store, &monitor, Some(30));
    let stats = first.stats();
    let first = tokio::spawn(first.run(CancellationToken::new()));
    let mut raw_config = kafka.config.consumer("test", &unique_name("count-raw"));
    raw_config.set("isolation.level", "read_uncommitted");
    let raw: StreamConsumer = raw_config.create().unwrap();
    raw.subscribe(&[&topic]).unwrap();
    let mut raw_seen = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while stats.snapshot().handled < 30 || raw_seen <= 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first member never hung mid-transaction"
        );
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), raw.recv()).await {
            raw_seen += 1;
        }
    }
    first.abort();
    let _ = first.await;

    // The replacement restores the counts of the committed batches only, and carries on.
    let monitor = Monitor::new();
    let store = Store::open(&kafka.config, "counts", &topic, &monitor)
        .await
        .unwrap();
    assert_eq!(
        store.get("order-0"),
        Some(6),
        "30 committed inputs over 5 keys"
    );
    common::run_until_handled(member(&store, &monitor, None), 20, WAIT).await;

    let counts = Store::<u32>::open(&kafka.config, "counts", &topic, &Monitor::new())
        .await
        .unwrap();
    let mut entries = counts.entries();
    entries.sort();
    let expected: Vec<_> = (0..5).map(|k| (format!("order-{k}"), 10)).collect();
    assert_eq!(
        entries, expected,
        "every key counted each of its 10 inputs exactly once"
    );
}

#[tokio::test]
async fn an_aborted_batch_leaves_no_trace_in_the_store() {
    let kafka = TestKafka::connect().await;
    let input = kafka.topic("abort-in", 1).await;
    let dlq = kafka.topic("abort-dlq", 1).await;
    let topic = changelog(&kafka, "abort-counts").await;
    common::publish_sequenced(&kafka, &input, 10, 1).await;

    let monitor = Monitor::new();
    let store: Store<u32> = Store::open(&kafka.config, "counts", &topic, &monitor)
        .await
        .unwrap();
    let oversized_once = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let router = {
        let (store, oversized_once, dlq) = (store.clone(), oversized_once.clone(), dlq.clone());
        Router::new().on(&input, move |env: Envelope<SagaStepChanged>| {
            let (store, oversized_once, dlq) = (store.clone(), oversized_once.clone(), dlq.clone());
            async move {
                let count = store.get(&env.key).unwrap_or(0) + 1;
                let mut outputs = vec![store.put(&env.key, count).unwrap()];
                // The first try of record 7 also emits a record Kafka refuses (over 1 MB): the
                // whole batch must abort, including the store increments already made.
                if env.payload.attempt == 7
                    && oversized_once.swap(false, std::sync::atomic::Ordering::SeqCst)
                {
                    outputs.push(Outgoing {
                        topic: dlq,
                        key: None,
                        partition: None,
                        payload: Some(vec![b'x'; 2 << 20]),
                        headers: vec![],
                    });
                }
                Ok(outputs)
            }
        })
    };
    let config = ProcessorConfig {
        transactional_id: Some(unique_name("abort-member")),
        batch_size: 100,
        batch_linger: Duration::from_millis(500),
        batch_gap: Duration::from_millis(500),
        ..ProcessorConfig::new(unique_name("abort"), &dlq)
    };
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    let processor = Processor::new(&kafka.config, config, router, publisher, &monitor)
        .unwrap()
        .reloads(store.clone());
    common::run_until_handled(processor, 10, WAIT).await;

    assert!(
        !oversized_once.load(std::sync::atomic::Ordering::SeqCst),
        "the abort never happened"
    );
    assert!(
        monitor
            .encode()
            .contains("sagashop_transaction_aborts_total"),
        "no abort counted"
    );
    assert_eq!(
        store.get("order-0"),
        Some(10),
        "memory kept increments of the aborted batch"
    );
    let restored: Store<u32> = Store::open(&kafka.config, "counts", &topic, &Monitor::new())
        .await
        .unwrap();
    assert_eq!(restored.get("order-0"), Some(10));
}

#[tokio::test]
async fn a_message_delivered_again_is_handled_once_even_after_a_restart() {
    let kafka = TestKafka::connect().await;
    let input = kafka.topic("dedupe-in", 1).await;
    let output = kafka.topic("dedupe-out", 1).await;
    let dlq = kafka.topic("dedupe-dlq", 1).await;
    let seen = changelog(&kafka, "dedupe-seen").await;
    let group = unique_name("dedupe");

    // One message published three times (an upstream retry), and one other message.
    let once = Outgoing::event(&input, &sagashop_testkit::sequenced("order-1", 1)).unwrap();
    let other = Outgoing::event(&input, &sagashop_testkit::sequenced("order-2", 2)).unwrap();
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    publisher
        .send_all(&[once.clone(), once.clone(), other, once.clone()])
        .await
        .unwrap();

    let member = |store: Store<i64>| {
        let output = output.clone();
        let router = Router::new().on(&input, move |env: Envelope<SagaStepChanged>| {
            let output = output.clone();
            async move {
                let reply = Envelope::caused_by(&env.metadata, env.key.clone(), env.payload);
                Ok(vec![Outgoing::event(&output, &reply).unwrap()])
            }
        });
        let config = ProcessorConfig {
            transactional_id: Some(unique_name("dedupe-member")),
            dedupe: Some(store),
            ..ProcessorConfig::new(&group, &dlq)
        };
        let publisher = Publisher::new(&kafka.config, "test").unwrap();
        Processor::new(&kafka.config, config, router, publisher, &Monitor::new()).unwrap()
    };

    let store = Store::open(&kafka.config, "seen", &seen, &Monitor::new())
        .await
        .unwrap();
    let first = member(store);
    let stats = first.stats();
    common::run_until_handled(first, 2, WAIT).await;
    assert_eq!(stats.snapshot().duplicates, 2);

    // A restart with the memory restored from Kafka; the duplicate arrives once more.
    publisher.send(&once).await.unwrap();
    let store = Store::open(&kafka.config, "seen", &seen, &Monitor::new())
        .await
        .unwrap();
    assert_eq!(store.len(), 2);
    let second = member(store);
    let stats = second.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(second.run(shutdown.clone()));
    sagashop_testkit::eventually("the late duplicate to be skipped", WAIT, || {
        let skipped = stats.snapshot().duplicates == 1;
        async move { skipped.then_some(()) }
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(stats.snapshot().handled, 0);

    let reader = kafka.consumer(&unique_name("dedupe-reader"));
    reader.subscribe(&[&output]).unwrap();
    let mut outputs = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), reader.recv()).await {
        outputs += 1;
    }
    assert_eq!(outputs, 2, "one output per distinct message");
}

type Running = (
    std::sync::Arc<sagashop_kit::Stats>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), sagashop_kit::Error>>,
);

fn run_at_least_once(kafka: &TestKafka, config: ProcessorConfig, router: Router) -> Running {
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    let processor =
        Processor::new(&kafka.config, config, router, publisher, &Monitor::new()).unwrap();
    let stats = processor.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(processor.run(shutdown.clone()));
    (stats, shutdown, task)
}

#[tokio::test]
async fn message_ids_past_the_retention_are_forgotten_in_memory_and_in_the_changelog() {
    let kafka = TestKafka::connect().await;
    let input = kafka.topic("prune-in", 1).await;
    let dlq = kafka.topic("prune-dlq", 1).await;
    let seen = changelog(&kafka, "prune-seen").await;
    let message = Outgoing::event(&input, &sagashop_testkit::sequenced("order-1", 1)).unwrap();
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    publisher.send(&message).await.unwrap();

    let store: Store<i64> = Store::open(&kafka.config, "seen", &seen, &Monitor::new())
        .await
        .unwrap();
    let router = Router::new().on(&input, |_: Envelope<SagaStepChanged>| async { Ok(vec![]) });
    let config = ProcessorConfig {
        dedupe: Some(store.clone()),
        dedupe_retention: Duration::from_millis(1500),
        ..ProcessorConfig::new(unique_name("prune"), &dlq)
    };
    let (stats, shutdown, task) = run_at_least_once(&kafka, config, router);
    sagashop_testkit::eventually("the message to be handled and remembered", WAIT, || {
        let remembered = stats.snapshot().handled == 1 && store.len() == 1;
        async move { remembered.then_some(()) }
    })
    .await;
    sagashop_testkit::eventually("its id to be pruned", WAIT, || {
        let pruned = store.is_empty();
        async move { pruned.then_some(()) }
    })
    .await;
    let restored: Store<i64> = Store::open(&kafka.config, "seen", &seen, &Monitor::new())
        .await
        .unwrap();
    assert!(restored.is_empty(), "the changelog still remembers the id");

    // Past the retention a late copy is new again: that is what the retention means.
    publisher.send(&message).await.unwrap();
    sagashop_testkit::eventually("the late copy to be handled", WAIT, || {
        let handled = stats.snapshot().handled == 2;
        async move { handled.then_some(()) }
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_record_whose_outputs_kafka_refuses_is_dead_lettered_and_not_remembered() {
    let kafka = TestKafka::connect().await;
    let input = kafka.topic("refused-in", 1).await;
    let output = kafka.topic("refused-out", 1).await;
    let dlq = kafka.topic("refused-dlq", 1).await;
    let seen = changelog(&kafka, "refused-seen").await;
    let message = Outgoing::event(&input, &sagashop_testkit::sequenced("order-1", 1)).unwrap();
    Publisher::new(&kafka.config, "test")
        .unwrap()
        .send(&message)
        .await
        .unwrap();

    let store: Store<i64> = Store::open(&kafka.config, "seen", &seen, &Monitor::new())
        .await
        .unwrap();
    // An output larger than any broker accepts.
    let router = Router::new().on(&input, move |_: Envelope<SagaStepChanged>| {
        let output = output.clone();
        async move {
            Ok(vec![Outgoing {
                topic: output,
                key: None,
                partition: None,
                payload: Some(vec![b'x'; 2 * 1024 * 1024]),
                headers: vec![],
            }])
        }
    });
    let config = ProcessorConfig {
        dedupe: Some(store.clone()),
        ..ProcessorConfig::new(unique_name("refused"), &dlq)
    };
    let (stats, shutdown, task) = run_at_least_once(&kafka, config, router);
    sagashop_testkit::eventually("the record to be dead-lettered", WAIT, || {
        let dead = stats.snapshot().dead_lettered == 1;
        async move { dead.then_some(()) }
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(store.is_empty(), "the refused record's id is remembered");
    let restored: Store<i64> = Store::open(&kafka.config, "seen", &seen, &Monitor::new())
        .await
        .unwrap();
    assert!(
        restored.is_empty(),
        "the changelog remembers the refused record's id"
    );
}

#[tokio::test]
async fn a_business_key_dedupes_different_messages_with_the_same_effect() {
    let kafka = TestKafka::connect().await;
    let input = kafka.topic("business-in", 1).await;
    let dlq = kafka.topic("business-dlq", 1).await;
    let seen = changelog(&kafka, "business-seen").await;
    // Two commands for the same saga step, re-sent with a new message id, and another saga's.
    let events = [("order-1", 1), ("order-1", 2), ("order-2", 1)];
    let records: Vec<_> = events
        .iter()
        .map(|(key, seq)| Outgoing::event(&input, &sagashop_testkit::sequenced(key, *seq)).unwrap())
        .collect();
    Publisher::new(&kafka.config, "test")
        .unwrap()
        .send_all(&records)
        .await
        .unwrap();

    let store: Store<i64> = Store::open(&kafka.config, "seen", &seen, &Monitor::new())
        .await
        .unwrap();
    let router = Router::new().on(&input, |_: Envelope<SagaStepChanged>| async { Ok(vec![]) });
    let config = ProcessorConfig {
        dedupe: Some(store.clone()),
        dedupe_key: DedupeKey::business(|record| {
            let step: SagaStepChanged = serde_json::from_slice(record.payload.as_deref()?).ok()?;
            Some(format!("{}/{}", step.saga_id, step.step))
        }),
        ..ProcessorConfig::new(unique_name("business"), &dlq)
    };
    let (stats, shutdown, task) = run_at_least_once(&kafka, config, router);
    sagashop_testkit::eventually("every record to be seen", WAIT, || {
        let s = stats.snapshot();
        async move { (s.handled + s.duplicates == 3).then_some(s) }
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let s = stats.snapshot();
    assert_eq!((s.handled, s.duplicates), (2, 1));
    let mut keys: Vec<_> = store.entries().into_iter().map(|(k, _)| k).collect();
    keys.sort();
    assert_eq!(keys, ["order-1/s", "order-2/s"]);
}

#[tokio::test]
async fn changelog_records_enqueued_out_of_order_still_end_with_the_latest_value() {
    let kafka = TestKafka::connect().await;
    let topic = changelog(&kafka, "sequenced").await;
    let store: Store<i64> = Store::open(&kafka.config, "stock", &topic, &Monitor::new())
        .await
        .unwrap();
    // Two handlers change one product's stock one after the other; their outputs reach the
    // producer in the opposite order.
    let first = store.put("sku-1", 9).unwrap();
    let second = store.put("sku-1", 8).unwrap();
    let stores: [std::sync::Arc<dyn sagashop_kit::store::Reload>; 1] =
        [std::sync::Arc::new(store.clone())];
    Publisher::new(&kafka.config, "test")
        .unwrap()
        .send_all_sequenced(&[second, first], &stores)
        .await
        .unwrap();
    let restored: Store<i64> = Store::open(&kafka.config, "stock", &topic, &Monitor::new())
        .await
        .unwrap();
    assert_eq!(restored.get("sku-1"), Some(8));
}

/// In a fresh install the services start while the operator is still making their topics: a
/// global store waits for its topic (not ready meanwhile) instead of failing the process.
#[tokio::test]
async fn a_store_waits_for_a_topic_that_is_made_after_it_starts() {
    let kafka = TestKafka::connect().await;
    let name = unique_name("late-store");
    let monitor = Monitor::new();
    let opening = tokio::spawn({
        let (config, name, monitor) = (kafka.config.clone(), name.clone(), monitor.clone());
        async move { Store::<u32>::open(&config, "late", &name, &monitor).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !opening.is_finished(),
        "the store gave up on a missing topic at once"
    );
    assert!(
        !monitor.not_ready().is_empty(),
        "a store waiting for its topic reports ready"
    );
    kafka
        .create(TopicSpec::new(&name, 1).with_config("cleanup.policy", "compact"))
        .await;
    let store = tokio::time::timeout(WAIT, opening)
        .await
        .expect("the store did not open once its topic existed")
        .unwrap()
        .unwrap();
    assert!(store.is_empty());
    assert!(monitor.not_ready().is_empty(), "an opened store is ready");
}
