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
        provided: false,
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

/// The chart makes the Lease, after the operator's Deployment (helm creates kinds it does not
/// know last): an operator told so waits for it instead of creating it, which would fail the
/// install with "already exists", and leads once it is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_told_the_installer_makes_the_lease_waits_for_it() {
    let kube = TestKube::connect().await;
    let ns = kube.namespace("lease").await;
    let api: Api<Lease> = Api::namespaced(kube.client.clone(), &ns);
    let shutdown = CancellationToken::new();
    let waiting = tokio::spawn({
        let (client, ns, shutdown) = (kube.client.clone(), ns.clone(), shutdown.clone());
        let config = LeaseConfig {
            provided: true,
            ..config(&ns, "first")
        };
        async move { acquire(client, config, &shutdown).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!waiting.is_finished(), "it led without a Lease");
    assert!(
        api.get_opt("sagashop-operator").await.unwrap().is_none(),
        "it created the Lease the installer makes"
    );
    // What helm applies: the chart's Lease, with no holder.
    let made: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sagashop-operator"},
        "spec": {}
    }))
    .unwrap();
    api.create(&kube::api::PostParams::default(), &made)
        .await
        .unwrap();
    let leading = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("it did not take the Lease once it was made")
        .unwrap()
        .unwrap();
    assert_eq!(holder(&api).await.as_deref(), Some("first"));
    leading.release().await;
    kube.delete_namespace(&ns).await;
}
