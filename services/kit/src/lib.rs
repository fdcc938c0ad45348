//! The event runtime every sagashop service is built on.
//!
//! It sits between the services' domain code and Kafka: [`kafka`] turns one validated
//! [`KafkaConfig`] into producer, consumer and admin clients whose settings carry the design's
//! delivery promises; [`headers`] maps the contracts' envelope metadata onto record headers;
//! [`admin`] creates the topics a service needs; [`telemetry`] sets up logging.
//!
//! Services publish with a [`Publisher`] (acknowledged or a typed error; "unavailable" is what
//! the HTTP edge turns into 503) and consume with a [`Processor`] running a [`Router`] of typed
//! handlers: ordered per key, concurrent across keys, offsets committed only through the last
//! contiguous finished record, transient failures retried with backoff ([`retry`]), everything
//! else sent to a dead-letter topic ([`dlq`]).
//!
//! Modules import one way (checked by `tests/layering.rs`), so kit reads bottom up:
//! `error`, `task`, [`record`] (the consumed [`Record`] and the [`Outgoing`] one), [`kafka`] and
//! [`security`]; then [`reader`], [`store`], [`publisher`] and `transaction`; then `handling`
//! (what handling one record means), `group` (consumer group membership), `exactly_once` and
//! at the top [`processor`] and [`committer`]. Each module names the module that defines what
//! it uses; the re-exports below are for the services.

pub mod admin;
pub mod committer;
pub mod dlq;
mod error;
mod exactly_once;
pub mod exit;
pub mod expiry;
mod group;
mod handling;
pub mod headers;
pub mod http;
pub mod kafka;
pub mod locks;
pub mod monitor;
pub mod offsets;
mod partitions;
pub mod processor;
pub mod publisher;
pub mod reader;
pub mod record;
pub mod redelivery;
pub mod retry;
pub mod router;
pub mod security;
pub mod service;
pub mod store;
mod task;
pub mod telemetry;
mod transaction;
pub mod wiring;

pub use committer::{CommitError, Committer, CommitterConfig};
pub use error::Error;
pub use expiry::Expiry;
pub use http::ops_router;
pub use kafka::{ClusterInfo, IsolationLevel, KafkaConfig};
pub use locks::KeyLocks;
pub use monitor::{Heartbeat, Monitor, ReadyFlag};
pub use processor::{DedupeKey, Processor, ProcessorConfig, Stats, StatsSnapshot};
pub use publisher::{Delivered, PublishError, Publisher};
pub use record::{Outgoing, Record};
pub use redelivery::RetryTopic;
pub use retry::RetryPolicy;
pub use router::{FailurePolicy, HandlerError, HandlerResult, Router};
pub use service::{Context, Figure, Running};
pub use store::Store;
pub use task::Task;
pub use transaction::fence;
pub use wiring::{Processing, Wiring};
