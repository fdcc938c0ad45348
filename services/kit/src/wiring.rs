//! A service's wiring: which consumer group it joins, which topics it reads and writes (by
//! role), where its dead letters go, how it reads (isolation level), how it processes
//! (exactly-once or at-least-once), how it retries, and how its transactional ids are named.
//!
//! One typed value, written as `<service>.json`: the operator generates it from the `Saga`
//! resource into the ConfigMap every service mounts, and `sagashop dev` builds the same value
//! from the same Saga file. A service runs on what its wiring says and names no topic itself.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::handling::ProcessorConfig;
use crate::kafka::IsolationLevel;
use crate::retry::RetryPolicy;

/// How a service's consumer turns inputs into outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Processing {
    /// Outputs, state changes and input offsets commit in one Kafka transaction per batch.
    ExactlyOnce,
    /// Outputs are published, then the input offset is committed; a redelivery is deduped.
    AtLeastOnce,
}

/// [`RetryPolicy`] as it is written: durations in humantime text (`100ms`, `10s`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The backoff ceiling before the first retry.
    pub initial_backoff: String,
    /// The largest backoff ceiling.
    pub max_backoff: String,
}

impl From<RetryPolicy> for RetrySettings {
    fn from(policy: RetryPolicy) -> Self {
        Self {
            max_attempts: policy.max_attempts,
            initial_backoff: humantime::format_duration(policy.initial_backoff).to_string(),
            max_backoff: humantime::format_duration(policy.max_backoff).to_string(),
        }
    }
}

impl RetrySettings {
    /// The policy, or what is wrong with the text.
    pub fn policy(&self) -> Result<RetryPolicy, String> {
        let duration = |name: &str, text: &str| {
            humantime::parse_duration(text).map_err(|e| format!("retry.{name} `{text}`: {e}"))
        };
        if self.max_attempts == 0 {
            return Err("retry.maxAttempts must be at least 1".to_owned());
        }
        Ok(RetryPolicy {
            max_attempts: self.max_attempts,
            initial_backoff: duration("initialBackoff", &self.initial_backoff)?,
            max_backoff: duration("maxBackoff", &self.max_backoff)?,
        })
    }
}

/// Everything a service needs to know about its place in the system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Wiring {
    /// The service's name (`payment`); also its `<service>.json` file name.
    pub service: String,
    /// The consumer group its replicas share.
    pub group_id: String,
    /// Every topic it reads or writes, by the role the service gives it (`commands`,
    /// `balances`, ...).
    pub topics: BTreeMap<String, String>,
    /// The roles of `topics` its consumer subscribes to.
    pub inputs: Vec<String>,
    /// The roles of `topics` that are its state stores' changelogs.
    #[serde(default)]
    pub state: Vec<String>,
    /// Where records it gives up on go.
    pub dead_letter_topic: String,
    /// How its consumer reads.
    pub isolation_level: IsolationLevel,
    /// How it processes.
    pub processing: Processing,
    /// In-place retry of transient handler failures.
    pub retry: RetrySettings,
    /// Its transactional ids are `<instance>-<this>` (the instance is the pod name): stable
    /// across a replica's restarts, unique among replicas. Absent for a service without
    /// transactions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactional_id: Option<String>,
}

impl Wiring {
    /// The topic of `role`, or an error naming the role and the service.
    pub fn topic(&self, role: &str) -> Result<&str, Error> {
        self.topics
            .get(role)
            .map(String::as_str)
            .ok_or_else(|| Error::InvalidConfig {
                setting: "wiring",
                reason: format!(
                    "the wiring of `{}` names no `{role}` topic (it has: {})",
                    self.service,
                    self.topics.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })
    }

    /// The topics its consumer subscribes to.
    pub fn input_topics(&self) -> Result<Vec<&str>, Error> {
        self.inputs.iter().map(|role| self.topic(role)).collect()
    }

    /// This replica's transactional id, when the service has transactions.
    pub fn transactional_id(&self, instance: &str) -> Option<String> {
        self.transactional_id
            .as_ref()
            .map(|suffix| format!("{instance}-{suffix}"))
    }

    /// Checks what types cannot: every role named is a topic, the retry is readable, and
    /// exactly-once processing reads committed data and has transactional ids.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| Error::InvalidConfig {
            setting: "wiring",
            reason: format!("`{}`: {reason}", self.service),
        };
        for role in self.inputs.iter().chain(&self.state) {
            self.topic(role)?;
        }
        if self.inputs.is_empty() {
            return Err(invalid("it reads no topic (`inputs` is empty)".to_owned()));
        }
        self.retry.policy().map_err(invalid)?;
        if self.processing == Processing::ExactlyOnce {
            if self.isolation_level != IsolationLevel::ReadCommitted {
                return Err(invalid(
                    "exactly-once processing needs isolationLevel read_committed".to_owned(),
                ));
            }
            if self.transactional_id.is_none() {
                return Err(invalid(
                    "exactly-once processing needs a transactionalId".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// Refuses an exactly-once wiring whose in-place retries can outlast `transaction_timeout`
    /// (the broker's bound on an open transaction): a record retried that long sees its
    /// transaction aborted under it, is handled again from the start, and loops for ever.
    pub fn fits_transaction(&self, transaction_timeout: Duration) -> Result<(), Error> {
        if self.processing != Processing::ExactlyOnce {
            return Ok(());
        }
        let budget = self.retry.policy().map(|p| p.budget()).unwrap_or_default();
        if budget < transaction_timeout {
            return Ok(());
        }
        Err(Error::InvalidConfig {
            setting: "wiring",
            reason: format!(
                "`{}`: its in-place retries can wait {} in all, which reaches the {} transaction \
                 timeout (a record retried that long has its transaction aborted under it and \
                 starts again, for ever); lower retry.maxAttempts or retry.maxBackoff",
                self.service,
                humantime::format_duration(budget),
                humantime::format_duration(transaction_timeout)
            ),
        })
    }

    /// The processor settings it implies for replica `instance`; the rest are the defaults.
    pub fn processor_config(&self, instance: &str) -> Result<ProcessorConfig, Error> {
        self.validate()?;
        let mut config = ProcessorConfig::new(&self.group_id, &self.dead_letter_topic);
        config.isolation_level = self.isolation_level;
        config.retry = self.retry.policy().unwrap_or_default();
        if self.processing == Processing::ExactlyOnce {
            config.transactional_id = self.transactional_id(instance);
        }
        Ok(config)
    }

    /// The same wiring with `prefix` before its group and every topic (for several systems on
    /// one Kafka cluster: the operator writes names without a prefix).
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        if prefix.is_empty() {
            return self;
        }
        let prefixed = |name: &mut String| *name = format!("{prefix}{name}");
        prefixed(&mut self.group_id);
        prefixed(&mut self.dead_letter_topic);
        self.topics.values_mut().for_each(prefixed);
        self
    }

    /// Reads `<dir>/<service>.json`, checked.
    pub fn read(dir: &Path, service: &str) -> Result<Self, Error> {
        let path = dir.join(format!("{service}.json"));
        let invalid = |reason: String| Error::InvalidConfig {
            setting: "SAGASHOP_WIRING",
            reason: format!("{}: {reason}", path.display()),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| invalid(e.to_string()))?;
        let wiring: Self = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if wiring.service != service {
            return Err(invalid(format!(
                "it is the wiring of `{}`, not `{service}`",
                wiring.service
            )));
        }
        wiring.validate()?;
        Ok(wiring)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn payment() -> Wiring {
        Wiring {
            service: "payment".into(),
            group_id: "payment".into(),
            topics: BTreeMap::from([
                ("commands".into(), "payment.commands.v1".into()),
                ("balances".into(), "payment.balances.v1".into()),
            ]),
            inputs: vec!["commands".into()],
            state: vec!["balances".into()],
            dead_letter_topic: "payment.dlq.v1".into(),
            isolation_level: IsolationLevel::ReadCommitted,
            processing: Processing::ExactlyOnce,
            retry: RetryPolicy::default().into(),
            transactional_id: Some("payment".into()),
        }
    }

    #[test]
    fn a_retry_budget_that_reaches_the_transaction_timeout_is_refused() {
        let mut wiring = payment();
        let timeout = Duration::from_secs(10);
        assert!(wiring.fits_transaction(timeout).is_ok(), "the default fits");
        wiring.retry = RetrySettings {
            max_attempts: 4,
            initial_backoff: "2s".into(),
            max_backoff: "5s".into(),
        };
        // 2 + 4 + 5 s of waits reach the 10 s transaction timeout.
        let err = wiring.fits_transaction(timeout).unwrap_err().to_string();
        assert!(err.contains("11s") && err.contains("10s"), "{err}");
        wiring.processing = Processing::AtLeastOnce;
        assert!(
            wiring.fits_transaction(timeout).is_ok(),
            "no transaction to outlast"
        );
    }

    #[test]
    fn the_processor_runs_on_what_the_wiring_says() {
        let mut wiring = payment();
        wiring.retry = RetrySettings {
            max_attempts: 3,
            initial_backoff: "50ms".into(),
            max_backoff: "2s".into(),
        };
        let config = wiring.processor_config("payment-7c9d").unwrap();
        assert_eq!(config.group_id, "payment");
        assert_eq!(config.dead_letter_topic, "payment.dlq.v1");
        assert_eq!(
            config.transactional_id.as_deref(),
            Some("payment-7c9d-payment")
        );
        assert_eq!(config.retry.max_attempts, 3);
        assert_eq!(config.retry.initial_backoff, Duration::from_millis(50));
        assert_eq!(config.retry.max_backoff, Duration::from_secs(2));
        assert_eq!(config.isolation_level, IsolationLevel::ReadCommitted);
        assert_eq!(wiring.input_topics().unwrap(), ["payment.commands.v1"]);
    }

    #[test]
    fn it_round_trips_as_the_json_the_operator_writes() {
        let json = serde_json::to_value(payment()).unwrap();
        assert_eq!(json["groupId"], "payment");
        assert_eq!(json["isolationLevel"], "read_committed");
        assert_eq!(json["processing"], "exactly-once");
        assert_eq!(json["retry"]["initialBackoff"], "100ms");
        let back: Wiring = serde_json::from_value(json).unwrap();
        assert_eq!(back, payment());
    }

    #[test]
    fn a_wiring_that_cannot_work_is_refused_naming_what_is_wrong() {
        let mut unknown_role = payment();
        unknown_role.inputs.push("refunds".into());
        let e = unknown_role.validate().unwrap_err().to_string();
        assert!(e.contains("no `refunds` topic"), "{e}");

        let mut dirty_reads = payment();
        dirty_reads.isolation_level = IsolationLevel::ReadUncommitted;
        let e = dirty_reads.validate().unwrap_err().to_string();
        assert!(e.contains("read_committed"), "{e}");

        let mut bad_retry = payment();
        bad_retry.retry.max_backoff = "soon".into();
        let e = bad_retry.validate().unwrap_err().to_string();
        assert!(e.contains("retry.maxBackoff `soon`"), "{e}");

        let unknown_field = r#"{"service":"payment","groupId":"payment","topics":{},"inputs":[],
            "deadLetterTopic":"d","isolationLevel":"read_committed","processing":"exactly-once",
            "retry":{"maxAttempts":1,"initialBackoff":"1s","maxBackoff":"1s"},"groupID":"x"}"#;
        assert!(serde_json::from_str::<Wiring>(unknown_field).is_err());
    }

    #[test]
    fn a_prefix_goes_before_the_group_and_every_topic() {
        let wiring = payment().with_prefix("t1.");
        assert_eq!(wiring.group_id, "t1.payment");
        assert_eq!(wiring.dead_letter_topic, "t1.payment.dlq.v1");
        assert_eq!(wiring.input_topics().unwrap(), ["t1.payment.commands.v1"]);
        assert_eq!(wiring.topic("balances").unwrap(), "t1.payment.balances.v1");
        assert_eq!(payment().with_prefix(""), payment());
    }

    #[test]
    fn a_file_is_read_only_for_its_own_service() {
        let dir = std::env::temp_dir().join(format!("wiring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("payment.json"),
            serde_json::to_string(&payment()).unwrap(),
        )
        .unwrap();
        std::fs::copy(dir.join("payment.json"), dir.join("shipping.json")).unwrap();
        assert_eq!(Wiring::read(&dir, "payment").unwrap(), payment());
        let e = Wiring::read(&dir, "shipping").unwrap_err().to_string();
        assert!(e.contains("not `shipping`"), "{e}");
        let e = Wiring::read(&dir, "inventory").unwrap_err().to_string();
        assert!(e.contains("inventory.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
