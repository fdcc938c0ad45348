//! The orchestrator: runs any valid [`Definition`] on Kafka.
//!
//! It consumes the trigger topic and the saga's reply topic in exactly-once mode: each input
//! updates the instance (kept in the compacted `saga.<name>.state` topic, restored on start)
//! and publishes the resulting commands, progress and outcome in one transaction. Commands are
//! built from the trigger's payload plus the step context (`sagaId`, `sagaName`, `step`,
//! `attempt`) and carry a `reply-to` header naming the reply topic. Step deadlines are checked
//! by a ticker that publishes [`StepTimedOut`] to the reply topic, so a deadline is handled in
//! a transaction like any reply. Inputs of one saga never run at once (a lock per saga id),
//! even when they arrive on different topics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sagashop_contracts::commands::{
    SagaCancelRequested, SagaEnded, SagaOutcome, SagaRetryRequested, StepContext, StepFailed,
    StepSucceeded, StepTimedOut,
};
use sagashop_contracts::events::{SagaStepChanged, StepPhase};
use sagashop_contracts::{Contract, Envelope, Metadata};
use sagashop_kit::router::HandlerResult;
use sagashop_kit::{
    Context, Error, Expiry, FailurePolicy, HandlerError, KeyLocks, Outgoing, Publisher, Record,
    Router, Running, Store, Task, Wiring,
};
use tokio_util::sync::CancellationToken;

use crate::definition::{Definition, StepDefinition};
use crate::machine::{Action, Instance, Reply, Status, Transition};
use crate::metrics::{Direction, SagaMetrics, StepOutcome};
use crate::versions::{Learned, Versions};
use crate::view::SagaView;

/// Encodes a message of an event type from its JSON fields.
type Encode<'a> =
    dyn Fn(&str, serde_json::Map<String, serde_json::Value>) -> Result<Outgoing, HandlerError> + 'a;

/// The header on every command naming the topic its reply goes to.
pub const REPLY_TO: &str = "reply-to";

/// The orchestrator's own settings (its group, dead letters and transactional ids come from
/// its [`Wiring`]).
#[derive(Debug, Clone)]
pub struct OrchestratorSettings {
    /// The saga, with the topic names it runs on.
    pub definition: Definition,
    /// How often deadlines are checked.
    pub tick: Duration,
    /// Who may cancel and retry instances over HTTP.
    pub action_token: sagashop_kit::http::ActionToken,
}

struct Orchestrator {
    versions: Arc<Versions>,
    instances: Store<Instance>,
    locks: KeyLocks,
    metrics: SagaMetrics,
}

impl Orchestrator {
    async fn on_trigger(&self, record: Record, metadata: Metadata) -> HandlerResult {
        let saga_id = record
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                HandlerError::Permanent("a trigger needs a UTF-8 key: the saga id".into())
            })?
            .to_owned();
        let trigger: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(record.payload.as_deref().unwrap_or_default()).map_err(|e| {
                HandlerError::Permanent(format!("the trigger's payload is not a JSON object: {e}"))
            })?;
        let _held = self.locks.lock(&saga_id).await;
        if self.instances.get(&saga_id).is_some() {
            tracing::debug!(%saga_id, "trigger seen before; ignored");
            return Ok(Vec::new());
        }
        let d = Arc::clone(self.versions.current());
        let (instance, actions) =
            Instance::start(&d, saga_id, metadata.correlation_id.clone(), trigger, now());
        tracing::info!(saga = %d.name, saga_id = %instance.saga_id, version = %d.version, "saga started");
        self.metrics.started();
        self.outputs(&d, instance, &actions, &metadata)
    }

    /// The definition `instance` runs on: the version it started with. Not known here yet
    /// (another orchestrator started it on a version whose record has not arrived) is
    /// transient: the input is retried until it has.
    fn definition_of(&self, instance: &Instance) -> Result<Arc<Definition>, HandlerError> {
        self.versions.of(&instance.version).ok_or_else(|| {
            HandlerError::Transient(format!(
                "saga {} runs on version {} of its definition, not known here (yet)",
                instance.saga_id, instance.version
            ))
        })
    }

    fn name(&self) -> &str {
        &self.versions.current().name
    }

    async fn on_reply(
        &self,
        context: &StepContext,
        command: &str,
        reply: Reply,
        metadata: &Metadata,
    ) -> HandlerResult {
        if context.saga_name != self.name() {
            return Ok(Vec::new());
        }
        let _held = self.locks.lock(&context.saga_id).await;
        let Some(mut instance) = self.instances.get(&context.saga_id) else {
            if matches!(reply, Reply::TimedOut) {
                return Ok(Vec::new());
            }
            // Cannot happen with transactional state, unless the reply came later than the
            // retention of its finished saga, the state topic was lost or the reply is forged:
            // retried, then dead-lettered, never silently dropped.
            return Err(HandlerError::Transient(format!(
                "no state for saga {} (yet)",
                context.saga_id
            )));
        };
        let d = self.definition_of(&instance)?;
        let before = (instance.status, instance.step, instance.backing_off);
        let sent_at = instance.sent_at(&context.step, context.attempt);
        let now = now();
        match instance.apply(&d, &context.step, command, context.attempt, &reply, now) {
            Transition::Ignored(why) => {
                tracing::debug!(saga_id = %context.saga_id, step = %context.step, command, why, "reply ignored");
                Ok(Vec::new())
            }
            Transition::Changed(actions) => {
                self.observe(&context.step, &reply, before, sent_at, &instance, now);
                self.outputs(&d, instance, &actions, metadata)
            }
        }
    }

    /// A request to cancel an instance: compensates it if it still runs; otherwise (ended,
    /// compensating, unknown here) changes nothing, said in the log.
    async fn on_cancel(&self, request: &SagaCancelRequested, metadata: &Metadata) -> HandlerResult {
        let asked = Asked {
            verb: "cancel",
            saga_id: &request.saga_id,
            saga_name: &request.saga_name,
            requested_by: &request.requested_by,
            reason: &request.reason,
        };
        self.on_request(&asked, metadata, Instance::cancel).await
    }

    /// A request to retry an instance: a `FAILED` one sends its compensation again, a running
    /// one its awaited command; an ended or unknown one is left alone, said in the log.
    async fn on_retry(&self, request: &SagaRetryRequested, metadata: &Metadata) -> HandlerResult {
        let asked = Asked {
            verb: "retry",
            saga_id: &request.saga_id,
            saga_name: &request.saga_name,
            requested_by: &request.requested_by,
            reason: &request.reason,
        };
        self.on_request(&asked, metadata, Instance::retry).await
    }

    /// Applies a request by hand (`act`: [`Instance::cancel`] or [`Instance::retry`]) to the
    /// instance it names, under the instance's lock, as the steps' replies are.
    async fn on_request(
        &self,
        asked: &Asked<'_>,
        metadata: &Metadata,
        act: impl FnOnce(&mut Instance, &Definition, &str, &str, i64) -> Transition,
    ) -> HandlerResult {
        let Asked {
            verb,
            saga_id,
            saga_name,
            requested_by,
            reason,
        } = *asked;
        if saga_name != self.name() {
            return Ok(Vec::new());
        }
        let _held = self.locks.lock(saga_id).await;
        let Some(mut instance) = self.instances.get(saga_id) else {
            tracing::warn!(
                saga_id,
                by = requested_by,
                verb,
                "request for a saga not kept here; ignored"
            );
            return Ok(Vec::new());
        };
        let d = self.definition_of(&instance)?;
        match act(&mut instance, &d, requested_by, reason, now()) {
            Transition::Ignored(why) => {
                tracing::info!(saga_id, by = requested_by, verb, why, "request ignored");
                Ok(Vec::new())
            }
            Transition::Changed(actions) => {
                tracing::info!(saga_id, by = requested_by, verb, reason, status = ?instance.status, attempt = instance.attempt, "request by hand applied");
                self.outputs(&d, instance, &actions, metadata)
            }
        }
    }

    /// Counts a reply (or deadline) the instance took: its outcome and time per step and
    /// direction, and a compensation given up on.
    fn observe(
        &self,
        step: &str,
        reply: &Reply,
        before: Before,
        sent_at: Option<i64>,
        after: &Instance,
        now: i64,
    ) {
        let Some((direction, outcome, abandoned)) = judge(reply, before, after) else {
            return;
        };
        let seconds = sent_at.map(|at| millis_to_seconds(now - at));
        self.metrics.replied(step, direction, outcome, seconds);
        if abandoned {
            self.metrics.abandoned(step);
        }
    }

    /// Counts an instance that ended: its outcome and its time since its first command.
    fn finished(&self, instance: &Instance, completed: bool) {
        let now = now();
        let began = instance.history.first().map_or(now, |e| e.at);
        self.metrics
            .finished(completed, millis_to_seconds(now - began));
    }

    /// `SagaStepChanged` for one entry of the saga's history, on the outcome topic.
    fn progress(
        d: &Definition,
        saga_id: &str,
        entry: &crate::machine::HistoryEntry,
        parent: &Metadata,
    ) -> Result<Outgoing, HandlerError> {
        let event = SagaStepChanged {
            saga_id: saga_id.to_owned(),
            saga_name: d.name.clone(),
            step: entry.step.clone(),
            phase: entry.phase,
            attempt: entry.attempt,
            detail: entry.detail.clone(),
            at: chrono::DateTime::from_timestamp_millis(entry.at).unwrap_or_default(),
        };
        let envelope = Envelope::caused_by(parent, saga_id.to_owned(), event);
        Outgoing::event(&d.outcome.topic, &envelope)
            .map_err(|e| HandlerError::Permanent(e.to_string()))
    }

    /// [`SagaEnded`] for every step `instance` sent a command, to that step's command topic and
    /// keyed like its commands: each participant learns that what it keeps of the saga is
    /// finished work, and forgets it after a grace. Sent in the transaction that ends the saga,
    /// so a participant is never told before the saga's outcome is written.
    fn ended(
        d: &Definition,
        instance: &Instance,
        outcome: SagaOutcome,
        raw: &Encode<'_>,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        let outcome = serde_json::to_value(outcome)
            .map_err(|e| HandlerError::Permanent(format!("encoding an outcome: {e}")))?;
        d.steps
            .iter()
            .filter(|step| {
                instance
                    .history
                    .iter()
                    .any(|e| e.step == step.name && e.phase == StepPhase::Started)
            })
            .map(|step| {
                let mut payload = step_payload(d, instance, step, 1);
                payload.insert("outcome".into(), outcome.clone());
                Ok(to_step(
                    d,
                    instance,
                    step,
                    raw(SagaEnded::EVENT_TYPE, payload)?,
                ))
            })
            .collect()
    }

    /// The messages for `actions` of an instance running on `d`, and the instance's new
    /// state, caused by `parent`.
    fn outputs(
        &self,
        d: &Definition,
        instance: Instance,
        actions: &[Action],
        parent: &Metadata,
    ) -> HandlerResult {
        let mut outputs = Vec::with_capacity(actions.len() + 1);
        let raw = |event_type: &str, payload: serde_json::Map<String, serde_json::Value>| {
            let metadata = Metadata {
                event_type: event_type.to_owned(),
                schema_version: 1,
                ..Metadata::caused_by::<SagaStepChanged>(parent)
            };
            let bytes = serde_json::to_vec(&payload)
                .map_err(|e| HandlerError::Permanent(format!("encoding {event_type}: {e}")))?;
            Ok::<_, HandlerError>(Outgoing::raw("", &instance.saga_id, &metadata, bytes))
        };
        for action in actions {
            match action {
                Action::Send {
                    step,
                    command,
                    attempt,
                } => {
                    let step = &d.steps[*step];
                    let mut payload = step_payload(d, &instance, step, *attempt);
                    if step.compensation.as_deref() == Some(command.as_str())
                        && instance
                            .history
                            .iter()
                            .any(|e| e.step == step.name && e.phase == StepPhase::Succeeded)
                    {
                        payload.insert("succeededBefore".into(), true.into());
                    }
                    outputs.push(to_step(d, &instance, step, raw(command, payload)?));
                }
                Action::Progress(entry) => {
                    if d.outcome.progress.is_some() {
                        outputs.push(Self::progress(d, &instance.saga_id, entry, parent)?);
                    }
                }
                Action::Completed => {
                    self.finished(&instance, true);
                    let mut payload = instance.trigger.clone();
                    payload.insert("completedAt".into(), timestamp().into());
                    let mut out = raw(&d.outcome.completed, payload)?;
                    out.topic = d.outcome.topic.clone();
                    tracing::info!(saga_id = %instance.saga_id, "saga completed");
                    outputs.push(out);
                    outputs.extend(Self::ended(d, &instance, SagaOutcome::Completed, &raw)?);
                }
                Action::Failed(incident) => {
                    tracing::error!(saga_id = %instance.saga_id, incident = %incident, "saga FAILED: a compensation gave up; it waits for `sagashop saga retry`");
                }
                Action::Cancelled(failure) => {
                    self.finished(&instance, false);
                    let mut payload = instance.trigger.clone();
                    payload.insert("reason".into(), failure.reason.clone().into());
                    payload.insert("failedStep".into(), failure.failed_step.clone().into());
                    payload.insert("cancelledAt".into(), timestamp().into());
                    let mut out = raw(&d.outcome.cancelled, payload)?;
                    out.topic = d.outcome.topic.clone();
                    tracing::info!(saga_id = %instance.saga_id, reason = %failure.reason, step = %failure.failed_step, "saga cancelled");
                    outputs.push(out);
                    outputs.extend(Self::ended(d, &instance, SagaOutcome::Cancelled, &raw)?);
                }
            }
        }
        let saga_id = instance.saga_id.clone();
        outputs.push(
            self.instances
                .put(&saga_id, instance)
                .map_err(|e| HandlerError::Transient(e.to_string()))?,
        );
        Ok(outputs)
    }
}

/// A message for `step`'s participant: the trigger's fields and the step context.
fn step_payload(
    d: &Definition,
    instance: &Instance,
    step: &StepDefinition,
    attempt: u32,
) -> serde_json::Map<String, serde_json::Value> {
    let mut payload = instance.trigger.clone();
    payload.insert("sagaId".into(), instance.saga_id.clone().into());
    payload.insert("sagaName".into(), d.name.clone().into());
    payload.insert("step".into(), step.name.clone().into());
    payload.insert("attempt".into(), attempt.into());
    payload
}

/// `out` addressed to `step`'s participant: its command topic, keyed like its commands, with
/// the saga's reply topic in the `reply-to` header.
fn to_step(d: &Definition, instance: &Instance, step: &StepDefinition, out: Outgoing) -> Outgoing {
    let mut out = out.with_header(REPLY_TO, &d.reply_topic);
    out.topic = step.command_topic.clone();
    if let Some(field) = &step.key {
        out.key = Some(command_key(instance, field).into_bytes());
    }
    out
}

/// The value of the trigger's `field` (a name, or a JSON pointer such as `/items/0/productId`),
/// which keys a step's commands; the saga id when the
/// trigger lacks it (said once per command, since that participant then has no single owner
/// for the state the field names).
fn command_key(instance: &Instance, field: &str) -> String {
    let value = match field.strip_prefix('/') {
        // A JSON pointer into the trigger: `/items/0/productId`.
        Some(path) => {
            let (top, rest) = path.split_once('/').unwrap_or((path, ""));
            let top = instance.trigger.get(top);
            if rest.is_empty() {
                top
            } else {
                top.and_then(|v| v.pointer(&format!("/{rest}")))
            }
        }
        None => instance.trigger.get(field),
    };
    match value {
        Some(serde_json::Value::String(value)) if !value.is_empty() => value.clone(),
        Some(value @ serde_json::Value::Number(_)) => value.to_string(),
        _ => {
            tracing::warn!(saga_id = %instance.saga_id, field, "the trigger has no such field to key the command by; keyed by the saga id");
            instance.saga_id.clone()
        }
    }
}

/// An instance's status, step and backoff before it took a reply.
type Before = (Status, usize, bool);

/// What a reply that changed an instance was: its direction, its outcome, and whether it gave
/// up a compensation (a failure after which the saga moved past the step). `None` for the end
/// of a retry backoff, which answers no command.
fn judge(
    reply: &Reply,
    (status, _step, backing_off): Before,
    after: &Instance,
) -> Option<(Direction, StepOutcome, bool)> {
    let outcome = match reply {
        Reply::Succeeded => StepOutcome::Succeeded,
        Reply::Failed { .. } => StepOutcome::Failed,
        Reply::TimedOut if backing_off => return None,
        Reply::TimedOut => StepOutcome::TimedOut,
    };
    let direction = if status == Status::Compensating {
        Direction::Compensation
    } else {
        Direction::Forward
    };
    let abandoned = direction == Direction::Compensation
        && outcome != StepOutcome::Succeeded
        && after.status == Status::Failed;
    Some((direction, outcome, abandoned))
}

/// Who asked what of which saga, and why (a cancel or a retry by hand).
#[derive(Clone, Copy)]
struct Asked<'a> {
    verb: &'static str,
    saga_id: &'a str,
    saga_name: &'a str,
    requested_by: &'a str,
    reason: &'a str,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[expect(
    clippy::cast_precision_loss,
    reason = "durations of milliseconds, far below 2^52"
)]
fn millis_to_seconds(millis: i64) -> f64 {
    millis.max(0) as f64 / 1000.0
}

fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Restores the saga state, then runs the orchestrator until shutdown; serves `GET
/// /api/sagas[/{id}]` and the retry and cancel requests over a view of every instance. A
/// finished (completed or cancelled) instance is kept for the context's retention after its
/// last change: keep that at least as long as the edge keeps idempotency keys, so a late keyed
/// duplicate still finds its saga.
pub async fn start(
    context: &Context,
    wiring: Wiring,
    settings: OrchestratorSettings,
) -> Result<Running, Error> {
    let (kafka, monitor, shutdown) = (&context.kafka, &context.monitor, &context.shutdown);
    let d = settings.definition;
    // Restored per assigned partition by the processor: the trigger, reply and state topics
    // are co-partitioned by saga id.
    let instances: Store<Instance> = Store::owned(
        kafka,
        &format!("saga:{}", d.name),
        wiring.topic("state")?,
        monitor,
    );
    let versions = Arc::new(Versions::new(d.clone()));
    let orchestrator = Arc::new(Orchestrator {
        versions: Arc::clone(&versions),
        instances: instances.clone(),
        locks: KeyLocks::default(),
        metrics: SagaMetrics::new(&d.name, monitor),
    });
    let router = routes(&orchestrator, &d);
    let publisher = context.publisher(&wiring)?;
    let processor = context
        .processor(&wiring, router, publisher.clone())
        .await?
        .reloads(instances.clone())
        .expires(Expiry::new().of(&instances, context.retention, |i| i.status.is_final()));
    let stats = processor.stats();
    let api_publisher = publisher.clone();
    let view = Arc::new(SagaView::new(Arc::clone(&versions)));
    let ticker = tokio::spawn(tick(
        Arc::clone(&orchestrator),
        Arc::clone(&view),
        publisher.clone(),
        settings.tick,
        shutdown.clone(),
    ));
    let following = follow_state(context, &d, Arc::clone(&view));
    let versioning = follow_versions(context, versions, publisher);
    let shutdown = shutdown.clone();
    let task = Task::spawn("the orchestrator", async move {
        let followed = async move {
            following
                .await
                .map_err(|e| Error::Internal(format!("the saga view panicked: {e}")))?
        };
        // Both run until shutdown; the first to fail ends the service at once.
        let result = tokio::try_join!(processor.run(shutdown), followed).map(drop);
        ticker.abort();
        versioning.abort();
        result
    });
    let api = crate::api::routes(
        view,
        api_publisher,
        d.reply_topic.clone(),
        settings.action_token.clone(),
    );
    Ok(Running::new(wiring, stats, task).with_routes(api))
}

/// The orchestrator's handlers: the trigger starts a saga, replies and requests by hand move it.
fn routes(orchestrator: &Arc<Orchestrator>, d: &Definition) -> Router {
    // Replies are retried in place while a saga's state is not visible, then dead-lettered.
    let policy = FailurePolicy::default();
    let o = || Arc::clone(orchestrator);
    let (o0, o1, o2, o3, o4, o5) = (o(), o(), o(), o(), o(), o());
    let trigger = move |record: Record, metadata: Metadata| {
        let o = Arc::clone(&o0);
        async move { o.on_trigger(record, metadata).await }
    };
    Router::new()
        .on_raw(&d.trigger.topic, &d.trigger.event, policy, trigger)
        .on(&d.reply_topic, move |env: Envelope<StepSucceeded>| {
            let o = Arc::clone(&o1);
            async move {
                let p = env.payload;
                o.on_reply(&p.context, &p.command, Reply::Succeeded, &env.metadata)
                    .await
            }
        })
        .on(&d.reply_topic, move |env: Envelope<StepFailed>| {
            let o = Arc::clone(&o2);
            async move {
                let p = env.payload;
                let reply = Reply::Failed {
                    reason: p.reason,
                    retryable: p.retryable,
                };
                o.on_reply(&p.context, &p.command, reply, &env.metadata)
                    .await
            }
        })
        .on(&d.reply_topic, move |env: Envelope<StepTimedOut>| {
            let o = Arc::clone(&o3);
            async move {
                let p = env.payload;
                o.on_reply(&p.context, &p.command, Reply::TimedOut, &env.metadata)
                    .await
            }
        })
        .on(&d.reply_topic, move |env: Envelope<SagaCancelRequested>| {
            let o = Arc::clone(&o4);
            async move { o.on_cancel(&env.payload, &env.metadata).await }
        })
        .on(&d.reply_topic, move |env: Envelope<SagaRetryRequested>| {
            let o = Arc::clone(&o5);
            async move { o.on_retry(&env.payload, &env.metadata).await }
        })
}

/// Follows the state topic into `view` (every instance, whichever member owns it) until
/// shutdown. If following fails, so does the orchestrator (and its process, to be restarted).
fn follow_state(
    context: &Context,
    d: &Definition,
    view: Arc<SagaView>,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    let ready = context.monitor.component(format!("saga-view:{}", d.name));
    let saga = d.name.clone();
    let caught_up = Arc::clone(&view);
    let following = sagashop_kit::reader::follow(
        &context.kafka,
        "saga-view",
        &d.state_topic,
        context.shutdown.clone(),
        move |record| {
            let id = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default());
            match record.payload.as_deref() {
                None => view.apply(&id, None),
                Some(bytes) => match serde_json::from_slice::<Instance>(bytes) {
                    Ok(state) => view.apply(&id, Some(&state)),
                    Err(e) => {
                        tracing::warn!(%saga, offset = record.offset, error = %e, "an unreadable saga state; the view skips it");
                    }
                },
            }
        },
        move || {
            caught_up.set_caught_up();
            ready.set(true);
        },
    );
    tokio::spawn(async move {
        let followed = following.await;
        if let Err(e) = &followed {
            tracing::error!(error = %e, "the saga view stopped following its state topic");
        }
        followed
    })
}

/// Publishes the orchestrator's own version of the definition, then follows the versions topic
/// into `versions` until shutdown, publishing its own again whenever it sees it tombstoned.
/// Ready (`saga-versions:<saga>`) once it has read the topic to its end.
fn follow_versions(
    context: &Context,
    versions: Arc<Versions>,
    publisher: Publisher,
) -> tokio::task::JoinHandle<()> {
    let d = Arc::clone(versions.current());
    let ready = context
        .monitor
        .component(format!("saga-versions:{}", d.name));
    let (republish, mut asked) = tokio::sync::mpsc::unbounded_channel::<()>();
    let learning = Arc::clone(&versions);
    let following = sagashop_kit::reader::follow(
        &context.kafka,
        "saga-versions",
        &d.versions_topic,
        context.shutdown.clone(),
        move |record| {
            let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default());
            match learning.apply(&key, record.payload.as_deref()) {
                Learned::Version(v) => tracing::debug!(version = %v, "saga version known"),
                Learned::Forgot(v) => tracing::info!(version = %v, "saga version retired"),
                Learned::OwnTombstoned => drop(republish.send(())),
                Learned::Skipped => {}
            }
        },
        move || ready.set(true),
    );
    let shutdown = context.shutdown.clone();
    tokio::spawn(async move {
        let following = tokio::spawn(async move {
            if let Err(e) = following.await {
                tracing::error!(error = %e, "the orchestrator stopped following its saga's versions");
            }
        });
        let mut backoff = Duration::from_millis(200);
        loop {
            let published = match versions.record() {
                Ok(record) => publisher
                    .send_all(&[record])
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match published {
                Ok(()) => {
                    tracing::info!(saga = %d.name, version = %d.version, "saga version published");
                    backoff = Duration::from_millis(200);
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        next = asked.recv() => if next.is_none() { break },
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not publish the saga's version; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        following.abort();
    })
}

/// How often the ticker looks for old versions to retire.
const RETIRE_EVERY: Duration = Duration::from_secs(5);

/// Publishes a [`StepTimedOut`] for every instance whose deadline passed, once per deadline
/// (again after a while if it is still not handled).
async fn tick(
    orchestrator: Arc<Orchestrator>,
    view: Arc<SagaView>,
    publisher: Publisher,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut retired_at = std::time::Instant::now();
    let sent: Mutex<HashMap<String, (i64, i64)>> = Mutex::default();
    let resend_after = 10_000;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let now = now();
        // Instances are kept after they finish: clone only the few that are due.
        let (mut running, mut failed, mut oldest) = (0, 0, now);
        let due: Vec<Instance> = {
            let sent = sent.lock().unwrap_or_else(PoisonError::into_inner);
            orchestrator.instances.select(|_, i| {
                if i.status.is_waiting() {
                    running += 1;
                    oldest = oldest.min(i.history.first().map_or(now, |e| e.at));
                } else if i.status == Status::Failed {
                    failed += 1;
                }
                let due = i.status.is_waiting()
                    && i.deadline <= now
                    && sent.get(&i.saga_id).is_none_or(|(deadline, at)| {
                        *deadline != i.deadline || now - at > resend_after
                    });
                due.then(|| i.clone())
            })
        };
        orchestrator
            .metrics
            .running(running, failed, millis_to_seconds(now - oldest));
        let mut outputs = Vec::with_capacity(due.len());
        // One orchestrator at a time (partition 0's owner) counts and retires versions.
        let leads = orchestrator.instances.partitions().contains(&0);
        if leads && retired_at.elapsed() >= RETIRE_EVERY && view.caught_up() {
            retired_at = std::time::Instant::now();
            let in_flight = view.versions_in_flight();
            match orchestrator.versions.counted(&in_flight) {
                Ok(records) => outputs.extend(records),
                Err(e) => tracing::warn!(error = %e, "could not count the saga's versions"),
            }
            let in_use = in_flight.into_keys().collect();
            outputs.extend(orchestrator.versions.retire(&in_use, retired_at));
        }
        for instance in &due {
            let Some(d) = orchestrator.versions.of(&instance.version) else {
                tracing::warn!(saga_id = %instance.saga_id, version = %instance.version, "a deadline of a saga version not known here (yet)");
                continue;
            };
            let Some(command) = instance.awaited_command(&d) else {
                continue;
            };
            let context = StepContext {
                saga_id: instance.saga_id.clone(),
                saga_name: d.name.clone(),
                step: d.steps[instance.step].name.clone(),
                attempt: instance.attempt,
                succeeded_before: false,
            };
            let event = StepTimedOut {
                context,
                command: command.to_owned(),
            };
            let envelope = Envelope::new(&instance.saga_id, &instance.correlation_id, event);
            match Outgoing::event(&d.reply_topic, &envelope) {
                Ok(out) => outputs.push(out),
                Err(e) => tracing::error!(error = %e, "encoding {}", StepTimedOut::EVENT_TYPE),
            }
        }
        if outputs.is_empty() {
            continue;
        }
        match publisher.send_all(&outputs).await {
            Ok(_) => {
                let mut sent = sent.lock().unwrap_or_else(PoisonError::into_inner);
                sent.retain(|id, _| {
                    orchestrator
                        .instances
                        .get(id)
                        .is_some_and(|i| i.status.is_waiting())
                });
                for instance in &due {
                    sent.insert(instance.saga_id.clone(), (instance.deadline, now));
                }
            }
            Err(e) => {
                orchestrator.versions.forget_published();
                tracing::warn!(error = %e, "could not publish step deadlines or versions; retrying");
            }
        }
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

    /// Applies `reply` to attempt `attempt` of `command`, and judges it as the metrics do.
    fn judged(
        d: &Definition,
        i: &mut Instance,
        step: &str,
        command: &str,
        attempt: u32,
        reply: &Reply,
    ) -> Option<(Direction, StepOutcome, bool)> {
        let before = (i.status, i.step, i.backing_off);
        match i.apply(d, step, command, attempt, reply, 1) {
            Transition::Changed(_) => judge(reply, before, i),
            Transition::Ignored(why) => panic!("ignored: {why}"),
        }
    }

    #[test]
    fn replies_are_judged_by_direction_and_a_compensation_out_of_retries_is_abandoned() {
        use Direction::{Compensation, Forward};
        use StepOutcome::{Failed, Succeeded, TimedOut};
        let d = Saga::load(
            include_str!("../../../k8s/sagas/order-fulfilment.yaml"),
            "order-fulfilment.yaml",
        )
        .unwrap();
        let (mut i, _) = Instance::start(&d, "o-1".into(), "c".into(), Default::default(), 0);
        let (reserve, release) = ("ReserveInventory", "ReleaseInventory");
        let ok = Reply::Succeeded;
        let step = "reserve-inventory";
        assert_eq!(
            judged(&d, &mut i, step, reserve, 1, &ok),
            Some((Forward, Succeeded, false))
        );
        let declined = Reply::Failed {
            reason: "card declined".into(),
            retryable: false,
        };
        let pay = ("authorize-payment", "AuthorizePayment");
        assert_eq!(
            judged(&d, &mut i, pay.0, pay.1, 1, &declined),
            Some((Forward, Failed, false)),
            "a forward failure is no abandoned compensation"
        );
        // Releasing the stock times out on every attempt: retried, then given up.
        let attempts = d.steps[0].retry.max_attempts;
        for attempt in 1..attempts {
            assert_eq!(
                judged(&d, &mut i, step, release, attempt, &Reply::TimedOut),
                Some((Compensation, TimedOut, false)),
                "attempt {attempt} is retried"
            );
        }
        assert_eq!(
            judged(&d, &mut i, step, release, attempts, &Reply::TimedOut),
            Some((Compensation, TimedOut, true)),
            "the last attempt gives the compensation up"
        );
        assert_eq!(i.status, Status::Failed);
    }

    fn instance(trigger: serde_json::Value) -> Instance {
        let definition = Saga::load(
            include_str!("../../../k8s/sagas/order-fulfilment.yaml"),
            "order-fulfilment.yaml",
        )
        .unwrap();
        let serde_json::Value::Object(trigger) = trigger else {
            panic!("a trigger is an object")
        };
        Instance::start(&definition, "o-1".into(), "o-1".into(), trigger, 0).0
    }

    #[test]
    fn a_command_is_keyed_by_a_trigger_field_or_a_json_pointer_else_the_saga_id() {
        let i = instance(serde_json::json!({
            "customerId": "c-7",
            "items": [{"productId": "sku-2"}, {"productId": "sku-1"}],
            "count": 3,
        }));
        assert_eq!(command_key(&i, "customerId"), "c-7");
        assert_eq!(command_key(&i, "/items/0/productId"), "sku-2");
        assert_eq!(command_key(&i, "/items/1/productId"), "sku-1");
        assert_eq!(command_key(&i, "/customerId"), "c-7");
        assert_eq!(command_key(&i, "count"), "3");
        assert_eq!(command_key(&i, "/items/5/productId"), "o-1");
        assert_eq!(command_key(&i, "missing"), "o-1");
    }
}
