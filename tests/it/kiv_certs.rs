//! The card certificates KIV holds, against a real OpenLDAP: the look-up keeps the person
//! entry's `hsaIdentity` and `userCertificate;binary` values in the snapshot, the matching rule
//! picks the card's, and removing and restoring the employment leaves every certificate
//! byte-identical — those on the person entry untouched, those on the employment entry put back.

use std::collections::HashSet;

use etjanstekort_gateway::connectors::Kiv;
use etjanstekort_gateway::connectors::card_certs::kiv_card_certificates;
use etjanstekort_gateway::connectors::ldap::{LdapKiv, Removal};
use etjanstekort_gateway::connectors::simulated::{Faults, SimulatedKiv};
use etjanstekort_gateway::domain::{Employment, Timestamp, attribute_bytes};
use ldap3::{Scope, SearchEntry};
use rcgen::{CertificateParams, DnType, DnValue, IsCa, Issuer, KeyPair};
use time::macros::datetime;

use crate::real::{ldap_kiv, ldap_settings, person, unit};
use crate::servers::Slapd;

const HOLDER: &str = "SE1655999991-P000000000042";
const OTHER: &str = "SE1655999991-P000000000043";

/// A card certificate for `hsa_id` from `ca`, valid from `from` until `until`.
fn card(
    ca: &Issuer<'static, KeyPair>,
    hsa_id: &str,
    from: time::OffsetDateTime,
    until: time::OffsetDateTime,
) -> Vec<u8> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name
        .push(DnType::CommonName, "Tolvan Tolvansson");
    p.distinguished_name.push(
        DnType::CustomDnType(vec![2, 5, 4, 5]),
        DnValue::PrintableString(hsa_id.try_into().expect("printable")),
    );
    (p.not_before, p.not_after) = (from, until);
    let key = KeyPair::generate().expect("key");
    p.signed_by(&key, ca).expect("sign").der().to_vec()
}

fn serial(der: &[u8]) -> String {
    etjanstekort_gateway::connectors::card_certs::read(
        der,
        etjanstekort_gateway::domain::CertificateSource::Kiv,
    )
    .expect("reads")
    .certificate
    .serial
}

/// The `userCertificate;binary` values of one entry, read as an administrator would.
async fn certificates_at(slapd: &Slapd, dn: &str) -> Option<HashSet<Vec<u8>>> {
    let mut ldap = slapd.admin().await;
    let (entries, _) = ldap
        .search(dn, Scope::Base, "(objectClass=*)", vec!["userCertificate"])
        .await
        .expect("search")
        .success()
        .ok()?;
    let e = SearchEntry::construct(entries.into_iter().next()?);
    Some(
        e.bin_attrs
            .into_iter()
            .filter(|(k, _)| k.to_ascii_lowercase().starts_with("usercertificate"))
            .flat_map(|(_, v)| v)
            .collect(),
    )
}

fn set(values: Vec<Vec<u8>>) -> HashSet<Vec<u8>> {
    values.into_iter().collect()
}

#[tokio::test]
async fn kiv_card_certificates_from_a_real_directory_survive_removal_and_restore() {
    let slapd = Slapd::start();
    let kiv = ldap_kiv(&slapd, Removal::Delete);
    let (p, u) = (person(), unit());

    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Test SITHS e-id Person CA");
    let ca = Issuer::new(params, KeyPair::generate().expect("key"));
    let valid = (
        datetime!(2024-01-01 00:00 UTC),
        datetime!(2031-01-01 00:00 UTC),
    );
    let the_card = card(&ca, HOLDER, valid.0, valid.1);
    let the_cards_other = card(&ca, HOLDER, valid.0, valid.1);
    let someone_elses = card(&ca, OTHER, valid.0, valid.1);
    let expired = card(
        &ca,
        HOLDER,
        datetime!(2015-01-01 00:00 UTC),
        datetime!(2020-01-01 00:00 UTC),
    );

    // The person entry carries the HSA-id and certificates; the employment below it one more.
    let digits = p.expose_digits();
    let person_dn = format!("cn=P{},ou=Personal,o=VGR", &digits[..8]);
    let employment_dn = format!("cn={},{person_dn}", u.as_str());
    let b = |s: &str| s.as_bytes().to_vec();
    let mut ldap = slapd.admin().await;
    ldap.add(
        &person_dn,
        vec![
            (b("objectClass"), HashSet::from([b("vgrPerson")])),
            (b("cn"), HashSet::from([b(&person_dn[3..12])])),
            (b("hsaIdentity"), HashSet::from([b(HOLDER)])),
            (
                b("userCertificate;binary"),
                HashSet::from([the_card.clone(), someone_elses.clone(), expired.clone()]),
            ),
        ],
    )
    .await
    .expect("add")
    .success()
    .expect("the person");
    ldap.add(
        &employment_dn,
        vec![
            (b("objectClass"), HashSet::from([b("vgrAnstallning")])),
            (b("cn"), HashSet::from([b(u.as_str())])),
            (b("hsaPersonIdentityNumber"), HashSet::from([b(&digits)])),
            (b("vgrOrgRel"), HashSet::from([b(u.as_str())])),
            (b("title"), HashSet::from([b("Sjuksköterska")])),
            (
                b("userCertificate;binary"),
                HashSet::from([the_cards_other.clone()]),
            ),
        ],
    )
    .await
    .expect("add")
    .success()
    .expect("the employment");
    let person_certs = set(vec![the_card.clone(), someone_elses, expired]);
    let employment_certs = set(vec![the_cards_other.clone()]);

    // The look-up keeps them in the snapshot.
    let snapshot: Employment = kiv.lookup(&p, &u).await.expect("lookup").expect("employed");
    let person_entry = snapshot.person.as_ref().expect("the person entry was read");
    assert_eq!(
        person_entry.dn.to_ascii_lowercase(),
        person_dn.to_ascii_lowercase()
    );
    assert_eq!(
        attribute_bytes(&person_entry.attributes, "hsaIdentity", &[]),
        vec![b(HOLDER)]
    );
    assert_eq!(
        set(attribute_bytes(
            &person_entry.attributes,
            "userCertificate",
            &["binary"]
        )),
        person_certs
    );
    assert_eq!(
        set(attribute_bytes(
            &snapshot.attributes,
            "userCertificate",
            &["binary"]
        )),
        employment_certs
    );
    let printed = format!("{snapshot:?}");
    assert!(
        !printed.contains(HOLDER) && !printed.contains(&digits),
        "{printed}"
    );

    // The rule picks the holder's certificates in force at the report.
    let reported_at = Timestamp(datetime!(2026-12-01 12:00 UTC).unix_timestamp() * 1_000_000);
    let mut picked: Vec<String> = kiv_card_certificates(&snapshot, reported_at)
        .into_iter()
        .map(|c| c.serial)
        .collect();
    picked.sort();
    let mut want = vec![serial(&the_card), serial(&the_cards_other)];
    want.sort();
    assert_eq!(picked, want);

    // Removing the employment leaves the person entry's certificates alone.
    kiv.remove("case:remove_kiv", &p, &u).await.expect("remove");
    assert_eq!(kiv.lookup(&p, &u).await.expect("lookup"), None);
    assert_eq!(certificates_at(&slapd, &employment_dn).await, None, "gone");
    assert_eq!(
        certificates_at(&slapd, &person_dn).await,
        Some(person_certs.clone())
    );

    // Restoring puts the employment back with its certificate, byte-identical.
    kiv.restore("case:restore_kiv:1", &snapshot)
        .await
        .expect("restore");
    assert_eq!(
        certificates_at(&slapd, &employment_dn).await,
        Some(employment_certs)
    );
    assert_eq!(
        certificates_at(&slapd, &person_dn).await,
        Some(person_certs)
    );
    let back = kiv.lookup(&p, &u).await.expect("lookup").expect("restored");
    assert_eq!(
        kiv_card_certificates(&back, reported_at).len(),
        2,
        "the same certificates once more"
    );
    assert_eq!(back.person, snapshot.person);
}

/// The search base is a container, never the person entry: an employment directly under it
/// has no person entry, even when the base is an entry with an HSA-id.
#[tokio::test]
async fn the_search_base_is_never_the_person_entry() {
    let slapd = Slapd::start();
    let (p, u) = (person(), unit());
    let digits = p.expose_digits();
    let person_dn = format!("cn=P{},ou=Personal,o=VGR", &digits[..8]);
    let mut ldap = slapd.admin().await;
    ldap.add(
        &person_dn,
        vec![
            ("objectClass", HashSet::from(["vgrPerson"])),
            ("cn", HashSet::from([&person_dn[3..12]])),
            ("hsaIdentity", HashSet::from([HOLDER])),
        ],
    )
    .await
    .expect("add")
    .success()
    .expect("the person");
    ldap.add(
        &format!("cn={},{person_dn}", u.as_str()),
        vec![
            ("objectClass", HashSet::from(["vgrAnstallning"])),
            ("cn", HashSet::from([u.as_str()])),
            ("hsaPersonIdentityNumber", HashSet::from([digits.as_str()])),
            ("vgrOrgRel", HashSet::from([u.as_str()])),
        ],
    )
    .await
    .expect("add")
    .success()
    .expect("the employment");
    let below = ldap_kiv(&slapd, Removal::Delete);
    let found = below
        .lookup(&p, &u)
        .await
        .expect("lookup")
        .expect("employed");
    assert!(
        found.person.is_some(),
        "below ou=Personal the parent is the person"
    );

    let mut settings = ldap_settings(&slapd, Removal::Delete);
    settings.base_dn = person_dn.clone();
    let at_the_person = LdapKiv::new(settings).expect("settings");
    let found = at_the_person
        .lookup(&p, &u)
        .await
        .expect("lookup")
        .expect("employed");
    assert_eq!(found.person, None);
}

/// The simulation with card certificates keeps the KIV contract, and its snapshots carry the
/// person entry whose certificate the rule picks.
#[tokio::test]
async fn kiv_contract_on_the_simulation_with_card_certificates() {
    let kiv = SimulatedKiv::new(false, Faults::default(), None)
        .with_card_certificates()
        .expect("cards");
    crate::real::kiv_contract(&kiv, &kiv).await;
    let (p, u) = (person(), unit());
    let snapshot = kiv.lookup(&p, &u).await.expect("lookup").expect("employed");
    let picked = kiv_card_certificates(&snapshot, etjanstekort_gateway::clock::now());
    assert_eq!(picked, kiv.card_certificates_of(&p));
    assert_eq!(picked.len(), 1);
    let printed = format!("{kiv:?} {snapshot:?}");
    assert!(!printed.contains(&p.expose_digits()[..8]), "{printed}");
}
