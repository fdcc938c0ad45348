//! Test events: real contracts with a sequence number to check order and exactly-once.

use chrono::Utc;
use sagashop_contracts::Envelope;
use sagashop_contracts::events::{SagaStepChanged, StepPhase};

/// A `SagaStepChanged` keyed `key` whose `attempt` field carries the sequence number `seq`.
pub fn sequenced(key: &str, seq: u32) -> Envelope<SagaStepChanged> {
    Envelope::new(
        key,
        key,
        SagaStepChanged {
            saga_id: key.to_owned(),
            saga_name: "test".to_owned(),
            step: "s".to_owned(),
            phase: StepPhase::Started,
            attempt: seq,
            detail: None,
            at: Utc::now(),
        },
    )
}
