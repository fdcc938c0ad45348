//! Publishing: records leave only with the broker's acknowledgement, or with an error that says
//! whether trying later can help.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sagashop_contracts::{Contract, EncodeError, Envelope};

use crate::error::Error;
use crate::kafka::KafkaConfig;
use crate::monitor::{Monitor, TopicLabels, seconds};
use crate::record::Outgoing;
use crate::store::Reload;
use tracing::Instrument;

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

/// Why a record was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Kafka cannot take the record now (brokers unreachable, local queue full, delivery timed
    /// out). Nothing was acknowledged; trying later may succeed. The HTTP edge answers 503.
    #[error("Kafka is unavailable, `{topic}` did not acknowledge the record: {cause}")]
    Unavailable {
        /// The destination topic.
        topic: String,
        /// librdkafka's account.
        cause: KafkaError,
    },
    /// Kafka refused the record for good (too large, unknown topic, not authorised).
    #[error("Kafka refused the record for `{topic}`: {cause}")]
    Rejected {
        /// The destination topic.
        topic: String,
        /// librdkafka's account.
        cause: KafkaError,
    },
    /// The payload could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl PublishError {
    /// Whether waiting and trying again may help.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    pub(crate) fn classify(topic: &str, cause: KafkaError) -> Self {
        use RDKafkaErrorCode as C;
        let code = cause.rdkafka_error_code();
        let transient = crate::error::kafka_away(code)
            || matches!(
                code,
                Some(
                    C::QueueFull
                        | C::MessageTimedOut
                        | C::NotEnoughReplicas
                        | C::NotEnoughReplicasAfterAppend
                        // Sends still queued or in flight when a transaction is aborted or
                        // its producer replaced (after the broker went away) are purged:
                        // never written.
                        | C::PurgeQueue
                        | C::PurgeInflight
                )
            );
        let topic = topic.to_owned();
        if transient {
            Self::Unavailable { topic, cause }
        } else {
            Self::Rejected { topic, cause }
        }
    }
}

/// An idempotent, `acks=all` producer.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    monitor: Option<Monitor>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher with the settings of [`KafkaConfig::producer`]; `role` names it to the broker.
    pub fn new(config: &KafkaConfig, role: &str) -> Result<Self, Error> {
        let producer = config
            .producer(role)
            .create()
            .map_err(|cause| Error::Client {
                what: "producer",
                cause,
            })?;
        Ok(Self {
            producer,
            monitor: None,
        })
    }

    /// Reports publish latency per topic to `monitor`.
    #[must_use]
    pub fn observed(mut self, monitor: &Monitor) -> Self {
        self.monitor = Some(monitor.clone());
        self
    }

    fn observe(&self, topic: &str, started: tokio::time::Instant) {
        if let Some(monitor) = &self.monitor {
            let labels = TopicLabels {
                topic: topic.to_owned(),
            };
            monitor
                .runtime
                .publish_seconds
                .get_or_create(&labels)
                .observe(seconds(started.elapsed()));
        }
    }

    /// Publishes an envelope to `topic`, keyed by its key; returns once the broker acknowledged.
    pub async fn publish<T: Contract>(
        &self,
        topic: &str,
        envelope: &Envelope<T>,
    ) -> Result<Delivered, PublishError> {
        self.send(&Outgoing::event(topic, envelope)?).await
    }

    /// Publishes one prepared record inside a `publish <topic>` producer span, whose trace
    /// context replaces the record's `traceparent`: the consumer's span becomes its child.
    pub async fn send(&self, out: &Outgoing) -> Result<Delivered, PublishError> {
        let span = tracing::info_span!(
            "publish",
            otel.name = %format!("publish {}", out.topic),
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.destination.name = %out.topic,
        );
        let mut out = out.clone();
        {
            let _entered = span.enter();
            crate::telemetry::inject_current(&mut out.headers);
        }
        self.deliver(&out.topic, Self::record(&out))
            .instrument(span)
            .await
    }

    /// Publishes every record with all of them in flight at once; records for one partition
    /// keep their order (they are enqueued in order and the producer is idempotent). Returns
    /// the first error after every record has an answer.
    pub async fn send_all(&self, outs: &[Outgoing]) -> Result<Vec<Delivered>, PublishError> {
        self.send_all_sequenced(outs, &[]).await
    }

    /// Like [`Publisher::send_all`], writing records of the `stores`' changelogs with each
    /// store's current value for the key (see [`Reload::enqueue_current`]).
    pub async fn send_all_sequenced(
        &self,
        outs: &[Outgoing],
        stores: &[Arc<dyn Reload>],
    ) -> Result<Vec<Delivered>, PublishError> {
        let started = tokio::time::Instant::now();
        let mut pending = Vec::with_capacity(outs.len());
        for out in outs {
            let mut enqueued = None;
            let mut enqueue = |record: &Outgoing| {
                enqueued = Some(
                    self.producer
                        .send_result(Self::record(record))
                        .map_err(|(cause, _)| PublishError::classify(&record.topic, cause)),
                );
            };
            if !stores.iter().any(|s| s.enqueue_current(out, &mut enqueue)) {
                enqueue(out);
            }
            if let Some(enqueued) = enqueued {
                pending.push((out, enqueued));
            }
        }
        let mut delivered = Vec::with_capacity(outs.len());
        let mut first_error = None;
        for (out, enqueued) in pending {
            let result = match enqueued {
                Ok(future) => Self::answer(&out.topic, future.await),
                Err(e) => Err(e),
            };
            if result.is_ok() {
                self.observe(&out.topic, started);
            }
            match result {
                Ok(d) => delivered.push(d),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(delivered), Err)
    }

    pub(crate) fn record(out: &Outgoing) -> FutureRecord<'_, [u8], [u8]> {
        let mut record = FutureRecord::to(&out.topic).headers(out.kafka_headers());
        if let Some(payload) = &out.payload {
            record = record.payload(payload.as_slice());
        }
        if let Some(partition) = out.partition {
            record = record.partition(partition);
        }
        match &out.key {
            Some(key) => record.key(key.as_slice()),
            None => record,
        }
    }

    async fn deliver<K, P>(
        &self,
        topic: &str,
        record: FutureRecord<'_, K, P>,
    ) -> Result<Delivered, PublishError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        // A full local queue is "unavailable" at once rather than a wait: the edge answers 503
        // instead of piling up requests.
        let started = tokio::time::Instant::now();
        let future = self
            .producer
            .send_result(record)
            .map_err(|(cause, _)| PublishError::classify(topic, cause))?;
        let delivered = Self::answer(topic, future.await)?;
        self.observe(topic, started);
        Ok(delivered)
    }

    pub(crate) fn answer(
        topic: &str,
        answer: Result<
            rdkafka::producer::future_producer::OwnedDeliveryResult,
            futures::channel::oneshot::Canceled,
        >,
    ) -> Result<Delivered, PublishError> {
        match answer {
            Ok(Ok(delivery)) => Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((cause, _))) => Err(PublishError::classify(topic, cause)),
            // The producer was dropped with the record in its queue.
            Err(_) => Err(PublishError::Unavailable {
                topic: topic.to_owned(),
                cause: KafkaError::Canceled,
            }),
        }
    }

    /// Waits up to `timeout` for every queued record to be acknowledged (before shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        use rdkafka::producer::Producer;
        self.producer.flush(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classified(code: RDKafkaErrorCode) -> PublishError {
        PublishError::classify("orders", KafkaError::MessageProduction(code))
    }

    #[test]
    fn sends_purged_by_an_aborted_transaction_are_unavailable_not_rejected() {
        // The edge answers 503 (try again) for these, never 500: nothing was written.
        for code in [
            RDKafkaErrorCode::PurgeQueue,
            RDKafkaErrorCode::PurgeInflight,
        ] {
            assert!(classified(code).is_unavailable(), "{code:?}");
        }
        assert!(classified(RDKafkaErrorCode::AllBrokersDown).is_unavailable());
        assert!(!classified(RDKafkaErrorCode::MessageSizeTooLarge).is_unavailable());
        assert!(!classified(RDKafkaErrorCode::TopicAuthorizationFailed).is_unavailable());
    }
}
