//! The two shapes a record has in the runtime: [`Record`], consumed and detached from its
//! consumer, and [`Outgoing`], encoded and ready to publish. Every other module speaks in these.

use rdkafka::Message;
use rdkafka::message::{Headers, OwnedHeaders};
use sagashop_contracts::{Contract, DecodeError, EncodeError, Envelope, Metadata};

/// A consumed record, detached from the consumer so it can move between tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub payload: Option<Vec<u8>>,
    /// Record headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// When it was produced (or appended, per the topic's timestamp type), Unix milliseconds.
    pub timestamp: Option<i64>,
}

impl Record {
    /// Copies a consumed message.
    pub fn from_message<M: Message>(message: &M) -> Self {
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
            timestamp: message.timestamp().to_millis(),
        }
    }

    /// The envelope metadata in the headers.
    pub fn metadata(&self) -> Result<Metadata, DecodeError> {
        Metadata::from_headers(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())))
    }
}

/// A record ready to publish: payload already encoded, headers already rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Destination topic.
    pub topic: String,
    /// Record key (the order id); `None` only for records that belong to no entity.
    pub key: Option<Vec<u8>>,
    /// The partition, when the writer must choose it (a state store's changelog record goes
    /// to the partition of the input it belongs to); `None` lets the key choose.
    pub partition: Option<i32>,
    /// Record value; `None` is a tombstone (deletes the key from a compacted topic).
    pub payload: Option<Vec<u8>>,
    /// Record headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Outgoing {
    /// An envelope bound for `topic`.
    pub fn event<T: Contract>(topic: &str, envelope: &Envelope<T>) -> Result<Self, EncodeError> {
        Ok(Self {
            topic: topic.to_owned(),
            key: Some(envelope.key.clone().into_bytes()),
            partition: None,
            payload: Some(envelope.encode_payload()?),
            headers: envelope
                .metadata
                .to_headers()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into_bytes()))
                .collect(),
        })
    }

    /// A payload already encoded, with `metadata` as headers: for messages whose type is
    /// data (a saga's commands) rather than a Rust type.
    pub fn raw(topic: &str, key: &str, metadata: &Metadata, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.to_owned(),
            key: Some(key.as_bytes().to_vec()),
            partition: None,
            payload: Some(payload),
            headers: metadata
                .to_headers()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into_bytes()))
                .collect(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_owned(), value.as_bytes().to_vec()));
        self
    }

    pub(crate) fn kafka_headers(&self) -> OwnedHeaders {
        crate::headers::owned(
            self.headers
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_slice())),
        )
    }
}
