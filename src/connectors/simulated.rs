//! Simulated registries for dev mode and tests: real, configurable backends that keep state,
//! inject latency and failures, and record every side effect with its idempotency key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use ring::rand::SecureRandom;
use serde::Deserialize;

use super::{ConnectorError, CutCardReport, Kiv, Notice, Notifier, RevocationOutcome, TjansteId};
use crate::domain::{
    BASE64_SUFFIX, CardCertificate, CaseId, CertificateSource, Employment, HsaId, PersonEntry,
    Personnummer, Timestamp,
};

mod cards;
pub use cards::{SIMULATED_CARD_CA, SimulatedCardCa};

/// `[simulated]`: latency and failure injection and the journal, shared by every simulation
/// in use.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedSettings {
    /// Added to every simulated call.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// Share of simulated calls failing with a retryable error (0.0–1.0).
    pub failure_rate: f64,
    /// File recording every simulated side effect with its idempotency key.
    #[serde(default)]
    pub journal: Option<PathBuf>,
}

impl SimulatedSettings {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.failure_rate) {
            return Err("failure_rate must be between 0.0 and 1.0".into());
        }
        Ok(())
    }

    pub fn faults(&self) -> Faults {
        Faults {
            latency: self.latency,
            failure_rate: self.failure_rate,
        }
    }
}

/// `[tjansteid] kind = "simulated"`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TjansteIdSettings {
    /// When the simulated service desk confirms a report (`"3s"`), or `"never"`.
    #[serde(default)]
    pub confirm_after: ConfirmAfter,
}

/// When the simulated TjänsteID-service confirms a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ConfirmAfter {
    /// This long after the report was sent, when polled.
    After(Duration),
    /// Never: the outcome comes only through `RevocationService`.
    Never,
}

impl Default for ConfirmAfter {
    fn default() -> Self {
        Self::After(Duration::from_secs(3))
    }
}

impl TryFrom<String> for ConfirmAfter {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s.trim() == "never" {
            return Ok(Self::Never);
        }
        humantime_serde::re::humantime::parse_duration(&s)
            .map(Self::After)
            .map_err(|e| format!("expected a duration such as \"3s\" or \"never\": {e}"))
    }
}

impl ConfirmAfter {
    pub fn delay(self) -> Option<Duration> {
        match self {
            Self::After(d) => Some(d),
            Self::Never => None,
        }
    }
}

/// `[kiv] kind = "simulated"`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KivSettings {
    /// A look-up of an unknown person creates an employment first (every reported person is
    /// employed).
    #[serde(default = "yes")]
    pub auto_employ: bool,
}

fn yes() -> bool {
    true
}

/// Latency and failure injection shared by the simulations.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub latency: Duration,
    /// Probability (0.0–1.0) that a call fails with a retryable error.
    pub failure_rate: f64,
}

impl Faults {
    async fn apply(&self, what: &str) -> Result<(), ConnectorError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if self.failure_rate > 0.0 && random_unit() < self.failure_rate {
            return Err(ConnectorError::Retryable(format!(
                "simulated {what} failure"
            )));
        }
        Ok(())
    }
}

fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Appends `kind key` lines to a file when configured: tests read it back after killing the
/// process, to see which side effects ran and under which keys.
#[derive(Debug, Default)]
struct Journal(Option<Mutex<std::fs::File>>);

impl Journal {
    fn open(path: Option<&std::path::Path>) -> Self {
        Self(path.and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
                .map(Mutex::new)
        }))
    }

    fn record(&self, kind: &str, key: &str) {
        if let Some(f) = &self.0 {
            use std::io::Write;
            // One write per line: appends from the three connectors' handles never interleave.
            let line = format!("{kind} {key}\n");
            if let Ok(mut f) = f.lock() {
                let _ = f.write_all(line.as_bytes());
            }
        }
    }
}

/// Simulated TjänsteID-service. Confirms a report `confirm_after` after it was sent when
/// polled, or never (then only `RevocationService` decides).
#[derive(Debug)]
pub struct SimulatedTjansteId {
    confirm_after: Option<Duration>,
    faults: Faults,
    reports: Mutex<HashMap<String, u32>>,
    journal: Journal,
    refusing: std::sync::atomic::AtomicBool,
}

impl SimulatedTjansteId {
    pub fn new(
        confirm_after: Option<Duration>,
        faults: Faults,
        journal: Option<&std::path::Path>,
    ) -> Self {
        Self {
            confirm_after,
            faults,
            reports: Mutex::new(HashMap::new()),
            journal: Journal::open(journal),
            refusing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// While set, reports are refused permanently (a terminal error, like an SMTP 5xx).
    pub fn set_refusing(&self, refuse: bool) {
        self.refusing
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many times each key was delivered (a retry with the same key counts again).
    pub fn deliveries(&self) -> HashMap<String, u32> {
        self.reports.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn deliver(&self, kind: &str, key: &str) {
        if let Ok(mut m) = self.reports.lock() {
            *m.entry(key.to_owned()).or_default() += 1;
        }
        self.journal.record(kind, key);
    }
}

#[async_trait]
impl TjansteId for SimulatedTjansteId {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn report(&self, key: &str, _report: &CutCardReport) -> Result<(), ConnectorError> {
        self.faults.apply("report").await?;
        if self.refusing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ConnectorError::Terminal(
                "the service desk refused the report (simulated)".into(),
            ));
        }
        self.deliver("report", key);
        Ok(())
    }

    async fn remind(
        &self,
        key: &str,
        _report: &CutCardReport,
        _n: u32,
    ) -> Result<(), ConnectorError> {
        self.faults.apply("reminder").await?;
        self.deliver("remind", key);
        Ok(())
    }

    fn polls(&self) -> bool {
        self.confirm_after.is_some()
    }

    async fn fetch_outcome(
        &self,
        case_id: &CaseId,
        reported_at: Timestamp,
    ) -> Result<RevocationOutcome, ConnectorError> {
        self.faults.apply("outcome").await?;
        let Some(after) = self.confirm_after else {
            return Ok(RevocationOutcome::Pending);
        };
        let due = reported_at.0.saturating_add(after.as_micros() as i64);
        Ok(if crate::clock::now().0 >= due {
            RevocationOutcome::Confirmed {
                reference: format!("SIM-{}", &case_id.to_string()[..8]),
                certificates: vec![super::simulated_list::simulated_certificate(case_id)],
            }
        } else {
            RevocationOutcome::Pending
        })
    }
}

/// Simulated KIV: employments keyed by person and care unit, held in memory.
pub struct SimulatedKiv {
    /// When true, a look-up of an unknown person creates a plausible employment first
    /// (dev mode: every reported person is employed where reported).
    auto_employ: bool,
    faults: Faults,
    entries: Mutex<BTreeMap<(String, String), Employment>>,
    removed_keys: Mutex<HashSet<String>>,
    journal: Journal,
    /// Card certificates on the person entries; none unless asked for.
    cards: Option<Cards>,
}

/// The simulated CA and the person entries it issued certificates for.
struct Cards {
    ca: SimulatedCardCa,
    /// By the person's 12 digits: the person entry (HSA-id and card certificate), made at the
    /// first employment and shared by every employment of the person.
    persons: Mutex<BTreeMap<String, PersonEntry>>,
}

/// Without the entries: they are keyed by personnummer.
impl std::fmt::Debug for SimulatedKiv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedKiv")
            .field("auto_employ", &self.auto_employ)
            .field("faults", &self.faults)
            .field("card_certificates", &self.cards.is_some())
            .finish_non_exhaustive()
    }
}

const HSA_IDENTITY: &str = "hsaIdentity";
const USER_CERTIFICATE: &str = "userCertificate;binary";

impl SimulatedKiv {
    pub fn new(auto_employ: bool, faults: Faults, journal: Option<&std::path::Path>) -> Self {
        Self {
            auto_employ,
            faults,
            entries: Mutex::new(BTreeMap::new()),
            removed_keys: Mutex::new(HashSet::new()),
            journal: Journal::open(journal),
            cards: None,
        }
    }

    /// Employed people get a person entry with a synthetic HSA-id (`hsaIdentity`) and one card
    /// certificate (`userCertificate;binary`) from a new [`SimulatedCardCa`], as KIV may hold
    /// them — what dev mode and the core tests check on the simulated revocation list.
    pub fn with_card_certificates(mut self) -> Result<Self, String> {
        let ca = SimulatedCardCa::generate().map_err(|e| format!("the simulated card CA: {e}"))?;
        self.cards = Some(Cards {
            ca,
            persons: Mutex::new(BTreeMap::new()),
        });
        Ok(self)
    }

    /// The simulated issuing CA, when card certificates are on.
    pub fn card_ca(&self) -> Option<&SimulatedCardCa> {
        self.cards.as_ref().map(|c| &c.ca)
    }

    /// The card certificates (serial and issuer) the simulation issued to `person`; none
    /// before the person's first employment, or with card certificates off.
    pub fn card_certificates_of(&self, person: &Personnummer) -> Vec<CardCertificate> {
        let Some(cards) = &self.cards else {
            return Vec::new();
        };
        cards
            .persons
            .lock()
            .map(|p| {
                p.get(&person.expose_digits())
                    .map(certificates_on)
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// Every card certificate the simulation issued.
    pub fn card_certificates(&self) -> Vec<CardCertificate> {
        let Some(cards) = &self.cards else {
            return Vec::new();
        };
        cards
            .persons
            .lock()
            .map(|p| p.values().flat_map(certificates_on).collect())
            .unwrap_or_default()
    }

    /// The person's simulated HSA-id, when card certificates are on and the person has been
    /// employed.
    pub fn hsa_id_of(&self, person: &Personnummer) -> Option<HsaId> {
        let cards = self.cards.as_ref()?;
        let persons = cards.persons.lock().ok()?;
        let entry = persons.get(&person.expose_digits())?;
        HsaId::parse(entry.attributes.get(HSA_IDENTITY)?.first()?).ok()
    }

    /// An employment as this KIV holds it: [`Self::employment_for`], with the person entry
    /// when card certificates are on.
    fn employment(&self, person: &Personnummer, unit: &HsaId) -> Employment {
        let mut e = Self::employment_for(person, unit);
        if let Some(cards) = &self.cards {
            e.person = cards.person_entry(person, &e.dn);
        }
        e
    }

    fn slot(person: &Personnummer, unit: &HsaId) -> (String, String) {
        (person.expose_digits(), unit.to_string())
    }

    /// A KIV-shaped employment entry for a person at a unit.
    pub fn employment_for(person: &Personnummer, unit: &HsaId) -> Employment {
        let digits = person.expose_digits();
        let mut attributes = BTreeMap::new();
        attributes.insert(
            "objectClass".to_owned(),
            vec!["top".to_owned(), "vgrAnstallning".to_owned()],
        );
        attributes.insert("hsaPersonIdentityNumber".to_owned(), vec![digits.clone()]);
        attributes.insert("vgrOrgRel".to_owned(), vec![unit.to_string()]);
        attributes.insert(
            "hsaStartDate".to_owned(),
            vec!["20200101000000Z".to_owned()],
        );
        attributes.insert("title".to_owned(), vec!["Sjuksköterska".to_owned()]);
        Employment {
            dn: format!("cn={},cn={},ou=Personal,o=VGR", unit.as_str(), &digits[..8]),
            attributes,
            person: None,
        }
    }

    /// Puts an employment in place (tests, dev data).
    pub fn employ(&self, person: &Personnummer, unit: &HsaId) {
        if let Ok(mut e) = self.entries.lock() {
            e.insert(Self::slot(person, unit), self.employment(person, unit));
        }
    }

    /// Removes an employment behind the gateway's back, as a person in the admin tool would.
    pub fn remove_out_of_band(&self, person: &Personnummer, unit: &HsaId) -> bool {
        self.entries
            .lock()
            .map(|mut e| e.remove(&Self::slot(person, unit)).is_some())
            .unwrap_or(false)
    }

    pub fn contains(&self, person: &Personnummer, unit: &HsaId) -> bool {
        self.entries
            .lock()
            .map(|e| e.contains_key(&Self::slot(person, unit)))
            .unwrap_or(false)
    }

    /// Idempotency keys under which the gateway removed employments.
    pub fn removal_keys(&self) -> HashSet<String> {
        self.removed_keys
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default()
    }
}

#[async_trait]
impl Kiv for SimulatedKiv {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn lookup(
        &self,
        person: &Personnummer,
        unit: &HsaId,
    ) -> Result<Option<Employment>, ConnectorError> {
        self.faults.apply("KIV lookup").await?;
        let mut e = self
            .entries
            .lock()
            .map_err(|_| ConnectorError::Retryable("simulated KIV poisoned".into()))?;
        let slot = Self::slot(person, unit);
        if self.auto_employ && !e.contains_key(&slot) {
            e.insert(slot.clone(), self.employment(person, unit));
        }
        Ok(e.get(&slot).cloned())
    }

    async fn remove(
        &self,
        key: &str,
        person: &Personnummer,
        unit: &HsaId,
    ) -> Result<(), ConnectorError> {
        self.faults.apply("KIV removal").await?;
        if let Ok(mut e) = self.entries.lock() {
            e.remove(&Self::slot(person, unit));
        }
        if let Ok(mut k) = self.removed_keys.lock() {
            k.insert(key.to_owned());
        }
        self.journal.record("remove_kiv", key);
        Ok(())
    }

    async fn restore(&self, key: &str, snapshot: &Employment) -> Result<(), ConnectorError> {
        self.faults.apply("KIV restore").await?;
        let person = snapshot
            .attributes
            .get("hsaPersonIdentityNumber")
            .and_then(|v| v.first())
            .ok_or_else(|| {
                ConnectorError::Terminal("snapshot has no hsaPersonIdentityNumber".into())
            })?;
        let unit = snapshot
            .attributes
            .get("vgrOrgRel")
            .and_then(|v| v.first())
            .ok_or_else(|| ConnectorError::Terminal("snapshot has no vgrOrgRel".into()))?;
        if let Ok(mut e) = self.entries.lock() {
            e.entry((person.clone(), unit.clone()))
                .or_insert_with(|| snapshot.clone());
        }
        self.journal.record("restore_kiv", key);
        Ok(())
    }
}

impl Cards {
    /// The person's entry, made (HSA-id and card certificate) at the first call.
    fn person_entry(&self, person: &Personnummer, employment_dn: &str) -> Option<PersonEntry> {
        let mut persons = self.persons.lock().ok()?;
        let digits = person.expose_digits();
        if let Some(p) = persons.get(&digits) {
            return Some(p.clone());
        }
        // `P` and twelve digits counting up from 1: never a date, so never an identity number.
        let hsa_id = HsaId::parse(&format!(
            "{}-P{:012}",
            crate::devcerts::TEST_ORG,
            persons.len() + 1
        ))
        .ok()?;
        let der = match self.ca.issue(&hsa_id, "Simulated card holder (TEST)") {
            Ok(der) => der,
            Err(e) => {
                tracing::warn!(error = %e, "the simulated CA could not issue a card certificate");
                return None;
            }
        };
        let dn = employment_dn
            .split_once(',')
            .map_or(employment_dn, |(_, parent)| parent)
            .to_owned();
        let entry = PersonEntry {
            dn,
            attributes: BTreeMap::from([
                (HSA_IDENTITY.to_owned(), vec![hsa_id.to_string()]),
                (
                    format!("{USER_CERTIFICATE}{BASE64_SUFFIX}"),
                    vec![base64::engine::general_purpose::STANDARD.encode(der)],
                ),
            ]),
        };
        persons.insert(digits, entry.clone());
        Some(entry)
    }
}

/// The certificates on a simulated person entry, read.
fn certificates_on(entry: &PersonEntry) -> Vec<CardCertificate> {
    crate::domain::attribute_bytes(&entry.attributes, "userCertificate", &["binary"])
        .iter()
        .filter_map(|der| super::card_certs::read(der, CertificateSource::Kiv).ok())
        .map(|facts| facts.certificate)
        .collect()
}

/// Notifier that writes a log line per notice (no personal data) and keeps the notices.
#[derive(Debug)]
pub struct LogNotifier {
    faults: Faults,
    sent: Mutex<Vec<(String, Notice)>>,
    journal: Journal,
}

impl LogNotifier {
    pub fn new(faults: Faults, journal: Option<&std::path::Path>) -> Self {
        Self {
            faults,
            sent: Mutex::new(Vec::new()),
            journal: Journal::open(journal),
        }
    }

    pub fn sent(&self) -> Vec<(String, Notice)> {
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Notifier for LogNotifier {
    fn name(&self) -> &'static str {
        "log"
    }

    async fn notify(&self, key: &str, notice: &Notice) -> Result<(), ConnectorError> {
        self.faults.apply("notification").await?;
        tracing::info!(case_id = %notice.case_id, recipient = ?notice.recipient, key, "notice: card deregistered");
        if let Ok(mut s) = self.sent.lock() {
            s.push((key.to_owned(), notice.clone()));
        }
        self.journal.record("notify", key);
        Ok(())
    }
}
