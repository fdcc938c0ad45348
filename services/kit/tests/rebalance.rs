//! At-least-once rebalances against the real broker: members joining and leaving hand
//! partitions over after draining and committing them, so nothing is lost, nothing is handled
//! twice and every key stays in order.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sagashop_contracts::Envelope;
use sagashop_contracts::events::SagaStepChanged;
use sagashop_kit::{Monitor, Processor, ProcessorConfig, Publisher, Router};
use sagashop_testkit::{TestKafka, eventually, unique_name};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(90);

/// (member, key, sequence) in the order handled.
type Log = Arc<Mutex<Vec<(&'static str, String, u32)>>>;

fn member(
    name: &'static str,
    kafka: &TestKafka,
    topic: &str,
    group: &str,
    dlq: &str,
    log: &Log,
) -> (CancellationToken, tokio::task::JoinHandle<()>, Monitor) {
    let log = log.clone();
    let router = Router::new().on(topic, move |env: Envelope<SagaStepChanged>| {
        let log = log.clone();
        async move {
            // Slow enough that records are running whenever the group rebalances.
            tokio::time::sleep(Duration::from_millis(10)).await;
            log.lock()
                .unwrap()
                .push((name, env.key, env.payload.attempt));
            Ok(vec![])
        }
    });
    let monitor = Monitor::new();
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    let config = ProcessorConfig {
        concurrency: 4,
        ..ProcessorConfig::new(group, dlq)
    };
    let processor = Processor::new(&kafka.config, config, router, publisher, &monitor).unwrap();
    let shutdown = CancellationToken::new();
    let run = processor.run(shutdown.clone());
    let task = tokio::spawn(async move { run.await.unwrap() });
    (shutdown, task, monitor)
}

async fn until_handled(log: &Log, by: Option<&str>, n: usize) {
    eventually(&format!("{n} records handled by {by:?}"), WAIT, || {
        let handled = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(member, _, _)| by.is_none_or(|b| b == *member))
            .count();
        async move { (handled >= n).then_some(()) }
    })
    .await;
}

// Multi-threaded: a revocation waits for running records on the polling thread while they
// finish on the others, as in a service.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_joining_and_leaving_hand_over_partitions_without_loss_or_repeats() {
    let kafka = TestKafka::connect().await;
    let topic = kafka.topic("rebalance", 4).await;
    let dlq = kafka.topic("rebalance-dlq", 1).await;
    let group = unique_name("rebalance");
    let total = 2400;
    common::publish_sequenced(&kafka, &topic, total, 60).await;

    let log = Log::default();
    let (stop_a, a, _) = member("a", &kafka, &topic, &group, &dlq, &log);
    until_handled(&log, Some("a"), 100).await;
    // B joins: A gives up some partitions mid-stream.
    let (stop_b, b, b_monitor) = member("b", &kafka, &topic, &group, &dlq, &log);
    eventually("B to be assigned partitions", WAIT, || {
        let ready = b_monitor.not_ready().is_empty();
        async move { ready.then_some(()) }
    })
    .await;
    let a_before = log.lock().unwrap().len();
    assert!(a_before < total as usize, "A finished before B joined");
    until_handled(&log, None, a_before + 200).await;
    // A leaves: B takes everything.
    stop_a.cancel();
    tokio::time::timeout(WAIT, a).await.unwrap().unwrap();
    until_handled(&log, None, total as usize).await;
    // Anything handled twice would show up by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_b.cancel();
    tokio::time::timeout(WAIT, b).await.unwrap().unwrap();

    let log = log.lock().unwrap().clone();
    let mut per_key: HashMap<String, Vec<u32>> = HashMap::new();
    for (_, key, seq) in &log {
        per_key.entry(key.clone()).or_default().push(*seq);
    }
    let handled: usize = per_key.values().map(Vec::len).sum();
    assert_eq!(handled, total as usize, "records handled more than once");
    for (key, seqs) in &per_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order or repeated: {seqs:?}"
        );
    }
    assert_eq!(per_key.len(), 60);
}
