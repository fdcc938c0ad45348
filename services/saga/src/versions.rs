//! Every version of a saga's definition that instances still run on.
//!
//! An instance runs to its end on the definition it started with ([`Instance::version`]), so
//! editing a `Saga` (adding, removing or reordering steps) changes only the instances that start
//! afterwards. The versions live in the saga's compacted `saga.<name>.versions` topic, one
//! record per version keyed by it, holding the spec it was compiled from:
//!
//! - each orchestrator publishes its own (current) version when it starts, and again if it sees
//!   it tombstoned, so a version is on the topic while any orchestrator still runs it;
//! - each orchestrator follows the topic, so whichever replica owns an instance (after a rolling
//!   update moves its partition) runs it on its own version;
//! - the orchestrator that owns the state topic's partition 0 (one at a time) republishes a
//!   version's record with its count of instances that have not ended when that count changes,
//!   so the operator can show them in the `Saga`'s status, and tombstones an old version once
//!   no instance the read model keeps runs on it (none running, compensating or `FAILED`) for
//!   [`Versions::GRACE`] in a row.
//!
//! [`Instance::version`]: crate::machine::Instance::version

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use sagashop_contracts::Metadata;
use sagashop_contracts::events::SagaStepChanged;
use sagashop_kit::Outgoing;

use crate::definition::{Definition, SagaSpec};

/// One record of the versions topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionRecord {
    /// The saga's name.
    pub saga: String,
    /// The version (the record's key).
    pub version: String,
    /// The spec, unprefixed, as the `Saga` resource or file had it.
    pub spec: SagaSpec,
    /// When it was (last) published.
    pub published_at: DateTime<Utc>,
    /// How many instances that have not ended run on it, as the orchestrators' read model
    /// counted them then; absent in the record an orchestrator publishes when it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<usize>,
}

/// What a record of the versions topic did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learned {
    /// A version is known (new or again).
    Version(String),
    /// An old version was forgotten.
    Forgot(String),
    /// This orchestrator's own version was tombstoned: publish it again.
    OwnTombstoned,
    /// Not a usable record (said in the log).
    Skipped,
}

/// A version, as `GET /api/sagas/versions` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionSummary {
    /// The version.
    pub version: String,
    /// Whether this orchestrator starts new instances on it.
    pub current: bool,
    /// Its steps, in order.
    pub steps: Vec<String>,
    /// Instances on it that have not ended (running, compensating or `FAILED`).
    pub instances: usize,
}

/// The versions one orchestrator knows.
#[derive(Debug)]
pub struct Versions {
    current: Arc<Definition>,
    known: RwLock<HashMap<String, Arc<Definition>>>,
    /// Since when each old version had no instance (for [`Self::retire`]).
    idle: RwLock<HashMap<String, Instant>>,
    /// The counts this orchestrator last published (for [`Self::counted`]).
    published: RwLock<HashMap<String, usize>>,
}

impl Versions {
    /// How long an old version must have had no instance before it is tombstoned.
    pub const GRACE: Duration = Duration::from_secs(30);

    /// The versions of an orchestrator that starts new instances on `current`.
    pub fn new(current: Definition) -> Self {
        let current = Arc::new(current);
        let known = HashMap::from([(current.version.clone(), Arc::clone(&current))]);
        Self {
            current,
            known: RwLock::new(known),
            idle: RwLock::default(),
            published: RwLock::default(),
        }
    }

    /// The definition new instances start on.
    pub fn current(&self) -> &Arc<Definition> {
        &self.current
    }

    /// The definition of `version` (the current one for an empty version: a state written
    /// before versions); `None` while it is not known here (yet).
    pub fn of(&self, version: &str) -> Option<Arc<Definition>> {
        if version.is_empty() || version == self.current.version {
            return Some(Arc::clone(&self.current));
        }
        self.known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(version)
            .cloned()
    }

    /// Every known version's step names, the current first.
    pub fn step_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.current.steps.iter().map(|s| s.name.clone()).collect();
        for d in self
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            for step in &d.steps {
                if !names.contains(&step.name) {
                    names.push(step.name.clone());
                }
            }
        }
        names
    }

    /// The record of the current version, for the versions topic.
    pub fn record(&self) -> Result<Outgoing, sagashop_kit::Error> {
        Self::record_of(&self.current, None)
    }

    /// The records of the known versions whose count of instances that have not ended
    /// (`in_flight`, from the read model) differs from the count this orchestrator last
    /// published.
    pub fn counted(
        &self,
        in_flight: &BTreeMap<String, usize>,
    ) -> Result<Vec<Outgoing>, sagashop_kit::Error> {
        let known: Vec<Arc<Definition>> = self
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut published = self
            .published
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        published.retain(|v, _| known.iter().any(|d| d.version == *v));
        let mut records = Vec::new();
        for d in known {
            let count = in_flight.get(&d.version).copied().unwrap_or(0);
            if published.get(&d.version) != Some(&count) {
                records.push(Self::record_of(&d, Some(count))?);
                published.insert(d.version.clone(), count);
            }
        }
        Ok(records)
    }

    /// Forgets the counts published, after a failure to publish them: the next
    /// [`Self::counted`] sends every count again.
    pub fn forget_published(&self) {
        self.published
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn record_of(
        d: &Definition,
        instances: Option<usize>,
    ) -> Result<Outgoing, sagashop_kit::Error> {
        let record = VersionRecord {
            saga: d.name.clone(),
            version: d.version.clone(),
            spec: d.spec.clone(),
            published_at: Utc::now(),
            instances,
        };
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| sagashop_kit::Error::Internal(format!("encoding a version: {e}")))?;
        let metadata = Metadata {
            event_type: "SagaVersion".to_owned(),
            schema_version: 1,
            ..Metadata::new::<SagaStepChanged>(d.version.clone())
        };
        Ok(Outgoing::raw(
            &d.versions_topic,
            &d.version,
            &metadata,
            bytes,
        ))
    }

    /// Learns from one record of the versions topic (`None`: a tombstone).
    pub fn apply(&self, key: &str, payload: Option<&[u8]>) -> Learned {
        let Some(bytes) = payload else {
            if key == self.current.version {
                return Learned::OwnTombstoned;
            }
            self.known
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(key);
            return Learned::Forgot(key.to_owned());
        };
        let d = &self.current;
        let definition = serde_json::from_slice::<VersionRecord>(bytes)
            .map_err(|e| e.to_string())
            .and_then(|r| r.spec.validate(&d.name).map_err(|e| e.to_string()));
        match definition {
            Ok(definition) if definition.version == key => {
                let definition = Arc::new(definition.with_prefix(&d.prefix));
                self.known
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key.to_owned(), definition);
                Learned::Version(key.to_owned())
            }
            Ok(definition) => {
                tracing::warn!(saga = %d.name, key, computed = %definition.version, "a saga version whose spec hashes to another version; skipped");
                Learned::Skipped
            }
            Err(e) => {
                tracing::warn!(saga = %d.name, key, error = %e, "an unreadable saga version; skipped");
                Learned::Skipped
            }
        }
    }

    /// The old versions to tombstone now: those with no instance in `in_use` (the versions of
    /// the instances that have not ended) for [`Self::GRACE`] in a row.
    pub fn retire(&self, in_use: &HashSet<String>, now: Instant) -> Vec<Outgoing> {
        let old: Vec<String> = self
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .filter(|v| **v != self.current.version)
            .cloned()
            .collect();
        let mut idle = self.idle.write().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|v, _| old.contains(v) && !in_use.contains(v));
        old.into_iter()
            .filter(|v| !in_use.contains(v))
            .filter(|v| now.duration_since(*idle.entry(v.clone()).or_insert(now)) >= Self::GRACE)
            .map(|v| Outgoing {
                topic: self.current.versions_topic.clone(),
                key: Some(v.into_bytes()),
                partition: None,
                payload: None,
                headers: Vec::new(),
            })
            .collect()
    }

    /// Every known version with the instances `in_flight` counts on it, the current first.
    pub fn summary(&self, in_flight: &BTreeMap<String, usize>) -> Vec<VersionSummary> {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<VersionSummary> = known
            .values()
            .map(|d| VersionSummary {
                version: d.version.clone(),
                current: d.version == self.current.version,
                steps: d.steps.iter().map(|s| s.name.clone()).collect(),
                instances: in_flight.get(&d.version).copied().unwrap_or(0),
            })
            .collect();
        all.sort_by(|a, b| b.current.cmp(&a.current).then(a.version.cmp(&b.version)));
        all
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a panic is the failure report"
    )]

    use super::*;
    use crate::definition::Saga;

    fn shipped() -> Definition {
        Saga::load(
            include_str!("../../../k8s/sagas/order-fulfilment.yaml"),
            "order-fulfilment.yaml",
        )
        .unwrap()
    }

    /// The shipped saga with its first two steps swapped.
    fn reordered() -> Definition {
        let d = shipped();
        let mut spec = d.spec.clone();
        spec.steps.swap(0, 1);
        spec.validate(&d.name).unwrap()
    }

    fn payload(d: &Definition) -> Vec<u8> {
        serde_json::to_vec(&VersionRecord {
            saga: d.name.clone(),
            version: d.version.clone(),
            spec: d.spec.clone(),
            published_at: Utc::now(),
            instances: None,
        })
        .unwrap()
    }

    #[test]
    fn a_version_changes_with_the_steps_and_not_with_sizing_or_participant_retry() {
        let d = shipped();
        assert_eq!(d.version.len(), 12);
        assert_ne!(reordered().version, d.version);
        let mut spec = d.spec.clone();
        spec.topic_defaults.partitions = 12;
        spec.participants[0].retry = Some(crate::definition::StepRetry::default());
        assert_eq!(spec.validate(&d.name).unwrap().version, d.version);
        assert_eq!(
            shipped().version,
            d.version,
            "the same spec, the same version"
        );
    }

    #[test]
    fn an_old_version_is_learned_with_the_orchestrators_prefix_and_forgotten_by_its_tombstone() {
        let versions = Versions::new(shipped().with_prefix("t."));
        let old = reordered();
        assert!(versions.of(&old.version).is_none());
        assert_eq!(
            versions.apply(&old.version, Some(&payload(&old))),
            Learned::Version(old.version.clone())
        );
        let learned = versions.of(&old.version).unwrap();
        assert_eq!(learned.steps[0].name, "authorize-payment");
        assert!(learned.steps[0].command_topic.starts_with("t."));
        assert_eq!(learned.versions_topic, "t.saga.order-fulfilment.versions");
        assert_eq!(
            versions.apply(&old.version, None),
            Learned::Forgot(old.version.clone())
        );
        assert!(versions.of(&old.version).is_none());
    }

    #[test]
    fn a_record_under_the_wrong_key_or_unreadable_is_skipped_and_the_own_tombstone_reported() {
        let versions = Versions::new(shipped());
        let old = reordered();
        assert_eq!(
            versions.apply("not-its-version", Some(&payload(&old))),
            Learned::Skipped
        );
        assert_eq!(versions.apply("x", Some(b"{not json")), Learned::Skipped);
        let own = versions.current().version.clone();
        assert_eq!(versions.apply(&own, None), Learned::OwnTombstoned);
        assert!(
            versions.of(&own).is_some(),
            "its own version is never forgotten"
        );
        assert!(
            versions.of("").is_some(),
            "a state without a version runs on the current"
        );
    }

    #[test]
    fn counts_are_published_for_every_known_version_only_when_they_change() {
        let versions = Versions::new(shipped());
        let old = reordered();
        versions.apply(&old.version, Some(&payload(&old)));
        let current = versions.current().version.clone();
        let count = |record: &Outgoing| {
            let r: VersionRecord =
                serde_json::from_slice(record.payload.as_deref().unwrap()).unwrap();
            (r.version, r.instances)
        };
        let first = versions
            .counted(&BTreeMap::from([(old.version.clone(), 3)]))
            .unwrap();
        let mut seen: Vec<_> = first.iter().map(count).collect();
        seen.sort();
        let mut want = vec![(old.version.clone(), Some(3)), (current.clone(), Some(0))];
        want.sort();
        assert_eq!(seen, want);
        let same = BTreeMap::from([(old.version.clone(), 3)]);
        assert!(versions.counted(&same).unwrap().is_empty());
        let changed = versions
            .counted(&BTreeMap::from([
                (current.clone(), 1),
                (old.version.clone(), 3),
            ]))
            .unwrap();
        assert_eq!(
            changed.iter().map(count).collect::<Vec<_>>(),
            [(current, Some(1))]
        );
    }

    #[test]
    fn an_old_version_is_retired_only_after_the_grace_without_instances() {
        let versions = Versions::new(shipped());
        let old = reordered();
        versions.apply(&old.version, Some(&payload(&old)));
        let t0 = Instant::now();
        let busy = HashSet::from([old.version.clone()]);
        assert!(versions.retire(&busy, t0).is_empty());
        let idle = HashSet::new();
        assert!(versions.retire(&idle, t0).is_empty(), "idle from now");
        assert!(versions.retire(&busy, t0 + Versions::GRACE).is_empty());
        assert!(
            versions.retire(&idle, t0 + Versions::GRACE).is_empty(),
            "an instance in between starts the grace again"
        );
        let later = t0 + Versions::GRACE * 2 + Duration::from_secs(1);
        let tombstones = versions.retire(&idle, later);
        assert_eq!(tombstones.len(), 1);
        assert_eq!(
            tombstones[0].key.as_deref(),
            Some(old.version.as_bytes()),
            "the old version's tombstone, never the current one's"
        );
        assert!(tombstones[0].payload.is_none());
    }
}
