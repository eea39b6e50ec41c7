//! The certificates on a cut card, as a CA's revocation list names them: serial number and
//! issuer. The gateway keeps only these (never the certificate with its holder's name and
//! HSA-id), so they may appear in the audit trail and in log lines.

use std::fmt;

/// Where the gateway learnt of a card certificate.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum CertificateSource {
    /// Named in TjänsteID-service's confirmation (`ConfirmRevocation`).
    Confirmation,
    /// Found on the holder's entry in the KIV snapshot (`userCertificate;binary`).
    Kiv,
    /// Made up by the simulated desk (dev mode).
    Simulated,
}

impl CertificateSource {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One certificate to look up on its issuer's revocation list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CardCertificate {
    /// The serial number's magnitude in lowercase hex, without leading zeros.
    pub serial: String,
    /// The issuer's distinguished name as text (a CA's name, never a person's).
    pub issuer: String,
    /// `http://` CRL distribution points the certificate names (none when only its serial and
    /// issuer were given).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl_urls: Vec<String>,
    pub source: CertificateSource,
}

/// Why a serial number or issuer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("the serial number must be 1 to 20 octets in hexadecimal digits")]
    Serial,
    #[error(
        "the issuer must be a distinguished name such as \"CN=…, O=…, C=SE\" (at most 1024 characters)"
    )]
    Issuer,
}

impl super::Rule for CertificateError {
    fn code(&self) -> &'static str {
        match self {
            Self::Serial => "CERTIFICATE_SERIAL_FORMAT",
            Self::Issuer => "CERTIFICATE_ISSUER_FORMAT",
        }
    }
}

/// Most RFC 5280 serials are at most 20 octets.
const MAX_SERIAL_OCTETS: usize = 20;
const MAX_ISSUER_CHARS: usize = 1024;

impl CardCertificate {
    /// A certificate named by serial (hex, `:` or spaces between octets allowed) and issuer.
    pub fn new(
        serial: &str,
        issuer: &str,
        source: CertificateSource,
    ) -> Result<Self, CertificateError> {
        Ok(Self {
            serial: normalize_serial(serial)?,
            issuer: normalize_issuer(issuer)?,
            crl_urls: Vec::new(),
            source,
        })
    }

    /// A certificate's serial as its raw big-endian octets (DER INTEGER content, sign octet
    /// included or not).
    pub fn serial_from_octets(octets: &[u8]) -> Result<String, CertificateError> {
        normalize_serial(&hex::encode(octets))
    }
}

/// Lowercase hex without separators or leading zeros.
fn normalize_serial(serial: &str) -> Result<String, CertificateError> {
    let digits: String = serial.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(CertificateError::Serial);
    }
    let trimmed = digits.trim_start_matches('0').to_ascii_lowercase();
    // A serial of zero is not a valid certificate serial (RFC 5280: positive).
    if trimmed.is_empty() || trimmed.len() > MAX_SERIAL_OCTETS * 2 {
        return Err(CertificateError::Serial);
    }
    Ok(trimmed)
}

/// Trimmed; `type=value` parts separated by `,` with no control characters.
fn normalize_issuer(issuer: &str) -> Result<String, CertificateError> {
    let issuer = issuer.trim();
    let ok = !issuer.is_empty()
        && issuer.chars().count() <= MAX_ISSUER_CHARS
        && !issuer.chars().any(char::is_control)
        && issuer.split(',').all(|part| {
            part.split_once('=')
                .is_some_and(|(t, _)| !t.trim().is_empty())
        });
    if ok {
        Ok(issuer.to_owned())
    } else {
        Err(CertificateError::Issuer)
    }
}

/// Whether two issuer names are the same name: compared part by part (`type=value`), types
/// without regard to case, values without regard to case or surrounding spaces, in either
/// order (RFC 4514 text lists the parts in reverse of the certificate's order).
pub fn same_issuer(a: &str, b: &str) -> bool {
    fn parts(name: &str) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = name
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(t, v)| (t.trim().to_ascii_uppercase(), v.trim().to_lowercase()))
            .collect();
        v.sort();
        v
    }
    let (pa, pb) = (parts(a), parts(b));
    !pa.is_empty() && pa == pb
}

impl fmt::Display for CardCertificate {
    /// `serial 1a2b (issuer CN=…; from confirmation)`: what the audit trail records.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "serial {} (issuer {}; from {})",
            self.serial,
            self.issuer,
            self.source.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_normalized_and_bounded() {
        let c = CardCertificate::new("00:1A:2b", "CN=CA", CertificateSource::Confirmation)
            .expect("serial");
        assert_eq!(c.serial, "1a2b");
        assert_eq!(
            CardCertificate::serial_from_octets(&[0, 0x80]).unwrap(),
            "80"
        );
        for bad in ["", "00", "xyz", "1g", &"ab".repeat(21)] {
            assert_eq!(
                CardCertificate::new(bad, "CN=CA", CertificateSource::Kiv),
                Err(CertificateError::Serial),
                "{bad:?}"
            );
        }
        assert!(CardCertificate::new(&"ab".repeat(20), "CN=CA", CertificateSource::Kiv).is_ok());
    }

    #[test]
    fn issuers_are_names() {
        for bad in [
            "",
            "  ",
            "no equals sign",
            "CN=a,\u{7}x=1",
            "=x",
            &format!("CN={}", "a".repeat(1100)),
        ] {
            assert_eq!(
                CardCertificate::new("1", bad, CertificateSource::Kiv),
                Err(CertificateError::Issuer),
                "{bad:?}"
            );
        }
        assert!(same_issuer(
            "C=SE, O=Inera AB, CN=SITHS e-id Person ID 3 CA v1",
            "cn=SITHS e-id Person ID 3 CA v1,o=Inera AB,c=SE"
        ));
        assert!(!same_issuer(
            "C=SE, O=Inera AB, CN=A",
            "C=SE, O=Inera AB, CN=B"
        ));
        assert!(!same_issuer("", ""));
    }
}
