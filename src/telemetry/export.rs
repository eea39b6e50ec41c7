//! Whether and where spans are exported (OTLP over gRPC or http/protobuf), and the tracer
//! provider that does it.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use serde::Deserialize;

use super::{TelemetryError, TelemetrySettings};

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" => Some(Self::HttpProtobuf),
            _ => None,
        }
    }
}

/// What to export to, decided from the standard variables and `[telemetry]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportPlan {
    pub protocol: Protocol,
    /// The configured endpoint, complete (`/v1/traces` added for HTTP); `None` when an
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` variable is set, which the exporter then reads itself.
    pub endpoint: Option<String>,
}

impl ExportPlan {
    /// `None`: export nothing. Without any endpoint no exporter is built at all; one would fall
    /// back to localhost and report a failed export every few seconds.
    pub fn decide(
        settings: &TelemetrySettings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TelemetryError> {
        let var = |k: &str| {
            env(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // The SDK reads neither of these itself.
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match var("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(TelemetryError::Invalid(format!(
                    "OTEL_TRACES_EXPORTER={other} is not supported: use otlp or none"
                )));
            }
        }
        let from_env = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let configured = settings
            .otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty());
        if !from_env && configured.is_none() {
            return Ok(None);
        }
        let protocol = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(p) => Protocol::parse(&p).ok_or_else(|| {
                TelemetryError::Invalid(format!(
                    "OTLP protocol {p:?} is not supported: use grpc or http/protobuf"
                ))
            })?,
            None => settings.otlp_protocol.unwrap_or(Protocol::HttpProtobuf),
        };
        // A programmatic endpoint beats the variables, so it is only given when they are unset;
        // and it is used verbatim, so the HTTP path is added here.
        let endpoint = configured.filter(|_| !from_env).map(|e| match protocol {
            Protocol::Grpc => e.to_owned(),
            Protocol::HttpProtobuf => format!("{}/v1/traces", e.trim_end_matches('/')),
        });
        Ok(Some(Self { protocol, endpoint }))
    }
}

/// The tracer provider: batch-exporting when there is a plan; otherwise sampling nothing, yet
/// still giving spans valid ids (the caller's trace id reaches logs and cases either way).
pub(super) fn provider(
    plan: Option<ExportPlan>,
    env: &dyn Fn(&str) -> Option<String>,
    rt: tokio::runtime::Handle,
) -> Result<SdkTracerProvider, TelemetryError> {
    let Some(plan) = plan else {
        return Ok(SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOff)
            .build());
    };
    let exporter = match plan.protocol {
        Protocol::Grpc => {
            let b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            match plan.endpoint {
                Some(e) => b.with_endpoint(e),
                None => b,
            }
            .build()?
        }
        Protocol::HttpProtobuf => {
            let b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            match plan.endpoint {
                Some(e) => b.with_endpoint(e),
                None => b,
            }
            .build()?
        }
    };
    let mut resource = Resource::builder_empty()
        .with_service_name("etjanstekort-gateway")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        // OTEL_RESOURCE_ATTRIBUTES
        .with_detector(Box::new(
            opentelemetry_sdk::resource::EnvResourceDetector::new(),
        ));
    if let Some(name) = env("OTEL_SERVICE_NAME").filter(|n| !n.trim().is_empty()) {
        resource = resource.with_service_name(name);
    }
    // The batch processor (OTEL_BSP_*) exports on its own thread, which has no Tokio reactor;
    // the exporters' clients need one, so each export runs on the application's runtime.
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(OnRuntime {
            inner: Arc::new(exporter),
            rt,
        })
        .with_resource(resource.build())
        .build())
}

/// Runs a span exporter's exports on a Tokio runtime, whoever calls it.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<E>,
    rt: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = Arc::clone(&self.inner);
        match self
            .rt
            .spawn(async move { inner.export(batch).await })
            .await
        {
            Ok(done) => done,
            Err(e) => Err(OTelSdkError::InternalFailure(e.to_string())),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once while the provider is built, when the Arc is still the only one.
        if let Some(e) = Arc::get_mut(&mut self.inner) {
            e.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::telemetry::TelemetrySettings;

    fn decide(
        settings: &TelemetrySettings,
        vars: &[(&str, &str)],
    ) -> Result<Option<ExportPlan>, TelemetryError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ExportPlan::decide(settings, &|k| vars.get(k).cloned())
    }

    fn configured(endpoint: &str, protocol: Option<Protocol>) -> TelemetrySettings {
        TelemetrySettings {
            otlp_endpoint: Some(endpoint.into()),
            otlp_protocol: protocol,
            ..TelemetrySettings::default()
        }
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        let none = TelemetrySettings::default();
        assert_eq!(decide(&none, &[]).unwrap(), None);
        assert_eq!(
            decide(&none, &[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap(),
            None,
            "an empty variable is unset"
        );
        assert_eq!(
            decide(&configured("", None), &[]).unwrap(),
            None,
            "an empty key is unset"
        );
    }

    #[test]
    fn the_variables_win_over_the_configuration() {
        let cfg = configured("http://collector:4318/", Some(Protocol::Grpc));
        let plan = decide(
            &cfg,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(plan.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            plan.endpoint, None,
            "the exporter reads the variable itself"
        );
        let plan = decide(
            &cfg,
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://jaeger:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            plan.protocol,
            Protocol::Grpc,
            "the per-signal variable first"
        );
    }

    #[test]
    fn the_configured_endpoint_is_completed_for_http() {
        let plan = decide(&configured("http://collector:4318/", None), &[])
            .unwrap()
            .unwrap();
        assert_eq!(plan.protocol, Protocol::HttpProtobuf, "the OTLP default");
        assert_eq!(
            plan.endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        let plan = decide(
            &configured("http://collector:4317", Some(Protocol::Grpc)),
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(plan.endpoint.as_deref(), Some("http://collector:4317"));
    }

    #[test]
    fn export_can_be_switched_off_and_unknown_values_are_refused() {
        let cfg = configured("http://collector:4317", Some(Protocol::Grpc));
        assert_eq!(
            decide(&cfg, &[("OTEL_SDK_DISABLED", "TRUE")]).unwrap(),
            None
        );
        assert_eq!(
            decide(&cfg, &[("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            None
        );
        assert!(
            decide(&cfg, &[("OTEL_SDK_DISABLED", "false")])
                .unwrap()
                .is_some()
        );
        let e = decide(&cfg, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).unwrap_err();
        assert!(e.to_string().contains("http/json"), "{e}");
        let e = decide(&cfg, &[("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(e.to_string().contains("zipkin"), "{e}");
    }
}
