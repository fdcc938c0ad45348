//! Every answer of the order API other than success, as one type: each variant knows its
//! status, its title, the field it names and the headers it carries, and renders itself as
//! `application/problem+json` (RFC 9457), so the handlers return `Result<_, ApiError>` and use
//! `?`.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sagashop_kit::http::problem;
use uuid::Uuid;

use crate::request::Refusal;

/// Why the order API did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// More orders per second than the rate limit: `429` with `Retry-After`.
    #[error("the order rate limit is reached; nothing was written, try again later")]
    RateLimited {
        /// Seconds until a token is free.
        retry_after_secs: u32,
    },
    /// Too many orders accepted here are still waiting for their outcome: `503` with
    /// `Retry-After`, and nothing was written.
    #[error(
        "{pending} orders accepted here are still waiting for their outcome (at most {limit}); nothing was written, try again later"
    )]
    Overloaded {
        /// Orders accepted here without an outcome.
        pending: usize,
        /// The most there may be.
        limit: usize,
        /// Seconds to wait before trying again.
        retry_after_secs: u32,
    },
    /// The `Idempotency-Key` header is empty, too long or not text: `400`.
    #[error("Idempotency-Key must be 1 to 128 visible ASCII characters")]
    BadIdempotencyKey,
    /// The body is over the size limit: `413`, and the connection closes (the rest of the body
    /// is not read).
    #[error("the body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body did not arrive in time: `408`, and the connection closes.
    #[error("the body did not arrive within {timeout:?}")]
    BodyTooSlow {
        /// How long it was given.
        timeout: Duration,
    },
    /// The body is not JSON: `400`.
    #[error("{0}")]
    Malformed(String),
    /// The body is JSON but not a valid order: `422` naming the field.
    #[error("{field}: {detail}")]
    Invalid {
        /// The offending field's path.
        field: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The order could not be encoded (a bug): `500`.
    #[error("{0}")]
    NotEncoded(String),
    /// Kafka cannot take the order now; nothing was written: `503` with `Retry-After`.
    #[error("the order was not accepted and nothing was written; try again later")]
    Unavailable {
        /// Seconds to wait before trying again.
        retry_after_secs: u32,
    },
    /// Kafka refused the order for good: `500`.
    #[error("{0}")]
    Rejected(String),
    /// Kafka did not confirm the commit in time; the order may exist: `504`.
    #[error(
        "Kafka did not confirm order {order_id} in time; GET /api/orders/{order_id} shows it if it was placed"
    )]
    OutcomeUnknown {
        /// The order id the client can look up.
        order_id: Uuid,
    },
    /// No order with this id: `404`.
    #[error("no order `{0}`")]
    UnknownOrder(String),
    /// The `status` filter is not a status: `400`.
    #[error("status must be PENDING, COMPLETED or CANCELLED")]
    InvalidStatus,
    /// The `limit` parameter is out of range: `400`.
    #[error("limit must be a number from 1 to 1000")]
    InvalidLimit,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BadIdempotencyKey
            | Self::Malformed(_)
            | Self::InvalidStatus
            | Self::InvalidLimit => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTooSlow { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotEncoded(_) | Self::Rejected(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable { .. } | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::OutcomeUnknown { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::UnknownOrder(_) => StatusCode::NOT_FOUND,
        }
    }

    /// The problem's title: the same for every occurrence of the variant.
    pub fn title(&self) -> &'static str {
        match self {
            Self::RateLimited { .. } => "Too many orders",
            Self::BadIdempotencyKey => "Invalid Idempotency-Key",
            Self::BodyTooLarge { .. } => "Body too large",
            Self::BodyTooSlow { .. } => "Body too slow",
            Self::Malformed(_) => "Malformed body",
            Self::Invalid { .. } => "Invalid order",
            Self::NotEncoded(_) | Self::Rejected(_) => "Order not accepted",
            Self::Unavailable { .. } => "Kafka unavailable",
            Self::Overloaded { .. } => "Too many orders in flight",
            Self::OutcomeUnknown { .. } => "Order outcome unknown",
            Self::UnknownOrder(_) => "Unknown order",
            Self::InvalidStatus => "Invalid status",
            Self::InvalidLimit => "Invalid limit",
        }
    }

    /// The request field or header at fault, if one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::BadIdempotencyKey => Some("Idempotency-Key"),
            Self::Invalid { field, .. } => Some(field),
            Self::InvalidStatus => Some("status"),
            Self::InvalidLimit => Some("limit"),
            _ => None,
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Malformed(detail) => Self::Malformed(detail),
            Refusal::Invalid { field, detail } => Self::Invalid { field, detail },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = problem(self.status(), self.title(), &self.to_string(), self.field());
        let headers = response.headers_mut();
        match self {
            Self::RateLimited { retry_after_secs }
            | Self::Unavailable { retry_after_secs }
            | Self::Overloaded {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            // The rest of the body is not read: the connection cannot carry another request.
            Self::BodyTooLarge { .. } | Self::BodyTooSlow { .. } => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[tokio::test]
    async fn a_refusal_is_problem_json_with_its_status_field_and_headers() {
        let response = ApiError::Invalid {
            field: "items[0].quantity".into(),
            detail: "must be at least 1".into(),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let json = body(response).await;
        assert_eq!(json["title"], "Invalid order");
        assert_eq!(json["status"], 422);
        assert_eq!(json["field"], "items[0].quantity");
        assert_eq!(json["detail"], "items[0].quantity: must be at least 1");

        let response = ApiError::Unavailable {
            retry_after_secs: 5,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");

        let response = ApiError::Overloaded {
            pending: 2001,
            limit: 2000,
            retry_after_secs: 1,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(body(response).await["title"], "Too many orders in flight");

        let response = ApiError::BodyTooLarge { limit: 10 }.into_response();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()[header::CONNECTION], "close");
        assert!(body(response).await.get("field").is_none());
    }
}
