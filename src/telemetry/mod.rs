//! Telemetry: the process's tracing subscriber (text or JSON logs on stderr, filtered by
//! `RUST_LOG`), OpenTelemetry traces exported over OTLP when an endpoint is configured, and the
//! `[telemetry]` settings that choose between them. Personal identity numbers cannot reach any
//! of it: the types that hold them print masked forms, and span fields never carry them.

mod export;
mod json;

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::prelude::*;

pub use export::{ExportPlan, Protocol};

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise (containers, log shippers).
    #[default]
    Auto,
    Text,
    /// One JSON object per line.
    Json,
}

/// `[telemetry]`: log format and where traces go. The standard `OTEL_*` variables win over
/// these keys (see docs/observability.md).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// OTLP collector base URL, e.g. `http://localhost:4317` (gRPC) or `http://localhost:4318`
    /// (http/protobuf; `/v1/traces` is appended). Unset: no traces are exported.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (the default, as in the OTLP specification).
    #[serde(default)]
    pub otlp_protocol: Option<Protocol>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry: {0}")]
    Invalid(String),
    #[error("telemetry: cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("telemetry: must be set up inside the Tokio runtime")]
    NoRuntime,
    #[error("telemetry: a global subscriber is already installed")]
    AlreadyInstalled,
}

/// The installed telemetry; `shutdown` flushes the spans not yet exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

/// Spans and events of these crates never become trace spans: the exporter's own client
/// activity would otherwise feed back into the exports.
const OTEL_FILTER: &str = "info,h2=off,hyper=off,hyper_util=off,tower=off,tonic=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off";

impl Telemetry {
    /// Installs the global subscriber from `settings` and the process environment. Call it
    /// inside the Tokio runtime: the exporter runs its exports there.
    pub fn init(settings: &TelemetrySettings) -> Result<Self, TelemetryError> {
        Self::init_with(settings, &|k| std::env::var(k).ok())
    }

    /// As `init`, with the environment read through `env`.
    pub fn init_with(
        settings: &TelemetrySettings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, TelemetryError> {
        let plan = ExportPlan::decide(settings, env)?;
        let rt = tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
        let exporting = plan.is_some();
        let provider = export::provider(plan, env, rt)?;
        let tracer = provider.tracer("etjanstekort-gateway");
        // W3C trace context only: baggage could carry anything, personal data included.
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        opentelemetry::global::set_tracer_provider(provider.clone());

        let json = match settings.log_format {
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => !std::io::stderr().is_terminal(),
        };
        let ansi = std::io::stderr().is_terminal() && env("NO_COLOR").is_none_or(|v| v.is_empty());
        let log_filter =
            || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let json_layer = json.then(|| {
            tracing_subscriber::fmt::layer()
                .event_format(json::JsonLines)
                .with_writer(std::io::stderr)
                .with_filter(log_filter())
        });
        let text_layer = (!json).then(|| {
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .with_filter(log_filter())
        });
        // Its own filter: `RUST_LOG=warn` must not take the RPC spans out of the traces.
        let otel_layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(EnvFilter::new(OTEL_FILTER));
        // Only spans that carry correlation ids need the bookkeeping.
        let correlation = json::Correlation.with_filter(filter_fn(|m| {
            m.is_span()
                && json::CORRELATION_FIELDS
                    .iter()
                    .any(|f| m.fields().field(f).is_some())
        }));
        tracing_subscriber::registry()
            .with(otel_layer)
            .with(correlation)
            .with(json_layer)
            .with(text_layer)
            .try_init()
            .map_err(|_| TelemetryError::AlreadyInstalled)?;
        Ok(Self {
            provider,
            exporting,
        })
    }

    /// Exports the spans still buffered and stops the exporter. Call it after the server has
    /// drained, before the runtime ends.
    pub async fn shutdown(self) {
        if !self.exporting {
            return;
        }
        let provider = self.provider;
        // Shutting down blocks on the batch thread while the exports it triggers need runtime
        // workers: never on a worker itself.
        let done = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "trace export: shutdown incomplete"),
            Err(e) => tracing::warn!(error = %e, "trace export: shutdown failed"),
        }
    }
}

/// The W3C trace id (32 lower-case hex digits) of the current span's OpenTelemetry context; a
/// fresh random one when there is none (e.g. no OpenTelemetry layer installed).
pub fn current_trace_id() -> String {
    crate::trace_context::trace_id_of(&tracing::Span::current())
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}
