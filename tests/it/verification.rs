//! The revocation check in the routine (issue #14), end to end over mTLS: with the check on, a
//! confirmed case reaches KIV only once its certificates are revoked on a current list; a list
//! issued after the confirmation that still shows a certificate valid parks the case; with the
//! check off the routine is as before. The lists here are a scripted `RevocationStatus`; the
//! real CRL connector is tried against a real HTTP server in `revocation_check.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::config::Config;
use etjanstekort_gateway::connectors::simulated::{
    Faults, LogNotifier, SimulatedKiv, SimulatedTjansteId,
};
use etjanstekort_gateway::connectors::{
    CertificateStatus, ConnectorError, Connectors, RevocationList, RevocationStatus,
};
use etjanstekort_gateway::domain::{CardCertificate, HsaId, Personnummer, Timestamp};
use pb::operations_service_client::OperationsServiceClient;
use pb::revocation_service_client::RevocationServiceClient;
use tonic::Code;

use crate::admin::http_get;
use crate::helpers::{Options, TestApp, reason, reasons, report, spawn_app_opts, unit_a};

const ISSUER: &str = "CN=Test SITHS e-id Person CA, O=Test, C=SE";
const HOUR: i64 = 3_600_000_000;

/// What the scripted list answers for a serial.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::enum_variant_names)] // the words of the domain
enum Listed {
    /// On a list issued a second ago.
    Revoked,
    /// Not on a list issued at `issued` (relative to now, µs; negative = before).
    NotListed { issued: i64, next: i64 },
    /// No list can be had.
    Unreachable,
}

/// A revocation list the test scripts, counting look-ups.
#[derive(Debug, Default)]
struct Script {
    answers: Mutex<HashMap<String, Listed>>,
    lookups: Mutex<Vec<String>>,
}

impl Script {
    fn set(&self, serial: &str, listed: Listed) {
        self.answers
            .lock()
            .expect("lock")
            .insert(serial.to_owned(), listed);
    }

    fn lookups(&self) -> usize {
        self.lookups.lock().expect("lock").len()
    }
}

#[async_trait]
impl RevocationStatus for Script {
    fn name(&self) -> &'static str {
        "scripted"
    }

    async fn status(
        &self,
        certificate: &CardCertificate,
        now: Timestamp,
    ) -> Result<CertificateStatus, ConnectorError> {
        self.lookups
            .lock()
            .expect("lock")
            .push(certificate.serial.clone());
        let listed = self
            .answers
            .lock()
            .expect("lock")
            .get(&certificate.serial)
            .copied()
            .unwrap_or(Listed::Unreachable);
        let list = |issued: i64, next: i64| RevocationList {
            issuer: ISSUER.into(),
            this_update: Timestamp(now.0 + issued),
            next_update: Timestamp(now.0 + next),
            source: "http://crl.test/ca.crl".into(),
        };
        match listed {
            Listed::Revoked => Ok(CertificateStatus::Revoked {
                list: list(-1_000_000, HOUR),
            }),
            Listed::NotListed { issued, next } => Ok(CertificateStatus::NotListed {
                list: list(issued, next),
            }),
            Listed::Unreachable => Err(ConnectorError::Retryable(
                "fetching http://crl.test/ca.crl: connection refused".into(),
            )),
        }
    }
}

pub(crate) fn holder() -> Personnummer {
    Personnummer::parse(
        "19121212-1212",
        etjanstekort_gateway::clock::now().utc_date(),
    )
    .expect("pnr")
}

pub(crate) fn unit() -> HsaId {
    HsaId::parse(&unit_a()).expect("unit")
}

/// An app whose connectors check revocation on `script` (or not at all), with handles on its
/// KIV and notifier.
struct World {
    app: TestApp,
    kiv: Arc<SimulatedKiv>,
    notifier: Arc<LogNotifier>,
}

async fn world(script: Option<Arc<Script>>) -> World {
    world_with(script, |_| {}, Kiv::AutoWithCertificates).await
}

/// How the simulated KIV of a world behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kiv {
    /// Employs whoever is looked up, with a card certificate.
    AutoWithCertificates,
    /// Employs whoever is looked up; no certificates.
    AutoBare,
    /// Employs only the test's holder (so a removed employment stays removed until restored),
    /// with a card certificate.
    HolderOnly,
}

/// `world`, with the app's configuration adjusted by `configure` and its KIV as `kind`.
async fn world_with(script: Option<Arc<Script>>, configure: fn(&mut Config), kind: Kiv) -> World {
    let faults = Faults::default();
    let kiv = SimulatedKiv::new(kind != Kiv::HolderOnly, faults, None);
    let kiv = Arc::new(if kind == Kiv::AutoBare {
        kiv
    } else {
        kiv.with_card_certificates().expect("simulated card CA")
    });
    if kind == Kiv::HolderOnly {
        kiv.employ(&holder(), &unit());
    }
    let notifier = Arc::new(LogNotifier::new(faults, None));
    let connectors = Connectors {
        // Outcomes arrive through RevocationService only.
        tjansteid: Arc::new(SimulatedTjansteId::new(None, faults, None)),
        kiv: kiv.clone(),
        notifier: notifier.clone(),
        gateway_removes_kiv: true,
        revocation: script.map(|s| s as Arc<dyn RevocationStatus>),
    };
    let app = spawn_app_opts(Options {
        connectors: Some(connectors),
        max_attempts: 3,
        reconcile_interval: 0.2,
        configure: Some(configure),
        ..Options::default()
    })
    .await;
    World { app, kiv, notifier }
}

fn cert(serial: &str) -> pb::RevokedCertificate {
    pb::RevokedCertificate {
        serial_number: serial.into(),
        issuer: ISSUER.into(),
        certificate_der: Vec::new(),
    }
}

pub(crate) async fn confirm(
    app: &TestApp,
    id: &str,
    certificates: Vec<pb::RevokedCertificate>,
) -> Result<pb::Deregistration, tonic::Status> {
    RevocationServiceClient::new(app.channel("tjansteid").await)
        .confirm_revocation(pb::ConfirmRevocationRequest {
            deregistration_id: id.to_owned(),
            revocation_reference: "TJID-2026-0099".into(),
            revoke_time: None,
            revoked_certificates: certificates,
        })
        .await
        .map(|r| r.into_inner().deregistration.expect("case"))
}

pub(crate) async fn reported(app: &TestApp, card: &str) -> String {
    let id = app
        .create_case(
            &format!("req-{card}"),
            report(&unit_a(), "19121212-1212", card),
        )
        .await;
    app.wait_for(&id, pb::State::RevocationRequested).await;
    id
}

pub(crate) async fn audit(app: &TestApp, id: &str) -> Vec<(String, String)> {
    OperationsServiceClient::new(app.channel("operator").await)
        .get_case_timeline(pb::GetCaseTimelineRequest { id: id.to_owned() })
        .await
        .expect("timeline")
        .into_inner()
        .events
        .into_iter()
        .map(|e| (e.kind, e.detail))
        .collect()
}

pub(crate) async fn metric(app: &TestApp, line_start: &str) -> f64 {
    let body = http_get(app.admin, "/metrics").await.2;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_confirmed_card_not_yet_on_the_list_waits_and_never_reaches_kiv_until_it_is() {
    let script: Arc<Script> = Arc::default();
    let w = world(Some(script.clone())).await;
    let app = &w.app;
    // The list in force was issued an hour before the confirmation; its next is in 2 s.
    script.set(
        "a1",
        Listed::NotListed {
            issued: -HOUR,
            next: 2_000_000,
        },
    );
    let id = reported(app, "5300001").await;
    let confirmed = confirm(app, &id, vec![cert("A1")]).await.expect("confirm");
    assert_eq!(confirmed.state, pb::State::Revoked as i32);
    assert_eq!(
        confirmed.revocation_check,
        pb::RevocationCheck::Pending as i32
    );
    // Watch it for a while: it waits in REVOKED, nobody is told, KIV is untouched.
    let kinds = app.events_within(&id, Duration::from_millis(1500)).await;
    assert!(
        kinds.contains(&"revocation_not_yet_listed".to_owned()),
        "{kinds:?}"
    );
    for never in [
        "head_notified",
        "notified",
        "kiv_removed",
        "revocation_verified",
    ] {
        assert!(!kinds.contains(&never.to_owned()), "{never} in {kinds:?}");
    }
    assert!(w.kiv.contains(&holder(), &unit()));
    assert!(w.notifier.sent().is_empty());
    // The office cannot complete it either (care-provider route: wrong route; the point
    // here is KIV, checked above).
    // Published: the re-check at the list's nextUpdate finds it revoked, and the case completes.
    script.set("a1", Listed::Revoked);
    let done = app.wait_for(&id, pb::State::Completed).await;
    assert_eq!(done.revocation_check, pb::RevocationCheck::Verified as i32);
    assert!(!w.kiv.contains(&holder(), &unit()));
    let trail = audit(app, &id).await;
    let kinds: Vec<&str> = trail.iter().map(|(k, _)| k.as_str()).collect();
    let verified = kinds
        .iter()
        .position(|k| *k == "revocation_verified")
        .expect("verified");
    let removed = kinds
        .iter()
        .position(|k| *k == "kiv_removed")
        .expect("removed");
    let told = kinds
        .iter()
        .position(|k| *k == "head_notified")
        .expect("told");
    assert!(verified < told && told < removed, "{kinds:?}");
    // What was checked, from where, is in the trail: serial and issuer.
    let (_, detail) = &trail[verified];
    assert!(
        detail.contains("serial a1") && detail.contains(ISSUER),
        "{detail}"
    );
    let confirmed_detail = &trail
        .iter()
        .find(|(k, _)| k == "revocation_confirmed")
        .expect("confirmed")
        .1;
    assert!(confirmed_detail.contains("serial a1"), "{confirmed_detail}");
    assert!(metric(app, "etk_revocation_checks_total{outcome=\"verified\"}").await >= 1.0);
    assert!(
        metric(
            app,
            "etk_revocation_checks_total{outcome=\"not_yet_listed\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_list_issued_after_the_confirmation_without_the_card_is_a_discrepancy() {
    let script: Arc<Script> = Arc::default();
    let w = world(Some(script.clone())).await;
    let app = &w.app;
    // Issued a second after now: after the confirmation, and the certificate is not on it.
    script.set(
        "b2",
        Listed::NotListed {
            issued: 1_000_000,
            next: HOUR,
        },
    );
    let id = reported(app, "5300002").await;
    confirm(app, &id, vec![cert("b2")]).await.expect("confirm");
    let parked = app.wait_for(&id, pb::State::NeedsAttention).await;
    assert!(
        parked.state_reason.contains("b2"),
        "{}",
        parked.state_reason
    );
    assert!(w.kiv.contains(&holder(), &unit()));
    assert!(w.notifier.sent().is_empty());
    let trail = audit(app, &id).await;
    assert!(
        trail.iter().any(|(k, _)| k == "revocation_discrepancy"),
        "{trail:?}"
    );
    assert_eq!(
        metric(app, "etk_revocation_checks_total{outcome=\"discrepancy\"}").await,
        1.0
    );
    // Nothing moves it on its own: watched for a while, KIV stays untouched.
    let kinds = app.events_within(&id, Duration::from_millis(800)).await;
    assert!(!kinds.contains(&"kiv_removed".to_owned()));
    assert!(w.kiv.contains(&holder(), &unit()));
    // Once the CA has put it on its list, an operator's retry verifies again and completes.
    script.set("b2", Listed::Revoked);
    OperationsServiceClient::new(app.channel("operator").await)
        .retry_deregistration(pb::RetryDeregistrationRequest { id: id.clone() })
        .await
        .expect("retry");
    app.wait_for(&id, pb::State::Completed).await;
    assert!(!w.kiv.contains(&holder(), &unit()));
}

#[tokio::test]
async fn an_unreachable_list_is_retried_and_never_believed() {
    let script: Arc<Script> = Arc::default();
    let w = world(Some(script.clone())).await;
    let app = &w.app;
    let id = reported(app, "5300003").await;
    // Unreachable (no answer scripted): retried with backoff, then parked; never verified.
    confirm(app, &id, vec![cert("c3")]).await.expect("confirm");
    let parked = app.wait_for(&id, pb::State::NeedsAttention).await;
    assert!(
        parked.state_reason.contains("connection refused"),
        "{}",
        parked.state_reason
    );
    assert!(script.lookups() >= 3, "{} look-ups", script.lookups());
    assert!(w.kiv.contains(&holder(), &unit()));
    // Reachable again: the operator's retry completes it.
    script.set("c3", Listed::Revoked);
    OperationsServiceClient::new(app.channel("operator").await)
        .retry_deregistration(pb::RetryDeregistrationRequest { id: id.clone() })
        .await
        .expect("retry");
    app.wait_for(&id, pb::State::Completed).await;
}

#[tokio::test]
async fn every_certificate_must_be_revoked() {
    let script: Arc<Script> = Arc::default();
    let w = world(Some(script.clone())).await;
    let app = &w.app;
    script.set("d4", Listed::Revoked);
    script.set(
        "d5",
        Listed::NotListed {
            issued: 1_000_000,
            next: HOUR,
        },
    );
    let id = reported(app, "5300004").await;
    confirm(app, &id, vec![cert("d4"), cert("d5")])
        .await
        .expect("confirm");
    app.wait_for(&id, pb::State::NeedsAttention).await;
    assert!(w.kiv.contains(&holder(), &unit()));
}

#[tokio::test]
async fn without_any_known_certificate_the_case_needs_attention() {
    let w = world_with(Some(Arc::default()), |_| {}, Kiv::AutoBare).await;
    let app = &w.app;
    let id = reported(app, "5300005").await;
    confirm(app, &id, Vec::new()).await.expect("confirm");
    let parked = app.wait_for(&id, pb::State::NeedsAttention).await;
    assert!(
        parked.state_reason.contains("no certificate"),
        "{}",
        parked.state_reason
    );
    assert!(w.kiv.contains(&holder(), &unit()));
}

#[tokio::test]
async fn with_the_check_off_the_confirmation_alone_suffices() {
    let w = world(None).await;
    let app = &w.app;
    let id = reported(app, "5300006").await;
    let confirmed = confirm(app, &id, vec![cert("e6")]).await.expect("confirm");
    assert_eq!(confirmed.revocation_check, pb::RevocationCheck::Off as i32);
    app.wait_for(&id, pb::State::Completed).await;
    assert!(!w.kiv.contains(&holder(), &unit()));
}

#[tokio::test]
async fn malformed_certificates_are_refused_by_field_and_nothing_is_stored() {
    let script: Arc<Script> = Arc::default();
    let w = world(Some(script.clone())).await;
    let app = &w.app;
    let id = reported(app, "5300007").await;
    let bad = vec![
        pb::RevokedCertificate {
            serial_number: "xyz".into(),
            issuer: "no name".into(),
            certificate_der: Vec::new(),
        },
        pb::RevokedCertificate::default(),
        pb::RevokedCertificate {
            certificate_der: b"not a certificate".to_vec(),
            ..Default::default()
        },
        pb::RevokedCertificate {
            serial_number: "ab".into(),
            issuer: "CN=Tolvan, serialNumber=19121212-1212, C=SE".into(),
            certificate_der: Vec::new(),
        },
    ];
    let e = confirm(app, &id, bad).await.expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(reason(&e), "VALIDATION_FAILED");
    let r = reasons(&e);
    assert_eq!(
        r.get("revoked_certificates[0].serial_number")
            .map(String::as_str),
        Some("CERTIFICATE_SERIAL_FORMAT"),
        "{r:?}"
    );
    assert_eq!(
        r.get("revoked_certificates[0].issuer").map(String::as_str),
        Some("CERTIFICATE_ISSUER_FORMAT")
    );
    assert_eq!(
        r.get("revoked_certificates[1].certificate_der")
            .map(String::as_str),
        Some("CERTIFICATE_REQUIRED")
    );
    assert_eq!(
        r.get("revoked_certificates[2].certificate_der")
            .map(String::as_str),
        Some("CERTIFICATE_FORMAT")
    );
    assert_eq!(
        r.get("revoked_certificates[3].issuer").map(String::as_str),
        Some("CONTAINS_IDENTITY_NUMBER")
    );
    assert!(!e.message().contains("1212"), "{}", e.message());
    let too_many: Vec<_> = (0..17).map(|i| cert(&format!("{:x}", i + 1))).collect();
    let e = confirm(app, &id, too_many).await.expect_err("refused");
    assert!(reasons(&e).contains_key("revoked_certificates"));
    // Nothing stored: the case still awaits its outcome and nothing was looked up.
    let case = app.wait_for(&id, pb::State::RevocationRequested).await;
    assert!(case.revocation_reference.is_empty());
    assert_eq!(script.lookups(), 0);
}

/// A confirmation naming no certificate is checked on the certificates KIV holds for the card.
#[tokio::test]
async fn without_named_certificates_those_in_kiv_are_checked() {
    let script: Arc<Script> = Arc::default();
    let w = world(Some(script.clone())).await;
    let app = &w.app;
    let id = reported(app, "5300008").await;
    let in_kiv = w.kiv.card_certificates_of(&holder());
    assert_eq!(in_kiv.len(), 1);
    script.set(&in_kiv[0].serial, Listed::Revoked);
    confirm(app, &id, Vec::new()).await.expect("confirm");
    app.wait_for(&id, pb::State::Completed).await;
    let trail = audit(app, &id).await;
    let verified = &trail
        .iter()
        .find(|(k, _)| k == "revocation_verified")
        .expect("verified")
        .1;
    assert!(
        verified.contains(&format!("serial {}", in_kiv[0].serial)) && verified.contains("from kiv"),
        "{verified}"
    );
}

/// A certificate given whole must be the holder's and in force at the report; one named twice
/// counts once; serial and issuer given beside it must name it.
#[tokio::test]
async fn certificates_given_whole_must_be_the_holders() {
    let script: Arc<Script> = Arc::default();
    let w = world(Some(script.clone())).await;
    let app = &w.app;
    let id = reported(app, "5300009").await;
    let ca = w.kiv.card_ca().expect("card CA");
    let holder_id = w.kiv.hsa_id_of(&holder()).expect("holder's HSA-id");
    let own = ca.issue(&holder_id, "Tolvan Tolvansson").expect("issue");
    let other_id = HsaId::parse("SE1655999991-P000000009999").expect("hsa");
    let others = ca.issue(&other_id, "Someone Else").expect("issue");
    let der = |der: &Vec<u8>| pb::RevokedCertificate {
        certificate_der: der.clone(),
        ..Default::default()
    };
    let e = confirm(app, &id, vec![der(&own), der(&others)])
        .await
        .expect_err("another holder's certificate");
    assert_eq!(
        reasons(&e)
            .get("revoked_certificates[1].certificate_der")
            .map(String::as_str),
        Some("CERTIFICATE_OTHER_HOLDER"),
        "{e:?}"
    );
    assert!(!e.message().contains("Someone") && !e.message().contains("P000000009999"));
    let mut mismatch = der(&own);
    mismatch.serial_number = "ab".into();
    mismatch.issuer = ISSUER.into();
    let e = confirm(app, &id, vec![mismatch])
        .await
        .expect_err("mismatch");
    assert_eq!(
        reasons(&e)
            .get("revoked_certificates[0].serial_number")
            .map(String::as_str),
        Some("CERTIFICATE_MISMATCH")
    );
    // Nothing stored by the refusals; then the holder's own, twice, is accepted once.
    let own_serial = etjanstekort_gateway::connectors::card_certs::read(
        &own,
        etjanstekort_gateway::domain::CertificateSource::Confirmation,
    )
    .expect("read")
    .certificate
    .serial;
    script.set(&own_serial, Listed::Revoked);
    confirm(app, &id, vec![der(&own), der(&own)])
        .await
        .expect("confirm");
    app.wait_for(&id, pb::State::Completed).await;
    let trail = audit(app, &id).await;
    let confirmed = &trail
        .iter()
        .find(|(k, _)| k == "revocation_confirmed")
        .expect("confirmed")
        .1;
    assert_eq!(
        confirmed.matches(&format!("serial {own_serial}")).count(),
        1,
        "{confirmed}"
    );
    // The holder's name and HSA-id in the certificate are never kept.
    for (_, detail) in &trail {
        assert!(
            !detail.contains("Tolvan") && !detail.contains(holder_id.as_str()),
            "{detail}"
        );
    }
}

fn short_verify_window(cfg: &mut Config) {
    cfg.engine.timers.verify_within = Duration::from_secs(3);
}

/// The deadline bounds the wait; a retry after a discrepancy starts a new one, and the old one
/// does not cut the new round short.
#[tokio::test]
async fn the_deadline_parks_a_case_and_a_retry_starts_a_new_one() {
    let script: Arc<Script> = Arc::default();
    let w = world_with(
        Some(script.clone()),
        short_verify_window,
        Kiv::AutoWithCertificates,
    )
    .await;
    let app = &w.app;
    let id = reported(app, "5300010").await;
    // First a discrepancy, parked at once; its deadline (3 s) must not outlive the parking.
    script.set(
        "f1",
        Listed::NotListed {
            issued: 1_000_000,
            next: HOUR,
        },
    );
    confirm(app, &id, vec![cert("f1")]).await.expect("confirm");
    app.wait_for(&id, pb::State::NeedsAttention).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Now not yet published, with the next list far away: the new round waits.
    script.set(
        "f1",
        Listed::NotListed {
            issued: -HOUR,
            next: HOUR,
        },
    );
    OperationsServiceClient::new(app.channel("operator").await)
        .retry_deregistration(pb::RetryDeregistrationRequest { id: id.clone() })
        .await
        .expect("retry");
    // Past the first round's deadline, within the new one's: still waiting.
    let kinds = app.events_within(&id, Duration::from_millis(2200)).await;
    let retried = kinds
        .iter()
        .rposition(|k| k == "operator_retry")
        .expect("retry");
    assert!(
        !kinds[retried..].contains(&"revocation_not_verified_in_time".to_owned()),
        "{kinds:?}"
    );
    // The new deadline parks it, with its own reason.
    let parked = app.wait_for(&id, pb::State::NeedsAttention).await;
    assert!(
        parked.state_reason.contains("3 seconds"),
        "{}",
        parked.state_reason
    );
    let trail = audit(app, &id).await;
    assert_eq!(
        trail.last().map(|(k, _)| k.as_str()),
        Some("revocation_not_verified_in_time")
    );
    assert!(w.kiv.contains(&holder(), &unit()));
    assert_eq!(
        metric(app, "etk_revocation_checks_total{outcome=\"overdue\"}").await,
        1.0
    );
}

/// While the revocation awaits its verification, the employment is still guarded: removed
/// from KIV behind the gateway's back, it is put back.
#[tokio::test]
async fn an_employment_removed_before_the_verification_is_restored() {
    let script: Arc<Script> = Arc::default();
    let w = world_with(Some(script.clone()), |_| {}, Kiv::HolderOnly).await;
    let app = &w.app;
    script.set(
        "a7",
        Listed::NotListed {
            issued: -HOUR,
            next: HOUR,
        },
    );
    let id = reported(app, "5300011").await;
    confirm(app, &id, vec![cert("a7")]).await.expect("confirm");
    let kinds = app.events_within(&id, Duration::from_millis(500)).await;
    assert!(
        kinds.contains(&"revocation_not_yet_listed".to_owned()),
        "{kinds:?}"
    );
    assert!(w.kiv.remove_out_of_band(&holder(), &unit()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !w.kiv.contains(&holder(), &unit()) {
        assert!(tokio::time::Instant::now() < deadline, "never restored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let trail = audit(app, &id).await;
    assert!(
        trail.iter().any(|(k, _)| k == "kiv_removed_too_early"),
        "{trail:?}"
    );
}
