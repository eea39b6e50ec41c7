//! Card certificates read from DER (a confirmation's `certificate_der`, KIV's
//! `userCertificate;binary`): what the revocation check needs, and the facts the KIV matching
//! rule reads. Nothing of the holder (name, HSA-id) leaves this module except through
//! `CardFacts::holder`, which the matching compares and never prints.

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::domain::{CardCertificate, CertificateSource, HsaId, Timestamp};

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
