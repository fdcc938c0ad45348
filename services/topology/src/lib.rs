//! sagashop's topology: the services, the topics each owns, and the [`Wiring`] of each, derived
//! from one saga definition.
//!
//! This is the one place a topic or consumer group name is written. The saga's own topics
//! (trigger, commands, replies, state, outcome) come from the `Saga` resource; the services'
//! own topics (their state stores' changelogs and their streams) are the table [`OWN`]. From
//! these, [`Topology::wiring`] gives each service its wiring: the operator writes it into the
//! saga's ConfigMap as `<service>.json`, which the services read in the cluster, and `sagashop
//! dev` builds the same from the same Saga file. [`Topology::topics`] lists every topic with
//! how it is kept (what `sagashop topics` prints, which the chart and `k8s/topics.yaml` are
//! generated from).

use std::collections::BTreeMap;

use sagashop_kit::admin::TopicSpec;
use sagashop_kit::wiring::RetrySettings;
use sagashop_kit::{IsolationLevel, Processing, Wiring};
use sagashop_saga::Definition;
use sagashop_saga::definition::{LoadError, ORCHESTRATOR, Saga, dead_letter_topic};

/// The order saga shipped with sagashop (`k8s/sagas/order-fulfilment.yaml`).
pub const SHIPPED_SAGA: &str = include_str!("../../../k8s/sagas/order-fulfilment.yaml");

/// The services of sagashop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Service {
    /// The HTTP edge and order read model.
    Order,
    /// The saga orchestrator.
    Orchestrator,
    /// Stock.
    Inventory,
    /// Money.
    Payment,
    /// Shipments.
    Shipping,
    /// Customer notifications.
    Notification,
    /// Per-minute figures.
    Analytics,
}

impl Service {
    /// Every service, in the order `sagashop dev` starts them (the edge last, so that what it
    /// writes has consumers).
    pub const ALL: [Self; 7] = [
        Self::Orchestrator,
        Self::Inventory,
        Self::Payment,
        Self::Shipping,
        Self::Notification,
        Self::Analytics,
        Self::Order,
    ];

    /// Its name: its subcommand, its wiring file, its dead-letter topic's first part.
    pub fn name(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Orchestrator => ORCHESTRATOR,
            Self::Inventory => "inventory",
            Self::Payment => "payment",
            Self::Shipping => "shipping",
            Self::Notification => "notification",
            Self::Analytics => "analytics",
        }
    }

    /// What it does, in one line: the help of its subcommand (`sagashop <name>`).
    pub fn about(self) -> &'static str {
        match self {
            Self::Order => "Run the HTTP edge and order read model",
            Self::Orchestrator => "Run the saga orchestrator",
            Self::Inventory => "Run the inventory participant",
            Self::Payment => "Run the payment participant",
            Self::Shipping => "Run the shipping participant",
            Self::Notification => "Run the notification service",
            Self::Analytics => "Run the analytics service (`GET /api/analytics/summary`)",
        }
    }

    /// The service called `name`, if there is one.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// How a service's own topic is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// A state store's changelog: compacted, the latest value per key.
    Changelog,
    /// A stream of events or commands: deleted by time.
    Stream,
    /// A changelog whose keys the service forgets after its retention, with a week's time
    /// retention as the backstop for keys nobody forgot (notified message ids).
    Forgotten,
}

/// A topic a service owns.
#[derive(Debug, Clone, Copy)]
pub struct Own {
    /// Who writes it.
    pub service: Service,
    /// The role the service gives it in its wiring.
    pub role: &'static str,
    /// Its name (before any prefix).
    pub topic: &'static str,
    /// How it is kept.
    pub kept: Kept,
}

const fn own(service: Service, role: &'static str, topic: &'static str, kept: Kept) -> Own {
    Own {
        service,
        role,
        topic,
        kept,
    }
}

/// Every topic a service owns, beside the saga's.
pub const OWN: [Own; 11] = [
    own(
        Service::Order,
        "idempotency",
        "orders.idempotency.v1",
        Kept::Changelog,
    ),
    own(
        Service::Inventory,
        "stock",
        "inventory.stock.v1",
        Kept::Changelog,
    ),
    own(
        Service::Inventory,
        "holds",
        "inventory.holds.v1",
        Kept::Changelog,
    ),
    own(
        Service::Inventory,
        "slips",
        "inventory.slips.v1",
        Kept::Stream,
    ),
    own(
        Service::Payment,
        "balances",
        "payment.balances.v1",
        Kept::Changelog,
    ),
    own(
        Service::Payment,
        "payments",
        "payment.payments.v1",
        Kept::Changelog,
    ),
    own(
        Service::Shipping,
        "shipments",
        "shipping.shipments.v1",
        Kept::Changelog,
    ),
    own(Service::Shipping, "events", "shipping.v1", Kept::Stream),
    own(
        Service::Notification,
        "sent",
        "notification.sent.v1",
        Kept::Forgotten,
    ),
    own(
        Service::Analytics,
        "windows",
        "analytics.windows.v1",
        Kept::Changelog,
    ),
    own(
        Service::Analytics,
        "snapshots",
        "analytics.snapshots.v1",
        Kept::Stream,
    ),
];

/// The consumer group of the order read model, the one group not named after its service.
pub const ORDER_VIEW_GROUP: &str = "order-view";

/// Why a topology could not be built or a service has no wiring in it.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The saga file is unreadable or invalid.
    #[error(transparent)]
    Saga(#[from] LoadError),
    /// A participant service the saga has no step for.
    #[error(
        "the saga `{saga}` has no step for the `{service}` participant, so `{service}` has nothing to do; add a step with `participant: {service}`, or do not run it"
    )]
    NotInSaga {
        /// The saga.
        saga: String,
        /// The service.
        service: &'static str,
    },
}

/// Every name of the system, for one saga and one topic prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    /// The saga, its topic names prefixed.
    definition: Definition,
    /// The saga's own topics (what the operator declares for it), prefixed.
    saga_topics: Vec<TopicSpec>,
}

impl Topology {
    /// The topology of `definition` with every topic and group name prefixed by `prefix`
    /// (empty in a cluster; tests and shared brokers use one).
    pub fn new(definition: Definition, prefix: &str) -> Self {
        let p = prefix;
        let mut saga_topics = definition.topic_specs();
        for spec in &mut saga_topics {
            spec.name = format!("{p}{}", spec.name);
        }
        Self {
            prefix: p.to_owned(),
            definition: definition.with_prefix(p),
            saga_topics,
        }
    }

    /// The topology of a Saga manifest (`path` names it in errors), or of the shipped order
    /// saga when `yaml` is `None`.
    pub fn load(yaml: Option<(&str, &str)>, prefix: &str) -> Result<Self, TopologyError> {
        let (yaml, path) = yaml.unwrap_or((SHIPPED_SAGA, "the shipped order saga"));
        Ok(Self::new(Saga::load(yaml, path)?, prefix))
    }

    /// The saga, its topics prefixed.
    pub fn definition(&self) -> &Definition {
        &self.definition
    }

    /// The prefix of every name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `name` prefixed.
    fn named(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The topic `service` owns in `role`, prefixed.
    ///
    /// # Panics
    /// If [`OWN`] has no such entry: a bug in this crate, caught by its tests.
    pub fn own(&self, service: Service, role: &str) -> String {
        let own = OWN
            .iter()
            .find(|o| o.service == service && o.role == role)
            .unwrap_or_else(|| panic!("OWN has no `{role}` topic of {}", service.name()));
        self.named(own.topic)
    }

    /// `service`'s wiring: what the operator writes as `<service>.json`.
    pub fn wiring(&self, service: Service) -> Result<Wiring, TopologyError> {
        let d = &self.definition;
        let mut topics = BTreeMap::new();
        let mut inputs: Vec<&str> = Vec::new();
        let mut state: Vec<String> = Vec::new();
        for own in OWN.iter().filter(|o| o.service == service) {
            topics.insert(own.role.to_owned(), self.named(own.topic));
            if own.kept != Kept::Stream {
                state.push(own.role.to_owned());
            }
        }
        let (group, processing, transactional) =
            self.uses(service, &mut topics, &mut inputs, &mut state)?;
        Ok(Wiring {
            service: service.name().to_owned(),
            group_id: self.named(&group),
            topics,
            inputs: inputs.into_iter().map(str::to_owned).collect(),
            state,
            dead_letter_topic: self.named(&dead_letter_topic(service.name())),
            isolation_level: IsolationLevel::ReadCommitted,
            processing,
            retry: RetrySettings::from(
                d.participant_retry
                    .get(service.name())
                    .copied()
                    .unwrap_or_default(),
            ),
            transactional_id: transactional.then(|| service.name().to_owned()),
        })
    }

    /// What `service` uses beside its own topics (the saga's topics, by role), what it reads,
    /// and its group (unprefixed), processing and whether it has transactions.
    fn uses(
        &self,
        service: Service,
        topics: &mut BTreeMap<String, String>,
        inputs: &mut Vec<&'static str>,
        state: &mut Vec<String>,
    ) -> Result<(String, Processing, bool), TopologyError> {
        let d = &self.definition;
        let mut topic = |role: &str, name: &str| {
            topics.insert(role.to_owned(), name.to_owned());
        };
        Ok(match service {
            Service::Orchestrator => {
                topic("trigger", &d.trigger.topic);
                topic("replies", &d.reply_topic);
                topic("state", &d.state_topic);
                topic("versions", &d.versions_topic);
                topic("outcome", &d.outcome.topic);
                inputs.extend(["trigger", "replies"]);
                state.push("state".to_owned());
                (d.orchestrator_group(), Processing::ExactlyOnce, true)
            }
            Service::Inventory | Service::Payment | Service::Shipping => {
                let step = d
                    .steps
                    .iter()
                    .find(|s| s.participant == service.name())
                    .ok_or(TopologyError::NotInSaga {
                        saga: d.name.clone(),
                        service: service.name(),
                    })?;
                topic("commands", &step.command_topic);
                topic("replies", &d.reply_topic);
                inputs.push("commands");
                if service == Service::Inventory {
                    // The routing slip passes a multi-product order from owner to owner.
                    inputs.push("slips");
                }
                (service.name().to_owned(), Processing::ExactlyOnce, true)
            }
            Service::Order => {
                topic("orders", &d.trigger.topic);
                topic("outcome", &d.outcome.topic);
                topic("shipping", &self.own(Service::Shipping, "events"));
                inputs.extend(["orders", "outcome", "shipping"]);
                // The read model consumes at least once (it only keeps the latest of each
                // order); the edge writes each order in a transaction of its own.
                (ORDER_VIEW_GROUP.to_owned(), Processing::AtLeastOnce, true)
            }
            Service::Notification => {
                topic("outcome", &d.outcome.topic);
                topic("shipping", &self.own(Service::Shipping, "events"));
                inputs.extend(["outcome", "shipping"]);
                (service.name().to_owned(), Processing::AtLeastOnce, false)
            }
            Service::Analytics => {
                topic("outcome", &d.outcome.topic);
                inputs.push("outcome");
                (service.name().to_owned(), Processing::ExactlyOnce, true)
            }
        })
    }

    /// The wiring of every service the saga gives something to do, by service name.
    pub fn wirings(&self) -> BTreeMap<&'static str, Wiring> {
        Service::ALL
            .into_iter()
            .filter_map(|s| self.wiring(s).ok().map(|w| (s.name(), w)))
            .collect()
    }

    /// Every topic the services need, sized by the saga's topic defaults, and who declares it
    /// in Kubernetes: [`DeclaredBy::Saga`] (the operator, from the Saga resource) or
    /// [`DeclaredBy::Services`] (the chart and `k8s/topics.yaml`).
    pub fn topics(&self) -> Vec<(TopicSpec, DeclaredBy)> {
        let defaults = &self.definition.topic_defaults;
        let plain =
            |name: String| TopicSpec::new(name, defaults.partitions).replicated(defaults.replicas);
        let mut specs: Vec<(TopicSpec, DeclaredBy)> = self
            .saga_topics
            .iter()
            .map(|t| (t.clone(), DeclaredBy::Saga))
            .collect();
        for own in &OWN {
            let spec = plain(self.named(own.topic));
            let spec = match own.kept {
                Kept::Changelog => spec.changelog(),
                Kept::Stream => spec,
                Kept::Forgotten => spec
                    .changelog()
                    .with_config("cleanup.policy", "compact,delete")
                    .with_config("retention.ms", "604800000"),
            };
            specs.push((spec, DeclaredBy::Services));
        }
        for service in Service::ALL {
            specs.push((
                plain(self.named(&dead_letter_topic(service.name()))),
                DeclaredBy::Services,
            ));
        }
        // The saga declares the dead-letter topics of its orchestrator and participants.
        specs.sort_by(|a, b| a.0.name.cmp(&b.0.name).then(a.1.cmp(&b.1)));
        specs.dedup_by(|a, b| a.0.name == b.0.name);
        specs
    }
}

/// Who declares a topic in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeclaredBy {
    /// The operator, from the `Saga` resource.
    Saga,
    /// The chart (and `k8s/topics.yaml`).
    Services,
}

impl DeclaredBy {
    /// `saga` or `services`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Saga => "saga",
            Self::Services => "services",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(prefix: &str) -> Topology {
        Topology::load(None, prefix).unwrap()
    }

    #[test]
    fn every_service_has_a_wiring_that_validates_and_reads_only_topics_that_exist() {
        let topology = shipped("t1-");
        let topics: Vec<String> = topology.topics().into_iter().map(|t| t.0.name).collect();
        let wirings = topology.wirings();
        assert_eq!(wirings.len(), Service::ALL.len());
        for (name, wiring) in &wirings {
            wiring.validate().unwrap();
            assert_eq!(&wiring.service, name);
            assert!(wiring.group_id.starts_with("t1-"), "{wiring:?}");
            for topic in wiring.topics.values().chain([&wiring.dead_letter_topic]) {
                assert!(
                    topics.contains(topic),
                    "{name} uses {topic}, which is not declared"
                );
            }
        }
        assert_eq!(
            wirings["payment"].input_topics().unwrap(),
            ["t1-payment.commands.v1"]
        );
        assert_eq!(wirings["order"].group_id, "t1-order-view");
        assert_eq!(wirings["orchestrator"].group_id, "t1-saga-order-fulfilment");
        assert_eq!(wirings["notification"].transactional_id, None);
    }

    #[test]
    fn every_topic_is_declared_once_with_its_keeping() {
        let topics = shipped("").topics();
        let mut names: Vec<&str> = topics.iter().map(|t| t.0.name.as_str()).collect();
        names.dedup();
        assert_eq!(names.len(), topics.len());
        let find = |name: &str| topics.iter().find(|t| t.0.name == name).unwrap();
        assert_eq!(find("orders.v1").1, DeclaredBy::Saga);
        assert_eq!(find("payment.dlq.v1").1, DeclaredBy::Saga);
        assert_eq!(find("order.dlq.v1").1, DeclaredBy::Services);
        let balances = &find("payment.balances.v1").0;
        assert_eq!(
            balances.config.get("cleanup.policy").map(String::as_str),
            Some("compact")
        );
        let sent = &find("notification.sent.v1").0;
        assert_eq!(
            sent.config.get("cleanup.policy").map(String::as_str),
            Some("compact,delete")
        );
        assert!(!find("shipping.v1").0.config.contains_key("cleanup.policy"));
    }

    #[test]
    fn three_replicas_make_every_topic_keep_a_write_on_two_brokers_and_one_replica_does_not() {
        let yaml = SHIPPED_SAGA.replace(
            "  topicDefaults:\n    partitions: 4\n    replicas: 1\n",
            "  topicDefaults:\n    partitions: 4\n    replicas: 3\n",
        );
        assert_ne!(yaml, SHIPPED_SAGA, "the shipped saga's topicDefaults moved");
        let replicated = Topology::load(Some((&yaml, "replicated.yaml")), "").unwrap();
        let topics = replicated.topics();
        assert!(topics.len() > 20, "{}", topics.len());
        for (spec, by) in &topics {
            assert_eq!(spec.replicas, 3, "{} ({by:?})", spec.name);
            assert_eq!(
                spec.config.get("min.insync.replicas").map(String::as_str),
                Some("2"),
                "{} ({by:?})",
                spec.name
            );
        }
        for (spec, _) in shipped("").topics() {
            assert_eq!(spec.replicas, 1);
            assert!(
                !spec.config.contains_key("min.insync.replicas"),
                "{}",
                spec.name
            );
        }
    }

    #[test]
    fn a_participants_retry_in_the_saga_reaches_its_wiring_and_only_its() {
        let yaml = SHIPPED_SAGA.replace(
            "      commandTopic: payment.commands.v1\n",
            "      commandTopic: payment.commands.v1\n      retry: { maxAttempts: 7, initialBackoff: 50ms, maxBackoff: 1s }\n",
        );
        let topology = Topology::load(Some((&yaml, "edited.yaml")), "").unwrap();
        let payment = topology.wiring(Service::Payment).unwrap();
        assert_eq!(payment.retry.max_attempts, 7);
        assert_eq!(payment.retry.initial_backoff, "50ms");
        let config = payment.processor_config("p-0").unwrap();
        assert_eq!(config.retry.max_backoff, std::time::Duration::from_secs(1));
        let inventory = topology.wiring(Service::Inventory).unwrap();
        assert_eq!(
            inventory.retry,
            RetrySettings::from(sagashop_kit::RetryPolicy::default())
        );
        let bad = yaml.replace("maxAttempts: 7", "maxAttempts: 0");
        let e = Topology::load(Some((&bad, "bad.yaml")), "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.participants[1].retry.maxAttempts"), "{e}");
    }

    #[test]
    fn a_participant_the_saga_does_not_use_has_no_wiring_and_says_why() {
        let yaml = SHIPPED_SAGA.replace("participant: shipping", "participant: payment");
        let topology = Topology::load(Some((&yaml, "edited.yaml")), "").unwrap();
        let e = topology.wiring(Service::Shipping).unwrap_err().to_string();
        assert!(e.contains("no step for the `shipping` participant"), "{e}");
        assert!(!topology.wirings().contains_key("shipping"));
    }
}
