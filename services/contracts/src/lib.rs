//! sagashop's event contracts: what travels on Kafka between the services.
//!
//! Every message is an [`Envelope`]: a key (the order id, so one order's messages stay in one
//! partition and in order), [`Metadata`] carried in Kafka headers (`event-type`,
//! `schema-version`, `message-id`, `correlation-id`, `causation-id`, W3C `traceparent` /
//! `tracestate`) and a JSON payload whose type implements [`Contract`].
//!
//! The payload types — the order saga's [`events`] and [`commands`] — are the single source of
//! truth: [`catalogue`] renders one JSON Schema per event type and version, and a test keeps the
//! committed copies under `services/contracts/schemas/` current. This crate knows nothing about
//! Kafka clients; `sagashop-kit` maps [`Metadata`] to and from record headers.

/// Implements [`Contract`] for a payload type: `contract!(Type, "EventType", version)`.
macro_rules! contract {
    ($ty:ty, $name:literal, $version:literal) => {
        impl $crate::Contract for $ty {
            const EVENT_TYPE: &'static str = $name;
            const SCHEMA_VERSION: u32 = $version;
        }
    };
}

mod catalogue;
pub mod commands;
mod envelope;
pub mod events;

pub use catalogue::{SchemaEntry, catalogue};
pub use envelope::{Contract, DecodeError, EncodeError, Envelope, Metadata, header};
