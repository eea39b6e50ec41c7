//! Ports to the outside systems — TjänsteID-service, KIV, and the notifier — and their
//! implementations. Each error is classified retryable or terminal where it arises; the engine's
//! retry logic reads only that classification.

pub mod card_certs;
pub mod crl_status;
pub mod ldap;
pub mod simulated;
pub mod simulated_list;
pub mod smtp;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::domain::{
    CardCertificate, CardNumber, CaseId, Email, Employment, HsaId, PersonName, Personnummer,
    Timestamp,
};

/// `[tjansteid]`: how reports reach TjänsteID-service. `kind` picks the connector; the rest of
/// the section is that connector's own settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TjansteIdSettings {
    Simulated(simulated::TjansteIdSettings),
    /// A structured e-mail to the service desk over the `[smtp]` relay.
    Smtp(smtp::DeskSettings),
}

/// `[kiv]`: how the gateway reaches KIV.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum KivSettings {
    Simulated(simulated::KivSettings),
    Ldap(Box<ldap::LdapSettings>),
    /// No KIV access: every case uses the health-care office route, and the office removes
    /// employments.
    Office {},
}

/// `[revocation_check]`: whether — and against what — a confirmed revocation is verified on
/// the card certificates' CA revocation lists before KIV (docs/revocation-check.md).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RevocationCheckSettings {
    /// The confirmation alone suffices (as before the check existed).
    #[default]
    Off,
    /// A list that follows the simulated desk (dev and tests).
    Simulated(simulated_list::SimulatedListSettings),
    /// The card certificates' CA revocation lists (`docs/revocation-check.md`).
    Crl(Box<crl_status::CrlCheckSettings>),
}

impl RevocationCheckSettings {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Crl(s) => s.validate(),
            Self::Off | Self::Simulated(_) => Ok(()),
        }
    }
}

/// `[notifier]`: how people are told the outcome.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NotifierSettings {
    /// Notices go to the log, without personal data.
    Log {},
    /// E-mail over the `[smtp]` relay.
    Smtp {},
}

impl TjansteIdSettings {
    pub fn uses_smtp(&self) -> bool {
        matches!(self, Self::Smtp(_))
    }
}

impl NotifierSettings {
    pub fn uses_smtp(&self) -> bool {
        matches!(self, Self::Smtp {})
    }
}

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

/// Marks a client span failed with the error's class only: a server's or library's text may
/// quote a DN, so it stays out of the trace (the step span carries the redacted message).
pub(crate) fn record_failure(span: &tracing::Span, e: &ConnectorError) {
    span.record("otel.status_code", "error");
    span.record(
        "error.type",
        if e.is_retryable() {
            "retryable"
        } else {
            "terminal"
        },
    );
}

/// Makes a remote server's text safe to keep: servers echo addresses and names back
/// ("550 <holder@example.se>: rejected"), and the message ends up in `state_reason`, the
/// append-only audit trail and the log. E-mail addresses become `<address>`; identity numbers,
/// found by the same rule that guards every free-text input (`domain::identity_scan`), and
/// bare runs of six or more digits (a date of birth) become `<number>`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_inclusive(char::is_whitespace) {
        let (core, tail) = word.split_at(word.trim_end().len());
        if core.contains('@') {
            let open = core.starts_with('<');
            let close = core.ends_with(['>', ':', ',', ';', '.']);
            out.push_str("<address>");
            if close && !open {
                out.push_str(&core[core.len() - 1..]);
            } else if let Some(c) = core.chars().last().filter(|c| matches!(c, ':' | ',' | ';')) {
                out.push(c);
            }
        } else {
            out.push_str(core);
        }
        out.push_str(tail);
    }
    redact_numbers(&out)
}

/// Replaces what `identity_scan` finds, then any remaining unbroken run of six or more
/// digits: outside text is not ours to reject, so a date of birth goes too. ("550 5.1.1"
/// stays readable.)
fn redact_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for span in crate::domain::identity_scan::find(text) {
        out.push_str(&text[last..span.start]);
        out.push_str("<number>");
        last = span.end;
    }
    out.push_str(&text[last..]);
    let mut redacted = String::with_capacity(out.len());
    let mut digits = String::new();
    for c in out.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.len() >= 6 {
            redacted.push_str("<number>");
        } else {
            redacted.push_str(&digits);
        }
        digits.clear();
        if c != '\0' {
            redacted.push(c);
        }
    }
    redacted
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
    Confirmed {
        reference: String,
        /// The card's certificates the service names as revoked (may be none).
        certificates: Vec<CardCertificate>,
    },
    Rejected {
        reason: String,
    },
}

/// TjänsteID-service: receives reports of cut cards.
#[async_trait]
pub trait TjansteId: Send + Sync + fmt::Debug {
    /// Which implementation this is (`simulated`, `ldap`, `smtp`, `office`, `log`): tags the
    /// saga step spans; never anything about a case.
    fn name(&self) -> &'static str;

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

    /// Whether the service can be reached now (readiness).
    async fn probe(&self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// KIV (Katalog i Väst): the employment of a person at a care unit.
#[async_trait]
pub trait Kiv: Send + Sync + fmt::Debug {
    /// Which implementation this is (`simulated`, `ldap`, `smtp`, `office`, `log`): tags the
    /// saga step spans; never anything about a case.
    fn name(&self) -> &'static str;

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

    /// Whether the directory can be reached now (readiness).
    async fn probe(&self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// A CA's revocation list as an answer was read from it: whose, when it was issued, until
/// when it holds, and where it came from (a URL or file path: never anything about a person).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationList {
    pub issuer: String,
    pub this_update: Timestamp,
    pub next_update: Timestamp,
    pub source: String,
}

/// What a card certificate's issuer publishes about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateStatus {
    /// Listed as revoked.
    Revoked { list: RevocationList },
    /// Not on the list: still valid as far as the list issued at `list.this_update` knows.
    NotListed { list: RevocationList },
}

impl CertificateStatus {
    pub fn list(&self) -> &RevocationList {
        match self {
            Self::Revoked { list } | Self::NotListed { list } => list,
        }
    }
}

/// The card certificates' revocation as their issuing CA publishes it (issue #14): the
/// verification between TjänsteID-service's confirmation and the removal from KIV.
///
/// An implementation answers only from a list that is trustworthy at `now`: its signature
/// verified with a configured CA's key, and `now` not past its `nextUpdate`. Otherwise it
/// fails `Retryable` (list unreachable, stale, or wrongly signed — the message says which),
/// or `Terminal` when the certificate's issuer is not a configured CA.
#[async_trait]
pub trait RevocationStatus: Send + Sync + fmt::Debug {
    /// Which implementation this is (`simulated`, `crl`): tags spans and metrics.
    fn name(&self) -> &'static str;

    /// The certificate's status on its issuer's current list. Read-only; safe to retry.
    async fn status(
        &self,
        certificate: &CardCertificate,
        now: Timestamp,
    ) -> Result<CertificateStatus, ConnectorError>;

    /// Whether lists can be had now (readiness).
    async fn probe(&self) -> Result<(), ConnectorError> {
        Ok(())
    }
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
    /// Which implementation this is (`simulated`, `ldap`, `smtp`, `office`, `log`): tags the
    /// saga step spans; never anything about a case.
    fn name(&self) -> &'static str;

    /// Sends one notice. Idempotent by `key`: a retry reuses the key (e-mail: the Message-ID).
    async fn notify(&self, key: &str, notice: &Notice) -> Result<(), ConnectorError>;

    /// Whether notices can be sent now (readiness).
    async fn probe(&self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// The connectors a running gateway uses.
#[derive(Clone, Debug)]
pub struct Connectors {
    pub tjansteid: Arc<dyn TjansteId>,
    pub kiv: Arc<dyn Kiv>,
    pub notifier: Arc<dyn Notifier>,
    /// False when KIV is left to the health-care office (`kiv.kind = "office"`).
    pub gateway_removes_kiv: bool,
    /// The card certificates' revocation check; `None` when it is switched off (then
    /// TjänsteID-service's confirmation alone lets the case go on to KIV).
    pub revocation: Option<Arc<dyn RevocationStatus>>,
}

impl Connectors {
    /// Probes every connector; the first failure, named.
    pub async fn probe(&self) -> Result<(), String> {
        for (name, result) in self.probe_each().await {
            result.map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(())
    }

    /// Probes every connector: each one's name (as in its gRPC health entry,
    /// `etjanstekort.connector.<name>`) and result.
    pub async fn probe_each(&self) -> [(&'static str, Result<(), ConnectorError>); 3] {
        let (t, k, n) = tokio::join!(
            self.tjansteid.probe(),
            self.kiv.probe(),
            self.notifier.probe()
        );
        [("tjansteid", t), ("kiv", k), ("notifier", n)]
    }
}

/// The file's bytes, or `None` when no file is configured.
fn read_optional(path: Option<&std::path::Path>, what: &str) -> Result<Option<Vec<u8>>, String> {
    let Some(path) = path else {
        return Ok(None);
    };
    std::fs::read(path)
        .map(Some)
        .map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// A rustls client configuration trusting `ca_pem`, or the system's roots when `None`.
pub fn tls_client_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("CA bundle: {e}"))?;
                roots.add(cert).map_err(|e| format!("CA bundle: {e}"))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err("no trusted CA certificates (set a ca_file)".into());
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// KIV when the gateway has no access to it: the health-care office removes employments, and
/// there is nothing to snapshot or guard.
#[derive(Debug)]
pub struct OfficeOnly;

#[async_trait]
impl Kiv for OfficeOnly {
    fn name(&self) -> &'static str {
        "office"
    }

    async fn lookup(
        &self,
        _: &Personnummer,
        _: &HsaId,
    ) -> Result<Option<Employment>, ConnectorError> {
        Ok(None)
    }

    async fn remove(&self, _: &str, _: &Personnummer, _: &HsaId) -> Result<(), ConnectorError> {
        Err(ConnectorError::Terminal(
            "this gateway has no KIV access; the health-care office removes employments".into(),
        ))
    }

    async fn restore(&self, _: &str, _: &Employment) -> Result<(), ConnectorError> {
        Err(ConnectorError::Terminal(
            "this gateway has no KIV access".into(),
        ))
    }
}
