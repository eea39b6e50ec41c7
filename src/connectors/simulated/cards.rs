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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::revocation_list::CertificateRevocationList;

    use super::*;
    use crate::connectors::Kiv;
    use crate::connectors::card_certs::kiv_card_certificates;
    use crate::connectors::simulated::{Faults, SimulatedKiv};
    use crate::domain::{Personnummer, Timestamp, same_issuer};

    fn person(p: &str) -> Personnummer {
        Personnummer::parse(p, time::macros::date!(2026 - 12 - 01)).expect("pnr")
    }

    fn unit() -> HsaId {
        HsaId::parse(&crate::devcerts::unit_a()).expect("unit")
    }

    #[tokio::test]
    async fn employed_people_get_a_card_certificate_from_the_simulated_ca_when_asked() {
        let kiv = SimulatedKiv::new(true, Faults::default(), None)
            .with_card_certificates()
            .expect("cards");
        let p = person("19121212-1212");
        assert_eq!(
            kiv.card_certificates_of(&p),
            vec![],
            "none before the first employment"
        );
        let snapshot = kiv
            .lookup(&p, &unit())
            .await
            .expect("lookup")
            .expect("employed");
        let person_entry = snapshot.person.as_ref().expect("a person entry");
        assert_eq!(person_entry.dn, "cn=19121212,ou=Personal,o=VGR");
        let hsa_id = kiv.hsa_id_of(&p).expect("an HSA-id");
        assert!(hsa_id.as_str().starts_with("SE1655999991-P"));

        let found = kiv_card_certificates(&snapshot, Timestamp(1_790_000_000 * 1_000_000));
        assert_eq!(
            found.len(),
            1,
            "the person's card certificate matches the rule"
        );
        assert!(
            same_issuer(&found[0].issuer, SIMULATED_CARD_CA),
            "{}",
            found[0].issuer
        );
        assert_eq!(kiv.card_certificates_of(&p), found);
        assert_eq!(kiv.card_certificates(), found);

        // The certificate is the CA's: it verifies against the CA certificate.
        let ca = kiv.card_ca().expect("the CA");
        let (_, ca_cert) = X509Certificate::from_der(ca.certificate_der()).expect("CA cert");
        assert!(same_issuer(&ca_cert.subject().to_string(), ca.name()));

        // A list the CA signs names the serial and verifies against the CA.
        let now = std::time::SystemTime::now();
        let der = ca
            .crl(
                &[found[0].serial.clone()],
                7,
                now,
                now + Duration::from_secs(3600),
            )
            .expect("crl");
        let (_, crl) = CertificateRevocationList::from_der(&der).expect("a CRL");
        crl.verify_signature(ca_cert.public_key())
            .expect("signed by the CA");
        let listed: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| {
                hex::encode(r.raw_serial())
                    .trim_start_matches('0')
                    .to_owned()
            })
            .collect();
        assert_eq!(listed, [found[0].serial.clone()]);
        assert!(ca.crl(&["xyz".into()], 8, now, now).is_err());
    }

    #[tokio::test]
    async fn a_second_person_gets_their_own_and_a_second_employment_the_same() {
        let kiv = SimulatedKiv::new(false, Faults::default(), None)
            .with_card_certificates()
            .expect("cards");
        let (p, q) = (person("19121212-1212"), person("19800101-2387"));
        let other_unit = HsaId::parse(&crate::devcerts::unit_b()).expect("unit");
        kiv.employ(&p, &unit());
        kiv.employ(&p, &other_unit);
        kiv.employ(&q, &unit());
        let a = kiv.lookup(&p, &unit()).await.expect("lookup").expect("a");
        let b = kiv
            .lookup(&p, &other_unit)
            .await
            .expect("lookup")
            .expect("b");
        assert_eq!(a.person, b.person, "one person entry for both employments");
        assert_ne!(kiv.hsa_id_of(&p), kiv.hsa_id_of(&q));
        assert_eq!(kiv.card_certificates().len(), 2);
        assert_ne!(kiv.card_certificates_of(&p), kiv.card_certificates_of(&q));
        // Removing the employment leaves the person; restoring brings the snapshot back.
        kiv.remove("k", &p, &unit()).await.expect("remove");
        assert_eq!(kiv.card_certificates_of(&p).len(), 1);
        kiv.restore("k:1", &a).await.expect("restore");
        assert_eq!(kiv.lookup(&p, &unit()).await.expect("lookup"), Some(a));
    }

    #[tokio::test]
    async fn without_asking_there_are_no_certificates() {
        let kiv = SimulatedKiv::new(true, Faults::default(), None);
        let p = person("19121212-1212");
        let e = kiv
            .lookup(&p, &unit())
            .await
            .expect("lookup")
            .expect("employed");
        assert_eq!(e.person, None);
        assert_eq!(e, SimulatedKiv::employment_for(&p, &unit()));
        assert!(kiv.card_ca().is_none() && kiv.card_certificates().is_empty());
        assert_eq!(kiv.hsa_id_of(&p), None);
    }
}
