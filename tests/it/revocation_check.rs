//! The CRL connector of the revocation check (issue #14) against a real distribution point: a
//! test CA made with rcgen issues card certificates naming an HTTP server on loopback whose
//! CRL the test swaps. Time is the `now` each check is asked about, against the lists'
//! validity windows: nothing sleeps. The tests "through the gateway" (below) run the whole
//! routine with the connector built from `[revocation_check] kind = "crl"`; there the lists'
//! windows are seconds and the re-checks are real.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etjanstekort_gateway::connectors::crl_status::{CrlCheckSettings, CrlRevocationStatus};
use etjanstekort_gateway::connectors::{
    CertificateStatus, ConnectorError, RevocationStatus, card_certs,
};
use etjanstekort_gateway::devcerts::DevCa;
use etjanstekort_gateway::domain::{CardCertificate, CertificateSource, Timestamp};
use etjanstekort_gateway::metrics::Metrics;

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);
const HOLDER: &str = "Anna Kortinnehavare";
const HOLDER_HSA_ID: &str = "SE2321000016-9TST";

/// A CRL distribution point on loopback serving `body` (404 while it is empty), counting
/// requests.
#[derive(Clone, Default)]
struct Publication {
    body: Arc<Mutex<Vec<u8>>>,
    requests: Arc<AtomicUsize>,
}

impl Publication {
    fn publish(&self, body: impl Into<Vec<u8>>) {
        *self.body.lock().expect("lock") = body.into();
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve(listener: tokio::net::TcpListener, p: Publication) {
    use axum::http::StatusCode;
    let app = axum::Router::new().route(
        "/card-ca.crl",
        axum::routing::get(move || {
            let p = p.clone();
            async move {
                p.requests.fetch_add(1, Ordering::SeqCst);
                let body = p.body.lock().expect("lock").clone();
                if body.is_empty() {
                    (StatusCode::NOT_FOUND, Vec::new())
                } else {
                    (StatusCode::OK, body)
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
}

async fn distribution_point(p: Publication) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    serve(listener, p).await;
    addr
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/card-ca.crl")
}

/// Whole seconds (CRLs carry no fractions).
fn t0() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn at(t: SystemTime) -> Timestamp {
    Timestamp::from_system(t)
}

struct Card {
    certificate: CardCertificate,
    /// The certificate itself (DER), as a confirmation may give it.
    der: Vec<u8>,
    /// The serial as in the certificate (DER integer content), for CRLs.
    raw_serial: Vec<u8>,
}

/// A card certificate of `ca` naming `crl_urls` as its distribution points, read as the
/// gateway reads a confirmation's certificate.
fn card(ca: &DevCa, crl_urls: &[String]) -> Card {
    let issued = ca
        .issue_client_with(HOLDER, Some(HOLDER_HSA_ID), crl_urls)
        .expect("card certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).expect("pem");
    let raw_serial = {
        use x509_parser::prelude::FromDer;
        let (_, cert) =
            x509_parser::certificate::X509Certificate::from_der(&pem.contents).expect("der");
        cert.raw_serial().to_vec()
    };
    let facts = card_certs::read(&pem.contents, CertificateSource::Confirmation).expect("read");
    assert_eq!(facts.certificate.crl_urls, crl_urls);
    Card {
        certificate: facts.certificate,
        der: pem.contents,
        raw_serial,
    }
}

fn der(crl_pem: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateRevocationListDer;
    use rustls_pki_types::pem::PemObject;
    CertificateRevocationListDer::from_pem_slice(crl_pem.as_bytes())
        .expect("crl pem")
        .as_ref()
        .to_vec()
}

/// A CRL of `ca` (PEM) listing `revoked`, valid from `this_update` until `next_update`.
fn crl(ca: &DevCa, revoked: &[&Card], this_update: SystemTime, next_update: SystemTime) -> String {
    let serials: Vec<Vec<u8>> = revoked.iter().map(|c| c.raw_serial.clone()).collect();
    ca.crl(&serials, this_update, next_update).expect("crl")
}

/// Settings trusting `cas` (written to a bundle in `dir`): one attempt per fetch, no pause
/// between rounds (the rounds' bound has its own test).
fn settings(dir: &tempfile::TempDir, cas: &[&DevCa]) -> CrlCheckSettings {
    let path = dir.path().join("card-cas.pem");
    let bundle: String = cas.iter().map(|c| c.cert_pem.as_str()).collect();
    std::fs::write(&path, bundle).expect("bundle");
    let mut s = CrlCheckSettings::with_ca_file(path);
    s.fetch_attempts = 1;
    s.fetch_timeout = Duration::from_secs(5);
    s.min_fetch_interval = Duration::ZERO;
    s
}

fn connector(s: &CrlCheckSettings) -> CrlRevocationStatus {
    CrlRevocationStatus::new(s, Arc::new(Metrics::new())).expect("connector")
}

fn retryable(result: Result<CertificateStatus, ConnectorError>) -> String {
    match result {
        Err(ConnectorError::Retryable(m)) => {
            assert!(
                !m.contains(HOLDER) && !m.contains(HOLDER_HSA_ID),
                "personal data in {m}"
            );
            m
        }
        other => panic!("expected a retryable failure, got {other:?}"),
    }
}

fn revoked(
    result: Result<CertificateStatus, ConnectorError>,
) -> etjanstekort_gateway::connectors::RevocationList {
    match result {
        Ok(CertificateStatus::Revoked { list }) => list,
        other => panic!("expected Revoked, got {other:?}"),
    }
}

fn not_listed(
    result: Result<CertificateStatus, ConnectorError>,
) -> etjanstekort_gateway::connectors::RevocationList {
    match result {
        Ok(CertificateStatus::NotListed { list }) => list,
        other => panic!("expected NotListed, got {other:?}"),
    }
}

/// Revoked and not revoked, from a list served as DER and as PEM; the list is fetched once and
/// then answered from while it is fresh.
#[tokio::test]
async fn a_card_certificate_is_found_revoked_or_not_listed_on_its_cas_list_in_der_and_pem() {
    for pem in [false, true] {
        let ca = DevCa::generate("Card TEST CA").expect("ca");
        let publication = Publication::default();
        let addr = distribution_point(publication.clone()).await;
        let cut = card(&ca, &[url(addr)]);
        let other = card(&ca, &[url(addr)]);
        let now = t0();
        let (this_update, next_update) = (now - 10 * MINUTE, now + HOUR);
        let list = crl(&ca, &[&cut], this_update, next_update);
        publication.publish(if pem { list.into_bytes() } else { der(&list) });
        let dir = tempfile::tempdir().expect("dir");
        let check = connector(&settings(&dir, &[&ca]));
        assert_eq!(check.name(), "crl");

        let list = revoked(check.status(&cut.certificate, at(now)).await);
        assert_eq!(list.this_update, at(this_update), "pem: {pem}");
        assert_eq!(list.next_update, at(next_update));
        assert_eq!(list.source, url(addr));
        assert!(list.issuer.contains("Card TEST CA"), "{}", list.issuer);
        assert_eq!(
            not_listed(check.status(&other.certificate, at(now + MINUTE)).await),
            list
        );
        assert_eq!(publication.requests(), 1, "answered from the list held");
        // The probe does not judge the lists (a documented choice).
        check.probe().await.expect("ready");
    }
}

/// A list that shows the certificate not revoked is replaced by the next publication once it
/// is past its nextUpdate; an older list served again is not believed (no roll-back).
#[tokio::test]
async fn a_newer_publication_is_picked_up_once_the_list_held_is_past_its_next_update() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    let cut = card(&ca, &[url(addr)]);
    let now = t0();
    let first = crl(&ca, &[], now - 10 * MINUTE, now + HOUR);
    publication.publish(first.clone());
    let dir = tempfile::tempdir().expect("dir");
    let check = connector(&settings(&dir, &[&ca]));

    let held = not_listed(check.status(&cut.certificate, at(now)).await);
    assert_eq!(held.next_update, at(now + HOUR));
    // Published, but the list held is fresh until its nextUpdate: the answer stands.
    publication.publish(crl(&ca, &[&cut], now + 50 * MINUTE, now + 2 * HOUR));
    assert_eq!(
        not_listed(check.status(&cut.certificate, at(now + 30 * MINUTE)).await),
        held
    );
    assert_eq!(publication.requests(), 1);
    // Past it: fetched again, and the new publication answers.
    let list = revoked(
        check
            .status(&cut.certificate, at(now + HOUR + MINUTE))
            .await,
    );
    assert_eq!(list.this_update, at(now + 50 * MINUTE));
    assert_eq!(list.next_update, at(now + 2 * HOUR));
    assert_eq!(publication.requests(), 2);

    // The old list served again after that one's nextUpdate: refused, and the list held is
    // stale: no answer.
    publication.publish(first);
    let m = retryable(check.status(&cut.certificate, at(now + 3 * HOUR)).await);
    assert!(m.contains("stale since"), "{m}");
    assert!(m.contains("older than the CRL in force"), "{m}");
}

/// A list past its nextUpdate answers nothing, whatever it lists: not a second after it (the
/// saga believes a verification only if it was read by the list's nextUpdate).
#[tokio::test]
async fn an_expired_list_is_never_believed() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    let cut = card(&ca, &[url(addr)]);
    let other = card(&ca, &[url(addr)]);
    let now = t0();
    publication.publish(crl(&ca, &[&cut], now - 3 * HOUR, now - HOUR));
    let dir = tempfile::tempdir().expect("dir");
    let s = settings(&dir, &[&ca]);
    let check = connector(&s);

    for c in [&cut, &other] {
        let m = retryable(check.status(&c.certificate, at(now)).await);
        assert!(m.contains("stale since"), "{m}");
        assert!(m.contains("Card TEST CA"), "{m}");
    }
    // Each check found the list outdated and fetched again: still the same old list.
    assert_eq!(publication.requests(), 2);

    // The same list answers at its nextUpdate, and not a second later.
    let next_update = now - HOUR;
    let edge = connector(&s);
    revoked(edge.status(&cut.certificate, at(next_update)).await);
    not_listed(edge.status(&other.certificate, at(next_update)).await);
    for c in [&cut, &other] {
        let m = retryable(
            edge.status(&c.certificate, at(next_update + Duration::from_secs(1)))
                .await,
        );
        assert!(m.contains("stale since"), "{m}");
    }
}

/// A list signed by another key under the CA's name is never believed: neither its
/// revocations nor its silence.
#[tokio::test]
async fn a_wrongly_signed_list_is_never_believed() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let impostor = DevCa::generate("Card TEST CA").expect("same name, other key");
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    let cut = card(&ca, &[url(addr)]);
    let now = t0();
    let dir = tempfile::tempdir().expect("dir");
    let metrics = Arc::new(Metrics::new());
    let check = CrlRevocationStatus::new(&settings(&dir, &[&ca]), metrics.clone()).expect("crl");

    for listed in [true, false] {
        let revoked: Vec<&Card> = if listed { vec![&cut] } else { vec![] };
        publication.publish(crl(&impostor, &revoked, now - MINUTE, now + HOUR));
        let m = retryable(check.status(&cut.certificate, at(now)).await);
        assert!(m.contains("signature does not verify"), "{m}");
        assert!(m.contains("no trustworthy CRL"), "{m}");
    }
    // The CA's own list is believed.
    publication.publish(crl(&ca, &[], now - MINUTE, now + HOUR));
    not_listed(check.status(&cut.certificate, at(now)).await);
    // A newer one from the impostor once that is past nextUpdate: refused; the list held is
    // stale, so no answer (least of all Revoked).
    publication.publish(crl(&impostor, &[&cut], now + HOUR, now + 3 * HOUR));
    let m = retryable(check.status(&cut.certificate, at(now + 2 * HOUR)).await);
    assert!(m.contains("stale since"), "{m}");
    assert!(m.contains("signature does not verify"), "{m}");

    // Counted as the card check's, apart from the client certificates' CRLs.
    let samples = crate::admin::parse_prometheus(&metrics.render());
    let count = |k: &str| samples.get(k).copied().unwrap_or_default();
    assert_eq!(
        count("etk_card_crl_updates_total{source=\"url\",outcome=\"bad_signature\"}"),
        3.0
    );
    assert_eq!(
        count("etk_card_crl_updates_total{source=\"url\",outcome=\"applied\"}"),
        1.0
    );
    assert!(
        !samples.keys().any(|k| k.starts_with("etk_crl_")),
        "{samples:?}"
    );
    assert!(
        samples
            .keys()
            .any(|k| k.starts_with("etk_card_crl_next_update_timestamp_seconds{issuer=")),
        "{samples:?}"
    );
}

/// A certificate of a CA that is not configured is refused for good, and its distribution
/// point is not fetched.
#[tokio::test]
async fn a_certificate_of_an_unknown_issuer_is_terminal() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let stranger = DevCa::generate("Stranger TEST CA").expect("ca");
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    let now = t0();
    publication.publish(crl(&stranger, &[], now - MINUTE, now + HOUR));
    let foreign = card(&stranger, &[url(addr)]);
    let dir = tempfile::tempdir().expect("dir");
    let check = connector(&settings(&dir, &[&ca]));
    match check.status(&foreign.certificate, at(now)).await {
        Err(ConnectorError::Terminal(m)) => {
            assert!(m.contains("Stranger TEST CA"), "{m}");
            assert!(m.contains(&foreign.certificate.serial), "{m}");
            assert!(!m.contains(HOLDER) && !m.contains(HOLDER_HSA_ID), "{m}");
        }
        other => panic!("expected a terminal failure, got {other:?}"),
    }
    assert_eq!(publication.requests(), 0);
}

/// A distribution point with nothing listening: retryable with the reason; once it serves,
/// the next check answers.
#[tokio::test]
async fn an_unreachable_distribution_point_is_retryable_until_it_serves() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let (listener, addr) = reserved_port().await;
    drop(listener);
    let cut = card(&ca, &[url(addr)]);
    let now = t0();
    let dir = tempfile::tempdir().expect("dir");
    let check = connector(&settings(&dir, &[&ca]));

    let m = retryable(check.status(&cut.certificate, at(now)).await);
    assert!(m.contains("no trustworthy CRL"), "{m}");
    assert!(m.contains(&url(addr)) && m.contains("connect"), "{m}");

    let publication = Publication::default();
    publication.publish(der(&crl(&ca, &[&cut], now - MINUTE, now + HOUR)));
    serve(rebind(addr).await, publication.clone()).await;
    revoked(check.status(&cut.certificate, at(now)).await);
    assert_eq!(publication.requests(), 1);
}

/// However many checks ask, a CA's distribution point gets one round of fetches per
/// `min_fetch_interval`.
#[tokio::test]
async fn a_distribution_point_is_not_hammered() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    let cut = card(&ca, &[url(addr)]);
    let now = t0();
    let dir = tempfile::tempdir().expect("dir");
    let mut s = settings(&dir, &[&ca]);
    s.min_fetch_interval = HOUR;
    let check = connector(&s);
    // Nothing published yet (404).
    for _ in 0..5 {
        let m = retryable(check.status(&cut.certificate, at(now)).await);
        assert!(m.contains("HTTP status 404"), "{m}");
    }
    assert_eq!(publication.requests(), 1);
    // Published: still within the interval, so not fetched yet.
    publication.publish(crl(&ca, &[&cut], now - MINUTE, now + HOUR));
    retryable(check.status(&cut.certificate, at(now)).await);
    assert_eq!(publication.requests(), 1);
}

/// A configured CRL file (and no distribution point): its list answers, and names the file.
#[tokio::test]
async fn a_configured_crl_file_is_a_source() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let cut = card(&ca, &[]);
    let other = card(&ca, &[]);
    let now = t0();
    let dir = tempfile::tempdir().expect("dir");
    let path: PathBuf = dir.path().join("card-ca.crl");
    let mut s = settings(&dir, &[&ca]);
    s.distribution_points = false;
    s.files = vec![path.clone()];
    let check = connector(&s);

    // No file yet: retryable, naming it.
    let m = retryable(check.status(&cut.certificate, at(now)).await);
    assert!(m.contains(&path.display().to_string()), "{m}");

    std::fs::write(&path, der(&crl(&ca, &[&cut], now - MINUTE, now + HOUR))).expect("crl");
    let list = revoked(check.status(&cut.certificate, at(now)).await);
    assert_eq!(list.source, path.display().to_string());
    not_listed(check.status(&other.certificate, at(now)).await);
    // A newer list in the file (PEM this time) is read once the one held is past nextUpdate.
    std::fs::write(&path, crl(&ca, &[&cut, &other], now + HOUR, now + 2 * HOUR)).expect("crl");
    let list = revoked(
        check
            .status(&other.certificate, at(now + HOUR + MINUTE))
            .await,
    );
    assert_eq!(list.this_update, at(now + HOUR));
}

/// A certificate named only by serial and issuer (as a confirmation may name it) is checked on
/// the list its CA's other certificates led to; before any did, there is no source.
#[tokio::test]
async fn a_certificate_named_by_serial_and_issuer_is_checked_on_its_cas_list() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    let with_point = card(&ca, &[url(addr)]);
    let cut = card(&ca, &[]);
    let now = t0();
    publication.publish(crl(&ca, &[&cut], now - MINUTE, now + HOUR));
    // The issuer as RFC 4514 text would have it (parts reversed, other case).
    let named = CardCertificate::new(
        &cut.certificate.serial.to_uppercase(),
        "o=etjanstekort-gateway TEST,cn=card test ca",
        CertificateSource::Confirmation,
    )
    .expect("certificate");
    let dir = tempfile::tempdir().expect("dir");
    let check = connector(&settings(&dir, &[&ca]));

    let m = retryable(check.status(&named, at(now)).await);
    assert!(m.contains("no source names it"), "{m}");
    not_listed(check.status(&with_point.certificate, at(now)).await);
    let list = revoked(check.status(&named, at(now)).await);
    assert_eq!(list.source, url(addr));
}

/// A listener on a free loopback port (dropped to leave nothing listening there).
async fn reserved_port() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

async fn rebind(addr: SocketAddr) -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket.bind(addr).expect("the port again");
    socket.listen(16).expect("listen")
}

// Through the gateway: the CRL connector built from `[revocation_check] kind = "crl"` as a
// user configures it, the saga driven by `RevocationService.ConfirmRevocation`, the test CA's
// lists served by a real distribution point on loopback. Each case is followed to its end
// through the API and the audit trail, with KIV (the simulated registry) watched throughout.

use etjanstekort_gateway::api::pb;
use pb::operations_service_client::OperationsServiceClient;
use serde_json::json;

use crate::helpers::{Options, Settings, TestApp, spawn_app_opts};
use crate::verification::{audit, confirm, holder, metric, reported, unit};

const SECOND: Duration = Duration::from_secs(1);

/// A gateway checking revocation on the CRLs of `ca` (its certificate in a bundle the
/// configuration names), with one attempt per fetch and no pause between rounds, `extra` laid
/// over that, and `max_attempts` attempts per saga step.
struct Gateway {
    app: TestApp,
    _dir: tempfile::TempDir,
}

async fn gateway(ca: &DevCa, extra: Settings, max_attempts: u32) -> Gateway {
    let dir = tempfile::tempdir().expect("dir");
    let bundle = dir.path().join("card-cas.pem");
    std::fs::write(&bundle, &ca.cert_pem).expect("bundle");
    let mut settings: Settings = vec![
        ("revocation_check.kind", json!("crl")),
        (
            "revocation_check.ca_file",
            json!(bundle.display().to_string()),
        ),
        ("revocation_check.fetch_attempts", json!(1)),
        ("revocation_check.fetch_timeout", json!("5s")),
        ("revocation_check.min_fetch_interval", json!("0s")),
    ];
    settings.extend(extra);
    let app = spawn_app_opts(Options {
        settings,
        max_attempts,
        ..Options::default()
    })
    .await;
    Gateway { app, _dir: dir }
}

/// The card certificate as the confirmation gives it: the certificate itself.
fn by_der(card: &Card) -> pb::RevokedCertificate {
    pb::RevokedCertificate {
        certificate_der: card.der.clone(),
        ..Default::default()
    }
}

/// The case as provider-a sees it.
async fn case(app: &TestApp, id: &str) -> pb::Deregistration {
    app.provider("provider-a")
        .await
        .get_deregistration(pb::GetDeregistrationRequest { id: id.to_owned() })
        .await
        .expect("get")
        .into_inner()
        .deregistration
        .expect("case")
}

/// Polls until the case is in `state` (bounded; re-checks wait for a list's nextUpdate, so
/// this allows longer than `TestApp::wait_for`).
async fn settle(app: &TestApp, id: &str, state: pb::State) -> pb::Deregistration {
    let mut last = None;
    for _ in 0..1200 {
        let d = case(app, id).await;
        if d.state == state as i32 {
            return d;
        }
        // Completed is final: no use waiting for another state.
        assert_ne!(
            d.state,
            pb::State::Completed as i32,
            "case {id} completed instead of reaching {state:?}: {d:?}"
        );
        last = Some(d);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("case {id} never reached {state:?}; last seen {last:?}");
}

/// The kinds of the case's audit trail, in order.
async fn kinds(app: &TestApp, id: &str) -> Vec<String> {
    audit(app, id).await.into_iter().map(|(k, _)| k).collect()
}

/// Polls until the case's trail holds an event of `kind` (bounded).
async fn trail_has(app: &TestApp, id: &str, kind: &str) {
    for _ in 0..1200 {
        if kinds(app, id).await.iter().any(|k| k == kind) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("case {id}: no {kind} in {:?}", kinds(app, id).await);
}

fn position(kinds: &[String], kind: &str) -> usize {
    kinds
        .iter()
        .position(|k| k == kind)
        .unwrap_or_else(|| panic!("no {kind} in {kinds:?}"))
}

/// Nothing has moved the case towards KIV: nobody told, the employment still there, no
/// verification in the trail.
async fn kiv_untouched(app: &TestApp, id: &str) {
    assert!(app.kiv.contains(&holder(), &unit()), "KIV was changed");
    assert!(app.notifier.sent().is_empty(), "{:?}", app.notifier.sent());
    let kinds = kinds(app, id).await;
    for never in [
        "revocation_verified",
        "head_notified",
        "notified",
        "kiv_removed",
    ] {
        assert!(!kinds.iter().any(|k| k == never), "{never} in {kinds:?}");
    }
}

/// A completed, verified case: verified before anyone was told and before KIV.
async fn completed_after_verification(app: &TestApp, id: &str) -> Vec<(String, String)> {
    let done = settle(app, id, pb::State::Completed).await;
    assert_eq!(done.revocation_check, pb::RevocationCheck::Verified as i32);
    assert!(!app.kiv.contains(&holder(), &unit()));
    let trail = audit(app, id).await;
    let kinds: Vec<String> = trail.iter().map(|(k, _)| k.clone()).collect();
    let confirmed = position(&kinds, "revocation_confirmed");
    let verified = position(&kinds, "revocation_verified");
    let told = position(&kinds, "head_notified");
    let removed = position(&kinds, "kiv_removed");
    assert!(
        confirmed < verified && verified < told && told < removed,
        "{kinds:?}"
    );
    // Serials and issuers only: nothing of the certificate's subject.
    for (kind, detail) in &trail {
        assert!(
            !detail.contains(HOLDER) && !detail.contains(HOLDER_HSA_ID),
            "{kind}: {detail}"
        );
    }
    trail
}

fn detail<'a>(trail: &'a [(String, String)], kind: &str) -> &'a str {
    &trail
        .iter()
        .find(|(k, _)| k == kind)
        .unwrap_or_else(|| panic!("no {kind} in {trail:?}"))
        .1
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// 1. The CA's list in force lists the card's certificate: verified at once, then the notices
/// and KIV.
#[tokio::test]
async fn through_the_gateway_a_certificate_on_its_cas_list_is_verified_at_once() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    let cut = card(&ca, &[url(addr)]);
    let now = t0();
    publication.publish(der(&crl(&ca, &[&cut], now - 10 * MINUTE, now + HOUR)));
    let g = gateway(&ca, Vec::new(), 12).await;
    let app = &g.app;

    let id = reported(app, "5400001").await;
    let confirmed = confirm(app, &id, vec![by_der(&cut)])
        .await
        .expect("confirm");
    assert_eq!(confirmed.state, pb::State::Revoked as i32);
    assert_eq!(
        confirmed.revocation_check,
        pb::RevocationCheck::Pending as i32
    );
    let trail = completed_after_verification(app, &id).await;
    let serial = format!("serial {}", cut.certificate.serial);
    assert!(
        detail(&trail, "revocation_confirmed").contains(&serial),
        "{trail:?}"
    );
    let verified = detail(&trail, "revocation_verified");
    assert!(verified.contains(&serial), "{verified}");
    assert!(verified.contains("Card TEST CA"), "{verified}");
    assert!(
        verified.contains(&format!("issued {}", unix(now - 10 * MINUTE))),
        "{verified}"
    );
    assert!(publication.requests() >= 1);
    assert!(metric(app, "etk_revocation_checks_total{outcome=\"verified\"}").await >= 1.0);
}

/// 1b. A confirmation naming the certificate by serial and issuer only (no certificate, so no
/// distribution point): checked on the list of the configured URL.
#[tokio::test]
async fn through_the_gateway_a_certificate_named_by_serial_and_issuer_is_verified() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    let cut = card(&ca, &[]);
    let now = t0();
    publication.publish(crl(&ca, &[&cut], now - 10 * MINUTE, now + HOUR));
    let g = gateway(
        &ca,
        vec![
            ("revocation_check.urls", json!([url(addr)])),
            ("revocation_check.distribution_points", json!(false)),
        ],
        12,
    )
    .await;
    let app = &g.app;

    let id = reported(app, "5400002").await;
    let named = pb::RevokedCertificate {
        serial_number: cut.certificate.serial.to_uppercase(),
        issuer: cut.certificate.issuer.clone(),
        certificate_der: Vec::new(),
    };
    confirm(app, &id, vec![named]).await.expect("confirm");
    let trail = completed_after_verification(app, &id).await;
    let verified = detail(&trail, "revocation_verified");
    assert!(
        verified.contains(&format!("serial {}", cut.certificate.serial)),
        "{verified}"
    );
    assert!(publication.requests() >= 1);
}

/// 2. Not on the list in force (issued before the confirmation): the case waits in REVOKED,
/// KIV untouched; the CA's next publication lists it, and the re-check at the list's
/// nextUpdate verifies it and the case completes.
#[tokio::test]
async fn through_the_gateway_a_certificate_is_verified_after_the_next_publication() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    let cut = card(&ca, &[url(addr)]);
    let g = gateway(&ca, Vec::new(), 12).await;
    let app = &g.app;

    let id = reported(app, "5400003").await;
    // The list in force, issued before the confirmation, without the certificate; the next
    // is due in a few seconds (published just now: the first look-up finds it current).
    let now = t0();
    publication.publish(crl(&ca, &[], now - MINUTE, now + 5 * SECOND));
    confirm(app, &id, vec![by_der(&cut)])
        .await
        .expect("confirm");
    trail_has(app, &id, "revocation_not_yet_listed").await;
    let waiting = case(app, &id).await;
    assert_eq!(waiting.state, pb::State::Revoked as i32);
    assert_eq!(
        waiting.revocation_check,
        pb::RevocationCheck::Pending as i32
    );
    kiv_untouched(app, &id).await;

    // The CA publishes its next list, now listing the certificate.
    let issued = t0();
    publication.publish(der(&crl(&ca, &[&cut], issued, issued + HOUR)));
    let trail = completed_after_verification(app, &id).await;
    let kinds: Vec<String> = trail.iter().map(|(k, _)| k.clone()).collect();
    assert!(
        position(&kinds, "revocation_not_yet_listed") < position(&kinds, "revocation_verified")
    );
    let verified = detail(&trail, "revocation_verified");
    assert!(
        verified.contains(&format!("issued {}", unix(issued))),
        "{verified}"
    );
    assert!(publication.requests() >= 2);
}

/// 3. A list issued after the confirmation that does not list the certificate: a discrepancy;
/// the case needs attention, KIV is untouched.
#[tokio::test]
async fn through_the_gateway_a_list_issued_after_the_confirmation_without_the_certificate_is_a_discrepancy()
 {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    let cut = card(&ca, &[url(addr)]);
    let g = gateway(&ca, Vec::new(), 12).await;
    let app = &g.app;

    let id = reported(app, "5400004").await;
    // The list in force, issued before the confirmation, without the certificate; the next
    // is due in a few seconds (published just now: the first look-up finds it current).
    let now = t0();
    publication.publish(crl(&ca, &[], now - MINUTE, now + 5 * SECOND));
    confirm(app, &id, vec![by_der(&cut)])
        .await
        .expect("confirm");
    // The confirmation is recorded no later than this.
    let confirmed_by = SystemTime::now();
    trail_has(app, &id, "revocation_not_yet_listed").await;
    // The CA's next list, issued (whole seconds) after the confirmation, still without it.
    let issued = UNIX_EPOCH + Duration::from_secs(unix(confirmed_by) + 1);
    while SystemTime::now() < issued {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publication.publish(crl(&ca, &[], issued, issued + HOUR));

    // The re-check's verdict (the one after "not yet listed") is the discrepancy.
    let verdicts = |kinds: Vec<String>| -> Vec<String> {
        kinds
            .into_iter()
            .filter(|k| {
                k.starts_with("revocation_")
                    && !matches!(k.as_str(), "revocation_requested" | "revocation_confirmed")
            })
            .collect()
    };
    let mut seen = Vec::new();
    for _ in 0..1200 {
        seen = verdicts(kinds(app, &id).await);
        if seen.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen,
        ["revocation_not_yet_listed", "revocation_discrepancy"],
        "the verdicts"
    );
    let parked = settle(app, &id, pb::State::NeedsAttention).await;
    assert!(
        parked.state_reason.contains(&cut.certificate.serial)
            && parked
                .state_reason
                .contains("issued after the confirmation"),
        "{}",
        parked.state_reason
    );
    assert_eq!(parked.revocation_check, pb::RevocationCheck::Pending as i32);
    let trail = audit(app, &id).await;
    let discrepancy = detail(&trail, "revocation_discrepancy");
    assert!(
        discrepancy.contains(&format!("issued {}", unix(issued))),
        "{discrepancy}"
    );
    kiv_untouched(app, &id).await;
    assert_eq!(
        metric(app, "etk_revocation_checks_total{outcome=\"discrepancy\"}").await,
        1.0
    );
}

/// 4. A list past its nextUpdate (the distribution point serves no newer one) is never
/// believed, though it lists the certificate: retried, then the case needs attention with the
/// reason; KIV untouched.
#[tokio::test]
async fn through_the_gateway_a_stale_list_is_never_believed() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    let cut = card(&ca, &[url(addr)]);
    let now = t0();
    publication.publish(crl(&ca, &[&cut], now - 3 * HOUR, now - HOUR));
    let g = gateway(&ca, Vec::new(), 4).await;
    let app = &g.app;

    let id = reported(app, "5400005").await;
    confirm(app, &id, vec![by_der(&cut)])
        .await
        .expect("confirm");
    let parked = settle(app, &id, pb::State::NeedsAttention).await;
    assert!(
        parked.state_reason.contains("stale since"),
        "{}",
        parked.state_reason
    );
    assert!(parked.state_reason.contains("gave up after 4 attempts"));
    kiv_untouched(app, &id).await;
    // Each attempt looked for a newer list.
    assert!(publication.requests() >= 4, "{}", publication.requests());
}

/// 5. A list under the CA's name signed by another key is never believed, though it lists the
/// certificate: retried, then the case needs attention with the reason. Once the CA's own
/// list is served, the operator's retry verifies and completes the case.
#[tokio::test]
async fn through_the_gateway_a_wrongly_signed_list_is_never_believed() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let impostor = DevCa::generate("Card TEST CA").expect("same name, other key");
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    let cut = card(&ca, &[url(addr)]);
    let now = t0();
    publication.publish(crl(&impostor, &[&cut], now - MINUTE, now + HOUR));
    let g = gateway(&ca, Vec::new(), 4).await;
    let app = &g.app;

    let id = reported(app, "5400007").await;
    confirm(app, &id, vec![by_der(&cut)])
        .await
        .expect("confirm");
    let parked = settle(app, &id, pb::State::NeedsAttention).await;
    assert!(
        parked.state_reason.contains("signature does not verify"),
        "{}",
        parked.state_reason
    );
    kiv_untouched(app, &id).await;

    publication.publish(crl(&ca, &[&cut], now, now + HOUR));
    OperationsServiceClient::new(app.channel("operator").await)
        .retry_deregistration(pb::RetryDeregistrationRequest { id: id.clone() })
        .await
        .expect("retry");
    completed_after_verification(app, &id).await;
}

/// 6. The distribution point is down (nothing listening): the look-up fails and is retried,
/// KIV untouched; once it serves the CA's list, a retry of the same step (within the
/// engine's attempts, no operator) verifies and the case completes.
#[tokio::test]
async fn through_the_gateway_an_unreachable_distribution_point_then_reachable_completes() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let (listener, addr) = reserved_port().await;
    drop(listener);
    let cut = card(&ca, &[url(addr)]);
    let now = t0();
    let g = gateway(&ca, Vec::new(), 30).await;
    let app = &g.app;

    let id = reported(app, "5400008").await;
    confirm(app, &id, vec![by_der(&cut)])
        .await
        .expect("confirm");
    let failed = "etk_connector_errors_total{connector=\"revocation_check\",class=\"retryable\"}";
    for _ in 0..1200 {
        if metric(app, failed).await >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(app, failed).await >= 1.0, "no failed look-up");
    assert_eq!(case(app, &id).await.state, pb::State::Revoked as i32);
    kiv_untouched(app, &id).await;

    let publication = Publication::default();
    publication.publish(der(&crl(&ca, &[&cut], now - MINUTE, now + HOUR)));
    serve(rebind(addr).await, publication.clone()).await;
    let trail = completed_after_verification(app, &id).await;
    assert!(
        !trail.iter().any(|(k, _)| k == "step_failed"),
        "completed within the engine's retries: {trail:?}"
    );
    assert!(publication.requests() >= 1);
}
