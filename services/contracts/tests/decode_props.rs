//! Property tests of the envelope decoder: random headers and payloads, truncated JSON, wrong
//! event types and schema versions all give a `DecodeError` (which a consumer dead-letters),
//! never a panic; a well-formed envelope always decodes to what was sent.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use proptest::prelude::*;
use sagashop_contracts::events::{OrderItem, OrderPlaced};
use sagashop_contracts::{DecodeError, Envelope, Metadata};

fn placed() -> Envelope<OrderPlaced> {
    let order_id = uuid::Uuid::now_v7();
    Envelope::new(
        order_id.to_string(),
        order_id.to_string(),
        OrderPlaced {
            order_id,
            customer_id: "Zoë 🚀".into(),
            items: vec![OrderItem {
                product_id: "sku-1".into(),
                quantity: 2,
                unit_price_minor: 250,
            }],
            currency: "EUR".into(),
            total_minor: 500,
            placed_at: chrono::Utc::now(),
        },
    )
}

/// Decodes the way a consumer does: headers, then the payload.
fn decode(
    headers: &[(String, Option<Vec<u8>>)],
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<Envelope<OrderPlaced>, DecodeError> {
    let metadata = Metadata::from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())))?;
    Envelope::decode(key, metadata, payload)
}

fn headers_of(envelope: &Envelope<OrderPlaced>) -> Vec<(String, Option<Vec<u8>>)> {
    envelope
        .metadata
        .to_headers()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Some(v.into_bytes())))
        .collect()
}

/// A header name, mostly one the decoder reads.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("event-type".to_owned()),
        Just("schema-version".to_owned()),
        Just("message-id".to_owned()),
        Just("correlation-id".to_owned()),
        Just("causation-id".to_owned()),
        Just("traceparent".to_owned()),
        "[a-z-]{1,16}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_records_are_refused_not_panicked_on(
        headers in prop::collection::vec(
            (header_name(), prop::option::of(prop::collection::vec(any::<u8>(), 0..48))),
            0..10,
        ),
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
        payload in prop::option::of(prop::collection::vec(any::<u8>(), 0..256)),
    ) {
        let _ = decode(&headers, key.as_deref(), payload.as_deref());
    }

    #[test]
    fn a_truncated_payload_is_an_invalid_payload(cut in 0usize..400) {
        let envelope = placed();
        let bytes = envelope.encode_payload().unwrap();
        let cut = cut.min(bytes.len() - 1);
        let answer = decode(&headers_of(&envelope), Some(envelope.key.as_bytes()), Some(&bytes[..cut]));
        prop_assert!(matches!(answer, Err(DecodeError::InvalidPayload { .. })), "{answer:?}");
    }

    #[test]
    fn another_schema_version_is_named_as_such(version in 2u32..1000) {
        let envelope = placed();
        let mut headers = headers_of(&envelope);
        for (name, value) in &mut headers {
            if name == "schema-version" {
                *value = Some(version.to_string().into_bytes());
            }
        }
        let bytes = envelope.encode_payload().unwrap();
        let answer = decode(&headers, Some(envelope.key.as_bytes()), Some(&bytes));
        prop_assert!(
            matches!(answer, Err(DecodeError::UnsupportedVersion { found, supported: 1, .. }) if found == version),
            "{answer:?}"
        );
    }

    #[test]
    fn well_formed_envelopes_decode_to_what_was_sent(customer in "\\PC{1,64}", quantity in 1u32..10_000) {
        let mut envelope = placed();
        envelope.payload.customer_id = customer;
        envelope.payload.items[0].quantity = quantity;
        let bytes = envelope.encode_payload().unwrap();
        let decoded = decode(&headers_of(&envelope), Some(envelope.key.as_bytes()), Some(&bytes)).unwrap();
        prop_assert_eq!(decoded.payload, envelope.payload);
        prop_assert_eq!(decoded.metadata, envelope.metadata);
    }
}
