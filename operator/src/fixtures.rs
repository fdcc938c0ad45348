//! Test fixtures: a mocked API server (tower-test) that answers every request and records it,
//! so unit tests can check which calls a reconciliation makes — and which it does not.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use sagashop_kit::{KafkaConfig, Monitor};
use serde_json::{Value, json};

use crate::admin::TopicAdmin;
use crate::context::{Scope, Shared};
use crate::metrics::Metrics;

/// One request the mocked API server received.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) body: String,
}

/// What the mocked API server saw, in order.
#[derive(Clone, Default)]
pub(crate) struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    pub(crate) fn all(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    /// `METHOD path` of every call, events left out.
    pub(crate) fn summary(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|c| !c.path.contains("/events"))
            .map(|c| format!("{} {}", c.method, c.path))
            .collect()
    }

    /// The reasons of the events published.
    pub(crate) fn event_reasons(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|c| c.path.contains("/events"))
            .filter_map(|c| {
                let v: Value = serde_json::from_str(&c.body).ok()?;
                v["reason"].as_str().map(str::to_owned)
            })
            .collect()
    }
}

/// Starts a mocked API server that answers each request with `answer(method, path)` and
/// records it. Returns a client talking to it.
pub(crate) fn api_server(answer: impl Fn(&str, &str) -> Value + Send + 'static) -> (Client, Calls) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls = Calls::default();
    let recorded = calls.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_owned();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            recorded.0.lock().unwrap().push(Call {
                method: method.clone(),
                path: path.clone(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
            let body = serde_json::to_vec(&answer(&method, &path)).unwrap();
            respond.send_response(Response::builder().body(Body::from(body)).unwrap());
        }
    });
    (Client::new(service, "default"), calls)
}

/// An event as the API server would echo it.
pub(crate) fn event_answer() -> Value {
    json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "e", "namespace": "shop"},
        "eventTime": "2026-01-01T00:00:00.000000Z"
    })
}

/// What the reconcilers share, on the mocked API server; Kafka is never reachable (a test
/// that reaches it would time out and fail).
pub(crate) fn shared(client: Client, scope: Scope) -> Arc<Shared> {
    let monitor = Monitor::new();
    let metrics = Arc::new(Metrics::new(&monitor));
    let kafka = KafkaConfig::new("127.0.0.1:1");
    let admin = TopicAdmin::start(
        kafka.admin_client("test").unwrap(),
        Arc::clone(&metrics),
        Duration::from_millis(1),
        10,
    );
    let reporter = Reporter {
        controller: "sagashop-operator".into(),
        instance: None,
    };
    Arc::new(Shared::new(
        client.clone(),
        admin,
        Recorder::new(client, reporter),
        metrics,
        scope,
        Duration::from_secs(300),
    ))
}
