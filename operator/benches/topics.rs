//! How long N `KafkaTopic` resources (1,000 by default) take from `kubectl apply` to all Ready,
//! and what it cost: API server requests (its own `apiserver_request_total`) and Kafka admin
//! requests (the operator's `sagashop_operator_kafka_requests_total`).
//!
//! Needs the real API server and broker (`scripts/kube up`, `scripts/kafka up`, or
//! `scripts/bench`). `BENCH_TOPICS` sets N, `BENCH_LINGER` the batching window (`20ms`;
//! `0ms` turns batching into "what is already queued"), `BENCH_CONCURRENCY` the reconciles
//! run at once (16, the operator's default).
//!
//! ```sh
//! cargo bench -p sagashop-operator --bench topics
//! ```

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark binary: a panic is the failure report, stdout the result, stderr progress"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{DeleteParams, ListParams};
use sagashop_operator::KafkaTopic;
use sagashop_testkit::{TestKafka, TestKube, unique_name};

/// The sum of the API server's `apiserver_request_total` counters.
async fn api_requests(kube: &TestKube) -> f64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = kube.client.request_text(request).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The operator's Kafka requests, by request, from its metrics text.
fn kafka_requests(metrics: &str) -> (u64, String) {
    let mut total = 0;
    let mut by = String::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("sagashop_operator_kafka_requests_total{request=\"")
            && let Some((request, count)) = rest.split_once("\"} ")
        {
            let n: u64 = count.trim().parse().unwrap_or(0);
            total += n;
            let _ = write!(by, "{request}={n} ");
        }
    }
    (total, by.trim().to_owned())
}

async fn ready(api: &Api<KafkaTopic>) -> usize {
    let Ok(list) = api.list(&ListParams::default()).await else {
        return 0;
    };
    list.items
        .iter()
        .filter(|t| {
            t.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .count()
}

/// `n` KafkaTopics named `t0`… for the topics `<run>.t0`…, as one manifest.
fn manifest(n: usize, run: &str) -> String {
    let mut manifest = String::new();
    for i in 0..n {
        let _ = write!(
            manifest,
            "---\napiVersion: sagashop.dev/v1alpha1\nkind: KafkaTopic\nmetadata:\n  name: t{i}\nspec:\n  topicName: {run}.t{i}\n  partitions: 1\n  deletionPolicy: Delete\n"
        );
    }
    manifest
}

/// Waits (at most 10 minutes, reporting every 5 s) until all `n` KafkaTopics are Ready.
async fn wait_ready(api: &Api<KafkaTopic>, n: usize, started: Instant) {
    let deadline = started + Duration::from_secs(600);
    let mut last_report = Instant::now();
    loop {
        let done = ready(api).await;
        if done == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {n} Ready after 10 minutes"
        );
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("bench: {done}/{n} Ready after {:.1?}", started.elapsed());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits (at most 5 minutes) until no KafkaTopic is left.
async fn wait_gone(api: &Api<KafkaTopic>) {
    let cleanup = Instant::now() + Duration::from_secs(300);
    while Instant::now() < cleanup
        && !api
            .list(&ListParams::default())
            .await
            .map(|l| l.items.is_empty())
            .unwrap_or(false)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_TOPICS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let linger = std::env::var("BENCH_LINGER")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(Duration::from_millis(20));
    let concurrency: u16 = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    // Warnings only: the figures are the output (the shared helper's debug logs would bury them).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .try_init();
    let (kube, kafka) = (TestKube::connect().await, TestKafka::connect().await);
    let op =
        common::operator_with(&kube, &kafka, Duration::from_secs(300), linger, concurrency).await;
    let run = unique_name("bench");
    let manifest = manifest(n, &run);
    let file = std::env::temp_dir().join(format!("{run}.yaml"));
    std::fs::write(&file, manifest).unwrap();

    let api_before = api_requests(&kube).await;
    let started = Instant::now();
    let path = file.to_str().unwrap();
    common::kubectl(
        &kube,
        &["apply", "--server-side", "-n", &op.namespace, "-f", path],
    );
    let apply_took = started.elapsed();
    wait_ready(&op.api, n, started).await;
    let all_ready = started.elapsed();
    let api_after = api_requests(&kube).await;
    let (kafka_total, kafka_by) = kafka_requests(&op.monitor.encode());

    println!("KafkaTopics: {n}, batch linger {linger:?}, concurrency {concurrency}");
    println!("  kubectl apply --server-side: {apply_took:.2?}");
    println!(
        "  apply to all Ready:          {all_ready:.2?} ({:.0} topics/s)",
        n as f64 / all_ready.as_secs_f64()
    );
    println!(
        "  API server requests:         {:.0} ({:.1} per topic, every client)",
        api_after - api_before,
        (api_after - api_before) / n as f64
    );
    println!(
        "  Kafka admin requests:        {kafka_total} ({:.2} per topic: {kafka_by})",
        kafka_total as f64 / n as f64
    );

    // Deleting the resources deletes their topics (deletionPolicy: Delete).
    op.api
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    wait_gone(&op.api).await;
    op.stop(&kube).await;
    let _ = std::fs::remove_file(file);
}
