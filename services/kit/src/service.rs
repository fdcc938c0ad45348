//! The service contract: how every sagashop service is started and what it hands back.
//!
//! A service is a function `start(&Context, Wiring, settings) -> Result<Running, Error>`. The
//! [`Context`] is what the process gives every service it runs (Kafka, metrics, the shutdown
//! token, the instance name, the retention); the [`Wiring`] says where the service sits (its
//! group, topics by role, dead letters, isolation, processing, retry, transactional naming);
//! the settings are the service's own business knobs. [`Running`] is the same for every
//! service: what the process reports, serves and waits on.
//!
//! The common case, a consumer with state stores, is three calls: [`Context::store`] for each
//! state role, [`Context::processor`] (which fences the previous incarnation of the
//! transactional id first) and [`Running::spawn`].

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::handling::{ProcessorConfig, Stats};
use crate::kafka::KafkaConfig;
use crate::monitor::Monitor;
use crate::processor::Processor;
use crate::publisher::Publisher;
use crate::router::Router;
use crate::store::Store;
use crate::task::Task;
use crate::transaction::{FENCE_TIMEOUT, fence};
use crate::wiring::Wiring;

/// What a process gives every service it runs.
#[derive(Debug, Clone)]
pub struct Context {
    /// The Kafka connection.
    pub kafka: KafkaConfig,
    /// Metrics and readiness, served on `/metrics` and `/readyz`.
    pub monitor: Monitor,
    /// Cancelled when the process is asked to stop.
    pub shutdown: CancellationToken,
    /// This replica's name, stable across its restarts and unique among replicas (the pod
    /// name): it names the transactional ids.
    pub instance: String,
    /// How long finished work is kept after its last change.
    pub retention: Duration,
}

/// A number a service reports for the process's one-line summary (orders accepted, say).
pub type Figure = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A started service.
pub struct Running {
    /// Where it sits.
    pub wiring: Wiring,
    /// Its processor's counters.
    pub stats: Arc<Stats>,
    /// Its work; `task.stopped()` waits for it to end after shutdown.
    pub task: Task,
    /// The HTTP routes it serves, if any, merged into the process's server.
    pub routes: Option<axum::Router>,
    /// Figures for the summary line, in the order they are shown.
    pub figures: Vec<(&'static str, Figure)>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("service", &self.wiring.service)
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl Running {
    /// A service whose work is `task`.
    pub fn new(wiring: Wiring, stats: Arc<Stats>, task: Task) -> Self {
        Self {
            wiring,
            stats,
            task,
            routes: None,
            figures: Vec::new(),
        }
    }

    /// Runs `processor` until the context's shutdown.
    pub fn spawn(context: &Context, wiring: Wiring, processor: Processor) -> Self {
        let stats = processor.stats();
        let task = Task::spawn(
            wiring.service.clone(),
            processor.run(context.shutdown.clone()),
        );
        Self::new(wiring, stats, task)
    }

    /// Serves `routes` too.
    #[must_use]
    pub fn with_routes(mut self, routes: axum::Router) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Reports `figure` as `name` in the summary.
    #[must_use]
    pub fn with_figure(mut self, name: &'static str, figure: Figure) -> Self {
        self.figures.push((name, figure));
        self
    }
}

impl Context {
    /// The state store of `role` (one of the wiring's topics): owned, so restored per assigned
    /// partition by the processor that [reloads](Processor::reloads) it. Named
    /// `<service>-<role>` in metrics.
    pub fn store<V>(&self, wiring: &Wiring, role: &str) -> Result<Store<V>, Error>
    where
        V: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let name = format!("{}-{role}", wiring.service);
        Ok(Store::owned(
            &self.kafka,
            &name,
            wiring.topic(role)?,
            &self.monitor,
        ))
    }

    /// A publisher named after the service, reporting to the context's metrics.
    pub fn publisher(&self, wiring: &Wiring) -> Result<Publisher, Error> {
        Ok(Publisher::new(&self.kafka, &wiring.service)?.observed(&self.monitor))
    }

    /// A processor running `router` on what `wiring` says (see [`Wiring::processor_config`]).
    pub async fn processor(
        &self,
        wiring: &Wiring,
        router: Router,
        publisher: Publisher,
    ) -> Result<Processor, Error> {
        let config = wiring.processor_config(&self.instance)?;
        self.processor_with(wiring, config, router, publisher).await
    }

    /// A processor with `config` (built from the wiring and changed where the service needs
    /// more, a dedupe store say). Its router must handle exactly the wiring's inputs, so the
    /// consumer subscribes to what the wiring says. In exactly-once mode the previous
    /// incarnation of the transactional id is fenced first: whatever it left open is aborted
    /// at once rather than after the transaction timeout, and restores see committed state.
    pub async fn processor_with(
        &self,
        wiring: &Wiring,
        config: ProcessorConfig,
        router: Router,
        publisher: Publisher,
    ) -> Result<Processor, Error> {
        let mut wanted: Vec<String> = wiring
            .input_topics()?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut handled = router.topics();
        wanted.sort();
        handled.sort();
        if wanted != handled {
            return Err(Error::InvalidConfig {
                setting: "wiring",
                reason: format!(
                    "`{}` handles topics {handled:?} but its wiring's inputs are {wanted:?}",
                    wiring.service
                ),
            });
        }
        if let Some(id) = &config.transactional_id {
            fence(&self.kafka, &config.group_id, id, FENCE_TIMEOUT).await?;
        }
        Processor::new(&self.kafka, config, router, publisher, &self.monitor)
    }
}
