//! What every saga participant shares: receiving a command with its reply address, answering
//! it, and injected faults for demos and tests.

use std::future::Future;
use std::sync::Arc;

use sagashop_contracts::commands::{StepContext, StepFailed, StepSucceeded};
use sagashop_contracts::{Contract, Envelope, Metadata};
use sagashop_kit::router::HandlerResult;
use sagashop_kit::{FailurePolicy, HandlerError, Outgoing, Record, Router};

use crate::orchestrator::REPLY_TO;

/// A command as a participant receives it.
#[derive(Debug, Clone)]
pub struct Command<T> {
    /// The decoded command.
    pub envelope: Envelope<T>,
    /// Where the answer goes (the `reply-to` header, else the saga's default reply topic).
    pub reply_to: String,
}

impl<T> Command<T> {
    /// The answer "done", with an optional detail.
    pub fn succeeded(
        &self,
        context: &StepContext,
        detail: Option<String>,
    ) -> Result<Outgoing, HandlerError>
    where
        T: Contract,
    {
        succeeded(
            &self.envelope.metadata,
            &self.reply_to,
            context,
            T::EVENT_TYPE,
            detail,
        )
    }

    /// The answer "could not", with a reason and whether trying again may help.
    pub fn failed(
        &self,
        context: &StepContext,
        reason: impl Into<String>,
        retryable: bool,
    ) -> Result<Outgoing, HandlerError>
    where
        T: Contract,
    {
        failed(
            &self.envelope.metadata,
            &self.reply_to,
            context,
            T::EVENT_TYPE,
            reason.into(),
            retryable,
        )
    }
}

/// The answer "done" to `command` of step `context`, caused by `parent`, bound for `reply_to`:
/// for a participant that answers later than the command's own handler.
pub fn succeeded(
    parent: &Metadata,
    reply_to: &str,
    context: &StepContext,
    command: &str,
    detail: Option<String>,
) -> Result<Outgoing, HandlerError> {
    let reply = StepSucceeded {
        context: context.clone(),
        command: command.to_owned(),
        detail,
    };
    answer(parent, reply_to, context, reply)
}

/// The answer "could not" to `command` of step `context`; see [`succeeded`].
pub fn failed(
    parent: &Metadata,
    reply_to: &str,
    context: &StepContext,
    command: &str,
    reason: String,
    retryable: bool,
) -> Result<Outgoing, HandlerError> {
    let reply = StepFailed {
        context: context.clone(),
        command: command.to_owned(),
        reason,
        retryable,
    };
    answer(parent, reply_to, context, reply)
}

/// The reply, keyed by the saga id (the command may be keyed by the entity it changes): the
/// orchestrator's state for the saga lives in that key's partition.
fn answer<R: Contract>(
    parent: &Metadata,
    reply_to: &str,
    context: &StepContext,
    reply: R,
) -> Result<Outgoing, HandlerError> {
    let envelope = Envelope::caused_by(parent, context.saga_id.clone(), reply);
    Outgoing::event(reply_to, &envelope).map_err(|e| HandlerError::Permanent(e.to_string()))
}

/// Routes commands of type `T` on `topic` to `handler`, with their reply address. The topic
/// becomes [strict](Router::strict): a record of a type no handler takes is dead-lettered.
pub fn on_command<T, F, Fut>(router: Router, topic: &str, handler: F) -> Router
where
    T: Contract + Send + Sync + 'static,
    F: Fn(Command<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    let handler = Arc::new(handler);
    // A command topic carries only this participant's commands: anything else is poison.
    router.strict(topic).on_raw(
        topic,
        T::EVENT_TYPE,
        FailurePolicy::default(),
        move |record: Record, metadata: Metadata| {
            let handler = Arc::clone(&handler);
            async move {
                let reply_to = record
                    .headers
                    .iter()
                    .rev()
                    .find(|(name, _)| name == REPLY_TO)
                    .and_then(|(_, v)| v.as_deref())
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .map(str::to_owned);
                let envelope = Envelope::<T>::decode(
                    record.key.as_deref(),
                    metadata,
                    record.payload.as_deref(),
                )?;
                let reply_to = match reply_to {
                    Some(topic) => topic,
                    None => default_reply_topic(&envelope.payload)?,
                };
                handler(Command { envelope, reply_to }).await
            }
        },
    )
}

/// `saga.<sagaName>.replies.v1`, read from the command's `sagaName`.
fn default_reply_topic<T: Contract>(payload: &T) -> Result<String, HandlerError> {
    let value =
        serde_json::to_value(payload).map_err(|e| HandlerError::Permanent(e.to_string()))?;
    value
        .get("sagaName")
        .and_then(serde_json::Value::as_str)
        .map(|name| format!("saga.{name}.replies.v1"))
        .ok_or_else(|| {
            HandlerError::Permanent(format!(
                "{} has no `{REPLY_TO}` header and no sagaName to reply to",
                T::EVENT_TYPE
            ))
        })
}

/// Why a compensation is refused whose step succeeded but whose record of it is gone (see
/// [`StepContext::succeeded_before`]): undoing "nothing" would keep what the step took without
/// a trace, so the saga stays `FAILED` with this incident for someone to settle.
pub fn lost_record(saga_id: &str, what: &str) -> String {
    format!(
        "no record of saga {saga_id}'s {what}, though its step succeeded: the state was lost and \
         nothing was given back; settle it by hand (the saga stays FAILED to say so)"
    )
}

/// Faults a participant injects on purpose, so that retries, compensation and dead letters can
/// be seen working.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Fraction (0–1) of commands that fail transiently before any effect (retried in place,
    /// then dead-lettered, then the saga's timeout takes over).
    pub transient_rate: f64,
}

impl Faults {
    /// Fails now if the dice say so.
    pub fn maybe_fail(&self) -> Result<(), HandlerError> {
        if self.transient_rate > 0.0 && fastrand::f64() < self.transient_rate {
            return Err(HandlerError::Transient("injected transient failure".into()));
        }
        Ok(())
    }
}
