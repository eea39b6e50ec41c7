//! `spawn_app()`: the real server on port 0 with a fresh database and generated
//! certificates, and mTLS clients for each dev identity.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;

use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::config::{Config, Layers};
use etjanstekort_gateway::connectors::simulated::{
    Faults, LogNotifier, SimulatedKiv, SimulatedTjansteId,
};
use etjanstekort_gateway::connectors::{Connectors, RevocationCheckSettings};
use etjanstekort_gateway::devcerts::{self, DevCa, IssuedCert};
use etjanstekort_gateway::metrics::Metrics;
use etjanstekort_gateway::startup::{App, build_connectors};
use pb::deregistration_service_client::DeregistrationServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The console's trace links in tests.
pub const TRACE_URL_TEMPLATE: &str = "https://jaeger.test/trace/{trace_id}";

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug)]
pub struct TestApp {
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, `/livez`, `/readyz`), plain HTTP.
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub tjansteid: Arc<SimulatedTjansteId>,
    pub kiv: Arc<SimulatedKiv>,
    pub notifier: Arc<LogNotifier>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }
}

/// A fresh database for one test: a SQLite file, or a new PostgreSQL database when
/// `ETK_TEST_POSTGRES_URL` is set and the test asks for it.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    /// The PostgreSQL database's name (empty for SQLite).
    pub name: String,
}

impl TestDb {
    pub fn sqlite(dir: &std::path::Path) -> Self {
        Self {
            url: format!("sqlite://{}?mode=rwc", dir.join("test.sqlite").display()),
            name: String::new(),
        }
    }

    /// A new PostgreSQL database. The tests that call this are compiled as ignored unless
    /// `ETK_TEST_POSTGRES_URL` is set (see `build.rs`), so an unset variable here is a failure.
    pub async fn postgres() -> Self {
        let base = std::env::var("ETK_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .expect("ETK_TEST_POSTGRES_URL is set");
        use sea_orm::{ConnectionTrait, Database};
        let admin = Database::connect(&base)
            .await
            .expect("connect to ETK_TEST_POSTGRES_URL");
        let name = format!("etk_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let (prefix, _) = base.rsplit_once('/').expect("URL ends in /database");
        let url = format!("{prefix}/{name}");
        Self { url, name }
    }
}

pub fn test_vault_key() -> String {
    // Fixed test key (base64 of 32 bytes of 0x2a); never used outside tests.
    "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=".to_owned()
}

/// Settings laid over a test's configuration: dotted keys and values.
pub type Settings = Vec<(&'static str, serde_json::Value)>;

/// Knobs for the simulated registries and the engine's timing in a test.
#[derive(Clone, Debug)]
pub struct Options {
    pub db: Option<String>,
    /// Seconds until the simulated TjänsteID-service confirms; `None`: never (tests confirm).
    pub confirm_after: Option<f64>,
    pub failure_rate: f64,
    pub reconcile_interval: f64,
    pub remind_after: f64,
    pub escalate_after: f64,
    pub max_attempts: u32,
    pub auto_employ: bool,
    /// Run the saga engine (off: an API-only replica; cases stay where the API puts them).
    pub engine: bool,
    /// Real connectors instead of the simulated ones.
    pub connectors: Option<Connectors>,
    /// Last changes to the configuration (e.g. the limits a test exercises).
    pub configure: Option<fn(&mut Config)>,
    /// Seconds an idle worker sleeps before it looks for work without being woken.
    pub idle_poll: f64,
    /// `[retention]` instead of the defaults.
    pub retention: Option<etjanstekort_gateway::retention::RetentionSettings>,
    /// Serve the operator console (`[console] enabled`).
    pub console: bool,
    /// Seconds between the gateway's own audit chain verifications; `None`: off.
    pub audit_every: Option<f64>,
    /// Settings laid over the test configuration (dotted keys).
    pub settings: Settings,
    /// Runs on the data directory after the dev environment is written, before the server
    /// starts (e.g. to put a different CRL in place); returns settings to lay over the rest.
    pub prepare: Option<fn(&std::path::Path) -> Settings>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            db: None,
            confirm_after: None,
            failure_rate: 0.0,
            reconcile_interval: 0.0,
            remind_after: 3600.0,
            escalate_after: 7200.0,
            max_attempts: 12,
            auto_employ: true,
            engine: true,
            connectors: None,
            configure: None,
            idle_poll: 0.05,
            retention: None,
            console: true,
            audit_every: None,
            settings: Vec::new(),
            prepare: None,
        }
    }
}

/// The API alone (no saga engine): cases stay `ACCEPTED` unless a call moves them.
pub async fn spawn_app() -> TestApp {
    spawn_app_opts(Options {
        engine: false,
        ..Options::default()
    })
    .await
}

pub async fn spawn_app_with(db: Option<TestDb>) -> TestApp {
    spawn_app_opts(Options {
        db: db.map(|d| d.url),
        engine: false,
        ..Options::default()
    })
    .await
}

pub async fn spawn_app_opts(opts: Options) -> TestApp {
    install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let (paths, _) = devcerts::ensure(dir.path()).expect("dev environment");
    let prepared = opts.prepare.map(|p| p(dir.path())).unwrap_or_default();
    let db_url = opts
        .db
        .clone()
        .unwrap_or_else(|| TestDb::sqlite(dir.path()).url);
    let mut layers = Layers::defaults()
        .set("server.listen", "127.0.0.1:0")
        .set("tls.cert", &paths.server_cert)
        .set("tls.key", &paths.server_key)
        .set("tls.client_ca", &paths.ca)
        .set("auth.principals_file", &paths.principals)
        .set("database.url", db_url)
        .set("privacy.master_key", test_vault_key())
        .set("admin.listen", "127.0.0.1:0")
        // As in dev mode: the dev CA's CRL is checked, and changed files are picked up fast.
        .set("tls.revocation.files", [&paths.crl])
        .set("server.reload_interval", "100ms");
    for (key, value) in opts.settings.iter().chain(&prepared) {
        layers = layers.set(key, value);
    }
    let mut cfg = layers.config().expect("test configuration");
    let ms = std::time::Duration::from_millis;
    let secs = std::time::Duration::from_secs_f64;
    cfg.engine.idle_poll = secs(opts.idle_poll);
    cfg.server.health_probe = ms(100);
    cfg.admin.stats_interval = ms(100);
    cfg.engine.timers.poll_interval = ms(50);
    cfg.engine.retry.backoff_base = ms(20);
    cfg.engine.retry.backoff_max = ms(1000);
    cfg.engine.retry.max_attempts = opts.max_attempts;
    cfg.engine.workers = if opts.engine { 4 } else { 0 };
    cfg.engine.timers.remind_after = secs(opts.remind_after);
    cfg.engine.timers.escalate_after = secs(opts.escalate_after);
    cfg.engine.reconcile_interval = secs(opts.reconcile_interval);
    if let Some(r) = opts.retention.clone() {
        cfg.retention = r;
    }
    cfg.console.enabled = opts.console;
    cfg.console.trace_url_template = TRACE_URL_TEMPLATE.into();
    cfg.audit.verify_interval = opts.audit_every.map_or(std::time::Duration::ZERO, secs);
    // Tests call as fast as they can: the rate limit is out of the way unless a test sets it.
    for rate in [
        &mut cfg.limits.care_provider,
        &mut cfg.limits.health_care_office,
        &mut cfg.limits.tjansteid_service,
        &mut cfg.limits.operator,
        &mut cfg.limits.certificate,
    ] {
        rate.requests_per_second = 1e6;
        rate.burst = 1_000_000;
    }
    if let Some(configure) = opts.configure {
        configure(&mut cfg);
    }
    let faults = Faults {
        latency: std::time::Duration::ZERO,
        failure_rate: opts.failure_rate,
    };
    let tjansteid = Arc::new(SimulatedTjansteId::new(
        opts.confirm_after.map(std::time::Duration::from_secs_f64),
        faults,
        None,
    ));
    let kiv = Arc::new(SimulatedKiv::new(opts.auto_employ, faults, None));
    let notifier = Arc::new(LogNotifier::new(faults, None));
    let connectors = Connectors {
        tjansteid: tjansteid.clone(),
        kiv: kiv.clone(),
        notifier: notifier.clone(),
        gateway_removes_kiv: true,
        revocation: None,
    };
    let mut connectors = opts.connectors.clone().unwrap_or(connectors);
    // A revocation check set in `[revocation_check]` (and no connectors given): built from the
    // configuration as `serve` builds it, beside the simulated registries the test inspects.
    if opts.connectors.is_none() && !matches!(cfg.revocation_check, RevocationCheckSettings::Off) {
        connectors.revocation = build_connectors(&cfg, &Arc::new(Metrics::new()))
            .expect("revocation check from the configuration")
            .revocation;
    }
    let app = App::build_with(cfg, connectors).await.expect("app builds");
    let addr = app.local_addr();
    let admin = app.admin_addr().expect("admin listener on");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    let ca_pem = std::fs::read_to_string(&paths.ca).expect("ca");
    TestApp {
        addr,
        admin,
        dir,
        ca_pem,
        tjansteid,
        kiv,
        notifier,
        shutdown: Some(tx),
    }
}

impl TestApp {
    /// Starts the server's shutdown (as SIGTERM would); the test keeps the admin listener.
    pub fn shutdown(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }

    pub fn identity_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let certs = self.dir.path().join("certs");
        (
            certs.join(format!("{name}.pem")),
            certs.join(format!("{name}.key")),
        )
    }

    /// The dev identity `name` (provider-a, provider-b, office, tjansteid, operator).
    pub fn issued(&self, name: &str) -> IssuedCert {
        let (c, k) = self.identity_paths(name);
        IssuedCert {
            cert_pem: std::fs::read_to_string(c).expect("cert"),
            key_pem: std::fs::read_to_string(k).expect("key"),
        }
    }

    /// A certificate from the server's own CA with any subject serialNumber.
    pub fn issue_from_server_ca(&self, serial: Option<&str>) -> IssuedCert {
        let key = std::fs::read_to_string(self.dir.path().join("certs/ca.key")).expect("ca key");
        let ca = DevCa::from_pem(&self.ca_pem, &key).expect("ca loads");
        ca.issue_client("test client", serial).expect("issue")
    }

    /// The dev CA (certificate and key) of this app.
    pub fn dev_ca(&self) -> DevCa {
        dev_ca(self.dir.path())
    }

    /// Replaces the CRL file the app checks with one from the dev CA revoking `revoked`
    /// (written beside it and renamed over it: a reader never sees half a file).
    pub fn publish_crl(&self, revoked: &[Vec<u8>]) {
        let now = std::time::SystemTime::now();
        // One second on: a list is never older than the one it replaces.
        let pem = self
            .dev_ca()
            .crl(
                revoked,
                now + std::time::Duration::from_secs(1),
                now + std::time::Duration::from_secs(86_400),
            )
            .expect("crl");
        replace_file(&self.dir.path().join("certs/ca.crl.pem"), &pem);
    }

    pub async fn channel_with(
        &self,
        client: Option<&IssuedCert>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        if let Some(c) = client {
            tls = tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
        }
        Endpoint::from_shared(format!("https://{}", self.addr))?
            .tls_config(tls)?
            .connect()
            .await
    }

    pub async fn channel(&self, name: &str) -> Channel {
        self.channel_with(Some(&self.issued(name)))
            .await
            .expect("connect")
    }

    pub async fn provider(&self, name: &str) -> DeregistrationServiceClient<Channel> {
        DeregistrationServiceClient::new(self.channel(name).await)
    }
}

/// A TLS connection to the app's gRPC port made with rustls directly (no HTTP/2 on top),
/// trusting `ca_pem`, presenting `client`.
pub async fn raw_tls(
    app: &TestApp,
    ca_pem: &str,
    client: &IssuedCert,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca")).expect("root");
    }
    let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).expect("key");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client auth");
    let tcp = tokio::net::TcpStream::connect(app.addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

/// The server's verdict on a handshake with `client`: `Ok` when it accepted the certificate
/// (its HTTP/2 SETTINGS frame arrives), otherwise the TLS error (e.g. the alert it sent).
/// Under TLS 1.3 the client finishes its side first; the server's refusal is the next read.
pub async fn handshake_verdict(app: &TestApp, client: &IssuedCert) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut tls = raw_tls(app, &app.ca_pem, client)
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(std::time::Duration::from_secs(10), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("closed without a word".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

/// The dev CA of a data directory.
pub fn dev_ca(dir: &std::path::Path) -> DevCa {
    let cert = std::fs::read_to_string(dir.join("certs/ca.pem")).expect("ca");
    let key = std::fs::read_to_string(dir.join("certs/ca.key")).expect("ca key");
    DevCa::from_pem(&cert, &key).expect("ca loads")
}

/// Writes `contents` beside `path` and renames it over `path` (atomic replacement).
pub fn replace_file(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The serial number (DER integer bytes) of a PEM certificate.
pub fn serial_of(cert_pem: &str) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).expect("pem");
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(&pem.contents).expect("der");
    cert.raw_serial().to_vec()
}

pub fn unit_a() -> String {
    devcerts::unit_a()
}

pub fn unit_b() -> String {
    devcerts::unit_b()
}

/// A valid report for `unit`, with the given personnummer text and card number.
pub fn report(unit: &str, pnr: &str, card: &str) -> pb::Deregistration {
    pb::Deregistration {
        care_unit_hsa_id: unit.to_owned(),
        card_holder: Some(pb::CardHolder {
            personal_identity_number: pnr.to_owned(),
            full_name: "Tolvan Tolvansson".into(),
            email: "tolvan@example.se".into(),
        }),
        card_number: card.to_owned(),
        reason: pb::Reason::EmploymentEnded as i32,
        card_received_time: Some(prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        }),
        card_cut_across_chip: true,
        reported_by: Some(pb::Reporter {
            hsa_id: format!("{}-P000000000099", devcerts::TEST_ORG),
            full_name: "Vera Verksamhetschef".into(),
            email: "vera@example.se".into(),
        }),
        kiv_removal_route: pb::KivRemovalRoute::CareProvider as i32,
        ..Default::default()
    }
}

pub fn create(request_id: &str, d: pb::Deregistration) -> pb::CreateDeregistrationRequest {
    pb::CreateDeregistrationRequest {
        request_id: request_id.to_owned(),
        deregistration: Some(d),
    }
}

/// The BadRequest field violations of a status, as (field, description).
pub fn violations(status: &tonic::Status) -> HashMap<String, String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

impl TestApp {
    pub async fn get(&self, id: &str) -> pb::Deregistration {
        self.provider("provider-a")
            .await
            .get_deregistration(pb::GetDeregistrationRequest { id: id.to_owned() })
            .await
            .expect("get")
            .into_inner()
            .deregistration
            .expect("case")
    }

    /// Reports a case as provider-a; returns its id.
    pub async fn create_case(&self, request_id: &str, d: pb::Deregistration) -> String {
        self.provider("provider-a")
            .await
            .create_deregistration(create(request_id, d))
            .await
            .expect("created")
            .into_inner()
            .deregistration
            .expect("case")
            .id
    }

    /// The kinds of the case's audit events that its watch stream delivers within `window`
    /// (the past ones first). A test proves that something does not happen by watching the
    /// stream up to a deadline, not by sleeping and then looking once.
    pub async fn events_within(&self, id: &str, window: std::time::Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + window;
        let mut stream = self
            .provider("provider-a")
            .await
            .watch_deregistration(pb::WatchDeregistrationRequest { id: id.to_owned() })
            .await
            .expect("watch")
            .into_inner();
        let mut kinds = Vec::new();
        while let Ok(next) = tokio::time::timeout_at(deadline, stream.message()).await {
            match next.expect("stream") {
                Some(m) => kinds.push(m.event.expect("event").kind),
                None => break,
            }
        }
        kinds
    }

    /// Polls provider-a's view of the case until it is in `state` (test helper; bounded).
    pub async fn wait_for(&self, id: &str, state: pb::State) -> pb::Deregistration {
        let mut client = self.provider("provider-a").await;
        let mut last = None;
        for _ in 0..400 {
            let d = client
                .get_deregistration(pb::GetDeregistrationRequest { id: id.to_owned() })
                .await
                .expect("get")
                .into_inner()
                .deregistration
                .expect("case");
            if d.state == state as i32 {
                return d;
            }
            last = Some(d);
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("case {id} never reached {state:?}; last seen {last:?}");
    }
}

/// The BadRequest rule codes of a status, as (field, reason).
pub fn reasons(status: &tonic::Status) -> HashMap<String, String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.reason))
                .collect()
        })
        .unwrap_or_default()
}

/// The `google.rpc.ErrorInfo` reason of an error status (every error the gateway answers
/// carries one), after checking its domain.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"));
    assert_eq!(
        info.domain,
        etjanstekort_gateway::api::error::ERROR_DOMAIN,
        "{status:?}"
    );
    info.reason
}
