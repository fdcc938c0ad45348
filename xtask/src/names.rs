//! Topic and consumer group names, from sagashop's one topology (`services/topology`) of the
//! shipped saga: xtask writes none itself.

use sagashop_topology::{Service, Topology};

/// Every name of a system started with `prefix`.
pub(crate) fn topology(prefix: &str) -> Topology {
    // The shipped saga is checked by sagashop's own tests; failing here is a build defect.
    Topology::load(None, prefix).unwrap_or_else(|e| panic!("the shipped saga: {e}"))
}

/// The topic `service` uses in `role`, prefixed.
pub(crate) fn topic(prefix: &str, service: Service, role: &str) -> String {
    let wiring = topology(prefix)
        .wiring(service)
        .unwrap_or_else(|e| panic!("the shipped saga: {e}"));
    wiring
        .topic(role)
        .unwrap_or_else(|e| panic!("the topology: {e}"))
        .to_owned()
}

/// Each participant's consumer group and command topic, prefixed.
pub(crate) fn participants(prefix: &str) -> Vec<(String, String)> {
    [Service::Inventory, Service::Payment, Service::Shipping]
        .into_iter()
        .map(|service| {
            let group = topology(prefix)
                .wiring(service)
                .map(|w| w.group_id)
                .unwrap_or_else(|e| panic!("the shipped saga: {e}"));
            (group, topic(prefix, service, "commands"))
        })
        .collect()
}
