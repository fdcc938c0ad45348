//! The saga state machine: one instance's state, and what each input does to it.
//!
//! Pure: no Kafka, no clock of its own (`now` is passed in, in Unix milliseconds). The
//! orchestrator stores [`Instance`]s in a compacted topic and turns [`Action`]s into messages,
//! all in one transaction per input.
//!
//! Replies are matched to the step (and phase: forward or compensating) the instance is
//! waiting for; anything else — a duplicate, a late reply to an earlier attempt, a reply after
//! the saga moved on — changes nothing. A success of any attempt of the awaited step counts (the
//! participants are idempotent per step, so an earlier attempt's late success is the same
//! effect); a failure counts only for the current attempt.

use serde::{Deserialize, Serialize};

use sagashop_contracts::events::StepPhase;

use crate::definition::Definition;

/// Where an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Running step `step` forward.
    Running,
    /// Undoing: running the compensation of step `step`.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// Compensated after a failure.
    Cancelled,
    /// A compensation gave up after its attempts: work may be left done (stock taken, money
    /// charged). It waits, kept and counted, until someone retries it (`sagashop saga retry`).
    Failed,
}

impl Status {
    /// Whether the saga has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }

    /// Whether it waits for a reply (or a deadline) of a command it sent.
    pub fn is_waiting(self) -> bool {
        matches!(self, Self::Running | Self::Compensating)
    }
}

/// One line of an instance's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The step.
    pub step: String,
    /// What happened.
    pub phase: StepPhase,
    /// Which attempt.
    pub attempt: u32,
    /// A reason, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When, in Unix milliseconds.
    pub at: i64,
}

/// Why a saga is being (or was) cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The failing step's reason.
    pub reason: String,
    /// The step that failed.
    pub failed_step: String,
}

/// One saga instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// The saga id (the trigger's key).
    pub saga_id: String,
    /// The trigger's correlation id, carried by every message of the saga.
    pub correlation_id: String,
    /// The trigger's payload: commands and outcomes are built from it.
    pub trigger: serde_json::Map<String, serde_json::Value>,
    /// Where it is.
    pub status: Status,
    /// The step being run (forward) or undone (compensating).
    pub step: usize,
    /// The attempt of that command.
    pub attempt: u32,
    /// When the awaited reply is due (or the retry backoff ends), Unix milliseconds.
    pub deadline: i64,
    /// Set while waiting out a retry backoff: the deadline sends the next attempt.
    #[serde(default)]
    pub backing_off: bool,
    /// Set once a step failed for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Why it is `FAILED`: the compensation that gave up, and its last reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    /// Everything that happened, oldest first.
    pub history: Vec<HistoryEntry>,
    /// The version of the definition it runs to its end (`Definition::version`); empty in a
    /// state written before versions, which runs on the orchestrator's current definition.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// A reply to, or the deadline of, a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The participant did it.
    Succeeded,
    /// The participant could not.
    Failed {
        /// Its reason.
        reason: String,
        /// Whether trying again may help.
        retryable: bool,
    },
    /// No reply by the deadline.
    TimedOut,
}

/// What the orchestrator must publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a command.
    Send {
        /// The step.
        step: usize,
        /// The command's event type (the step's command or compensation).
        command: String,
        /// Its attempt.
        attempt: u32,
    },
    /// A step changed phase (a progress event).
    Progress(HistoryEntry),
    /// Every step succeeded.
    Completed,
    /// Compensated.
    Cancelled(Failure),
    /// A compensation gave up: the saga waits in `FAILED` for a retry (the incident).
    Failed(String),
}

/// What an input did.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// The instance changed: store it and publish the actions.
    Changed(Vec<Action>),
    /// Nothing to do (a duplicate, a late or stale reply).
    Ignored(&'static str),
}

impl Instance {
    /// Starts a saga: the first step's command, attempt 1.
    pub fn start(
        definition: &Definition,
        saga_id: String,
        correlation_id: String,
        trigger: serde_json::Map<String, serde_json::Value>,
        now: i64,
    ) -> (Self, Vec<Action>) {
        let mut instance = Self {
            saga_id,
            correlation_id,
            trigger,
            status: Status::Running,
            step: 0,
            attempt: 1,
            deadline: 0,
            backing_off: false,
            failure: None,
            incident: None,
            history: Vec::new(),
            version: definition.version.clone(),
        };
        let mut actions = Vec::new();
        instance.send(definition, now, &mut actions);
        (instance, actions)
    }

    /// The command the instance waits on.
    pub fn awaited_command<'d>(&self, definition: &'d Definition) -> Option<&'d str> {
        let step = definition.steps.get(self.step)?;
        match self.status {
            Status::Running => Some(step.command.as_str()),
            Status::Compensating => step.compensation.as_deref(),
            Status::Completed | Status::Cancelled | Status::Failed => None,
        }
    }

    fn record(&mut self, step: &str, phase: StepPhase, detail: Option<String>, now: i64) -> Action {
        let entry = HistoryEntry {
            step: step.to_owned(),
            phase,
            attempt: self.attempt,
            detail,
            at: now,
        };
        self.history.push(entry.clone());
        Action::Progress(entry)
    }

    /// Sends the awaited command (current step, attempt) and sets its deadline.
    fn send(&mut self, definition: &Definition, now: i64, actions: &mut Vec<Action>) {
        self.send_noting(definition, None, now, actions);
    }

    /// [`Self::send`], its history line saying `detail` (who asked for this attempt, and why).
    fn send_noting(
        &mut self,
        definition: &Definition,
        detail: Option<String>,
        now: i64,
        actions: &mut Vec<Action>,
    ) {
        let Some(step) = definition.steps.get(self.step) else {
            return;
        };
        let Some(command) = self.awaited_command(definition).map(str::to_owned) else {
            return;
        };
        let phase = if self.status == Status::Running {
            StepPhase::Started
        } else {
            StepPhase::Compensating
        };
        actions.push(self.record(&step.name, phase, detail, now));
        actions.push(Action::Send {
            step: self.step,
            command,
            attempt: self.attempt,
        });
        self.backing_off = false;
        self.deadline = now + millis(step.timeout);
    }

    /// When attempt `attempt` of step `step_name`'s latest command (or compensation) was
    /// sent, in Unix milliseconds; `None` when the history does not say.
    pub fn sent_at(&self, step_name: &str, attempt: u32) -> Option<i64> {
        self.history
            .iter()
            .rev()
            .find(|e| {
                e.step == step_name
                    && e.attempt == attempt
                    && matches!(e.phase, StepPhase::Started | StepPhase::Compensating)
            })
            .map(|e| e.at)
    }

    /// Applies a reply (or deadline) for `command` of step `step_name`, attempt `attempt`.
    pub fn apply(
        &mut self,
        definition: &Definition,
        step_name: &str,
        command: &str,
        attempt: u32,
        reply: &Reply,
        now: i64,
    ) -> Transition {
        if self.status.is_final() {
            return Transition::Ignored("the saga has ended");
        }
        if self.status == Status::Failed {
            return Transition::Ignored("the saga failed and waits for a retry");
        }
        let Some(step) = definition.steps.get(self.step) else {
            return Transition::Ignored("the saga's step is not in the definition");
        };
        if step.name != step_name || self.awaited_command(definition) != Some(command) {
            return Transition::Ignored("not the command the saga waits for");
        }
        let current = attempt == self.attempt;
        let mut actions = Vec::new();
        match reply {
            Reply::Succeeded => {
                let phase = if self.status == Status::Running {
                    StepPhase::Succeeded
                } else {
                    StepPhase::Compensated
                };
                let name = step.name.clone();
                actions.push(self.record(&name, phase, None, now));
                self.advance(definition, now, &mut actions);
            }
            Reply::TimedOut if !current => {
                return Transition::Ignored("a deadline of an earlier attempt");
            }
            Reply::TimedOut if self.backing_off => {
                // The backoff after a retryable failure is over: the next attempt.
                self.attempt += 1;
                self.send(definition, now, &mut actions);
            }
            Reply::Failed { .. } if !current => {
                return Transition::Ignored("a failure of an earlier attempt");
            }
            Reply::TimedOut | Reply::Failed { .. } => {
                self.unanswered(definition, step, reply, now, &mut actions);
            }
        }
        Transition::Changed(actions)
    }

    /// The awaited step failed or timed out: retry it, compensate the saga, or (a
    /// compensation that gives up) stop FAILED until someone retries it.
    fn unanswered(
        &mut self,
        definition: &Definition,
        step: &crate::definition::StepDefinition,
        reply: &Reply,
        now: i64,
        actions: &mut Vec<Action>,
    ) {
        let (reason, retryable, phase) = match reply {
            Reply::Failed { reason, retryable } => (reason.clone(), *retryable, StepPhase::Failed),
            _ => (
                format!(
                    "no reply within {}",
                    humantime::format_duration(step.timeout)
                ),
                true,
                StepPhase::TimedOut,
            ),
        };
        let name = step.name.clone();
        actions.push(self.record(&name, phase, Some(reason.clone()), now));
        if retryable && step.retry.retries_after(self.attempt) {
            if matches!(reply, Reply::TimedOut) {
                self.attempt += 1;
                self.send(definition, now, actions);
            } else {
                self.backing_off = true;
                self.deadline = now + millis(step.retry.backoff(self.attempt));
            }
        } else if self.status == Status::Running {
            self.failure = Some(Failure {
                reason,
                failed_step: name,
            });
            self.status = Status::Compensating;
            // A step that never answered may have done its work: undo it too (the
            // participants' compensations are no-ops for work never done). A step that
            // answered "failed" did nothing.
            let below = if matches!(reply, Reply::TimedOut) {
                self.step + 1
            } else {
                self.step
            };
            self.compensate_from(below, definition, now, actions);
        } else {
            // A compensation that cannot be done: what it should undo may still be
            // done (stock taken, money charged). The saga stops here, FAILED, until
            // someone retries it; nothing after it is undone meanwhile.
            let incident = format!(
                "{name}: compensation {} gave up after {} attempt{}: {reason}",
                step.compensation.as_deref().unwrap_or("?"),
                self.attempt,
                if self.attempt == 1 { "" } else { "s" }
            );
            self.status = Status::Failed;
            self.backing_off = false;
            self.incident = Some(incident.clone());
            actions.push(Action::Failed(incident));
        }
    }

    /// Someone asked to cancel: a running saga compensates its completed steps and the one it
    /// waits for (which may have done its work; a participant's compensation of work never
    /// done changes nothing), then ends `CANCELLED` with the reason and who asked. A saga that
    /// is compensating or has ended is left as it is.
    pub fn cancel(
        &mut self,
        definition: &Definition,
        requested_by: &str,
        reason: &str,
        now: i64,
    ) -> Transition {
        match self.status {
            Status::Completed | Status::Cancelled => {
                return Transition::Ignored("the saga has ended");
            }
            Status::Compensating => return Transition::Ignored("the saga is compensating already"),
            Status::Failed => return Transition::Ignored("the saga failed compensating: retry it"),
            Status::Running => {}
        }
        let Some(step) = definition.steps.get(self.step) else {
            return Transition::Ignored("the saga's step is not in the definition");
        };
        let name = step.name.clone();
        let reason = format!("cancelled by {requested_by}: {reason}");
        let mut actions = vec![self.record(&name, StepPhase::Failed, Some(reason.clone()), now)];
        self.failure = Some(Failure {
            reason,
            failed_step: name,
        });
        self.status = Status::Compensating;
        self.backing_off = false;
        self.compensate_from(self.step + 1, definition, now, &mut actions);
        Transition::Changed(actions)
    }

    /// Someone asked to retry: a `FAILED` saga sends the compensation that gave up again (a new
    /// attempt) and, once it succeeds, goes on compensating and ends `CANCELLED`; a running or
    /// compensating saga sends the command it waits for again now, as a new attempt, without
    /// waiting out its deadline or backoff. An ended saga is left as it is.
    pub fn retry(
        &mut self,
        definition: &Definition,
        requested_by: &str,
        reason: &str,
        now: i64,
    ) -> Transition {
        if self.status.is_final() {
            return Transition::Ignored("the saga has ended");
        }
        if definition.steps.get(self.step).is_none() {
            return Transition::Ignored("the saga's step is not in the definition");
        }
        if self.status == Status::Failed {
            self.status = Status::Compensating;
            self.incident = None;
        }
        self.attempt += 1;
        let mut actions = Vec::new();
        let detail = format!("retry requested by {requested_by}: {reason}");
        self.send_noting(definition, Some(detail), now, &mut actions);
        Transition::Changed(actions)
    }

    /// After the awaited command succeeded: the next step forward, the next compensation
    /// backward, or the end.
    fn advance(&mut self, definition: &Definition, now: i64, actions: &mut Vec<Action>) {
        match self.status {
            Status::Running if self.step + 1 < definition.steps.len() => {
                self.step += 1;
                self.attempt = 1;
                self.send(definition, now, actions);
            }
            Status::Running => {
                self.status = Status::Completed;
                actions.push(Action::Completed);
            }
            Status::Compensating => self.compensate_from(self.step, definition, now, actions),
            Status::Completed | Status::Cancelled | Status::Failed => {}
        }
    }

    /// Compensates the completed steps before `below`, latest first; cancels when none is left.
    fn compensate_from(
        &mut self,
        below: usize,
        definition: &Definition,
        now: i64,
        actions: &mut Vec<Action>,
    ) {
        let next = (0..below)
            .rev()
            .find(|i| definition.steps[*i].compensation.is_some());
        match next {
            Some(i) => {
                self.step = i;
                self.attempt = 1;
                self.send(definition, now, actions);
            }
            None => {
                self.status = Status::Cancelled;
                let failure = self.failure.clone().unwrap_or_else(|| Failure {
                    reason: "cancelled".to_owned(),
                    failed_step: String::new(),
                });
                actions.push(Action::Cancelled(failure));
            }
        }
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use crate::definition::Saga;

    fn definition() -> Definition {
        Saga::load(
            include_str!("../../../k8s/sagas/order-fulfilment.yaml"),
            "order-fulfilment.yaml",
        )
        .unwrap()
    }

    fn sends(actions: &[Action]) -> Vec<(usize, String, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send {
                    step,
                    command,
                    attempt,
                } => Some((*step, command.clone(), *attempt)),
                _ => None,
            })
            .collect()
    }

    fn started() -> (Definition, Instance) {
        let d = definition();
        let (i, actions) = Instance::start(&d, "o-1".into(), "c".into(), Default::default(), 0);
        assert_eq!(sends(&actions), [(0, "ReserveInventory".into(), 1)]);
        (d, i)
    }

    fn ok(d: &Definition, i: &mut Instance, step: &str, command: &str) -> Vec<Action> {
        match i.apply(d, step, command, i.attempt, &Reply::Succeeded, 10) {
            Transition::Changed(actions) => actions,
            Transition::Ignored(why) => panic!("ignored: {why}"),
        }
    }

    #[test]
    fn every_step_succeeding_completes_the_saga() {
        let (d, mut i) = started();
        let a = ok(&d, &mut i, "reserve-inventory", "ReserveInventory");
        assert_eq!(sends(&a), [(1, "AuthorizePayment".into(), 1)]);
        ok(&d, &mut i, "authorize-payment", "AuthorizePayment");
        let a = ok(&d, &mut i, "create-shipment", "CreateShipment");
        assert!(a.contains(&Action::Completed));
        assert_eq!(i.status, Status::Completed);
    }

    #[test]
    fn a_declined_payment_releases_the_stock_and_cancels_naming_the_step() {
        let (d, mut i) = started();
        ok(&d, &mut i, "reserve-inventory", "ReserveInventory");
        let declined = Reply::Failed {
            reason: "card declined".into(),
            retryable: false,
        };
        let Transition::Changed(a) = i.apply(
            &d,
            "authorize-payment",
            "AuthorizePayment",
            1,
            &declined,
            20,
        ) else {
            panic!()
        };
        assert_eq!(sends(&a), [(0, "ReleaseInventory".into(), 1)]);
        let a = ok(&d, &mut i, "reserve-inventory", "ReleaseInventory");
        assert_eq!(
            a.last(),
            Some(&Action::Cancelled(Failure {
                reason: "card declined".into(),
                failed_step: "authorize-payment".into()
            }))
        );
    }

    #[test]
    fn a_failing_first_step_cancels_without_compensating_anything() {
        let (d, mut i) = started();
        let out_of_stock = Reply::Failed {
            reason: "out of stock".into(),
            retryable: false,
        };
        let Transition::Changed(a) = i.apply(
            &d,
            "reserve-inventory",
            "ReserveInventory",
            1,
            &out_of_stock,
            5,
        ) else {
            panic!()
        };
        assert!(sends(&a).is_empty());
        assert_eq!(i.status, Status::Cancelled);
    }

    #[test]
    fn a_cancelled_saga_compensates_the_step_it_waits_for_and_those_before_once() {
        let (d, mut i) = started();
        ok(&d, &mut i, "reserve-inventory", "ReserveInventory");
        let Transition::Changed(a) = i.cancel(&d, "ops", "customer asked", 30) else {
            panic!()
        };
        // Payment may have charged already: refund it, then release the stock.
        assert_eq!(sends(&a), [(1, "RefundPayment".into(), 1)]);
        assert_eq!(i.status, Status::Compensating);
        assert_eq!(
            i.apply(
                &d,
                "authorize-payment",
                "AuthorizePayment",
                1,
                &Reply::Succeeded,
                31
            ),
            Transition::Ignored("not the command the saga waits for"),
            "the late reply of the cancelled step changes nothing"
        );
        assert_eq!(
            i.cancel(&d, "ops", "again", 32),
            Transition::Ignored("the saga is compensating already")
        );
        let a = ok(&d, &mut i, "authorize-payment", "RefundPayment");
        assert_eq!(sends(&a), [(0, "ReleaseInventory".into(), 1)]);
        let a = ok(&d, &mut i, "reserve-inventory", "ReleaseInventory");
        assert_eq!(
            a.last(),
            Some(&Action::Cancelled(Failure {
                reason: "cancelled by ops: customer asked".into(),
                failed_step: "authorize-payment".into()
            }))
        );
        assert_eq!(
            i.cancel(&d, "ops", "late", 40),
            Transition::Ignored("the saga has ended")
        );
    }

    #[test]
    fn timeouts_retry_then_compensate() {
        let (d, mut i) = started();
        ok(&d, &mut i, "reserve-inventory", "ReserveInventory");
        for attempt in 1..=2 {
            let Transition::Changed(a) = i.apply(
                &d,
                "authorize-payment",
                "AuthorizePayment",
                attempt,
                &Reply::TimedOut,
                30,
            ) else {
                panic!()
            };
            assert_eq!(sends(&a), [(1, "AuthorizePayment".into(), attempt + 1)]);
        }
        let Transition::Changed(a) = i.apply(
            &d,
            "authorize-payment",
            "AuthorizePayment",
            3,
            &Reply::TimedOut,
            40,
        ) else {
            panic!()
        };
        // It never answered, so it may have charged: refund, then release.
        assert_eq!(sends(&a), [(1, "RefundPayment".into(), 1)]);
        assert_eq!(i.failure.as_ref().unwrap().failed_step, "authorize-payment");
        let a = ok(&d, &mut i, "authorize-payment", "RefundPayment");
        assert_eq!(sends(&a), [(0, "ReleaseInventory".into(), 1)]);
    }

    #[test]
    fn a_compensation_that_gives_up_fails_the_saga_until_a_retry_finishes_compensating() {
        let (d, mut i) = started();
        ok(&d, &mut i, "reserve-inventory", "ReserveInventory");
        let declined = Reply::Failed {
            reason: "declined".into(),
            retryable: false,
        };
        i.apply(
            &d,
            "authorize-payment",
            "AuthorizePayment",
            1,
            &declined,
            20,
        );
        // ReleaseInventory never answers: three attempts, then the saga stops, FAILED.
        for attempt in 1..=3 {
            i.apply(
                &d,
                "reserve-inventory",
                "ReleaseInventory",
                attempt,
                &Reply::TimedOut,
                30,
            );
        }
        assert_eq!(i.status, Status::Failed);
        let incident = i.incident.clone().unwrap();
        assert!(
            incident.contains("ReleaseInventory gave up after 3 attempts"),
            "{incident}"
        );
        // It sends nothing more and takes no reply, nor a cancel, until someone retries.
        assert_eq!(i.awaited_command(&d), None);
        assert!(matches!(
            i.apply(
                &d,
                "reserve-inventory",
                "ReleaseInventory",
                3,
                &Reply::Succeeded,
                40
            ),
            Transition::Ignored(_)
        ));
        assert!(matches!(i.cancel(&d, "t", "r", 40), Transition::Ignored(_)));

        let Transition::Changed(a) = i.retry(&d, "ops", "inventory is back", 50) else {
            panic!()
        };
        assert_eq!(sends(&a), [(0, "ReleaseInventory".into(), 4)]);
        assert_eq!(i.status, Status::Compensating);
        assert_eq!(i.incident, None);
        assert_eq!(
            i.history.last().unwrap().detail.as_deref(),
            Some("retry requested by ops: inventory is back")
        );
        let a = ok(&d, &mut i, "reserve-inventory", "ReleaseInventory");
        assert!(matches!(a.last(), Some(Action::Cancelled(f)) if f.reason == "declined"));
        assert_eq!(i.status, Status::Cancelled);
        assert!(matches!(
            i.retry(&d, "ops", "again", 60),
            Transition::Ignored(_)
        ));
    }

    #[test]
    fn a_retry_of_a_running_saga_sends_the_awaited_command_again_at_once() {
        let (d, mut i) = started();
        let Transition::Changed(a) = i.retry(&d, "ops", "inventory was down", 5) else {
            panic!()
        };
        assert_eq!(sends(&a), [(0, "ReserveInventory".into(), 2)]);
        assert_eq!(i.status, Status::Running);
        // The new attempt's success counts; so would the first's (same effect, idempotent).
        let a = ok(&d, &mut i, "reserve-inventory", "ReserveInventory");
        assert_eq!(sends(&a), [(1, "AuthorizePayment".into(), 1)]);
    }

    #[test]
    fn a_retryable_failure_waits_out_the_backoff_before_the_next_attempt() {
        let (d, mut i) = started();
        let busy = Reply::Failed {
            reason: "busy".into(),
            retryable: true,
        };
        let Transition::Changed(a) =
            i.apply(&d, "reserve-inventory", "ReserveInventory", 1, &busy, 100)
        else {
            panic!()
        };
        assert!(sends(&a).is_empty(), "resent before the backoff");
        assert!(i.backing_off && i.deadline > 100);
        let Transition::Changed(a) = i.apply(
            &d,
            "reserve-inventory",
            "ReserveInventory",
            1,
            &Reply::TimedOut,
            500,
        ) else {
            panic!()
        };
        assert_eq!(sends(&a), [(0, "ReserveInventory".into(), 2)]);
    }

    #[test]
    fn duplicate_late_and_stale_replies_change_nothing() {
        let (d, mut i) = started();
        ok(&d, &mut i, "reserve-inventory", "ReserveInventory");
        let before = i.clone();
        // The same success again, a late timeout, a reply to a step not yet reached.
        for (step, command, reply) in [
            ("reserve-inventory", "ReserveInventory", Reply::Succeeded),
            ("reserve-inventory", "ReserveInventory", Reply::TimedOut),
            ("create-shipment", "CreateShipment", Reply::Succeeded),
        ] {
            assert!(matches!(
                i.apply(&d, step, command, 1, &reply, 50),
                Transition::Ignored(_)
            ));
        }
        assert_eq!(i, before);
    }

    #[test]
    fn a_late_success_of_an_earlier_attempt_counts_but_its_failure_does_not() {
        let (d, mut i) = started();
        i.apply(
            &d,
            "reserve-inventory",
            "ReserveInventory",
            1,
            &Reply::TimedOut,
            10,
        );
        assert_eq!(i.attempt, 2);
        let stale_failure = Reply::Failed {
            reason: "x".into(),
            retryable: false,
        };
        assert!(matches!(
            i.apply(
                &d,
                "reserve-inventory",
                "ReserveInventory",
                1,
                &stale_failure,
                11
            ),
            Transition::Ignored(_)
        ));
        let Transition::Changed(a) = i.apply(
            &d,
            "reserve-inventory",
            "ReserveInventory",
            1,
            &Reply::Succeeded,
            12,
        ) else {
            panic!()
        };
        assert_eq!(sends(&a), [(1, "AuthorizePayment".into(), 1)]);
    }
}
