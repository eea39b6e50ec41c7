//! The simulated revocation list (dev mode and core tests): it follows the simulated desk. A
//! certificate the gateway asks about is published as revoked `publish_after` after it was
//! first asked about (a CA publishes its list every few hours); until then the list in force
//! was issued before the confirmation and does not show it yet. Serials named in
//! `never_revoked` stay valid on every list (a discrepancy, to try the operator's side).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::{CertificateStatus, ConnectorError, RevocationList, RevocationStatus};
use crate::domain::{CardCertificate, CertificateSource, Timestamp};

/// The simulated desk's card certificates are issued by this (made-up) CA.
pub const SIMULATED_ISSUER: &str =
    "CN=Simulated SITHS e-id Person CA, O=etjanstekort-gateway dev, C=SE";

/// How long one simulated list holds (its `nextUpdate` after its `thisUpdate`).
const LIST_VALIDITY: Duration = Duration::from_secs(3600);

/// `[revocation_check] kind = "simulated"`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedListSettings {
    /// How long after the first look-up a certificate shows as revoked (default: at once).
    #[serde(default, with = "humantime_serde")]
    pub publish_after: Duration,
    /// Serials (hex) that never show as revoked.
    #[serde(default)]
    pub never_revoked: Vec<String>,
}

#[derive(Debug)]
pub struct SimulatedList {
    publish_after: Duration,
    never_revoked: HashSet<String>,
    first_asked: Mutex<HashMap<String, Timestamp>>,
}

impl SimulatedList {
    pub fn new(settings: &SimulatedListSettings) -> Self {
        Self {
            publish_after: settings.publish_after,
            never_revoked: settings
                .never_revoked
                .iter()
                .filter_map(|s| CardCertificate::new(s, "CN=x", CertificateSource::Simulated).ok())
                .map(|c| c.serial)
                .collect(),
            first_asked: Mutex::new(HashMap::new()),
        }
    }
}

/// The card certificate the simulated desk names when it confirms `case_id`'s revocation.
pub fn simulated_certificate(case_id: &crate::domain::CaseId) -> CardCertificate {
    let digits: String = case_id
        .to_string()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(32)
        .collect();
    CardCertificate::new(
        &format!("1{digits}"),
        SIMULATED_ISSUER,
        CertificateSource::Simulated,
    )
    .unwrap_or_else(|_| CardCertificate {
        serial: "1".into(),
        issuer: SIMULATED_ISSUER.into(),
        crl_urls: Vec::new(),
        source: CertificateSource::Simulated,
    })
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[async_trait]
impl RevocationStatus for SimulatedList {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn status(
        &self,
        certificate: &CardCertificate,
        now: Timestamp,
    ) -> Result<CertificateStatus, ConnectorError> {
        let list = |this_update: i64| RevocationList {
            issuer: certificate.issuer.clone(),
            this_update: Timestamp(this_update),
            next_update: Timestamp(this_update.saturating_add(micros(LIST_VALIDITY))),
            source: "simulated".into(),
        };
        if self.never_revoked.contains(&certificate.serial) {
            return Ok(CertificateStatus::NotListed { list: list(now.0) });
        }
        let first = *self
            .first_asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(certificate.serial.clone())
            .or_insert(now);
        let published = first.0.saturating_add(micros(self.publish_after));
        if now.0 >= published {
            return Ok(CertificateStatus::Revoked {
                list: list(published),
            });
        }
        // The list in force was issued before the confirmation; the next one is due when the
        // revocation is published.
        Ok(CertificateStatus::NotListed {
            list: RevocationList {
                next_update: Timestamp(published),
                ..list(first.0.saturating_sub(micros(LIST_VALIDITY)))
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(serial: &str) -> CardCertificate {
        CardCertificate::new(serial, SIMULATED_ISSUER, CertificateSource::Simulated).unwrap()
    }

    #[tokio::test]
    async fn a_certificate_is_published_after_the_delay() {
        let list = SimulatedList::new(&SimulatedListSettings {
            publish_after: Duration::from_secs(10),
            never_revoked: vec!["0DEAD".into()],
        });
        let t0 = Timestamp(1_000_000_000);
        let first = list.status(&cert("ab"), t0).await.unwrap();
        assert!(
            matches!(&first, CertificateStatus::NotListed { list } if list.this_update < t0 && list.next_update == Timestamp(t0.0 + 10_000_000))
        );
        let later = list
            .status(&cert("ab"), Timestamp(t0.0 + 10_000_000))
            .await
            .unwrap();
        assert!(matches!(later, CertificateStatus::Revoked { .. }));
        let never = list
            .status(&cert("dead"), Timestamp(t0.0 + 99_000_000))
            .await
            .unwrap();
        assert!(
            matches!(never, CertificateStatus::NotListed { list } if list.this_update == Timestamp(t0.0 + 99_000_000))
        );
    }
}
