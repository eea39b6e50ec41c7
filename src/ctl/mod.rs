//! `etkctl`, the operator's command line: calls `OperationsService` over mutual TLS with an
//! operator certificate and shows the answers as tables (default) or JSON (`--output json`).
//! `src/bin/etkctl.rs` only calls [`main`]. It talks to the gateway through the API alone: no
//! database access, no personal data printed.
//!
//! Exit codes (scripts may rely on them; see docs/operations.md):
//! 0 done; 1 error (connection, TLS, server); 2 usage (bad flags or arguments, also an
//! argument the gateway refuses as invalid); 3 an audit chain is broken (as the gateway's own
//! offline `audit verify`, also when the run failed after finding one); 4 no such case; 5 the
//! case's state does not allow the action; 6 the certificate is not an operator's; 7 retryable
//! (`UNAVAILABLE`, `ABORTED`, `RESOURCE_EXHAUSTED`: run it again later).

pub mod render;
pub mod target;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tonic::Code;
use tonic::transport::Channel;

use crate::api::pb;
use pb::operations_service_client::OperationsServiceClient;
use render::Output;
use target::{TargetArgs, TargetError};

/// Exit codes, one per kind of outcome a script may act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    Error = 1,
    Usage = 2,
    ChainBroken = 3,
    NotFound = 4,
    Refused = 5,
    NotAuthorized = 6,
    /// The gateway is unavailable, overloaded or the call collided: the same command may
    /// succeed if run again later.
    Retryable = 7,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

impl Exit {
    /// The exit code for a gRPC status the gateway answered with.
    pub fn of(code: Code) -> Self {
        match code {
            Code::Ok => Exit::Ok,
            Code::InvalidArgument | Code::OutOfRange => Exit::Usage,
            Code::NotFound => Exit::NotFound,
            Code::FailedPrecondition | Code::AlreadyExists => Exit::Refused,
            Code::PermissionDenied | Code::Unauthenticated => Exit::NotAuthorized,
            Code::Unavailable | Code::Aborted | Code::ResourceExhausted => Exit::Retryable,
            _ => Exit::Error,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "etkctl",
    version,
    about = "Operator command line for etjanstekort-gateway",
    long_about = "Operator command line for etjanstekort-gateway: finds and inspects cases, \
                  retries, resolves or cancels them, verifies and exports the audit trail. \
                  Connects over mutual TLS with an operator certificate; with no connection \
                  flags it uses the dev gateway of `etjanstekort-gateway serve --dev`.\n\n\
                  Exit codes: 0 done, 1 error, 2 usage, 3 audit chain broken, 4 no such case, \
                  5 the case's state does not allow it, 6 not an operator's certificate, \
                  7 retryable (unavailable, aborted, rate limited: run it again later)."
)]
pub struct Cli {
    #[command(flatten)]
    pub target: TargetArgs,
    /// How to print results.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true, env = "ETKCTL_OUTPUT")]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Find, inspect and act on cases.
    #[command(subcommand)]
    Cases(CasesCommand),
    /// Verify and export the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum CasesCommand {
    /// Lists cases of every care provider, oldest first (filters combine).
    List {
        /// Only cases in this state (repeatable), e.g. needs-attention, accepted.
        #[arg(long = "state", value_enum)]
        states: Vec<StateArg>,
        /// Only cases that need attention.
        #[arg(long)]
        needs_attention: bool,
        /// Only this care provider's cases (HSA-id).
        #[arg(long)]
        care_provider: Option<String>,
        /// Only this care unit's cases (HSA-id).
        #[arg(long)]
        care_unit: Option<String>,
        /// Only cases created at least this long ago, e.g. 2h, 3days.
        #[arg(long, value_parser = humantime::parse_duration)]
        min_age: Option<std::time::Duration>,
        /// Only cases created at most this long ago.
        #[arg(long, value_parser = humantime::parse_duration)]
        max_age: Option<std::time::Duration>,
        /// At most this many cases.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Shows one case: its state, its audit events and its outbox steps.
    Show {
        /// The case id.
        id: String,
    },
    /// Makes the case's pending step due now.
    Retry {
        /// The case id.
        id: String,
    },
    /// Ends a case that needs attention by hand; the justification goes to the audit trail.
    Resolve {
        /// The case id.
        id: String,
        /// Why (required; recorded in the audit trail: no personal data).
        #[arg(long)]
        justification: String,
        /// How the case ends.
        #[arg(long, value_enum, default_value_t = Resolution::Completed)]
        resolution: Resolution,
    },
    /// Cancels a case where the routine still allows it; the justification is audited.
    Cancel {
        /// The case id.
        id: String,
        /// Why (required; recorded in the audit trail: no personal data).
        #[arg(long)]
        justification: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verifies the keyed audit chain of one case or of every case; exit code 3 when a chain
    /// is broken (each broken case is named with its first broken link).
    Verify {
        /// Only this case (default: every case).
        #[arg(long = "case")]
        case: Option<String>,
    },
    /// Writes one case's audit record (JSON: events, hashes, chain head) to stdout.
    Export {
        /// The case id.
        id: String,
        /// Personal data in clear, for the record keeper's 10-year keeping (needs
        /// --justification; audited). Default: personal data only as keyed pseudonyms.
        #[arg(long, requires = "justification")]
        for_record_keeper: bool,
        /// Why the record keeper needs the clear record.
        #[arg(long)]
        justification: Option<String>,
    },
}

/// `cases resolve --resolution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Resolution {
    /// The remaining steps were done outside the gateway.
    Completed,
    /// The case is abandoned.
    Cancelled,
}

/// `cases list --state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    Accepted,
    RevocationRequested,
    Revoked,
    KivRemovalPending,
    Completed,
    Rejected,
    Cancelled,
    NeedsAttention,
}

impl From<StateArg> for pb::State {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Accepted => pb::State::Accepted,
            StateArg::RevocationRequested => pb::State::RevocationRequested,
            StateArg::Revoked => pb::State::Revoked,
            StateArg::KivRemovalPending => pb::State::KivRemovalPending,
            StateArg::Completed => pb::State::Completed,
            StateArg::Rejected => pb::State::Rejected,
            StateArg::Cancelled => pb::State::Cancelled,
            StateArg::NeedsAttention => pb::State::NeedsAttention,
        }
    }
}

/// How an `audit verify` run ends: any broken case makes it exit 3, also when the stream
/// failed or ended early (the failure is named in the message); otherwise the failure's own
/// exit code.
fn verify_outcome(
    broken: usize,
    done: bool,
    failure: Option<tonic::Status>,
) -> Result<(), CtlError> {
    let unfinished = match (&failure, done) {
        (Some(s), _) => Some(format!(
            "; the verification did not finish: {}",
            status_text(s)
        )),
        (None, false) => Some("; the verification stream ended before its summary".into()),
        (None, true) => None,
    };
    if broken > 0 {
        return Err(CtlError::Finding {
            exit: Exit::ChainBroken,
            message: format!(
                "audit chain broken in {broken} case(s){}",
                unfinished.unwrap_or_default()
            ),
        });
    }
    match (failure, done) {
        (Some(s), _) => Err(CtlError::Status(s)),
        (None, false) => Err(CtlError::Finding {
            exit: Exit::Error,
            message: "the verification stream ended before its summary".into(),
        }),
        (None, true) => Ok(()),
    }
}

/// Why a command failed, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{}", status_text(.0))]
    Status(#[from] tonic::Status),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// A finding, not a failure of the tool (e.g. a broken audit chain); its details went
    /// to stdout, the message goes to stderr.
    #[error("{message}")]
    Finding { exit: Exit, message: String },
}

impl CtlError {
    pub fn exit(&self) -> Exit {
        match self {
            CtlError::Target(_) | CtlError::Output(_) => Exit::Error,
            CtlError::Status(s) => Exit::of(s.code()),
            CtlError::Finding { exit, .. } => *exit,
        }
    }
}

/// The entry point of the `etkctl` binary.
pub fn main() -> ExitCode {
    // One process-wide TLS crypto provider (ring), as in the gateway.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("etkctl: error: cannot start: {e}");
            return Exit::Error.into();
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => Exit::Ok.into(),
        Err(e) => {
            eprintln!("etkctl: error: {}", render::terminal_safe(&e.to_string()));
            e.exit().into()
        }
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), CtlError> {
    let channel = cli.target.resolve()?.connect().await?;
    let ctl = Ctl {
        ops: OperationsServiceClient::new(channel),
        output: cli.output,
    };
    match cli.command {
        Command::Cases(c) => ctl.cases(c).await,
        Command::Audit(c) => ctl.audit(c).await,
    }
}

#[derive(Debug)]
struct Ctl {
    ops: OperationsServiceClient<Channel>,
    output: Output,
}

impl Ctl {
    async fn cases(mut self, command: CasesCommand) -> Result<(), CtlError> {
        match command {
            CasesCommand::List {
                states,
                needs_attention,
                care_provider,
                care_unit,
                min_age,
                max_age,
                limit,
            } => {
                let filter = pb::ListCasesRequest {
                    states: states
                        .into_iter()
                        .map(|s| pb::State::from(s) as i32)
                        .collect(),
                    needs_attention,
                    care_provider_hsa_id: care_provider.unwrap_or_default(),
                    care_unit_hsa_id: care_unit.unwrap_or_default(),
                    min_age: min_age.map(duration),
                    max_age: max_age.map(duration),
                    ..Default::default()
                };
                let cases = self.list(filter, limit).await?;
                self.show_cases(&cases)
            }
            CasesCommand::Show { id } => self.show(id).await,
            CasesCommand::Retry { id } => {
                let d = self
                    .ops
                    .retry_deregistration(pb::RetryDeregistrationRequest { id })
                    .await?
                    .into_inner()
                    .deregistration
                    .unwrap_or_default();
                self.show_case(&d, "retry scheduled")
            }
            CasesCommand::Resolve {
                id,
                justification,
                resolution,
            } => {
                let resolution = match resolution {
                    Resolution::Completed => pb::Resolution::Completed,
                    Resolution::Cancelled => pb::Resolution::Cancelled,
                };
                let d = self
                    .ops
                    .resolve_deregistration(pb::ResolveDeregistrationRequest {
                        id,
                        resolution: resolution as i32,
                        justification,
                    })
                    .await?
                    .into_inner()
                    .deregistration
                    .unwrap_or_default();
                self.show_case(&d, "resolved")
            }
            CasesCommand::Cancel { id, justification } => {
                let d = self
                    .ops
                    .cancel_case(pb::CancelCaseRequest { id, justification })
                    .await?
                    .into_inner()
                    .deregistration
                    .unwrap_or_default();
                self.show_case(&d, "cancelled")
            }
        }
    }

    async fn audit(mut self, command: AuditCommand) -> Result<(), CtlError> {
        match command {
            AuditCommand::Verify { case } => self.verify(case.unwrap_or_default()).await,
            AuditCommand::Export {
                id,
                for_record_keeper,
                justification,
            } => {
                let purpose = if for_record_keeper {
                    pb::ExportPurpose::RecordKeeper
                } else {
                    pb::ExportPurpose::Pseudonymized
                };
                let record = self
                    .ops
                    .export_audit_record(pb::ExportAuditRecordRequest {
                        id,
                        purpose: purpose as i32,
                        justification: justification.unwrap_or_default(),
                    })
                    .await?
                    .into_inner();
                // The record is JSON already, whatever --output says: written as it came.
                let mut json = record.record_json;
                if !json.ends_with('\n') {
                    json.push('\n');
                }
                render::print(&json)?;
                Ok(())
            }
        }
    }

    /// `cases show`: the case and its timeline.
    async fn show(&mut self, id: String) -> Result<(), CtlError> {
        let case = self
            .ops
            .get_case(pb::GetCaseRequest { id: id.clone() })
            .await?
            .into_inner();
        let timeline = self
            .ops
            .get_case_timeline(pb::GetCaseTimelineRequest { id })
            .await?
            .into_inner();
        let d = case.deregistration.unwrap_or_default();
        match self.output {
            Output::Json => {
                render::print_json(&render::CaseDetail::new(&d, &case.chain_head, &timeline))?
            }
            Output::Table => {
                let mut text = render::case_fields(&d);
                if let Some(h) = &timeline.chain_head {
                    text.push_str(&format!(
                        "{:<22}{} {}\n",
                        "audit chain head",
                        h.sequence,
                        render::terminal_safe(&h.hash)
                    ));
                }
                text.push_str("\nTIMELINE\n");
                text.push_str(&render::events_table(&timeline.events).render());
                text.push_str("\nSTEPS\n");
                let steps = render::steps_table(&timeline.steps);
                if steps.is_empty() {
                    text.push_str("(none)\n");
                } else {
                    text.push_str(&steps.render());
                }
                render::print(&text)?;
            }
        }
        Ok(())
    }

    /// `audit verify`: streams the gateway's verification, a progress bar on a terminal, and
    /// names every broken case.
    async fn verify(&mut self, id: String) -> Result<(), CtlError> {
        let mut stream = self
            .ops
            .verify_audit_chain(pb::VerifyAuditChainRequest { id })
            .await?
            .into_inner();
        let mut progress = render::Progress::new();
        let mut broken = Vec::new();
        let mut last = pb::VerifyAuditChainResponse::default();
        // A stream error ends the run, but the broken cases received before it are still
        // printed and decide the exit code.
        let mut failure = None;
        loop {
            let m = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(s) => {
                    failure = Some(s);
                    break;
                }
            };
            progress.update(
                m.cases_checked.max(0) as u64,
                m.cases_total.max(0) as u64,
                "cases verified",
            );
            if let Some(b) = &m.broken {
                broken.push(b.clone());
            }
            let done = m.done;
            last = m;
            if done {
                break;
            }
        }
        progress.finish();
        if last.done || !broken.is_empty() {
            let summary = render::VerifySummary::new(&last, &broken);
            match self.output {
                Output::Json => render::print_json(&summary)?,
                Output::Table => render::print(&summary.text())?,
            }
        }
        verify_outcome(broken.len(), last.done, failure)
    }

    /// Pages through the filtered list up to `limit` cases.
    async fn list(
        &mut self,
        filter: pb::ListCasesRequest,
        limit: u32,
    ) -> Result<Vec<pb::Deregistration>, CtlError> {
        let mut cases = Vec::new();
        let mut page_token = String::new();
        loop {
            let want = limit.saturating_sub(cases.len() as u32).min(100);
            if want == 0 {
                break;
            }
            let page = self
                .ops
                .list_cases(pb::ListCasesRequest {
                    page_size: want as i32,
                    page_token,
                    ..filter.clone()
                })
                .await?
                .into_inner();
            cases.extend(page.deregistrations);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        cases.truncate(limit as usize);
        Ok(cases)
    }

    fn show_cases(&self, cases: &[pb::Deregistration]) -> Result<(), CtlError> {
        match self.output {
            Output::Json => {
                render::print_json(&cases.iter().map(render::CaseView::from).collect::<Vec<_>>())?
            }
            Output::Table => {
                let table = render::cases_table(cases, now());
                if table.is_empty() {
                    render::print("no cases\n")?;
                } else {
                    render::print(&table.render())?;
                }
            }
        }
        Ok(())
    }

    fn show_case(&self, d: &pb::Deregistration, done: &str) -> Result<(), CtlError> {
        match self.output {
            Output::Json => render::print_json(&render::CaseView::from(d))?,
            Output::Table => {
                render::print(&format!("{done}\n{}", render::case_fields(d)))?;
            }
        }
        Ok(())
    }
}

/// A gateway's answer as one line: its message, its code and its `ErrorInfo` reason.
fn status_text(s: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    let code = match s.code() {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        _ => "ERROR",
    };
    let mut text = format!("{} ({code}", s.message());
    if let Some(info) = s.get_details_error_info() {
        text.push_str(&format!(", reason {}", info.reason));
    }
    if let Some(bad) = s.get_details_bad_request() {
        for v in bad.field_violations {
            text.push_str(&format!("; {}: {}", v.field, v.description));
        }
    }
    text.push(')');
    text
}

fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// Unix seconds now (for ages).
fn now() -> i64 {
    crate::clock::now().unix_seconds()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_answer_has_its_exit_code() {
        assert_eq!(Exit::of(Code::Ok), Exit::Ok);
        assert_eq!(Exit::of(Code::InvalidArgument), Exit::Usage);
        assert_eq!(Exit::of(Code::NotFound), Exit::NotFound);
        for c in [Code::FailedPrecondition, Code::AlreadyExists] {
            assert_eq!(Exit::of(c), Exit::Refused, "{c:?}");
        }
        for c in [Code::Unavailable, Code::Aborted, Code::ResourceExhausted] {
            assert_eq!(Exit::of(c), Exit::Retryable, "{c:?}");
        }
        for c in [Code::PermissionDenied, Code::Unauthenticated] {
            assert_eq!(Exit::of(c), Exit::NotAuthorized, "{c:?}");
        }
        for c in [Code::Internal, Code::Unknown, Code::DeadlineExceeded] {
            assert_eq!(Exit::of(c), Exit::Error, "{c:?}");
        }
        let codes = [
            Exit::Ok,
            Exit::Error,
            Exit::Usage,
            Exit::ChainBroken,
            Exit::NotFound,
            Exit::Refused,
            Exit::NotAuthorized,
            Exit::Retryable,
        ];
        assert_eq!(codes.map(|e| e as u8), [0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn verify_exits_3_on_any_broken_case_even_when_the_run_failed() {
        let exit = |r: Result<(), CtlError>| r.err().map(|e| e.exit());
        let unavailable = || Some(tonic::Status::unavailable("gone"));
        assert_eq!(exit(verify_outcome(0, true, None)), None);
        assert_eq!(exit(verify_outcome(2, true, None)), Some(Exit::ChainBroken));
        let failed = verify_outcome(1, false, unavailable()).unwrap_err();
        assert_eq!(failed.exit(), Exit::ChainBroken);
        assert!(failed.to_string().contains("did not finish"), "{failed}");
        assert_eq!(
            exit(verify_outcome(1, false, None)),
            Some(Exit::ChainBroken)
        );
        assert_eq!(
            exit(verify_outcome(0, false, unavailable())),
            Some(Exit::Retryable)
        );
        assert_eq!(exit(verify_outcome(0, false, None)), Some(Exit::Error));
    }

    #[test]
    fn a_status_reads_as_its_message_code_and_reason() {
        let s = crate::api::error::status(
            crate::api::error::Reason::CaseNotFound,
            "deregistration not found",
        );
        assert_eq!(
            status_text(&s),
            "deregistration not found (NOT_FOUND, reason CASE_NOT_FOUND)"
        );
    }
}
