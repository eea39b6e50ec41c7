//! How `etkctl` shows what it got: aligned tables for people, JSON for scripts, and a progress
//! line on stderr when stderr is a terminal. Everything shown is first made safe for a
//! terminal (control characters from the server are escaped, never emitted).

use std::io::Write;

use crate::api::pb;

/// `--output`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// A table: a header row and rows of the same width, printed with aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| terminal_safe(&c)).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text: columns separated by two spaces, the last column not padded.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                let pad = widths.get(i).copied().unwrap_or(0) - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
            // No trailing blanks (empty last columns included).
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Text from the server as it may be shown on a terminal: control characters (escape
/// sequences could rewrite the screen) become `\u{..}` escapes.
pub fn terminal_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// A protobuf timestamp as `YYYY-MM-DD HH:MM:SSZ` (empty when unset or out of range).
pub fn timestamp(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
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

/// The same instant in RFC 3339 for JSON (empty when unset).
pub fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    let s = timestamp(t);
    if s.is_empty() {
        s
    } else {
        s.replacen(' ', "T", 1)
    }
}

/// How long ago `t` was, roughly (`3d 4h`, `12m`), relative to `now` in Unix seconds.
pub fn age(t: Option<&prost_types::Timestamp>, now: i64) -> String {
    let Some(t) = t else {
        return String::new();
    };
    let secs = (now - t.seconds).max(0);
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    match (d, h, m) {
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// A state's short name (`NEEDS_ATTENTION`), from the enum's proto name.
pub fn state(state: i32) -> String {
    pb::State::try_from(state)
        .map(|s| {
            s.as_str_name()
                .strip_prefix("STATE_")
                .unwrap_or(s.as_str_name())
                .to_owned()
        })
        .unwrap_or_else(|_| format!("UNKNOWN({state})"))
}

/// What `etkctl` shows of a case: its identifiers, state and times. Never the card holder
/// or the reporter (whatever the server sends, the CLI prints no personal data).
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct CaseView {
    pub id: String,
    pub state: String,
    pub state_reason: String,
    pub care_provider_hsa_id: String,
    pub care_unit_hsa_id: String,
    pub create_time: String,
    pub update_time: String,
    pub revocation_reference: String,
}

impl From<&pb::Deregistration> for CaseView {
    fn from(d: &pb::Deregistration) -> Self {
        Self {
            id: d.id.clone(),
            state: state(d.state),
            state_reason: d.state_reason.clone(),
            care_provider_hsa_id: d.care_provider_hsa_id.clone(),
            care_unit_hsa_id: d.care_unit_hsa_id.clone(),
            create_time: rfc3339(d.create_time.as_ref()),
            update_time: rfc3339(d.update_time.as_ref()),
            revocation_reference: d.revocation_reference.clone(),
        }
    }
}

/// Cases as a table: one line each, the newest change's age.
pub fn cases_table(cases: &[pb::Deregistration], now: i64) -> Table {
    let mut t = Table::new(&["ID", "STATE", "CARE UNIT", "AGE", "UPDATED", "REASON"]);
    for d in cases {
        t.row(vec![
            d.id.clone(),
            state(d.state),
            d.care_unit_hsa_id.clone(),
            age(d.create_time.as_ref(), now),
            timestamp(d.update_time.as_ref()),
            d.state_reason.clone(),
        ]);
    }
    t
}

/// One case's fields as `name: value` lines.
pub fn case_fields(d: &pb::Deregistration) -> String {
    let v = CaseView::from(d);
    let mut out = String::new();
    for (name, value) in [
        ("id", v.id),
        ("state", v.state),
        ("state reason", v.state_reason),
        ("care provider", v.care_provider_hsa_id),
        ("care unit", v.care_unit_hsa_id),
        ("created", timestamp(d.create_time.as_ref())),
        ("updated", timestamp(d.update_time.as_ref())),
        ("revocation reference", v.revocation_reference),
    ] {
        if !value.is_empty() {
            out.push_str(&format!("{name:<22}{}\n", terminal_safe(&value)));
        }
    }
    out
}

/// A step status's or error class's short name, from the enum's proto name.
fn enum_name(name: Option<&str>, prefix: &str, raw: i32) -> String {
    match name {
        Some(n) => n.strip_prefix(prefix).unwrap_or(n).to_owned(),
        None => format!("UNKNOWN({raw})"),
    }
}

fn step_status(raw: i32) -> String {
    enum_name(
        pb::StepStatus::try_from(raw).ok().map(|s| s.as_str_name()),
        "STEP_STATUS_",
        raw,
    )
}

fn error_class(raw: i32) -> String {
    match pb::ErrorClass::try_from(raw) {
        Ok(pb::ErrorClass::Unspecified) => String::new(),
        other => enum_name(other.ok().map(|c| c.as_str_name()), "ERROR_CLASS_", raw),
    }
}

fn problem(raw: i32) -> String {
    enum_name(
        pb::AuditChainProblem::try_from(raw)
            .ok()
            .map(|p| p.as_str_name()),
        "AUDIT_CHAIN_PROBLEM_",
        raw,
    )
}

/// A case's audit events, one line each.
pub fn events_table(events: &[pb::DeregistrationEvent]) -> Table {
    let mut t = Table::new(&["SEQ", "TIME", "EVENT", "STATE", "ACTOR", "TRACE", "DETAIL"]);
    for e in events {
        t.row(vec![
            e.sequence.to_string(),
            timestamp(e.event_time.as_ref()),
            e.kind.clone(),
            state(e.state),
            e.actor.clone(),
            e.trace_id.clone(),
            e.detail.clone(),
        ]);
    }
    t
}

/// A case's outbox steps, one line each.
pub fn steps_table(steps: &[pb::OutboxStep]) -> Table {
    let mut t = Table::new(&[
        "STEP",
        "STATUS",
        "ATTEMPTS",
        "NEXT DUE",
        "ERROR",
        "LAST ERROR",
    ]);
    for s in steps {
        let status = if s.leased {
            format!("{} (running)", step_status(s.status))
        } else {
            step_status(s.status)
        };
        t.row(vec![
            s.step.clone(),
            status,
            s.attempts.to_string(),
            timestamp(s.next_due_time.as_ref()),
            error_class(s.last_error_class),
            s.last_error.clone(),
        ]);
    }
    t
}

/// `cases show --output json`.
#[derive(Debug, serde::Serialize)]
pub struct CaseDetail {
    pub case: CaseView,
    pub chain_head: Option<ChainHeadView>,
    pub events: Vec<EventView>,
    pub steps: Vec<StepView>,
}

#[derive(Debug, serde::Serialize)]
pub struct ChainHeadView {
    pub sequence: i64,
    pub hash: String,
    pub key_id: String,
}

#[derive(Debug, serde::Serialize)]
pub struct EventView {
    pub sequence: i64,
    pub time: String,
    pub kind: String,
    pub state: String,
    pub actor: String,
    pub trace_id: String,
    pub detail: String,
    pub hash: String,
}

#[derive(Debug, serde::Serialize)]
pub struct StepView {
    pub step: String,
    pub key: String,
    pub status: String,
    pub attempts: i32,
    pub leased: bool,
    pub next_due_time: String,
    pub last_error_class: String,
    pub last_error: String,
}

impl CaseDetail {
    pub fn new(
        d: &pb::Deregistration,
        head: &Option<pb::AuditChainHead>,
        timeline: &pb::GetCaseTimelineResponse,
    ) -> Self {
        Self {
            case: CaseView::from(d),
            chain_head: timeline
                .chain_head
                .as_ref()
                .or(head.as_ref())
                .map(|h| ChainHeadView {
                    sequence: h.sequence,
                    hash: h.hash.clone(),
                    key_id: h.key_id.clone(),
                }),
            events: timeline
                .events
                .iter()
                .map(|e| EventView {
                    sequence: e.sequence,
                    time: rfc3339(e.event_time.as_ref()),
                    kind: e.kind.clone(),
                    state: state(e.state),
                    actor: e.actor.clone(),
                    trace_id: e.trace_id.clone(),
                    detail: e.detail.clone(),
                    hash: e.hash.clone(),
                })
                .collect(),
            steps: timeline
                .steps
                .iter()
                .map(|s| StepView {
                    step: s.step.clone(),
                    key: s.key.clone(),
                    status: step_status(s.status),
                    attempts: s.attempts,
                    leased: s.leased,
                    next_due_time: rfc3339(s.next_due_time.as_ref()),
                    last_error_class: error_class(s.last_error_class),
                    last_error: s.last_error.clone(),
                })
                .collect(),
        }
    }
}

/// `audit verify`'s result.
#[derive(Debug, serde::Serialize)]
pub struct VerifySummary {
    pub ok: bool,
    pub cases_checked: i64,
    pub cases_broken: i64,
    pub events_checked: i64,
    pub legacy_events: i64,
    pub broken: Vec<BrokenView>,
}

#[derive(Debug, serde::Serialize)]
pub struct BrokenView {
    pub id: String,
    pub sequence: i64,
    pub problem: String,
    pub detail: String,
}

impl VerifySummary {
    pub fn new(last: &pb::VerifyAuditChainResponse, broken: &[pb::BrokenAuditChain]) -> Self {
        Self {
            ok: broken.is_empty(),
            cases_checked: last.cases_checked,
            cases_broken: last.cases_broken.max(broken.len() as i64),
            events_checked: last.events_checked,
            legacy_events: last.legacy_events,
            broken: broken
                .iter()
                .map(|b| BrokenView {
                    id: b.deregistration_id.clone(),
                    sequence: b.sequence,
                    problem: problem(b.problem),
                    detail: b.detail.clone(),
                })
                .collect(),
        }
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "{} case(s) and {} event(s) verified ({} legacy, unkeyed); {} broken\n",
            self.cases_checked, self.events_checked, self.legacy_events, self.cases_broken
        );
        if !self.broken.is_empty() {
            let mut t = Table::new(&["CASE", "FIRST BROKEN", "PROBLEM", "DETAIL"]);
            for b in &self.broken {
                t.row(vec![
                    b.id.clone(),
                    b.sequence.to_string(),
                    b.problem.clone(),
                    b.detail.clone(),
                ]);
            }
            out.push_str(&t.render());
        }
        out
    }
}

/// JSON on stdout (pretty: people read it too).
pub fn print_json(value: &impl serde::Serialize) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::other)?;
    writeln!(out)
}

/// Text on stdout.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// A one-line progress bar on stderr, drawn only when stderr is a terminal (never into a log
/// or a pipe), cleared when done.
#[derive(Debug)]
pub struct Progress {
    on: bool,
    drawn: bool,
}

impl Progress {
    pub fn new() -> Self {
        use std::io::IsTerminal;
        Self {
            on: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    /// `done` of `total` (total 0: unknown), with a short note.
    pub fn update(&mut self, done: u64, total: u64, note: &str) {
        if !self.on {
            return;
        }
        let line = bar(done, total, &terminal_safe(note));
        let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
        self.drawn = true;
    }

    pub fn finish(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.drawn = false;
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `[#####.....] 50/100 note` (or `123 note` when the total is unknown).
fn bar(done: u64, total: u64, note: &str) -> String {
    const WIDTH: u64 = 30;
    if total == 0 {
        return format!("{done} {note}");
    }
    let filled = (done.min(total) * WIDTH / total) as usize;
    format!(
        "[{}{}] {done}/{total} {note}",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_escape_control_characters() {
        let mut t = Table::new(&["ID", "STATE"]);
        t.row(vec!["a".into(), "X".into()]);
        t.row(vec!["long-id".into(), "evil\x1b[2Jtext".into()]);
        t.row(vec!["b".into(), String::new()]);
        assert_eq!(
            t.render(),
            "ID       STATE\na        X\nlong-id  evil\\u{1b}[2Jtext\nb\n"
        );
    }

    #[test]
    fn times_ages_and_states_read_well() {
        let t = prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        };
        assert_eq!(timestamp(Some(&t)), "2026-09-21 14:13:20Z");
        assert_eq!(rfc3339(Some(&t)), "2026-09-21T14:13:20Z");
        assert_eq!(timestamp(None), "");
        assert_eq!(age(Some(&t), 1_790_000_000 + 59), "0m");
        assert_eq!(age(Some(&t), 1_790_000_000 + 3_700), "1h 1m");
        assert_eq!(age(Some(&t), 1_790_000_000 + 2 * 86_400 + 7_200), "2d 2h");
        assert_eq!(state(pb::State::NeedsAttention as i32), "NEEDS_ATTENTION");
        assert_eq!(state(99), "UNKNOWN(99)");
    }

    #[test]
    fn the_case_view_carries_no_personal_data() {
        let d = pb::Deregistration {
            id: "c1".into(),
            card_holder: Some(pb::CardHolder {
                personal_identity_number: "191212121212".into(),
                full_name: "Tolvan Tolvansson".into(),
                email: "tolvan@example.se".into(),
            }),
            reported_by: Some(pb::Reporter {
                hsa_id: "SE1655999991-P000000000099".into(),
                full_name: "Vera Verksamhetschef".into(),
                email: "vera@example.se".into(),
            }),
            ..Default::default()
        };
        let json = serde_json::to_string(&CaseView::from(&d)).unwrap();
        let text = case_fields(&d) + &cases_table(&[d], 0).render();
        for secret in ["191212121212", "Tolvan", "tolvan@", "Vera", "P000000000099"] {
            assert!(!json.contains(secret) && !text.contains(secret), "{secret}");
        }
    }

    #[test]
    fn the_bar_fills_in_proportion() {
        assert_eq!(
            bar(1, 2, "cases"),
            format!("[{}{}] 1/2 cases", "#".repeat(15), ".".repeat(15))
        );
        assert_eq!(bar(5, 0, "cases"), "5 cases");
        assert!(bar(9, 3, "").starts_with(&format!("[{}]", "#".repeat(30))));
    }
}
