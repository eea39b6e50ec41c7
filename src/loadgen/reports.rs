//! Unique, valid `CreateDeregistration` requests: a Luhn-valid personnummer, a card number and a
//! request id that no other request of this run (or, by the run prefix, of another run) uses.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::api::pb;
use crate::domain::Personnummer;

/// Makes the `n`-th report of a run; safe to share between tasks.
#[derive(Debug)]
pub struct ReportGen {
    /// Eight digits chosen per run: card numbers and request ids of two runs never meet.
    prefix: u64,
    unit: String,
    reporter_hsa_id: String,
    next: AtomicU64,
}

impl ReportGen {
    /// Reports for care unit `unit`, signed by a reporter of the test organisation.
    pub fn new(unit: &str) -> Self {
        let prefix = (uuid::Uuid::new_v4().as_u128() % 100_000_000) as u64;
        Self::with_prefix(unit, prefix)
    }

    pub fn with_prefix(unit: &str, prefix: u64) -> Self {
        Self {
            prefix: prefix % 100_000_000,
            unit: unit.to_owned(),
            reporter_hsa_id: format!("{}-P000000000099", crate::devcerts::TEST_ORG),
            next: AtomicU64::new(0),
        }
    }

    /// The next request of this run.
    pub fn next_request(&self) -> pb::CreateDeregistrationRequest {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.request(n)
    }

    /// The `n`-th request: the same `n` gives the same request.
    pub fn request(&self, n: u64) -> pb::CreateDeregistrationRequest {
        let received = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1_790_000_000, |d| d.as_secs() as i64)
            - 3600;
        pb::CreateDeregistrationRequest {
            request_id: format!("loadgen-{}-{}", letters(self.prefix), letters(n)),
            deregistration: Some(pb::Deregistration {
                care_unit_hsa_id: self.unit.clone(),
                card_holder: Some(pb::CardHolder {
                    personal_identity_number: personnummer(n),
                    full_name: "Last Testperson".into(),
                    email: "holder@example.se".into(),
                }),
                card_number: card_number(self.prefix, n),
                reason: pb::Reason::EmploymentEnded as i32,
                card_received_time: Some(prost_types::Timestamp {
                    seconds: received,
                    nanos: 0,
                }),
                card_cut_across_chip: true,
                reported_by: Some(pb::Reporter {
                    hsa_id: self.reporter_hsa_id.clone(),
                    full_name: "Vera Verksamhetschef".into(),
                    email: "vera@example.se".into(),
                }),
                kiv_removal_route: pb::KivRemovalRoute::CareProvider as i32,
                ..Default::default()
            }),
        }
    }
}

/// A valid personnummer (`YYYYMMDD-NNNC`, born 1940–1999) that varies with `n`.
pub fn personnummer(n: u64) -> String {
    let year = 1940 + (n % 60) as i32;
    let month = 1 + ((n / 60) % 12) as u8;
    let day = 1 + ((n / 720) % 28) as u8;
    let birth = 1 + ((n / 20_160) % 999) as u16;
    let digits = Personnummer::synthetic(year, month, day, birth)
        .expect("a date that exists and a birth number from 1 to 999")
        .expose_digits();
    format!("{}-{}", &digits[..8], &digits[8..])
}

/// `n` with its decimal digits written as the letters a–j: the gateway refuses a request id
/// in which any run of digits could be a personal identity number.
fn letters(n: u64) -> String {
    n.to_string()
        .bytes()
        .map(|b| char::from(b - b'0' + b'a'))
        .collect()
}

/// A 20-digit card number: the run prefix, then `n` (never a personal identity number, which
/// has 10 or 12 digits).
pub fn card_number(prefix: u64, n: u64) -> String {
    format!("{:08}{:012}", prefix % 100_000_000, n % 1_000_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::convert::new_deregistration;

    #[test]
    fn every_report_passes_the_gateways_validation() {
        let g = ReportGen::with_prefix("SE1655999991-S000000000011", 42);
        let now = crate::clock::now();
        // Spread over the generator's whole range of dates and birth numbers.
        for n in (0..2_000u64).chain((0..200).map(|i| i * 20_161 + 7)) {
            let req = g.request(n);
            if let Err(e) = new_deregistration(&req, now) {
                panic!("report {n} refused: {e:?}");
            }
        }
    }

    #[test]
    fn card_numbers_and_request_ids_are_unique() {
        let g = ReportGen::with_prefix("SE1655999991-S000000000011", 7);
        let mut cards = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..5_000 {
            let r = g.next_request();
            assert!(ids.insert(r.request_id));
            assert!(cards.insert(r.deregistration.expect("report").card_number));
        }
        let other = ReportGen::with_prefix("SE1655999991-S000000000011", 8);
        assert!(!cards.contains(&other.request(0).deregistration.expect("r").card_number));
    }
}
