//! The simulated issuing CA of dev mode's card certificates: a small rcgen CA that issues each
//! simulated person one card certificate (subject `serialNumber` = the person's HSA-id), which
//! the simulated KIV puts on the person entry as `userCertificate;binary`, and signs revocation
//! lists for them — so a simulated list can follow the simulated desk.

use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::domain::HsaId;

/// The simulated CA's name (`C=SE, O=…, CN=…` in the certificate; compare with
/// [`crate::domain::same_issuer`]).
pub const SIMULATED_CARD_CA: &str =
    "CN=Simulated SITHS e-id Person CA, O=etjanstekort-gateway dev, C=SE";

/// A simulated issuing CA. Its key lives in memory only: a new one on every start.
pub struct SimulatedCardCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    cert_pem: String,
}

impl std::fmt::Debug for SimulatedCardCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedCardCa")
            .field("name", &SIMULATED_CARD_CA)
            .finish_non_exhaustive()
    }
}

/// Card certificates are valid from 2020 to 2049, so any report time a test or a dev session
/// picks (a fake clock included) falls inside.
fn validity() -> (time::OffsetDateTime, time::OffsetDateTime) {
    (
        time::macros::datetime!(2020-01-01 00:00 UTC),
        time::macros::datetime!(2049-12-31 23:59:59 UTC),
    )
}

impl SimulatedCardCa {
    pub fn generate() -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "SE");
        dn.push(DnType::OrganizationName, "etjanstekort-gateway dev");
        dn.push(DnType::CommonName, "Simulated SITHS e-id Person CA");
        params.distinguished_name = dn;
        (params.not_before, params.not_after) = validity();
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA's name, as [`SIMULATED_CARD_CA`].
    pub fn name(&self) -> &'static str {
        SIMULATED_CARD_CA
    }

    /// The CA certificate (DER), against which its lists verify.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A card certificate (DER) for `holder`: subject `serialNumber` = the HSA-id, client
    /// authentication, valid 2020–2049, a serial of its own.
    pub fn issue(&self, holder: &HsaId, common_name: &str) -> Result<Vec<u8>, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.distinguished_name.push(DnType::CountryName, "SE");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.distinguished_name.push(
            DnType::CustomDnType(vec![2, 5, 4, 5]),
            DnValue::PrintableString(holder.as_str().try_into()?),
        );
        (params.not_before, params.not_after) = validity();
        let key = KeyPair::generate()?;
        Ok(params.signed_by(&key, &self.issuer)?.der().to_vec())
    }

    /// A revocation list (DER) signed by this CA naming `revoked` (serials as
    /// [`crate::domain::CardCertificate::serial`]: hex), valid from `this_update` until
    /// `next_update`.
    pub fn crl(
        &self,
        revoked: &[String],
        crl_number: u64,
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<Vec<u8>, String> {
        let at = time::OffsetDateTime::from;
        let revoked_certs = revoked
            .iter()
            .map(|s| {
                // An odd number of digits gets its leading zero back.
                let octets = hex::decode(if s.len() % 2 == 1 {
                    format!("0{s}")
                } else {
                    s.clone()
                })
                .map_err(|_| "a serial number is not hexadecimal".to_owned())?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&octets),
                    revocation_time: at(this_update),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: at(this_update),
            next_update: at(next_update),
            crl_number: rcgen::SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .map(|crl| crl.der().to_vec())
            .map_err(|e| format!("signing the simulated list: {e}"))
    }
}
