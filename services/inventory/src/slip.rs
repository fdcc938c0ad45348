//! The routing slip that carries one reservation (or release) from product to product.
//!
//! Stock is per product, an order holds several products, and every product's stock must have
//! exactly one writer however many replicas run. So a command (keyed by saga) is turned into a
//! slip keyed by its first product; the owner of that product's partition takes (or gives back)
//! its stock and passes the slip on, keyed by the next product, and the last product's owner
//! answers the saga. A product that lacks stock turns the slip around: it walks back over the
//! products already taken, giving their stock back, and then answers "refused". Each hop is one
//! exactly-once transaction, and each product remembers per saga what it did (its hold), so a
//! slip delivered twice, or a duplicate command's second slip, changes nothing twice.

use std::collections::BTreeMap;

use sagashop_contracts::Metadata;
use sagashop_contracts::commands::{SagaOutcome, StepContext};
use sagashop_contracts::events::OrderItem;
use serde::{Deserialize, Serialize};

/// The `event-type` of slips on the slip topic.
pub const SLIP: &str = "InventorySlip";
/// The `event-type` of stock seeds on the slip topic.
pub const SEED: &str = "InventorySeed";

/// What a slip does at each product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// Take the stock, forwards; turns into `Undo` at a product that lacks it.
    Reserve,
    /// Give back what this saga's reservation took, backwards, then answer "refused".
    Undo,
    /// The compensation: give back whatever the saga holds, forwards, then answer "done".
    Release,
    /// The saga ended: mark each product's hold as finished work, forwards, and answer no one.
    End {
        /// How the saga ended.
        outcome: SagaOutcome,
    },
}

/// One product's share of a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    /// The product (the slip's key at this hop).
    pub product_id: String,
    /// Units.
    pub quantity: i64,
}

/// A reservation or release on its way through the products.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Slip {
    /// What it does.
    pub mode: Mode,
    /// The saga step it answers.
    pub context: StepContext,
    /// The command it answers (`ReserveInventory`, `ReleaseInventory`).
    pub command: String,
    /// Where the answer goes.
    pub reply_to: String,
    /// One line per product, in product order.
    pub lines: Vec<Line>,
    /// The line at hand.
    pub at: usize,
    /// Why the reservation was refused (`Undo` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl Slip {
    /// The lines of `items`: one per product (quantities of a product listed twice added up),
    /// in product order, so every slip of an order visits products in the same order.
    pub fn lines(items: &[OrderItem]) -> Vec<Line> {
        let mut by_product: BTreeMap<&str, i64> = BTreeMap::new();
        for item in items {
            *by_product.entry(item.product_id.as_str()).or_default() += i64::from(item.quantity);
        }
        by_product
            .into_iter()
            .map(|(product_id, quantity)| Line {
                product_id: product_id.to_owned(),
                quantity,
            })
            .collect()
    }

    /// The line at hand, if the slip has one.
    pub fn line(&self) -> Option<&Line> {
        self.lines.get(self.at)
    }

    /// Passes the slip on in its mode: to the next line, or done.
    pub fn advance(mut self) -> After {
        match self.mode {
            Mode::Reserve => {
                self.at += 1;
                if self.at < self.lines.len() {
                    After::Forward(self)
                } else {
                    After::Succeeded(self)
                }
            }
            // Nothing walks back over a release or an end: the slip drops the lines behind
            // it, so each hop carries only what is still to do.
            Mode::Release | Mode::End { .. } => {
                self.lines
                    .drain(..=self.at.min(self.lines.len().saturating_sub(1)));
                self.at = 0;
                if self.lines.is_empty() {
                    After::Succeeded(self)
                } else {
                    After::Forward(self)
                }
            }
            Mode::Undo => match self.at.checked_sub(1) {
                Some(at) => {
                    self.at = at;
                    After::Forward(self)
                }
                None => {
                    let reason = self.refused.clone().unwrap_or_default();
                    After::Refused(self, reason)
                }
            },
        }
    }

    /// Turns a reservation around at the line at hand, which was refused for `reason`: back
    /// over the lines before it, or answered at once when there are none.
    pub fn refuse(mut self, reason: String) -> After {
        self.mode = Mode::Undo;
        self.refused = Some(reason);
        self.advance()
    }
}

/// Where a slip goes after its line is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    /// On to the line it now points at.
    Forward(Slip),
    /// Done: answer "done".
    Succeeded(Slip),
    /// Done: answer "refused", with the reason.
    Refused(Slip, String),
}

/// What one product remembers of one saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum Hold {
    /// Stock taken.
    Reserved {
        /// Units.
        quantity: i64,
    },
    /// Given back (or released before it was ever reserved: a late reservation is refused).
    Released,
    /// Refused: not enough stock.
    Refused {
        /// Why.
        reason: String,
    },
    /// Taken, and the saga completed: the stock stays taken. Finished work.
    Committed {
        /// Units.
        quantity: i64,
    },
    /// Given back or refused, and the saga ended. Finished work.
    Closed,
}

impl Hold {
    /// Whether the saga has ended, so that the hold is finished work.
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Committed { .. } | Self::Closed)
    }
}

/// The key of a saga's hold on a product.
pub fn hold_key(saga_id: &str, product_id: &str) -> String {
    format!("{saga_id}/{product_id}")
}

/// A stock seed: sets a product's stock if it has none yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seed {
    /// The product (the record's key).
    pub product_id: String,
    /// Its opening stock.
    pub quantity: i64,
}

/// Metadata for a slip or seed caused by `parent` (or starting a correlation).
pub fn metadata(event_type: &str, parent: Option<&Metadata>, correlation_id: &str) -> Metadata {
    let base = match parent {
        Some(parent) => Metadata::caused_by::<sagashop_contracts::commands::StepSucceeded>(parent),
        None => Metadata::new::<sagashop_contracts::commands::StepSucceeded>(correlation_id),
    };
    Metadata {
        event_type: event_type.to_owned(),
        schema_version: 1,
        ..base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(product: &str, quantity: u32) -> OrderItem {
        OrderItem {
            product_id: product.to_owned(),
            quantity,
            unit_price_minor: 100,
        }
    }

    fn slip(mode: Mode, lines: Vec<Line>) -> Slip {
        Slip {
            mode,
            context: StepContext {
                saga_id: "o-1".into(),
                saga_name: "order".into(),
                step: "reserve-inventory".into(),
                attempt: 1,
                succeeded_before: false,
            },
            command: "ReserveInventory".into(),
            reply_to: "replies".into(),
            lines,
            at: 0,
            refused: None,
        }
    }

    #[test]
    fn lines_add_up_a_product_listed_twice_and_come_in_product_order() {
        let lines = Slip::lines(&[item("sku-2", 1), item("sku-1", 2), item("sku-2", 3)]);
        let got: Vec<(&str, i64)> = lines
            .iter()
            .map(|l| (l.product_id.as_str(), l.quantity))
            .collect();
        assert_eq!(got, vec![("sku-1", 2), ("sku-2", 4)]);
    }

    #[test]
    fn a_reservation_walks_forwards_and_succeeds_after_its_last_product() {
        let s = slip(Mode::Reserve, Slip::lines(&[item("a", 1), item("b", 1)]));
        let After::Forward(s) = s.advance() else {
            panic!("a second product is next")
        };
        assert_eq!(s.line().unwrap().product_id, "b");
        assert!(matches!(s.advance(), After::Succeeded(_)));
    }

    #[test]
    fn a_refused_reservation_walks_back_over_the_products_it_took() {
        let lines = Slip::lines(&[item("a", 1), item("b", 1), item("c", 1)]);
        let mut s = slip(Mode::Reserve, lines);
        s.at = 2;
        let After::Forward(back) = s.refuse("out of stock: c".into()) else {
            panic!("b is given back first")
        };
        assert_eq!((back.mode, back.at), (Mode::Undo, 1));
        let After::Forward(back) = back.advance() else {
            panic!("then a")
        };
        assert_eq!(back.at, 0);
        assert_eq!(
            back.advance(),
            After::Refused(
                Slip {
                    mode: Mode::Undo,
                    at: 0,
                    refused: Some("out of stock: c".into()),
                    ..slip(
                        Mode::Reserve,
                        Slip::lines(&[item("a", 1), item("b", 1), item("c", 1)])
                    )
                },
                "out of stock: c".into()
            )
        );
    }

    #[test]
    fn a_reservation_refused_at_its_first_product_answers_at_once() {
        let s = slip(Mode::Reserve, Slip::lines(&[item("a", 1), item("b", 1)]));
        assert!(matches!(
            s.refuse("out of stock: a".into()),
            After::Refused(_, reason) if reason == "out of stock: a"
        ));
    }

    #[test]
    fn a_release_walks_every_product_carrying_only_what_is_left_and_succeeds() {
        let s = slip(
            Mode::Release,
            Slip::lines(&[item("a", 1), item("b", 1), item("c", 1)]),
        );
        let After::Forward(s) = s.advance() else {
            panic!("b is next")
        };
        assert_eq!(s.line().unwrap().product_id, "b");
        assert_eq!(s.lines.len(), 2, "a is done and no longer carried");
        let After::Forward(s) = s.advance() else {
            panic!("c is next")
        };
        assert_eq!(s.lines.len(), 1);
        assert!(matches!(s.advance(), After::Succeeded(_)));
    }
}
