//! Card certificates read from DER (a confirmation's `certificate_der`, KIV's
//! `userCertificate;binary`): what the revocation check needs, and the facts the KIV matching
//! rule reads. Nothing of the holder (name, HSA-id) leaves this module except through
//! `CardFacts::holder`, which the matching compares and never prints.

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::domain::{
    CardCertificate, CertificateSource, Employment, HsaId, Timestamp, attribute_bytes, same_issuer,
};

/// A DER certificate, read: the part to check on the CA's list, and the holder facts.
#[derive(Clone)]
pub struct CardFacts {
    pub certificate: CardCertificate,
    /// The HSA-id in the subject's `serialNumber`, if there is exactly one valid one.
    pub holder: Option<HsaId>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl std::fmt::Debug for CardFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardFacts")
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

/// Reads a DER certificate. The error says what is wrong with it, never what it contains.
pub fn read(der: &[u8], source: CertificateSource) -> Result<CardFacts, String> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|_| "not a DER X.509 certificate".to_owned())?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".into());
    }
    let serial = CardCertificate::serial_from_octets(cert.raw_serial())
        .map_err(|e| format!("serial number: {e}"))?;
    let issuer = cert.issuer().to_string();
    let mut certificate =
        CardCertificate::new(&serial, &issuer, source).map_err(|e| format!("issuer: {e}"))?;
    certificate.crl_urls = crate::crl::distribution_points(der);
    let micros =
        |t: x509_parser::time::ASN1Time| Timestamp(t.timestamp().saturating_mul(1_000_000));
    Ok(CardFacts {
        certificate,
        holder: crate::auth::hsa_id_from_certificate(der),
        not_before: micros(cert.validity().not_before),
        not_after: micros(cert.validity().not_after),
    })
}

/// The card's certificates as KIV holds them: those in a KIV snapshot that were issued to the
/// card's holder and in force when the cut card was reported.
///
/// The rule: the holder is the person entry's `hsaIdentity` (the employment entry's own when
/// the snapshot has no person entry), and there must be exactly one (compared without regard
/// to case); without it nothing is taken. Of the `userCertificate;binary` (or plain
/// `userCertificate`) values on the person entry and on the employment entry, a certificate
/// counts when it parses as DER X.509, its subject `serialNumber` is that HSA-id (exactly one
/// such attribute, a valid HSA-id, compared without regard to case), and it was valid at the
/// report: `notBefore <= reported_at <= notAfter`. A certificate found twice (same serial
/// number, same issuer) counts once. Which issuers are trusted is for the revocation check:
/// this rule neither trusts nor verifies a certificate, it only picks them.
pub fn kiv_card_certificates(
    snapshot: &Employment,
    reported_at: Timestamp,
) -> Vec<CardCertificate> {
    let Some(holder) = holder_of(snapshot) else {
        return Vec::new();
    };
    let person = snapshot.person.as_ref().map(|p| &p.attributes);
    let mut found: Vec<CardCertificate> = Vec::new();
    for der in person
        .into_iter()
        .chain([&snapshot.attributes])
        .flat_map(|a| attribute_bytes(a, "userCertificate", &["binary"]))
    {
        let Ok(facts) = read(&der, CertificateSource::Kiv) else {
            continue;
        };
        let issued_to_holder = facts
            .holder
            .as_ref()
            .is_some_and(|h| h.as_str().eq_ignore_ascii_case(holder.as_str()));
        let in_force = facts.not_before <= reported_at && reported_at <= facts.not_after;
        let seen = found.iter().any(|c| {
            c.serial == facts.certificate.serial
                && same_issuer(&c.issuer, &facts.certificate.issuer)
        });
        if issued_to_holder && in_force && !seen {
            found.push(facts.certificate);
        }
    }
    found
}

/// The one `hsaIdentity` of the snapshot's person entry, else of the employment entry.
pub fn holder_of(snapshot: &Employment) -> Option<HsaId> {
    let from = |attributes| {
        let mut ids: Vec<String> = attribute_bytes(attributes, "hsaIdentity", &[])
            .into_iter()
            .filter_map(|v| String::from_utf8(v).ok())
            .map(|v| v.trim().to_ascii_uppercase())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let ids = match snapshot.person.as_ref().map(|p| from(&p.attributes)) {
        Some(ids) if !ids.is_empty() => ids,
        _ => from(&snapshot.attributes),
    };
    match ids.as_slice() {
        [one] => HsaId::parse(one).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use base64::Engine;
    use rcgen::{CertificateParams, DnType, DnValue, IsCa, Issuer, KeyPair};
    use time::macros::datetime;

    use super::*;
    use crate::domain::{BASE64_SUFFIX, PersonEntry};

    const HOLDER: &str = "SE1655999991-P000000000042";
    const OTHER: &str = "SE1655999991-P000000000043";

    struct Ca(Issuer<'static, KeyPair>);

    impl Ca {
        fn new(name: &str) -> Self {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().expect("key");
            Self(Issuer::new(p, key))
        }

        /// A certificate for `hsa_id`, valid in the given years (1 January to 1 January).
        fn card(&self, hsa_id: &str, from: i32, until: i32) -> Vec<u8> {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name
                .push(DnType::CommonName, "Tolvan Tolvansson");
            p.distinguished_name.push(
                DnType::CustomDnType(vec![2, 5, 4, 5]),
                DnValue::PrintableString(hsa_id.try_into().expect("printable")),
            );
            let year = |y| {
                datetime!(2000-01-01 00:00 UTC)
                    .replace_year(y)
                    .expect("year")
            };
            (p.not_before, p.not_after) = (year(from), year(until));
            let key = KeyPair::generate().expect("key");
            p.signed_by(&key, &self.0).expect("sign").der().to_vec()
        }
    }

    fn b64(der: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(der)
    }

    /// An employment under a person entry with `hsaIdentity` = `holder` and these certificates.
    fn snapshot(holder: Option<&str>, certs: &[&[u8]]) -> Employment {
        let mut person = BTreeMap::new();
        if let Some(h) = holder {
            person.insert("hsaIdentity".to_owned(), vec![h.to_owned()]);
        }
        person.insert(
            format!("userCertificate;binary{BASE64_SUFFIX}"),
            certs.iter().map(|c| b64(c)).collect(),
        );
        Employment {
            dn: "cn=unit,cn=19121212,ou=Personal,o=VGR".into(),
            attributes: BTreeMap::from([("vgrOrgRel".into(), vec!["SE1655999991-S1".into()])]),
            person: Some(PersonEntry {
                dn: "cn=19121212,ou=Personal,o=VGR".into(),
                attributes: person,
            }),
        }
    }

    fn at(year: i32) -> Timestamp {
        Timestamp(
            datetime!(2000-06-01 00:00 UTC)
                .replace_year(year)
                .expect("year")
                .unix_timestamp()
                * 1_000_000,
        )
    }

    fn serial_of(der: &[u8]) -> String {
        read(der, CertificateSource::Kiv)
            .expect("reads")
            .certificate
            .serial
    }

    #[test]
    fn the_holders_certificate_in_force_at_the_report_is_the_cards() {
        let ca = Ca::new("Test SITHS e-id Person CA");
        let card = ca.card(HOLDER, 2024, 2029);
        let found = kiv_card_certificates(&snapshot(Some(HOLDER), &[&card]), at(2026));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].serial, serial_of(&card));
        assert_eq!(found[0].issuer, "CN=Test SITHS e-id Person CA");
        assert_eq!(found[0].source, CertificateSource::Kiv);
        // The HSA-id compares without regard to case, as KIV compares it.
        let lower = HOLDER.to_ascii_lowercase().replace("se", "SE");
        assert_eq!(
            kiv_card_certificates(&snapshot(Some(&lower), &[&card]), at(2026)).len(),
            1
        );
    }

    #[test]
    fn another_holders_expired_not_yet_valid_and_garbage_are_left_out() {
        let ca = Ca::new("Test SITHS e-id Person CA");
        let other = ca.card(OTHER, 2024, 2029);
        let expired = ca.card(HOLDER, 2019, 2024);
        let future = ca.card(HOLDER, 2027, 2032);
        let no_serial_number = {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name.push(DnType::CommonName, HOLDER);
            let key = KeyPair::generate().expect("key");
            p.signed_by(&key, &ca.0).expect("sign").der().to_vec()
        };
        let garbage = b"not a certificate".to_vec();
        let card = ca.card(HOLDER, 2024, 2029);
        let mut truncated = card.clone();
        truncated.truncate(card.len() / 2);
        let all: [&[u8]; 6] = [
            &other,
            &expired,
            &future,
            &no_serial_number,
            &garbage,
            &truncated,
        ];
        assert_eq!(
            kiv_card_certificates(&snapshot(Some(HOLDER), &all), at(2026)),
            vec![]
        );
        let mut with_card = all.to_vec();
        with_card.push(&card);
        let found = kiv_card_certificates(&snapshot(Some(HOLDER), &with_card), at(2026));
        assert_eq!(
            found.iter().map(|c| c.serial.clone()).collect::<Vec<_>>(),
            [serial_of(&card)]
        );
        // The bounds are inclusive: valid from 1 January 2027 means valid at that instant.
        let start = Timestamp(datetime!(2027-01-01 00:00 UTC).unix_timestamp() * 1_000_000);
        assert_eq!(
            kiv_card_certificates(&snapshot(Some(HOLDER), &[&future]), start).len(),
            1
        );
        assert_eq!(
            kiv_card_certificates(&snapshot(Some(HOLDER), &[&future]), Timestamp(start.0 - 1))
                .len(),
            0
        );
    }

    #[test]
    fn two_certificates_count_and_a_certificate_found_twice_counts_once() {
        let ca = Ca::new("Test SITHS e-id Person CA");
        let auth = ca.card(HOLDER, 2024, 2029);
        let sign = ca.card(HOLDER, 2024, 2029);
        let mut s = snapshot(Some(HOLDER), &[&auth, &sign]);
        // The same certificate on the employment entry too, as an attribute without `;binary`.
        s.attributes
            .insert(format!("usercertificate{BASE64_SUFFIX}"), vec![b64(&auth)]);
        let mut found: Vec<String> = kiv_card_certificates(&s, at(2026))
            .into_iter()
            .map(|c| c.serial)
            .collect();
        found.sort();
        let mut want = vec![serial_of(&auth), serial_of(&sign)];
        want.sort();
        assert_eq!(found, want);
    }

    #[test]
    fn without_exactly_one_holder_hsa_id_nothing_is_taken() {
        let ca = Ca::new("Test SITHS e-id Person CA");
        let card = ca.card(HOLDER, 2024, 2029);
        assert_eq!(
            kiv_card_certificates(&snapshot(None, &[&card]), at(2026)),
            vec![]
        );
        let mut two = snapshot(Some(HOLDER), &[&card]);
        if let Some(p) = two.person.as_mut() {
            p.attributes
                .insert("hsaIdentity".into(), vec![HOLDER.into(), OTHER.into()]);
        }
        assert_eq!(kiv_card_certificates(&two, at(2026)), vec![]);
        let mut not_an_id = snapshot(Some("P000000000042"), &[&card]);
        assert_eq!(kiv_card_certificates(&not_an_id, at(2026)), vec![]);
        // The employment entry's own hsaIdentity stands in when the person entry has none.
        not_an_id.person = None;
        not_an_id
            .attributes
            .insert("hsaIdentity".into(), vec![HOLDER.into()]);
        not_an_id.attributes.insert(
            format!("userCertificate;binary{BASE64_SUFFIX}"),
            vec![b64(&card)],
        );
        assert_eq!(kiv_card_certificates(&not_an_id, at(2026)).len(), 1);
        // A snapshot from before person entries were read has nothing to offer.
        let old = Employment {
            person: None,
            ..snapshot(Some(HOLDER), &[&card])
        };
        assert_eq!(kiv_card_certificates(&old, at(2026)), vec![]);
    }
}
