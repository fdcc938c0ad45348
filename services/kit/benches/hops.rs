//! The floor of an exactly-once hop on the real broker: one record at a time through a chain of
//! the kit's exactly-once processors, nothing else running.
//!
//! `cargo bench -p sagashop-kit --bench hops` with `KAFKA_BOOTSTRAP_SERVERS` set (or a broker
//! from `scripts/kafka up`). `BENCH_HOPS` (default `1,4,8`) sets the chain lengths,
//! `BENCH_RECORDS` (default 200) how many records go through each chain, one after another.
//!
//! Each hop is what a saga step costs a service: consume (`read_committed`), handle, produce
//! into a transaction, add the input offsets, commit. A record is produced (idempotent, not
//! transactional) into the first topic and timed until a `read_committed` reader sees it come
//! out of the last. With a chain of 8, that is the eight transactions an order's path takes
//! today (the edge's and seven hops). Where the broker runs on this machine (`scripts/kafka`),
//! its CPU per transaction is printed too: on two cores the broker's work per transaction,
//! not the client's, is what an order's outcome waits on under load.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark binary"
)]

use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use sagashop_contracts::Envelope;
use sagashop_contracts::events::OrderPlaced;
use sagashop_kit::{KafkaConfig, Monitor, Outgoing, Processor, ProcessorConfig, Publisher, Router};
use sagashop_testkit::ceiling::{order, topic};
use sagashop_testkit::cpu::{cpu_time, local_broker};
use sagashop_testkit::{TestKafka, unique_name};
use tokio_util::sync::CancellationToken;

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// CPU time the local broker has used, if it runs on this machine.
fn broker_cpu() -> Option<Duration> {
    local_broker().and_then(cpu_time)
}

/// One exactly-once processor copying every record from `input` to `output`.
fn hop(kafka: &KafkaConfig, input: &str, output: &str, dlq: &str) -> Processor {
    let output = output.to_owned();
    let router = Router::new().on(input, move |env: Envelope<OrderPlaced>| {
        let output = output.clone();
        async move {
            let next = Envelope::caused_by(&env.metadata, env.key.clone(), env.payload);
            Ok(vec![Outgoing::event(&output, &next).unwrap()])
        }
    });
    let config =
        ProcessorConfig::exactly_once(unique_name("bench-hop"), dlq, unique_name("bench-hop-txn"));
    let publisher = Publisher::new(kafka, "bench").unwrap();
    Processor::new(kafka, config, router, publisher, &Monitor::new()).unwrap()
}

struct Chain {
    hops: usize,
    latencies: Vec<Duration>,
    broker_cpu: Option<Duration>,
}

async fn chain(kafka: &KafkaConfig, hops: usize, records: usize) -> Chain {
    let dlq = topic(kafka, "bench-hop-dlq").await;
    let mut topics = Vec::with_capacity(hops + 1);
    for _ in 0..=hops {
        topics.push(topic(kafka, "bench-hop").await);
    }
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for pair in topics.windows(2) {
        let processor = hop(kafka, &pair[0], &pair[1], &dlq);
        tasks.push(tokio::spawn(processor.run(shutdown.clone())));
    }
    let reader: StreamConsumer = kafka
        .consumer("bench", &unique_name("bench-hop-reader"))
        .create()
        .unwrap();
    reader.subscribe(&[topics[hops].as_str()]).unwrap();
    let producer = Publisher::new(kafka, "bench").unwrap();
    let send = |i: usize| {
        let mut record = order(i);
        record.topic.clone_from(&topics[0]);
        let producer = producer.clone();
        async move {
            producer.send(&record).await.unwrap();
        }
    };
    // Until a first record comes out at the end, every group has joined and every producer
    // has its transactional id registered: none of that is counted.
    send(records).await;
    tokio::time::timeout(Duration::from_secs(120), reader.recv())
        .await
        .expect("the chain did not start within 2 minutes")
        .unwrap();
    // The broker's own idle work (KRaft, the group coordinator's timers) over a quiet second,
    // to take away from what the chain costs it.
    let idle_from = (broker_cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = idle_from
        .0
        .zip(broker_cpu())
        .map(|(a, b)| (b - a).as_secs_f64() / idle_from.1.elapsed().as_secs_f64());
    let cpu_before = (broker_cpu(), Instant::now());
    let mut latencies = Vec::with_capacity(records);
    for i in 0..records {
        let started = Instant::now();
        send(i).await;
        let message = tokio::time::timeout(Duration::from_secs(30), reader.recv())
            .await
            .expect("a record did not come through within 30 s")
            .unwrap();
        assert_eq!(message.topic(), topics[hops]);
        latencies.push(started.elapsed());
    }
    let elapsed = cpu_before.1.elapsed().as_secs_f64();
    let broker_cpu = cpu_before
        .0
        .zip(broker_cpu())
        .zip(idle)
        .map(|((a, b), idle)| {
            Duration::from_secs_f64(((b - a).as_secs_f64() - idle * elapsed).max(0.0))
        });
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    Chain {
        hops,
        latencies,
        broker_cpu,
    }
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let chains = env_list("BENCH_HOPS", "1,4,8");
    let records = env_list("BENCH_RECORDS", "200")
        .first()
        .copied()
        .unwrap_or(200);
    let kafka = TestKafka::connect().await.config;
    println!(
        "sagashop-kit hops: {records} records one at a time through chains of exactly-once hops"
    );
    println!(
        "{:>5} {:>10} {:>10} {:>10} {:>14} {:>22}",
        "hops", "p50 ms", "p99 ms", "max ms", "p50 per hop", "broker CPU per hop"
    );
    for hops in chains {
        let mut c = chain(&kafka, hops, records).await;
        c.latencies.sort();
        let p50 = quantile(&c.latencies, 0.5);
        let cpu = c.broker_cpu.map_or("-".to_owned(), |cpu| {
            format!(
                "{:.2} ms",
                cpu.as_secs_f64() * 1000.0 / (records * c.hops) as f64
            )
        });
        println!(
            "{:>5} {:>10.1} {:>10.1} {:>10.1} {:>11.1} ms {:>22}",
            c.hops,
            p50,
            quantile(&c.latencies, 0.99),
            quantile(&c.latencies, 1.0),
            p50 / c.hops as f64,
            cpu
        );
    }
}
