//! The `RevocationStatus` port answered from the certificate revocation lists (CRLs) of the
//! configured issuing CAs of card certificates (issue #14): `[revocation_check] kind = "crl"`.
//!
//! The lists are held by a `CrlStore` (the same machinery as the client certificates of mutual
//! TLS, with its own metrics: `etk_card_crl_*`): from configured files and URLs, and from the
//! `http://` distribution points named in card certificates whose issuer is a configured CA.
//! A list is believed only when its signature verifies with a configured CA's key, it is a full
//! list (not a delta CRL) and it is not older than the list held (no roll-back). An answer is
//! given only from a list that is current at the `now` asked about (not past its `nextUpdate`:
//! the saga believes a verification only if it was read by then); otherwise the check fails
//! `Retryable` with the reason, and the saga step waits.
//!
//! A certificate listed only on hold (`certificateHold`) is *not listed* here: a hold can be
//! lifted, so it does not show that the card is revoked for good (the engine then judges the
//! list as for any certificate not on it). Entries `removeFromCRL` revoke nothing either.
//!
//! Nothing about the card holder is read or kept here: serial numbers, CA names, URLs and paths.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Deserialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{CertificateStatus, ConnectorError, RevocationList, RevocationStatus};
use crate::crl::{CrlSettings, CrlStore, CrlUse, Policy, read_pem_certificates};
use crate::domain::{CardCertificate, Timestamp, same_issuer};
use crate::metrics::Metrics;

/// At most this many distribution points are kept per CA (the store has its own bound).
const MAX_URLS_PER_CA: usize = 16;

/// `[revocation_check] kind = "crl"`: where the card certificates' CRLs come from and how far
/// they are trusted.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlCheckSettings {
    /// PEM bundle of the trusted issuing CAs of card certificates (e.g. the SITHS e-id Person
    /// CAs). Only their CRLs are believed, and only certificates they issued are checked.
    pub ca_file: PathBuf,
    /// CRL files (DER or PEM, several PEM blocks allowed); re-read when they change.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Plain-HTTP URLs of CRLs (CRLs are signed: their integrity does not rest on TLS).
    #[serde(default)]
    pub urls: Vec<String>,
    /// Also fetch the `http://` CRL distribution points named in card certificates whose
    /// issuer is a configured CA (at most 16 per CA).
    #[serde(default = "default_distribution_points")]
    pub distribution_points: bool,
    /// A list's URLs are fetched again at least this often (when a check asks), and at once
    /// when the list is past its `nextUpdate`.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// One HTTP fetch (connect, request and body) must finish within this.
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Attempts per fetch (the first included); the pause between them doubles from 1 s.
    #[serde(default = "default_fetch_attempts")]
    pub fetch_attempts: u32,
    /// At most one round of fetches per CA this often, however many checks ask: a CA's
    /// distribution point is not hammered while it is down or its list is late.
    #[serde(default = "default_min_fetch_interval", with = "humantime_serde")]
    pub min_fetch_interval: Duration,
}

fn default_distribution_points() -> bool {
    true
}

fn default_refresh() -> Duration {
    Duration::from_secs(3600)
}

fn default_fetch_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_fetch_attempts() -> u32 {
    3
}

fn default_min_fetch_interval() -> Duration {
    Duration::from_secs(10)
}

impl CrlCheckSettings {
    /// These settings with the defaults for everything but the CA bundle.
    pub fn with_ca_file(ca_file: PathBuf) -> Self {
        Self {
            ca_file,
            files: Vec::new(),
            urls: Vec::new(),
            distribution_points: default_distribution_points(),
            refresh: default_refresh(),
            fetch_timeout: default_fetch_timeout(),
            fetch_attempts: default_fetch_attempts(),
            min_fetch_interval: default_min_fetch_interval(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.ca_file.as_os_str().is_empty() {
            return Err("revocation_check.ca_file must name the PEM bundle of the card certificates' issuing CAs".into());
        }
        if self.files.is_empty() && self.urls.is_empty() && !self.distribution_points {
            return Err(
                "revocation_check: no CRL source (set files, urls or distribution_points = true)"
                    .into(),
            );
        }
        self.store_settings()
            .validate()
            .map_err(|e| format!("revocation_check.{}", e.trim_start_matches("revocation.")))
    }

    /// The settings of the store (the grace and policies are the TLS use's and are not read
    /// here: a list past its `nextUpdate` is stale).
    fn store_settings(&self) -> CrlSettings {
        CrlSettings {
            files: self.files.clone(),
            urls: self.urls.clone(),
            distribution_points: self.distribution_points,
            refresh: self.refresh,
            fetch_timeout: self.fetch_timeout,
            fetch_attempts: self.fetch_attempts,
            stale_grace: Duration::ZERO,
            when_stale: Policy::Refuse,
            without_crl: Policy::Refuse,
        }
    }
}

/// One configured issuing CA.
#[derive(Debug)]
struct Ca {
    /// Its subject, raw DER (the key of its CRL in the store).
    subject: Vec<u8>,
    /// Its subject as text (a CA's name).
    name: String,
    /// Serialises the CA's refreshes; when the last ones began.
    rounds: tokio::sync::Mutex<Rounds>,
}

/// When a CA's sources were last tried.
#[derive(Debug, Default)]
struct Rounds {
    /// Its URLs fetched (and, for an outdated list, every file re-read).
    fetched: Option<tokio::time::Instant>,
    /// The files looked at for a change.
    files_checked: Option<tokio::time::Instant>,
}

/// Card certificates checked on their issuing CAs' CRLs.
#[derive(Debug)]
pub struct CrlRevocationStatus {
    settings: CrlCheckSettings,
    store: CrlStore,
    cas: Vec<Ca>,
    /// The distribution points learnt from each CA's certificates (by index into `cas`).
    learnt: Mutex<Vec<BTreeSet<String>>>,
}

impl CrlRevocationStatus {
    /// Reads the CA bundle; nothing is fetched until a certificate is checked.
    pub fn new(settings: &CrlCheckSettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        settings.validate()?;
        let ders = read_pem_certificates(&settings.ca_file)
            .map_err(|e| format!("revocation_check.ca_file: {e}"))?;
        let mut cas: Vec<Ca> = Vec::new();
        for der in &ders {
            let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| {
                format!(
                    "revocation_check.ca_file {}: not a certificate: {e}",
                    settings.ca_file.display()
                )
            })?;
            let subject = cert.subject().as_raw().to_vec();
            // A re-keyed CA appears twice under one name: one entry, both keys trusted.
            if cas.iter().all(|c| c.subject != subject) {
                cas.push(Ca {
                    subject,
                    name: cert.subject().to_string(),
                    rounds: tokio::sync::Mutex::default(),
                });
            }
        }
        let store = CrlStore::for_use(CrlUse::CardCheck, settings.store_settings(), &ders, metrics);
        Ok(Self {
            settings: settings.clone(),
            learnt: Mutex::new(vec![BTreeSet::new(); cas.len()]),
            store,
            cas,
        })
    }

    /// The configured CAs' names.
    pub fn ca_names(&self) -> Vec<&str> {
        self.cas.iter().map(|c| c.name.as_str()).collect()
    }

    fn lock_learnt(&self) -> std::sync::MutexGuard<'_, Vec<BTreeSet<String>>> {
        self.learnt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Learns the certificate's `http://` distribution points for CA `at`.
    fn learn(&self, at: usize, certificate: &CardCertificate) {
        if !self.settings.distribution_points {
            return;
        }
        for url in &certificate.crl_urls {
            if !url.starts_with("http://") {
                continue;
            }
            let mut learnt = self.lock_learnt();
            let set = &mut learnt[at];
            if set.contains(url) || set.len() >= MAX_URLS_PER_CA {
                continue;
            }
            drop(learnt);
            self.store.learn_url(url);
            // Kept only when the store holds it (a valid URL within its bound).
            if self.store.knows_url(url) {
                self.lock_learnt()[at].insert(url.clone());
            }
        }
    }

    /// The URLs that may carry CA `at`'s list: the configured ones and its learnt points.
    fn urls_of(&self, at: usize) -> Vec<String> {
        let mut urls: Vec<String> = self.settings.urls.clone();
        urls.extend(self.lock_learnt()[at].iter().cloned());
        urls.sort();
        urls.dedup();
        urls
    }

    /// Why the sources that may carry CA `at`'s list were refused last (empty: none was).
    fn refusals(&self, at: usize) -> Vec<String> {
        let mut sources: Vec<String> = self
            .settings
            .files
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        sources.extend(self.urls_of(at));
        sources
            .iter()
            .filter_map(|s| self.store.refusal(s))
            .collect()
    }

    /// Brings CA `at`'s list up to date for an answer at `now`. When no list is held or it is
    /// past its `nextUpdate`: every file re-read and the CA's URLs fetched at once. Otherwise:
    /// changed files re-read, and the URLs fetched on their schedule (`refresh`, or the
    /// list's `nextUpdate`). Either at most once per CA per `min_fetch_interval`.
    async fn bring_up_to_date(&self, at: usize, now: SystemTime) {
        let ca = &self.cas[at];
        let mut rounds = ca.rounds.lock().await;
        let interval = self.settings.min_fetch_interval;
        let passed = |t: Option<tokio::time::Instant>| t.is_none_or(|t| t.elapsed() >= interval);
        let urls = self.urls_of(at);
        let outdated = self
            .store
            .snapshot()
            .for_issuer(&ca.subject)
            .is_none_or(|crl| now > crl.next_update());
        if outdated {
            if !passed(rounds.fetched) {
                tracing::debug!(ca = %ca.name, "CRL sources tried recently; not again yet");
                return;
            }
            let started = Some(tokio::time::Instant::now());
            rounds.fetched = started;
            rounds.files_checked = started;
            // A file refused before (or replaced within its stamp's resolution) is read too.
            self.store.refresh_files(true);
            self.store.refresh_urls_in(&urls, true).await;
            return;
        }
        if !self.settings.files.is_empty() && passed(rounds.files_checked) {
            rounds.files_checked = Some(tokio::time::Instant::now());
            self.store.refresh_files(false);
        }
        if urls.iter().any(|u| self.store.is_due(u)) && passed(rounds.fetched) {
            rounds.fetched = Some(tokio::time::Instant::now());
            self.store.refresh_urls_in(&urls, false).await;
        }
    }
}

/// A serial number's octets from its lowercase hex (as `CardCertificate` keeps it).
fn serial_octets(serial: &str) -> Result<Vec<u8>, String> {
    let even = if serial.len() % 2 == 1 {
        format!("0{serial}")
    } else {
        serial.to_owned()
    };
    hex::decode(even).map_err(|_| format!("serial number {serial:?} is not hexadecimal"))
}

fn system_time(t: Timestamp) -> SystemTime {
    match u64::try_from(t.0) {
        Ok(us) => UNIX_EPOCH + Duration::from_micros(us),
        Err(_) => UNIX_EPOCH,
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[async_trait]
impl RevocationStatus for CrlRevocationStatus {
    fn name(&self) -> &'static str {
        "crl"
    }

    async fn status(
        &self,
        certificate: &CardCertificate,
        now: Timestamp,
    ) -> Result<CertificateStatus, ConnectorError> {
        let at = self
            .cas
            .iter()
            .position(|ca| same_issuer(&ca.name, &certificate.issuer))
            .ok_or_else(|| {
                ConnectorError::Terminal(format!(
                    "issuer {} of certificate serial {} is not a configured CA of card certificates (revocation_check.ca_file)",
                    certificate.issuer, certificate.serial
                ))
            })?;
        let serial = serial_octets(&certificate.serial).map_err(ConnectorError::Terminal)?;
        let ca = &self.cas[at];
        let now = system_time(now);
        self.learn(at, certificate);
        self.bring_up_to_date(at, now).await;

        let snapshot = self.store.snapshot();
        let Some(crl) = snapshot.for_issuer(&ca.subject) else {
            let refusals = self.refusals(at);
            let why = if !refusals.is_empty() {
                refusals.join("; ")
            } else if self.settings.files.is_empty() && self.urls_of(at).is_empty() {
                "no source names it: no configured file or URL holds it, and the certificate names no http:// CRL distribution point".to_owned()
            } else {
                "no source has yielded it yet".to_owned()
            };
            return Err(ConnectorError::Retryable(format!(
                "no trustworthy CRL of CA {}: {why}",
                ca.name
            )));
        };
        // Past its nextUpdate the list is stale: no grace, as the saga believes a verification
        // only if it was read at or before the list's nextUpdate.
        if crl.is_stale(now, Duration::ZERO) {
            let refusals = self.refusals(at);
            let since = rfc3339(crl.next_update());
            let mut message = format!(
                "the CRL of CA {} (thisUpdate {}, from {}) is stale since {since}; no newer list is believed yet",
                ca.name,
                rfc3339(crl.this_update()),
                crl.source()
            );
            if !refusals.is_empty() {
                message.push_str(": ");
                message.push_str(&refusals.join("; "));
            }
            return Err(ConnectorError::Retryable(message));
        }
        let list = RevocationList {
            issuer: ca.name.clone(),
            this_update: Timestamp::from_system(crl.this_update()),
            next_update: Timestamp::from_system(crl.next_update()),
            source: crl.source().to_owned(),
        };
        Ok(if crl.is_revoked(&serial) {
            CertificateStatus::Revoked { list }
        } else {
            if crl.is_on_hold(&serial) {
                tracing::info!(serial = %certificate.serial, ca = %ca.name, source = %crl.source(),
                    "card certificate only on hold (certificateHold) on its CA's CRL: not revoked");
            }
            CertificateStatus::NotListed { list }
        })
    }

    /// Always ready, by choice: the probe does no I/O and does not judge the lists. A CA's
    /// list that is missing or stale (its distribution point down, its CA late) holds up only
    /// the verification of that CA's certificates, and every replica shares it: failing
    /// readiness would take every replica out of service at once, stopping all intake, and
    /// fix nothing. Instead each waiting case carries the reason, and the metrics
    /// (`etk_card_crl_next_update_timestamp_seconds`, `etk_card_crl_updates_total`) alert.
    async fn probe(&self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<CrlCheckSettings, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn settings_have_defaults_and_refuse_unknown_keys() {
        let s = parse("ca_file = \"/etc/etk/siths-person-cas.pem\"").expect("settings");
        assert!(s.distribution_points);
        assert!(s.files.is_empty() && s.urls.is_empty());
        assert_eq!(s.refresh, Duration::from_secs(3600));
        assert_eq!(s.fetch_timeout, Duration::from_secs(10));
        assert_eq!(s.fetch_attempts, 3);
        assert_eq!(s.min_fetch_interval, Duration::from_secs(10));
        assert!(s.validate().is_ok());
        let s = parse(
            "ca_file = \"ca.pem\"\nfiles = [\"a.crl\"]\nurls = [\"http://crl.example.se/a.crl\"]\n\
             distribution_points = false\nrefresh = \"30m\"",
        )
        .expect("settings");
        assert_eq!(s.refresh, Duration::from_secs(1800));
        assert!(!s.distribution_points);
        let e = parse("ca_file = \"ca.pem\"\nwhen_stale = \"accept\"").expect_err("unknown");
        assert!(e.contains("when_stale"), "{e}");
        // No grace past a list's nextUpdate: the key is gone, and refused.
        let e = parse("ca_file = \"ca.pem\"\nstale_grace = \"1h\"").expect_err("unknown");
        assert!(e.contains("stale_grace"), "{e}");
        assert!(parse("files = []").is_err(), "ca_file is required");
    }

    #[test]
    fn settings_are_validated() {
        let mut s = CrlCheckSettings::with_ca_file("ca.pem".into());
        assert!(s.validate().is_ok());
        s.fetch_attempts = 0;
        let e = s.validate().expect_err("attempts");
        assert!(e.starts_with("revocation_check.fetch_attempts"), "{e}");
        s.fetch_attempts = 1;
        s.urls = vec!["ldap://crl.example.se/cn=ca".into()];
        assert!(s.validate().expect_err("scheme").contains("ldap://"));
        s.urls = vec![];
        s.distribution_points = false;
        assert!(
            s.validate()
                .expect_err("no source")
                .contains("no CRL source")
        );
        s.files = vec!["a.crl".into()];
        assert!(s.validate().is_ok());
        s.ca_file = PathBuf::new();
        assert!(s.validate().is_err());
    }

    #[test]
    fn serials_become_the_octets_lists_carry() {
        assert_eq!(serial_octets("1a2b").unwrap(), vec![0x1a, 0x2b]);
        assert_eq!(serial_octets("abc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(serial_octets("80").unwrap(), vec![0x80]);
        assert!(serial_octets("xy").is_err());
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let s = CrlCheckSettings::with_ca_file("/nonexistent/etk/card-cas.pem".into());
        let e = CrlRevocationStatus::new(&s, Arc::new(Metrics::new())).expect_err("no file");
        assert!(e.contains("/nonexistent/etk/card-cas.pem"), "{e}");
        assert!(e.starts_with("revocation_check.ca_file"), "{e}");
    }

    #[test]
    fn timestamps_convert_to_system_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(system_time(Timestamp::from_system(t)), t);
        assert_eq!(system_time(Timestamp(-5)), UNIX_EPOCH);
    }
}
