//! Envelope metadata to and from Kafka record headers.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use sagashop_contracts::{Contract, DecodeError, Envelope, Metadata};

/// The record headers for `metadata`.
pub fn to_headers(metadata: &Metadata) -> OwnedHeaders {
    owned(
        metadata
            .to_headers()
            .iter()
            .map(|(key, value)| (*key, value.as_bytes())),
    )
}

/// Record headers from name/value pairs, in order.
pub(crate) fn owned<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> OwnedHeaders {
    pairs
        .into_iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        })
}

/// Reads the envelope metadata of a consumed record.
pub fn metadata_of<M: Message>(message: &M) -> Result<Metadata, DecodeError> {
    match message.headers() {
        Some(headers) => Metadata::from_headers(headers.iter().map(|h| (h.key, h.value))),
        None => Metadata::from_headers(std::iter::empty()),
    }
}

/// Decodes a consumed record as an envelope of `T`.
pub fn decode<T: Contract, M: Message>(message: &M) -> Result<Envelope<T>, DecodeError> {
    Envelope::decode(message.key(), metadata_of(message)?, message.payload())
}
