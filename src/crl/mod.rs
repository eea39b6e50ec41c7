//! Certificate revocation lists (CRLs): one module for every use (`CrlUse`) — the client
//! certificates of mutual TLS, and the card certificates of the revocation check
//! (`connectors::crl_status`), each with its own store, CAs and metrics.
//!
//! A `CrlStore` keeps the newest *trusted* CRL of each issuer. CRLs come from files and/or
//! plain-HTTP URLs (DER or PEM); a CRL is believed only when its signature verifies with the
//! public key of a configured CA certificate whose subject is the CRL's issuer, it is a full
//! list (not a delta CRL), it carries a `nextUpdate`, and it is not older than the one it would
//! replace (no roll-back). Anything else is refused with a log line and the CRL in force stays.
//! Files are re-read when they change (`refresh_files`, polled by `reload`), URLs are fetched
//! with a timeout and retries on a schedule and at the list's `nextUpdate` (`refresh_urls`).
//!
//! Consumers read a `CrlSet` snapshot: the CRLs by issuer, their `thisUpdate`/`nextUpdate`,
//! `is_revoked(serial)` / `is_on_hold(serial)` and a freshness verdict. The two uses read a
//! `certificateHold` entry differently: a client certificate on hold is refused like a revoked
//! one (`check_certificate`, and webpki at the handshake); a card certificate on hold is not
//! revoked (`connectors::crl_status`), as the CA may release it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::Deserialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::metrics::Metrics;
use crate::reload::FileStamp;

mod http;
mod list;

use http::{HttpUrl, fetch};
pub use list::Crl;
use list::{TrustedIssuer, decode, trusted_issuers, verify};

/// At most this many distribution points are learnt from certificates (a CA has one or two).
const MAX_LEARNT_URLS: usize = 16;

/// What to do when the answer cannot be trusted: refuse (fail closed) or accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    Refuse,
    Accept,
}

/// Where CRLs come from and how far they are trusted (`[tls.revocation]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlSettings {
    /// CRL files (DER or PEM, several PEM blocks allowed); re-read when they change.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Plain-HTTP URLs of CRLs (e.g. the CAs' CRL distribution points).
    #[serde(default)]
    pub urls: Vec<String>,
    /// Also fetch the `http://` CRL distribution points named in verified client certificates
    /// whose issuer has no CRL yet (at most 16 URLs are learnt).
    pub distribution_points: bool,
    /// URLs are fetched again at least this often, and at their list's `nextUpdate`.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// One HTTP fetch (connect, request and body) must finish within this.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Attempts per fetch (the first included); the pause between them doubles from 1 s.
    pub fetch_attempts: u32,
    /// A CRL counts as stale this long after its `nextUpdate`.
    #[serde(with = "humantime_serde")]
    pub stale_grace: Duration,
    /// Certificates whose issuer's CRL is stale: `refuse` (default) or `accept`.
    pub when_stale: Policy,
    /// Certificates whose issuer has no CRL at all: `refuse` (default) or `accept`.
    pub without_crl: Policy,
}

impl CrlSettings {
    /// Whether any CRL source is configured (otherwise revocation is not checked).
    pub fn enabled(&self) -> bool {
        !self.files.is_empty() || !self.urls.is_empty() || self.distribution_points
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.fetch_attempts == 0 {
            return Err("revocation.fetch_attempts must be at least 1".into());
        }
        if self.fetch_timeout.is_zero() || self.refresh.is_zero() {
            return Err("revocation.fetch_timeout and revocation.refresh must be above 0s".into());
        }
        for url in &self.urls {
            HttpUrl::parse(url).map_err(|e| format!("revocation.urls: {url}: {e}"))?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not a CRL (DER or PEM): {0}")]
    Parse(String),
    #[error("issuer {0} is not a configured CA")]
    UnknownIssuer(String),
    #[error("signature does not verify with the key of CA {0}")]
    BadSignature(String),
    #[error("CA {0} may not sign CRLs (keyUsage without cRLSign)")]
    NotCrlSigner(String),
    #[error("no nextUpdate: its freshness cannot be judged")]
    NoNextUpdate,
    #[error("a delta CRL of {0} (deltaCRLIndicator): only full lists are believed")]
    Delta(String),
    #[error("older than the CRL in force for {0} (thisUpdate went back)")]
    Rollback(String),
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
}

impl CrlError {
    /// The `outcome` label of the refusal (bounded).
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Read { .. } => "unreadable",
            Self::Parse(_) => "invalid",
            Self::UnknownIssuer(_) => "unknown_issuer",
            Self::BadSignature(_) | Self::NotCrlSigner(_) => "bad_signature",
            Self::NoNextUpdate => "no_next_update",
            Self::Delta(_) => "delta_crl",
            Self::Rollback(_) => "rollback",
            Self::Fetch { .. } => "fetch_failed",
        }
    }
}

/// The verdict on a certificate's issuer's CRL at some time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Within `nextUpdate + grace`.
    Fresh,
    /// Past it.
    Stale,
    /// No CRL of that issuer is held.
    Missing,
}

/// Why `CrlSet::check_certificate` refuses a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// On its issuer's CRL: revoked, or on hold (`certificateHold`) — a suspended client
    /// certificate is refused until the CA releases it.
    Revoked,
    /// Its issuer's CRL is past `nextUpdate` + grace and `when_stale` is `refuse`.
    Stale,
    /// No CRL of its issuer is held and `without_crl` is `refuse`.
    Missing,
    /// Not a certificate that parses (the handshake would not have accepted it).
    Unreadable,
}

impl RefusalReason {
    /// The `reason` label of `etk_client_certificates_refused_total`, as at the handshake.
    pub fn label(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Stale => "crl_stale",
            Self::Missing => "no_crl",
            Self::Unreadable => "unreadable",
        }
    }
}

/// A refused certificate: why, and its serial number and issuer for the log (never its
/// subject, which names the holder).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRefusal {
    pub reason: RefusalReason,
    pub serial: String,
    pub issuer: String,
}

/// A snapshot: the newest trusted CRL of each issuer.
#[derive(Debug, Default)]
pub struct CrlSet {
    by_issuer: HashMap<Vec<u8>, Arc<Crl>>,
}

impl CrlSet {
    /// The CRL of the issuer with this raw (DER) distinguished name.
    pub fn for_issuer(&self, issuer: &[u8]) -> Option<&Arc<Crl>> {
        self.by_issuer.get(issuer)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Crl>> {
        self.by_issuer.values()
    }

    pub fn len(&self) -> usize {
        self.by_issuer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }

    pub fn ders(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.by_issuer.values().map(|c| c.der.clone()).collect()
    }

    /// The serial number and issuer (as text) of a DER client certificate when it is on its
    /// issuer's CRL, revoked or on hold; `None` when it is not (or no CRL of its issuer is held).
    pub fn revocation_of(&self, certificate: &[u8]) -> Option<(String, String)> {
        let (_, cert) = X509Certificate::from_der(certificate).ok()?;
        let crl = self.for_issuer(cert.issuer().as_raw())?;
        (crl.is_revoked(cert.raw_serial()) || crl.is_on_hold(cert.raw_serial()))
            .then(|| (cert.raw_serial_as_string(), cert.issuer().to_string()))
    }

    /// The verdict on one call's client certificate under `settings`: revoked or on hold, or
    /// its issuer's CRL stale or missing where the policy refuses that. The same rules the
    /// handshake applies, for connections that stay open while a CRL changes or ages.
    pub fn check_certificate(
        &self,
        certificate: &[u8],
        now: SystemTime,
        settings: &CrlSettings,
    ) -> Result<(), CertificateRefusal> {
        let Ok((_, cert)) = X509Certificate::from_der(certificate) else {
            return Err(CertificateRefusal {
                reason: RefusalReason::Unreadable,
                serial: "?".into(),
                issuer: "?".into(),
            });
        };
        let issuer = cert.issuer().as_raw();
        let reason = match self.for_issuer(issuer) {
            // A client certificate on hold is refused like a revoked one (as webpki does at
            // the handshake), until a list without it is published.
            Some(crl) if crl.is_revoked(cert.raw_serial()) || crl.is_on_hold(cert.raw_serial()) => {
                RefusalReason::Revoked
            }
            Some(crl)
                if crl.is_stale(now, settings.stale_grace)
                    && settings.when_stale == Policy::Refuse =>
            {
                RefusalReason::Stale
            }
            None if settings.without_crl == Policy::Refuse => RefusalReason::Missing,
            _ => return Ok(()),
        };
        Err(CertificateRefusal {
            reason,
            serial: cert.raw_serial_as_string(),
            issuer: cert.issuer().to_string(),
        })
    }

    pub fn freshness(&self, issuer: &[u8], now: SystemTime, grace: Duration) -> Freshness {
        match self.for_issuer(issuer) {
            None => Freshness::Missing,
            Some(c) if c.is_stale(now, grace) => Freshness::Stale,
            Some(_) => Freshness::Fresh,
        }
    }
}

/// Where one set of CRLs came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Source {
    File(PathBuf),
    Url(String),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Url(u) => u.clone(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Url(_) => "url",
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    crls: Vec<Arc<Crl>>,
    stamp: Option<FileStamp>,
    /// When a URL is due again.
    due: Option<tokio::time::Instant>,
    /// Why the source's last reading was refused; cleared when one is believed.
    refusal: Option<String>,
}

/// What a store's CRLs are for: its log lines and metrics tell the two uses apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrlUse {
    /// Client certificates of mutual TLS (`[tls.revocation]`): `etk_crl_*` metrics.
    ClientTls,
    /// Card certificates checked before KIV (issue #14): `etk_card_crl_*` metrics.
    CardCheck,
}

impl CrlUse {
    fn certificates(self) -> &'static str {
        match self {
            Self::ClientTls => "client certificate",
            Self::CardCheck => "card certificate",
        }
    }
}

/// The CRLs of the configured sources, verified against the configured CAs.
#[derive(Debug)]
pub struct CrlStore {
    settings: CrlSettings,
    trust: RwLock<Vec<TrustedIssuer>>,
    entries: Mutex<HashMap<Source, Entry>>,
    current: RwLock<Arc<CrlSet>>,
    metrics: Arc<Metrics>,
    /// Woken when a URL is learnt (the refresh loop fetches it at once).
    learnt: tokio::sync::Notify,
    purpose: CrlUse,
}

impl CrlStore {
    /// A store trusting CRLs signed by `cas`; nothing is loaded yet.
    pub fn new(settings: CrlSettings, cas: &[CertificateDer<'_>], metrics: Arc<Metrics>) -> Self {
        Self::for_use(CrlUse::ClientTls, settings, cas, metrics)
    }

    /// A store for `purpose` (its metrics and log lines say which).
    pub fn for_use(
        purpose: CrlUse,
        settings: CrlSettings,
        cas: &[CertificateDer<'_>],
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut entries = HashMap::new();
        for f in &settings.files {
            entries.insert(Source::File(f.clone()), Entry::default());
        }
        for u in &settings.urls {
            entries.insert(Source::Url(u.clone()), Entry::default());
        }
        Self {
            trust: RwLock::new(trusted_issuers(cas)),
            settings,
            entries: Mutex::new(entries),
            current: RwLock::new(Arc::new(CrlSet::default())),
            metrics,
            learnt: tokio::sync::Notify::new(),
            purpose,
        }
    }

    /// Adds an `http://` URL to fetch (a certificate's CRL distribution point); returns whether
    /// it is new. Beyond `MAX_LEARNT_URLS` learnt URLs, or for other schemes, nothing is added.
    pub fn learn_url(&self, url: &str) -> bool {
        if HttpUrl::parse(url).is_err() {
            return false;
        }
        let mut entries = self.lock_entries();
        let source = Source::Url(url.to_owned());
        if entries.contains_key(&source) {
            return false;
        }
        let learnt = entries
            .keys()
            .filter(|s| matches!(s, Source::Url(u) if !self.settings.urls.contains(u)))
            .count();
        if learnt >= MAX_LEARNT_URLS {
            return false;
        }
        entries.insert(source, Entry::default());
        drop(entries);
        tracing::info!(
            url,
            certificates = self.purpose.certificates(),
            "CRL distribution point learnt from a certificate"
        );
        self.learnt.notify_one();
        true
    }

    /// Resolves when a URL was learnt since the last call.
    pub async fn url_learnt(&self) {
        self.learnt.notified().await;
    }

    pub fn settings(&self) -> &CrlSettings {
        &self.settings
    }

    /// Why the last reading of a source (a URL, or a file's path as configured) was refused,
    /// when it was and nothing from it has been believed since.
    pub fn refusal(&self, source: &str) -> Option<String> {
        self.lock_entries()
            .iter()
            .find(|(s, _)| s.describe() == source)
            .and_then(|(_, e)| e.refusal.clone())
    }

    /// Whether the URL is configured or learnt.
    pub fn knows_url(&self, url: &str) -> bool {
        self.lock_entries()
            .contains_key(&Source::Url(url.to_owned()))
    }

    /// Whether the URL (configured or learnt) is due for a fetch on the store's schedule.
    pub fn is_due(&self, url: &str) -> bool {
        let now = tokio::time::Instant::now();
        self.lock_entries()
            .get(&Source::Url(url.to_owned()))
            .is_some_and(|e| e.due.is_none_or(|d| d <= now))
    }

    /// The CRLs in force.
    pub fn snapshot(&self) -> Arc<CrlSet> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the trusted CAs (a reloaded client-CA bundle). CRLs held whose issuer is no
    /// longer trusted, or whose signature no longer verifies, are dropped.
    pub fn set_trust(&self, cas: &[CertificateDer<'_>]) {
        let trust = trusted_issuers(cas);
        {
            let mut entries = self.lock_entries();
            for (source, entry) in entries.iter_mut() {
                entry.crls.retain(|c| {
                    let kept = verify(c.der.as_ref().to_vec(), &trust, &c.source).is_ok();
                    if !kept {
                        tracing::warn!(source = %source.describe(), issuer = %c.issuer_name,
                            "CRL dropped: its issuer is no longer a trusted CA");
                    }
                    kept
                });
                // Re-read on the next pass: a file refused before may verify now.
                entry.stamp = None;
            }
        }
        *self
            .trust
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = trust;
        self.publish();
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, HashMap<Source, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Re-reads the CRL files that changed since they were last read (all of them when
    /// `force`). Returns whether the CRLs in force changed. Errors of files are logged,
    /// counted and returned (the first one), the CRLs they would replace stay.
    pub fn refresh_files(&self, force: bool) -> (bool, Option<CrlError>) {
        let files: Vec<PathBuf> = self.settings.files.clone();
        let mut changed = false;
        let mut first_error = None;
        for path in files {
            let source = Source::File(path.clone());
            let stamp = FileStamp::of(&path);
            let unchanged = {
                let entries = self.lock_entries();
                let e = entries.get(&source);
                !force && stamp.is_some() && e.and_then(|e| e.stamp.as_ref()) == stamp.as_ref()
            };
            if unchanged {
                continue;
            }
            let result = std::fs::read(&path)
                .map_err(|source| CrlError::Read {
                    path: path.display().to_string(),
                    source,
                })
                .and_then(|bytes| self.accept(&source, &bytes));
            match result {
                Ok(c) => changed |= c,
                Err(e) => {
                    self.refused(&source, &e);
                    first_error.get_or_insert(e);
                }
            }
            if let Some(e) = self.lock_entries().get_mut(&source) {
                e.stamp = stamp;
            }
        }
        if changed {
            self.publish();
        }
        (changed, first_error)
    }

    /// Fetches the URLs that are due (all of them when `force`), each with the configured
    /// timeout and retries. Returns whether the CRLs in force changed.
    pub async fn refresh_urls(&self, force: bool) -> bool {
        self.refresh_urls_where(force, |_| true).await
    }

    /// `refresh_urls` limited to `urls` (those the store knows; others are ignored).
    pub async fn refresh_urls_in(&self, urls: &[String], force: bool) -> bool {
        self.refresh_urls_where(force, |u| urls.iter().any(|x| x == u))
            .await
    }

    async fn refresh_urls_where(&self, force: bool, wanted: impl Fn(&str) -> bool) -> bool {
        let now = tokio::time::Instant::now();
        let due: Vec<String> = {
            let entries = self.lock_entries();
            let mut due: Vec<String> = entries
                .iter()
                .filter_map(|(s, e)| match s {
                    Source::Url(u) if (force || e.due.is_none_or(|d| d <= now)) && wanted(u) => {
                        Some(u.clone())
                    }
                    _ => None,
                })
                .collect();
            due.sort();
            due
        };
        let mut changed = false;
        for url in due {
            changed |= self.fetch_one(url).await;
        }
        if changed {
            self.publish();
        }
        changed
    }

    /// Fetches one URL and schedules its next fetch; whether its CRLs changed (not yet
    /// published).
    async fn fetch_one(&self, url: String) -> bool {
        let source = Source::Url(url.clone());
        let result = match fetch(&url, &self.settings).await {
            Ok(bytes) => self.accept(&source, &bytes),
            Err(e) => Err(e),
        };
        // Failed: try again after a tenth of the refresh period (at least a minute's
        // worth of attempts have already been spent inside `fetch`).
        let mut next = if result.is_ok() {
            self.settings.refresh
        } else {
            (self.settings.refresh / 10).max(Duration::from_secs(1))
        };
        let changed = match result {
            Ok(c) => c,
            Err(e) => {
                self.refused(&source, &e);
                false
            }
        };
        let mut entries = self.lock_entries();
        let entry = entries.entry(source).or_default();
        // Due again at the list's nextUpdate when that comes first.
        if let Some(until) = entry
            .crls
            .iter()
            .map(|c| c.next_update)
            .min()
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
        {
            next = next.min(until.max(Duration::from_secs(1)));
        }
        let at = tokio::time::Instant::now();
        entry.due = Some(
            at.checked_add(next)
                .unwrap_or_else(|| at + Duration::from_secs(86_400)),
        );
        changed
    }

    /// The soonest time a URL is due (for the refresh loop's sleep).
    pub fn next_fetch(&self) -> Option<tokio::time::Instant> {
        self.lock_entries()
            .iter()
            .filter(|(s, _)| matches!(s, Source::Url(_)))
            .map(|(_, e)| e.due.unwrap_or_else(tokio::time::Instant::now))
            .min()
    }

    /// Verifies the CRLs in `bytes` and makes them the source's CRLs (all or nothing).
    fn accept(&self, source: &Source, bytes: &[u8]) -> Result<bool, CrlError> {
        let trust = self
            .trust
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let described = source.describe();
        let crls = decode(bytes)?
            .into_iter()
            .map(|der| verify(der, &trust, &described).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut entries = self.lock_entries();
        let entry = entries.entry(source.clone()).or_default();
        for new in &crls {
            if let Some(old) = entry.crls.iter().find(|o| o.issuer == new.issuer)
                && new.this_update < old.this_update
            {
                return Err(CrlError::Rollback(new.issuer_name.clone()));
            }
        }
        entry.refusal = None;
        let same = entry.crls.len() == crls.len()
            && entry
                .crls
                .iter()
                .zip(&crls)
                .all(|(a, b)| a.der.as_ref() == b.der.as_ref());
        if same {
            return Ok(false);
        }
        for c in &crls {
            tracing::info!(
                source = %described,
                issuer = %c.issuer_name,
                revoked = c.revoked.len(),
                this_update = %humantime::format_rfc3339_seconds(c.this_update),
                next_update = %humantime::format_rfc3339_seconds(c.next_update),
                "CRL loaded"
            );
        }
        entry.crls = crls;
        drop(entries);
        self.count_update(source.kind(), "applied");
        Ok(true)
    }

    fn refused(&self, source: &Source, e: &CrlError) {
        tracing::warn!(source = %source.describe(), error = %e,
            certificates = self.purpose.certificates(),
            "CRL refused; the CRL in force stays");
        if let Some(entry) = self.lock_entries().get_mut(source) {
            entry.refusal = Some(e.to_string());
        }
        self.count_update(source.kind(), e.outcome());
    }

    fn count_update(&self, source: &'static str, outcome: &'static str) {
        match self.purpose {
            CrlUse::ClientTls => self.metrics.crl_update(source, outcome),
            CrlUse::CardCheck => self.metrics.card_crl_update(source, outcome),
        }
    }

    /// Recomputes the snapshot: the newest CRL (by `thisUpdate`) of each issuer over all sources.
    fn publish(&self) {
        let mut by_issuer: HashMap<Vec<u8>, Arc<Crl>> = HashMap::new();
        for entry in self.lock_entries().values() {
            for c in &entry.crls {
                match by_issuer.get(&c.issuer) {
                    Some(held) if held.this_update >= c.this_update => {}
                    _ => {
                        by_issuer.insert(c.issuer.clone(), c.clone());
                    }
                }
            }
        }
        for c in by_issuer.values() {
            let at = c
                .next_update
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match self.purpose {
                CrlUse::ClientTls => self.metrics.set_crl_next_update(&c.issuer_name, at),
                CrlUse::CardCheck => self.metrics.set_card_crl_next_update(&c.issuer_name, at),
            }
        }
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(CrlSet { by_issuer });
    }
}

/// The `http://` CRL distribution points of a DER certificate.
pub fn distribution_points(certificate: &[u8]) -> Vec<String> {
    use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
    let Ok((_, cert)) = X509Certificate::from_der(certificate) else {
        return Vec::new();
    };
    let mut urls = Vec::new();
    for ext in cert.extensions() {
        let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() else {
            continue;
        };
        for point in points.iter() {
            if let Some(DistributionPointName::FullName(names)) = &point.distribution_point {
                for name in names {
                    if let GeneralName::URI(uri) = name
                        && uri.starts_with("http://")
                    {
                        urls.push((*uri).to_owned());
                    }
                }
            }
        }
    }
    urls
}

/// Reads the certificates of a PEM bundle (the configured CAs).
pub fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devcerts::DevCa;

    fn ca_der(ca: &DevCa) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("ca pem")
    }

    fn set(ca: &DevCa, crl_pem: &str) -> Result<Crl, CrlError> {
        let trust = trusted_issuers(&[ca_der(ca)]);
        let der = decode(crl_pem.as_bytes())?.remove(0);
        verify(der, &trust, "test")
    }

    fn policy(when_stale: Policy, without_crl: Policy) -> CrlSettings {
        CrlSettings {
            files: vec![],
            urls: vec![],
            distribution_points: false,
            refresh: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(5),
            fetch_attempts: 1,
            stale_grace: Duration::from_secs(60),
            when_stale,
            without_crl,
        }
    }

    #[test]
    fn a_calls_certificate_is_judged_by_its_issuers_crl_and_the_policies() {
        let ca = DevCa::generate("Test CA").expect("ca");
        let held = ca.issue_client("held", None).expect("issue");
        let der = CertificateDer::from_pem_slice(held.cert_pem.as_bytes()).expect("pem");
        let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("cert");
        let serial = cert.raw_serial().to_vec();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let with = |revoked: &[Vec<u8>]| {
            let crl = set(&ca, &ca.crl(revoked, now, now + hour).expect("crl")).expect("crl");
            CrlSet {
                by_issuer: HashMap::from([(crl.issuer.clone(), Arc::new(crl))]),
            }
        };
        let strict = policy(Policy::Refuse, Policy::Refuse);
        let lenient = policy(Policy::Accept, Policy::Accept);
        let reason = |set: &CrlSet, at: SystemTime, p: &CrlSettings| {
            set.check_certificate(der.as_ref(), at, p)
                .map_err(|r| r.reason)
        };
        assert_eq!(reason(&with(&[]), now, &strict), Ok(()));
        let refused = with(std::slice::from_ref(&serial))
            .check_certificate(der.as_ref(), now, &lenient)
            .expect_err("revoked whatever the policy");
        assert_eq!(refused.reason, RefusalReason::Revoked);
        assert_eq!(refused.serial, cert.raw_serial_as_string());
        assert!(refused.issuer.contains("Test CA"), "{}", refused.issuer);
        // Past nextUpdate + grace: refused unless the policy accepts a stale list.
        let late = now + hour + Duration::from_secs(61);
        assert_eq!(reason(&with(&[]), late, &strict), Err(RefusalReason::Stale));
        assert_eq!(reason(&with(&[]), late, &lenient), Ok(()));
        // Within the grace: fresh.
        assert_eq!(
            reason(&with(&[]), now + hour + Duration::from_secs(59), &strict),
            Ok(())
        );
        // No list of the issuer at all.
        let none = CrlSet::default();
        assert_eq!(reason(&none, now, &strict), Err(RefusalReason::Missing));
        assert_eq!(reason(&none, now, &lenient), Ok(()));
        assert_eq!(
            none.check_certificate(b"not a certificate", now, &lenient)
                .map_err(|r| r.reason),
            Err(RefusalReason::Unreadable)
        );
    }

    #[test]
    fn a_crl_of_the_ca_is_believed_and_lists_its_serials() {
        let ca = DevCa::generate("Test CA").expect("ca");
        let now = SystemTime::now();
        let pem = ca
            .crl(
                &[vec![0x01, 0x02], vec![0x80]],
                now,
                now + Duration::from_secs(3600),
            )
            .expect("crl");
        let crl = set(&ca, &pem).expect("verifies");
        assert!(crl.is_revoked(&[0x01, 0x02]));
        // The DER sign byte of a serial with its top bit set does not matter.
        assert!(crl.is_revoked(&[0x00, 0x80]));
        assert!(!crl.is_revoked(&[0x03]));
        assert!(!crl.is_stale(now, Duration::ZERO));
        assert!(crl.is_stale(now + Duration::from_secs(3601), Duration::ZERO));
        assert!(!crl.is_stale(now + Duration::from_secs(3601), Duration::from_secs(60)));
        // DER is read as well as PEM.
        let der = decode(pem.as_bytes()).expect("pem").remove(0);
        let trust = trusted_issuers(&[ca_der(&ca)]);
        assert!(verify(der, &trust, "der").is_ok());
    }

    #[test]
    fn a_crl_signed_by_another_key_with_the_same_name_is_not_believed() {
        let ca = DevCa::generate("Test CA").expect("ca");
        let impostor = DevCa::generate("Test CA").expect("same name, other key");
        let now = SystemTime::now();
        let pem = impostor
            .crl(&[], now, now + Duration::from_secs(3600))
            .expect("crl");
        assert!(matches!(set(&ca, &pem), Err(CrlError::BadSignature(_))));
        let stranger = DevCa::generate("Other CA").expect("ca");
        let pem = stranger
            .crl(&[], now, now + Duration::from_secs(3600))
            .expect("crl");
        assert!(matches!(set(&ca, &pem), Err(CrlError::UnknownIssuer(_))));
        assert!(matches!(set(&ca, "garbage"), Err(CrlError::Parse(_))));
    }

    #[test]
    fn an_older_crl_does_not_replace_a_newer_one() {
        let ca = DevCa::generate("Test CA").expect("ca");
        let store = CrlStore::new(settings(), &[ca_der(&ca)], Arc::new(Metrics::new()));
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let source = Source::File("x".into());
        let newer = ca.crl(&[], now, now + hour).expect("crl");
        let older = ca.crl(&[vec![7]], now - hour, now + hour).expect("crl");
        assert!(store.accept(&source, newer.as_bytes()).expect("newer"));
        store.publish();
        assert!(matches!(
            store.accept(&source, older.as_bytes()),
            Err(CrlError::Rollback(_))
        ));
        let issuer = store.snapshot().iter().next().expect("one").issuer.clone();
        assert_eq!(
            store.snapshot().freshness(&issuer, now, Duration::ZERO),
            Freshness::Fresh
        );
        assert!(
            !store
                .snapshot()
                .for_issuer(&issuer)
                .expect("crl")
                .is_revoked(&[7])
        );
    }

    fn settings() -> CrlSettings {
        CrlSettings {
            files: vec![],
            urls: vec![],
            distribution_points: false,
            refresh: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(5),
            fetch_attempts: 1,
            stale_grace: Duration::ZERO,
            when_stale: Policy::Refuse,
            without_crl: Policy::Refuse,
        }
    }

    #[test]
    fn only_plain_http_urls_are_accepted() {
        let mut s = settings();
        s.urls = vec!["http://crl.example.se:8080/ca.crl".into()];
        assert!(s.validate().is_ok());
        let u = HttpUrl::parse(&s.urls[0]).expect("url");
        assert_eq!((u.host.as_str(), u.port), ("crl.example.se", 8080));
        assert_eq!(u.path_and_query, "/ca.crl");
        s.urls = vec!["ldap://crl.example.se/cn=x".into()];
        assert!(s.validate().is_err());
        s.urls = vec![];
        s.fetch_attempts = 0;
        assert!(s.validate().is_err());
    }

    #[test]
    fn distribution_points_are_read_from_certificates_and_learnt_within_a_bound() {
        let ca = DevCa::generate("Test CA").expect("ca");
        let cert = ca
            .issue_client_with(
                "c",
                None,
                &[
                    "http://crl.example.se/ca.crl".into(),
                    "ldap://crl.example.se/cn=ca".into(),
                ],
            )
            .expect("cert");
        let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("pem");
        assert_eq!(
            distribution_points(der.as_ref()),
            vec!["http://crl.example.se/ca.crl".to_owned()]
        );
        let store = CrlStore::new(settings(), &[ca_der(&ca)], Arc::new(Metrics::new()));
        assert!(store.learn_url("http://crl.example.se/ca.crl"));
        assert!(!store.learn_url("http://crl.example.se/ca.crl"), "known");
        assert!(!store.learn_url("ldap://crl.example.se/cn=ca"), "not http");
        for i in 1..MAX_LEARNT_URLS {
            assert!(store.learn_url(&format!("http://crl.example.se/{i}.crl")));
        }
        assert!(!store.learn_url("http://crl.example.se/one-too-many.crl"));
    }
}
