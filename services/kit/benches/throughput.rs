//! Throughput of the event runtime on the real broker, beside raw rdkafka as the ceiling.
//!
//! `cargo bench -p sagashop-kit --bench throughput` with `KAFKA_BOOTSTRAP_SERVERS` set (or a
//! broker from `scripts/kafka up`). `BENCH_MESSAGES` (default 50000) sets the count per run.
//! Each message is an `OrderPlaced` envelope, keyed by one of 1,000 order ids, on a 4-partition
//! topic. Prints one table: messages per second for
//! - raw produce: rdkafka producer with the services' settings (idempotent, acks=all, lz4);
//! - raw consume: rdkafka consumer reading them back;
//! - at-least-once: the kit's processor, one output record per input (consume → handle → produce);
//! - exactly-once: the same in transactions of up to `BENCH_BATCH` (default 500) records.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark binary"
)]

use std::time::{Duration, Instant};

use sagashop_contracts::Envelope;
use sagashop_contracts::events::OrderPlaced;
use sagashop_kit::{
    KafkaConfig, Monitor, Outgoing, Processor, ProcessorConfig, Publisher, Router, Stats,
};
use sagashop_testkit::ceiling::{raw_consume, raw_produce, topic};
use sagashop_testkit::{TestKafka, unique_name};
use tokio_util::sync::CancellationToken;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn processor(kafka: &KafkaConfig, input: &str, n: usize, transactional: bool) -> f64 {
    let output = topic(kafka, "bench-out").await;
    let dlq = topic(kafka, "bench-dlq").await;
    let router = Router::new().on(input, move |env: Envelope<OrderPlaced>| {
        let output = output.clone();
        async move {
            let reply = Envelope::caused_by(&env.metadata, env.key.clone(), env.payload);
            Ok(vec![Outgoing::event(&output, &reply).unwrap()])
        }
    });
    let config = ProcessorConfig {
        transactional_id: transactional.then(|| unique_name("bench-txn")),
        batch_size: env_number("BENCH_BATCH", 500),
        concurrency: 64,
        ..ProcessorConfig::new(unique_name("bench-group"), &dlq)
    };
    let monitor = Monitor::new();
    let publisher = Publisher::new(kafka, "bench").unwrap();
    let processor = Processor::new(kafka, config, router, publisher, &monitor).unwrap();
    let stats: std::sync::Arc<Stats> = processor.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(processor.run(shutdown.clone()));
    // The clock starts at the first handled record, so group join time is not counted.
    while stats.snapshot().handled == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    while (stats.snapshot().handled as usize) < n {
        assert!(
            Instant::now() < deadline,
            "processor stalled at {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    task.await.unwrap().unwrap();
    rate
}

#[tokio::main]
async fn main() {
    let n = env_number("BENCH_MESSAGES", 50_000);
    let kafka = TestKafka::connect().await.config;
    let input = topic(&kafka, "bench-in").await;

    let (produce, bytes) = raw_produce(&kafka, &input, n).await;
    let consume = raw_consume(&kafka, &input, n).await;
    let at_least_once = processor(&kafka, &input, n, false).await;
    let exactly_once = processor(&kafka, &input, n, true).await;

    println!(
        "sagashop-kit throughput: {n} OrderPlaced records of {bytes} bytes, 4 partitions, 1,000 keys"
    );
    println!("{:<44} {:>12} {:>10}", "what", "records/s", "of ceiling");
    for (what, rate, ceiling) in [
        (
            "raw rdkafka produce (acks=all, idempotent)",
            produce,
            produce,
        ),
        ("raw rdkafka consume", consume, consume),
        (
            "at-least-once processor (in -> 1 out)",
            at_least_once,
            produce.min(consume),
        ),
        (
            "exactly-once processor (in -> 1 out)",
            exactly_once,
            produce.min(consume),
        ),
    ] {
        println!("{what:<44} {rate:>12.0} {:>9.0}%", 100.0 * rate / ceiling);
    }
}
