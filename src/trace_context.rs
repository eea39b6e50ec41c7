//! A case's trace context: the W3C `traceparent` of the span that created the case is stored with
//! it, and every later span of the case (saga steps, reconciliation restores) is made a child of
//! it, so one case is one trace from the report to the KIV removal.
//!
//! Owns the glue between `tracing` spans and OpenTelemetry contexts for that; reading and
//! writing the header is the W3C propagator's job, never done by hand here. Without an
//! OpenTelemetry layer in the subscriber everything here is a no-op: nothing is captured and
//! no parent is set.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of the current span, if it belongs to a valid OpenTelemetry trace (sampled
/// or not: an unsampled creating request keeps the case's steps unsampled too).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The `traceparent` of `span`. Starts the span's OpenTelemetry side if it has not started yet,
/// so call it only once its parent is settled.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The span context a stored `traceparent` names, if it is a valid one.
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Makes `span` a child of the stored `traceparent`. Must run before the span is first entered
/// (or asked for its context). An absent or unreadable value leaves `span` a root of its own
/// trace. Returns whether the parent was set.
pub fn set_parent_from(span: &tracing::Span, traceparent: Option<&str>) -> bool {
    let Some(tp) = traceparent else {
        return false;
    };
    let Some(sc) = parse(tp) else {
        // Stored by us, so this is corruption or a future format: the step still runs.
        tracing::debug!("stored traceparent is not valid; the span starts a new trace");
        return false;
    };
    let cx = opentelemetry::Context::new().with_remote_span_context(sc);
    match span.set_parent(cx) {
        Ok(()) => true,
        // No OpenTelemetry layer (tests, tools) or the span is filtered out: nothing to join.
        Err(e) => {
            tracing::debug!(error = %e, "span not joined to the case's trace");
            false
        }
    }
}

/// The trace id of `span` as 32 lower-case hex digits, if it has a valid one (for log lines).
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_read_and_garbage_is_not() {
        let sc = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        assert!(sc.is_remote());
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn without_an_opentelemetry_layer_nothing_is_captured_or_joined() {
        let span = tracing::info_span!("x");
        assert_eq!(traceparent_of(&span), None);
        assert!(!set_parent_from(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        ));
        assert!(!set_parent_from(&span, None));
    }
}
