//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas never reconcile at once.
//!
//! A replica takes the Lease when nobody holds it, its holder let it go, or its holder stopped
//! renewing for `duration`. Every write carries the `resourceVersion` it read, so of two
//! replicas racing for one Lease the API server lets exactly one win. The leader renews every
//! `renew_every`; if it cannot renew before the Lease would expire it stops leading at once
//! (another replica may already have taken over). A graceful stop releases the Lease so the
//! next replica takes over without waiting for it to expire.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

/// Where the Lease is and who this replica is.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease lasts without renewal.
    pub duration: Duration,
    /// How often the leader renews (and a standby retries).
    pub renew_every: Duration,
    /// The installer makes the Lease (the chart does, so that `helm uninstall` removes it):
    /// wait for it rather than create it. Creating it first would fail the install that
    /// creates it a moment later ("already exists").
    pub provided: bool,
}

/// What one attempt at the Lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// This replica holds it now.
    Held,
    /// Another replica does.
    Other,
    /// It does not exist, and the installer is to make it.
    Missing,
}

/// Held leadership: `lost` is cancelled when the Lease could not be renewed in time.
pub struct Leadership {
    /// Cancelled when leadership is lost.
    pub lost: CancellationToken,
    stop: CancellationToken,
    renewing: tokio::task::JoinHandle<()>,
    api: Api<Lease>,
    config: LeaseConfig,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Whether the Lease can be taken by `identity` at `at`.
pub fn takeable(spec: Option<&LeaseSpec>, identity: &str, at: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        return true;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref());
    let lasts = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    renewed.is_none_or(|t| t.0 + lasts < at)
}

/// Tries once to take or keep the Lease.
async fn try_hold(api: &Api<Lease>, config: &LeaseConfig) -> Result<Hold, kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        if config.provided {
            return Ok(Hold::Missing);
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(secs(config.duration)),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Hold::Held),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Hold::Other),
            Err(e) => Err(e),
        };
    };
    if !takeable(lease.spec.as_ref(), &config.identity, Timestamp::now()) {
        return Ok(Hold::Other);
    }
    let mut spec = lease.spec.take().unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    if !ours {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds = Some(secs(config.duration));
    spec.renew_time = Some(now());
    lease.spec = Some(spec);
    // The resourceVersion read above makes this a compare-and-swap.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(Hold::Held),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Hold::Other),
        Err(e) => Err(e),
    }
}

/// Waits until this replica leads, or `shutdown` (then `None`).
pub async fn acquire(
    client: Client,
    config: LeaseConfig,
    shutdown: &CancellationToken,
) -> Option<Leadership> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut said = None;
    loop {
        match try_hold(&api, &config).await {
            Ok(Hold::Held) => break,
            Ok(found) if said == Some(found) => {}
            Ok(Hold::Other) => {
                tracing::info!(lease = %config.name, "another replica leads; standing by");
                said = Some(Hold::Other);
            }
            Ok(found) => {
                tracing::info!(lease = %config.name, namespace = %config.namespace, "waiting for the Lease, which the installer makes (the chart does)");
                said = Some(found);
            }
            Err(e) => {
                tracing::warn!(lease = %config.name, error = %e, "could not read or take the lease");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(config.renew_every) => {}
        }
    }
    tracing::info!(lease = %config.name, identity = %config.identity, "leading");
    let lost = CancellationToken::new();
    let stop = CancellationToken::new();
    let renewing = tokio::spawn(renew(
        api.clone(),
        config.clone(),
        lost.clone(),
        stop.clone(),
    ));
    Some(Leadership {
        lost,
        stop,
        renewing,
        api,
        config,
    })
}

async fn renew(
    api: Api<Lease>,
    config: LeaseConfig,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(config.renew_every) => {}
        }
        match try_hold(&api, &config).await {
            Ok(Hold::Held) => last = tokio::time::Instant::now(),
            Ok(Hold::Other | Hold::Missing) => {
                tracing::error!(lease = %config.name, "another replica took the lease (or it was deleted); stopping");
                lost.cancel();
                return;
            }
            Err(e) => tracing::warn!(lease = %config.name, error = %e, "could not renew the lease"),
        }
        // Stop before the Lease can expire: another replica may take it the moment it does.
        if last.elapsed() + config.renew_every >= config.duration {
            tracing::error!(lease = %config.name, "could not renew the lease in time; stopping");
            lost.cancel();
            return;
        }
    }
}

impl Leadership {
    /// Stops renewing and, unless leadership was lost, releases the Lease so a standby takes
    /// over at once.
    pub async fn release(self) {
        self.stop.cancel();
        let _ = self.renewing.await;
        if self.lost.is_cancelled() {
            return;
        }
        let released = async {
            let mut lease = self.api.get(&self.config.name).await?;
            if let Some(spec) = lease.spec.as_mut()
                && spec.holder_identity.as_deref() == Some(self.config.identity.as_str())
            {
                spec.holder_identity = None;
                spec.renew_time = Some(now());
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await?;
            }
            Ok::<(), kube::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(5), released).await {
            Ok(Ok(())) => tracing::info!(lease = %self.config.name, "lease released"),
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.config.name, error = %e, "could not release the lease");
            }
            Err(_) => tracing::warn!(lease = %self.config.name, "releasing the lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str, renewed_secs_ago: i64, lasts: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.to_owned()),
            renew_time: Some(MicroTime(
                Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago),
            )),
            lease_duration_seconds: Some(lasts),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_live_lease_of_another_replica_cannot_be_taken() {
        assert!(!takeable(Some(&held("a", 2, 15)), "b", Timestamp::now()));
    }

    #[test]
    fn an_expired_released_or_own_lease_can_be_taken() {
        assert!(takeable(Some(&held("a", 20, 15)), "b", Timestamp::now()));
        assert!(takeable(Some(&held("", 0, 15)), "b", Timestamp::now()));
        assert!(takeable(Some(&held("b", 0, 15)), "b", Timestamp::now()));
        assert!(takeable(None, "b", Timestamp::now()));
    }
}
