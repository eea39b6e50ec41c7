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
fn holder_of(snapshot: &Employment) -> Option<HsaId> {
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
