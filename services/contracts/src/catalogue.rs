//! The catalogue: every contract with its JSON Schema, one file per event type and version.

use std::path::Path;

use schemars::{Schema, SchemaGenerator};

use crate::Contract;
use crate::commands::{
    AuthorizePayment, CancelShipment, CreateShipment, RefundPayment, ReleaseInventory,
    ReserveInventory, SagaCancelRequested, SagaEnded, SagaRetryRequested, StepFailed,
    StepSucceeded, StepTimedOut,
};
use crate::events::{
    AnalyticsSnapshot, OrderCancelled, OrderCompleted, OrderDelivered, OrderPlaced, OrderShipped,
    SagaStepChanged,
};

/// One contract's identity and schema.
#[derive(Debug, Clone)]
pub struct SchemaEntry {
    /// The `event-type` header value.
    pub event_type: &'static str,
    /// The `schema-version` header value.
    pub version: u32,
    schema: Schema,
}

impl SchemaEntry {
    fn of<C: Contract>() -> Self {
        let mut schema = SchemaGenerator::default().into_root_schema_for::<C>();
        schema.insert("title".into(), C::EVENT_TYPE.into());
        schema.insert("x-event-type".into(), C::EVENT_TYPE.into());
        schema.insert("x-schema-version".into(), C::SCHEMA_VERSION.into());
        Self {
            event_type: C::EVENT_TYPE,
            version: C::SCHEMA_VERSION,
            schema,
        }
    }

    /// The committed file's name, e.g. `OrderPlaced.v1.json`.
    pub fn file_name(&self) -> String {
        format!("{}.v{}.json", self.event_type, self.version)
    }

    /// The schema document as committed: pretty JSON with a trailing newline.
    pub fn render(&self) -> String {
        // A `Schema` is a JSON value; writing one to a String cannot fail.
        let mut text = serde_json::to_string_pretty(&self.schema).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Writes the schema into `dir` (which must exist).
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join(self.file_name()), self.render())
    }
}

/// Every contract sagashop publishes, in a stable order.
pub fn catalogue() -> Vec<SchemaEntry> {
    vec![
        SchemaEntry::of::<OrderPlaced>(),
        SchemaEntry::of::<OrderCompleted>(),
        SchemaEntry::of::<OrderCancelled>(),
        SchemaEntry::of::<OrderShipped>(),
        SchemaEntry::of::<OrderDelivered>(),
        SchemaEntry::of::<SagaStepChanged>(),
        SchemaEntry::of::<AnalyticsSnapshot>(),
        SchemaEntry::of::<ReserveInventory>(),
        SchemaEntry::of::<ReleaseInventory>(),
        SchemaEntry::of::<AuthorizePayment>(),
        SchemaEntry::of::<RefundPayment>(),
        SchemaEntry::of::<CreateShipment>(),
        SchemaEntry::of::<CancelShipment>(),
        SchemaEntry::of::<StepSucceeded>(),
        SchemaEntry::of::<StepFailed>(),
        SchemaEntry::of::<StepTimedOut>(),
        SchemaEntry::of::<SagaCancelRequested>(),
        SchemaEntry::of::<SagaRetryRequested>(),
        SchemaEntry::of::<SagaEnded>(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_contract_has_a_unique_name_and_version() {
        let entries = catalogue();
        let names: HashSet<_> = entries.iter().map(SchemaEntry::file_name).collect();
        assert_eq!(
            names.len(),
            entries.len(),
            "two contracts share a file name"
        );
    }

    #[test]
    fn schemas_use_the_wire_field_names() {
        let placed = catalogue()
            .into_iter()
            .find(|e| e.event_type == "OrderPlaced")
            .unwrap();
        let text = placed.render();
        for field in [
            "orderId",
            "customerId",
            "unitPriceMinor",
            "totalMinor",
            "placedAt",
        ] {
            assert!(
                text.contains(&format!("\"{field}\"")),
                "{field} missing from {text}"
            );
        }
        assert!(
            !text.contains("order_id"),
            "snake_case leaked into the schema"
        );
    }
}
