//! Exactly-once mode against the real broker: a member killed in the middle of a transaction is
//! replaced, and every input leaves exactly one committed output.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use sagashop_contracts::Envelope;
use sagashop_contracts::events::SagaStepChanged;
use sagashop_kit::{Monitor, Outgoing, Processor, ProcessorConfig, Publisher, Router};
use sagashop_testkit::{TestKafka, sequenced, unique_name};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// A router that answers every input with one output carrying the same sequence number, and
/// hangs forever on `hang_at` (a member that dies mid-transaction).
fn echo(input: &str, output: &str, hang_at: Option<u32>) -> Router {
    let output = output.to_owned();
    Router::new().on(input, move |env: Envelope<SagaStepChanged>| {
        let output = output.clone();
        async move {
            if Some(env.payload.attempt) == hang_at {
                std::future::pending::<()>().await;
            }
            let reply = Envelope::caused_by(&env.metadata, env.key.clone(), env.payload);
            Ok(vec![Outgoing::event(&output, &reply).unwrap()])
        }
    })
}

/// Reads whatever `reader` has for `quiet` (stopping once nothing more arrives).
async fn read_available(reader: &StreamConsumer, quiet: Duration) -> Vec<u32> {
    let mut seqs = Vec::new();
    while let Ok(Ok(message)) = tokio::time::timeout(quiet, reader.recv()).await {
        let env = sagashop_kit::headers::decode::<SagaStepChanged, _>(&message).unwrap();
        seqs.push(env.payload.attempt);
    }
    seqs
}

#[tokio::test]
async fn a_member_killed_mid_transaction_is_replaced_without_loss_or_duplicate_output() {
    let kafka = TestKafka::connect().await;
    let input = kafka.topic("eos-in", 1).await;
    let output = kafka.topic("eos-out", 1).await;
    let dlq = kafka.topic("eos-dlq", 1).await;
    let group = unique_name("eos");
    let records: Vec<_> = (0..50)
        .map(|i| Outgoing::event(&input, &sequenced(&format!("order-{}", i % 5), i)).unwrap())
        .collect();
    Publisher::new(&kafka.config, "test")
        .unwrap()
        .send_all(&records)
        .await
        .unwrap();

    let config = ProcessorConfig {
        transactional_id: Some(unique_name("eos-member")),
        batch_size: 10,
        ..ProcessorConfig::new(&group, &dlq)
    };
    let member = |router: Router| {
        let monitor = Monitor::new();
        let publisher = Publisher::new(&kafka.config, "test").unwrap();
        Processor::new(&kafka.config, config.clone(), router, publisher, &monitor).unwrap()
    };

    let committed = kafka.consumer(&unique_name("eos-committed"));
    committed.subscribe(&[&output]).unwrap();
    let mut raw_config = kafka.config.consumer("test", &unique_name("eos-raw"));
    raw_config.set("isolation.level", "read_uncommitted");
    let raw: StreamConsumer = raw_config.create().unwrap();
    raw.subscribe(&[&output]).unwrap();

    // The first member commits some batches, then hangs on record 30 with a transaction open
    // that already holds outputs of other keys.
    let first = tokio::spawn(member(echo(&input, &output, Some(30))).run(CancellationToken::new()));
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut seen_committed, mut seen_raw) = (Vec::new(), Vec::new());
    while seen_raw.len() <= seen_committed.len() || seen_committed.len() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first member never got stuck mid-transaction"
        );
        seen_committed.extend(read_available(&committed, Duration::from_millis(300)).await);
        seen_raw.extend(read_available(&raw, Duration::from_millis(300)).await);
    }
    assert!(seen_committed.iter().all(|s| *s < 30), "{seen_committed:?}");

    // Kill it: no commit, no abort, no goodbye.
    first.abort();
    let _ = first.await;

    // Its replacement has the same transactional.id: the broker fences the zombie's open
    // transaction, and the batch is redone from the committed offset.
    let shutdown = CancellationToken::new();
    let second = tokio::spawn(member(echo(&input, &output, None)).run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen_committed.len() < 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 50 outputs committed",
            seen_committed.len()
        );
        seen_committed.extend(read_available(&committed, Duration::from_millis(300)).await);
    }
    // Anything extra would show up now.
    seen_committed.extend(read_available(&committed, Duration::from_secs(2)).await);
    seen_raw.extend(read_available(&raw, Duration::from_secs(1)).await);

    let mut sorted = seen_committed.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..50).collect::<Vec<_>>(),
        "each input exactly once"
    );
    assert!(
        seen_raw.len() > 50,
        "the killed member's aborted outputs should be in the log ({} raw records)",
        seen_raw.len()
    );
    shutdown.cancel();
    tokio::time::timeout(WAIT, second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
