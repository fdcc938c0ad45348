//! The kit's Kafka client setup against the real broker (`scripts/kafka up`).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::time::Duration;

use chrono::Utc;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{BaseProducer, BaseRecord, FutureRecord, Producer};
use rdkafka::util::Timeout;
use sagashop_contracts::Envelope;
use sagashop_contracts::events::{OrderItem, OrderPlaced};
use sagashop_kit::{Error, KafkaConfig, headers};
use sagashop_testkit::{TestKafka, unique_name};

const WAIT: Duration = Duration::from_secs(30);

async fn next(consumer: &StreamConsumer) -> OwnedMessage {
    tokio::time::timeout(WAIT, consumer.recv())
        .await
        .expect("no record arrived in time")
        .expect("consumer error")
        .detach()
}

fn order() -> OrderPlaced {
    OrderPlaced {
        order_id: uuid::Uuid::now_v7(),
        customer_id: "alice".into(),
        items: vec![OrderItem {
            product_id: "sku-1".into(),
            quantity: 2,
            unit_price_minor: 1250,
        }],
        currency: "EUR".into(),
        total_minor: 2500,
        placed_at: Utc::now(),
    }
}

#[tokio::test]
async fn envelope_round_trips_through_a_topic_with_key_and_headers() {
    let kafka = TestKafka::connect().await;
    let topic = kafka.topic("roundtrip", 1).await;
    let placed = order();
    let id = placed.order_id.to_string();
    let mut envelope = Envelope::new(id.clone(), id, placed);
    envelope.metadata.traceparent =
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    let payload = envelope.encode_payload().unwrap();

    let delivery = kafka
        .producer()
        .send(
            FutureRecord::to(&topic)
                .key(&envelope.key)
                .payload(&payload)
                .headers(headers::to_headers(&envelope.metadata)),
            Timeout::After(WAIT),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("the broker did not acknowledge the write");
    assert_eq!((delivery.partition, delivery.offset), (0, 0));

    let consumer = kafka.consumer(&unique_name("roundtrip"));
    consumer.subscribe(&[&topic]).unwrap();
    let record = next(&consumer).await;
    let back = headers::decode::<OrderPlaced, _>(&record).unwrap();
    assert_eq!(back, envelope);
}

#[tokio::test]
async fn committed_offsets_survive_a_consumer_restart() {
    let kafka = TestKafka::connect().await;
    let topic = kafka.topic("restart", 1).await;
    let group = unique_name("restart");
    let producer = kafka.producer();
    for i in 0..10 {
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&i.to_string()),
                Timeout::After(WAIT),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    {
        let first = kafka.consumer(&group);
        first.subscribe(&[&topic]).unwrap();
        for expected in 0..4 {
            let record = next(&first).await;
            assert_eq!(record.payload(), Some(expected.to_string().as_bytes()));
            first
                .store_offset(record.topic(), record.partition(), record.offset())
                .unwrap();
        }
        first.commit_consumer_state(CommitMode::Sync).unwrap();
        // Dropping the consumer closes it: it leaves the group without reading further.
    }

    let second = kafka.consumer(&group);
    second.subscribe(&[&topic]).unwrap();
    let mut seen = Vec::new();
    for _ in 4..10 {
        let record = next(&second).await;
        seen.push(String::from_utf8(record.payload().unwrap().to_vec()).unwrap());
    }
    assert_eq!(seen, ["4", "5", "6", "7", "8", "9"]);
}

#[tokio::test]
async fn aborted_transactions_stay_invisible_to_read_committed_consumers() {
    let kafka = TestKafka::connect().await;
    let topic = kafka.topic("txn", 1).await;
    let config = kafka
        .config
        .transactional_producer("test", &unique_name("txn-producer"));
    let txn_topic = topic.clone();

    // librdkafka's transaction calls block; keep them off the async executor.
    tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = config.create().unwrap();
        producer.init_transactions(WAIT).unwrap();
        for (outcome, count) in [("aborted", 3), ("committed", 2)] {
            producer.begin_transaction().unwrap();
            for i in 0..count {
                let value = format!("{outcome}-{i}");
                producer
                    .send(BaseRecord::to(&txn_topic).key("k").payload(&value))
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
            // Flushing waits until the broker has the records, so the aborted ones are really in
            // the log (the read_uncommitted check below proves it).
            producer.flush(WAIT).unwrap();
            if outcome == "aborted" {
                producer.abort_transaction(WAIT).unwrap();
            } else {
                producer.commit_transaction(WAIT).unwrap();
            }
        }
    })
    .await
    .unwrap();

    let read = |consumer: StreamConsumer, n: usize| {
        let topic = topic.clone();
        async move {
            consumer.subscribe(&[&topic]).unwrap();
            let mut values = Vec::new();
            for _ in 0..n {
                let record = next(&consumer).await;
                values.push(String::from_utf8(record.payload().unwrap().to_vec()).unwrap());
            }
            values
        }
    };

    let committed = read(kafka.consumer(&unique_name("txn")), 2).await;
    assert_eq!(committed, ["committed-0", "committed-1"]);

    // The aborted records are in the log: a read_uncommitted reader sees them first.
    let mut uncommitted = kafka.config.consumer("test", &unique_name("txn-raw"));
    uncommitted.set("isolation.level", "read_uncommitted");
    let raw = read(uncommitted.create().unwrap(), 5).await;
    assert_eq!(raw[..3], ["aborted-0", "aborted-1", "aborted-2"]);
}

#[tokio::test]
async fn an_unreachable_broker_is_reported_with_what_to_do() {
    // Port 1 on loopback: nothing listens there.
    let err = KafkaConfig::new("127.0.0.1:1")
        .probe(Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("Kafka at 127.0.0.1:1 is unreachable"),
        "{text}"
    );
    assert!(text.contains("scripts/kafka up"), "{text}");
}

#[tokio::test]
async fn probe_lists_the_broker_and_the_topics() {
    let kafka = TestKafka::connect().await;
    let topic = kafka.topic("probe", 3).await;
    let info = kafka.config.probe(WAIT).await.unwrap();
    assert_eq!(info.brokers.len(), 1);
    assert!(info.topics.contains(&(topic, 3)), "{:?}", info.topics);
    assert!(info.topics.iter().all(|(name, _)| !name.starts_with("__")));
}

#[tokio::test]
async fn waiting_for_topics_that_never_come_ends_at_shutdown_not_at_the_wait() {
    let kafka = TestKafka::connect().await;
    let made = kafka.topic("made", 1).await;
    let never = unique_name("never-made");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
    });
    let started = std::time::Instant::now();
    let waited = sagashop_kit::admin::wait_for_topics(
        &kafka.config,
        vec![made.clone(), never],
        Duration::from_secs(120),
        &shutdown,
    )
    .await
    .unwrap();
    assert!(!waited, "a missing topic cannot have been found");
    // A SIGTERM during the wait must not hold the process for the whole two minutes.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let present = sagashop_kit::admin::wait_for_topics(
        &kafka.config,
        vec![made],
        Duration::from_secs(30),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(present, "a topic that exists is found");
}
