//! CRL entries by reason code, and delta CRLs, for both uses of the CRL module: the card
//! certificates of the revocation check (issue #14) and the client certificates of mutual TLS.
//!
//! A card certificate only on hold (`certificateHold`) is not revoked for the card check (the CA
//! may release it), but a client certificate on hold is still refused; `removeFromCRL` entries
//! revoke nothing; a delta CRL (`deltaCRLIndicator`) is never believed as a list. The CRLs are
//! made with rcgen (a delta CRL by adding the extension to an rcgen CRL and signing it again
//! with the CA's key). Time is the `now` each check is asked about: nothing sleeps.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::connectors::crl_status::{CrlCheckSettings, CrlRevocationStatus};
use etjanstekort_gateway::connectors::{
    CertificateStatus, ConnectorError, RevocationStatus, card_certs,
};
use etjanstekort_gateway::crl::{CrlError, CrlSettings, CrlStore, Policy, RefusalReason};
use etjanstekort_gateway::devcerts::DevCa;
use etjanstekort_gateway::domain::{CardCertificate, CertificateSource, Timestamp};
use etjanstekort_gateway::metrics::Metrics;
use rcgen::RevocationReason;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::admin::{parse_prometheus, wait_metric};
use crate::helpers::{handshake_verdict, reason, replace_file, serial_of, spawn_app};
use crate::revocation::served;

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);
const HOLDER: &str = "Anna Kortinnehavare";
const HOLDER_HSA_ID: &str = "SE2321000016-9TST";

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

/// One CRL entry: a serial (DER integer bytes) and its reason code, if any.
type Entry<'a> = (&'a [u8], Option<RevocationReason>);

/// A full CRL (DER) of `ca` with `entries`, valid from `this_update` until `next_update`.
fn crl(
    ca: &DevCa,
    entries: &[Entry<'_>],
    this_update: SystemTime,
    next_update: SystemTime,
) -> Vec<u8> {
    signed(ca, entries, this_update, next_update)
        .der()
        .as_ref()
        .to_vec()
}

/// `crl`, as PEM.
fn crl_pem(
    ca: &DevCa,
    entries: &[Entry<'_>],
    this_update: SystemTime,
    next_update: SystemTime,
) -> String {
    signed(ca, entries, this_update, next_update)
        .pem()
        .expect("pem")
}

fn signed(
    ca: &DevCa,
    entries: &[Entry<'_>],
    this_update: SystemTime,
    next_update: SystemTime,
) -> rcgen::CertificateRevocationList {
    let key = rcgen::KeyPair::from_pem(&ca.key_pem).expect("ca key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, key).expect("issuer");
    let when = time::OffsetDateTime::from;
    let number = this_update
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rcgen::CertificateRevocationListParams {
        this_update: when(this_update),
        next_update: when(next_update),
        crl_number: rcgen::SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: entries
            .iter()
            .map(|(serial, reason_code)| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(serial),
                revocation_time: when(this_update),
                reason_code: *reason_code,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .expect("crl")
}

/// The tag's header length and content length of the DER element at the start of `der`.
fn header(der: &[u8]) -> (usize, usize) {
    let first = usize::from(der[1]);
    if first < 0x80 {
        return (2, first);
    }
    let n = first & 0x7f;
    let len = der[2..2 + n]
        .iter()
        .fold(0usize, |a, b| (a << 8) | usize::from(*b));
    (2 + n, len)
}

fn content(element: &[u8]) -> &[u8] {
    let (h, l) = header(element);
    &element[h..h + l]
}

fn elements(mut der: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (h, l) = header(der);
        out.push(&der[..h + l]);
        der = &der[h + l..];
    }
    out
}

fn element(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(u8::try_from(n).expect("short"));
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | u8::try_from(bytes.len()).expect("length of length"));
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// `full` (a CRL of `ca`, DER) made a delta CRL: a critical `deltaCRLIndicator` (2.5.29.27,
/// base CRL number 1) added to its extensions, signed again with the CA's key.
fn delta(ca: &DevCa, full: &[u8]) -> Vec<u8> {
    use rcgen::SigningKey;
    let top = elements(content(full));
    assert_eq!(top.len(), 3, "tbsCertList, signatureAlgorithm, signature");
    let indicator = element(
        0x30,
        &[
            element(0x06, &[0x55, 0x1d, 0x1b]),
            element(0x01, &[0xff]),
            element(0x04, &element(0x02, &[0x01])),
        ]
        .concat(),
    );
    let mut tbs = Vec::new();
    let mut extended = false;
    for part in elements(content(top[0])) {
        if part[0] == 0xa0 {
            // [0] EXPLICIT Extensions: one more in the SEQUENCE.
            let mut extensions = content(content(part)).to_vec();
            extensions.extend(&indicator);
            tbs.extend(element(0xa0, &element(0x30, &extensions)));
            extended = true;
        } else {
            tbs.extend_from_slice(part);
        }
    }
    assert!(extended, "rcgen CRLs carry extensions (crlNumber)");
    let tbs = element(0x30, &tbs);
    let key = rcgen::KeyPair::from_pem(&ca.key_pem).expect("ca key");
    let signature = key.sign(&tbs).expect("sign");
    let bits = element(0x03, &[&[0u8][..], &signature].concat());
    element(0x30, &[tbs, top[1].to_vec(), bits].concat())
}

struct Card {
    certificate: CardCertificate,
    der: Vec<u8>,
    raw_serial: Vec<u8>,
}

impl Card {
    fn listed(&self, reason: Option<RevocationReason>) -> Entry<'_> {
        (&self.raw_serial, reason)
    }
}

/// A certificate of `ca` (a card's, or a client's: the CRL module does not care).
fn card(ca: &DevCa) -> Card {
    let issued = ca
        .issue_client_with(HOLDER, Some(HOLDER_HSA_ID), &[])
        .expect("certificate");
    let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
        .expect("pem")
        .as_ref()
        .to_vec();
    let facts = card_certs::read(&der, CertificateSource::Confirmation).expect("read");
    Card {
        certificate: facts.certificate,
        raw_serial: serial_of(&issued.cert_pem),
        der,
    }
}

/// The card check reading the CRL file `file` only, trusting `ca`.
fn card_check(dir: &Path, ca: &DevCa, file: &Path, metrics: Arc<Metrics>) -> CrlRevocationStatus {
    let bundle = dir.join("card-cas.pem");
    std::fs::write(&bundle, &ca.cert_pem).expect("bundle");
    let mut s = CrlCheckSettings::with_ca_file(bundle);
    s.distribution_points = false;
    s.files = vec![file.to_owned()];
    s.min_fetch_interval = Duration::ZERO;
    CrlRevocationStatus::new(&s, metrics).expect("connector")
}

/// The settings of `[tls.revocation]` reading the CRL file `file` only, failing closed.
fn tls_settings(file: &Path) -> CrlSettings {
    CrlSettings {
        files: vec![file.to_owned()],
        urls: vec![],
        distribution_points: false,
        refresh: HOUR,
        fetch_timeout: Duration::from_secs(5),
        fetch_attempts: 1,
        stale_grace: Duration::ZERO,
        when_stale: Policy::Refuse,
        without_crl: Policy::Refuse,
    }
}

fn tls_store(ca: &DevCa, file: &Path, metrics: Arc<Metrics>) -> CrlStore {
    let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("ca pem");
    CrlStore::new(tls_settings(file), &[ca_der], metrics)
}

fn status_of(result: Result<CertificateStatus, ConnectorError>) -> &'static str {
    match result {
        Ok(CertificateStatus::Revoked { .. }) => "revoked",
        Ok(CertificateStatus::NotListed { .. }) => "not listed",
        other => panic!("expected an answer, got {other:?}"),
    }
}

/// The card check's answer for `c` at `t`.
async fn answer(check: &CrlRevocationStatus, c: &Card, t: SystemTime) -> &'static str {
    status_of(check.status(&c.certificate, at(t)).await)
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

/// The card check: a certificate only on hold, or listed `removeFromCRL`, is not listed;
/// every other reason (or none) is revoked; once the CA revokes the held one for good, it is.
#[tokio::test]
async fn a_card_certificate_only_on_hold_is_not_revoked_for_the_card_check() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let (held, removed, compromised, unspecified, superseded) =
        (card(&ca), card(&ca), card(&ca), card(&ca), card(&ca));
    let now = t0();
    let dir = tempfile::tempdir().expect("dir");
    let file: PathBuf = dir.path().join("card-ca.crl");
    std::fs::write(
        &file,
        crl(
            &ca,
            &[
                held.listed(Some(RevocationReason::CertificateHold)),
                removed.listed(Some(RevocationReason::RemoveFromCrl)),
                compromised.listed(Some(RevocationReason::KeyCompromise)),
                unspecified.listed(None),
                superseded.listed(Some(RevocationReason::Superseded)),
            ],
            now - MINUTE,
            now + HOUR,
        ),
    )
    .expect("crl");
    let check = card_check(dir.path(), &ca, &file, Arc::new(Metrics::new()));

    assert_eq!(answer(&check, &held, now).await, "not listed");
    assert_eq!(answer(&check, &removed, now).await, "not listed");
    assert_eq!(answer(&check, &compromised, now).await, "revoked");
    assert_eq!(answer(&check, &unspecified, now).await, "revoked");
    assert_eq!(answer(&check, &superseded, now).await, "revoked");

    // The next list revokes the held certificate for good: revoked.
    std::fs::write(
        &file,
        crl(
            &ca,
            &[held.listed(Some(RevocationReason::KeyCompromise))],
            now + HOUR,
            now + 2 * HOUR,
        ),
    )
    .expect("crl");
    assert_eq!(answer(&check, &held, now + HOUR + MINUTE).await, "revoked");
}

/// The client certificates of mutual TLS: one on hold is refused as revoked (on every call as
/// at the handshake); a `removeFromCRL` entry refuses nothing.
#[tokio::test]
async fn a_client_certificate_on_hold_is_still_refused() {
    let ca = DevCa::generate("Function TEST CA").expect("ca");
    let (held, removed, compromised, clean) = (card(&ca), card(&ca), card(&ca), card(&ca));
    let now = t0();
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("function-ca.crl");
    std::fs::write(
        &file,
        crl(
            &ca,
            &[
                held.listed(Some(RevocationReason::CertificateHold)),
                removed.listed(Some(RevocationReason::RemoveFromCrl)),
                compromised.listed(Some(RevocationReason::KeyCompromise)),
            ],
            now - MINUTE,
            now + HOUR,
        ),
    )
    .expect("crl");
    let store = tls_store(&ca, &file, Arc::new(Metrics::new()));
    let (changed, error) = store.refresh_files(true);
    assert!(changed && error.is_none(), "{error:?}");
    let snapshot = store.snapshot();
    let verdict = |c: &Card| {
        snapshot
            .check_certificate(&c.der, now, store.settings())
            .map_err(|r| r.reason)
    };
    assert_eq!(verdict(&held), Err(RefusalReason::Revoked));
    assert_eq!(verdict(&compromised), Err(RefusalReason::Revoked));
    assert_eq!(verdict(&removed), Ok(()));
    assert_eq!(verdict(&clean), Ok(()));
    let refusal = snapshot
        .check_certificate(&held.der, now, store.settings())
        .expect_err("held");
    let (_, parsed) = x509_parser::parse_x509_certificate(&held.der).expect("certificate");
    assert_eq!(refusal.serial, parsed.raw_serial_as_string());
    assert!(
        refusal.issuer.contains("Function TEST CA"),
        "{}",
        refusal.issuer
    );
    assert!(snapshot.revocation_of(&held.der).is_some());
    assert!(snapshot.revocation_of(&removed.der).is_none());
}

/// End to end over mutual TLS: a client certificate put on hold is refused at the handshake
/// and on a connection opened before.
#[tokio::test]
async fn a_client_certificate_on_hold_is_refused_by_the_server() {
    let app = spawn_app().await;
    let b = app.issued("provider-b");
    let mut open_b = app.provider("provider-b").await;
    open_b
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect("served before");

    let now = SystemTime::now();
    let serial = serial_of(&b.cert_pem);
    // One second on: a list is never older than the one it replaces.
    let held = crl_pem(
        &app.dev_ca(),
        &[(&serial, Some(RevocationReason::CertificateHold))],
        now + Duration::from_secs(1),
        now + 24 * HOUR,
    );
    replace_file(&app.dir.path().join("certs/ca.crl.pem"), &held);
    let mut verdict = Ok(());
    for _ in 0..200 {
        verdict = handshake_verdict(&app, &b).await;
        if verdict.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        verdict
            .as_ref()
            .is_err_and(|e| e.contains("CertificateRevoked")),
        "{verdict:?}"
    );
    assert!(!served(&app, &b).await);
    let e = open_b
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect_err("on hold on an open connection");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(reason(&e), "CERTIFICATE_REVOKED");
    wait_metric(
        &app,
        "etk_client_certificates_refused_total{reason=\"revoked\"}",
        |v| v >= 1.0,
    )
    .await;
    assert!(served(&app, &app.issued("provider-a")).await);
}

/// A delta CRL is refused for both uses, counted as `delta_crl`, and the list in force stays:
/// neither its revocations nor its silence are believed.
#[tokio::test]
async fn a_delta_crl_is_never_believed() {
    let ca = DevCa::generate("Card TEST CA").expect("ca");
    let cut = card(&ca);
    let now = t0();
    let full = crl(&ca, &[], now - MINUTE, now + HOUR);
    let newer_delta = delta(
        &ca,
        &crl(
            &ca,
            &[cut.listed(Some(RevocationReason::KeyCompromise))],
            now,
            now + HOUR,
        ),
    );

    // The card check: a delta CRL alone gives no answer.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("card-ca.crl");
    std::fs::write(&file, &newer_delta).expect("crl");
    let card_metrics = Arc::new(Metrics::new());
    let check = card_check(dir.path(), &ca, &file, card_metrics.clone());
    let m = retryable(check.status(&cut.certificate, at(now)).await);
    assert!(m.contains("no trustworthy CRL"), "{m}");
    assert!(m.contains("delta CRL"), "{m}");
    // After a full list, a newer delta CRL does not replace it.
    std::fs::write(&file, &full).expect("crl");
    assert_eq!(
        status_of(check.status(&cut.certificate, at(now)).await),
        "not listed"
    );
    std::fs::write(&file, &newer_delta).expect("crl");
    let m = retryable(
        check
            .status(&cut.certificate, at(now + HOUR + MINUTE))
            .await,
    );
    assert!(m.contains("stale since"), "{m}");
    assert!(m.contains("delta CRL"), "{m}");
    let samples = parse_prometheus(&card_metrics.render());
    let count = |k: &str| samples.get(k).copied().unwrap_or_default();
    assert_eq!(
        count("etk_card_crl_updates_total{source=\"file\",outcome=\"delta_crl\"}"),
        2.0,
        "{samples:?}"
    );
    assert_eq!(
        count("etk_card_crl_updates_total{source=\"file\",outcome=\"applied\"}"),
        1.0
    );

    // The client certificates of mutual TLS: refused the same way.
    let tls_metrics = Arc::new(Metrics::new());
    let tls_file = dir.path().join("function-ca.crl");
    std::fs::write(&tls_file, &newer_delta).expect("crl");
    let store = tls_store(&ca, &tls_file, tls_metrics.clone());
    let (changed, error) = store.refresh_files(true);
    assert!(!changed);
    assert!(matches!(error, Some(CrlError::Delta(_))), "{error:?}");
    assert!(store.snapshot().is_empty());
    std::fs::write(&tls_file, &full).expect("crl");
    assert!(store.refresh_files(true).0);
    std::fs::write(&tls_file, &newer_delta).expect("crl");
    let (changed, error) = store.refresh_files(true);
    assert!(
        !changed && matches!(error, Some(CrlError::Delta(_))),
        "{error:?}"
    );
    assert_eq!(
        store
            .snapshot()
            .check_certificate(&cut.der, now, store.settings())
            .map_err(|r| r.reason),
        Ok(()),
        "the full list stays in force"
    );
    let samples = parse_prometheus(&tls_metrics.render());
    assert_eq!(
        samples.get("etk_crl_updates_total{source=\"file\",outcome=\"delta_crl\"}"),
        Some(&2.0),
        "{samples:?}"
    );
    assert!(
        !samples.keys().any(|k| k.starts_with("etk_card_crl_")),
        "{samples:?}"
    );
}
