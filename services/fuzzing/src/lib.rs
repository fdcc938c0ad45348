//! The properties sagashop's fuzz targets check, one function per boundary.
//!
//! Each takes the fuzzer's bytes and panics only when a property that matters is broken: the
//! `cargo fuzz` targets in `fuzz/` call them under libFuzzer (`scripts/fuzz`), and
//! `tests/corpora.rs` replays every kept corpus file through them on stable Rust in the test
//! command. Inputs with several parts (a record's key, payload and headers) are split by
//! [`fields`].
//!
//! | target | boundary | property |
//! | --- | --- | --- |
//! | [`order_request`] | `POST /api/orders` bodies | an accepted order obeys every rule and reads back the same; valid JSON is never "malformed"; a refusal names its field |
//! | [`envelope`] | every Kafka record's headers and payload | decodes to a valid envelope that re-encodes to itself, or returns a typed error |
//! | [`saga_spec`] | `Saga` manifests (YAML) and specs (JSON) | a valid saga round-trips through JSON and YAML to the same definition and version; a refusal names fields under `spec.` |
//! | [`kafka_topic`] | `KafkaTopic` specs, topic names | the operator's decision is consistent with Kafka's rules; a spec round-trips; any topic gets a valid object name |
//! | [`dead_letter`] | dead letters' headers | a dead letter's replay is the original record; any record's headers read without panicking |

// A property is an assertion: breaking one must panic, which is what the fuzzer detects.
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "a broken property panics: that is the finding the fuzzer reports"
)]

pub mod seeds;

use std::collections::BTreeMap;

use sagashop_contracts::commands::{AuthorizePayment, StepSucceeded};
use sagashop_contracts::events::OrderPlaced;
use sagashop_contracts::{Contract, DecodeError, Envelope, Metadata};
use sagashop_kit::Record;
use sagashop_kit::admin::TopicState;
use sagashop_kit::dlq::{DeadLetter, dead_letter as to_dead_letter, header};
use sagashop_operator::sagas::resource_name;
use sagashop_operator::topics::{Decision, decide, keyed, topic_name};
use sagashop_operator::{KafkaTopic, KafkaTopicSpec};
use sagashop_order::request::{CheckedOrder, Limits, Refusal, parse};
use sagashop_saga::{Definition, Saga, SagaSpec};

/// A property over a fuzzer's input: panics when broken.
pub type Property = fn(&[u8]);

/// The fuzz targets: name (a directory of `fuzz/corpus/` and a `fuzz/fuzz_targets/` file) and
/// the property it checks.
pub const TARGETS: [(&str, Property); 5] = [
    ("order_request", order_request),
    ("envelope", envelope),
    ("saga_spec", saga_spec),
    ("kafka_topic", kafka_topic),
    ("dead_letter", dead_letter),
];

/// The byte that separates the parts of an input: no UTF-8 text (so no JSON or header name)
/// contains it.
pub const FIELD: u8 = 0xFF;
/// The byte that separates a header's name from its value inside a part.
pub const VALUE: u8 = 0xFE;

/// The parts of an input, split at [`FIELD`].
pub fn fields(data: &[u8]) -> Vec<&[u8]> {
    data.split(|b| *b == FIELD).collect()
}

/// A header from a part: its name up to the first [`VALUE`], then its value; a part without
/// one is a header without a value.
pub fn header_of(part: &[u8]) -> (String, Option<Vec<u8>>) {
    match part.iter().position(|b| *b == VALUE) {
        Some(at) => (
            String::from_utf8_lossy(&part[..at]).into_owned(),
            Some(part[at + 1..].to_vec()),
        ),
        None => (String::from_utf8_lossy(part).into_owned(), None),
    }
}

/// The inverse of [`fields`] and [`header_of`], for seeds.
pub fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.join(&FIELD)
}

/// How many lines an order may have (the edge's default).
pub const MAX_ITEMS: usize = 100;

/// `POST /api/orders` bodies.
pub fn order_request(data: &[u8]) {
    match parse(data, Limits::items(MAX_ITEMS)) {
        Ok(order) => {
            obeys_every_rule(&order);
            let body = serde_json::json!({
                "customerId": order.customer_id,
                "currency": order.currency,
                "items": order.items.iter().map(|i| serde_json::json!({
                    "productId": i.product_id,
                    "quantity": i.quantity,
                    "unitPrice": i.unit_price_minor,
                })).collect::<Vec<_>>(),
            });
            let again = parse(body.to_string().as_bytes(), Limits::items(MAX_ITEMS));
            assert_eq!(
                again.as_ref(),
                Ok(&order),
                "an accepted order reads back the same"
            );
        }
        Err(Refusal::Invalid { field, detail }) => {
            assert!(
                !field.is_empty() && !detail.is_empty(),
                "a refusal names its field"
            );
        }
        Err(Refusal::Malformed(why)) => {
            assert!(!why.is_empty());
            assert!(
                serde_json::from_slice::<serde_json::Value>(data).is_err(),
                "valid JSON refused as malformed (a 400 where a 422 naming the field is due): {why}"
            );
        }
    }
}

fn obeys_every_rule(order: &CheckedOrder) {
    let text = |s: &str| !s.is_empty() && s.chars().count() <= 128 && s.trim() == s;
    assert!(text(&order.customer_id), "customer {:?}", order.customer_id);
    assert!(
        order.currency.len() == 3 && order.currency.bytes().all(|b| b.is_ascii_uppercase()),
        "currency {:?}",
        order.currency
    );
    assert!((1..=MAX_ITEMS).contains(&order.items.len()));
    let mut total: i64 = 0;
    for item in &order.items {
        assert!(text(&item.product_id), "product {:?}", item.product_id);
        assert!((1..=10_000).contains(&item.quantity));
        assert!((0..=100_000_000).contains(&item.unit_price_minor));
        total += i64::from(item.quantity) * item.unit_price_minor;
    }
    assert_eq!(
        order.total_minor, total,
        "the total is the sum of the lines"
    );
}

/// A Kafka record as a consumer decodes it: part 0 the key (empty: none), part 1 the payload
/// (absent: none), the rest headers.
pub fn envelope(data: &[u8]) {
    let parts = fields(data);
    let key = parts.first().filter(|k| !k.is_empty()).copied();
    let payload = parts.get(1).copied();
    let headers: Vec<(String, Option<Vec<u8>>)> =
        parts.iter().skip(2).map(|p| header_of(p)).collect();
    let Ok(metadata) =
        Metadata::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())))
    else {
        return;
    };
    let written = metadata.to_headers();
    let again = Metadata::from_headers(written.iter().map(|(k, v)| (*k, Some(v.as_bytes()))))
        .expect("the headers metadata writes read back");
    assert_eq!(again, metadata, "metadata round-trips through its headers");
    let decoded = [
        round_trip::<OrderPlaced>(key, &metadata, payload),
        round_trip::<StepSucceeded>(key, &metadata, payload),
        round_trip::<AuthorizePayment>(key, &metadata, payload),
    ];
    let named = decoded
        .iter()
        .filter(|d| !matches!(d, Err(DecodeError::WrongEventType { .. })))
        .count();
    assert!(named <= 1, "one event type decodes as one contract at most");
}

/// Decodes as `T`; a success must re-encode and decode to the same envelope.
fn round_trip<T>(
    key: Option<&[u8]>,
    metadata: &Metadata,
    payload: Option<&[u8]>,
) -> Result<(), DecodeError>
where
    T: Contract + PartialEq + std::fmt::Debug,
{
    let envelope = Envelope::<T>::decode(key, metadata.clone(), payload)?;
    let bytes = envelope
        .encode_payload()
        .expect("a decoded payload encodes");
    let back = Envelope::<T>::decode(
        Some(envelope.key.as_bytes()),
        envelope.metadata.clone(),
        Some(&bytes),
    )
    .expect("an encoded envelope decodes");
    assert_eq!(back, envelope, "an envelope round-trips");
    Ok(())
}

/// A `Saga` manifest as `sagashop dev` reads it, and a spec as JSON.
pub fn saga_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(definition) = Saga::load(text, "fuzz.yaml") {
        saga_round_trips(&definition);
    }
    if let Ok(spec) = serde_json::from_str::<SagaSpec>(text) {
        match spec.validate("fuzz") {
            Ok(definition) => saga_round_trips(&definition),
            Err(invalid) => assert!(
                !invalid.problems.is_empty()
                    && invalid.problems.iter().all(|p| p.starts_with("spec.")),
                "every problem names its field: {:?}",
                invalid.problems
            ),
        }
    }
}

/// A valid saga written as JSON and as a YAML manifest reads back to the same definition.
fn saga_round_trips(definition: &Definition) {
    let json = serde_json::to_string(&definition.spec).expect("a spec writes as JSON");
    let spec: SagaSpec = serde_json::from_str(&json).expect("and reads back");
    let again = spec
        .validate(&definition.name)
        .expect("a valid spec read back is valid");
    assert_eq!(&again, definition, "a saga round-trips through JSON");
    let manifest = Saga::new(&definition.name, definition.spec.clone());
    let yaml = serde_saphyr::to_string(&manifest).expect("a saga writes as YAML");
    let loaded = Saga::load(&yaml, "round-trip.yaml")
        .unwrap_or_else(|e| panic!("a valid saga written as YAML loads: {e}\n{yaml}"));
    assert_eq!(&loaded, definition, "a saga round-trips through YAML");
}

/// A `KafkaTopic` spec (part 0, JSON), its object name (part 1) and the topic as Kafka has it
/// (part 2: partitions and replicas as two little-endian `i32`s).
pub fn kafka_topic(data: &[u8]) {
    let parts = fields(data);
    let name = String::from_utf8_lossy(parts.get(1).copied().unwrap_or_default());
    valid_object_name(&resource_name(&name));
    let Ok(spec) = serde_json::from_slice::<KafkaTopicSpec>(parts[0]) else {
        return;
    };
    let json = serde_json::to_vec(&spec).expect("a spec writes");
    let again: KafkaTopicSpec = serde_json::from_slice(&json).expect("and reads back");
    assert_eq!(again, spec, "a KafkaTopic spec round-trips");
    let resource = KafkaTopic::new(&name, spec.clone());
    let topic = topic_name(&resource);
    assert_eq!(
        topic,
        spec.topic_name.clone().unwrap_or_else(|| name.to_string())
    );
    valid_object_name(&resource_name(&topic));
    assert_eq!(
        decide(&spec, None, keyed(&resource)),
        Decision::Create,
        "a missing topic is created"
    );
    let int = |at: usize| {
        let bytes = parts.get(2).copied().unwrap_or_default();
        bytes
            .get(at..at + 4)
            .map_or(1, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let state = TopicState {
        partitions: int(0),
        replicas: int(4),
        config: BTreeMap::new(),
    };
    // A changelog (compacted) keeps its partitions: keys would move away from their state.
    let fixed = keyed(&resource);
    match decide(&spec, Some(&state), fixed) {
        Decision::Create => panic!("an existing topic is never created again"),
        Decision::Refuse { reason, message } => {
            assert!(
                state.replicas != spec.replicas
                    || state.partitions > spec.partitions
                    || (fixed && state.partitions < spec.partitions)
            );
            assert!(!reason.is_empty() && !message.is_empty());
        }
        Decision::Update {
            raise_partitions,
            replace_config,
        } => {
            assert!(state.replicas == spec.replicas && state.partitions <= spec.partitions);
            assert!(
                !(fixed && state.partitions < spec.partitions),
                "a keyed topic was grown"
            );
            assert_eq!(
                raise_partitions,
                (state.partitions < spec.partitions).then_some(spec.partitions),
                "partitions are only ever raised, to the spec's"
            );
            assert_eq!(replace_config, !spec.config.is_empty());
        }
    }
}

/// A Kubernetes object name: 1–253 characters of `[a-z0-9.-]`, alphanumeric at both ends.
fn valid_object_name(name: &str) {
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    assert!(
        (1..=253).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
            && ends(name.chars().next())
            && ends(name.chars().last()),
        "not a valid object name: {name:?}"
    );
}

/// A record (part 0 its topic, part 1 its key, part 2 its payload, the rest headers): read as a
/// dead letter, then dead-lettered and replayed.
pub fn dead_letter(data: &[u8]) {
    let parts = fields(data);
    let text = |i: usize| String::from_utf8_lossy(parts.get(i).copied().unwrap_or_default());
    let record = Record {
        topic: text(0).into_owned(),
        partition: 0,
        offset: 0,
        key: parts.get(1).map(|k| k.to_vec()),
        payload: parts.get(2).map(|p| p.to_vec()),
        headers: parts.iter().skip(3).map(|p| header_of(p)).collect(),
        timestamp: None,
    };
    // Any record read as a dead letter: its headers read, and a replay names a topic or says
    // which header is missing.
    let read = DeadLetter {
        record: record.clone(),
    };
    for name in [header::ERROR, header::ATTEMPTS, header::FAILED_AT] {
        let _ = read.header(name);
    }
    match read.replay(None) {
        Ok(out) => assert_eq!(Some(out.topic.as_str()), read.original_topic()),
        Err(e) => assert!(e.to_string().contains(header::ORIGINAL_TOPIC)),
    }
    // Dead-lettered, read back and replayed: the original record, to the topic it came from.
    let letter = to_dead_letter(&record, "fuzz.dlq", "fuzz-group", "fuzzed", 3);
    let back = DeadLetter {
        record: Record {
            topic: letter.topic.clone(),
            partition: 0,
            offset: 1,
            key: letter.key.clone(),
            payload: letter.payload.clone(),
            headers: letter
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            timestamp: None,
        },
    };
    assert_eq!(back.original_topic(), Some(record.topic.as_str()));
    assert_eq!(back.header(header::ATTEMPTS), Some("3"));
    let replayed = back.replay(None).expect("a dead letter replays");
    assert_eq!(replayed.topic, record.topic);
    assert_eq!(
        (&replayed.key, &replayed.payload),
        (&record.key, &record.payload)
    );
    let original: Vec<(String, Vec<u8>)> = record
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with("dlq-"))
        .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        replayed.headers, original,
        "a replay carries the original headers"
    );
}
