//! The web console at `/console`: the sagas (a live list with filters, one saga's timeline,
//! retry and cancel), the flow of the definition with live counts per step, the dead letters
//! (list, show, replay), the topics with each consumer group's lag, and the load of the last
//! minutes.
//!
//! It is a page and its script, embedded in the binary and served by whichever process runs
//! the orchestrator (so `sagashop dev` at `http://127.0.0.1:8080/console`); the page reads the
//! orchestrator's `/api/sagas…` and the routes below, and nothing else: its
//! `Content-Security-Policy` allows requests to its own origin only. It polls (every 2 s on the
//! live pages), so at any rate of orders the page does one request per view per poll.
//!
//! - `GET /api/console`: what the page needs to know first (the saga's name, whether actions
//!   are possible here).
//! - `GET /api/dead-letters`: every dead-letter topic of the topology and its letters, newest
//!   first (at most [`LETTERS_SHOWN`] each).
//! - `POST /api/dead-letters/replay` with `{"topic", "partition", "offset"}`: publishes that
//!   letter's original record back to the topic it came from (admin token needed).
//! - `GET /api/topics`: every topic the system needs, as declared and as it is in Kafka, and
//!   each service's consumer group with its lag per input topic.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::join_all;
use sagashop_kit::dlq::{DeadLetter, header as dlq_header, read_dead_letters};
use sagashop_kit::http::{ActionToken, problem};
use sagashop_kit::{Context, KafkaConfig, Publisher, Wiring};
use sagashop_topology::Topology;
use serde::Deserialize;
use serde_json::{Value, json};

/// The most dead letters a topic shows (the newest).
pub const LETTERS_SHOWN: usize = 200;

/// How long reading Kafka for one request may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/console.js");
const STYLE: &str = include_str!("../assets/console.css");

/// What the page may load and ask: its own origin only, no inline script.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Console {
    kafka: KafkaConfig,
    saga: String,
    wirings: Vec<Wiring>,
    topology: Topology,
    publisher: Publisher,
    token: ActionToken,
}

/// The console's routes for the system of `topology`; actions need `token`.
pub fn routes(
    context: &Context,
    topology: Topology,
    token: ActionToken,
) -> Result<axum::Router, sagashop_kit::Error> {
    let wirings = topology.wirings().into_values().collect::<Vec<Wiring>>();
    let console = Arc::new(Console {
        kafka: context.kafka.clone(),
        saga: topology.definition().name.clone(),
        wirings,
        publisher: Publisher::new(&context.kafka, "console-replay")?,
        topology,
        token,
    });
    Ok(axum::Router::new()
        .route("/console", get(|| asset(INDEX, "text/html; charset=utf-8")))
        .route(
            "/console/",
            get(|| asset(INDEX, "text/html; charset=utf-8")),
        )
        .route(
            "/console/console.js",
            get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            "/console/console.css",
            get(|| asset(STYLE, "text/css; charset=utf-8")),
        )
        .route("/api/console", get(about))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/dead-letters/replay", post(replay))
        .route("/api/topics", get(topics))
        .with_state(console))
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn about(State(console): State<Arc<Console>>) -> Response {
    Json(json!({
        "saga": console.saga,
        "actions": console.token.is_set(),
        "deadLetterTopics": dead_letter_topics(&console.wirings)
            .into_keys()
            .collect::<Vec<_>>(),
    }))
    .into_response()
}

/// Every dead-letter topic, with the services that write to it.
fn dead_letter_topics(wirings: &[Wiring]) -> BTreeMap<String, Vec<String>> {
    let mut topics: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for w in wirings {
        topics
            .entry(w.dead_letter_topic.clone())
            .or_default()
            .push(w.service.clone());
    }
    topics
}

fn unavailable(what: &str, e: &sagashop_kit::Error) -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Kafka unavailable",
        &format!("could not {what}: {e}"),
        None,
    )
}

/// One dead letter as the page shows it.
fn letter(l: &DeadLetter) -> Value {
    let text = |bytes: Option<&[u8]>| bytes.map(|b| String::from_utf8_lossy(b).into_owned());
    let record = &l.record;
    json!({
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": text(record.key.as_deref()),
        "eventType": l.header("event-type"),
        "attempts": l.header(dlq_header::ATTEMPTS),
        "failedAt": l.header(dlq_header::FAILED_AT),
        "error": l.header(dlq_header::ERROR),
        "from": {
            "topic": l.header(dlq_header::ORIGINAL_TOPIC),
            "partition": l.header(dlq_header::ORIGINAL_PARTITION),
            "offset": l.header(dlq_header::ORIGINAL_OFFSET),
        },
        "headers": record
            .headers
            .iter()
            .map(|(k, v)| json!([k, text(v.as_deref())]))
            .collect::<Vec<_>>(),
        "payload": text(record.payload.as_deref()),
        "payloadBytes": record.payload.as_ref().map_or(0, Vec::len),
    })
}

async fn dead_letters(State(console): State<Arc<Console>>) -> Response {
    let topics = dead_letter_topics(&console.wirings);
    let reads = topics
        .keys()
        .map(|topic| read_dead_letters(&console.kafka, topic, READ_TIMEOUT));
    let mut answer = Vec::new();
    for ((topic, services), read) in topics.iter().zip(join_all(reads).await) {
        let letters = match read {
            Ok(letters) => letters,
            Err(e) => return unavailable(&format!("read {topic}"), &e),
        };
        let newest: Vec<Value> = letters
            .iter()
            .rev()
            .take(LETTERS_SHOWN)
            .map(letter)
            .collect();
        answer.push(json!({
            "topic": topic,
            "services": services,
            "count": letters.len(),
            "letters": newest,
        }));
    }
    Json(json!({ "topics": answer })).into_response()
}

/// The body of a replay request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    topic: String,
    partition: i32,
    offset: i64,
}

async fn replay(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Result<Json<ReplayBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(refused) = console.token.check(&headers) {
        return refused;
    }
    let body = match body {
        Ok(Json(body)) => body,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid body",
                &format!(
                    "a JSON object with topic, partition and offset: {}",
                    e.body_text()
                ),
                Some("body"),
            );
        }
    };
    let topics = dead_letter_topics(&console.wirings);
    if !topics.contains_key(&body.topic) {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid topic",
            &format!(
                "`{}` is not a dead-letter topic of this system ({})",
                body.topic,
                topics.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            Some("topic"),
        );
    }
    let letters = match read_dead_letters(&console.kafka, &body.topic, READ_TIMEOUT).await {
        Ok(letters) => letters,
        Err(e) => return unavailable(&format!("read {}", body.topic), &e),
    };
    let Some(chosen) = letters
        .iter()
        .find(|l| l.record.partition == body.partition && l.record.offset == body.offset)
    else {
        return problem(
            StatusCode::NOT_FOUND,
            "Unknown dead letter",
            &format!(
                "`{}` has no dead letter at partition {}, offset {}",
                body.topic, body.partition, body.offset
            ),
            None,
        );
    };
    let out = match chosen.replay(None) {
        Ok(out) => out,
        Err(e) => {
            return problem(StatusCode::CONFLICT, "Cannot replay", &e.to_string(), None);
        }
    };
    match console.publisher.send_all(std::slice::from_ref(&out)).await {
        Ok(delivered) => {
            let at = delivered.first();
            tracing::info!(
                dead_letter_topic = %body.topic, partition = body.partition, offset = body.offset,
                to = %out.topic, "dead letter replayed from the console"
            );
            Json(json!({
                "replayedTo": out.topic,
                "partition": at.map(|d| d.partition),
                "offset": at.map(|d| d.offset),
            }))
            .into_response()
        }
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Kafka unavailable",
            &format!("the replay could not be published: {e}"),
            None,
        ),
    }
}

async fn topics(State(console): State<Arc<Console>>) -> Response {
    let declared = console.topology.topics();
    let names: Vec<String> = declared.iter().map(|(t, _)| t.name.clone()).collect();
    let admin = match console.kafka.admin_client("console") {
        Ok(admin) => Arc::new(admin),
        Err(e) => return unavailable("create an admin client", &e),
    };
    let actual = match sagashop_kit::admin::describe_topics(&admin, &names, READ_TIMEOUT).await {
        Ok(actual) => actual,
        Err(e) => return unavailable("describe the topics", &e),
    };
    let topics: Vec<Value> = declared
        .iter()
        .map(|(spec, by)| {
            let state = actual.get(&spec.name);
            json!({
                "name": spec.name,
                "declaredBy": by.as_str(),
                "partitions": spec.partitions,
                "replicas": spec.replicas,
                "config": spec.config,
                "exists": state.is_some(),
                "actualPartitions": state.map(|s| s.partitions),
                "actualReplicas": state.map(|s| s.replicas),
            })
        })
        .collect();
    let mut groups = Vec::new();
    let mut seen = BTreeSet::new();
    for wiring in &console.wirings {
        if !seen.insert(wiring.group_id.clone()) {
            continue;
        }
        let inputs: Vec<(String, i32)> = wiring
            .input_topics()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| actual.get(t).map(|s| (t.to_owned(), s.partitions)))
            .collect();
        let lag = match sagashop_kit::admin::group_lag(
            &console.kafka,
            &wiring.group_id,
            &inputs,
            READ_TIMEOUT,
        )
        .await
        {
            Ok(lag) => lag,
            Err(e) => return unavailable(&format!("read the lag of {}", wiring.group_id), &e),
        };
        groups.push(json!({
            "group": wiring.group_id,
            "service": wiring.service,
            "lag": lag.iter().map(|l| l.lag).sum::<i64>(),
            "topics": lag,
        }));
    }
    Json(json!({ "topics": topics, "groups": groups })).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a panic is the failure report"
    )]

    use super::*;

    #[test]
    fn every_dead_letter_topic_is_listed_once_with_its_services() {
        let topology = Topology::load(None, "t.").unwrap();
        let wirings: Vec<Wiring> = topology.wirings().into_values().collect();
        let topics = dead_letter_topics(&wirings);
        let services: usize = topics.values().map(Vec::len).sum();
        assert_eq!(services, wirings.len(), "every service writes somewhere");
        assert!(topics.keys().all(|t| t.starts_with("t.")), "{topics:?}");
    }

    #[test]
    fn the_page_loads_nothing_but_its_own_files() {
        for needle in ["http://", "https://", "//cdn", "<script>", " onclick="] {
            assert!(!INDEX.contains(needle), "index.html has {needle}");
        }
        // The one absolute URL the script may hold is the SVG namespace, which is a name.
        let script = SCRIPT.replace("'http://www.w3.org/2000/svg'", "");
        for needle in ["http://", "https://", "eval(", "new Function", "innerHTML"] {
            assert!(!script.contains(needle), "console.js has {needle}");
        }
        assert!(INDEX.contains("src=\"/console/console.js\""));
        assert!(POLICY.contains("connect-src 'self'"));
    }
}
