//! Leader election against the real API server: of two replicas one leads; when it stops, it
//! releases the Lease and the standby takes over at once; a leader whose Lease is taken stops.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams};
use sagashop_operator::lease::{LeaseConfig, acquire};
use sagashop_testkit::{TestKube, eventually};
use tokio_util::sync::CancellationToken;

fn config(namespace: &str, identity: &str) -> LeaseConfig {
    LeaseConfig {
        name: "sagashop-operator".into(),
        namespace: namespace.into(),
        identity: identity.into(),
        duration: Duration::from_secs(6),
        renew_every: Duration::from_millis(500),
    }
}

async fn holder(api: &Api<Lease>) -> Option<String> {
    api.get("sagashop-operator")
        .await
        .ok()?
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_the_standby_takes_over_when_it_lets_go() {
    let kube = TestKube::connect().await;
    let ns = kube.namespace("lease").await;
    let api: Api<Lease> = Api::namespaced(kube.client.clone(), &ns);
    let shutdown = CancellationToken::new();

    let first = acquire(kube.client.clone(), config(&ns, "first"), &shutdown)
        .await
        .unwrap();
    assert_eq!(holder(&api).await.as_deref(), Some("first"));

    // The second stands by while the first renews, well past one lease duration.
    let standby = tokio::spawn({
        let (client, ns, shutdown) = (kube.client.clone(), ns.clone(), shutdown.clone());
        async move { acquire(client, config(&ns, "second"), &shutdown).await }
    });
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(!standby.is_finished(), "the standby took a live lease");
    assert!(!first.lost.is_cancelled());
    assert_eq!(holder(&api).await.as_deref(), Some("first"));

    // A graceful stop releases the lease: the standby leads within a renew period or two.
    first.release().await;
    let second = tokio::time::timeout(Duration::from_secs(5), standby)
        .await
        .expect("the standby did not take over a released lease")
        .unwrap()
        .unwrap();
    assert_eq!(holder(&api).await.as_deref(), Some("second"));

    // Someone else takes the lease (an operator that thought this one dead): it stops leading.
    let steal = serde_json::json!({"spec": {"holderIdentity": "third"}});
    api.patch(
        "sagashop-operator",
        &PatchParams::default(),
        &Patch::Merge(&steal),
    )
    .await
    .unwrap();
    eventually(
        "the robbed leader to notice",
        Duration::from_secs(10),
        || async { second.lost.is_cancelled().then_some(()) },
    )
    .await;
    second.release().await;
    assert_eq!(holder(&api).await.as_deref(), Some("third"));
    kube.delete_namespace(&ns).await;
}
