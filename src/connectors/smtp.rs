//! TjänsteID-service and notifications over SMTP — today's real channel to the service desk.
//! STARTTLS is required unless the configuration explicitly allows plain SMTP. Every message's
//! `Message-ID` derives from the effect's idempotency key, so a retried send carries the same id
//! and the desk (or any mail system) can see it is a duplicate.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing::Instrument;
use tracing::field::Empty;

use super::{
    ConnectorError, CutCardReport, Notice, Notifier, Recipient, RevocationOutcome, TjansteId,
};
use crate::domain::{CaseId, Timestamp};

/// `[smtp]`: the relay, shared by the TjänsteID connector and the notifier of kind `smtp`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    #[serde(default = "submission_port")]
    pub port: u16,
    /// Sender of reports and notices, e.g. `eTjänstekort-gateway <noreply@example.se>`.
    pub from: String,
    /// Log in as this user; none: no authentication.
    #[serde(default)]
    pub login: Option<SmtpLogin>,
    /// PEM bundle of CAs for the server's certificate; none: the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Plain SMTP without STARTTLS; only for tests on loopback.
    #[serde(default)]
    pub allow_plain: bool,
    #[serde(default = "localhost")]
    pub hello_name: String,
    /// Bounds a whole send.
    #[serde(default = "twenty_seconds", with = "humantime_serde")]
    pub timeout: Duration,
}

/// SMTP AUTH credentials: both or neither.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpLogin {
    pub username: String,
    #[serde(deserialize_with = "crate::secret::required")]
    pub password: SecretString,
}

/// `[tjansteid] kind = "smtp"`: where reports go (the transport is `[smtp]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeskSettings {
    /// TjänsteID-service's service-desk address.
    pub service_desk: String,
    /// An extra line in every report on how the desk answers.
    #[serde(default)]
    pub reply_instructions: String,
}

fn submission_port() -> u16 {
    587
}

fn localhost() -> String {
    "localhost".into()
}

/// Below the engine's step limit (0.8 × the 30 s default lease), so SMTP's own timeout, with
/// its clearer error, fires first.
fn twenty_seconds() -> Duration {
    Duration::from_secs(20)
}

/// One SMTP relay, shared by the TjänsteID connector and the notifier.
#[derive(Clone)]
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    id_domain: String,
    timeout: Duration,
    /// The relay's host and port, for the client spans.
    server: (String, u16),
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp")
            .field("from", &self.from.email.to_string())
            .finish_non_exhaustive()
    }
}

fn classify(what: &str, e: lettre::transport::smtp::Error) -> ConnectorError {
    let msg = super::redact(&format!("{what}: {e}"));
    if e.is_permanent() {
        ConnectorError::Terminal(msg)
    } else {
        // Transient replies (4xx), timeouts, refused connections and TLS trouble may heal.
        ConnectorError::Retryable(msg)
    }
}

impl Smtp {
    /// Checks the settings and reads the CA bundle; connects only when used.
    pub fn new(s: &SmtpSettings) -> Result<Self, String> {
        if s.host.trim().is_empty() {
            return Err("smtp.host is required".into());
        }
        let from: Mailbox = s
            .from
            .parse()
            .map_err(|e| format!("smtp.from is not a mailbox ({e})"))?;
        let tls = if s.allow_plain {
            Tls::None
        } else {
            let mut b = TlsParameters::builder(s.host.clone());
            if let Some(pem) = super::read_optional(s.ca_file.as_deref(), "smtp.ca_file")? {
                b = b
                    .certificate_store(CertificateStore::None)
                    .add_root_certificate(
                        Certificate::from_pem(&pem).map_err(|e| format!("smtp.ca_file: {e}"))?,
                    );
            }
            Tls::Required(b.build_rustls().map_err(|e| format!("smtp TLS: {e}"))?)
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.clone())
            .port(s.port)
            .tls(tls)
            .timeout(Some(s.timeout))
            .hello_name(ClientId::Domain(s.hello_name.clone()));
        if let Some(login) = &s.login {
            builder = builder.credentials(Credentials::new(
                login.username.clone(),
                login.password.expose_secret().to_owned(),
            ));
        }
        let id_domain = from.email.domain().to_owned();
        Ok(Self {
            transport: builder.build(),
            from,
            id_domain,
            timeout: s.timeout,
            server: (s.host.clone(), s.port),
        })
    }

    /// `<key@domain>` with the key's `:` made dots (not allowed in a Message-ID's left part).
    pub fn message_id(&self, key: &str) -> String {
        format!("<{}@{}>", key.replace(':', "."), self.id_domain)
    }

    async fn send(
        &self,
        key: &str,
        to: &str,
        subject: String,
        body: String,
    ) -> Result<(), ConnectorError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| ConnectorError::Terminal(format!("recipient address: {e}")))?;
        let message = Message::builder()
            .message_id(Some(self.message_id(key)))
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| ConnectorError::Terminal(format!("message: {e}")))?;
        // A client span per send: the relay and its reply code — never a recipient, subject
        // or body.
        let span = tracing::info_span!(
            "smtp",
            otel.name = "smtp send",
            otel.kind = "client",
            "server.address" = %self.server.0,
            "server.port" = i64::from(self.server.1),
            "smtp.reply_code" = Empty,
            otel.status_code = Empty,
            "error.type" = Empty,
        );
        // lettre's own timeout does not cover every wait (e.g. the reply to DATA): bound the
        // whole send, so a stalled server is a retryable failure, not a hung step.
        let sent = tokio::time::timeout(self.timeout, self.transport.send(message))
            .instrument(span.clone())
            .await;
        let code = match &sent {
            Ok(Ok(response)) => Some(response.code()),
            Ok(Err(e)) => e.status(),
            Err(_) => None,
        };
        if let Some(code) = code {
            span.record("smtp.reply_code", i64::from(u16::from(code)));
        }
        let result = match sent {
            Ok(r) => r.map(|_| ()).map_err(|e| classify("send", e)),
            Err(_) => Err(ConnectorError::Retryable(format!(
                "send: no answer from the SMTP server within {:?}",
                self.timeout
            ))),
        };
        if let Err(e) = &result {
            super::record_failure(&span, e);
        }
        result
    }

    /// Connects, negotiates STARTTLS, authenticates (if configured) and says NOOP.
    pub async fn probe(&self) -> Result<(), ConnectorError> {
        match tokio::time::timeout(self.timeout, self.transport.test_connection()).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(ConnectorError::Retryable(
                "SMTP server did not answer NOOP".into(),
            )),
            Ok(Err(e)) => Err(classify("connect", e)),
            Err(_) => Err(ConnectorError::Retryable("connect: timed out".into())),
        }
    }
}

/// Reports cut cards to TjänsteID-service's service desk by e-mail. The outcome comes back
/// through `RevocationService`; this connector does not poll.
#[derive(Debug)]
pub struct SmtpTjansteId {
    smtp: Smtp,
    service_desk: String,
    reply_instructions: String,
}

impl SmtpTjansteId {
    pub fn new(
        smtp: Smtp,
        service_desk: String,
        reply_instructions: String,
    ) -> Result<Self, String> {
        service_desk
            .parse::<Mailbox>()
            .map_err(|e| format!("tjansteid.service_desk is not an address ({e})"))?;
        Ok(Self {
            smtp,
            service_desk,
            reply_instructions,
        })
    }

    /// The report as the routine asks for it: personnummer, card number, holder's name, care
    /// unit — plus the case reference and how to answer.
    pub fn report_body(&self, r: &CutCardReport, reminder: Option<u32>) -> String {
        let pnr = r.personnummer.expose_digits();
        let mut b = String::new();
        if let Some(n) = reminder {
            b.push_str(&format!(
                "PÅMINNELSE {n}: vi har ännu inte fått besked om anmälan nedan.\n\n"
            ));
        }
        b.push_str("Anmälan om klippt eTjänstekort – begäran om avregistrering\n\n");
        b.push_str(&format!("Ärende: {}\n", r.case_id));
        b.push_str(&format!("Personnummer: {}-{}\n", &pnr[..8], &pnr[8..]));
        b.push_str(&format!("Kortnummer: {}\n", r.card_number));
        b.push_str(&format!(
            "Kortinnehavarens namn: {}\n",
            r.holder_name.as_str()
        ));
        b.push_str(&format!("Vårdenhet: {}\n", r.care_unit));
        b.push_str(&format!("Vårdgivare: {}\n", r.care_provider));
        b.push_str(&format!(
            "Anmält av (verksamhetschef): {} <{}>\n\n",
            r.reporter_name.as_str(),
            r.reporter_email
        ));
        b.push_str("Kortet är mottaget och klippt rakt över chipet.\n\n");
        b.push_str("Så lämnar ni besked:\n");
        b.push_str(&format!(
            "  Bekräfta avregistreringen: etjanstekort.v1.RevocationService/ConfirmRevocation \
             med deregistration_id = {} och er referens.\n",
            r.case_id
        ));
        b.push_str(&format!(
            "  Avslå: etjanstekort.v1.RevocationService/RejectRevocation med deregistration_id = {} och skäl.\n",
            r.case_id
        ));
        if !self.reply_instructions.is_empty() {
            b.push_str(&format!("  {}\n", self.reply_instructions));
        }
        b.push_str("\nAnställningen i KIV tas bort först när avregistreringen är bekräftad.\n");
        b
    }
}

#[async_trait]
impl TjansteId for SmtpTjansteId {
    fn name(&self) -> &'static str {
        "smtp"
    }

    async fn report(&self, key: &str, report: &CutCardReport) -> Result<(), ConnectorError> {
        let subject = format!(
            "Avregistrering av klippt eTjänstekort – ärende {}",
            report.case_id
        );
        self.smtp
            .send(
                key,
                &self.service_desk,
                subject,
                self.report_body(report, None),
            )
            .await
    }

    async fn remind(
        &self,
        key: &str,
        report: &CutCardReport,
        n: u32,
    ) -> Result<(), ConnectorError> {
        let subject = format!(
            "Påminnelse {n}: avregistrering av eTjänstekort – ärende {}",
            report.case_id
        );
        self.smtp
            .send(
                key,
                &self.service_desk,
                subject,
                self.report_body(report, Some(n)),
            )
            .await
    }

    fn polls(&self) -> bool {
        false
    }

    async fn fetch_outcome(
        &self,
        _case_id: &CaseId,
        _reported_at: Timestamp,
    ) -> Result<RevocationOutcome, ConnectorError> {
        Ok(RevocationOutcome::Pending)
    }

    async fn probe(&self) -> Result<(), ConnectorError> {
        self.smtp.probe().await
    }
}

/// Tells the head of operations and the card holder, in Swedish, that the card is deregistered.
#[derive(Debug)]
pub struct SmtpNotifier {
    smtp: Smtp,
}

impl SmtpNotifier {
    pub fn new(smtp: Smtp) -> Self {
        Self { smtp }
    }

    /// Subject and body; the personnummer appears only masked.
    pub fn compose(n: &Notice) -> (String, String) {
        match n.recipient {
            Recipient::HeadOfOperations => (
                format!("eTjänstekort avregistrerat – ärende {}", n.case_id),
                format!(
                    "Hej!\n\nTjänsteID-service har avregistrerat eTjänstekortet för {} ({}) vid vårdenhet {}.\n\
                     Referens: {}\nÄrende: {}\n\nAnställningen i KIV tas nu bort enligt rutinen.\n",
                    n.holder_name.as_str(),
                    n.holder_masked,
                    n.care_unit,
                    n.revocation_reference,
                    n.case_id
                ),
            ),
            Recipient::CardHolder => (
                "Ditt eTjänstekort är avregistrerat".to_owned(),
                format!(
                    "Hej {}!\n\nDitt eTjänstekort är nu avregistrerat och kan inte längre användas.\n\
                     Referens: {}\n\nHar du frågor, kontakta din verksamhetschef.\n",
                    n.holder_name.as_str(),
                    n.revocation_reference
                ),
            ),
        }
    }
}

#[async_trait]
impl Notifier for SmtpNotifier {
    fn name(&self) -> &'static str {
        "smtp"
    }

    async fn notify(&self, key: &str, notice: &Notice) -> Result<(), ConnectorError> {
        let (subject, body) = Self::compose(notice);
        self.smtp.send(key, notice.to.as_str(), subject, body).await
    }

    async fn probe(&self) -> Result<(), ConnectorError> {
        self.smtp.probe().await
    }
}
