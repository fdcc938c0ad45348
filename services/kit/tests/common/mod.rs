//! Helpers the kit's integration tests share (each test binary uses some of them).

#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::time::Duration;

use sagashop_kit::{Outgoing, Processor, Publisher};
use sagashop_testkit::{TestKafka, eventually, sequenced};
use tokio_util::sync::CancellationToken;

/// Publishes `n` sequenced events (sequence 0..n) round-robin over `keys` keys `order-<k>`.
pub(crate) async fn publish_sequenced(kafka: &TestKafka, topic: &str, n: u32, keys: u32) {
    publish_sequence(kafka, topic, 0..n, keys).await;
}

/// Publishes the sequenced events `range` round-robin over `keys` keys `order-<k>` (event `i`
/// goes to key `i % keys`), so a later range continues every key's sequence.
pub(crate) async fn publish_sequence(
    kafka: &TestKafka,
    topic: &str,
    range: std::ops::Range<u32>,
    keys: u32,
) {
    let records: Vec<_> = range
        .map(|i| Outgoing::event(topic, &sequenced(&format!("order-{}", i % keys), i)).unwrap())
        .collect();
    Publisher::new(&kafka.config, "test")
        .unwrap()
        .send_all(&records)
        .await
        .unwrap();
}

/// Runs `processor` until it has handled `n` records, then shuts it down cleanly.
pub(crate) async fn run_until_handled(processor: Processor, n: u64, wait: Duration) {
    let stats = processor.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(processor.run(shutdown.clone()));
    eventually(&format!("{n} records to be handled"), wait, || {
        let done = stats.snapshot().handled == n;
        async move { done.then_some(()) }
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(wait, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
