//! One CRL: decoded (DER or PEM), its signature verified against a trusted CA, its serials and
//! `thisUpdate`/`nextUpdate` kept.
//!
//! Entries are told apart by their reason code: `certificateHold` (6) is a suspension that may
//! be lifted (`is_on_hold`), `removeFromCRL` (8) belongs in delta CRLs only and revokes nothing,
//! every other entry (or one without a reason code) is a revocation (`is_revoked`). Delta CRLs
//! (`deltaCRLIndicator`) are refused: they are never a full list.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::oid_registry::OID_X509_EXT_DELTA_CRL_INDICATOR;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::x509::ReasonCode;

use super::CrlError;

/// A CA whose CRLs are believed: its subject (raw DER) and public key.
#[derive(Clone, Debug)]
pub(super) struct TrustedIssuer {
    pub(super) subject: Vec<u8>,
    pub(super) name: String,
    pub(super) spki: Vec<u8>,
    pub(super) may_sign_crls: bool,
}

pub(super) fn trusted_issuers(cas: &[CertificateDer<'_>]) -> Vec<TrustedIssuer> {
    cas.iter()
        .filter_map(|der| {
            let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
            let may_sign_crls = match cert.key_usage() {
                Ok(Some(ku)) => ku.value.crl_sign(),
                Ok(None) => true,
                Err(_) => false,
            };
            Some(TrustedIssuer {
                subject: cert.subject().as_raw().to_vec(),
                name: cert.subject().to_string(),
                spki: cert.public_key().raw.to_vec(),
                may_sign_crls,
            })
        })
        .collect()
}

/// One verified CRL.
#[derive(Debug)]
pub struct Crl {
    pub(super) der: CertificateRevocationListDer<'static>,
    pub(super) issuer: Vec<u8>,
    pub(super) issuer_name: String,
    pub(super) this_update: SystemTime,
    pub(super) next_update: SystemTime,
    /// Serials revoked for good (any reason but `certificateHold` and `removeFromCRL`).
    pub(super) revoked: HashSet<Vec<u8>>,
    /// Serials only on hold (`certificateHold`): suspended, and may be released later.
    pub(super) held: HashSet<Vec<u8>>,
    pub(super) source: String,
}

impl Crl {
    pub fn der(&self) -> &CertificateRevocationListDer<'static> {
        &self.der
    }

    /// The issuer's distinguished name, as text (a CA's name, never a person's).
    pub fn issuer_name(&self) -> &str {
        &self.issuer_name
    }

    pub fn this_update(&self) -> SystemTime {
        self.this_update
    }

    pub fn next_update(&self) -> SystemTime {
        self.next_update
    }

    /// The file or URL it came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the certificate with this serial number (DER integer content bytes, as in the
    /// certificate) is revoked on the list: listed with any reason but `certificateHold` (see
    /// `is_on_hold`) and `removeFromCRL` (which revokes nothing).
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked.contains(strip_sign_byte(serial))
    }

    /// Whether the certificate with this serial number is on the list only on hold
    /// (`certificateHold`): suspended, not revoked — the CA may release it later.
    pub fn is_on_hold(&self, serial: &[u8]) -> bool {
        let serial = strip_sign_byte(serial);
        self.held.contains(serial) && !self.revoked.contains(serial)
    }

    /// Past `nextUpdate + grace` at `now`.
    pub fn is_stale(&self, now: SystemTime, grace: Duration) -> bool {
        // A grace beyond the representable end of time is no limit.
        self.next_update
            .checked_add(grace)
            .is_some_and(|end| now > end)
    }
}

fn strip_sign_byte(serial: &[u8]) -> &[u8] {
    match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        s => s,
    }
}

fn to_system_time(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    }
}

/// Every CRL in `bytes` (one DER CRL, or PEM with one or more `X509 CRL` blocks).
pub(super) fn decode(bytes: &[u8]) -> Result<Vec<Vec<u8>>, CrlError> {
    if bytes.first() == Some(&0x30) {
        return Ok(vec![bytes.to_vec()]);
    }
    let ders = CertificateRevocationListDer::pem_slice_iter(bytes)
        .map(|r| r.map(|d| d.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CrlError::Parse(e.to_string()))?;
    if ders.is_empty() {
        return Err(CrlError::Parse("no X509 CRL block".into()));
    }
    Ok(ders)
}

/// Parses and verifies one DER CRL against the trusted issuers.
pub(super) fn verify(der: Vec<u8>, trust: &[TrustedIssuer], source: &str) -> Result<Crl, CrlError> {
    let (_, crl) =
        CertificateRevocationList::from_der(&der).map_err(|e| CrlError::Parse(e.to_string()))?;
    let issuer = crl.issuer().as_raw().to_vec();
    let issuer_name = crl.issuer().to_string();
    let candidates: Vec<&TrustedIssuer> = trust.iter().filter(|t| t.subject == issuer).collect();
    if candidates.is_empty() {
        return Err(CrlError::UnknownIssuer(issuer_name));
    }
    // Several CA certificates may share a name (a re-keyed CA): one of them must have signed.
    let mut last = CrlError::BadSignature(issuer_name.clone());
    let mut signed = false;
    for ca in candidates {
        let Ok((_, spki)) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&ca.spki) else {
            continue;
        };
        if crl.verify_signature(&spki).is_ok() {
            if ca.may_sign_crls {
                signed = true;
                break;
            }
            last = CrlError::NotCrlSigner(ca.name.clone());
        }
    }
    if !signed {
        return Err(last);
    }
    if crl
        .extensions()
        .iter()
        .any(|e| e.oid == OID_X509_EXT_DELTA_CRL_INDICATOR)
    {
        return Err(CrlError::Delta(issuer_name));
    }
    let next_update = crl.next_update().ok_or(CrlError::NoNextUpdate)?;
    let mut revoked = HashSet::new();
    let mut held = HashSet::new();
    for entry in crl.iter_revoked_certificates() {
        let serial = strip_sign_byte(entry.raw_serial()).to_vec();
        // An entry without a reason code (or with one that does not parse) is a revocation.
        match entry.reason_code().map(|(_, code)| code) {
            Some(ReasonCode::CertificateHold) => {
                held.insert(serial);
            }
            Some(ReasonCode::RemoveFromCRL) => {}
            _ => {
                revoked.insert(serial);
            }
        }
    }
    Ok(Crl {
        this_update: to_system_time(crl.last_update().timestamp()),
        next_update: to_system_time(next_update.timestamp()),
        issuer,
        issuer_name,
        revoked,
        held,
        source: source.to_owned(),
        der: CertificateRevocationListDer::from(der),
    })
}
