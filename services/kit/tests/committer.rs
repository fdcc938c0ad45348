//! The committer against the real broker: what one caller commits becomes visible together,
//! many callers share transactions, and a caller whose records Kafka refuses leaves nothing any
//! `read_committed` reader sees, not even the records Kafka did take.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::time::Duration;

use sagashop_kit::reader::read_settled;
use sagashop_kit::{CommitError, Committer, CommitterConfig, KafkaConfig, Monitor, Outgoing, Task};
use sagashop_testkit::{TestKafka, unique_name};
use tokio_util::sync::CancellationToken;

fn record(topic: &str, key: &str) -> Outgoing {
    Outgoing {
        topic: topic.to_owned(),
        key: Some(key.as_bytes().to_vec()),
        partition: None,
        payload: Some(format!("{{\"k\":\"{key}\"}}").into_bytes()),
        headers: vec![],
    }
}

async fn keys(kafka: &TestKafka, topic: &str) -> Vec<String> {
    let mut keys: Vec<String> = read_settled(&kafka.config, "test", topic, Duration::from_secs(60))
        .await
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8(r.key.unwrap()).unwrap())
        .collect();
    keys.sort();
    keys
}

/// A committer with a new transactional id under role `test`, its task, its metrics and the
/// token that stops it.
async fn start(kafka: &KafkaConfig) -> (Committer, Task, Monitor, CancellationToken) {
    let shutdown = CancellationToken::new();
    let monitor = Monitor::new();
    let (committer, task) = Committer::start(
        kafka,
        "test",
        CommitterConfig::new(unique_name("committer")),
        &monitor,
        shutdown.clone(),
    )
    .await
    .unwrap();
    (committer, task, monitor, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_each_get_their_records_committed_once() {
    let kafka = TestKafka::connect().await;
    let (orders, keys_topic) = (
        kafka.topic("committer-orders", 3).await,
        kafka.topic("committer-keys", 1).await,
    );
    let (committer, task, monitor, shutdown) = start(&kafka.config).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (committer, orders, keys_topic) =
            (committer.clone(), orders.clone(), keys_topic.clone());
        calls.spawn(async move {
            let id = format!("{i:03}");
            committer
                .commit(vec![record(&orders, &id), record(&keys_topic, &id)])
                .await
        });
    }
    while let Some(answer) = calls.join_next().await {
        answer.unwrap().unwrap();
    }
    // Each committed record's latency is reported under its topic.
    let metrics = monitor.encode();
    let count = metrics
        .lines()
        .find(|l| {
            l.starts_with("sagashop_publish_duration_seconds_count")
                && l.contains(&format!("topic=\"{orders}\""))
        })
        .unwrap_or_else(|| panic!("no publish latency for {orders}:\n{metrics}"));
    assert!(count.ends_with(" 200"), "{count}");
    let expected: Vec<String> = (0..200).map(|i| format!("{i:03}")).collect();
    assert_eq!(keys(&kafka, &orders).await, expected);
    assert_eq!(keys(&kafka, &keys_topic).await, expected);
    shutdown.cancel();
    task.stopped().await.unwrap();
    // After shutdown nothing is taken, and the caller hears so.
    let late = committer.commit(vec![record(&orders, "late")]).await;
    assert!(matches!(late, Err(CommitError::Unavailable(_))), "{late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_takes_its_whole_transaction_with_it() {
    let kafka = TestKafka::connect().await;
    let orders = kafka.topic("committer-refused", 1).await;
    let mut config = kafka.config.clone();
    config.delivery_timeout = Duration::from_secs(3);
    let (committer, task, monitor, shutdown) = start(&config).await;
    // The broker takes the first record; the second names a topic that does not exist (and is
    // never created automatically), so the transaction cannot commit.
    let missing = unique_name("no-such-topic");
    let answer = committer
        .commit(vec![record(&orders, "taken"), record(&missing, "refused")])
        .await;
    assert!(
        matches!(
            answer,
            Err(CommitError::Rejected(_) | CommitError::Unavailable(_))
        ),
        "{answer:?}"
    );
    assert!(
        monitor
            .encode()
            .lines()
            .any(|l| l.starts_with("sagashop_transaction_aborts_total{group=\"test\"} 1")),
        "the aborted transaction was not counted"
    );
    // The committer goes on: the next caller's records commit, and only those are visible.
    committer
        .commit(vec![record(&orders, "next")])
        .await
        .unwrap();
    assert_eq!(keys(&kafka, &orders).await, vec!["next".to_owned()]);
    shutdown.cancel();
    task.stopped().await.unwrap();
}
