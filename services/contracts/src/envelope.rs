//! The envelope: key + metadata headers + JSON payload, and the errors of reading one.

use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// The header names every sagashop message carries.
pub mod header {
    /// The payload's type, e.g. `OrderPlaced`; selects the decoder.
    pub const EVENT_TYPE: &str = "event-type";
    /// The payload's schema version (a positive integer).
    pub const SCHEMA_VERSION: &str = "schema-version";
    /// A unique id of this message (UUIDv7); what idempotent consumers dedupe on.
    pub const MESSAGE_ID: &str = "message-id";
    /// The id shared by every message of one business flow (the order id for the order saga).
    pub const CORRELATION_ID: &str = "correlation-id";
    /// The `message-id` of the message that caused this one (absent on the first).
    pub const CAUSATION_ID: &str = "causation-id";
    /// W3C trace context: the trace this message belongs to.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace context: vendor-specific trace state.
    pub const TRACESTATE: &str = "tracestate";
}

/// A payload type that travels on Kafka: its wire name and schema version.
///
/// A breaking change to a payload is a new type with a new `SCHEMA_VERSION`, never an edit of a
/// published one: consumers may still read old messages from the log.
pub trait Contract: Serialize + DeserializeOwned + JsonSchema {
    /// The `event-type` header value.
    const EVENT_TYPE: &'static str;
    /// The `schema-version` header value.
    const SCHEMA_VERSION: u32;
}

/// What the headers of a message say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// See [`header::EVENT_TYPE`].
    pub event_type: String,
    /// See [`header::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// See [`header::MESSAGE_ID`].
    pub message_id: Uuid,
    /// See [`header::CORRELATION_ID`].
    pub correlation_id: String,
    /// See [`header::CAUSATION_ID`].
    pub causation_id: Option<Uuid>,
    /// See [`header::TRACEPARENT`].
    pub traceparent: Option<String>,
    /// See [`header::TRACESTATE`].
    pub tracestate: Option<String>,
}

impl Metadata {
    /// Metadata for the first message of a flow: a fresh message id, no cause.
    pub fn new<C: Contract>(correlation_id: impl Into<String>) -> Self {
        Self {
            event_type: C::EVENT_TYPE.to_owned(),
            schema_version: C::SCHEMA_VERSION,
            message_id: Uuid::now_v7(),
            correlation_id: correlation_id.into(),
            causation_id: None,
            traceparent: None,
            tracestate: None,
        }
    }

    /// Metadata for a message caused by `parent`: same correlation and trace, parent as cause.
    pub fn caused_by<C: Contract>(parent: &Metadata) -> Self {
        Self {
            causation_id: Some(parent.message_id),
            traceparent: parent.traceparent.clone(),
            tracestate: parent.tracestate.clone(),
            ..Self::new::<C>(parent.correlation_id.clone())
        }
    }

    /// The headers to write, in a stable order; absent optional values are left out.
    pub fn to_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (header::EVENT_TYPE, self.event_type.clone()),
            (header::SCHEMA_VERSION, self.schema_version.to_string()),
            (header::MESSAGE_ID, self.message_id.to_string()),
            (header::CORRELATION_ID, self.correlation_id.clone()),
        ];
        if let Some(cause) = self.causation_id {
            headers.push((header::CAUSATION_ID, cause.to_string()));
        }
        if let Some(tp) = &self.traceparent {
            headers.push((header::TRACEPARENT, tp.clone()));
        }
        if let Some(ts) = &self.tracestate {
            headers.push((header::TRACESTATE, ts.clone()));
        }
        headers
    }

    /// Reads the metadata from record headers; unknown headers are ignored.
    ///
    /// When a header appears twice the last one wins, as with HTTP's "last value" readers.
    pub fn from_headers<'a, I>(headers: I) -> Result<Self, DecodeError>
    where
        I: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    {
        let mut event_type = None;
        let mut schema_version = None;
        let mut message_id = None;
        let mut correlation_id = None;
        let mut causation_id = None;
        let mut traceparent = None;
        let mut tracestate = None;
        for (name, value) in headers {
            let slot = match name {
                header::EVENT_TYPE => &mut event_type,
                header::SCHEMA_VERSION => &mut schema_version,
                header::MESSAGE_ID => &mut message_id,
                header::CORRELATION_ID => &mut correlation_id,
                header::CAUSATION_ID => &mut causation_id,
                header::TRACEPARENT => &mut traceparent,
                header::TRACESTATE => &mut tracestate,
                _ => continue,
            };
            *slot = Some(utf8_header(header_name(name), value)?);
        }

        let event_type = required(header::EVENT_TYPE, event_type)?;
        let schema_version = required(header::SCHEMA_VERSION, schema_version)?;
        let schema_version = schema_version
            .parse::<u32>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| DecodeError::InvalidHeader {
                name: header::SCHEMA_VERSION,
                reason: format!("expected a positive integer, found {schema_version:?}"),
            })?;
        let message_id = parse_uuid(
            header::MESSAGE_ID,
            &required(header::MESSAGE_ID, message_id)?,
        )?;
        let correlation_id = required(header::CORRELATION_ID, correlation_id)?;
        let causation_id = causation_id
            .map(|c| parse_uuid(header::CAUSATION_ID, &c))
            .transpose()?;
        Ok(Self {
            event_type,
            schema_version,
            message_id,
            correlation_id,
            causation_id,
            traceparent,
            tracestate,
        })
    }
}

/// Maps a header name we matched back to its `'static` constant for error messages.
fn header_name(name: &str) -> &'static str {
    [
        header::EVENT_TYPE,
        header::SCHEMA_VERSION,
        header::MESSAGE_ID,
        header::CORRELATION_ID,
        header::CAUSATION_ID,
        header::TRACEPARENT,
        header::TRACESTATE,
    ]
    .into_iter()
    .find(|known| *known == name)
    .unwrap_or("unknown")
}

fn utf8_header(name: &'static str, value: Option<&[u8]>) -> Result<String, DecodeError> {
    let bytes = value.ok_or(DecodeError::InvalidHeader {
        name,
        reason: "the header has no value".to_owned(),
    })?;
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidHeader {
        name,
        reason: "the value is not UTF-8".to_owned(),
    })
}

fn required(name: &'static str, value: Option<String>) -> Result<String, DecodeError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(DecodeError::MissingHeader(name)),
    }
}

fn parse_uuid(name: &'static str, value: &str) -> Result<Uuid, DecodeError> {
    Uuid::parse_str(value).map_err(|e| DecodeError::InvalidHeader {
        name,
        reason: format!("expected a UUID, found {value:?}: {e}"),
    })
}

/// One message: key, metadata and typed payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    /// The record key (the order id for the order saga).
    pub key: String,
    /// The headers.
    pub metadata: Metadata,
    /// The typed payload.
    pub payload: T,
}

impl<T: Contract> Envelope<T> {
    /// The first message of a flow, correlated by `correlation_id`.
    pub fn new(key: impl Into<String>, correlation_id: impl Into<String>, payload: T) -> Self {
        Self {
            key: key.into(),
            metadata: Metadata::new::<T>(correlation_id),
            payload,
        }
    }

    /// A message caused by the message with metadata `parent`.
    pub fn caused_by(parent: &Metadata, key: impl Into<String>, payload: T) -> Self {
        Self {
            key: key.into(),
            metadata: Metadata::caused_by::<T>(parent),
            payload,
        }
    }

    /// The payload as JSON bytes.
    pub fn encode_payload(&self) -> Result<Vec<u8>, EncodeError> {
        serde_json::to_vec(&self.payload).map_err(|source| EncodeError {
            event_type: T::EVENT_TYPE,
            source,
        })
    }

    /// Checks that `metadata` names `T` and decodes the payload.
    ///
    /// Every error is permanent: the same bytes will never decode, so a consumer sends the
    /// record to its dead-letter topic instead of retrying it.
    pub fn decode(
        key: Option<&[u8]>,
        metadata: Metadata,
        payload: Option<&[u8]>,
    ) -> Result<Self, DecodeError> {
        if metadata.event_type != T::EVENT_TYPE {
            return Err(DecodeError::WrongEventType {
                expected: T::EVENT_TYPE,
                found: metadata.event_type,
            });
        }
        if metadata.schema_version != T::SCHEMA_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                event_type: T::EVENT_TYPE,
                found: metadata.schema_version,
                supported: T::SCHEMA_VERSION,
            });
        }
        let key = key.ok_or(DecodeError::MissingKey)?;
        let key = String::from_utf8(key.to_vec()).map_err(|_| DecodeError::InvalidKey)?;
        let bytes = payload.ok_or(DecodeError::MissingPayload)?;
        let mut json = serde_json::Deserializer::from_slice(bytes);
        let payload = serde_path_to_error::deserialize(&mut json).map_err(|e| {
            DecodeError::InvalidPayload {
                event_type: T::EVENT_TYPE,
                path: e.path().to_string(),
                source: e.into_inner(),
            }
        })?;
        Ok(Self {
            key,
            metadata,
            payload,
        })
    }
}

/// Why a record could not be read as a sagashop message. Every variant is permanent.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A required header is absent or empty.
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// A header is present but unreadable.
    #[error("invalid header `{name}`: {reason}")]
    InvalidHeader {
        /// The header name.
        name: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The record is another event type than the one asked for.
    #[error("expected event type `{expected}`, found `{found}`")]
    WrongEventType {
        /// What the caller asked for.
        expected: &'static str,
        /// What the `event-type` header says.
        found: String,
    },
    /// The record's schema version is not one this build reads.
    #[error(
        "`{event_type}` schema version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// The event type.
        event_type: &'static str,
        /// The `schema-version` header.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The record has no key.
    #[error("the record has no key (sagashop keys every record by its order id)")]
    MissingKey,
    /// The key is not UTF-8.
    #[error("the record key is not UTF-8")]
    InvalidKey,
    /// The record has no value.
    #[error("the record has no payload")]
    MissingPayload,
    /// The payload is not valid JSON for the event type.
    #[error("invalid `{event_type}` payload at `{path}`: {source}")]
    InvalidPayload {
        /// The event type.
        event_type: &'static str,
        /// Where in the document it failed, e.g. `items[2].quantity` (`.` for the top level).
        path: String,
        /// serde's account: the field, line and column.
        #[source]
        source: serde_json::Error,
    },
}

/// A payload could not be serialised (a map with non-string keys, say): a programming error.
#[derive(Debug, thiserror::Error)]
#[error("could not encode `{event_type}` as JSON: {source}")]
pub struct EncodeError {
    /// The event type.
    pub event_type: &'static str,
    /// serde's account.
    #[source]
    pub source: serde_json::Error,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::OrderCancelled;
    use chrono::{TimeZone, Utc};
    use pretty_assertions::assert_eq;

    fn cancelled() -> OrderCancelled {
        OrderCancelled {
            order_id: Uuid::nil(),
            reason: "payment declined".into(),
            failed_step: "authorize-payment".into(),
            cancelled_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
        }
    }

    fn as_pairs<'a>(
        headers: &'a [(&'static str, String)],
    ) -> Vec<(&'static str, Option<&'a [u8]>)> {
        headers
            .iter()
            .map(|(k, v)| (*k, Some(v.as_bytes())))
            .collect()
    }

    #[test]
    fn metadata_survives_a_trip_through_headers() {
        let mut meta = Metadata::new::<OrderCancelled>("order-1");
        meta.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let child = Metadata::caused_by::<OrderCancelled>(&meta);
        let headers = child.to_headers();
        assert_eq!(Metadata::from_headers(as_pairs(&headers)).unwrap(), child);
        assert_eq!(child.causation_id, Some(meta.message_id));
        assert_eq!(child.correlation_id, "order-1");
        assert_eq!(child.traceparent, meta.traceparent);
        assert_ne!(child.message_id, meta.message_id);
    }

    #[test]
    fn missing_or_malformed_headers_are_named() {
        let meta = Metadata::new::<OrderCancelled>("order-1");
        let headers = meta.to_headers();
        let without_id: Vec<_> = as_pairs(&headers)
            .into_iter()
            .filter(|(k, _)| *k != header::MESSAGE_ID)
            .collect();
        let err = Metadata::from_headers(without_id).unwrap_err();
        assert_eq!(err.to_string(), "missing header `message-id`");

        let mut bad_version = as_pairs(&headers);
        bad_version.push((header::SCHEMA_VERSION, Some(b"0")));
        let err = Metadata::from_headers(bad_version).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid header `schema-version`"),
            "{err}"
        );

        let mut not_utf8 = as_pairs(&headers);
        not_utf8.push((header::CORRELATION_ID, Some(&[0xff, 0xfe])));
        let err = Metadata::from_headers(not_utf8).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid header `correlation-id`: the value is not UTF-8"
        );
    }

    #[test]
    fn payload_round_trips_and_wrong_type_or_version_is_refused() {
        let env = Envelope::new("order-1", "order-1", cancelled());
        let bytes = env.encode_payload().unwrap();
        let back = Envelope::<OrderCancelled>::decode(
            Some(b"order-1"),
            env.metadata.clone(),
            Some(&bytes),
        )
        .unwrap();
        assert_eq!(back, env);

        let mut newer = env.metadata.clone();
        newer.schema_version = 2;
        let err = Envelope::<OrderCancelled>::decode(Some(b"k"), newer, Some(&bytes)).unwrap_err();
        assert!(
            matches!(err, DecodeError::UnsupportedVersion { found: 2, .. }),
            "{err}"
        );

        let mut other = env.metadata;
        other.event_type = "OrderPlaced".into();
        let err = Envelope::<OrderCancelled>::decode(Some(b"k"), other, Some(&bytes)).unwrap_err();
        assert!(matches!(err, DecodeError::WrongEventType { .. }), "{err}");
    }

    #[test]
    fn invalid_payload_error_names_the_field() {
        let meta = Metadata::new::<OrderCancelled>("order-1");
        let err = Envelope::<OrderCancelled>::decode(
            Some(b"order-1"),
            meta,
            Some(br#"{"orderId":"00000000-0000-0000-0000-000000000000","reason":"x","failedStep":7,"cancelledAt":"2026-01-01T00:00:00Z"}"#),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("invalid `OrderCancelled` payload at `failedStep`"),
            "{text}"
        );
        assert!(text.contains("expected a string"), "{text}");
    }
}
