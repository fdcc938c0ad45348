//! Fixtures for sagashop's integration tests, which run against real infrastructure.
//!
//! [`TestKafka`] finds the broker that `scripts/kafka up` (or `scripts/test`) started and gives
//! each test its own uniquely named topics and groups, so tests run in parallel without seeing
//! each other's data. [`TestKube`] does the same for the Kubernetes API server that
//! `scripts/kube up` started (found through `KUBECONFIG`), with a namespace per test, and
//! [`tool`] finds `kubectl`, `helm`, `k6` and `kcat` where `scripts/tools` put them.
//! There is no skipping: a test that needs infrastructure and finds none fails with a message
//! that says how to start it.

// Test support: panicking with a clear message is how a fixture reports a broken environment.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod ceiling;
pub mod cpu;
mod events;
mod kafka;
mod kube;
pub mod metrics;
mod wait;

pub use events::sequenced;
pub use kafka::{OwnBroker, TestKafka};
pub use kube::{TestKube, tool};
pub use wait::eventually;

/// `~/.cache/sagashop` or `$SAGASHOP_CACHE_DIR`: where the scripts keep state.
fn cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    std::env::var_os("SAGASHOP_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("sagashop")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/sagashop")))
}

/// A name no other test run uses: `{prefix}-{random}`, valid as a Kafka topic or group id.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
