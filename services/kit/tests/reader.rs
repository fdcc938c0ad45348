//! Reading a topic to its end against the real broker, with a transaction left open: the plain
//! read stops short of it, the settled read waits for it (and says which partition it waited on).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::time::Duration;

use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use sagashop_kit::reader::{read_settled, read_to_end};
use sagashop_testkit::{TestKafka, unique_name};

const WAIT: Duration = Duration::from_secs(30);

fn keys(records: &[sagashop_kit::Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_read_waits_for_the_open_transaction_that_a_plain_read_stops_short_of() {
    let kafka = TestKafka::connect().await;
    let topic = kafka.topic("reader-settled", 2).await;
    let producer: ThreadedProducer<_> = kafka
        .config
        .transactional_producer("test", &unique_name("reader"))
        .create()
        .unwrap();
    producer.init_transactions(WAIT).unwrap();
    producer.begin_transaction().unwrap();
    producer
        .send(
            BaseRecord::to(&topic)
                .key("committed")
                .payload("1")
                .partition(0),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    producer.commit_transaction(WAIT).unwrap();
    producer.begin_transaction().unwrap();
    producer
        .send(BaseRecord::to(&topic).key("open").payload("2").partition(1))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(WAIT).unwrap();

    // The plain read returns at once with what is stable; the open record is not among it.
    let plain = read_to_end(&kafka.config, "test", &topic, WAIT)
        .await
        .unwrap();
    assert_eq!(keys(&plain), vec!["committed"]);

    // The settled read will not return while the transaction is open, and says where it waited.
    let refused = read_settled(&kafka.config, "test", &topic, Duration::from_secs(2))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("partition 1 still has a transaction open"),
        "{refused}"
    );

    // Started before the commit, it returns both records once the transaction commits.
    let settled = tokio::spawn({
        let config = kafka.config.clone();
        let topic = topic.clone();
        async move { read_settled(&config, "test", &topic, WAIT).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!settled.is_finished(), "returned with a transaction open");
    tokio::task::spawn_blocking(move || producer.commit_transaction(WAIT))
        .await
        .unwrap()
        .unwrap();
    let settled = settled.await.unwrap().unwrap();
    assert_eq!(keys(&settled), vec!["committed", "open"]);
}

/// A follower started before its topic exists waits for it, says when it has read what the
/// topic held, and goes on handing over what is written later, from every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_waits_for_its_topic_then_reads_it_whole_and_keeps_following() {
    use sagashop_kit::admin::TopicSpec;
    use sagashop_kit::{Outgoing, Publisher};
    use std::sync::{Arc, Mutex};
    let kafka = TestKafka::connect().await;
    let topic = unique_name("reader-follow");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (caught_up_tx, caught_up) = tokio::sync::oneshot::channel();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let following = tokio::spawn(sagashop_kit::reader::follow(
        &kafka.config,
        "test-follow",
        &topic,
        shutdown.clone(),
        {
            let seen = Arc::clone(&seen);
            move |record| {
                let key = String::from_utf8(record.key.unwrap()).unwrap();
                seen.lock().unwrap().push(key);
            }
        },
        move || {
            let _ = caught_up_tx.send(());
        },
    ));
    // The topic comes later, with records before the follower can see it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    kafka.create(TopicSpec::new(&topic, 3)).await;
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    let write = |keys: std::ops::Range<u32>| {
        keys.map(|k| {
            Outgoing::raw(
                &topic,
                &format!("k{k}"),
                &sagashop_contracts::Metadata::new::<sagashop_contracts::events::OrderPlaced>("c"),
                b"{}".to_vec(),
            )
        })
        .collect::<Vec<_>>()
    };
    publisher.send_all(&write(0..30)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(90), caught_up)
        .await
        .expect("the follower never said it had caught up")
        .unwrap();
    publisher.send_all(&write(30..40)).await.unwrap();
    sagashop_testkit::eventually("every record followed", WAIT, || {
        let n = seen.lock().unwrap().len();
        async move { (n >= 40).then_some(()) }
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(WAIT, following)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut keys = seen.lock().unwrap().clone();
    keys.sort_by_key(|k| k[1..].parse::<u32>().unwrap());
    let expected: Vec<String> = (0..40).map(|k| format!("k{k}")).collect();
    assert_eq!(keys, expected, "each record once");
}
