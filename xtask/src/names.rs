//! Topic and consumer group names, from sagashop's one topology (`services/topology`) of the
//! shipped saga: xtask writes none itself.

use sagashop_topology::{Service, Topology};

/// Every name of a system started with `prefix`.
pub(crate) fn topology(prefix: &str) -> Topology {
    // The shipped saga is checked by sagashop's own tests; failing here is a build defect.
    Topology::load(None, prefix).unwrap_or_else(|e| panic!("the shipped saga: {e}"))
}

/// `service`'s wiring in a system started with `prefix`.
fn wiring(prefix: &str, service: Service) -> sagashop_kit::Wiring {
    topology(prefix)
        .wiring(service)
        .unwrap_or_else(|e| panic!("the shipped saga: {e}"))
}

/// The topic `service` uses in `role`, prefixed.
pub(crate) fn topic(prefix: &str, service: Service, role: &str) -> String {
    wiring(prefix, service)
        .topic(role)
        .unwrap_or_else(|e| panic!("the topology: {e}"))
        .to_owned()
}

/// The shipped saga's participants.
pub(crate) const PARTICIPANTS: [Service; 3] =
    [Service::Inventory, Service::Payment, Service::Shipping];

/// Each participant's consumer group and command topic, prefixed.
pub(crate) fn participants(prefix: &str) -> Vec<(String, String)> {
    PARTICIPANTS
        .into_iter()
        .map(|service| {
            let wiring = wiring(prefix, service);
            let commands = wiring
                .topic("commands")
                .unwrap_or_else(|e| panic!("the topology: {e}"))
                .to_owned();
            (wiring.group_id, commands)
        })
        .collect()
}

/// Every service's dead-letter topic, prefixed.
pub(crate) fn dead_letter_topics(prefix: &str) -> Vec<String> {
    let mut topics: Vec<String> = Service::ALL
        .into_iter()
        .map(|service| wiring(prefix, service).dead_letter_topic)
        .collect();
    topics.sort();
    topics.dedup();
    topics
}

/// The orchestrator's consumer group and reply topic, prefixed.
pub(crate) fn orchestrator(prefix: &str) -> (String, String) {
    let wiring = wiring(prefix, Service::Orchestrator);
    let replies = wiring
        .topic("replies")
        .unwrap_or_else(|e| panic!("the topology: {e}"))
        .to_owned();
    (wiring.group_id, replies)
}
