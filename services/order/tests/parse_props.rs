//! Property tests of the order API's body parser: whatever a client sends, the answer is an
//! order or a refusal that says what is wrong, never a panic; an accepted order obeys every
//! rule; a refusal names the field that broke one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use proptest::prelude::*;
use sagashop_order::request::{Limits, Refusal, parse};
use serde_json::{Value, json};

const MAX_ITEMS: usize = 100;

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::hash_map(".{0,10}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An item whose fields are sometimes wrong: negative or huge quantities, prices out of range,
/// empty or unicode product ids, wrong types.
fn item() -> impl Strategy<Value = Value> {
    (
        prop_oneof![".{0,140}".prop_map(Value::from), any_json()],
        prop_oneof![(-5i64..20_000).prop_map(Value::from), any_json()],
        prop_oneof![(-10i64..200_000_000).prop_map(Value::from), any_json()],
    )
        .prop_map(|(product, quantity, price)| {
            json!({"productId": product, "quantity": quantity, "unitPrice": price})
        })
}

/// An order whose every part may be off.
fn order() -> impl Strategy<Value = Value> {
    (
        prop_oneof![".{0,140}".prop_map(Value::from), any_json()],
        prop_oneof![
            Just(json!("EUR")),
            "[A-Za-z]{0,4}".prop_map(Value::from),
            any_json()
        ],
        prop::collection::vec(item(), 0..(MAX_ITEMS + 5)),
    )
        .prop_map(|(customer, currency, items)| {
            json!({"customerId": customer, "currency": currency, "items": items})
        })
}

/// The rules an accepted order must obey, checked against what was sent.
fn obeys_the_rules(sent: &Value, body: &[u8]) {
    let order = parse(body, Limits::items(MAX_ITEMS)).unwrap();
    assert!(!order.customer_id.is_empty() && order.customer_id.chars().count() <= 128);
    assert_eq!(order.currency.len(), 3);
    assert!((1..=MAX_ITEMS).contains(&order.items.len()));
    let mut total = 0i64;
    for (item, raw) in order.items.iter().zip(sent["items"].as_array().unwrap()) {
        assert!((1..=10_000).contains(&item.quantity));
        assert!((0..=100_000_000).contains(&item.unit_price_minor));
        assert_eq!(i64::from(item.quantity), raw["quantity"].as_i64().unwrap());
        total += i64::from(item.quantity) * item.unit_price_minor;
    }
    assert_eq!(order.total_minor, total);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_get_an_answer(body in prop::collection::vec(any::<u8>(), 0..512)) {
        match parse(&body, Limits::items(MAX_ITEMS)) {
            Ok(_) => {}
            Err(Refusal::Malformed(detail)) => prop_assert!(!detail.is_empty()),
            Err(Refusal::Invalid { field, detail }) => {
                prop_assert!(!field.is_empty() && !detail.is_empty());
            }
        }
    }

    #[test]
    fn any_json_is_an_order_or_names_its_field(value in any_json()) {
        let body = serde_json::to_vec(&value).unwrap();
        // Valid JSON is never "malformed": the refusal says which part is not an order.
        if let Err(Refusal::Malformed(detail)) = parse(&body, Limits::items(MAX_ITEMS)) {
            prop_assert!(false, "valid JSON called malformed: {detail}: {value}");
        }
    }

    #[test]
    fn near_orders_are_accepted_only_when_every_rule_holds(sent in order()) {
        let body = serde_json::to_vec(&sent).unwrap();
        match parse(&body, Limits::items(MAX_ITEMS)) {
            Ok(_) => obeys_the_rules(&sent, &body),
            Err(Refusal::Invalid { field, .. }) => {
                let known = ["body", "customerId", "currency", "items"];
                prop_assert!(
                    known.contains(&field.as_str()) || field.starts_with("items["),
                    "refusal names no field of the order: {field}"
                );
            }
            Err(Refusal::Malformed(detail)) => {
                prop_assert!(false, "valid JSON called malformed: {detail}");
            }
        }
    }

    #[test]
    fn a_truncated_order_is_malformed(cut in 1usize..120) {
        let body = br#"{"customerId":"c-1","currency":"EUR","items":[{"productId":"p","quantity":2,"unitPrice":250}]}"#;
        let cut = cut.min(body.len() - 1);
        prop_assert!(matches!(parse(&body[..cut], Limits::items(MAX_ITEMS)), Err(Refusal::Malformed(_))));
    }
}

#[test]
fn ten_thousand_items_are_refused_by_count() {
    let items = vec![json!({"productId": "p", "quantity": 1, "unitPrice": 1}); 10_000];
    let body =
        serde_json::to_vec(&json!({"customerId": "c", "currency": "EUR", "items": items})).unwrap();
    match parse(&body, Limits::items(MAX_ITEMS)) {
        Err(Refusal::Invalid { field, detail }) => {
            assert_eq!(field, "items");
            assert!(detail.contains("at most 100"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn deep_nesting_is_refused_without_exhausting_the_stack() {
    for body in [
        "[".repeat(100_000),
        format!(r#"{{"customerId":{}"#, "[".repeat(100_000)),
        format!(r#"{{"extra":{}1{}}}"#, "[".repeat(5_000), "]".repeat(5_000)),
    ] {
        assert!(parse(body.as_bytes(), Limits::items(MAX_ITEMS)).is_err());
    }
}
