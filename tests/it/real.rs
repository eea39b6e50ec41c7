//! The connectors against real servers — OpenLDAP and an SMTP server with STARTTLS — and the
//! same contract suites against the simulations, so the simulations cannot drift.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::connectors::ldap::{LdapBind, LdapKiv, LdapSettings, Removal};
use etjanstekort_gateway::connectors::simulated::{
    Faults, LogNotifier, SimulatedKiv, SimulatedTjansteId,
};
use etjanstekort_gateway::connectors::smtp::{Smtp, SmtpNotifier, SmtpSettings, SmtpTjansteId};
use etjanstekort_gateway::connectors::{
    ConnectorError, Connectors, CutCardReport, Kiv, Notice, Notifier, Recipient, TjansteId,
};
use etjanstekort_gateway::domain::{
    CardNumber, Email, Employment, HsaId, PersonName, Personnummer,
};
use pb::revocation_service_client::RevocationServiceClient;

use crate::helpers::{Options, create, report, spawn_app_opts, unit_a};
use crate::servers::{LDAP_ADMIN, LDAP_PASSWORD, Slapd, SmtpServer};

pub(crate) fn person() -> Personnummer {
    Personnummer::parse(
        "19121212-1212",
        etjanstekort_gateway::clock::now().utc_date(),
    )
    .expect("pnr")
}

pub(crate) fn unit() -> HsaId {
    HsaId::parse(&unit_a()).expect("unit")
}

// ---- fixtures: how a test arranges the world behind each port --------------------------------

pub(crate) trait KivWorld {
    async fn employ(&self, p: &Personnummer, u: &HsaId);
    async fn remove_by_hand(&self, p: &Personnummer, u: &HsaId);
}

impl KivWorld for SimulatedKiv {
    async fn employ(&self, p: &Personnummer, u: &HsaId) {
        SimulatedKiv::employ(self, p, u);
    }
    async fn remove_by_hand(&self, p: &Personnummer, u: &HsaId) {
        self.remove_out_of_band(p, u);
    }
}

fn employment_dn(p: &Personnummer, u: &HsaId) -> (String, String) {
    let person = format!("cn=P{},ou=Personal,o=VGR", &p.expose_digits()[..8]);
    (format!("cn={},{person}", u.as_str()), person)
}

impl KivWorld for Slapd {
    async fn employ(&self, p: &Personnummer, u: &HsaId) {
        let mut ldap = self.admin().await;
        let (dn, parent) = employment_dn(p, u);
        let cn = parent[3..parent.find(',').expect("rdn")].to_owned();
        let _ = ldap
            .add(
                &parent,
                vec![
                    ("objectClass", HashSet::from(["vgrPerson"])),
                    ("cn", HashSet::from([cn.as_str()])),
                ],
            )
            .await;
        let digits = p.expose_digits();
        ldap.add(
            &dn,
            vec![
                ("objectClass", HashSet::from(["vgrAnstallning"])),
                ("cn", HashSet::from([u.as_str()])),
                ("hsaPersonIdentityNumber", HashSet::from([digits.as_str()])),
                ("vgrOrgRel", HashSet::from([u.as_str()])),
                (
                    "title",
                    HashSet::from(["Sjuksköterska", "Specialistsjuksköterska"]),
                ),
                ("hsaStartDate", HashSet::from(["20200101000000Z"])),
                ("vgrAnstform", HashSet::from(["Tillsvidare"])),
            ],
        )
        .await
        .expect("add")
        .success()
        .expect("added");
    }

    async fn remove_by_hand(&self, p: &Personnummer, u: &HsaId) {
        let mut ldap = self.admin().await;
        ldap.delete(&employment_dn(p, u).0)
            .await
            .expect("delete")
            .success()
            .expect("deleted");
    }
}

pub(crate) fn ldap_kiv(slapd: &Slapd, removal: Removal) -> LdapKiv {
    LdapKiv::new(ldap_settings(slapd, removal)).expect("settings")
}

fn ldap_settings(slapd: &Slapd, removal: Removal) -> LdapSettings {
    LdapSettings {
        url: slapd.url(),
        bind: Some(LdapBind {
            dn: LDAP_ADMIN.into(),
            password: LDAP_PASSWORD.into(),
        }),
        base_dn: "ou=Personal,o=VGR".into(),
        object_class: Some("vgrAnstallning".into()),
        person_attribute: "hsaPersonIdentityNumber".into(),
        unit_attribute: "vgrOrgRel".into(),
        end_date_attribute: "hsaEndDate".into(),
        removal,
        allow_plain: false,
        ca_file: Some(slapd.dir.path().join("ca.pem")),
        timeout: Duration::from_secs(5),
    }
}

pub(crate) fn smtp(server: &SmtpServer) -> Smtp {
    Smtp::new(&smtp_settings(server)).expect("smtp settings")
}

fn smtp_settings(server: &SmtpServer) -> SmtpSettings {
    let ca_file = server.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &server.ca_pem).expect("write the CA bundle");
    SmtpSettings {
        host: "127.0.0.1".into(),
        port: server.port,
        allow_plain: false,
        login: None,
        ca_file: Some(ca_file),
        hello_name: "gateway.test".into(),
        from: "eTjänstekort-gateway <noreply@gateway.test>".into(),
        timeout: Duration::from_secs(5),
    }
}

fn sorted(e: &Employment) -> BTreeMap<String, Vec<String>> {
    e.attributes
        .iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            v.sort();
            (k.to_ascii_lowercase(), v)
        })
        .collect()
}

// ---- contract suites --------------------------------------------------------------------------

async fn kiv_contract(kiv: &dyn Kiv, world: &impl KivWorld) {
    let (p, u) = (person(), unit());
    assert_eq!(
        kiv.lookup(&p, &u).await.expect("lookup"),
        None,
        "nobody employed yet"
    );
    world.employ(&p, &u).await;
    let snapshot = kiv.lookup(&p, &u).await.expect("lookup").expect("employed");
    let attrs = sorted(&snapshot);
    assert_eq!(
        attrs.get("hsapersonidentitynumber"),
        Some(&vec![p.expose_digits()])
    );
    assert_eq!(attrs.get("vgrorgrel"), Some(&vec![u.to_string()]));
    assert!(
        !format!("{snapshot:?}").contains(&p.expose_digits()),
        "snapshot Debug leaks"
    );

    kiv.remove("case:remove_kiv", &p, &u).await.expect("remove");
    assert_eq!(kiv.lookup(&p, &u).await.expect("lookup"), None);
    kiv.remove("case:remove_kiv", &p, &u)
        .await
        .expect("removing what is gone succeeds");

    kiv.restore("case:restore_kiv:1", &snapshot)
        .await
        .expect("restore");
    let back = kiv.lookup(&p, &u).await.expect("lookup").expect("restored");
    assert_eq!(
        back.dn.to_ascii_lowercase(),
        snapshot.dn.to_ascii_lowercase()
    );
    assert_eq!(sorted(&back), attrs, "restored exactly");
    kiv.restore("case:restore_kiv:1", &snapshot)
        .await
        .expect("restoring what is there succeeds");

    world.remove_by_hand(&p, &u).await;
    assert_eq!(kiv.lookup(&p, &u).await.expect("lookup"), None);
    kiv.restore("case:restore_kiv:2", &snapshot)
        .await
        .expect("restore");
    assert!(kiv.lookup(&p, &u).await.expect("lookup").is_some());
}

fn cut_card() -> CutCardReport {
    CutCardReport {
        case_id: etjanstekort_gateway::clock::new_case_id(),
        personnummer: person(),
        card_number: CardNumber::parse("9752 2700 0012 3456").expect("card"),
        holder_name: PersonName::parse("Tolvan Tolvansson").expect("name"),
        care_unit: unit(),
        care_provider: HsaId::parse("SE1655999991-E000000000001").expect("hsa"),
        reporter_name: PersonName::parse("Vera Verksamhetschef").expect("name"),
        reporter_email: Email::parse("vera@example.se").expect("email"),
    }
}

trait DeskWorld {
    /// How many deliveries carried `key` so far.
    fn deliveries(&self, key: &str) -> usize;
    fn refuse(&self, on: bool);
}

impl DeskWorld for SimulatedTjansteId {
    fn deliveries(&self, key: &str) -> usize {
        SimulatedTjansteId::deliveries(self)
            .get(key)
            .copied()
            .unwrap_or(0) as usize
    }
    fn refuse(&self, on: bool) {
        self.set_refusing(on);
    }
}

impl DeskWorld for SmtpServer {
    fn deliveries(&self, key: &str) -> usize {
        let id = format!("<{}@gateway.test>", key.replace(':', "."));
        self.messages().iter().filter(|m| m.contains(&id)).count()
    }
    fn refuse(&self, on: bool) {
        self.set_rejecting(on);
    }
}

async fn tjansteid_contract(desk: &dyn TjansteId, world: &impl DeskWorld) {
    let r = cut_card();
    let key = format!("{}:report", r.case_id);
    desk.report(&key, &r).await.expect("report");
    assert_eq!(world.deliveries(&key), 1);
    // A retry delivers again under the same key, so the desk can tell it is the same report.
    desk.report(&key, &r).await.expect("retry");
    assert_eq!(world.deliveries(&key), 2);
    let remind = format!("{}:remind:1", r.case_id);
    desk.remind(&remind, &r, 1).await.expect("remind");
    assert_eq!(world.deliveries(&remind), 1);
    world.refuse(true);
    let refused = desk
        .report(
            &format!("{}:report", etjanstekort_gateway::clock::new_case_id()),
            &r,
        )
        .await;
    world.refuse(false);
    assert!(
        matches!(refused, Err(ConnectorError::Terminal(_))),
        "{refused:?}"
    );
}

async fn notifier_contract(n: &dyn Notifier, delivered: impl Fn() -> Vec<String>) {
    let id = etjanstekort_gateway::clock::new_case_id();
    for (who, to) in [
        (Recipient::HeadOfOperations, "vera@example.se"),
        (Recipient::CardHolder, "tolvan@example.se"),
    ] {
        let notice = Notice {
            recipient: who,
            to: Email::parse(to).expect("email"),
            case_id: id.clone(),
            holder_name: PersonName::parse("Tolvan Tolvansson").expect("name"),
            holder_masked: person().masked(),
            care_unit: unit(),
            revocation_reference: "TJID-1".into(),
        };
        n.notify(&format!("{id}:notify:{who:?}"), &notice)
            .await
            .expect("notify");
    }
    let out = delivered();
    assert_eq!(out.len(), 2, "{out:?}");
    for m in out {
        for full in ["191212121212", "19121212-1212", "121212-1212"] {
            assert!(!m.contains(full), "full personnummer in a notice");
        }
    }
}

#[tokio::test]
async fn kiv_contract_on_the_simulation() {
    let kiv = SimulatedKiv::new(false, Faults::default(), None);
    kiv_contract(&kiv, &kiv).await;
}

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn kiv_contract_on_openldap() {
    let slapd = Slapd::start();
    kiv_contract(&ldap_kiv(&slapd, Removal::Delete), &slapd).await;
}

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn kiv_contract_on_openldap_with_end_dates() {
    let slapd = Slapd::start();
    let kiv = ldap_kiv(&slapd, Removal::EndDate);
    kiv_contract(&kiv, &slapd).await;
    // In end-date mode the entry stays, marked ended.
    kiv.remove("k", &person(), &unit()).await.expect("remove");
    let mut admin = slapd.admin().await;
    let (entries, _) = admin
        .search(
            &employment_dn(&person(), &unit()).0,
            ldap3::Scope::Base,
            "(objectClass=*)",
            vec!["hsaEndDate"],
        )
        .await
        .expect("search")
        .success()
        .expect("ok");
    assert_eq!(entries.len(), 1, "the entry is kept");
}

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn a_wrong_password_is_terminal_and_a_dead_server_retryable() {
    let mut slapd = Slapd::start();
    let mut s = ldap_kiv(&slapd, Removal::Delete);
    let bad = LdapKiv::new(LdapSettings {
        bind: Some(LdapBind {
            dn: LDAP_ADMIN.into(),
            password: "wrong".into(),
        }),
        object_class: None,
        ..ldap_settings(&slapd, Removal::Delete)
    })
    .expect("settings");
    let e = bad
        .lookup(&person(), &unit())
        .await
        .expect_err("bad password");
    assert!(
        matches!(&e, ConnectorError::Terminal(m) if m.contains("49")),
        "{e:?}"
    );
    assert!(
        !format!("{e:?} {bad:?}").contains("wrong"),
        "the password leaked"
    );
    slapd.stop();
    let e = s.lookup(&person(), &unit()).await.expect_err("down");
    assert!(e.is_retryable(), "{e:?}");
    slapd.resume();
    s = ldap_kiv(&slapd, Removal::Delete);
    assert_eq!(s.lookup(&person(), &unit()).await.expect("back"), None);
}

#[tokio::test]
async fn tjansteid_contract_on_the_simulation() {
    let desk = SimulatedTjansteId::new(None, Faults::default(), None);
    tjansteid_contract(&desk, &desk).await;
}

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn tjansteid_contract_over_smtp() {
    let server = SmtpServer::start();
    let desk = SmtpTjansteId::new(smtp(&server), "tjansteid@desk.test".into(), String::new())
        .expect("desk");
    tjansteid_contract(&desk, &server).await;
    // The report carries exactly what the routine asks for.
    let m = &server.messages()[0];
    for line in [
        "Personnummer: 19121212-1212",
        "Kortnummer: 9752270000123456",
        "Kortinnehavarens namn: Tolvan Tolvansson",
        "V=C3=A5rdenhet: SE1655999991-S000000000011",
    ] {
        assert!(
            m.contains(line) || m.contains(&line.replace("=C3=A5", "å")),
            "{line} missing in {m}"
        );
    }
    assert!(m.contains("X-Envelope-To: tjansteid@desk.test"));
}

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn plain_smtp_is_refused_by_a_starttls_server_unless_allowed() {
    let server = SmtpServer::start();
    let plain = Smtp::new(&SmtpSettings {
        host: "127.0.0.1".into(),
        port: server.port,
        allow_plain: true,
        login: None,
        ca_file: None,
        hello_name: "gateway.test".into(),
        from: "noreply@gateway.test".into(),
        timeout: Duration::from_secs(5),
    })
    .expect("settings");
    let desk =
        SmtpTjansteId::new(plain, "tjansteid@desk.test".into(), String::new()).expect("desk");
    // The server requires STARTTLS: a plain session is refused, and nothing is delivered.
    assert!(desk.report("k:report", &cut_card()).await.is_err());
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn notifier_contract_on_the_log() {
    let n = Arc::new(LogNotifier::new(Faults::default(), None));
    let seen = n.clone();
    notifier_contract(&*n, move || {
        seen.sent().iter().map(|(_, n)| format!("{n:?}")).collect()
    })
    .await;
}

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn notifier_contract_over_smtp() {
    let server = SmtpServer::start();
    let n = SmtpNotifier::new(smtp(&server));
    notifier_contract(&n, || server.messages()).await;
}

// ---- end to end over mTLS ----------------------------------------------------------------------

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

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn a_stalled_smtp_server_is_a_retryable_timeout() {
    let server = SmtpServer::start();
    server.stall(5.0);
    let mut settings = smtp_settings(&server);
    settings.timeout = Duration::from_millis(800);
    let desk = SmtpTjansteId::new(
        Smtp::new(&settings).expect("smtp"),
        "tjansteid@desk.test".into(),
        String::new(),
    )
    .expect("desk");
    let started = std::time::Instant::now();
    let r = desk.report("k:report", &cut_card()).await;
    assert!(matches!(&r, Err(ConnectorError::Retryable(_))), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout did not bound the send"
    );
    server.stall(0.0);
}
