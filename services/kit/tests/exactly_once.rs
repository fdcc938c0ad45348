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
use sagashop_testkit::{OwnBroker, TestKafka, sequenced, unique_name};
use tokio_util::sync::CancellationToken;

mod common;

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

/// Reads into `seen` until it holds `n` records, then for two quiet seconds more, so that
/// duplicates beyond `n` would show.
async fn read_at_least(reader: &StreamConsumer, n: usize, seen: &mut Vec<u32>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} outputs committed",
            seen.len()
        );
        seen.extend(read_available(reader, Duration::from_millis(300)).await);
    }
    seen.extend(read_available(reader, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn a_member_killed_mid_transaction_is_replaced_without_loss_or_duplicate_output() {
    let kafka = TestKafka::connect().await;
    let input = kafka.topic("eos-in", 1).await;
    let output = kafka.topic("eos-out", 1).await;
    let dlq = kafka.topic("eos-dlq", 1).await;
    let group = unique_name("eos");
    common::publish_sequenced(&kafka, &input, 50, 5).await;

    let config = ProcessorConfig {
        transactional_id: Some(unique_name("eos-member")),
        batch_size: 10,
        ..ProcessorConfig::new(&group, &dlq)
    };
    let member = |router: Router| {
        let monitor = Monitor::new();
        let publisher = Publisher::new(&kafka.config, "test").unwrap();
        let processor =
            Processor::new(&kafka.config, config.clone(), router, publisher, &monitor).unwrap();
        (processor, monitor)
    };

    let committed = kafka.consumer(&unique_name("eos-committed"));
    committed.subscribe(&[&output]).unwrap();
    let mut raw_config = kafka.config.consumer("test", &unique_name("eos-raw"));
    raw_config.set("isolation.level", "read_uncommitted");
    let raw: StreamConsumer = raw_config.create().unwrap();
    raw.subscribe(&[&output]).unwrap();

    // The first member commits some batches, then hangs on record 30 with a transaction open
    // that already holds outputs of other keys.
    let first = tokio::spawn(
        member(echo(&input, &output, Some(30)))
            .0
            .run(CancellationToken::new()),
    );
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
    let (second, second_monitor) = member(echo(&input, &output, None));
    let second = tokio::spawn(second.run(shutdown.clone()));
    read_at_least(&committed, 50, &mut seen_committed).await;
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
    // The replacement's committed batches, phase by phase: the budget of a hop.
    let metrics = second_monitor.encode();
    for phase in ["gather", "handle", "offsets", "commit"] {
        let count = format!(
            "sagashop_transaction_phase_seconds_count{{group=\"{group}\",phase=\"{phase}\"}} "
        );
        let batches: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&count))
            .unwrap_or_else(|| panic!("no {phase} timings in:\n{metrics}"))
            .parse()
            .unwrap();
        assert!(batches >= 1, "{phase}: {batches}");
    }
    shutdown.cancel();
    tokio::time::timeout(WAIT, second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn two_members_split_the_partitions_and_one_leaving_hands_over_without_loss_or_duplicates() {
    let kafka = TestKafka::connect().await;
    let input = kafka.topic("split-in", 4).await;
    let output = kafka.topic("split-out", 1).await;
    let dlq = kafka.topic("split-dlq", 1).await;
    let group = unique_name("split");

    let member = |name: &str| {
        let output = output.clone();
        // A little work per record, so that the stream is still flowing when a member leaves.
        let router = Router::new().on(&input, move |env: Envelope<SagaStepChanged>| {
            let output = output.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let reply = Envelope::caused_by(&env.metadata, env.key.clone(), env.payload);
                Ok(vec![Outgoing::event(&output, &reply).unwrap()])
            }
        });
        let config = ProcessorConfig {
            transactional_id: Some(unique_name(name)),
            batch_size: 20,
            concurrency: 4,
            ..ProcessorConfig::new(&group, &dlq)
        };
        let monitor = Monitor::new();
        let publisher = Publisher::new(&kafka.config, "test").unwrap();
        let processor = Processor::new(&kafka.config, config, router, publisher, &monitor).unwrap();
        (processor, monitor)
    };
    let ((a, a_monitor), (b, b_monitor)) = (member("member-a"), member("member-b"));
    let (a_stats, b_stats) = (a.stats(), b.stats());
    let (a_stop, b_stop) = (CancellationToken::new(), CancellationToken::new());
    let a_task = tokio::spawn(a.run(a_stop.clone()));
    let b_task = tokio::spawn(b.run(b_stop.clone()));

    // Both must hold partitions before work arrives, or the first to join takes it all.
    sagashop_testkit::eventually("both members to be assigned partitions", WAIT, || {
        let both = a_monitor.not_ready().is_empty() && b_monitor.not_ready().is_empty();
        async move { both.then_some(()) }
    })
    .await;

    let records: Vec<_> = (0..400)
        .map(|i| Outgoing::event(&input, &sequenced(&format!("order-{}", i % 40), i)).unwrap())
        .collect();
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    publisher.send_all(&records[..200]).await.unwrap();

    let deadline = tokio::time::Instant::now() + WAIT;
    while a_stats.snapshot().handled == 0 || b_stats.snapshot().handled == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the members never both got work: a {:?}, b {:?}",
            a_stats.snapshot(),
            b_stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A leaves while records keep arriving; B takes its partitions over.
    a_stop.cancel();
    publisher.send_all(&records[200..]).await.unwrap();
    tokio::time::timeout(WAIT, a_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let committed = kafka.consumer(&unique_name("split-committed"));
    committed.subscribe(&[&output]).unwrap();
    let mut seen = Vec::new();
    read_at_least(&committed, 400, &mut seen).await;
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..400).collect::<Vec<_>>(),
        "each input exactly once"
    );
    let (a_done, b_done) = (a_stats.snapshot().handled, b_stats.snapshot().handled);
    assert!(
        a_done > 0 && b_done > 0 && a_done + b_done >= 400,
        "a {a_done}, b {b_done}"
    );

    b_stop.cancel();
    tokio::time::timeout(WAIT, b_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Kafka away for longer than a transaction may stay open (a node upgrade, a long blip): the
/// batch open when it went fails, and while the broker is gone the member can neither abort,
/// nor start a new transactional producer, nor rewind to its committed offsets. It keeps
/// trying, and once the broker is back every input leaves exactly one committed output,
/// without the member having stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_kafka_longer_than_a_transaction_carries_on_when_it_is_back() {
    let broker = OwnBroker::up();
    let kafka = broker.kafka.clone();
    let input = kafka.topic("away-in", 1).await;
    let output = kafka.topic("away-out", 1).await;
    let dlq = kafka.topic("away-dlq", 1).await;
    common::publish_sequenced(&kafka, &input, 40, 4).await;
    // Slow handling: the broker goes while a batch's transaction is open.
    let router = {
        let output = output.clone();
        Router::new().on(&input, move |env: Envelope<SagaStepChanged>| {
            let output = output.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let reply = Envelope::caused_by(&env.metadata, env.key.clone(), env.payload);
                Ok(vec![Outgoing::event(&output, &reply).unwrap()])
            }
        })
    };
    let config = ProcessorConfig {
        transactional_id: Some(unique_name("away-member")),
        batch_size: 4,
        ..ProcessorConfig::new(unique_name("away"), &dlq)
    };
    let monitor = Monitor::new();
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    let processor = Processor::new(&kafka.config, config, router, publisher, &monitor).unwrap();
    let shutdown = CancellationToken::new();
    let member = tokio::spawn(processor.run(shutdown.clone()));

    let committed = kafka.consumer(&unique_name("away-committed"));
    committed.subscribe(&[&output]).unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 8 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {seen:?} handled"
        );
        seen.extend(read_available(&committed, Duration::from_millis(100)).await);
    }
    assert!(
        seen.len() < 40,
        "all handled before the broker went: {seen:?}"
    );
    broker.stop(true);
    // Six transaction timeouts: long enough that aborting, a new producer's start and the
    // rewind all meet the outage (at 25 s the old loop still got through).
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        !member.is_finished(),
        "the member stopped while Kafka was away: {:?}",
        member.await
    );
    broker.start();
    read_at_least(&committed, 40, &mut seen).await;
    assert!(
        !member.is_finished(),
        "the member stopped: {:?}",
        member.await
    );
    // What the topic holds, read afresh: the reader above may have been handed records again
    // after the broker's restart (its own offsets were not committed), the topic may not.
    let fresh = kafka.consumer(&unique_name("away-afresh"));
    fresh.subscribe(&[&output]).unwrap();
    let mut sorted = Vec::new();
    read_at_least(&fresh, 40, &mut sorted).await;
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..40).collect::<Vec<_>>(),
        "each input exactly once"
    );
    shutdown.cancel();
    tokio::time::timeout(WAIT, member)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
