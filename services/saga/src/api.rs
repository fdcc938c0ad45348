//! `GET /api/sagas` and `GET /api/sagas/{id}`: the saga read model over HTTP.
//!
//! - `GET /api/sagas?status=&step=&olderThan=&customer=&limit=&cursor=`: instances oldest
//!   first (`limit` 1–1000, default 50), `next` the cursor of the following page, `counts` per
//!   status. `olderThan` is a duration (`90s`, `5m`, `1h`); `step` one of the saga's steps.
//! - `GET /api/sagas/{id}`: one instance with its timeline.
//! - `GET /api/sagas/versions`: every version of the definition known, the current first, with
//!   its steps and how many instances that have not ended run on it.
//! - `GET /api/sagas/flow`: the versions running, each with its steps (participant, command,
//!   compensation, deadline) and how many instances that have not ended stand at each step: in
//!   flight, timed out, compensating or `FAILED` (counted by step name, across versions).
//! - `GET /api/sagas/load?minutes=`: per 5 s over the last minutes (default 10, at most 15),
//!   instances started, completed, cancelled and failed per second, and the p50/p99 time from
//!   start to end of those that ended.
//! - Actions (cancel, retry) need the admin token ([`ActionToken`]): `403` when this process
//!   has none, `401` without it; checked before anything else, so a refusal writes nothing.
//! - `POST /api/sagas/{id}/cancel` with `{"requestedBy": "…", "reason": "…"}`: publishes a
//!   [`SagaCancelRequested`] to the saga's reply topic for the orchestrator that owns it, which
//!   compensates the saga; `202 Accepted`. A saga that has ended, is compensating already or
//!   has `FAILED` is a `409` saying so, and nothing is written.
//! - `POST /api/sagas/{id}/retry`, the same body: publishes a [`SagaRetryRequested`]; a `FAILED`
//!   saga sends the compensation that gave up again and goes on compensating, a running or
//!   compensating one sends the command it waits for again at once. An ended saga is a `409`.
//!
//! Bad input is a `400 application/problem+json` naming the parameter; an unknown id a 404.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sagashop_contracts::Envelope;
use sagashop_contracts::commands::{SagaCancelRequested, SagaRetryRequested};
use sagashop_kit::http::{ActionToken, problem};
use sagashop_kit::{Outgoing, Publisher};

use crate::view::{Cursor, Filter, SagaStatus, SagaView};

/// What the routes use.
#[derive(Clone)]
struct Api {
    view: Arc<SagaView>,
    publisher: Publisher,
    reply_topic: String,
    token: ActionToken,
}

/// The routes, over `view`; requests to act on a saga, from holders of `token`, are published
/// with `publisher` to the saga's `reply_topic`.
pub fn routes(
    view: Arc<SagaView>,
    publisher: Publisher,
    reply_topic: String,
    token: ActionToken,
) -> axum::Router {
    axum::Router::new()
        .route("/api/sagas", get(list))
        .route("/api/sagas/versions", get(versions))
        .route("/api/sagas/flow", get(flow))
        .route("/api/sagas/load", get(load))
        .route("/api/sagas/{id}", get(show))
        .route("/api/sagas/{id}/cancel", post(cancel))
        .route("/api/sagas/{id}/retry", post(retry))
        .with_state(Api {
            view,
            publisher,
            reply_topic,
            token,
        })
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
                        "status must be RUNNING, COMPENSATING, COMPLETED, CANCELLED or FAILED",
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
    State(Api { view, .. }): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match filter(&view, &query) {
        Ok(filter) => Json(view.list(&filter, chrono::Utc::now())).into_response(),
        Err(refused) => refused.answer(),
    }
}

async fn versions(State(Api { view, .. }): State<Api>) -> Response {
    let in_flight = view.versions_in_flight();
    Json(serde_json::json!({ "versions": view.versions().summary(&in_flight) })).into_response()
}

async fn flow(State(Api { view, .. }): State<Api>) -> Response {
    let in_flight = view.versions_in_flight();
    let counts = view.flow();
    let versions = view.versions();
    let drawn: Vec<serde_json::Value> = versions
        .summary(&in_flight)
        .into_iter()
        .filter_map(|summary| {
            let definition = versions.of(&summary.version)?;
            let steps: Vec<serde_json::Value> = definition
                .steps
                .iter()
                .map(|step| {
                    let at = counts.get(&step.name);
                    let count =
                        |w: crate::view::Where| at.and_then(|a| a.get(&w)).copied().unwrap_or(0);
                    serde_json::json!({
                        "name": step.name,
                        "participant": step.participant,
                        "command": step.command,
                        "compensation": step.compensation,
                        "timeout": humantime::format_duration(step.timeout).to_string(),
                        "inFlight": count(crate::view::Where::InFlight),
                        "timedOut": count(crate::view::Where::TimedOut),
                        "compensating": count(crate::view::Where::Compensating),
                        "failed": count(crate::view::Where::Failed),
                    })
                })
                .collect();
            Some(serde_json::json!({
                "version": summary.version,
                "current": summary.current,
                "instances": summary.instances,
                "steps": steps,
            }))
        })
        .collect();
    let name = versions.current().name.clone();
    Json(serde_json::json!({ "saga": name, "versions": drawn })).into_response()
}

async fn load(
    State(Api { view, .. }): State<Api>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut minutes = 10;
    for (name, value) in &query {
        match name.as_str() {
            "minutes" => match value.parse::<i64>().ok().filter(|m| (1..=15).contains(m)) {
                Some(m) => minutes = m,
                None => {
                    return Refused::new("minutes", "minutes must be a number from 1 to 15")
                        .answer();
                }
            },
            other => {
                return Refused::new("query", format!("`{other}` is not a parameter: minutes"))
                    .answer();
            }
        }
    }
    Json(serde_json::json!({
        "bucketSeconds": crate::load::BUCKET_SECONDS,
        "samples": view.load(minutes),
    }))
    .into_response()
}

fn unknown(id: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "Unknown saga",
        &format!("no saga {id} is kept (never started, or ended longer ago than the retention)"),
        None,
    )
}

async fn show(State(Api { view, .. }): State<Api>, Path(id): Path<String>) -> Response {
    match view.get(&id) {
        Some(instance) => Json(instance).into_response(),
        None => unknown(&id),
    }
}

/// The body of a cancel or retry request.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActBody {
    requested_by: Option<String>,
    reason: Option<String>,
}

type Body = Result<Json<ActBody>, axum::extract::rejection::JsonRejection>;

/// What someone may ask of a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Cancel,
    Retry,
}

async fn cancel(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    act(&api, id, &headers, body, Verb::Cancel).await
}

async fn retry(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    act(&api, id, &headers, body, Verb::Retry).await
}

/// Why `verb` makes no sense for a saga in `status`, if it does not.
fn refusal(verb: Verb, status: SagaStatus) -> Option<String> {
    match (verb, status) {
        (Verb::Cancel, SagaStatus::Running)
        | (Verb::Retry, SagaStatus::Running | SagaStatus::Compensating | SagaStatus::Failed) => {
            None
        }
        (Verb::Cancel, SagaStatus::Compensating) => Some("it is compensating already".to_owned()),
        (Verb::Cancel, SagaStatus::Failed) => {
            Some("it FAILED while compensating: retry it instead".to_owned())
        }
        (_, ended) => Some(format!("it has ended: {}", ended.name())),
    }
}

/// Who asked for an action by hand, and why.
struct Asked {
    requested_by: String,
    reason: String,
}

/// The request record of `verb` on saga `id`, and its message id.
fn request(
    topic: &str,
    id: &str,
    saga_name: String,
    verb: Verb,
    asked: Asked,
) -> Result<(Outgoing, uuid::Uuid), sagashop_contracts::EncodeError> {
    let Asked {
        requested_by,
        reason,
    } = asked;
    let saga_id = id.to_owned();
    match verb {
        Verb::Cancel => record(
            topic,
            id,
            SagaCancelRequested {
                saga_id,
                saga_name,
                requested_by,
                reason,
            },
        ),
        Verb::Retry => record(
            topic,
            id,
            SagaRetryRequested {
                saga_id,
                saga_name,
                requested_by,
                reason,
            },
        ),
    }
}

/// A request as its record on `topic`, keyed (and correlated) by the saga id it names, with
/// its message id.
fn record<T: sagashop_contracts::Contract>(
    topic: &str,
    id: &str,
    request: T,
) -> Result<(Outgoing, uuid::Uuid), sagashop_contracts::EncodeError> {
    let envelope = Envelope::new(id.to_owned(), id.to_owned(), request);
    Outgoing::event(topic, &envelope).map(|out| (out, envelope.metadata.message_id))
}

/// Who asks and why, from the request body: each 1 to 500 characters of text.
fn who_and_why(body: Body) -> Result<Asked, Box<Response>> {
    let Json(body) = match body {
        Ok(body) => body,
        Err(e) => {
            return Err(Box::new(problem(
                StatusCode::BAD_REQUEST,
                "Invalid body",
                &format!(
                    "a JSON object with requestedBy and reason: {}",
                    e.body_text()
                ),
                Some("body"),
            )));
        }
    };
    let text = |value: Option<String>, field: &'static str| {
        value
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty() && v.len() <= 500)
            .ok_or_else(|| {
                Refused::new(
                    field,
                    format!("{field} must be text of 1 to 500 characters: who asks, and why"),
                )
            })
    };
    match (
        text(body.requested_by, "requestedBy"),
        text(body.reason, "reason"),
    ) {
        (Ok(requested_by), Ok(reason)) => Ok(Asked {
            requested_by,
            reason,
        }),
        (Err(refused), _) | (_, Err(refused)) => Err(Box::new(refused.answer())),
    }
}

/// Checks the token, then the body, then whether `verb` makes sense now; only then publishes.
async fn act(api: &Api, id: String, headers: &HeaderMap, body: Body, verb: Verb) -> Response {
    if let Err(refused) = api.token.check(headers) {
        return refused;
    }
    let asked = match who_and_why(body) {
        Ok(asked) => asked,
        Err(refused) => return *refused,
    };
    let Some(instance) = api.view.get(&id) else {
        return unknown(&id);
    };
    let (name, done) = match verb {
        Verb::Cancel => (
            "cancel",
            "the orchestrator compensates the saga; its status and timeline say when it is done",
        ),
        Verb::Retry => (
            "retry",
            "the orchestrator sends the awaited command (or the compensation that gave up) again; the timeline says when",
        ),
    };
    if let Some(why) = refusal(verb, instance.status) {
        return problem(
            StatusCode::CONFLICT,
            "Not possible now",
            &format!(
                "saga {id} cannot be {name}: {why}",
                name = match verb {
                    Verb::Cancel => "cancelled",
                    Verb::Retry => "retried",
                }
            ),
            None,
        );
    }
    let out = request(&api.reply_topic, &id, instance.saga.clone(), verb, asked);
    let sent = match out {
        Ok((out, message_id)) => api
            .publisher
            .send_all(&[out])
            .await
            .map(|_| message_id)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match sent {
        Ok(message_id) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "sagaId": id,
                "requestId": message_id,
                "detail": done,
            })),
        )
            .into_response(),
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Kafka unavailable",
            &format!("the {name} request could not be published: {e}"),
            None,
        ),
    }
}
