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
use std::sync::{Arc, Mutex};
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
    /// Held while the CRLs in force are put into the TLS configuration, by the file loop and
    /// the URL fetcher alike: the snapshot is taken under it, so an older set never overwrites
    /// a newer one.
    crls_applied: Arc<Mutex<()>>,
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
            crls_applied: Arc::default(),
        }
    }

    /// Polls every `interval` (never, when it is zero: SIGHUP only) and reloads on SIGHUP,
    /// until the task is aborted. CRL URLs are fetched by a task of their own
    /// (`fetch_urls`), so a slow distribution point never delays a file's reload.
    pub async fn run(mut self) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: files are reloaded by polling only");
                None
            }
        };
        let refetch = Arc::new(tokio::sync::Notify::new());
        // Ends with this task (aborted on shutdown): dropping the guard aborts the fetcher.
        let _fetcher = self.crls.clone().map(|crls| {
            AbortOnDrop(tokio::spawn(fetch_urls(
                crls,
                self.tls.clone(),
                self.crls_applied.clone(),
                refetch.clone(),
            )))
        });
        loop {
            let poll = if self.interval.is_zero() {
                Duration::from_secs(3600)
            } else {
                self.interval
            };
            let forced = tokio::select! {
                () = tokio::time::sleep(poll) => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if forced {
                tracing::info!("SIGHUP: reloading the principals, TLS and CRL files");
                refetch.notify_one();
            }
            self.check(forced || !self.interval.is_zero(), forced);
        }
    }

    /// One pass over the files: those that changed (all when `force`) are reloaded.
    pub fn check(&mut self, look_at_files: bool, force: bool) {
        if !look_at_files {
            return;
        }
        for i in 0..self.watched.len() {
            if self.watched[i].changed() || force {
                let result = self.reload(self.watched[i].kind);
                self.report(&self.watched[i], result);
            }
        }
        if let Some(crls) = &self.crls
            && crls.refresh_files(force).0
        {
            apply_crls(crls, &self.tls, &self.crls_applied);
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
                    let _applied = self
                        .crls_applied
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
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

/// Aborts its task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Puts the CRLs in force into the TLS configuration (the snapshot taken under `applied`).
fn apply_crls(crls: &CrlStore, tls: &TlsState, applied: &Mutex<()>) {
    let _applied = applied
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Err(e) = tls.set_crls(crls.snapshot()) {
        tracing::error!(error = %e, "the new CRLs could not be put in force");
    }
}

/// The longest one pass over the due CRL URLs may take: each URL's attempts fit in it
/// (`fetch_timeout` × `fetch_attempts` plus the pauses), and a pass never runs past `refresh`.
fn pass_deadline(s: &crate::crl::CrlSettings) -> Duration {
    let pauses = Duration::from_secs((1u64 << s.fetch_attempts.min(10)).saturating_sub(1));
    let one_url = s
        .fetch_timeout
        .saturating_mul(s.fetch_attempts)
        .saturating_add(pauses);
    one_url.max(s.refresh.min(Duration::from_secs(300)))
}

/// Fetches the CRL URLs when due, when a distribution point is learnt and on SIGHUP
/// (`refetch`), each pass within `pass_deadline`; a pass cut short leaves the URLs it did not
/// reach due, for the next pass after a pause.
async fn fetch_urls(
    crls: Arc<CrlStore>,
    tls: Arc<TlsState>,
    applied: Arc<Mutex<()>>,
    refetch: Arc<tokio::sync::Notify>,
) {
    let deadline = pass_deadline(crls.settings());
    let pause = (crls.settings().refresh / 10).max(Duration::from_secs(1));
    loop {
        let wake = crls
            .next_fetch()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let force = tokio::select! {
            () = tokio::time::sleep_until(wake) => false,
            // A distribution point learnt at a handshake: fetched now (it is due).
            () = crls.url_learnt() => false,
            () = refetch.notified() => true,
        };
        match tokio::time::timeout(deadline, crls.refresh_urls(force)).await {
            Ok(changed) => {
                if changed {
                    apply_crls(&crls, &tls, &applied);
                }
            }
            Err(_) => {
                tracing::warn!(
                    deadline_seconds = deadline.as_secs(),
                    "fetching the CRL URLs took too long; the rest are tried again later"
                );
                // Some may have been put in force before the cut.
                apply_crls(&crls, &tls, &applied);
                tokio::time::sleep(pause).await;
            }
        }
    }
}
