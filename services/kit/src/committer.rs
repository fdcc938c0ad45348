//! All-or-nothing writes for requests that do not come from Kafka (the HTTP edge): each caller's
//! records become visible together or not at all, and the caller learns which.
//!
//! A plain idempotent producer cannot say "nothing was written" after a failure: a record that
//! was in flight when the broker went away may or may not be in the log (librdkafka reports the
//! same timeout either way). So the [`Committer`] writes in Kafka transactions. Callers queue
//! their records; one task takes everything queued, writes it in one transaction (group commit:
//! under load a transaction carries many requests, when idle it carries one) and commits it.
//! Every reader of sagashop uses `isolation.level=read_committed`, so:
//! - [`Committer::commit`] returns `Ok` only after the commit: the records are visible, once;
//! - it returns [`CommitError::Unavailable`] only when the transaction was never committed (a
//!   delivery failed, or the request waited longer than `queue_timeout` to get into one): no
//!   reader ever sees those records, even if some reached the log;
//! - if the broker goes away *during* the commit call, the commit is retried until Kafka
//!   answers, up to the transaction timeout; only if it never does is the outcome
//!   [`CommitError::Unknown`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::kafka::KafkaConfig;
use crate::monitor::{GroupLabels, Monitor, TopicLabels, seconds};
use crate::publisher::{PublishError, Publisher};
use crate::record::Outgoing;
use crate::task::Task;
use crate::transaction::{TxnError, blocking, commit_now, grace_after, producer};

/// How a [`Committer`] runs.
#[derive(Debug, Clone)]
pub struct CommitterConfig {
    /// Its `transactional.id`: stable across restarts of one instance, unique among instances
    /// (a new instance with the same id fences the old one).
    pub transactional_id: String,
    /// The longest a request waits in the queue for a transaction; after that it is refused
    /// with [`CommitError::Unavailable`] without being written.
    pub queue_timeout: Duration,
    /// The most requests in one transaction.
    pub max_batch: usize,
    /// How many requests may wait; more are refused at once.
    pub queue_capacity: usize,
    /// The timeout of librdkafka's transaction calls (init, begin, commit, abort).
    pub call_timeout: Duration,
}

impl CommitterConfig {
    /// Defaults for `transactional_id`: 2 s in the queue, 500 requests per transaction, 4,096
    /// waiting, 10 s per call.
    pub fn new(transactional_id: impl Into<String>) -> Self {
        Self {
            transactional_id: transactional_id.into(),
            queue_timeout: Duration::from_secs(2),
            max_batch: 500,
            queue_capacity: 4096,
            call_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a commit did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The records were not committed and never will be: nothing is visible. Trying again
    /// later may succeed.
    #[error("not written, Kafka is unavailable: {0}")]
    Unavailable(String),
    /// Kafka refused the records for good (too large, unknown topic, not authorised); nothing
    /// is visible.
    #[error("not written, Kafka refused it: {0}")]
    Rejected(String),
    /// The commit was sent and Kafka never answered within the transaction timeout: the records
    /// may or may not be visible.
    #[error("unknown outcome, the commit was not confirmed: {0}")]
    Unknown(String),
}

struct Job {
    records: Vec<Outgoing>,
    /// `WAITING` until the writer takes it (`TAKEN`) or its caller gives up (`EXPIRED`); whoever
    /// moves it first decides, so a request is refused only if it never entered a transaction.
    state: Arc<AtomicU8>,
    queued: Instant,
    reply: oneshot::Sender<Result<(), CommitError>>,
}

const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const EXPIRED: u8 = 2;

fn claim(state: &AtomicU8, to: u8) -> bool {
    state
        .compare_exchange(WAITING, to, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

/// A handle for queueing all-or-nothing writes; cheap to clone.
#[derive(Debug, Clone)]
pub struct Committer {
    queue: mpsc::Sender<Job>,
    queue_timeout: Duration,
}

impl Committer {
    /// Registers the transactional id with the broker (fencing an earlier incarnation) and
    /// starts the writing task, which ends once `shutdown` is cancelled and the queue is done.
    /// `monitor` gets each committed record's time from queueing to commit
    /// (`sagashop_publish_duration_seconds`, by topic) and every aborted transaction
    /// (`sagashop_transaction_aborts_total{group="<role>"}`).
    pub async fn start(
        kafka: &KafkaConfig,
        role: &str,
        config: CommitterConfig,
        monitor: &Monitor,
        shutdown: CancellationToken,
    ) -> Result<(Self, Task), Error> {
        let client = kafka.transactional_producer(role, &config.transactional_id);
        let txn = producer(&client, config.call_timeout).await?;
        let (queue, jobs) = mpsc::channel(config.queue_capacity.max(1));
        let queue_timeout = config.queue_timeout;
        let writer = Writer {
            client,
            role: role.to_owned(),
            monitor: monitor.clone(),
            txn: Some(txn),
            config,
            commit_window: kafka.transaction_timeout() + Duration::from_secs(10),
        };
        let task = Task::spawn("the transactional writer", writer.run(jobs, shutdown));
        Ok((
            Self {
                queue,
                queue_timeout,
            },
            task,
        ))
    }

    /// Writes `records` in one transaction with whatever else is queued; see the module docs
    /// for what each answer guarantees. The caller's trace context goes into the headers.
    pub async fn commit(&self, mut records: Vec<Outgoing>) -> Result<(), CommitError> {
        for record in &mut records {
            crate::telemetry::inject_current(&mut record.headers);
        }
        let (reply, mut answer) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(WAITING));
        let job = Job {
            records,
            state: Arc::clone(&state),
            queued: Instant::now(),
            reply,
        };
        self.queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                CommitError::Unavailable("too many writes are waiting".to_owned())
            }
            mpsc::error::TrySendError::Closed(_) => {
                CommitError::Unavailable("the writer has stopped".to_owned())
            }
        })?;
        let stopped = || CommitError::Unavailable("the writer has stopped".to_owned());
        tokio::select! {
            answer = &mut answer => return answer.unwrap_or_else(|_| Err(stopped())),
            () = tokio::time::sleep(self.queue_timeout) => {}
        }
        if claim(&state, EXPIRED) {
            return Err(CommitError::Unavailable(format!(
                "no transaction could take it within {:?}",
                self.queue_timeout
            )));
        }
        // Taken into a transaction: its outcome is the answer, however long it takes.
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// How a transaction ended.
enum Outcome {
    Committed,
    /// Not committed; `replace` when the producer must be created anew.
    NotCommitted {
        why: CommitError,
        replace: bool,
    },
    Unknown(String),
}

struct Writer {
    client: rdkafka::ClientConfig,
    role: String,
    monitor: Monitor,
    txn: Option<FutureProducer>,
    config: CommitterConfig,
    /// How long a commit is retried while Kafka does not answer: past the transaction timeout
    /// the coordinator has aborted whatever it did not commit.
    commit_window: Duration,
}

impl Writer {
    async fn run(
        mut self,
        mut jobs: mpsc::Receiver<Job>,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let mut failed_in_a_row: u32 = 0;
        loop {
            let first = tokio::select! {
                job = jobs.recv() => job,
                () = shutdown.cancelled() => {
                    // Refuse new work; finish what is queued.
                    jobs.close();
                    jobs.recv().await
                }
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let batch = Self::take(batch);
            if batch.is_empty() {
                continue;
            }
            let outcome = tokio::select! {
                outcome = self.write(&batch) => outcome,
                () = grace_after(&shutdown) => {
                    // Kafka does not answer and the process is stopping: leave. The open
                    // transaction is aborted by the broker unless its commit got through.
                    tracing::warn!(requests = batch.len(), "shutting down with a transaction in progress");
                    for job in batch {
                        let _ = job.reply.send(Err(CommitError::Unknown("the process stopped during the commit".into())));
                    }
                    break;
                }
            };
            let answer = self.settle(outcome, &batch, &mut failed_in_a_row).await;
            for job in batch {
                let _ = job.reply.send(answer.clone());
            }
            if failed_in_a_row > 0 {
                // Back off a little so a broker that is away is not hammered; requests queued
                // meanwhile still get their answer within `queue_timeout`.
                let pause = Duration::from_millis(50 * u64::from(failed_in_a_row.min(10)));
                tokio::time::sleep(pause).await;
            }
        }
        if let Some(txn) = &self.txn {
            let _ = txn.flush(Duration::from_secs(1));
        }
        Ok(())
    }

    /// What a batch's requests are answered after `outcome`: counts an abort, and drops a
    /// producer that cannot go on (the next batch creates another).
    async fn settle(
        &mut self,
        outcome: Outcome,
        batch: &[Job],
        failed_in_a_row: &mut u32,
    ) -> Result<(), CommitError> {
        if !matches!(outcome, Outcome::Committed) {
            self.monitor
                .runtime
                .transaction_aborts
                .get_or_create(&GroupLabels {
                    group: self.role.clone(),
                })
                .inc();
        }
        match outcome {
            Outcome::Committed => {
                *failed_in_a_row = 0;
                self.observe(batch);
                Ok(())
            }
            Outcome::NotCommitted { why, replace } => {
                *failed_in_a_row += 1;
                tracing::warn!(error = %why, requests = batch.len(), "transaction not committed; nothing of it is visible");
                if replace || !self.abort().await {
                    self.txn = None;
                }
                Err(why)
            }
            Outcome::Unknown(why) => {
                *failed_in_a_row += 1;
                tracing::error!(error = %why, requests = batch.len(), "commit unconfirmed; replacing the producer");
                self.txn = None;
                Err(CommitError::Unknown(why))
            }
        }
    }

    /// Records each committed record's time from queueing to commit.
    fn observe(&self, batch: &[Job]) {
        for job in batch {
            let took = seconds(job.queued.elapsed());
            for record in &job.records {
                let labels = TopicLabels {
                    topic: record.topic.clone(),
                };
                let family = &self.monitor.runtime.publish_seconds;
                family.get_or_create(&labels).observe(took);
            }
        }
    }

    /// Takes the jobs whose callers still wait; drops those that gave up (already answered).
    fn take(batch: Vec<Job>) -> Vec<Job> {
        batch
            .into_iter()
            .filter(|job| claim(&job.state, TAKEN))
            .collect()
    }

    async fn write(&mut self, batch: &[Job]) -> Outcome {
        let timeout = self.config.call_timeout;
        let txn = match &self.txn {
            Some(txn) => txn.clone(),
            None => match producer(&self.client, timeout).await {
                Ok(txn) => {
                    self.txn = Some(txn.clone());
                    txn
                }
                Err(e) => {
                    return Outcome::NotCommitted {
                        why: CommitError::Unavailable(e.to_string()),
                        replace: true,
                    };
                }
            },
        };
        let begin = txn.clone();
        if let Err(e) = blocking("begin_transaction", timeout, move || {
            begin.begin_transaction()
        })
        .await
        {
            return Outcome::NotCommitted {
                why: CommitError::Unavailable(e.to_string()),
                replace: true,
            };
        }
        // Enqueue everything, then wait for every acknowledgement.
        let mut deliveries = Vec::new();
        let mut failed: Option<PublishError> = None;
        for job in batch {
            for record in &job.records {
                match txn.send_result(Publisher::record(record)) {
                    Ok(delivery) => deliveries.push((record.topic.as_str(), delivery)),
                    Err((cause, _)) => {
                        failed.get_or_insert(PublishError::classify(&record.topic, cause));
                    }
                }
            }
        }
        for (topic, delivery) in deliveries {
            if let Err(e) = Publisher::answer(topic, delivery.await) {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            let why = if e.is_unavailable() {
                CommitError::Unavailable(e.to_string())
            } else {
                CommitError::Rejected(e.to_string())
            };
            return Outcome::NotCommitted {
                why,
                replace: false,
            };
        }
        self.commit(&txn).await
    }

    /// Commits, retrying while Kafka does not answer (a retried commit is the same commit).
    async fn commit(&self, txn: &FutureProducer) -> Outcome {
        let timeout = self.config.call_timeout;
        let started = Instant::now();
        loop {
            let commit = txn.clone();
            let result = blocking("commit_transaction", timeout, move || {
                commit_now(&commit, timeout)
            })
            .await;
            let e = match result {
                Ok(()) => return Outcome::Committed,
                Err(e) => e,
            };
            match &e {
                TxnError::Kafka(_, KafkaError::Transaction(t)) if t.is_retriable() => {
                    if started.elapsed() > self.commit_window {
                        return Outcome::Unknown(e.to_string());
                    }
                    tracing::warn!(error = %e, "commit not confirmed yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                TxnError::Kafka(_, KafkaError::Transaction(t)) if t.txn_requires_abort() => {
                    return Outcome::NotCommitted {
                        why: CommitError::Unavailable(e.to_string()),
                        replace: false,
                    };
                }
                // Fenced or otherwise fatal: this producer's open transaction is aborted by the
                // coordinator (a fenced producer cannot commit), so nothing became visible.
                TxnError::Kafka(_, KafkaError::Transaction(_)) => {
                    return Outcome::NotCommitted {
                        why: CommitError::Unavailable(e.to_string()),
                        replace: true,
                    };
                }
                _ => return Outcome::Unknown(e.to_string()),
            }
        }
    }

    /// Aborts the open transaction; `false` when the producer must be replaced (replacing it
    /// fences the transaction anyway: a new `init_transactions` aborts what it left open).
    async fn abort(&self) -> bool {
        let Some(txn) = self.txn.clone() else {
            return false;
        };
        let timeout = self.config.call_timeout;
        blocking("abort_transaction", timeout, move || {
            txn.abort_transaction(timeout)
        })
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "abort failed; replacing the producer"))
        .is_ok()
    }
}
