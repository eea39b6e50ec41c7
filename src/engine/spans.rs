//! The engine's spans: one per step execution and the reconciliation's, joined to the trace of
//! the request that created the case (`crate::trace_context`), so Jaeger shows a case as one
//! trace. Fields carry ids, names and outcomes only — never a case's personal data, not even
//! masked.

use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::connectors::Connectors;
use crate::domain::saga::Step;
use crate::domain::{CaseId, Deregistration};
use crate::storage::{Work, WorkResult};
use crate::trace_context;

/// Joins `span` to the case's stored trace (before anything enters it) and records its trace
/// id for the log lines.
fn join_case(span: &tracing::Span, trace_parent: Option<&str>) {
    trace_context::set_parent_from(span, trace_parent);
    if let Some(id) = trace_context::trace_id_of(span) {
        span.record("trace_id", id);
    }
}

/// The span of one step execution. A root — not a child of whatever span the worker is in —
/// joined to the trace of the request that created the case; a case stored without a trace
/// context (before m0004) gets a trace of its own per step, found by `case_id`.
pub(super) fn step(
    w: &Work,
    case: Option<&Deregistration>,
    connector: &'static str,
) -> tracing::Span {
    let step = w.step.name();
    let span = tracing::info_span!(
        parent: None,
        "saga.step",
        otel.name = %format_args!("saga.step {step}"),
        case_id = %w.case_id,
        step,
        // Integers as i64: tracing-opentelemetry exports other integer types as strings.
        attempt = i64::from(w.attempts) + 1,
        connector,
        outcome = Empty,
        otel.status_description = Empty,
        trace_id = Empty,
    );
    join_case(&span, case.and_then(|c| c.trace_parent.as_deref()));
    span
}

/// Which connector implementation a step calls (`none` for a timer that calls nothing).
pub(super) fn connector_of(c: &Connectors, step: Step) -> &'static str {
    match step {
        Step::Snapshot | Step::RemoveKiv | Step::RestoreKiv => c.kiv.name(),
        Step::Report | Step::PollOutcome | Step::Remind(_) => c.tjansteid.name(),
        Step::NotifyHead | Step::NotifyHolder => c.notifier.name(),
        Step::VerifyRevocation => c.revocation.as_ref().map_or("none", |r| r.name()),
        Step::Escalate | Step::VerifyDeadline => "none",
    }
}

/// `outcome` on the step span; a step that failed for good marks the span as an error, with
/// the connector's classified, redacted message (the one the audit trail keeps).
pub(super) fn record_outcome(span: &tracing::Span, result: &WorkResult) {
    let outcome = match result {
        WorkResult::Done { .. } => "done",
        WorkResult::Retry { .. } => "retry",
        WorkResult::Failed { .. } => "failed",
        WorkResult::Skipped => "skipped",
    };
    span.record("outcome", outcome);
    if let WorkResult::Failed { error } = result {
        span.record("otel.status_description", error.as_str());
    }
}

/// A reconciliation pass: the root of the look-ups it makes.
pub(super) fn reconcile_pass() -> tracing::Span {
    tracing::info_span!(
        parent: None,
        "saga.reconcile_pass",
        otel.name = "saga.reconcile_pass",
        violations = Empty,
    )
}

/// One case's KIV look-up within a pass; `kiv.employment` is recorded when it is known.
pub(super) fn reconcile_lookup(
    pass: &tracing::Span,
    case: &CaseId,
    connector: &'static str,
) -> tracing::Span {
    tracing::info_span!(
        parent: pass,
        "saga.reconcile.lookup",
        otel.name = "saga.reconcile lookup",
        case_id = %case,
        connector,
        "kiv.employment" = Empty,
        otel.status_description = Empty,
    )
}

/// An employment found missing before the revocation was confirmed: a span of the case's own
/// trace, linked to the look-up that found it.
pub(super) fn reconcile_violation(
    case: &Deregistration,
    connector: &'static str,
    lookup: &tracing::Span,
) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "saga.reconcile",
        otel.name = "saga.reconcile employment_missing",
        case_id = %case.id,
        connector,
        "kiv.employment" = "missing",
        outcome = Empty,
        otel.status_description = Empty,
        trace_id = Empty,
    );
    // Links are taken at start, so before `join_case` starts it.
    let found_by = lookup.context();
    span.add_link(
        opentelemetry::trace::TraceContextExt::span(&found_by)
            .span_context()
            .clone(),
    );
    join_case(&span, case.trace_parent.as_deref());
    span
}
