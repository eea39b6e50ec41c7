//! The connectors against real servers — OpenLDAP and an SMTP server with STARTTLS — and the
//! same contract suites against the simulations, so the simulations cannot drift.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use etjanstekort_gateway::connectors::ldap::{LdapBind, LdapKiv, LdapSettings, Removal};
use etjanstekort_gateway::connectors::simulated::{
    Faults, LogNotifier, SimulatedKiv, SimulatedTjansteId,
};
use etjanstekort_gateway::connectors::smtp::{Smtp, SmtpNotifier, SmtpSettings, SmtpTjansteId};
use etjanstekort_gateway::connectors::{
    ConnectorError, CutCardReport, Kiv, Notice, Notifier, Recipient, TjansteId,
};
use etjanstekort_gateway::domain::{
    CardNumber, Email, Employment, HsaId, PersonName, Personnummer,
};

use crate::helpers::unit_a;
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

pub(crate) fn ldap_settings(slapd: &Slapd, removal: Removal) -> LdapSettings {
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

pub(crate) async fn kiv_contract(kiv: &dyn Kiv, world: &impl KivWorld) {
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
