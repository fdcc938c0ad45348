//! The saga read model: every instance of one saga the orchestrators keep, findable by
//! status, step, age and customer, with its timeline.
//!
//! It follows the saga's compacted state topic (`saga.<name>.state`), where the orchestrators
//! write each instance's whole state in the transaction that changes it: every replica of the
//! model sees every partition, committed states only, and forgets an instance when its
//! tombstone comes (the orchestrators' retention of ended instances). So it holds what they hold,
//! whichever orchestrator owns the instance, and a restart reads the compacted topic, not the
//! history.
//!
//! Lists are oldest first, so the instances stuck longest come first, and paginated by a cursor
//! (the last instance's start and id), so a page costs what it returns, not what is kept: each
//! status, step and customer has its own ordered index, and a list walks the smallest of those
//! it asks for.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sagashop_contracts::events::StepPhase;
use serde::Serialize;

use crate::load::{Happened, Load, Sample};
use crate::machine::{Instance, Status};
use crate::versions::Versions;

/// Where an instance is, as the read model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaStatus {
    /// Running its steps forward.
    Running,
    /// Undoing completed steps after a failure.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// Compensated after a failure.
    Cancelled,
    /// A compensation gave up: needs attention (`sagashop saga retry`).
    Failed,
}

impl SagaStatus {
    /// Every status, in the order a saga moves through them.
    pub const ALL: [Self; 5] = [
        Self::Running,
        Self::Compensating,
        Self::Completed,
        Self::Cancelled,
        Self::Failed,
    ];

    /// Parses `RUNNING`, `COMPENSATING`, `COMPLETED`, `CANCELLED` or `FAILED`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == text)
    }

    /// The status as the API writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Compensating => "COMPENSATING",
            Self::Completed => "COMPLETED",
            Self::Cancelled => "CANCELLED",
            Self::Failed => "FAILED",
        }
    }
}

/// One line of an instance's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineLine {
    /// The step.
    pub step: String,
    /// What happened: the command sent, its reply or deadline, the compensation sent or done.
    pub phase: StepPhase,
    /// Which attempt.
    pub attempt: u32,
    /// The reason, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// One instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaInstance {
    /// The saga id (the trigger's key).
    pub saga_id: String,
    /// The saga's name.
    pub saga: String,
    /// Where it is.
    pub status: SagaStatus,
    /// The step it runs or undoes now (the last it ran, once ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// That step's attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The trigger's `customerId`, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// When it started (its trigger, or else its first timeline line).
    pub started_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Why it was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The step that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    /// Why it is `FAILED`: the compensation that gave up, and its last reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// The version of the saga's definition it runs on.
    pub version: String,
    /// Everything that happened, oldest first (left out of lists).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<TimelineLine>,
}

impl SagaInstance {
    /// The index position: oldest first, ties by id.
    fn position(&self) -> Position {
        (self.started_at.timestamp_millis(), self.saga_id.clone())
    }
}

type Position = (i64, String);

/// What a list asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this status.
    pub status: Option<SagaStatus>,
    /// Only instances at this step.
    pub step: Option<String>,
    /// Only instances that started at least this long ago.
    pub older_than: Option<Duration>,
    /// Only this customer's.
    pub customer: Option<String>,
    /// At most this many.
    pub limit: usize,
    /// After this instance (a [`Page::next`] cursor).
    pub after: Option<Cursor>,
}

/// Where a page ended: the last instance's start (Unix ms) and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(Position);

impl Cursor {
    /// Reads `<start ms>.<saga id>`; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let (at, id) = text.split_once('.')?;
        (!id.is_empty()).then_some(())?;
        Some(Self((at.parse().ok()?, id.to_owned())))
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0.0, self.0.1)
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// The instances, oldest first, without their timelines.
    pub sagas: Vec<SagaInstance>,
    /// The cursor of the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// How many instances the model holds per status (the whole model, not the filter).
    pub counts: BTreeMap<SagaStatus, usize>,
    /// How many that have not ended (running, compensating or `FAILED`) run on each version of
    /// the definition.
    pub versions: BTreeMap<String, usize>,
}

/// What an index is of: the instances with a status, at a step, or of a customer, or those on
/// a version that have not ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Status(SagaStatus),
    Step(String),
    Customer(String),
    Version(String),
    Flow(String, Where),
}

/// Where an instance that has not ended stands at its step (the flow's counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Where {
    /// Its command was sent; no answer yet.
    InFlight,
    /// Its last command had no reply before the deadline: it is sent again or compensated.
    TimedOut,
    /// The step is being undone.
    Compensating,
    /// The step's compensation gave up (`FAILED`, needs attention).
    Failed,
}

impl Where {
    /// Where `instance` stands; `None` once it has ended.
    fn of(instance: &SagaInstance) -> Option<Self> {
        let timed_out = instance
            .timeline
            .last()
            .is_some_and(|l| l.phase == StepPhase::TimedOut);
        match instance.status {
            SagaStatus::Running if timed_out => Some(Self::TimedOut),
            SagaStatus::Running => Some(Self::InFlight),
            SagaStatus::Compensating => Some(Self::Compensating),
            SagaStatus::Failed => Some(Self::Failed),
            SagaStatus::Completed | SagaStatus::Cancelled => None,
        }
    }
}

impl Key {
    /// The index keys of `instance`.
    fn of(instance: &SagaInstance) -> impl Iterator<Item = Self> {
        let ended = matches!(
            instance.status,
            SagaStatus::Completed | SagaStatus::Cancelled
        );
        std::iter::once(Self::Status(instance.status))
            .chain(instance.step.clone().map(Self::Step))
            .chain(instance.customer.clone().map(Self::Customer))
            .chain((!ended).then(|| Self::Version(instance.version.clone())))
            .chain(
                instance
                    .step
                    .clone()
                    .zip(Where::of(instance))
                    .map(|(step, at)| Self::Flow(step, at)),
            )
    }
}

#[derive(Default)]
struct Inner {
    instances: HashMap<String, SagaInstance>,
    /// Positions per status, step and customer, each oldest first.
    index: HashMap<Key, BTreeSet<Position>>,
}

impl Inner {
    /// The smallest index that holds every answer to `filter`: a customer's or a step's
    /// instances, or those of the status asked (every status's, to be merged, when none is).
    fn indexes(&self, filter: &Filter) -> Vec<&BTreeSet<Position>> {
        static EMPTY: BTreeSet<Position> = BTreeSet::new();
        let wanted = [
            filter.customer.clone().map(Key::Customer),
            filter.step.clone().map(Key::Step),
            filter.status.map(Key::Status),
        ];
        match wanted
            .into_iter()
            .flatten()
            .map(|key| self.index.get(&key).unwrap_or(&EMPTY))
            .min_by_key(|set| set.len())
        {
            Some(set) => vec![set],
            None => SagaStatus::ALL
                .iter()
                .filter_map(|s| self.index.get(&Key::Status(*s)))
                .collect(),
        }
    }

    fn unindex(&mut self, instance: &SagaInstance) {
        let position = instance.position();
        for key in Key::of(instance) {
            if let Some(set) = self.index.get_mut(&key) {
                set.remove(&position);
                if set.is_empty() && !matches!(key, Key::Status(_)) {
                    self.index.remove(&key);
                }
            }
        }
    }

    fn index(&mut self, instance: &SagaInstance) {
        let position = instance.position();
        for key in Key::of(instance) {
            self.index.entry(key).or_default().insert(position.clone());
        }
    }

    fn count(&self, status: SagaStatus) -> usize {
        self.index
            .get(&Key::Status(status))
            .map_or(0, BTreeSet::len)
    }

    fn versions(&self) -> BTreeMap<String, usize> {
        self.index
            .iter()
            .filter_map(|(key, set)| match key {
                Key::Version(v) => Some((v.clone(), set.len())),
                _ => None,
            })
            .collect()
    }

    fn flow(&self) -> BTreeMap<String, BTreeMap<Where, usize>> {
        let mut flow: BTreeMap<String, BTreeMap<Where, usize>> = BTreeMap::new();
        for (key, set) in &self.index {
            if let Key::Flow(step, at) = key {
                flow.entry(step.clone()).or_default().insert(*at, set.len());
            }
        }
        flow
    }
}

/// The read model of one saga.
pub struct SagaView {
    saga: String,
    /// The versions of the definition: their step names, by index.
    versions: Arc<Versions>,
    inner: RwLock<Inner>,
    /// Whether it has read the state topic to the end it had at start.
    caught_up: AtomicBool,
    /// The last minutes' starts and ends.
    load: Mutex<Load>,
}

impl std::fmt::Debug for SagaView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaView")
            .field("saga", &self.saga)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl SagaView {
    /// An empty model of the saga whose definitions `versions` knows.
    pub fn new(versions: Arc<Versions>) -> Self {
        Self {
            saga: versions.current().name.clone(),
            versions,
            inner: RwLock::default(),
            caught_up: AtomicBool::new(false),
            load: Mutex::default(),
        }
    }

    /// Says the model has read the state topic to the end it had at start.
    pub fn set_caught_up(&self) {
        self.caught_up.store(true, Ordering::Release);
    }

    /// Whether it has read the state topic to the end it had at start: until then an instance
    /// it lacks may still exist.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// How many instances that have not ended run on each version of the definition.
    pub fn versions_in_flight(&self) -> BTreeMap<String, usize> {
        self.read().versions()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        // Every update leaves the maps consistent before it can panic.
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state topic's record for `saga_id`: its whole state, or `None` (a tombstone) when
    /// the orchestrators forgot it.
    pub fn apply(&self, saga_id: &str, state: Option<&Instance>) {
        let mut inner = self.write();
        let Some(state) = state else {
            if let Some(old) = inner.instances.remove(saga_id) {
                inner.unindex(&old);
            }
            return;
        };
        let at = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or_default();
        let timeline: Vec<TimelineLine> = state
            .history
            .iter()
            .map(|h| TimelineLine {
                step: h.step.clone(),
                phase: h.phase,
                attempt: h.attempt,
                detail: h.detail.clone(),
                at: at(h.at),
            })
            .collect();
        let started = timeline.first().map_or_else(Utc::now, |l| l.at);
        let updated = timeline.last().map_or(started, |l| l.at);
        let current = self.versions.current();
        let version = if state.version.is_empty() {
            current.version.clone()
        } else {
            state.version.clone()
        };
        // The step's name in the instance's version; its last timeline line's step while that
        // version is not known here (yet).
        let step = self
            .versions
            .of(&version)
            .and_then(|d| d.steps.get(state.step).map(|s| s.name.clone()))
            .or_else(|| timeline.last().map(|l| l.step.clone()));
        let instance = SagaInstance {
            saga_id: saga_id.to_owned(),
            saga: self.saga.clone(),
            status: match state.status {
                Status::Running => SagaStatus::Running,
                Status::Compensating => SagaStatus::Compensating,
                Status::Completed => SagaStatus::Completed,
                Status::Cancelled => SagaStatus::Cancelled,
                Status::Failed => SagaStatus::Failed,
            },
            step,
            attempt: Some(state.attempt),
            customer: state
                .trigger
                .get("customerId")
                .and_then(|c| c.as_str())
                .map(str::to_owned),
            started_at: started,
            updated_at: updated,
            reason: state.failure.as_ref().map(|f| f.reason.clone()),
            failed_step: state
                .failure
                .as_ref()
                .map(|f| f.failed_step.clone())
                .filter(|s| !s.is_empty()),
            incident: state.incident.clone(),
            version,
            timeline,
        };
        let old = inner.instances.remove(saga_id);
        if let Some(old) = &old {
            inner.unindex(old);
        }
        inner.index(&instance);
        self.count(old.as_ref().map(|o| o.status), &instance);
        inner.instances.insert(saga_id.to_owned(), instance);
    }

    /// Counts in the load what changed from `was` (`None`: first seen) to `instance`.
    fn count(&self, was: Option<SagaStatus>, instance: &SagaInstance) {
        let took = u64::try_from(
            (instance.updated_at - instance.started_at)
                .num_milliseconds()
                .max(0),
        )
        .unwrap_or(0);
        let ended = match instance.status {
            _ if was == Some(instance.status) => None,
            SagaStatus::Completed => Some(Happened::Completed(took)),
            SagaStatus::Cancelled => Some(Happened::Cancelled(took)),
            SagaStatus::Failed => Some(Happened::Failed),
            SagaStatus::Running | SagaStatus::Compensating => None,
        };
        let now = Utc::now().timestamp_millis();
        let mut load = self.load.lock().unwrap_or_else(PoisonError::into_inner);
        if was.is_none() {
            load.count(
                Happened::Started,
                instance.started_at.timestamp_millis(),
                now,
            );
        }
        if let Some(ended) = ended {
            load.count(ended, instance.updated_at.timestamp_millis(), now);
        }
    }

    /// The load of the last `minutes` (at most 15): starts and ends per second and how long
    /// the ended instances took, per 5 s.
    pub fn load(&self, minutes: i64) -> Vec<Sample> {
        self.load
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .samples(minutes, Utc::now().timestamp_millis())
    }

    /// How many instances that have not ended stand where at each step (by step name, across
    /// the versions running).
    pub fn flow(&self) -> BTreeMap<String, BTreeMap<Where, usize>> {
        self.read().flow()
    }

    /// The step names of every version of the saga known here, the current version's first.
    pub fn steps(&self) -> Vec<String> {
        self.versions.step_names()
    }

    /// The versions of the saga's definition known here.
    pub fn versions(&self) -> Arc<Versions> {
        Arc::clone(&self.versions)
    }

    /// How many instances it holds.
    pub fn len(&self) -> usize {
        self.read().instances.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One instance, with its timeline.
    pub fn get(&self, saga_id: &str) -> Option<SagaInstance> {
        self.read().instances.get(saga_id).cloned()
    }

    /// The instances `filter` picks, oldest first, at most `filter.limit`.
    pub fn list(&self, filter: &Filter, now: DateTime<Utc>) -> Page {
        let inner = self.read();
        let sets = inner.indexes(filter);
        // Started at or before this (Unix ms) to be old enough.
        let latest_start = filter.older_than.map(|age| {
            now.timestamp_millis()
                .saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
        });
        let start = filter.after.as_ref().map(|c| c.0.clone());
        // Each status's index in order from the cursor, merged oldest first.
        let mut streams: Vec<_> = sets
            .into_iter()
            .map(|set| {
                let range = match &start {
                    Some(after) => set.range((
                        std::ops::Bound::Excluded(after.clone()),
                        std::ops::Bound::Unbounded,
                    )),
                    None => set.range::<Position, _>(..),
                };
                range.peekable()
            })
            .collect();
        let mut sagas = Vec::new();
        let mut last = None;
        let mut more = false;
        // The oldest next instance of any of the indexes.
        while let Some((position, k)) = streams
            .iter_mut()
            .enumerate()
            .filter_map(|(k, s)| s.peek().copied().map(|p| (p, k)))
            .min()
        {
            streams[k].next();
            if latest_start.is_some_and(|latest| position.0 > latest) {
                // Oldest first: everything after this started later still.
                break;
            }
            let Some(instance) = inner.instances.get(&position.1) else {
                continue;
            };
            if !filter.picks(instance) {
                continue;
            }
            if sagas.len() == filter.limit {
                more = true;
                break;
            }
            last = Some(position.clone());
            sagas.push(SagaInstance {
                timeline: Vec::new(),
                ..instance.clone()
            });
        }
        let counts = SagaStatus::ALL
            .into_iter()
            .map(|s| (s, inner.count(s)))
            .collect();
        Page {
            sagas,
            next: more.then(|| last.map(|p| Cursor(p).to_string())).flatten(),
            counts,
            versions: inner.versions(),
        }
    }
}

impl Filter {
    /// Whether `instance` has the step and customer asked (the index picked by
    /// [`Inner::indexes`] answers one of them at most).
    fn picks(&self, instance: &SagaInstance) -> bool {
        let step = self
            .step
            .as_ref()
            .is_none_or(|s| instance.step.as_ref() == Some(s));
        let customer = self
            .customer
            .as_ref()
            .is_none_or(|c| instance.customer.as_ref() == Some(c));
        step && customer
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use crate::definition::Saga;
    use crate::machine::{Reply, Transition};

    fn definition() -> crate::Definition {
        Saga::load(
            include_str!("../../../k8s/sagas/order-fulfilment.yaml"),
            "order-fulfilment.yaml",
        )
        .unwrap()
    }

    /// A saga started at `ms` by `customer`.
    fn started(d: &crate::Definition, id: &str, customer: &str, ms: i64) -> Instance {
        let trigger = serde_json::json!({ "customerId": customer });
        let trigger = trigger.as_object().unwrap().clone();
        Instance::start(d, id.into(), "c".into(), trigger, ms).0
    }

    fn reply(d: &crate::Definition, i: &mut Instance, command: &str, reply: &Reply, ms: i64) {
        let step = d.steps[i.step].name.clone();
        let attempt = i.attempt;
        assert!(matches!(
            i.apply(d, &step, command, attempt, reply, ms),
            Transition::Changed(_)
        ));
    }

    fn ids(page: &Page) -> Vec<&str> {
        page.sagas.iter().map(|s| s.saga_id.as_str()).collect()
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    #[test]
    fn the_flow_counts_instances_where_they_stand_and_the_load_counts_starts_and_ends_once() {
        let d = definition();
        let v = SagaView::new(Arc::new(Versions::new(d.clone())));
        let now = Utc::now().timestamp_millis() - 10_000;
        let waiting = started(&d, "w", "c-1", now);
        v.apply("w", Some(&waiting));
        v.apply("w", Some(&waiting));
        let mut undoing = started(&d, "u", "c-2", now);
        reply(
            &d,
            &mut undoing,
            "ReserveInventory",
            &Reply::Succeeded,
            now + 10,
        );
        let declined = Reply::Failed {
            reason: "card declined".into(),
            retryable: false,
        };
        reply(&d, &mut undoing, "AuthorizePayment", &declined, now + 20);
        v.apply("u", Some(&undoing));
        let flow = v.flow();
        let first = &d.steps[0].name;
        assert_eq!(flow[first].get(&Where::InFlight), Some(&1), "{flow:?}");
        assert_eq!(flow[first].get(&Where::Compensating), Some(&1), "{flow:?}");
        reply(
            &d,
            &mut undoing,
            "ReleaseInventory",
            &Reply::Succeeded,
            now + 30,
        );
        v.apply("u", Some(&undoing));
        v.apply("u", Some(&undoing));
        assert_eq!(v.flow()[first].get(&Where::Compensating), None, "it ended");

        let samples = v.load(1);
        let started: f64 = samples.iter().map(|s| s.started).sum();
        let cancelled: f64 = samples.iter().map(|s| s.cancelled).sum();
        assert!(
            (started - 0.4).abs() < 1e-9,
            "two starts over 5 s: {samples:?}"
        );
        assert!(
            (cancelled - 0.2).abs() < 1e-9,
            "one end, counted once: {samples:?}"
        );
        let took = samples.iter().find_map(|s| s.p50_ms).unwrap();
        assert!((30..=40).contains(&took), "30 ms from start to end: {took}");
    }

    #[test]
    fn an_instance_shows_its_status_step_customer_and_timeline_and_a_tombstone_forgets_it() {
        let d = definition();
        let v = SagaView::new(Arc::new(Versions::new(d.clone())));
        let mut i = started(&d, "s1", "c-1", 1_000);
        reply(&d, &mut i, "ReserveInventory", &Reply::Succeeded, 1_010);
        let declined = Reply::Failed {
            reason: "card declined".into(),
            retryable: false,
        };
        reply(&d, &mut i, "AuthorizePayment", &declined, 1_020);
        v.apply("s1", Some(&i));
        let s = v.get("s1").unwrap();
        assert_eq!(s.status, SagaStatus::Compensating);
        assert_eq!(
            s.step.as_deref(),
            Some("reserve-inventory"),
            "undoing the first step"
        );
        assert_eq!(s.customer.as_deref(), Some("c-1"));
        assert_eq!((s.started_at, s.updated_at), (at(1_000), at(1_020)));
        assert_eq!(s.failed_step.as_deref(), Some("authorize-payment"));
        let phases: Vec<StepPhase> = s.timeline.iter().map(|l| l.phase).collect();
        assert_eq!(
            phases,
            [
                StepPhase::Started,
                StepPhase::Succeeded,
                StepPhase::Started,
                StepPhase::Failed,
                StepPhase::Compensating
            ]
        );
        reply(&d, &mut i, "ReleaseInventory", &Reply::Succeeded, 1_030);
        v.apply("s1", Some(&i));
        let page = v.list(
            &Filter {
                limit: 10,
                ..Filter::default()
            },
            at(2_000),
        );
        assert_eq!(page.counts[&SagaStatus::Cancelled], 1);
        assert_eq!(
            page.counts[&SagaStatus::Compensating],
            0,
            "moved, not copied"
        );
        assert!(
            page.sagas[0].timeline.is_empty(),
            "lists leave timelines out"
        );
        v.apply("s1", None);
        assert!(v.get("s1").is_none() && v.is_empty());
        assert_eq!(
            v.list(
                &Filter {
                    limit: 10,
                    ..Filter::default()
                },
                at(2_000)
            )
            .counts[&SagaStatus::Cancelled],
            0
        );
    }

    #[test]
    fn lists_filter_by_status_step_age_and_customer_and_page_with_a_cursor() {
        let d = definition();
        let v = SagaView::new(Arc::new(Versions::new(d.clone())));
        for n in 0..10 {
            let id = format!("s{n}");
            let mut i = started(&d, &id, if n % 2 == 0 { "even" } else { "odd" }, n * 1000);
            if n < 4 {
                for command in ["ReserveInventory", "AuthorizePayment", "CreateShipment"] {
                    reply(&d, &mut i, command, &Reply::Succeeded, n * 1000 + 1);
                }
            } else if n < 6 {
                reply(
                    &d,
                    &mut i,
                    "ReserveInventory",
                    &Reply::Succeeded,
                    n * 1000 + 1,
                );
            }
            v.apply(&id, Some(&i));
        }
        let all = |f: Filter| v.list(&Filter { limit: 100, ..f }, at(20_000));
        let running = all(Filter {
            status: Some(SagaStatus::Running),
            ..Filter::default()
        });
        assert_eq!(ids(&running), ["s4", "s5", "s6", "s7", "s8", "s9"]);
        assert_eq!(running.counts[&SagaStatus::Completed], 4);
        let paying = all(Filter {
            step: Some("authorize-payment".into()),
            status: Some(SagaStatus::Running),
            ..Filter::default()
        });
        assert_eq!(ids(&paying), ["s4", "s5"]);
        let old_odd = all(Filter {
            older_than: Some(Duration::from_secs(13)),
            customer: Some("odd".into()),
            ..Filter::default()
        });
        assert_eq!(ids(&old_odd), ["s1", "s3", "s5", "s7"], "started by 7 s");
        // Pages of three, oldest first, until the cursor runs out.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = v.list(
                &Filter {
                    limit: 3,
                    after: after.take(),
                    ..Filter::default()
                },
                at(20_000),
            );
            seen.extend(ids(&page).into_iter().map(str::to_owned));
            match page.next {
                Some(next) => after = Some(Cursor::parse(&next).unwrap()),
                None => break,
            }
        }
        let expected: Vec<String> = (0..10).map(|n| format!("s{n}")).collect();
        assert_eq!(seen, expected);
        assert!(Cursor::parse("12").is_none() && Cursor::parse("x.y").is_none());
    }

    #[test]
    fn an_instance_on_an_old_version_shows_that_versions_step_and_counts_until_it_ends() {
        let old = definition();
        let mut spec = old.spec.clone();
        spec.steps.swap(0, 1);
        let new = spec.validate(&old.name).unwrap();
        let versions = Arc::new(Versions::new(new.clone()));
        let record = crate::versions::VersionRecord {
            saga: old.name.clone(),
            version: old.version.clone(),
            spec: old.spec.clone(),
            published_at: Utc::now(),
            instances: None,
        };
        versions.apply(&old.version, Some(&serde_json::to_vec(&record).unwrap()));
        let v = SagaView::new(Arc::clone(&versions));
        let mut on_old = started(&old, "old", "c", 1_000);
        v.apply("old", Some(&on_old));
        v.apply("new", Some(&started(&new, "new", "c", 2_000)));
        assert_eq!(
            v.get("old").unwrap().step.as_deref(),
            Some("reserve-inventory")
        );
        assert_eq!(
            v.get("new").unwrap().step.as_deref(),
            Some("authorize-payment")
        );
        assert_eq!(
            v.versions_in_flight(),
            BTreeMap::from([(old.version.clone(), 1), (new.version.clone(), 1)])
        );
        for command in ["ReserveInventory", "AuthorizePayment", "CreateShipment"] {
            reply(&old, &mut on_old, command, &Reply::Succeeded, 1_500);
        }
        v.apply("old", Some(&on_old));
        assert_eq!(v.get("old").unwrap().status, SagaStatus::Completed);
        assert_eq!(
            v.versions_in_flight(),
            BTreeMap::from([(new.version.clone(), 1)]),
            "an ended instance no longer holds its version"
        );
        let summary = versions.summary(&v.versions_in_flight());
        assert!(summary[0].current && summary[0].instances == 1);
        assert_eq!(summary[1].steps[0], "reserve-inventory");
        assert_eq!(summary[1].instances, 0);
    }
}
