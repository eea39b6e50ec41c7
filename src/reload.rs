//! Live reload of the files the server trusts: the principals file, the server certificate and
//! key, the client-CA bundle and the CRL files (and the CRL URLs on their schedule).
//!
//! A poll loop (`server.reload_interval`) looks at each file's metadata, following symlinks —
//! so the atomic `..data` symlink swap of a Kubernetes Secret volume is seen like an edit — and
//! SIGHUP makes it re-read everything at once. A changed file is read, checked in full and only
//! then put in force; a file that does not load is refused with a log line (which file and why,
//! never its contents) and the configuration in force stays. Every attempt is counted in
//! `etk_config_reloads_total{file, outcome}` (CRLs in `etk_crl_updates_total`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::auth::{Authorizer, Principals, PrincipalsError};
use crate::crl::{CrlStore, read_pem_certificates};
use crate::metrics::Metrics;
use crate::server::TlsSettings;
use crate::tls::{TlsState, load_client_roots, load_server_identity};

/// What identifies a version of a file without reading it: the resolved target's device, inode,
/// size and modification/change times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of the file `path` resolves to; `None` when it cannot be read.
    pub fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            modified: m.modified().ok(),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The reloadable kinds of file (the `file` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Principals,
    ServerCertificate,
    ClientCa,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::Principals => "principals",
            Self::ServerCertificate => "server_certificate",
            Self::ClientCa => "client_ca",
        }
    }
}

/// The files of one kind and the stamps they had when last looked at.
#[derive(Debug)]
struct Watched {
    kind: Kind,
    paths: Vec<PathBuf>,
    stamps: Vec<Option<FileStamp>>,
}

impl Watched {
    fn new(kind: Kind, paths: Vec<PathBuf>) -> Self {
        let stamps = paths.iter().map(|p| FileStamp::of(p)).collect();
        Self {
            kind,
            paths,
            stamps,
        }
    }

    /// Whether any file changed since the last look (and remembers the new stamps).
    fn changed(&mut self) -> bool {
        let now: Vec<Option<FileStamp>> = self.paths.iter().map(|p| FileStamp::of(p)).collect();
        let changed = now != self.stamps;
        self.stamps = now;
        changed
    }

    fn describe(&self) -> String {
        self.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Watches the files and puts new versions in force.
#[derive(Debug)]
pub struct Reloader {
    principals: Arc<Principals>,
    tls: Arc<TlsState>,
    crls: Option<Arc<CrlStore>>,
    metrics: Arc<Metrics>,
    interval: Duration,
    watched: Vec<Watched>,
    principals_file: PathBuf,
    tls_paths: TlsSettings,
}

impl Reloader {
    pub fn new(
        principals_file: &Path,
        tls_paths: &TlsSettings,
        principals: Arc<Principals>,
        tls: Arc<TlsState>,
        crls: Option<Arc<CrlStore>>,
        metrics: Arc<Metrics>,
        interval: Duration,
    ) -> Self {
        let watched = vec![
            Watched::new(Kind::Principals, vec![principals_file.to_owned()]),
            Watched::new(
                Kind::ServerCertificate,
                vec![tls_paths.cert.clone(), tls_paths.key.clone()],
            ),
            Watched::new(Kind::ClientCa, vec![tls_paths.client_ca.clone()]),
        ];
        Self {
            principals,
            tls,
            crls,
            metrics,
            // Zero stays zero (SIGHUP only); otherwise within 50 ms and a day.
            interval: if interval.is_zero() {
                interval
            } else {
                interval.clamp(Duration::from_millis(50), Duration::from_secs(86_400))
            },
            watched,
            principals_file: principals_file.to_owned(),
            tls_paths: tls_paths.clone(),
        }
    }

    /// Polls every `interval` (never, when it is zero: SIGHUP only) and reloads on SIGHUP,
    /// until the task is aborted.
    pub async fn run(mut self) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: files are reloaded by polling only");
                None
            }
        };
        loop {
            let poll = if self.interval.is_zero() {
                Duration::from_secs(3600)
            } else {
                self.interval
            };
            let mut wake = tokio::time::Instant::now() + poll;
            if let Some(due) = self.crls.as_ref().and_then(|c| c.next_fetch()) {
                wake = wake.min(due);
            }
            let crls = self.crls.clone();
            let forced = tokio::select! {
                () = tokio::time::sleep_until(wake) => false,
                // A distribution point learnt at a handshake: fetched now (it is due).
                () = async {
                    match &crls {
                        Some(c) => c.url_learnt().await,
                        None => std::future::pending().await,
                    }
                } => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if forced {
                tracing::info!("SIGHUP: reloading the principals, TLS and CRL files");
            }
            self.check(forced || !self.interval.is_zero(), forced).await;
        }
    }

    /// One pass: files that changed (all when `force`) are reloaded; URLs that are due fetched.
    pub async fn check(&mut self, look_at_files: bool, force: bool) {
        if look_at_files {
            for i in 0..self.watched.len() {
                if self.watched[i].changed() || force {
                    let result = self.reload(self.watched[i].kind);
                    self.report(&self.watched[i], result);
                }
            }
        }
        let Some(crls) = self.crls.clone() else {
            return;
        };
        let mut changed = false;
        if look_at_files {
            changed |= crls.refresh_files(force).0;
        }
        changed |= crls.refresh_urls(force).await;
        if changed && let Err(e) = self.tls.set_crls(crls.snapshot()) {
            tracing::error!(error = %e, "the new CRLs could not be put in force");
        }
    }

    fn reload(&self, kind: Kind) -> Result<(), String> {
        match kind {
            Kind::Principals => {
                // A TOML error quotes the offending line: only its first line (where) is kept.
                let a = Authorizer::load(&self.principals_file).map_err(|e| match e {
                    PrincipalsError::Parse { path, message } => format!(
                        "invalid principals file {path}: {}",
                        message.lines().next().unwrap_or_default()
                    ),
                    other => other.to_string(),
                })?;
                self.principals.replace(a);
                Ok(())
            }
            Kind::ServerCertificate => {
                let read = |p: &Path| {
                    std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
                };
                let identity = load_server_identity(
                    &read(&self.tls_paths.cert)?,
                    &read(&self.tls_paths.key)?,
                )?;
                self.tls.set_identity(identity)
            }
            Kind::ClientCa => {
                let cas = read_pem_certificates(&self.tls_paths.client_ca)?;
                let roots = load_client_roots(&cas)?;
                self.tls.set_roots(roots)?;
                if let Some(crls) = &self.crls {
                    // CRLs are believed per trusted CA: judge them again under the new bundle.
                    crls.set_trust(&cas);
                    crls.refresh_files(true);
                    self.tls.set_crls(crls.snapshot())?;
                }
                Ok(())
            }
        }
    }

    fn report(&self, w: &Watched, result: Result<(), String>) {
        match result {
            Ok(()) => {
                tracing::info!(file = w.kind.label(), paths = %w.describe(), "reloaded");
                self.metrics.config_reload(w.kind.label(), "applied");
            }
            Err(e) => {
                tracing::warn!(file = w.kind.label(), paths = %w.describe(), error = %e,
                    "reload refused; the configuration in force stays");
                self.metrics.config_reload(w.kind.label(), "refused");
            }
        }
    }
}
