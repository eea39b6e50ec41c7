//! The console's pages as maud templates. maud escapes every interpolated value (text and
//! attributes), so nothing read from the store can become markup. The pages take domain
//! values and pick what they show: identifiers, states, reasons, times, audit events — never
//! `report.card_holder` or `report.reported_by`.

use maud::{DOCTYPE, Markup, html};

use super::ConsoleSettings;
use crate::domain::{CaseEvent, Deregistration, State, Timestamp};
use crate::storage::{Stats, StepView};

/// The one style sheet, inline; the CSP allows exactly this text (by its hash).
pub const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b}\
table{border-collapse:collapse;margin:0.5rem 0 1.5rem}\
th,td{border-bottom:1px solid #ccc;padding:0.25rem 0.75rem;text-align:left;vertical-align:top}\
th{background:#f0f0f0}td.n{text-align:right}.attention{color:#a00000;font-weight:bold}\
nav a{margin-right:1rem}code{font-size:0.9em}";

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · etjanstekort-gateway console" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                nav { a href="/console" { "Overview" } }
                h1 { (title) }
                (body)
                footer { p { small { "Read-only. Times are UTC. Act on cases with etkctl." } } }
            }
        }
    }
}

/// `YYYY-MM-DD HH:MM:SSZ`.
pub fn when(t: Timestamp) -> String {
    t.to_utc()
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_default()
}

/// How long from `t` to `now`, roughly: `3d 4h`, `2h 5m`, `12m`.
pub fn age(t: Timestamp, now: Timestamp) -> String {
    let secs = (now.0 - t.0).max(0) / 1_000_000;
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    match (d, h) {
        (0, 0) => format!("{m}m"),
        (0, h) => format!("{h}h {m}m"),
        (d, h) => format!("{d}d {h}h"),
    }
}

fn state_name(s: State) -> &'static str {
    s.into()
}

fn case_link(c: &Deregistration) -> String {
    format!("/console/cases/{}", c.id)
}

/// Counts by state and the needs-attention list.
pub fn overview(stats: &Stats, attention: &[Deregistration], limit: u32, now: Timestamp) -> Markup {
    layout(
        "Cases",
        html! {
            h2 { "By state" }
            table id="states" {
                thead { tr { th { "State" } th { "Cases" } } }
                tbody {
                    @for (state, n) in &stats.by_state {
                        tr class=[(*state == State::NeedsAttention && *n > 0).then_some("attention")] {
                            td { (state_name(*state)) }
                            td class="n" { (n) }
                        }
                    }
                }
            }
            h2 { "Needs attention (" (stats.needs_attention) ")" }
            @if attention.is_empty() {
                p id="attention-empty" { "No case needs attention." }
            } @else {
                table id="attention" {
                    thead { tr { th { "Case" } th { "Reason" } th { "Stopped in" } th { "Waiting" } th { "Care unit" } } }
                    tbody {
                        @for c in attention {
                            tr {
                                td { a href=(case_link(c)) { code { (c.id) } } }
                                td { (c.state_reason.as_deref().unwrap_or("")) }
                                td { (c.attention_from.map_or("", state_name)) }
                                td title=(when(c.updated_at)) { (age(c.updated_at, now)) }
                                td { (c.report.care_unit.as_str()) }
                            }
                        }
                    }
                }
                @if attention.len() as u64 >= u64::from(limit) && stats.needs_attention > u64::from(limit) {
                    p { "The oldest " (limit) " are shown; etkctl cases list --needs-attention lists all." }
                }
            }
        },
    )
}

/// One case with its audit timeline.
pub fn case(
    c: &Deregistration,
    events: &[CaseEvent],
    steps: &[StepView],
    settings: &ConsoleSettings,
    now: Timestamp,
) -> Markup {
    layout(
        &format!("Case {}", c.id),
        html! {
            table id="case" {
                tbody {
                    tr { th { "State" } td class=[(c.state == State::NeedsAttention).then_some("attention")] { (state_name(c.state)) } }
                    @if let Some(r) = &c.state_reason { tr { th { "Reason" } td { (r) } } }
                    @if let Some(from) = c.attention_from { tr { th { "Stopped in" } td { (state_name(from)) } } }
                    tr { th { "Care provider" } td { (c.care_provider.as_str()) } }
                    tr { th { "Care unit" } td { (c.report.care_unit.as_str()) } }
                    tr { th { "KIV removal by" } td { (c.report.route.as_str()) } }
                    tr { th { "Created" } td { (when(c.created_at)) " (" (age(c.created_at, now)) " ago)" } }
                    tr { th { "Updated" } td { (when(c.updated_at)) " (" (age(c.updated_at, now)) " ago)" } }
                    @if let Some(r) = &c.revocation_reference { tr { th { "Revocation reference" } td { (r) } } }
                    @if let Some(url) = settings.trace_url(&c.trace_id) {
                        tr { th { "Trace" } td { a href=(url) rel="noopener noreferrer" { code { (c.trace_id) } } } }
                    }
                }
            }
            h2 { "Timeline" }
            table id="timeline" {
                thead { tr { th { "#" } th { "Time" } th { "Event" } th { "State" } th { "Actor" } th { "Detail" } th { "Trace" } } }
                tbody {
                    @for e in events {
                        tr {
                            td class="n" { (e.sequence) }
                            td { (when(e.at)) }
                            td { (e.kind) }
                            td { (state_name(e.state)) }
                            td { (e.actor) }
                            td { (e.detail) }
                            td {
                                @if let Some(url) = settings.trace_url(&e.trace_id) {
                                    a href=(url) rel="noopener noreferrer" { "trace" }
                                } @else if !e.trace_id.is_empty() {
                                    code { (e.trace_id) }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Steps" }
            @if steps.is_empty() {
                p { "No outbox steps." }
            } @else {
                table id="steps" {
                    thead { tr { th { "Step" } th { "Status" } th { "Attempts" } th { "Due" } th { "Last error" } } }
                    tbody {
                        @for s in steps {
                            tr class=[(s.status == "failed").then_some("attention")] {
                                td { (s.step) }
                                td { (s.status) @if s.leased { " (running)" } }
                                td class="n" { (s.attempts) }
                                td { @if s.status == "pending" { (when(s.due_at)) } }
                                td { (s.last_error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A page with a title and one sentence (errors, denials).
pub fn message(title: &str, text: &str) -> Markup {
    layout(title, html! { p { (text) } })
}
