//! `/healthz`, `/readyz` and `/metrics`: the small axum router every service mounts.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::monitor::Monitor;

/// The operational endpoints:
/// - `GET /healthz`: 200 while the process runs (liveness);
/// - `GET /readyz`: 200 once every declared component is ready, else 503 naming the rest;
/// - `GET /metrics`: Prometheus/OpenMetrics text.
pub fn ops_router(monitor: Monitor) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(monitor)
}

async fn readyz(State(monitor): State<Monitor>) -> impl IntoResponse {
    let waiting = monitor.not_ready();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(", ")),
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
        let router = ops_router(monitor);
        assert_eq!(
            get(&router, "/healthz").await,
            (StatusCode::OK, "ok\n".into())
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
    }
}
