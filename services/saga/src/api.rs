//! `GET /api/sagas` and `GET /api/sagas/{id}`: the saga read model over HTTP.
//!
//! - `GET /api/sagas?status=&step=&olderThan=&customer=&limit=&cursor=`: instances oldest
//!   first (`limit` 1–1000, default 50), `next` the cursor of the following page, `counts` per
//!   status. `olderThan` is a duration (`90s`, `5m`, `1h`); `step` one of the saga's steps.
//! - `GET /api/sagas/{id}`: one instance with its timeline.
//!
//! Bad input is a `400 application/problem+json` naming the parameter; an unknown id a 404.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sagashop_kit::http::problem;

use crate::view::{Cursor, Filter, SagaStatus, SagaView};

/// The routes, over `view`.
pub fn routes(view: Arc<SagaView>) -> axum::Router {
    axum::Router::new()
        .route("/api/sagas", get(list))
        .route("/api/sagas/{id}", get(show))
        .with_state(view)
}

/// Why a query was refused: the parameter, and what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The parameter at fault (`query` for an unknown one).
    pub field: &'static str,
    /// What is wrong.
    pub detail: String,
}

impl Refused {
    fn new(field: &'static str, detail: impl Into<String>) -> Self {
        Self {
            field,
            detail: detail.into(),
        }
    }

    /// The `400 application/problem+json` answer.
    fn answer(&self) -> Response {
        let title = if self.field == "query" {
            "Unknown parameter".to_owned()
        } else {
            format!("Invalid {}", self.field)
        };
        problem(
            StatusCode::BAD_REQUEST,
            &title,
            &self.detail,
            Some(self.field),
        )
    }
}

/// The filter a query asks for, or why it cannot be one.
pub fn filter(view: &SagaView, query: &HashMap<String, String>) -> Result<Filter, Refused> {
    let mut filter = Filter {
        limit: 50,
        ..Filter::default()
    };
    for (name, value) in query {
        match name.as_str() {
            "status" => {
                filter.status = Some(SagaStatus::parse(value).ok_or_else(|| {
                    Refused::new(
                        "status",
                        "status must be RUNNING, COMPENSATING, COMPLETED or CANCELLED",
                    )
                })?);
            }
            "step" => {
                if !view.steps().iter().any(|s| s == value) {
                    return Err(Refused::new(
                        "step",
                        format!("step must be one of {}", view.steps().join(", ")),
                    ));
                }
                filter.step = Some(value.clone());
            }
            "olderThan" => {
                filter.older_than = Some(humantime::parse_duration(value).map_err(|e| {
                    Refused::new(
                        "olderThan",
                        format!("olderThan must be a duration such as 90s, 5m or 1h ({e})"),
                    )
                })?);
            }
            "customer" => filter.customer = Some(value.clone()),
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=1000).contains(l))
                    .ok_or_else(|| {
                        Refused::new("limit", "limit must be a number from 1 to 1000")
                    })?;
            }
            "cursor" => {
                filter.after = Some(Cursor::parse(value).ok_or_else(|| {
                    Refused::new("cursor", "cursor must be the `next` of a previous page")
                })?);
            }
            other => {
                return Err(Refused::new(
                    "query",
                    format!(
                        "`{other}` is not a filter: status, step, olderThan, customer, limit, cursor"
                    ),
                ));
            }
        }
    }
    Ok(filter)
}

async fn list(
    State(view): State<Arc<SagaView>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match filter(&view, &query) {
        Ok(filter) => Json(view.list(&filter, chrono::Utc::now())).into_response(),
        Err(refused) => refused.answer(),
    }
}

async fn show(State(view): State<Arc<SagaView>>, Path(id): Path<String>) -> Response {
    match view.get(&id) {
        Some(instance) => Json(instance).into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            "Unknown saga",
            &format!(
                "no saga {id} is kept (never started, or ended longer ago than the retention)"
            ),
            None,
        ),
    }
}
