//! The ceiling: raw rdkafka produce and consume rates on the broker, with the producer settings
//! the services use, for benchmarks to compare the runtime and the system against.

use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sagashop_contracts::Envelope;
use sagashop_contracts::events::{OrderItem, OrderPlaced};
use sagashop_kit::admin::{TopicSpec, create_topics};
use sagashop_kit::{KafkaConfig, Outgoing};

use crate::unique_name;

/// The `i`th `OrderPlaced` of a run: one of 1,000 order ids (keys), two order lines.
pub fn order(i: usize) -> Outgoing {
    let id = uuid::Uuid::from_u128(i as u128 % 1000);
    let placed = OrderPlaced {
        order_id: id,
        customer_id: format!("customer-{}", i % 97),
        items: vec![
            OrderItem {
                product_id: "sku-1".into(),
                quantity: 2,
                unit_price_minor: 1250,
            },
            OrderItem {
                product_id: "sku-7".into(),
                quantity: 1,
                unit_price_minor: 4999,
            },
        ],
        currency: "EUR".into(),
        total_minor: 7499,
        placed_at: Utc::now(),
    };
    Outgoing::event("", &Envelope::new(id.to_string(), id.to_string(), placed)).unwrap()
}

/// A new 4-partition topic named after `prefix`.
pub async fn topic(kafka: &KafkaConfig, prefix: &str) -> String {
    let name = unique_name(prefix);
    let admin = kafka.admin_client("bench").unwrap();
    create_topics(&admin, &[TopicSpec::new(&name, 4)], Duration::from_secs(30))
        .await
        .unwrap();
    name
}

/// Produces `n` orders with the services' producer settings, keeping up to 10,000 in flight;
/// returns records per second and the payload size. One extra record goes first, untimed, so
/// the new topic's metadata lookup and the connection are not counted.
pub async fn raw_produce(kafka: &KafkaConfig, topic: &str, n: usize) -> (f64, usize) {
    let producer: FutureProducer = kafka.producer("bench").create().unwrap();
    let records: Vec<Outgoing> = (0..n).map(order).collect();
    let bytes = records
        .iter()
        .map(|r| r.payload.as_ref().map_or(0, Vec::len))
        .sum::<usize>()
        / n;
    let warm = order(n);
    producer
        .send(
            FutureRecord::to(topic)
                .key(warm.key.as_deref().unwrap_or_default())
                .payload(warm.payload.as_deref().unwrap_or_default()),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let started = Instant::now();
    for chunk in records.chunks(10_000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for record in chunk {
            let key = record.key.as_deref().unwrap();
            let headers = record
                .headers
                .iter()
                .fold(OwnedHeaders::new(), |h, (k, v)| {
                    h.insert(Header {
                        key: k,
                        value: Some(v.as_slice()),
                    })
                });
            let sent = producer
                .send_result(
                    FutureRecord::to(topic)
                        .key(key)
                        .payload(record.payload.as_deref().unwrap_or_default())
                        .headers(headers),
                )
                .map_err(|(e, _)| e)
                .unwrap();
            pending.push(sent);
        }
        for delivery in pending {
            delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }
    (n as f64 / started.elapsed().as_secs_f64(), bytes)
}

/// Consumes `n` records from `topic`; returns records per second, the clock started at the
/// first record (group join excluded).
pub async fn raw_consume(kafka: &KafkaConfig, topic: &str, n: usize) -> f64 {
    let consumer: StreamConsumer = kafka
        .consumer("bench", &unique_name("bench-raw"))
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let first = consumer.recv().await.unwrap();
    drop(first);
    let started = Instant::now();
    for _ in 1..n {
        consumer.recv().await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}
