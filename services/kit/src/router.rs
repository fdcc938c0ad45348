//! Routing consumed records to typed handlers by topic and `event-type`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sagashop_contracts::{Contract, DecodeError, Envelope, Metadata};

use crate::record::{Outgoing, Record};
use crate::retry::RetryPolicy;

/// Why a handler did not finish a record.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Trying again may succeed (a dependency timed out): retried with backoff, then
    /// dead-lettered when the attempts run out.
    #[error("{0}")]
    Transient(String),
    /// Trying again cannot succeed (a business rule forbids it): dead-lettered at once.
    #[error("{0}")]
    Permanent(String),
    /// The record is not a readable message: dead-lettered at once, never retried.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A runtime error inside a handler (a store that could not encode a value, say) is transient:
/// the record is retried with backoff, then dead-lettered, so `?` works on kit calls.
impl From<crate::error::Error> for HandlerError {
    fn from(error: crate::error::Error) -> Self {
        Self::Transient(error.to_string())
    }
}

impl HandlerError {
    /// Whether the runtime may try the record again.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

/// What a handler returns: the records to publish because of the one it handled.
pub type HandlerResult = Result<Vec<Outgoing>, HandlerError>;

type BoxFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
type ErasedHandler = Arc<dyn Fn(Record, Metadata) -> BoxFuture + Send + Sync>;

/// What the router found for a record.
pub enum Route {
    /// A handler: call it.
    Handler(Box<RouteCall>),
    /// No handler for this topic and event type: acknowledge and count it, or, on a
    /// [strict](Router::strict) topic, dead-letter it.
    Unknown {
        /// The record's `event-type`.
        event_type: String,
        /// Whether the topic is strict: every record on it is meant for a handler here.
        strict: bool,
    },
}

/// How one handler's failures escalate; what is unset takes the processor's setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailurePolicy {
    /// In-place retry of transient failures (the processor's `retry` when unset).
    pub retry: Option<RetryPolicy>,
    /// How many times a record may be parked on the retry topic once in-place retries run
    /// out (the retry topic's `redeliveries` when unset; `Some(0)` dead-letters at once).
    pub redeliveries: Option<u32>,
}

/// A record bound to its handler, ready to be called (again, on retry).
pub struct RouteCall {
    handler: ErasedHandler,
    policy: FailurePolicy,
    record: Record,
    metadata: Metadata,
}

impl RouteCall {
    /// Runs the handler once.
    pub async fn call(&self) -> HandlerResult {
        (self.handler)(self.record.clone(), self.metadata.clone()).await
    }

    /// The handler's failure policy.
    pub fn policy(&self) -> FailurePolicy {
        self.policy
    }
}

/// Handlers by (topic, event type).
#[derive(Default, Clone)]
pub struct Router {
    routes: HashMap<String, HashMap<String, (ErasedHandler, FailurePolicy)>>,
    /// Topics whose every record is meant for a handler here (a participant's commands).
    strict: std::collections::HashSet<String>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes = self
            .routes
            .iter()
            .flat_map(|(topic, types)| types.keys().map(move |t| (topic, t)));
        f.debug_set().entries(routes).finish()
    }
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes records of `T` on `topic` to `handler`, which receives the decoded envelope.
    ///
    /// Panics when the same (topic, event type) is registered twice: that is a wiring bug.
    #[must_use]
    pub fn on<T, F, Fut>(self, topic: &str, handler: F) -> Self
    where
        T: Contract + Send + 'static,
        F: Fn(Envelope<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.on_with(topic, FailurePolicy::default(), handler)
    }

    /// Like [`Router::on`], with this handler's own failure policy.
    #[must_use]
    pub fn on_with<T, F, Fut>(self, topic: &str, policy: FailurePolicy, handler: F) -> Self
    where
        T: Contract + Send + 'static,
        F: Fn(Envelope<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: ErasedHandler = Arc::new(move |record: Record, metadata: Metadata| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let envelope = Envelope::<T>::decode(
                    record.key.as_deref(),
                    metadata,
                    record.payload.as_deref(),
                )?;
                handler(envelope).await
            })
        });
        self.insert(topic, T::EVENT_TYPE, erased, policy)
    }

    /// Routes records with `event-type` `event_type` on `topic` to `handler` undecoded, for
    /// handlers whose event types are data (a saga's trigger) rather than Rust types.
    #[must_use]
    pub fn on_raw<F, Fut>(
        self,
        topic: &str,
        event_type: &str,
        policy: FailurePolicy,
        handler: F,
    ) -> Self
    where
        F: Fn(Record, Metadata) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: ErasedHandler = Arc::new(move |record: Record, metadata: Metadata| {
            let handler = Arc::clone(&handler);
            Box::pin(async move { handler(record, metadata).await })
        });
        self.insert(topic, event_type, erased, policy)
    }

    fn insert(
        mut self,
        topic: &str,
        event_type: &str,
        handler: ErasedHandler,
        policy: FailurePolicy,
    ) -> Self {
        let previous = self
            .routes
            .entry(topic.to_owned())
            .or_default()
            .insert(event_type.to_owned(), (handler, policy));
        assert!(
            previous.is_none(),
            "two handlers for `{event_type}` on topic `{topic}`"
        );
        self
    }

    /// Makes `topic` strict: a record on it whose event type has no handler is a poison
    /// message (a forged or mistyped command, or a command from a newer version than this
    /// process), dead-lettered where people look, not acknowledged and dropped. Topics that
    /// others share (an outcome topic read for some of its events) stay lenient.
    #[must_use]
    pub fn strict(mut self, topic: &str) -> Self {
        self.strict.insert(topic.to_owned());
        self
    }

    /// The topics with at least one handler, sorted.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<_> = self.routes.keys().cloned().collect();
        topics.sort();
        topics
    }

    /// Finds the handler for a record. Unreadable headers are a [`DecodeError`].
    pub fn route(&self, record: Record) -> Result<Route, DecodeError> {
        let metadata = record.metadata()?;
        let handler = self
            .routes
            .get(&record.topic)
            .and_then(|types| types.get(metadata.event_type.as_str()))
            .map(|(handler, policy)| (Arc::clone(handler), *policy));
        Ok(match handler {
            Some((handler, policy)) => Route::Handler(Box::new(RouteCall {
                handler,
                policy,
                record,
                metadata,
            })),
            None => Route::Unknown {
                event_type: metadata.event_type,
                strict: self.strict.contains(&record.topic),
            },
        })
    }
}
