//! The `Saga` definition: what the orchestrator runs, as data.
//!
//! One type serves both runtimes: the operator serves it as the `sagas.sagashop.dev` custom
//! resource, and `sagashop dev` reads the same YAML from a file. [`SagaSpec::validate`] turns a
//! spec into a [`Definition`] the orchestrator can run, or names every field that is wrong.

// KubeSchema re-emits `SagaSpec` in a private module to build its schema.
#![allow(unreachable_pub, reason = "a derive's private copy of a public type")]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use sagashop_kit::RetryPolicy;
use sagashop_kit::admin::TopicSpec;

/// A saga: steps run in order by participants; on failure, the completed steps' compensations
/// run in reverse order.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "sagashop.dev",
    version = "v1alpha1",
    kind = "Saga",
    namespaced,
    shortname = "saga",
    status = "SagaStatus",
    printcolumn = r#"{"name":"Trigger","type":"string","jsonPath":".spec.trigger.topic"}"#,
    printcolumn = r#"{"name":"Steps","type":"integer","jsonPath":".status.steps"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    doc = "A declarative saga run by the sagashop orchestrator"
)]
#[x_kube(
    validation = Rule::new("self.steps.all(s, self.steps.filter(t, t.name == s.name).size() == 1)").message("step names must be unique"),
    validation = Rule::new("self.participants.all(p, self.participants.filter(q, q.name == p.name).size() == 1)").message("participant names must be unique"),
)]
#[serde(rename_all = "camelCase")]
pub struct SagaSpec {
    /// The event that starts one saga instance; its key is the saga id.
    pub trigger: Trigger,
    /// The services that run steps, and where their commands go.
    #[schemars(length(min = 1, max = 32))]
    pub participants: Vec<Participant>,
    /// The steps, in order.
    #[schemars(length(min = 1, max = 32))]
    pub steps: Vec<Step>,
    /// Where participants reply (`StepSucceeded` / `StepFailed`); default
    /// `saga.<name>.replies.v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_topic: Option<String>,
    /// Where the saga's outcome is published.
    pub outcome: Outcome,
    /// Partitions and replicas for the topics the saga needs.
    #[serde(default)]
    pub topic_defaults: TopicDefaults,
    /// Deployments (in the saga's namespace) that run this saga's orchestrator or participants:
    /// the operator rolls them when the saga's configuration changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<String>,
}

/// What the operator last saw of a saga.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many steps the saga has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<i32>,
    /// `Pending`, `Ready` or `Invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `TopicsReady`, `ConfigReady` and `Ready` (both), with reason and message.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The Kafka topics the saga needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// The ConfigMap holding the services' configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// A hash of that configuration: the Deployments it rolled carry it as an annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The versions of the definition instances run on, as the orchestrators publish them
    /// (`saga.<name>.versions`): the spec's own first, then older ones still running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionStatus>,
}

/// One version of a saga's definition, as the status shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionStatus {
    /// The version (a hash of what instances run).
    pub version: String,
    /// Whether it is the version of the current spec: new instances start on it.
    pub current: bool,
    /// Its steps, in order.
    pub steps: Vec<String>,
    /// Instances on it that have not ended (running, compensating or `FAILED`), as the
    /// orchestrators last counted them; absent before they have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<i64>,
}

/// A status condition, as Kubernetes objects report them (shared by sagashop's resources).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// In words.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation this condition describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The event that starts a saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// The topic it arrives on.
    pub topic: String,
    /// Its `event-type`.
    pub event: String,
}

/// A service that runs steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    /// Its name, as steps refer to it.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The topic its commands go to.
    pub command_topic: String,
    /// How its handlers retry a transient failure in place before the command is
    /// dead-lettered (default: 5 attempts, backoff from 100ms up to 10s). It reaches the
    /// participant through its wiring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<StepRetry>,
}

/// One step of the saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// Unique within the saga.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The participant that runs it.
    pub participant: String,
    /// The command's `event-type`; its payload is the trigger's payload plus the step context.
    pub command: String,
    /// The command that undoes it, sent when a later step fails. Required for every step but
    /// the last (nothing can fail after the last step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<String>,
    /// How long to wait for a reply before trying again (e.g. `10s`).
    pub timeout: String,
    /// How often the command is sent in all before the saga compensates.
    #[serde(default)]
    pub retry: StepRetry,
    /// The trigger field whose value keys this step's commands (and compensations), so that
    /// the participant state they change has one owner at any number of replicas: payment's
    /// balances are per customer, so its commands are keyed by `customerId`. A JSON pointer
    /// (`/items/0/productId`) names a nested value. Default: the saga id. Replies are keyed by
    /// the saga id either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// How a step is retried after a timeout or a retryable failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepRetry {
    /// Attempts in all, the first included.
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
    /// The wait before the first retry (doubling after).
    pub initial_backoff: String,
    /// The longest wait.
    pub max_backoff: String,
}

impl Default for StepRetry {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: "200ms".to_owned(),
            max_backoff: "5s".to_owned(),
        }
    }
}

/// Where the outcome goes and what it is called.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The outcome topic.
    pub topic: String,
    /// The `event-type` when every step succeeded (payload: the trigger's, plus
    /// `completedAt`).
    pub completed: String,
    /// The `event-type` after compensating (payload: the trigger's, plus `reason`,
    /// `failedStep`, `cancelledAt`).
    pub cancelled: String,
    /// The `event-type` of progress events (`SagaStepChanged`), published to the same topic;
    /// none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
}

/// Topic sizing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicDefaults {
    /// Partitions per topic.
    #[schemars(range(min = 1))]
    pub partitions: i32,
    /// Replicas per partition.
    #[schemars(range(min = 1))]
    pub replicas: i32,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        Self {
            partitions: 4,
            replicas: 1,
        }
    }
}

/// What is wrong with a saga definition: every problem, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid saga `{name}`:\n  {}", .problems.join("\n  "))]
pub struct InvalidSaga {
    /// The saga's name.
    pub name: String,
    /// One line per problem, `<field path>: <what is wrong>`.
    pub problems: Vec<String>,
}

/// A validated saga, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// The saga's name (the resource's name).
    pub name: String,
    /// The trigger.
    pub trigger: Trigger,
    /// The steps, in order.
    pub steps: Vec<StepDefinition>,
    /// Where participants reply.
    pub reply_topic: String,
    /// Where the orchestrator keeps saga state (compacted).
    pub state_topic: String,
    /// Where the orchestrators keep every version of the definition that instances still run
    /// on (compacted, keyed by version).
    pub versions_topic: String,
    /// What the instances run: a hash of the trigger, participants' command topics, steps,
    /// reply topic and outcome. An instance runs to its end on the version it started with.
    pub version: String,
    /// The spec it was compiled from (unprefixed), published with its version so that any
    /// orchestrator can run the instances of a version it was not started with.
    pub spec: SagaSpec,
    /// The prefix of every topic name (empty in a cluster; tests and shared brokers use one).
    pub prefix: String,
    /// The outcome.
    pub outcome: Outcome,
    /// Topic sizing.
    pub topic_defaults: TopicDefaults,
    /// The participants' in-place retry, where the saga sets one.
    pub participant_retry: BTreeMap<String, RetryPolicy>,
}

/// A validated step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDefinition {
    /// Its name.
    pub name: String,
    /// Its participant's name.
    pub participant: String,
    /// Where its commands go.
    pub command_topic: String,
    /// Its command.
    pub command: String,
    /// Its compensation, if any.
    pub compensation: Option<String>,
    /// Its reply deadline.
    pub timeout: Duration,
    /// Its retries.
    pub retry: RetryPolicy,
    /// The trigger field that keys its commands (`None`: the saga id).
    pub key: Option<String>,
}

impl Definition {
    /// The same definition with every topic name prefixed by `prefix`.
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        if prefix.is_empty() {
            return self;
        }
        let prefixed = |t: &mut String| *t = format!("{prefix}{t}");
        prefixed(&mut self.trigger.topic);
        prefixed(&mut self.reply_topic);
        prefixed(&mut self.state_topic);
        prefixed(&mut self.versions_topic);
        prefixed(&mut self.outcome.topic);
        for step in &mut self.steps {
            prefixed(&mut step.command_topic);
        }
        self.prefix = format!("{prefix}{}", self.prefix);
        self
    }

    /// The topics the saga needs and who writes them: the trigger, command, reply, state and
    /// outcome topics.
    pub fn topics(&self) -> Vec<String> {
        let mut topics = vec![
            self.trigger.topic.clone(),
            self.reply_topic.clone(),
            self.state_topic.clone(),
            self.versions_topic.clone(),
            self.outcome.topic.clone(),
        ];
        for step in &self.steps {
            if !topics.contains(&step.command_topic) {
                topics.push(step.command_topic.clone());
            }
        }
        topics
    }

    /// The consumer group of the saga's orchestrators (before any prefix).
    pub fn orchestrator_group(&self) -> String {
        format!("saga-{}", self.name)
    }

    /// The participants' names, in the order their first step runs.
    pub fn participants(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for step in &self.steps {
            if !names.contains(&step.participant.as_str()) {
                names.push(&step.participant);
            }
        }
        names
    }

    /// Every topic the saga needs, sized by its topic defaults: trigger, commands, replies and
    /// outcome as plain topics, the state topic compacted, and a dead-letter topic for the
    /// orchestrator and for each participant. `sagashop dev` creates these; the operator
    /// declares them as `KafkaTopic`s.
    pub fn topic_specs(&self) -> Vec<TopicSpec> {
        let replicas = self.topic_defaults.replicas;
        let plain = |name: String| {
            TopicSpec::new(name, self.topic_defaults.partitions).replicated(replicas)
        };
        let mut specs: Vec<TopicSpec> = self
            .topics()
            .into_iter()
            .map(|topic| {
                if topic == self.state_topic {
                    plain(topic).changelog()
                } else if topic == self.versions_topic {
                    // A handful of records, read whole by every orchestrator.
                    TopicSpec::new(topic, 1).replicated(replicas).changelog()
                } else {
                    plain(topic)
                }
            })
            .collect();
        for service in std::iter::once(ORCHESTRATOR).chain(self.participants()) {
            let dlq = dead_letter_topic(service);
            if !specs.iter().any(|s| s.name == dlq) {
                specs.push(plain(dlq));
            }
        }
        specs
    }

    /// The step called `name`, with its index.
    pub fn step(&self, name: &str) -> Option<(usize, &StepDefinition)> {
        self.steps.iter().enumerate().find(|(_, s)| s.name == name)
    }
}

/// The name the orchestrator goes by as a service (its dead-letter topic, its configuration).
pub const ORCHESTRATOR: &str = "orchestrator";

/// The dead-letter topic of `service` (a participant's name, or [`ORCHESTRATOR`]).
pub fn dead_letter_topic(service: &str) -> String {
    format!("{service}.dlq.v1")
}

/// A retry setting as a policy, each problem naming its field under `field`.
fn policy(problems: &mut Vec<String>, field: &str, retry: &StepRetry) -> RetryPolicy {
    if retry.max_attempts == 0 {
        problems.push(format!("{field}.maxAttempts: must be at least 1"));
    }
    let initial = duration(
        problems,
        &format!("{field}.initialBackoff"),
        &retry.initial_backoff,
    );
    let max = duration(problems, &format!("{field}.maxBackoff"), &retry.max_backoff);
    if max < initial {
        problems.push(format!("{field}.maxBackoff: shorter than initialBackoff"));
    }
    RetryPolicy {
        max_attempts: retry.max_attempts,
        initial_backoff: initial,
        max_backoff: max,
    }
}

fn duration(problems: &mut Vec<String>, field: &str, text: &str) -> Duration {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            problems.push(format!("{field}: must be longer than zero"));
            d
        }
        Ok(d) => d,
        Err(e) => {
            problems.push(format!(
                "{field}: `{text}` is not a duration like `10s` or `500ms` ({e})"
            ));
            Duration::ZERO
        }
    }
}

/// Topic names Kafka accepts: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn topic_name(problems: &mut Vec<String>, field: &str, name: &str) {
    let legal = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > 249 || !legal || name == "." || name == ".." {
        problems.push(format!(
            "{field}: `{name}` is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
        ));
    }
}

impl SagaSpec {
    /// Checks the spec of the saga called `name` and compiles it, or lists every problem.
    pub fn validate(&self, name: &str) -> Result<Definition, InvalidSaga> {
        let mut problems = Vec::new();
        topic_name(&mut problems, "spec.trigger.topic", &self.trigger.topic);
        if self.trigger.event.is_empty() {
            problems.push("spec.trigger.event: must not be empty".to_owned());
        }
        let participant_retry = self.validate_participants(&mut problems);
        let steps = self.validate_steps(&mut problems);
        let reply_topic = self
            .reply_topic
            .clone()
            .unwrap_or_else(|| format!("saga.{name}.replies.v1"));
        topic_name(&mut problems, "spec.replyTopic", &reply_topic);
        topic_name(&mut problems, "spec.outcome.topic", &self.outcome.topic);
        for (field, event) in [
            ("spec.outcome.completed", &self.outcome.completed),
            ("spec.outcome.cancelled", &self.outcome.cancelled),
        ] {
            if event.is_empty() {
                problems.push(format!("{field}: must not be empty"));
            }
        }
        if self.topic_defaults.partitions < 1 {
            problems.push("spec.topicDefaults.partitions: must be at least 1".to_owned());
        }
        if self.topic_defaults.replicas < 1 {
            problems.push("spec.topicDefaults.replicas: must be at least 1".to_owned());
        }
        if !problems.is_empty() {
            return Err(InvalidSaga {
                name: name.to_owned(),
                problems,
            });
        }
        Ok(Definition {
            name: name.to_owned(),
            trigger: self.trigger.clone(),
            steps,
            version: self.version(&reply_topic),
            reply_topic,
            state_topic: format!("saga.{name}.state"),
            versions_topic: format!("saga.{name}.versions"),
            spec: self.clone(),
            prefix: String::new(),
            outcome: self.outcome.clone(),
            topic_defaults: self.topic_defaults.clone(),
            participant_retry,
        })
    }

    /// The version of what instances run: a hash of the trigger, the participants' command
    /// topics, the steps, the reply topic and the outcome (not of topic sizing, deployments or
    /// the participants' in-place retry, which running instances do not see).
    fn version(&self, reply_topic: &str) -> String {
        let participants: Vec<(&str, &str)> = self
            .participants
            .iter()
            .map(|p| (p.name.as_str(), p.command_topic.as_str()))
            .collect();
        let what = serde_json::json!([
            self.trigger,
            participants,
            self.steps,
            reply_topic,
            self.outcome
        ]);
        // FNV-1a: stable across builds and machines, unlike the standard library's hasher.
        let hash = what
            .to_string()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        format!("{:012x}", hash >> 16)
    }

    /// Checks the participants; returns the in-place retry of those that set one.
    fn validate_participants(&self, problems: &mut Vec<String>) -> BTreeMap<String, RetryPolicy> {
        if self.participants.is_empty() {
            problems.push("spec.participants: a saga needs at least one participant".to_owned());
        }
        let mut participant_names = HashSet::new();
        let mut participant_retry = BTreeMap::new();
        for (i, p) in self.participants.iter().enumerate() {
            if !participant_names.insert(p.name.as_str()) {
                problems.push(format!(
                    "spec.participants[{i}].name: `{}` is declared twice",
                    p.name
                ));
            }
            topic_name(
                problems,
                &format!("spec.participants[{i}].commandTopic"),
                &p.command_topic,
            );
            if let Some(retry) = &p.retry {
                let field = format!("spec.participants[{i}].retry");
                participant_retry.insert(p.name.clone(), policy(problems, &field, retry));
            }
        }
        participant_retry
    }

    /// Checks the steps; returns them compiled (a step with problems is compiled as far as it
    /// can be, and the problems say why the saga is refused).
    fn validate_steps(&self, problems: &mut Vec<String>) -> Vec<StepDefinition> {
        if self.steps.is_empty() {
            problems.push("spec.steps: a saga needs at least one step".to_owned());
        }
        let mut step_names = HashSet::new();
        let mut steps = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            let field = format!("spec.steps[{i}]");
            if step.name.is_empty() {
                problems.push(format!("{field}.name: must not be empty"));
            } else if !step_names.insert(step.name.as_str()) {
                problems.push(format!(
                    "{field}.name: `{}` is used by an earlier step; step names must be unique",
                    step.name
                ));
            }
            let participant = self
                .participants
                .iter()
                .find(|p| p.name == step.participant);
            if participant.is_none() {
                problems.push(format!(
                    "{field}.participant: `{}` is not one of spec.participants ({})",
                    step.participant,
                    self.participants
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if step.command.is_empty() {
                problems.push(format!("{field}.command: must not be empty"));
            }
            if step.key.as_deref() == Some("") {
                problems.push(format!(
                    "{field}.key: must name a trigger field (or be left out: the saga id)"
                ));
            }
            let last = i + 1 == self.steps.len();
            if step.compensation.is_none() && !last {
                problems.push(format!(
                    "{field}.compensation: step `{}` is followed by other steps, so it needs a \
                     compensation to undo it when they fail",
                    step.name
                ));
            }
            let timeout = duration(problems, &format!("{field}.timeout"), &step.timeout);
            let retry = policy(problems, &format!("{field}.retry"), &step.retry);
            steps.push(StepDefinition {
                name: step.name.clone(),
                participant: step.participant.clone(),
                command_topic: participant
                    .map(|p| p.command_topic.clone())
                    .unwrap_or_default(),
                command: step.command.clone(),
                compensation: step.compensation.clone(),
                timeout,
                retry,
                key: step.key.clone(),
            });
        }
        steps
    }
}

/// Why a saga file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not readable YAML of a `Saga`.
    #[error("{path}: not a Saga manifest: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's words.
        reason: String,
    },
    /// A `Saga`, but an invalid one.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// The problems.
        source: InvalidSaga,
    },
}

impl Saga {
    /// Parses a `Saga` manifest (`apiVersion`, `kind`, `metadata.name`, `spec`) and validates
    /// it; `path` names the source in errors.
    pub fn load(yaml: &str, path: &str) -> Result<Definition, LoadError> {
        let parse = |reason: String| LoadError::Parse {
            path: path.to_owned(),
            reason,
        };
        let types: kube::core::TypeMeta =
            serde_saphyr::from_str(yaml).map_err(|e| parse(e.to_string()))?;
        if types.kind != "Saga" || types.api_version != "sagashop.dev/v1alpha1" {
            return Err(parse(format!(
                "expected apiVersion sagashop.dev/v1alpha1 and kind Saga, found {} {}",
                types.api_version, types.kind
            )));
        }
        let saga: Saga = serde_saphyr::from_str(yaml).map_err(|e| parse(e.to_string()))?;
        let name = saga
            .metadata
            .name
            .clone()
            .ok_or_else(|| parse("metadata.name is missing".to_owned()))?;
        saga.spec
            .validate(&name)
            .map_err(|source| LoadError::Invalid {
                path: path.to_owned(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    const SHIPPED: &str = include_str!("../../../k8s/sagas/order-fulfilment.yaml");

    #[test]
    fn the_shipped_order_saga_is_valid() {
        let definition = Saga::load(SHIPPED, "order-fulfilment.yaml").unwrap();
        assert_eq!(definition.name, "order-fulfilment");
        let names: Vec<_> = definition.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["reserve-inventory", "authorize-payment", "create-shipment"]
        );
        assert_eq!(definition.state_topic, "saga.order-fulfilment.state");
        assert!(
            definition
                .topics()
                .contains(&"payment.commands.v1".to_owned())
        );
    }

    fn problems(edit: impl FnOnce(&mut SagaSpec)) -> Vec<String> {
        let mut saga: Saga = serde_saphyr::from_str(SHIPPED).unwrap();
        edit(&mut saga.spec);
        saga.spec.validate("s").unwrap_err().problems
    }

    #[test]
    fn duplicate_step_names_are_refused_by_field() {
        let found = problems(|spec| spec.steps[1].name = spec.steps[0].name.clone());
        assert!(found[0].starts_with("spec.steps[1].name:"), "{found:?}");
    }

    #[test]
    fn an_unknown_participant_is_refused_naming_the_known_ones() {
        let found = problems(|spec| spec.steps[0].participant = "warehouse".into());
        assert!(
            found[0].starts_with("spec.steps[0].participant:"),
            "{found:?}"
        );
        assert!(
            found[0].contains("inventory, payment, shipping"),
            "{found:?}"
        );
    }

    #[test]
    fn a_missing_compensation_is_refused_except_on_the_last_step() {
        let found = problems(|spec| {
            spec.steps[0].compensation = None;
            spec.steps[2].compensation = None;
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("spec.steps[0].compensation:"));
    }

    #[test]
    fn zero_and_unreadable_durations_are_refused() {
        let found = problems(|spec| {
            spec.steps[1].timeout = "0s".into();
            spec.steps[2].retry.initial_backoff = "soon".into();
        });
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("spec.steps[1].timeout:")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("spec.steps[2].retry.initialBackoff:")),
            "{found:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let found = problems(|spec| {
            spec.trigger.topic = "no spaces allowed".into();
            spec.steps[0].retry.max_attempts = 0;
        });
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn a_manifest_of_another_kind_is_refused() {
        let other = SHIPPED.replace("kind: Saga", "kind: KafkaTopic");
        let error = Saga::load(&other, "x.yaml").unwrap_err().to_string();
        assert!(error.contains("kind Saga"), "{error}");
    }
}
