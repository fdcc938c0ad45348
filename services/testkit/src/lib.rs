//! Fixtures for sagashop's integration tests, which run against real infrastructure.
//!
//! [`TestKafka`] finds the broker that `scripts/kafka up` (or `scripts/test`) started and gives
//! each test its own uniquely named topics and groups, so tests run in parallel without seeing
//! each other's data. There is no skipping: a test that needs a broker and finds none fails with
//! a message that says how to start one.

// Test support: panicking with a clear message is how a fixture reports a broken environment.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod kafka;
mod wait;

pub use kafka::TestKafka;
pub use wait::eventually;

/// A name no other test run uses: `{prefix}-{random}`, valid as a Kafka topic or group id.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
