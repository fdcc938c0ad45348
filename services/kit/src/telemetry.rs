//! Logging and tracing shared by every binary.
//!
//! Logs are JSON lines for machines or compact text for people, filtered by `RUST_LOG`. Every
//! `tracing` span is also an OpenTelemetry span: the W3C trace context travels in the Kafka
//! headers `traceparent`/`tracestate`, so one order is one trace across the HTTP edge and every
//! Kafka hop. Spans are exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and
//! kept nowhere when it is not (ids are still made, so log lines carry a `trace_id`).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal (Kubernetes, CI), text when it is.
    #[default]
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Keeps the tracer provider alive; dropping it flushes spans still waiting for export.
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard").finish_non_exhaustive()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Nothing useful is left to do with a failed flush at exit.
        let _ = self.provider.shutdown();
    }
}

/// Installs the global `tracing` subscriber (logs + OpenTelemetry) and the W3C propagator.
/// `service` names the process in exported spans.
///
/// Fails when a subscriber is already installed or the OTLP exporter cannot be built.
pub fn init(format: LogFormat, service: &str) -> Result<TelemetryGuard, crate::error::Error> {
    use std::io::IsTerminal;
    let mut builder = SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_owned())
            .build(),
    );
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some_and(|v| !v.is_empty()) {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| crate::error::Error::InvalidConfig {
                setting: "OTEL_EXPORTER_OTLP_ENDPOINT",
                reason: e.to_string(),
            })?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("sagashop"));

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let result = if json {
        registry
            .with(fmt.json().flatten_event(true).with_current_span(true))
            .try_init()
    } else {
        registry.with(fmt.compact()).try_init()
    };
    result.map_err(|e| crate::error::Error::Internal(format!("logging is already set up: {e}")))?;
    Ok(TelemetryGuard { provider })
}

struct HeaderReader<'a>(&'a [(String, Option<Vec<u8>>)]);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct HeaderWriter<'a>(&'a mut Vec<(String, Vec<u8>)>);

impl Injector for HeaderWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_owned(), value.into_bytes()));
    }
}

/// Makes `span` a child of the trace context in a consumed record's headers (if any), and
/// records its trace id in the span's `trace_id` field for the logs.
pub fn continue_trace(span: &tracing::Span, headers: &[(String, Option<Vec<u8>>)]) {
    let parent = TraceContextPropagator::new().extract(&HeaderReader(headers));
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled (filtered out): then there is nothing to link.
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// Writes the current span's trace context into outgoing headers, replacing what was there,
/// so the receiver's span becomes a child of ours. Leaves the headers alone when there is no
/// live span (telemetry not installed, or filtered out).
pub fn inject_current(headers: &mut Vec<(String, Vec<u8>)>) {
    let context = tracing::Span::current().context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeaderWriter(headers));
    }
}
