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
