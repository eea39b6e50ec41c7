//! The revocation check's step (issue #14): which certificates of the card are looked up,
//! on the `RevocationStatus` port, and the one verdict the saga gets from their statuses.

use crate::connectors::{CertificateStatus, ConnectorError, Connectors};
use crate::domain::saga::{Event, SnapshotState};
use crate::domain::{CardCertificate, Deregistration, Employment, Timestamp};
use crate::metrics::Metrics;
use crate::storage::{StoreError, WorkResult};

/// The audit detail of a confirmation: its reference and the certificates it names.
pub fn confirmation_detail(reference: &str, certificates: &[CardCertificate]) -> String {
    let mut detail = format!("revocation reference {reference}");
    if !certificates.is_empty() {
        let named: Vec<String> = certificates.iter().map(ToString::to_string).collect();
        detail.push_str("; certificates: ");
        detail.push_str(&named.join(", "));
    }
    detail
}

/// The certificates to look up: those the confirmation named or, when it named none, those
/// KIV's snapshot holds for the card (`card_certs::kiv_card_certificates`).
fn certificates_to_check(
    case: &Deregistration,
    snapshot: Option<&Employment>,
) -> Vec<CardCertificate> {
    if !case.revoked_certificates.is_empty() {
        return case.revoked_certificates.clone();
    }
    snapshot
        .map(|s| crate::connectors::card_certs::kiv_card_certificates(s, case.created_at))
        .unwrap_or_default()
}

/// The revocation check: every certificate looked up on its CA's current list, then one
/// verdict (`verdict`). A list that cannot be had or trusted now is a retryable failure.
pub(super) async fn verify(
    c: &Connectors,
    metrics: &Metrics,
    case: &Deregistration,
    snapshot: Result<Option<Employment>, StoreError>,
) -> Result<WorkResult, ConnectorError> {
    let Some(checker) = &c.revocation else {
        // Retryable: during a rolling change another replica may have the check on; if none
        // does, the attempts run out and the case needs attention with this reason.
        return Err(ConnectorError::Retryable(
            "the case was created with the revocation check on, but this gateway has it off ([revocation_check]): switch it on, or resolve the case by hand".into(),
        ));
    };
    let snapshot = snapshot.map_err(|e| ConnectorError::Retryable(e.to_string()))?;
    if case.revoked_certificates.is_empty() && case.snapshot == SnapshotState::Pending {
        // The look-up at acceptance runs beside the report and may still be under way (or
        // retrying): its certificates are the ones to check.
        return Err(ConnectorError::Retryable(
            "the confirmation named no certificate and KIV's snapshot is not taken yet".into(),
        ));
    }
    let certificates = certificates_to_check(case, snapshot.as_ref());
    let now = crate::clock::now();
    let mut looked_up = Vec::with_capacity(certificates.len());
    for certificate in certificates {
        let status = checker.status(&certificate, now).await?;
        looked_up.push((certificate, status));
    }
    let confirmed_at = case.revocation_confirmed_at.unwrap_or(now);
    let (event, detail) = verdict(&looked_up, confirmed_at, now);
    if let Event::RevocationVerified { at, valid_until } = event
        && at > valid_until
    {
        // The port answers only from current lists; the saga would not believe this one.
        return Err(ConnectorError::Retryable(
            "a revocation list used is past its nextUpdate".into(),
        ));
    }
    metrics.revocation_check(match event {
        Event::RevocationVerified { .. } => "verified",
        Event::RevocationNotYetListed { .. } => "not_yet_listed",
        Event::RevocationDiscrepancy => "discrepancy",
        _ => "unverifiable",
    });
    if matches!(event, Event::RevocationDiscrepancy) {
        tracing::warn!(case_id = %case.id, %detail, "revocation check: a CA's list shows a confirmed revocation as not done");
    }
    Ok(WorkResult::Done {
        event: Some(event),
        snapshot: None,
        detail,
    })
}

/// A re-check never comes sooner than this after the last (a list whose `nextUpdate` has just
/// passed is fetched again, not hammered).
const MIN_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// The verdict on the looked-up certificates, with its audit detail (serials, issuers, list
/// times). A certificate not on a list issued after the confirmation (`confirmed_at`) is a
/// discrepancy: that list should show it. Not on a list issued before: not yet published, look
/// again at its `nextUpdate`. All revoked: verified, on lists holding until the earliest
/// `nextUpdate`. None known: unverifiable.
pub(crate) fn verdict(
    looked_up: &[(CardCertificate, CertificateStatus)],
    confirmed_at: Timestamp,
    now: Timestamp,
) -> (Event, String) {
    if looked_up.is_empty() {
        return (
            Event::RevocationUnverifiable,
            "no certificate of the card is known: the confirmation named none and KIV's snapshot holds none".into(),
        );
    }
    let at = |t: Timestamp| t.unix_seconds();
    let mut discrepant = Vec::new();
    let mut unlisted = Vec::new();
    let mut revoked = Vec::new();
    for (cert, status) in looked_up {
        let list = status.list();
        let line = format!(
            "{cert}: list of {} issued {} (unix time), next {}",
            list.issuer,
            at(list.this_update),
            at(list.next_update)
        );
        match status {
            CertificateStatus::Revoked { .. } => revoked.push(line),
            CertificateStatus::NotListed { list } if list.this_update > confirmed_at => {
                discrepant.push(line)
            }
            CertificateStatus::NotListed { .. } => unlisted.push((line, list.next_update)),
        }
    }
    if !discrepant.is_empty() {
        return (
            Event::RevocationDiscrepancy,
            format!(
                "not revoked on a list issued after the confirmation: {}",
                discrepant.join("; ")
            ),
        );
    }
    if !unlisted.is_empty() {
        let next = unlisted.iter().map(|(_, t)| *t).min().unwrap_or(now);
        let floor = Timestamp(now.0.saturating_add(MIN_RECHECK.as_micros() as i64));
        let recheck_at = next.max(floor);
        let lines: Vec<&str> = unlisted.iter().map(|(l, _)| l.as_str()).collect();
        return (
            Event::RevocationNotYetListed { recheck_at },
            format!(
                "not yet on the lists (issued before the confirmation): {}; checked again at {} (unix time)",
                lines.join("; "),
                at(recheck_at)
            ),
        );
    }
    let valid_until = looked_up
        .iter()
        .map(|(_, s)| s.list().next_update)
        .min()
        .unwrap_or(now);
    (
        Event::RevocationVerified {
            at: now,
            valid_until,
        },
        format!("revoked on the CA's lists: {}", revoked.join("; ")),
    )
}

#[cfg(test)]
mod verdict_tests {
    use super::*;
    use crate::connectors::RevocationList;
    use crate::domain::CertificateSource;

    const CONFIRMED: Timestamp = Timestamp(1_000_000_000_000);
    const NOW: Timestamp = Timestamp(1_000_100_000_000);

    fn cert(serial: &str) -> CardCertificate {
        CardCertificate::new(serial, "CN=CA, C=SE", CertificateSource::Confirmation).unwrap()
    }

    fn list(issued: Timestamp, next: Timestamp) -> RevocationList {
        RevocationList {
            issuer: "CN=CA, C=SE".into(),
            this_update: issued,
            next_update: next,
            source: "http://crl.test/ca.crl".into(),
        }
    }

    fn revoked(next: i64) -> CertificateStatus {
        CertificateStatus::Revoked {
            list: list(Timestamp(NOW.0 - 1), Timestamp(next)),
        }
    }

    fn not_listed(issued: i64, next: i64) -> CertificateStatus {
        CertificateStatus::NotListed {
            list: list(Timestamp(issued), Timestamp(next)),
        }
    }

    #[test]
    fn all_revoked_is_verified_until_the_earliest_next_update() {
        let (e, detail) = verdict(
            &[
                (cert("a"), revoked(NOW.0 + 50)),
                (cert("b"), revoked(NOW.0 + 20)),
            ],
            CONFIRMED,
            NOW,
        );
        assert_eq!(
            e,
            Event::RevocationVerified {
                at: NOW,
                valid_until: Timestamp(NOW.0 + 20)
            }
        );
        assert!(
            detail.contains("serial a") && detail.contains("serial b"),
            "{detail}"
        );
    }

    #[test]
    fn not_on_a_list_from_before_the_confirmation_waits_for_the_next() {
        let next = NOW.0 + 3_600_000_000;
        let (e, _) = verdict(
            &[
                (cert("a"), revoked(next)),
                (cert("b"), not_listed(CONFIRMED.0 - 1, next)),
            ],
            CONFIRMED,
            NOW,
        );
        assert_eq!(
            e,
            Event::RevocationNotYetListed {
                recheck_at: Timestamp(next)
            }
        );
        // A nextUpdate that has just passed is not looked at again in a tight loop.
        let (e, _) = verdict(
            &[(cert("b"), not_listed(CONFIRMED.0, NOW.0))],
            CONFIRMED,
            NOW,
        );
        assert_eq!(
            e,
            Event::RevocationNotYetListed {
                recheck_at: Timestamp(NOW.0 + MIN_RECHECK.as_micros() as i64)
            }
        );
    }

    #[test]
    fn not_on_a_list_from_after_the_confirmation_is_a_discrepancy() {
        let (e, detail) = verdict(
            &[
                (cert("a"), not_listed(CONFIRMED.0 - 1, NOW.0 + 9)),
                (cert("b"), not_listed(CONFIRMED.0 + 1, NOW.0 + 9)),
                (cert("c"), revoked(NOW.0 + 9)),
            ],
            CONFIRMED,
            NOW,
        );
        assert_eq!(e, Event::RevocationDiscrepancy);
        assert!(
            detail.contains("serial b") && !detail.contains("serial c"),
            "{detail}"
        );
    }

    #[test]
    fn nothing_to_check_is_unverifiable() {
        assert_eq!(
            verdict(&[], CONFIRMED, NOW).0,
            Event::RevocationUnverifiable
        );
    }
}
