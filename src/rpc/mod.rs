//! Tower layers every gRPC call passes through, applied once in `startup`: `RpcLayer` (the
//! RPC's root span continuing the caller's W3C trace, the request timeout, the final status,
//! one "request finished" line — INFO, DEBUG for `RESOURCE_EXHAUSTED` — and the outcome hook
//! for metrics), `auth::AuthLayer`
//! (certificate → principal in the request extensions), `size::RequestSizeLayer` (the request
//! size limit's answer) and `limit::RateLimitLayer` (per-principal rate). Handlers only
//! convert, call, convert.

pub mod auth;
pub mod limit;
pub(crate) mod names;
mod size;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::Code;
use tonic::body::Body;
use tracing::Instrument as _;
use tracing::field::{Empty, display};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::api::error::Reason;

pub use auth::AuthLayer;
pub use limit::{LimitSettings, RateLimitLayer, RateLimiter};
pub use names::RpcName;
pub use size::RequestSizeLayer;

/// How one RPC ended, handed to the outcome hook. Names are bounded: unknown paths are
/// `_other`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcOutcome {
    pub service: &'static str,
    pub method: &'static str,
    pub code: Code,
    /// From the request's arrival to its last response frame (streams: the end of the stream).
    pub elapsed: Duration,
}

/// The caller's span as the parent, rebuilt from its ids and flags alone. The caller chooses
/// them, and they end up in traces, logs and the audit trail: a trace or span id that hides an
/// identity number is not continued (a new trace starts), and the free-text `tracestate` is
/// dropped.
fn clean_parent(sc: &SpanContext) -> Option<opentelemetry::Context> {
    let trace_id = sc.trace_id().to_string();
    let ok = sc.is_valid()
        && crate::domain::TraceId::parse(&trace_id).is_some()
        && !crate::domain::identity_scan::contains(&sc.span_id().to_string());
    ok.then(|| {
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags(),
            true,
            TraceState::default(),
        ))
    })
}

/// Called once at the end of every RPC (metrics).
pub type RpcHook = Arc<dyn Fn(&RpcOutcome) + Send + Sync>;

/// Span, timeout, final status and outcome of every RPC.
#[derive(Clone)]
pub struct RpcLayer {
    timeout: Duration,
    hook: RpcHook,
}

impl std::fmt::Debug for RpcLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcLayer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RpcLayer {
    /// `timeout` bounds every call (a shorter `grpc-timeout` from the caller wins).
    pub fn new(timeout: Duration, hook: RpcHook) -> Self {
        Self { timeout, hook }
    }
}

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RpcService<S> {
    inner: S,
    layer: RpcLayer,
}

/// The server-error codes: the span's status is an error for these only (OTel RPC
/// conventions); the others are the caller's doing.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Records the outcome when dropped: at the end of the response body, or earlier when the call
/// is dropped (the caller went away), which counts as CANCELLED.
struct Completion {
    span: tracing::Span,
    hook: RpcHook,
    name: RpcName,
    start: Instant,
    code: Option<Code>,
}

impl Completion {
    fn status_from(&mut self, headers: &http::HeaderMap) {
        if let Some(code) = grpc_status(headers) {
            self.code = Some(code);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Cancelled);
        let elapsed = self.start.elapsed();
        self.span.record("rpc.grpc.status_code", code as i64);
        if is_server_error(code) {
            self.span.record("otel.status_code", "error");
        }
        let _entered = self.span.enter();
        let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        // Refusals of the limits come in floods when a caller floods: DEBUG only (the metrics
        // still count each one).
        if code == Code::ResourceExhausted {
            tracing::debug!(code = ?code, duration_ms, "request finished");
        } else {
            tracing::info!(code = ?code, duration_ms, "request finished");
        }
        (self.hook)(&RpcOutcome {
            service: self.name.service,
            method: self.name.method,
            code,
            elapsed,
        });
    }
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The outcome of a response that is not gRPC (the console's pages), for the span, the log
/// line and the metrics.
fn http_outcome(status: http::StatusCode) -> Code {
    match status.as_u16() {
        200..=399 => Code::Ok,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        400..=499 => Code::InvalidArgument,
        503 => Code::Unavailable,
        _ => Code::Internal,
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// The caller's `grpc-timeout` (at most 8 digits and a unit, per the gRPC HTTP/2 protocol).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S> tower_service::Service<http::Request<Body>> for RpcService<S>
where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The service polled ready is the one to call; the clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let name = names::lookup(req.uri().path());
        // A root: never the child of whatever span happens to be current.
        let span = tracing::info_span!(
            parent: None,
            "grpc.request",
            otel.name = name.full,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = name.service,
            rpc.method = name.method,
            rpc.grpc.status_code = Empty,
            otel.status_code = Empty,
            trace_id = Empty,
            span_id = Empty,
            case_id = Empty,
            principal = Empty,
        );
        // Before the span starts: the caller's span becomes its parent.
        let parent = TraceContextPropagator::new()
            .extract(&opentelemetry_http::HeaderExtractor(req.headers()));
        if let Some(parent) = clean_parent(parent.span().span_context()) {
            // Fails only without an OpenTelemetry layer (some in-process tests): then there is
            // nothing to continue.
            let _ = span.set_parent(parent);
        }
        let context = span.context().span().span_context().clone();
        if context.is_valid() {
            span.record("trace_id", display(context.trace_id()));
            span.record("span_id", display(context.span_id()));
        }
        let limit =
            grpc_timeout(req.headers()).map_or(self.layer.timeout, |t| t.min(self.layer.timeout));
        let console = name == names::CONSOLE;
        let mut done = Completion {
            span: span.clone(),
            hook: self.layer.hook.clone(),
            name,
            start: Instant::now(),
            code: None,
        };
        Box::pin(
            async move {
                // Inside this layer, so a timeout is answered (and counted), not just dropped.
                let response = match tokio::time::timeout(limit, inner.call(req)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(never)) => match never {},
                    Err(_) => {
                        crate::api::error::status(Reason::RequestTimeout, "request timed out")
                            .into_http()
                    }
                };
                let (parts, body) = response.into_parts();
                // An error is trailers-only: its status is in the headers. Otherwise it comes
                // in the trailers at the end of the body.
                done.status_from(&parts.headers);
                if console && !is_grpc(&parts.headers) {
                    // The console's pages: their outcome is their HTTP status.
                    done.code = Some(http_outcome(parts.status));
                }
                // The closure owns `done`: it records when the body ends or is dropped.
                let body = body.inspect_frame(move |frame| {
                    if let Some(trailers) = frame.trailers_ref() {
                        done.status_from(trailers);
                    }
                });
                Ok(http::Response::from_parts(parts, Body::new(body)))
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests;
