//! `/healthz`, `/readyz` and `/metrics`: the small axum router every service mounts; and
//! [`serve`], the HTTP server every service runs, with the limits a public edge needs.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::monitor::{Monitor, ResponseLabels, RouteLabels};

/// The operational endpoints:
/// - `GET /healthz`: 200 while every consume loop is alive and making progress (liveness),
///   else 503 naming the loops that stopped or stalled (see [`Monitor::heartbeat`]);
/// - `GET /readyz`: 200 once every declared component is ready, else 503 naming the rest;
/// - `GET /metrics`: Prometheus/OpenMetrics text;
/// - `GET /metrics/catalogue`: every metric the process registered, with its type and help,
///   including labelled families that have no samples yet (and so are not in `/metrics`).
pub fn ops_router(monitor: Monitor) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/metrics/catalogue", get(catalogue))
        .with_state(monitor)
}

/// `app` with its requests counted and timed (the RED metrics of an HTTP server):
/// `sagashop_http_requests_total{method,route,status}` and
/// `sagashop_http_request_duration_seconds{method,route}`, from the request arriving to the
/// response's headers. Call it on the whole application, after every route is added.
pub fn observed(app: Router, monitor: &Monitor) -> Router {
    app.layer(axum::middleware::from_fn_with_state(
        monitor.clone(),
        observe,
    ))
}

async fn observe(
    State(monitor): State<Monitor>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = tokio::time::Instant::now();
    let response = next.run(request).await;
    let http = &monitor.runtime.http;
    http.duration
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(crate::monitor::seconds(started.elapsed()));
    http.requests
        .get_or_create(&ResponseLabels {
            method,
            route,
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

/// An `application/problem+json` answer (RFC 9457); `field` names the input at fault.
pub fn problem(
    status: StatusCode,
    title: &str,
    detail: &str,
    field: Option<&str>,
) -> axum::response::Response {
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(field) = field {
        body["field"] = field.into();
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// What one HTTP server allows.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A client that has not sent a request's headers within this is disconnected (so a slow
    /// client cannot hold a connection open forever).
    pub header_timeout: Duration,
    /// Connections served at once; the next waits in the listen backlog.
    pub max_connections: usize,
    /// How long graceful shutdown waits for requests in progress.
    pub drain_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_connections: 4096,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` (HTTP/1.1) until `shutdown`, then lets requests in
/// progress finish for up to `limits.drain_timeout`. Unlike `axum::serve` it enforces a header
/// read timeout and a connection limit.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use tower::ServiceExt;

    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone().map_request(
            |r: axum::http::Request<hyper::body::Incoming>| r.map(axum::body::Body::new),
        ));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in progress after {:?}; closing",
            limits.drain_timeout
        );
    }
}

async fn healthz(State(monitor): State<Monitor>) -> impl IntoResponse {
    verdict(&monitor.not_live(), "ok", "not live")
}

async fn readyz(State(monitor): State<Monitor>) -> impl IntoResponse {
    verdict(&monitor.not_ready(), "ready", "not ready")
}

/// `200 <good>` when nothing is wrong, else `503 <bad>: <every problem>`.
fn verdict(problems: &[String], good: &str, bad: &str) -> (StatusCode, String) {
    if problems.is_empty() {
        (StatusCode::OK, format!("{good}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{bad}: {}\n", problems.join(", ")),
        )
    }
}

async fn metrics(State(monitor): State<Monitor>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        monitor.encode(),
    )
}

async fn catalogue(State(monitor): State<Monitor>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        monitor.catalogue(),
    )
}

/// Who may act on the system over HTTP (retry or cancel a saga, replay a dead letter): whoever
/// sends `Authorization: Bearer <token>` with this token. Without one the API is read-only:
/// every action is refused, so a deployment that forgot its Secret cannot be acted on by
/// anyone who reaches it.
#[derive(Clone, Default)]
pub struct ActionToken(Option<Arc<str>>);

impl std::fmt::Debug for ActionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself: settings are logged.
        let set = if self.0.is_some() { "set" } else { "none" };
        f.debug_tuple("ActionToken").field(&set).finish()
    }
}

impl ActionToken {
    /// The token actions need; `None` or blank: read-only.
    pub fn new(token: Option<&str>) -> Self {
        Self(
            token
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Arc::from),
        )
    }

    /// Whether actions are possible at all.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// `Ok` when `headers` carry the token; else the answer to send, and nothing may be done:
    /// `403` when this process takes no actions, `401` when the token is missing or wrong.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, headers: &axum::http::HeaderMap) -> Result<(), axum::response::Response> {
        let Some(token) = &self.0 else {
            return Err(problem(
                StatusCode::FORBIDDEN,
                "Read-only",
                "this sagashop takes no actions: start it with SAGASHOP_ADMIN_TOKEN set (the \
                 chart takes it from a Secret) to allow retry, cancel and replay",
                None,
            ));
        };
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let detail = match sent {
            None => "send the admin token as `Authorization: Bearer <token>`",
            Some(sent) if same(sent.as_bytes(), token.as_bytes()) => return Ok(()),
            Some(_) => "the token sent is not this sagashop's admin token",
        };
        let mut refused = problem(
            StatusCode::UNAUTHORIZED,
            "Admin token required",
            detail,
            None,
        );
        refused.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        Err(refused)
    }
}

/// Compares in time that depends on the lengths only, not on where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_turns_ready_when_the_last_component_does() {
        let monitor = Monitor::new();
        let consumer = monitor.component("consumer:orders");
        let labels = crate::monitor::HandlerLabels {
            group: "orders".into(),
            topic: "orders.v1".into(),
        };
        monitor.runtime.handled.get_or_create(&labels).inc();
        let alive = monitor.heartbeat("consumer:orders", Duration::from_secs(60));
        let router = ops_router(monitor);
        assert_eq!(
            get(&router, "/healthz").await,
            (StatusCode::OK, "ok\n".into())
        );
        alive.stopped();
        assert_eq!(
            get(&router, "/healthz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not live: consumer:orders stopped\n".into()
            )
        );
        assert_eq!(
            get(&router, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: consumer:orders\n".into()
            )
        );
        consumer.set(true);
        assert_eq!(
            get(&router, "/readyz").await,
            (StatusCode::OK, "ready\n".into())
        );
        let (status, text) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains("# TYPE sagashop_messages_handled counter"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        let (status, catalogue) = get(&router, "/metrics/catalogue").await;
        assert_eq!(status, StatusCode::OK);
        for declared in [
            "# TYPE sagashop_messages_handled counter",
            "# TYPE sagashop_transaction_aborts counter",
            "# TYPE sagashop_http_request_duration_seconds histogram",
        ] {
            assert!(catalogue.contains(declared), "{catalogue}");
        }
        assert!(
            !text.contains("sagashop_transaction_aborts"),
            "no samples yet, so not in /metrics"
        );
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_pattern_and_status_and_timed() {
        let monitor = Monitor::new();
        let app = Router::new()
            .route(
                "/api/orders/{id}",
                axum::routing::get(|| async { StatusCode::NOT_FOUND }),
            )
            .merge(ops_router(monitor.clone()));
        let app = observed(app, &monitor);
        for path in ["/api/orders/a", "/api/orders/b", "/healthz", "/nowhere"] {
            get(&app, path).await;
        }
        let text = monitor.encode();
        for line in [
            r#"sagashop_http_requests_total{method="GET",route="/api/orders/{id}",status="404"} 2"#,
            r#"sagashop_http_requests_total{method="GET",route="/healthz",status="200"} 1"#,
            r#"sagashop_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
            r#"sagashop_http_request_duration_seconds_count{method="GET",route="/api/orders/{id}"} 2"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains("/api/orders/a"),
            "an id became a label: {text}"
        );
    }

    #[test]
    fn an_action_needs_the_token_and_a_process_without_one_takes_none() {
        let headers = |value: Option<&str>| {
            let mut h = axum::http::HeaderMap::new();
            if let Some(v) = value {
                h.insert(header::AUTHORIZATION, v.parse().unwrap());
            }
            h
        };
        let none = ActionToken::new(Some("  "));
        assert!(!none.is_set(), "a blank token is none");
        let refused = none.check(&headers(Some("Bearer x"))).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);

        let token = ActionToken::new(Some("s3cret"));
        assert!(token.check(&headers(Some("Bearer s3cret"))).is_ok());
        for sent in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
        ] {
            let refused = token.check(&headers(sent)).unwrap_err();
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{sent:?}");
            assert_eq!(refused.headers()[header::WWW_AUTHENTICATE], "Bearer");
        }
        assert!(!format!("{token:?}").contains("s3cret"), "never logged");
    }
}
