//! Revoked client certificates: the dev CA publishes CRLs, the server refuses what they list,
//! picks up a replaced CRL file without a restart, fails closed on a stale one (unless told
//! otherwise) and does not believe a CRL its CA did not sign.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::devcerts::{DevCa, IssuedCert};
use pb::deregistration_service_client::DeregistrationServiceClient;

use crate::admin::{scrape, wait_metric};
use crate::helpers::{
    Options, Settings, TestApp, dev_ca, handshake_verdict, reason, replace_file, serial_of,
    spawn_app, spawn_app_opts,
};

/// Whether a new connection with `cert` gets a call through.
pub async fn served(app: &TestApp, cert: &IssuedCert) -> bool {
    let Ok(channel) = app.channel_with(Some(cert)).await else {
        return false;
    };
    DeregistrationServiceClient::new(channel)
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .is_ok()
}

/// Waits (bounded) until `cert` is served (`want`) or refused (`!want`) on new connections.
pub async fn eventually_served(app: &TestApp, cert: &IssuedCert, want: bool) {
    for _ in 0..200 {
        if served(app, cert).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the certificate was never {}",
        if want { "served" } else { "refused" }
    );
}

const REVOKED: &str = "etk_client_certificates_refused_total{reason=\"revoked\"}";

#[tokio::test]
async fn a_certificate_on_a_replaced_crl_is_refused_without_a_restart() {
    let app = spawn_app().await;
    let a = app.issued("provider-a");
    let b = app.issued("provider-b");
    // The dev CA's empty CRL is in force: both are served.
    assert!(served(&app, &a).await && served(&app, &b).await);
    assert_eq!(scrape(&app).await.get(REVOKED), None);
    // A connection opened before the revocation.
    let mut open_b = app.provider("provider-b").await;
    open_b
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect("served before");

    app.publish_crl(&[serial_of(&b.cert_pem)]);
    // New handshakes are refused, with the alert that says why.
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
    // The connection opened before: its next call is refused too.
    let e = open_b
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect_err("revoked on an open connection");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(reason(&e), "CERTIFICATE_REVOKED");
    assert!(!e.message().contains("E000000000002"), "{}", e.message());
    assert_eq!(handshake_verdict(&app, &a).await, Ok(()));
    wait_metric(&app, REVOKED, |v| v >= 1.0).await;
    assert!(
        served(&app, &a).await,
        "a certificate not on the list is served"
    );
    let m = scrape(&app).await;
    assert!(
        m.get("etk_crl_updates_total{source=\"file\",outcome=\"applied\"}") >= Some(&2.0),
        "start and replacement counted: {m:?}"
    );
    assert!(
        m.keys()
            .any(|k| k.starts_with("etk_crl_next_update_timestamp_seconds{issuer=")),
        "{m:?}"
    );

    // Taken off the list again: served again.
    app.publish_crl(&[]);
    eventually_served(&app, &b, true).await;
}

#[tokio::test]
async fn a_crl_not_signed_by_the_ca_is_not_believed() {
    let app = spawn_app().await;
    let a = app.issued("provider-a");
    // Same name as the dev CA, another key: it "revokes" provider-a.
    let impostor = DevCa::generate("etjanstekort-gateway TEST dev CA").expect("ca");
    let now = SystemTime::now();
    let forged = impostor
        .crl(
            &[serial_of(&a.cert_pem)],
            now + Duration::from_secs(1),
            now + Duration::from_secs(3600),
        )
        .expect("crl");
    replace_file(&app.dir.path().join("certs/ca.crl.pem"), &forged);
    wait_metric(
        &app,
        "etk_crl_updates_total{source=\"file\",outcome=\"bad_signature\"}",
        |v| v >= 1.0,
    )
    .await;
    assert!(served(&app, &a).await, "the forged CRL was believed");

    // Nor is an older list of the right CA (a roll-back).
    let old = app
        .dev_ca()
        .crl(
            &[serial_of(&a.cert_pem)],
            now - Duration::from_secs(3600),
            now + Duration::from_secs(3600),
        )
        .expect("crl");
    replace_file(&app.dir.path().join("certs/ca.crl.pem"), &old);
    wait_metric(
        &app,
        "etk_crl_updates_total{source=\"file\",outcome=\"rollback\"}",
        |v| v >= 1.0,
    )
    .await;
    assert!(served(&app, &a).await, "the older CRL was believed");
}

/// Puts a CRL of the dev CA whose nextUpdate passed an hour ago in place.
fn stale_crl(dir: &std::path::Path) -> Settings {
    let now = SystemTime::now();
    let pem = dev_ca(dir)
        .crl(
            &[],
            now - Duration::from_secs(2 * 86_400),
            now - Duration::from_secs(3600),
        )
        .expect("crl");
    replace_file(&dir.join("certs/ca.crl.pem"), &pem);
    vec![]
}

#[tokio::test]
async fn a_stale_crl_fails_closed_unless_the_policy_accepts_it() {
    let strict = spawn_app_opts(Options {
        engine: false,
        prepare: Some(stale_crl),
        settings: vec![("tls.revocation.stale_grace", "10m".into())],
        ..Options::default()
    })
    .await;
    let verdict = handshake_verdict(&strict, &strict.issued("provider-a")).await;
    assert!(verdict.is_err(), "a stale CRL was accepted");
    assert!(!served(&strict, &strict.issued("provider-a")).await);
    wait_metric(
        &strict,
        "etk_client_certificates_refused_total{reason=\"crl_stale\"}",
        |v| v >= 1.0,
    )
    .await;

    // Within the grace: served.
    let graceful = spawn_app_opts(Options {
        engine: false,
        prepare: Some(stale_crl),
        settings: vec![("tls.revocation.stale_grace", "2h".into())],
        ..Options::default()
    })
    .await;
    assert!(served(&graceful, &graceful.issued("provider-a")).await);

    let lenient = spawn_app_opts(Options {
        engine: false,
        prepare: Some(stale_crl),
        settings: vec![
            ("tls.revocation.stale_grace", "10m".into()),
            ("tls.revocation.when_stale", "accept".into()),
        ],
        ..Options::default()
    })
    .await;
    assert!(served(&lenient, &lenient.issued("provider-a")).await);
}

#[tokio::test]
async fn a_certificate_of_a_ca_without_a_crl_is_refused_unless_the_policy_accepts_it() {
    // A second CA, without a CRL of its own, written beside the dev CA but not trusted yet.
    fn second_ca_written(dir: &std::path::Path) -> Settings {
        second_ca_configured(dir);
        vec![]
    }
    for (policy, expect_served) in [("refuse", false), ("accept", true)] {
        let app = spawn_app_opts(Options {
            engine: false,
            prepare: Some(second_ca_written),
            settings: vec![("tls.revocation.without_crl", policy.into())],
            ..Options::default()
        })
        .await;
        let cert = second_ca(&app)
            .issue_client("second", Some("SE1655999991-E000000000001"))
            .expect("cert");
        assert!(!served(&app, &cert).await, "not trusted yet");
        // The client-CA bundle is replaced on disk: the second CA is trusted from now on, but
        // there is no CRL of it.
        let bundle = std::fs::read_to_string(app.dir.path().join("certs/bundle.pem")).expect("b");
        replace_file(&app.dir.path().join("certs/ca.pem"), &bundle);
        wait_metric(
            &app,
            "etk_config_reloads_total{file=\"client_ca\",outcome=\"applied\"}",
            |v| v >= 1.0,
        )
        .await;
        assert!(served(&app, &app.issued("provider-a")).await, "{policy}");
        assert_eq!(served(&app, &cert).await, expect_served, "{policy}");
        if !expect_served {
            wait_metric(
                &app,
                "etk_client_certificates_refused_total{reason=\"no_crl\"}",
                |v| v >= 1.0,
            )
            .await;
        }
    }
}

/// A CRL distribution point on loopback: serves `crl` (503 while it is empty, and for the next
/// `fail_next` requests; never answers while `hang` is set), counting requests.
#[derive(Clone, Default)]
struct Publication {
    crl: Arc<Mutex<String>>,
    fail_next: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    hang: Arc<std::sync::atomic::AtomicBool>,
}

async fn distribution_point(p: Publication) -> std::net::SocketAddr {
    use axum::http::StatusCode;
    let app = axum::Router::new().route(
        "/ca.crl",
        axum::routing::get(move || {
            let p = p.clone();
            async move {
                p.requests.fetch_add(1, Ordering::SeqCst);
                if p.hang.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                let crl = p.crl.lock().expect("lock").clone();
                let failing = p
                    .fail_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if crl.is_empty() || failing {
                    (StatusCode::SERVICE_UNAVAILABLE, String::new())
                } else {
                    (StatusCode::OK, crl)
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn a_crl_from_a_url_is_fetched_with_retries_and_refreshed_on_schedule() {
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    let app = spawn_app_opts(Options {
        engine: false,
        settings: vec![
            ("tls.revocation.files", serde_json::json!([])),
            (
                "tls.revocation.urls",
                serde_json::json!([format!("http://{addr}/ca.crl")]),
            ),
            ("tls.revocation.refresh", "1s".into()),
            ("tls.revocation.fetch_attempts", 2.into()),
            ("tls.revocation.fetch_timeout", "5s".into()),
        ],
        ..Options::default()
    })
    .await;
    let a = app.issued("provider-a");
    // Nothing published yet: no CRL of the dev CA, so its certificates are refused (fail closed).
    assert_eq!(
        publication.requests.load(Ordering::SeqCst),
        2,
        "two attempts"
    );
    assert!(!served(&app, &a).await);
    wait_metric(
        &app,
        "etk_crl_updates_total{source=\"url\",outcome=\"fetch_failed\"}",
        |v| v >= 1.0,
    )
    .await;

    // Published, but the next request fails once: the retry gets it.
    let now = SystemTime::now();
    *publication.crl.lock().expect("lock") = app
        .dev_ca()
        .crl(&[], now, now + Duration::from_secs(3600))
        .expect("crl");
    publication.fail_next.store(1, Ordering::SeqCst);
    eventually_served(&app, &a, true).await;
    assert_eq!(publication.fail_next.load(Ordering::SeqCst), 0);

    // A new publication revoking provider-a is picked up on schedule.
    *publication.crl.lock().expect("lock") = app
        .dev_ca()
        .crl(
            &[serial_of(&a.cert_pem)],
            now + Duration::from_secs(1),
            now + Duration::from_secs(3600),
        )
        .expect("crl");
    eventually_served(&app, &a, false).await;
    wait_metric(
        &app,
        "etk_crl_updates_total{source=\"url\",outcome=\"applied\"}",
        |v| v >= 2.0,
    )
    .await;
}

/// A second CA beside the dev CA in the client-CA bundle (`certs/bundle.pem`, configured).
fn second_ca_configured(dir: &std::path::Path) -> Settings {
    let other = DevCa::generate("Second TEST CA").expect("ca");
    let bundle = std::fs::read_to_string(dir.join("certs/ca.pem")).expect("ca");
    let path = dir.join("certs/bundle.pem");
    std::fs::write(&path, format!("{bundle}{}", other.cert_pem)).expect("bundle");
    std::fs::write(dir.join("certs/second-ca.pem"), &other.cert_pem).expect("ca");
    std::fs::write(dir.join("certs/second-ca.key"), &other.key_pem).expect("key");
    vec![("tls.client_ca", path.display().to_string().into())]
}

fn second_ca(app: &TestApp) -> DevCa {
    let d = app.dir.path().join("certs");
    DevCa::from_pem(
        &std::fs::read_to_string(d.join("second-ca.pem")).expect("ca"),
        &std::fs::read_to_string(d.join("second-ca.key")).expect("key"),
    )
    .expect("ca")
}

#[tokio::test]
async fn a_distribution_point_named_in_a_client_certificate_is_learnt_and_fetched() {
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    // The dev CA's CRL is a file; the second CA's is only at its distribution point.
    let app = spawn_app_opts(Options {
        engine: false,
        prepare: Some(second_ca_configured),
        settings: vec![("tls.revocation.distribution_points", true.into())],
        ..Options::default()
    })
    .await;
    let ca = second_ca(&app);
    let now = SystemTime::now();
    let url = format!("http://{addr}/ca.crl");
    let revoked = ca
        .issue_client_with(
            "revoked",
            Some("SE1655999991-E000000000002"),
            std::slice::from_ref(&url),
        )
        .expect("cert");
    *publication.crl.lock().expect("lock") = ca
        .crl(
            &[serial_of(&revoked.cert_pem)],
            now,
            now + Duration::from_secs(3600),
        )
        .expect("crl");
    // provider-a's system with a certificate of the second CA naming the distribution point.
    let a = ca
        .issue_client_with(
            "provider-a (TEST)",
            Some("SE1655999991-E000000000001"),
            &[url],
        )
        .expect("cert");
    // No CRL of the second CA yet: refused, and the point is learnt and fetched.
    assert!(!served(&app, &a).await);
    eventually_served(&app, &a, true).await;
    assert!(publication.requests.load(Ordering::SeqCst) >= 1);
    // The fetched list is in force for every certificate of that CA.
    assert!(!served(&app, &revoked).await, "on the fetched list");
    // The dev CA's file is still in force beside it.
    assert!(served(&app, &app.issued("provider-b")).await);
}

#[tokio::test]
async fn a_crl_file_that_does_not_verify_stops_the_start() {
    crate::helpers::install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let (paths, _) = etjanstekort_gateway::devcerts::ensure(dir.path()).expect("dev environment");
    let impostor = DevCa::generate("etjanstekort-gateway TEST dev CA").expect("ca");
    let now = SystemTime::now();
    let forged = impostor
        .crl(&[], now, now + Duration::from_secs(3600))
        .expect("crl");
    std::fs::write(&paths.crl, forged).expect("write");
    let config = etjanstekort_gateway::config::Layers::defaults()
        .set("server.listen", "127.0.0.1:0")
        .set("tls.cert", &paths.server_cert)
        .set("tls.key", &paths.server_key)
        .set("tls.client_ca", &paths.ca)
        .set("tls.revocation.files", [&paths.crl])
        .set("auth.principals_file", &paths.principals)
        .set(
            "database.url",
            crate::helpers::TestDb::sqlite(dir.path()).url,
        )
        .set("privacy.master_key", crate::helpers::test_vault_key())
        .config()
        .expect("configuration");
    let e = etjanstekort_gateway::startup::App::build(config)
        .await
        .expect_err("started with a forged CRL");
    let e = e.to_string();
    assert!(e.contains("CRL file") && e.contains("signature"), "{e}");
}

#[tokio::test]
async fn health_checks_on_an_open_connection_are_refused_once_the_certificate_is_revoked() {
    let app = spawn_app().await;
    let b = app.issued("provider-b");
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(app.channel("provider-b").await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("served before");
    app.publish_crl(&[serial_of(&b.cert_pem)]);
    eventually_served(&app, &b, false).await;
    let e = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect_err("revoked on an open connection");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(reason(&e), "CERTIFICATE_REVOKED");
}

#[tokio::test]
async fn an_open_connection_is_refused_once_its_issuers_crl_goes_stale() {
    let app = spawn_app_opts(Options {
        engine: false,
        settings: vec![("tls.revocation.stale_grace", "0s".into())],
        ..Options::default()
    })
    .await;
    let mut open = app.provider("provider-a").await;
    open.list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect("served while the CRL is fresh");
    // A newer list of the dev CA whose nextUpdate is two seconds away.
    let now = SystemTime::now();
    let pem = app
        .dev_ca()
        .crl(
            &[],
            now + Duration::from_secs(1),
            now + Duration::from_secs(2),
        )
        .expect("crl");
    replace_file(&app.dir.path().join("certs/ca.crl.pem"), &pem);
    let mut refused = None;
    for _ in 0..200 {
        match open
            .list_deregistrations(pb::ListDeregistrationsRequest::default())
            .await
        {
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the open connection's calls are refused once the CRL is stale");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert_eq!(reason(&e), "REVOCATION_STATUS_UNKNOWN");
    wait_metric(
        &app,
        "etk_client_certificates_refused_total{reason=\"crl_stale\"}",
        |v| v >= 1.0,
    )
    .await;
}

#[tokio::test]
async fn a_distribution_point_that_never_answers_does_not_delay_crl_file_reloads() {
    let publication = Publication::default();
    let addr = distribution_point(publication.clone()).await;
    // The dev CA's CRL file as usual, and a URL that answers 503 at start, then hangs.
    let app = spawn_app_opts(Options {
        engine: false,
        settings: vec![
            (
                "tls.revocation.urls",
                serde_json::json!([format!("http://{addr}/ca.crl")]),
            ),
            ("tls.revocation.refresh", "1s".into()),
            ("tls.revocation.fetch_attempts", 1.into()),
            ("tls.revocation.fetch_timeout", "120s".into()),
        ],
        ..Options::default()
    })
    .await;
    let b = app.issued("provider-b");
    assert!(served(&app, &b).await);
    let before = publication.requests.load(Ordering::SeqCst);
    publication.hang.store(true, Ordering::SeqCst);
    // A fetch is under way and will not end for two minutes.
    for _ in 0..200 {
        if publication.requests.load(Ordering::SeqCst) > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        publication.requests.load(Ordering::SeqCst) > before,
        "fetched again"
    );
    // The CRL file is still reloaded on its interval.
    app.publish_crl(&[serial_of(&b.cert_pem)]);
    eventually_served(&app, &b, false).await;
}
