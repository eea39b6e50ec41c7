//! `etkctl`, the operator's command line: calls `OperationsService` over mutual TLS with an
//! operator certificate and shows the answers as tables (default) or JSON (`--output json`).
//! `src/bin/etkctl.rs` only calls [`main`]. It talks to the gateway through the API alone: no
//! database access, no personal data printed.
//!
//! Exit codes (scripts may rely on them; see docs/operations.md):
//! 0 done; 1 error (connection, TLS, server); 2 usage (bad flags or arguments, also an
//! argument the gateway refuses as invalid); 3 no such case; 4 an audit chain is broken;
//! 5 the case's state does not allow the action; 6 the certificate is not an operator's.

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
    NotFound = 3,
    ChainBroken = 4,
    Refused = 5,
    NotAuthorized = 6,
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
            Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => Exit::Refused,
            Code::PermissionDenied | Code::Unauthenticated => Exit::NotAuthorized,
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
                  Exit codes: 0 done, 1 error, 2 usage, 3 no such case, 4 audit chain broken, \
                  5 the case's state does not allow it, 6 not an operator's certificate."
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
}

#[derive(Debug, Subcommand)]
pub enum CasesCommand {
    /// Lists the cases that need attention (oldest first).
    List {
        /// At most this many cases (the gateway caps it).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Makes the case's pending step due now.
    Retry {
        /// The case id.
        id: String,
    },
    /// Ends a case by hand; the justification goes to the audit trail.
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
}

/// `cases resolve --resolution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Resolution {
    /// The remaining steps were done outside the gateway.
    Completed,
    /// The case is abandoned.
    Cancelled,
}

/// Why a command failed, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("the gateway answered {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// A finding, not a failure of the tool (the message was printed already).
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
            CasesCommand::List { limit } => {
                let cases = self.list_attention(limit).await?;
                self.show_cases(&cases)
            }
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
        }
    }

    /// Pages through the attention list up to `limit` cases.
    async fn list_attention(&mut self, limit: u32) -> Result<Vec<pb::Deregistration>, CtlError> {
        let mut cases = Vec::new();
        let mut page_token = String::new();
        loop {
            let want = limit.saturating_sub(cases.len() as u32).min(100);
            if want == 0 {
                break;
            }
            let page = self
                .ops
                .list_attention_cases(pb::ListAttentionCasesRequest {
                    page_size: want as i32,
                    page_token,
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
            Output::Json => render::print_json(
                &cases
                    .iter()
                    .map(render::CaseView::from)
                    .collect::<Vec<_>>(),
            )?,
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

/// Unix seconds now (for ages).
fn now() -> i64 {
    crate::clock::now().unix_seconds()
}
