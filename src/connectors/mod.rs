//! Ports to the outside systems — TjänsteID-service, KIV, and the notifier — and their
//! implementations. Each error is classified retryable or terminal where it arises; the engine's
//! retry logic reads only that classification.

pub mod simulated;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{
    CardNumber, CaseId, Email, Employment, HsaId, PersonName, Personnummer, Timestamp,
};

/// A connector failure, classified at the source.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    /// Worth retrying later: timeouts, outages, throttling.
    #[error("retryable: {0}")]
    Retryable(String),
    /// Retrying cannot help: a permanent refusal or invalid data. The case needs attention.
    #[error("terminal: {0}")]
    Terminal(String),
}

impl ConnectorError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectorError::Retryable(_))
    }
}

/// What the routine asks the head of operations to report to TjänsteID-service.
#[derive(Clone, Debug)]
pub struct CutCardReport {
    pub case_id: CaseId,
    pub personnummer: Personnummer,
    pub card_number: CardNumber,
    pub holder_name: PersonName,
    pub care_unit: HsaId,
    pub care_provider: HsaId,
    pub reporter_name: PersonName,
    pub reporter_email: Email,
}

/// The outcome of a report, where the connector can learn it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevocationOutcome {
    Pending,
    Confirmed { reference: String },
    Rejected { reason: String },
}

/// TjänsteID-service: receives reports of cut cards.
#[async_trait]
pub trait TjansteId: Send + Sync + fmt::Debug {
    /// Reports the cut card. Idempotent by `key` (case id + step): a retry with the same key
    /// must not create a second report at the service desk (e-mail: the same Message-ID).
    async fn report(&self, key: &str, report: &CutCardReport) -> Result<(), ConnectorError>;

    /// Reminds the desk of a report without outcome (the `n`-th reminder). Idempotent by `key`.
    async fn remind(&self, key: &str, report: &CutCardReport, n: u32)
    -> Result<(), ConnectorError>;

    /// Whether `fetch_outcome` can learn the outcome. When false, the outcome arrives only
    /// through `RevocationService`.
    fn polls(&self) -> bool;

    /// Asks for the outcome of the report sent at `reported_at`. Read-only; safe to retry.
    async fn fetch_outcome(
        &self,
        case_id: &CaseId,
        reported_at: Timestamp,
    ) -> Result<RevocationOutcome, ConnectorError>;
}

/// KIV (Katalog i Väst): the employment of a person at a care unit.
#[async_trait]
pub trait Kiv: Send + Sync + fmt::Debug {
    /// The person's employment at `unit`, whole (DN and every attribute), or `None`. Read-only.
    async fn lookup(
        &self,
        person: &Personnummer,
        unit: &HsaId,
    ) -> Result<Option<Employment>, ConnectorError>;

    /// Removes the employment. Idempotent: removing what is already gone succeeds.
    async fn remove(
        &self,
        key: &str,
        person: &Personnummer,
        unit: &HsaId,
    ) -> Result<(), ConnectorError>;

    /// Re-creates the employment exactly from `snapshot`. Idempotent: restoring an entry that
    /// is present succeeds.
    async fn restore(&self, key: &str, snapshot: &Employment) -> Result<(), ConnectorError>;
}

/// Who is told that the card is deregistered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipient {
    HeadOfOperations,
    CardHolder,
}

/// A notice that a card is deregistered. Carries no full personnummer by construction.
#[derive(Clone, Debug)]
pub struct Notice {
    pub recipient: Recipient,
    pub to: Email,
    pub case_id: CaseId,
    pub holder_name: PersonName,
    /// Birth date and mask, e.g. `19121212-****`.
    pub holder_masked: String,
    pub care_unit: HsaId,
    pub revocation_reference: String,
}

/// Tells people the outcome.
#[async_trait]
pub trait Notifier: Send + Sync + fmt::Debug {
    /// Sends one notice. Idempotent by `key`: a retry reuses the key (e-mail: the Message-ID).
    async fn notify(&self, key: &str, notice: &Notice) -> Result<(), ConnectorError>;
}

/// The connectors a running gateway uses.
#[derive(Clone, Debug)]
pub struct Connectors {
    pub tjansteid: Arc<dyn TjansteId>,
    pub kiv: Arc<dyn Kiv>,
    pub notifier: Arc<dyn Notifier>,
}

impl Connectors {
    /// The connectors named in the configuration (validated by `Config::validate_for_serve`).
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let sim = &cfg.simulated;
        let faults = simulated::Faults {
            latency: std::time::Duration::from_millis(sim.latency_ms),
            failure_rate: sim.failure_rate,
        };
        let journal = (!sim.journal.as_os_str().is_empty()).then_some(sim.journal.as_path());
        let confirm_after = (sim.confirm_after_seconds >= 0.0)
            .then(|| std::time::Duration::from_secs_f64(sim.confirm_after_seconds));
        Self {
            tjansteid: Arc::new(simulated::SimulatedTjansteId::new(
                confirm_after,
                faults,
                journal,
            )),
            kiv: Arc::new(simulated::SimulatedKiv::new(
                sim.kiv_auto_employ,
                faults,
                journal,
            )),
            notifier: Arc::new(simulated::LogNotifier::new(faults, journal)),
        }
    }
}
