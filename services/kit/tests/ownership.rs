//! Owned state stores against the real broker: several members of one exactly-once group each
//! hold the state of their own partitions only, restore it when partitions move to them, and
//! keep it exact while members join and leave (Kafka Streams' task model).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::time::Duration;

use sagashop_contracts::Envelope;
use sagashop_contracts::events::SagaStepChanged;
use sagashop_kit::admin::TopicSpec;
use sagashop_kit::{
    HandlerError, Monitor, Processor, ProcessorConfig, Publisher, Router, Stats, Store,
};
use sagashop_testkit::{TestKafka, eventually, unique_name};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(120);
const PARTITIONS: i32 = 4;

struct Member {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), sagashop_kit::Error>>,
    store: Store<u32>,
    stats: std::sync::Arc<Stats>,
}

/// A member counting its inputs in an owned store, under the key `state_key` gives each
/// input's key.
fn member(
    kafka: &TestKafka,
    input: &str,
    changelog: &str,
    group: &str,
    dlq: &str,
    state_key: fn(&str) -> String,
) -> Member {
    let monitor = Monitor::new();
    let store: Store<u32> = Store::owned(&kafka.config, "counts", changelog, &monitor);
    let counts = store.clone();
    let router = Router::new().on(input, move |env: Envelope<SagaStepChanged>| {
        let counts = counts.clone();
        async move {
            let key = state_key(&env.key);
            let count = counts.get(&key).unwrap_or(0) + 1;
            let write = counts
                .put(&key, count)
                .map_err(|e| HandlerError::Permanent(e.to_string()))?;
            Ok(vec![write])
        }
    });
    let config = ProcessorConfig {
        transactional_id: Some(unique_name("owner")),
        batch_size: 20,
        ..ProcessorConfig::new(group, dlq)
    };
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    let processor = Processor::new(&kafka.config, config, router, publisher, &monitor)
        .unwrap()
        .reloads(store.clone());
    let stats = processor.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(processor.run(shutdown.clone()));
    Member {
        shutdown,
        task,
        store,
        stats,
    }
}

async fn changelog(kafka: &TestKafka) -> String {
    let name = unique_name("owned-counts");
    kafka
        .create(TopicSpec::new(&name, PARTITIONS).with_config("cleanup.policy", "compact"))
        .await;
    name
}

/// What every member's store holds, added up per key, and how many members hold each key.
fn held(members: &[&Member]) -> (Vec<(String, u32)>, usize) {
    let mut all: Vec<(String, u32)> = members.iter().flat_map(|m| m.store.entries()).collect();
    let copies = all.len();
    all.sort();
    all.dedup_by(|a, b| a.0 == b.0);
    (all, copies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owned_state_stays_exact_and_single_owned_while_members_join_and_leave() {
    let kafka = TestKafka::connect().await;
    let input = kafka.topic("owned-in", PARTITIONS).await;
    let dlq = kafka.topic("owned-dlq", 1).await;
    let changelog = changelog(&kafka).await;
    let group = unique_name("owned");
    const KEYS: u32 = 40;

    let a = member(&kafka, &input, &changelog, &group, &dlq, str::to_owned);
    common::publish_sequenced(&kafka, &input, 400, KEYS).await;
    eventually("the first member counted 400 inputs", WAIT, || {
        let n = a.stats.snapshot().handled;
        async move { (n >= 400).then_some(()) }
    })
    .await;
    assert_eq!(a.store.partitions(), vec![0, 1, 2, 3], "alone, it owns all");

    // A second member joins: the partitions split, each member restores exactly its own.
    let b = member(&kafka, &input, &changelog, &group, &dlq, str::to_owned);
    eventually("the partitions split between the two members", WAIT, || {
        let (pa, pb) = (a.store.partitions(), b.store.partitions());
        async move {
            (pa.len() == 2 && pb.len() == 2 && pa.iter().all(|p| !pb.contains(p))).then_some(())
        }
    })
    .await;
    let (counts, copies) = held(&[&a, &b]);
    assert_eq!(
        copies, KEYS as usize,
        "every key is held by one member only"
    );
    assert!(counts.iter().all(|(_, n)| *n == 10), "{counts:?}");

    // Both count more; then the first leaves and the second takes over its partitions.
    common::publish_sequenced(&kafka, &input, 400, KEYS).await;
    eventually("800 inputs counted by the two", WAIT, || {
        let n = a.stats.snapshot().handled + b.stats.snapshot().handled;
        async move { (n >= 800).then_some(()) }
    })
    .await;
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
    eventually("the remaining member owns every partition", WAIT, || {
        let p = b.store.partitions();
        async move { (p.len() == PARTITIONS as usize).then_some(()) }
    })
    .await;
    let (counts, copies) = held(&[&b]);
    assert_eq!(copies, KEYS as usize);
    let expected: Vec<(String, u32)> = {
        let mut e: Vec<_> = (0..KEYS).map(|k| (format!("order-{k}"), 20)).collect();
        e.sort();
        e
    };
    assert_eq!(counts, expected, "each key counted each of its inputs once");
    b.shutdown.cancel();
    b.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_handler_that_writes_state_of_another_partition_is_refused() {
    let kafka = TestKafka::connect().await;
    let input = kafka.topic("misplaced-in", PARTITIONS).await;
    let dlq = kafka.topic("misplaced-dlq", 1).await;
    let changelog = changelog(&kafka).await;
    // Every input adds to one shared key: state keyed unlike the input.
    let member = member(
        &kafka,
        &input,
        &changelog,
        &unique_name("misplaced"),
        &dlq,
        |_| "all".to_owned(),
    );
    let (store, stats) = (&member.store, &member.stats);
    common::publish_sequenced(&kafka, &input, 40, 40).await;
    eventually("every input handled or dead-lettered", WAIT, || {
        let s = stats.snapshot();
        async move { (s.handled + s.dead_lettered >= 40).then_some(()) }
    })
    .await;
    let s = stats.snapshot();
    assert!(
        s.dead_lettered > 0,
        "inputs of other partitions must not write the key: {s:?}"
    );
    // The key lives in one partition, written by that partition's inputs only.
    let copies = store.select(|k, _| (k == "all").then_some(()));
    assert_eq!(copies.len(), 1);
    assert_eq!(store.get("all"), Some(u32::try_from(s.handled).unwrap()));
    member.shutdown.cancel();
    member.task.await.unwrap().unwrap();
}
