//! The routine end to end over mTLS against the real registries: OpenLDAP `slapd` as KIV and an
//! `aiosmtpd` server as TjänsteID-service's mailbox and the notifier's relay — outages, refusals,
//! readiness, and the KIV guard. (The per-port contract suites are in `real.rs`.)

use std::sync::Arc;
use std::time::Duration;

use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::connectors::ldap::{LdapBind, LdapKiv, Removal};
use etjanstekort_gateway::connectors::smtp::{SmtpNotifier, SmtpTjansteId};
use etjanstekort_gateway::connectors::{Connectors, Kiv};
use etjanstekort_gateway::domain::Personnummer;
use pb::revocation_service_client::RevocationServiceClient;

use crate::helpers::{Options, create, report, spawn_app_opts, unit_a};
use crate::real::{KivWorld, ldap_kiv, ldap_settings, person, smtp, unit};
use crate::servers::{LDAP_ADMIN, Slapd, SmtpServer};

async fn real_app(slapd: &Slapd, mail: &SmtpServer, max_attempts: u32) -> crate::helpers::TestApp {
    real_app_with(ldap_kiv(slapd, Removal::Delete), mail, max_attempts).await
}

async fn real_app_with(
    kiv: LdapKiv,
    mail: &SmtpServer,
    max_attempts: u32,
) -> crate::helpers::TestApp {
    let relay = smtp(mail);
    let connectors = Connectors {
        tjansteid: Arc::new(
            SmtpTjansteId::new(relay.clone(), "tjansteid@desk.test".into(), String::new())
                .expect("desk"),
        ),
        kiv: Arc::new(kiv),
        notifier: Arc::new(SmtpNotifier::new(relay)),
        gateway_removes_kiv: true,
        revocation: None,
    };
    spawn_app_opts(Options {
        connectors: Some(connectors),
        reconcile_interval: 0.2,
        max_attempts,
        ..Options::default()
    })
    .await
}

async fn confirm(app: &crate::helpers::TestApp, id: &str) {
    RevocationServiceClient::new(app.channel("tjansteid").await)
        .confirm_revocation(pb::ConfirmRevocationRequest {
            deregistration_id: id.to_owned(),
            revocation_reference: "TJID-2026-0042".into(),
            revoke_time: None,
            ..Default::default()
        })
        .await
        .expect("confirm");
}

fn reports_for(mail: &SmtpServer, id: &str) -> usize {
    let msg_id = format!("<{id}.report@gateway.test>");
    mail.messages()
        .iter()
        .filter(|m| m.contains(&msg_id))
        .count()
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen in time");
}

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn the_routine_against_real_registries() {
    let (slapd, mail) = (Slapd::start(), SmtpServer::start());
    slapd.employ(&person(), &unit()).await;
    let app = real_app(&slapd, &mail, 12).await;
    let kiv = ldap_kiv(&slapd, Removal::Delete);
    let id = app
        .create_case(
            "real-1",
            report(&unit_a(), "19121212-1212", "9752270000123456"),
        )
        .await;
    app.wait_for(&id, pb::State::RevocationRequested).await;
    assert_eq!(reports_for(&mail, &id), 1, "the report arrives once");
    assert!(
        kiv.lookup(&person(), &unit())
            .await
            .expect("lookup")
            .is_some(),
        "removed before confirmation"
    );

    // Someone removes the employment by hand too early: the gateway puts it back.
    slapd.remove_by_hand(&person(), &unit()).await;
    eventually("restore", async || {
        kiv.lookup(&person(), &unit())
            .await
            .is_ok_and(|e| e.is_some())
    })
    .await;

    confirm(&app, &id).await;
    app.wait_for(&id, pb::State::Completed).await;
    assert_eq!(
        kiv.lookup(&person(), &unit()).await.expect("lookup"),
        None,
        "removed after confirmation"
    );
    assert_eq!(reports_for(&mail, &id), 1);
    let notices: Vec<String> = mail
        .messages()
        .into_iter()
        .filter(|m| m.contains(&format!("{id}.notify")))
        .collect();
    assert_eq!(notices.len(), 2);
    assert!(
        notices
            .iter()
            .any(|m| m.contains("X-Envelope-To: vera@example.se"))
    );
    assert!(
        notices
            .iter()
            .any(|m| m.contains("X-Envelope-To: tolvan@example.se"))
    );
    for m in &notices {
        for full in ["191212121212", "19121212-1212", "121212-1212"] {
            assert!(!m.contains(full), "full personnummer in a notice");
        }
    }
}

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn outages_of_both_servers_delay_but_lose_nothing() {
    let (mut slapd, mut mail) = (Slapd::start(), SmtpServer::start());
    let cards = ["9100001", "9100002", "9100003"];
    let app = real_app(&slapd, &mail, 1000).await;
    slapd.stop();
    mail.stop();
    let mut c = app.provider("provider-a").await;
    let mut ids = Vec::new();
    for (i, card) in cards.iter().enumerate() {
        let mut d = report(&unit_a(), "19121212-1212", card);
        d.card_holder
            .as_mut()
            .expect("holder")
            .personal_identity_number =
            Personnummer::synthetic(1980, 1, 1 + i as u8, 100 + i as u16)
                .expect("pnr")
                .expose_digits();
        ids.push(
            c.create_deregistration(create(&format!("out-{i}"), d))
                .await
                .expect("accepted while the registries are down")
                .into_inner()
                .deregistration
                .expect("case")
                .id,
        );
    }
    // Watch each case while the registries are down: nothing may follow its acceptance.
    for id in &ids {
        let kinds = app.events_within(id, Duration::from_millis(500)).await;
        assert_eq!(kinds, ["accepted"], "moved on without the registries");
    }
    slapd.resume();
    mail.resume();
    for id in &ids {
        app.wait_for(id, pb::State::RevocationRequested).await;
        confirm(&app, id).await;
    }
    // Now the mail server goes away during the notifications: they wait, then go out.
    mail.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    mail.resume();
    for id in &ids {
        app.wait_for(id, pb::State::Completed).await;
        assert_eq!(reports_for(&mail, id), 1, "one report per case");
    }
}

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn a_permanent_smtp_rejection_needs_attention_with_the_reason() {
    let (slapd, mail) = (Slapd::start(), SmtpServer::start());
    mail.set_rejecting(true);
    let app = real_app(&slapd, &mail, 12).await;
    let id = app
        .create_case("rej-1", report(&unit_a(), "19121212-1212", "9200001"))
        .await;
    let parked = app.wait_for(&id, pb::State::NeedsAttention).await;
    assert!(
        parked.state_reason.contains("550"),
        "{}",
        parked.state_reason
    );
}

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn a_registry_down_marks_its_entry_and_readiness_stays() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let (mut slapd, mail) = (Slapd::start(), SmtpServer::start());
    let app = real_app(&slapd, &mail, 12).await;
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(app.channel("operator").await);
    let mut status = async |service: &str| {
        health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1)
    };
    let (up, down) = (
        ServingStatus::Serving as i32,
        ServingStatus::NotServing as i32,
    );
    eventually("ready with KIV reachable", async || {
        status("").await == up && status("etjanstekort.connector.kiv").await == up
    })
    .await;
    slapd.stop();
    eventually("the kiv entry goes NOT_SERVING", async || {
        status("etjanstekort.connector.kiv").await == down
    })
    .await;
    // Cases wait safely for KIV: the gateway stays ready to take and store reports.
    assert_eq!(status("").await, up, "readiness followed a registry");
    assert_eq!(status("etjanstekort.v1.DeregistrationService").await, up);
    assert_eq!(crate::admin::http_get(app.admin, "/livez").await.0, 200);
    assert_eq!(crate::admin::http_get(app.admin, "/readyz").await.0, 200);
    crate::admin::wait_metric(&app, "etk_connector_up{connector=\"kiv\"}", |v| v == 0.0).await;
    let s = crate::admin::scrape(&app).await;
    assert_eq!(
        s.get("etk_connector_up{connector=\"notifier\"}"),
        Some(&1.0)
    );
    assert_eq!(s.get("etk_database_up"), Some(&1.0));
    slapd.resume();
    eventually("the kiv entry comes back", async || {
        status("etjanstekort.connector.kiv").await == up
    })
    .await;
    crate::admin::wait_metric(&app, "etk_connector_up{connector=\"kiv\"}", |v| v == 1.0).await;
}

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn a_wrong_bind_password_marks_the_kiv_entry_not_serving_readiness_stays_true() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let (slapd, mail) = (Slapd::start(), SmtpServer::start());
    let mut bad = ldap_settings(&slapd, Removal::Delete);
    bad.bind = Some(LdapBind {
        dn: LDAP_ADMIN.into(),
        password: "not-the-password".into(),
    });
    let app = real_app_with(LdapKiv::new(bad).expect("settings"), &mail, 12).await;
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(app.channel("operator").await);
    let mut status = async |service: &str| {
        health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1)
    };
    // The prober is alive and has judged every part: the mail server is reachable, the
    // directory is not (its entry exists only once the prober has set it).
    eventually("the prober judged KIV and the mail server", async || {
        status("etjanstekort.connector.kiv").await == ServingStatus::NotServing as i32
            && status("etjanstekort.connector.notifier").await == ServingStatus::Serving as i32
            && status("etjanstekort.database").await == ServingStatus::Serving as i32
    })
    .await;
    assert_eq!(
        status("").await,
        ServingStatus::Serving as i32,
        "a wrong LDAP password is the directory's problem, not readiness's"
    );
    assert_eq!(crate::admin::http_get(app.admin, "/readyz").await.0, 200);
    let s = crate::admin::scrape(&app).await;
    assert_eq!(s.get("etk_connector_up{connector=\"kiv\"}"), Some(&0.0));
}

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn a_second_case_for_the_same_employment_does_not_bring_it_back() {
    let (slapd, mail) = (Slapd::start(), SmtpServer::start());
    slapd.employ(&person(), &unit()).await;
    let app = real_app(&slapd, &mail, 12).await;
    let kiv = ldap_kiv(&slapd, Removal::Delete);
    let mut c = app.provider("provider-a").await;
    let mut ids = Vec::new();
    for card in ["9300001", "9300002"] {
        ids.push(
            c.create_deregistration(create(card, report(&unit_a(), "19121212-1212", card)))
                .await
                .expect("create")
                .into_inner()
                .deregistration
                .expect("case")
                .id,
        );
    }
    for id in &ids {
        app.wait_for(id, pb::State::RevocationRequested).await;
    }
    confirm(&app, &ids[0]).await;
    app.wait_for(&ids[0], pb::State::Completed).await;
    // Several reconciliation rounds (every 0.2 s): the other, unconfirmed case must not
    // restore what the confirmed one removed — watched on its event stream.
    let kinds = app
        .events_within(&ids[1], Duration::from_millis(1000))
        .await;
    assert!(
        kinds.iter().all(
            |k| ["accepted", "kiv_snapshot_taken", "revocation_requested"].contains(&k.as_str())
        ),
        "{kinds:?}"
    );
    assert_eq!(
        kiv.lookup(&person(), &unit()).await.expect("lookup"),
        None,
        "employment brought back"
    );
    confirm(&app, &ids[1]).await;
    app.wait_for(&ids[1], pb::State::Completed).await;
    assert_eq!(kiv.lookup(&person(), &unit()).await.expect("lookup"), None);
}

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn an_undeliverable_holder_address_is_recorded_and_kiv_still_cleaned() {
    let (slapd, mail) = (Slapd::start(), SmtpServer::start());
    mail.reject_addresses(&["tolvan@example.se"]);
    slapd.employ(&person(), &unit()).await;
    let app = real_app(&slapd, &mail, 12).await;
    let mut c = app.provider("provider-a").await;
    let id = app
        .create_case("holder-550", report(&unit_a(), "19121212-1212", "9400001"))
        .await;
    app.wait_for(&id, pb::State::RevocationRequested).await;
    confirm(&app, &id).await;
    let done = app.wait_for(&id, pb::State::Completed).await;
    let mut stream = c
        .watch_deregistration(pb::WatchDeregistrationRequest { id: id.clone() })
        .await
        .expect("watch")
        .into_inner();
    let mut events = Vec::new();
    // The stream of a completed case ends by itself; bounded all the same.
    let read = async {
        while let Some(m) = stream.message().await.expect("stream") {
            events.push(m.event.expect("event"));
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the watch of a completed case ends");
    let failed = events
        .iter()
        .find(|e| e.kind == "holder_not_notified")
        .expect("the failure is recorded");
    assert!(failed.detail.contains("550"), "{}", failed.detail);
    for text in events
        .iter()
        .map(|e| e.detail.as_str())
        .chain([done.state_reason.as_str()])
    {
        assert!(
            !text.contains("tolvan@"),
            "an address reached the audit trail: {text}"
        );
    }
    let heads = mail
        .messages()
        .into_iter()
        .filter(|m| m.contains(&format!("<{id}.notify_head@")))
        .count();
    assert_eq!(heads, 1, "the head of operations is told once");
}
