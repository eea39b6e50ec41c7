//! Live reload through the real server: principals edited (by a Kubernetes-style symlink swap)
//! take effect on the next call of an open channel, a new server certificate is presented to
//! new handshakes, and a file that does not load leaves the configuration in force.

use std::path::Path;
use std::time::Duration;

use etjanstekort_gateway::api::pb;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::Code;

use crate::admin::wait_metric;
use crate::helpers::{
    Options, Settings, TestApp, dev_ca, raw_tls, reason, replace_file, spawn_app_opts,
};
use crate::revocation::served;

/// Lays the principals file out as a Kubernetes Secret volume does: `secret/principals.toml`
/// → `..data/principals.toml`, `..data` → `..v1/`.
fn secret_volume(dir: &Path) -> Settings {
    let secret = dir.join("secret");
    std::fs::create_dir_all(secret.join("..v1")).expect("dir");
    std::fs::copy(
        dir.join("principals.toml"),
        secret.join("..v1/principals.toml"),
    )
    .expect("copy");
    std::os::unix::fs::symlink("..v1", secret.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/principals.toml", secret.join("principals.toml"))
        .expect("symlink");
    let path = secret.join("principals.toml").display().to_string();
    vec![("auth.principals_file", path.into())]
}

/// A new version of the Secret: a new directory, and `..data` swapped to it atomically.
fn swap_secret(dir: &Path, version: &str, principals: &str) {
    let secret = dir.join("secret");
    std::fs::create_dir_all(secret.join(version)).expect("dir");
    std::fs::write(secret.join(version).join("principals.toml"), principals).expect("write");
    let tmp = secret.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).expect("symlink");
    std::fs::rename(&tmp, secret.join("..data")).expect("swap");
}

/// The principals file without provider-a's entry.
fn without_provider_a(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("principals.toml")).expect("principals");
    text.split("\n[[principals]]")
        .filter(|entry| !entry.contains("name = \"provider-a\""))
        .collect::<Vec<_>>()
        .join("\n[[principals]]")
}

#[tokio::test]
async fn a_principal_removed_from_the_file_is_refused_on_its_next_call_on_the_same_channel() {
    // The principals file is the Secret volume's symlink.
    let app = spawn_app_opts(Options {
        engine: false,
        prepare: Some(secret_volume),
        ..Options::default()
    })
    .await;
    let mut a = app.provider("provider-a").await;
    a.list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect("granted");

    swap_secret(app.dir.path(), "..v2", &without_provider_a(app.dir.path()));
    let mut denied = None;
    for _ in 0..200 {
        match a
            .list_deregistrations(pb::ListDeregistrationsRequest::default())
            .await
        {
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => {
                denied = Some(e);
                break;
            }
        }
    }
    let e = denied.expect("provider-a still served after its removal");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(reason(&e), "UNKNOWN_PRINCIPAL");
    wait_metric(
        &app,
        "etk_config_reloads_total{file=\"principals\",outcome=\"applied\"}",
        |v| v >= 1.0,
    )
    .await;
    // The others keep their grant.
    assert!(served(&app, &app.issued("provider-b")).await);

    // A broken new version is refused; the version in force stays (provider-b served,
    // provider-a still refused).
    swap_secret(app.dir.path(), "..v3", "[[principals]\nthis is not TOML");
    wait_metric(
        &app,
        "etk_config_reloads_total{file=\"principals\",outcome=\"refused\"}",
        |v| v >= 1.0,
    )
    .await;
    assert!(served(&app, &app.issued("provider-b")).await);
    let e = a
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect_err("still removed");
    assert_eq!(reason(&e), "UNKNOWN_PRINCIPAL");
}

/// The certificate the server presents to a new handshake (DER).
async fn presented_certificate(app: &TestApp, ca_pem: &str) -> Option<Vec<u8>> {
    let tls = raw_tls(app, ca_pem, &app.issued("provider-a")).await.ok()?;
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn a_new_server_certificate_is_presented_to_new_handshakes_and_a_bad_one_is_refused() {
    let app = spawn_app_opts(Options {
        engine: false,
        ..Options::default()
    })
    .await;
    let certs = app.dir.path().join("certs");
    let old = der_of(&std::fs::read_to_string(certs.join("server.pem")).expect("cert"));
    assert_eq!(
        presented_certificate(&app, &app.ca_pem).await,
        Some(old.clone())
    );
    // An open channel survives the swap.
    let mut open = app.provider("provider-a").await;

    let renewed = dev_ca(app.dir.path())
        .issue_server(&["localhost", "127.0.0.1"])
        .expect("server cert");
    // The key first: cert and key do not match, so the pair is refused and the old one stays.
    replace_file(&certs.join("server.key"), &renewed.key_pem);
    wait_metric(
        &app,
        "etk_config_reloads_total{file=\"server_certificate\",outcome=\"refused\"}",
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(
        presented_certificate(&app, &app.ca_pem).await,
        Some(old.clone())
    );
    // Then the certificate: the pair matches and is put in force.
    replace_file(&certs.join("server.pem"), &renewed.cert_pem);
    let new = der_of(&renewed.cert_pem);
    let mut seen = None;
    for _ in 0..200 {
        seen = presented_certificate(&app, &app.ca_pem).await;
        if seen.as_ref() == Some(&new) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen,
        Some(new.clone()),
        "the new certificate was never presented"
    );
    wait_metric(
        &app,
        "etk_config_reloads_total{file=\"server_certificate\",outcome=\"applied\"}",
        |v| v >= 1.0,
    )
    .await;
    open.list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect("the open channel still works");

    // A certificate file that is not one: refused, the pair in force stays.
    replace_file(
        &certs.join("server.pem"),
        "-----BEGIN CERTIFICATE-----\nnope\n",
    );
    wait_metric(
        &app,
        "etk_config_reloads_total{file=\"server_certificate\",outcome=\"refused\"}",
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(presented_certificate(&app, &app.ca_pem).await, Some(new));
    assert!(served(&app, &app.issued("provider-b")).await);
}

#[tokio::test]
async fn sighup_reloads_when_polling_is_off() {
    // A handler of our own first: SIGHUP must never reach a process without one.
    let mut own =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).expect("handler");
    let app = spawn_app_opts(Options {
        engine: false,
        settings: vec![("server.reload_interval", "0s".into())],
        ..Options::default()
    })
    .await;
    let mut a = app.provider("provider-a").await;
    a.list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect("granted");
    replace_file(
        &app.dir.path().join("principals.toml"),
        &without_provider_a(app.dir.path()),
    );
    // Polling is off: nothing changes until SIGHUP (other tests' servers reload too; harmless).
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    own.recv().await;
    wait_metric(
        &app,
        "etk_config_reloads_total{file=\"principals\",outcome=\"applied\"}",
        |v| v >= 1.0,
    )
    .await;
    let e = a
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect_err("removed");
    assert_eq!(reason(&e), "UNKNOWN_PRINCIPAL");
}

/// Opens a watch stream of provider-a on a new case and reads its first event.
async fn open_watch(
    app: &crate::helpers::TestApp,
) -> tonic::Streaming<pb::WatchDeregistrationResponse> {
    let id = app
        .create_case(
            "watch-recheck",
            crate::helpers::report(&crate::helpers::unit_a(), "19121212-1212", "8200009"),
        )
        .await;
    let mut stream = app
        .provider("provider-a")
        .await
        .watch_deregistration(pb::WatchDeregistrationRequest { id })
        .await
        .expect("watch")
        .into_inner();
    stream
        .message()
        .await
        .expect("stream")
        .expect("the first event");
    stream
}

/// The error that ends `stream` (bounded wait; no event comes on the case meanwhile).
async fn ending(mut stream: tonic::Streaming<pb::WatchDeregistrationResponse>) -> tonic::Status {
    match tokio::time::timeout(Duration::from_secs(20), stream.message()).await {
        Ok(Err(status)) => status,
        other => panic!("the watch stream went on: {other:?}"),
    }
}

#[tokio::test]
async fn a_watch_stream_ends_when_its_principal_is_removed() {
    let app = spawn_app_opts(Options {
        engine: false,
        prepare: Some(secret_volume),
        ..Options::default()
    })
    .await;
    let stream = open_watch(&app).await;
    swap_secret(app.dir.path(), "..v2", &without_provider_a(app.dir.path()));
    let e = ending(stream).await;
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(reason(&e), "UNKNOWN_PRINCIPAL");
}

#[tokio::test]
async fn a_watch_stream_ends_when_its_certificate_is_revoked() {
    let app = spawn_app_opts(Options {
        engine: false,
        ..Options::default()
    })
    .await;
    let stream = open_watch(&app).await;
    app.publish_crl(&[crate::helpers::serial_of(
        &app.issued("provider-a").cert_pem,
    )]);
    let e = ending(stream).await;
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(reason(&e), "CERTIFICATE_REVOKED");
}
