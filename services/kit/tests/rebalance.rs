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
const KEYS: u32 = 60;

/// (member, key, sequence) in the order handled.
type Log = Arc<Mutex<Vec<(&'static str, String, u32)>>>;

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "sagashop_kit=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn member(
    name: &'static str,
    kafka: &TestKafka,
    topic: &str,
    group: &str,
    dlq: &str,
    log: &Log,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
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
    (shutdown, task)
}

fn handled_by(log: &Log, member: &str) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(by, _, _)| *by == member)
        .count()
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
    logs();
    let kafka = TestKafka::connect().await;
    let topic = kafka.topic("rebalance", 4).await;
    let dlq = kafka.topic("rebalance-dlq", 1).await;
    let group = unique_name("rebalance");
    // Every key's sequence continues from wave to wave.
    let wave = 240;
    let mut published = 2400;
    common::publish_sequence(&kafka, &topic, 0..published, KEYS).await;

    let log = Log::default();
    let (stop_a, a) = member("a", &kafka, &topic, &group, &dlq, &log);
    until_handled(&log, Some("a"), 100).await;
    // B joins: A gives up some partitions mid-stream. A may have finished the first records of
    // B's partitions by then: more arrive until B has worked some.
    let (stop_b, b) = member("b", &kafka, &topic, &group, &dlq, &log);
    let deadline = tokio::time::Instant::now() + WAIT;
    while handled_by(&log, "b") < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B handled nothing within {WAIT:?}"
        );
        if handled_by(&log, "a") + handled_by(&log, "b") + 2 * wave as usize > published as usize {
            common::publish_sequence(&kafka, &topic, published..published + wave, KEYS).await;
            published += wave;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Another wave gives A work on the partitions it kept.
    common::publish_sequence(&kafka, &topic, published..published + 2400, KEYS).await;
    published += 2400;
    let a_before = handled_by(&log, "a");
    until_handled(&log, Some("a"), a_before + 100).await;
    // A leaves with records of its own still running or queued: B takes everything.
    stop_a.cancel();
    tokio::time::timeout(WAIT, a).await.unwrap().unwrap();
    assert!(
        log.lock().unwrap().len() < published as usize,
        "everything was handled before A left"
    );
    let total = published;
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
    let mut seen = HashMap::new();
    let repeats: Vec<_> = log
        .iter()
        .enumerate()
        .filter_map(|(at, (member, key, seq))| {
            seen.insert((key.clone(), *seq), (at, *member))
                .map(|first| (key.clone(), *seq, first, (at, *member)))
        })
        .collect();
    assert_eq!(
        handled, total as usize,
        "records handled more than once (key, sequence, first (position, member), again): \
         {repeats:?}"
    );
    for (key, seqs) in &per_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order or repeated: {seqs:?}"
        );
    }
    assert_eq!(per_key.len(), KEYS as usize);
}
