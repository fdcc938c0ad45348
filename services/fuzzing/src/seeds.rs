//! The seed corpora: real inputs of every boundary, built from the contracts, the shipped saga
//! and the shipped topics, so the fuzzers start from what the system really sees.
//! `cargo run -p sagashop-fuzzing --bin seed-corpus` writes them to `fuzz/corpus/<target>/`.

use sagashop_contracts::commands::{AuthorizePayment, StepContext, StepSucceeded};
use sagashop_contracts::events::{OrderItem, OrderPlaced};
use sagashop_contracts::{Contract, Envelope};
use sagashop_kit::dlq::dead_letter;
use sagashop_kit::{Outgoing, Record};

use crate::{FIELD, VALUE, join};

const SHIPPED_SAGA: &str = include_str!("../../../k8s/sagas/order-fulfilment.yaml");
const SHIPPED_TOPICS: &str = include_str!("../../../k8s/topics.yaml");

/// One seed: its target, a file name, the bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Every seed of every target.
pub fn seeds() -> Vec<Seed> {
    let mut all = Vec::new();
    all.extend(orders());
    all.extend(envelopes());
    all.extend(sagas());
    all.extend(topics());
    all.extend(dead_letters());
    all
}

fn orders() -> Vec<Seed> {
    let good = r#"{"customerId":"c-1","currency":"EUR","items":[{"productId":"sku-1","quantity":2,"unitPrice":1250}]}"#;
    [
        ("good", good.to_owned()),
        (
            "two-lines",
            good.replace(
                "}]}",
                r#"},{"productId":"sku-2","quantity":1,"unitPrice":0}]}"#,
            ),
        ),
        (
            "zero-quantity",
            good.replace("\"quantity\":2", "\"quantity\":0"),
        ),
        ("lower-currency", good.replace("EUR", "eur")),
        (
            "no-items",
            r#"{"customerId":"c-1","currency":"EUR","items":[]}"#.to_owned(),
        ),
        ("array", "[1,2]".to_owned()),
        ("truncated", good[..40].to_owned()),
        ("unicode", good.replace("c-1", "Zoë 🚀")),
    ]
    .into_iter()
    .map(|(name, body)| ("order_request", name.to_owned(), body.into_bytes()))
    .collect()
}

/// A record as the fuzz targets read it: key, payload, then `name VALUE value` headers.
fn record_input(out: &Outgoing) -> Vec<u8> {
    let mut parts = vec![
        out.key.clone().unwrap_or_default(),
        out.payload.clone().unwrap_or_default(),
    ];
    for (name, value) in &out.headers {
        let mut header = name.clone().into_bytes();
        header.push(VALUE);
        header.extend_from_slice(value);
        parts.push(header);
    }
    join(&parts)
}

fn outgoing<T: Contract>(envelope: &Envelope<T>) -> Outgoing {
    Outgoing::event("t", envelope).unwrap_or_else(|e| panic!("a seed encodes: {e}"))
}

fn placed() -> Envelope<OrderPlaced> {
    let id = uuid::Uuid::now_v7();
    Envelope::new(
        id.to_string(),
        id.to_string(),
        OrderPlaced {
            order_id: id,
            customer_id: "c-1".into(),
            items: vec![OrderItem {
                product_id: "sku-1".into(),
                quantity: 2,
                unit_price_minor: 1250,
            }],
            currency: "EUR".into(),
            total_minor: 2500,
            placed_at: chrono::Utc::now(),
        },
    )
}

fn envelopes() -> Vec<Seed> {
    let placed = placed();
    let context = StepContext {
        saga_id: placed.key.clone(),
        saga_name: "order-fulfilment".into(),
        step: "authorize-payment".into(),
        attempt: 2,
        succeeded_before: false,
    };
    let succeeded = Envelope::caused_by(
        &placed.metadata,
        placed.key.clone(),
        StepSucceeded {
            context: context.clone(),
            command: AuthorizePayment::EVENT_TYPE.into(),
            detail: Some("authorised".into()),
        },
    );
    let authorize = Envelope::caused_by(
        &placed.metadata,
        placed.key.clone(),
        AuthorizePayment {
            context,
            order_id: placed.payload.order_id,
            customer_id: "c-1".into(),
            total_minor: 2500,
            currency: "EUR".into(),
        },
    );
    let mut old_version = outgoing(&placed);
    for (name, value) in &mut old_version.headers {
        if name == "schema-version" {
            *value = b"0".to_vec();
        }
    }
    [
        ("order-placed", outgoing(&placed)),
        ("step-succeeded", outgoing(&succeeded)),
        ("authorize-payment", outgoing(&authorize)),
        ("old-schema-version", old_version),
    ]
    .into_iter()
    .map(|(name, out)| ("envelope", name.to_owned(), record_input(&out)))
    .collect()
}

fn sagas() -> Vec<Seed> {
    let spec: serde_json::Value = serde_saphyr::from_str::<serde_json::Value>(SHIPPED_SAGA)
        .map(|manifest| manifest["spec"].clone())
        .unwrap_or_default();
    let no_compensation = SHIPPED_SAGA.replacen("      compensation: ReleaseInventory\n", "", 1);
    [
        ("shipped.yaml", SHIPPED_SAGA.to_owned()),
        ("shipped-spec.json", spec.to_string()),
        ("no-compensation.yaml", no_compensation),
        (
            "wrong-kind.yaml",
            SHIPPED_SAGA.replace("kind: Saga", "kind: Sage"),
        ),
    ]
    .into_iter()
    .map(|(name, text)| ("saga_spec", name.to_owned(), text.into_bytes()))
    .collect()
}

fn topics() -> Vec<Seed> {
    let documents: Vec<Option<serde_json::Value>> =
        serde_saphyr::from_multiple(SHIPPED_TOPICS).unwrap_or_default();
    let mut seeds: Vec<Seed> = documents
        .into_iter()
        .flatten()
        .filter(|d| d["kind"] == "KafkaTopic")
        .take(4)
        .enumerate()
        .map(|(i, d)| {
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or("t")
                .as_bytes()
                .to_vec();
            let state = [4_i32.to_le_bytes(), 1_i32.to_le_bytes()].concat();
            let input = join(&[d["spec"].to_string().into_bytes(), name, state]);
            ("kafka_topic", format!("shipped-{i}"), input)
        })
        .collect();
    seeds.push((
        "kafka_topic",
        "odd-name".to_owned(),
        join(&[
            br#"{"partitions":3,"topicName":"Orders_V1"}"#.to_vec(),
            b"-Orders_V1.".to_vec(),
        ]),
    ));
    seeds
}

fn dead_letters() -> Vec<Seed> {
    // The shipped saga's trigger topic, and a dead-letter topic named as the runtime names them.
    let trigger = sagashop_saga::Saga::load(SHIPPED_SAGA, "order-fulfilment.yaml")
        .map(|d| d.trigger.topic)
        .unwrap_or_else(|e| panic!("the shipped saga loads: {e}"));
    let dlq = sagashop_saga::definition::dead_letter_topic(sagashop_saga::definition::ORCHESTRATOR);
    let out = outgoing(&placed());
    let record = Record {
        topic: trigger.clone(),
        partition: 2,
        offset: 41,
        key: out.key.clone(),
        payload: out.payload.clone(),
        headers: out
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect(),
        timestamp: None,
    };
    let as_input = |topic: &str, out: &Outgoing| {
        let mut input = topic.as_bytes().to_vec();
        input.push(FIELD);
        input.extend(record_input(out));
        input
    };
    let letter = dead_letter(&record, &dlq, "orchestrator", "poison", 0);
    vec![
        ("dead_letter", "record".to_owned(), as_input(&trigger, &out)),
        (
            "dead_letter",
            "dead-letter".to_owned(),
            as_input(&dlq, &letter),
        ),
    ]
}
