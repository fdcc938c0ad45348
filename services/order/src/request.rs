//! `POST /api/orders` bodies: parsed, checked, and every refusal naming its field.

use serde::Deserialize;

use sagashop_contracts::events::OrderItem;

/// The body of `POST /api/orders`. Money is in the currency's minor unit (cents).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaceOrder {
    /// Who orders.
    pub customer_id: String,
    /// What.
    pub items: Vec<ItemRequest>,
    /// ISO 4217 code, e.g. `EUR`.
    pub currency: String,
}

/// One line of an order.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemRequest {
    /// The product.
    pub product_id: String,
    /// How many (1 to 10,000).
    pub quantity: i64,
    /// Price of one, in minor units (0 to 100,000,000).
    pub unit_price: i64,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not JSON at all: `400`.
    Malformed(String),
    /// JSON, but not an order: `422`, naming the field.
    Invalid {
        /// The offending field's path, e.g. `items[0].quantity`.
        field: String,
        /// What is wrong with it.
        detail: String,
    },
}

/// A checked order, ready to become `OrderPlaced`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedOrder {
    /// Who orders.
    pub customer_id: String,
    /// What.
    pub items: Vec<OrderItem>,
    /// The currency.
    pub currency: String,
    /// The sum of quantity × unit price.
    pub total_minor: i64,
}

fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Refusal {
    Refusal::Invalid {
        field: field.into(),
        detail: detail.into(),
    }
}

/// How large an order may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most lines in one order.
    pub max_items: usize,
    /// The most distinct products in one order: each is one hop of inventory's routing slip,
    /// all of them inside one step's timeout.
    pub max_products: usize,
}

impl Limits {
    /// `max_items` lines, as many distinct products.
    pub const fn items(max_items: usize) -> Self {
        Self {
            max_items,
            max_products: max_items,
        }
    }
}

/// Parses and checks a body against `limits`.
pub fn parse(body: &[u8], limits: Limits) -> Result<CheckedOrder, Refusal> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(Refusal::Malformed("the body is empty".to_owned())),
        Some(b'{') => {}
        // Valid JSON of the wrong shape is the order's problem; anything else is not JSON.
        Some(_) if serde_json::from_slice::<serde_json::Value>(body).is_ok() => {
            return Err(invalid("body", "must be a JSON object"));
        }
        Some(_) => {}
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let order: PlaceOrder = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => invalid(
                if path == "." { "body".to_owned() } else { path },
                inner.to_string(),
            ),
            _ => Refusal::Malformed(format!("the body is not valid JSON: {inner}")),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| Refusal::Malformed(format!("the body is not valid JSON: {e}")))?;
    check(order, limits)
}

fn check(order: PlaceOrder, limits: Limits) -> Result<CheckedOrder, Refusal> {
    let max_items = limits.max_items;
    let customer = order.customer_id.trim();
    if customer.is_empty() || customer.chars().count() > 128 {
        return Err(invalid("customerId", "must be 1 to 128 characters"));
    }
    if order.currency.len() != 3 || !order.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(
            "currency",
            "must be an ISO 4217 code of three capital letters, e.g. EUR",
        ));
    }
    if order.items.is_empty() {
        return Err(invalid("items", "an order needs at least one item"));
    }
    if order.items.len() > max_items {
        return Err(invalid(
            "items",
            format!("at most {max_items} items per order"),
        ));
    }
    let mut total: i64 = 0;
    let mut items = Vec::with_capacity(order.items.len());
    for (i, item) in order.items.into_iter().enumerate() {
        let product = item.product_id.trim();
        if product.is_empty() || product.chars().count() > 128 {
            return Err(invalid(
                format!("items[{i}].productId"),
                "must be 1 to 128 characters",
            ));
        }
        if !(1..=10_000).contains(&item.quantity) {
            return Err(invalid(
                format!("items[{i}].quantity"),
                "must be between 1 and 10000",
            ));
        }
        if !(0..=100_000_000).contains(&item.unit_price) {
            return Err(invalid(
                format!("items[{i}].unitPrice"),
                "must be between 0 and 100000000 (minor units)",
            ));
        }
        total = item
            .quantity
            .checked_mul(item.unit_price)
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| invalid("items", "the order total is too large"))?;
        items.push(OrderItem {
            product_id: product.to_owned(),
            quantity: u32::try_from(item.quantity).unwrap_or(u32::MAX),
            unit_price_minor: item.unit_price,
        });
    }
    let products: std::collections::BTreeSet<&str> =
        items.iter().map(|i| i.product_id.as_str()).collect();
    if products.len() > limits.max_products {
        return Err(invalid(
            "items",
            format!(
                "at most {} distinct products per order ({} given): split the order",
                limits.max_products,
                products.len()
            ),
        ));
    }
    Ok(CheckedOrder {
        customer_id: customer.to_owned(),
        items,
        currency: order.currency,
        total_minor: total,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn field_of(body: &str) -> String {
        match parse(body.as_bytes(), Limits::items(100)).unwrap_err() {
            Refusal::Invalid { field, .. } => field,
            Refusal::Malformed(m) => panic!("malformed: {m}"),
        }
    }

    #[test]
    fn a_good_order_sums_its_lines() {
        let order = parse(
            br#"{"customerId":"c-1","currency":"EUR","items":[{"productId":"p","quantity":2,"unitPrice":250},{"productId":"q","quantity":1,"unitPrice":100}]}"#,
            Limits::items(100),
        )
        .unwrap();
        assert_eq!(order.total_minor, 600);
        assert_eq!(order.items.len(), 2);
    }

    #[test]
    fn broken_json_is_malformed_not_invalid() {
        for body in [
            "{",
            "",
            "nope",
            r#"{"customerId":"c","currency":"EUR","items":[{"productId":"p","quantity":1,"unitPrice":1}]} trailing"#,
        ] {
            assert!(
                matches!(
                    parse(body.as_bytes(), Limits::items(10)),
                    Err(Refusal::Malformed(_))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn refusals_name_the_offending_field() {
        let item = |q: &str, p: &str| {
            format!(
                r#"{{"customerId":"c","currency":"EUR","items":[{{"productId":"p","quantity":{q},"unitPrice":{p}}}]}}"#
            )
        };
        assert_eq!(field_of(&item("\"two\"", "1")), "items[0].quantity");
        assert_eq!(field_of(&item("-1", "1")), "items[0].quantity");
        assert_eq!(field_of(&item("1", "-5")), "items[0].unitPrice");
        assert_eq!(
            field_of(r#"{"customerId":"c","currency":"euro","items":[]}"#),
            "currency"
        );
        assert_eq!(
            field_of(r#"{"customerId":"c","currency":"EUR","items":[]}"#),
            "items"
        );
        assert_eq!(field_of(r#"{"currency":"EUR","items":[]}"#), "body");
        assert_eq!(field_of(r#"[1,2]"#), "body");
    }

    #[test]
    fn unicode_is_kept_and_too_many_items_are_refused() {
        let order = parse(
            r#"{"customerId":"Zoë 🚀","currency":"EUR","items":[{"productId":"tée","quantity":1,"unitPrice":1}]}"#.as_bytes(),
            Limits::items(10),
        )
        .unwrap();
        assert_eq!(order.customer_id, "Zoë 🚀");
        let items = [r#"{"productId":"p","quantity":1,"unitPrice":1}"#; 101].join(",");
        let body = format!(r#"{{"customerId":"c","currency":"EUR","items":[{items}]}}"#);
        assert_eq!(field_of(&body), "items");
    }

    #[test]
    fn too_many_distinct_products_are_refused_while_lines_of_one_product_add_up() {
        let limits = Limits {
            max_items: 100,
            max_products: 3,
        };
        let body = |products: &[&str]| {
            let items: Vec<String> = products
                .iter()
                .map(|p| format!(r#"{{"productId":"{p}","quantity":1,"unitPrice":1}}"#))
                .collect();
            format!(
                r#"{{"customerId":"c","currency":"EUR","items":[{}]}}"#,
                items.join(",")
            )
        };
        let same = body(&["a", "b", "c", "a", "b", "c", "a"]);
        assert_eq!(parse(same.as_bytes(), limits).unwrap().items.len(), 7);
        match parse(body(&["a", "b", "c", "d"]).as_bytes(), limits) {
            Err(Refusal::Invalid { field, detail }) => {
                assert_eq!(field, "items");
                assert!(detail.contains("at most 3 distinct products"), "{detail}");
            }
            other => panic!("four products accepted: {other:?}"),
        }
    }
}
