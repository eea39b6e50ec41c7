//! The pure core: identifier newtypes (parse, don't validate), the free-text rule, the case
//! model and its state machine. Architecture invariant: nothing here imports the gRPC,
//! protobuf or database crates or the outer layers, nothing here does I/O, and nothing here
//! reads the clock ("now" and "today" are arguments, read by callers from a `Clock`).

mod card_certificate;
mod card_number;
mod case;
mod email;
mod free_text;
mod hsa_id;
pub mod identity_scan;
mod luhn;
mod person_name;
mod personnummer;
pub mod saga;
pub mod timestamp;

pub use card_certificate::{CardCertificate, CertificateError, CertificateSource, same_issuer};
pub use card_number::{CardNumber, CardNumberError};
pub use case::{
    BASE64_SUFFIX, CardHolder, CaseEvent, CaseId, Deregistration, Employment, KivRemovalRoute,
    NewDeregistration, PersonEntry, Reason, Reporter, State, attribute_bytes,
};
pub use email::{Email, EmailError};
pub use free_text::{FreeText, RequestId, RevocationReference, TextError, TraceId};
pub use hsa_id::{HsaId, HsaIdError};
pub use person_name::{PersonName, PersonNameError};
pub use personnummer::{IdentityKind, Personnummer, PersonnummerError};
pub use time::Date;
pub use timestamp::{InstantError, Timestamp};

/// A validation rule's stable code (for `google.rpc.BadRequest` field violations' `reason`),
/// next to its human-readable description (`Display`).
pub trait Rule: std::fmt::Display {
    fn code(&self) -> &'static str;
}

/// The invariant above, checked on the source: a clock read, an I/O module or an outer layer
/// named anywhere in `src/domain` fails this test.
#[cfg(test)]
mod purity {
    #[test]
    fn the_domain_reads_no_clock_and_imports_no_outer_layer() {
        const FORBIDDEN: &[&str] = &[
            "SystemTime::now",
            "Instant::now",
            "now_utc",
            "now_local",
            "now_v7",
            "today_utc",
            "std::fs",
            "std::net",
            "tokio",
            "tonic",
            "prost",
            "sea_orm",
            "std::io",
            "std::env",
            "std::process",
            "std::thread",
            "getrandom",
            "rand::",
        ];
        let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain")];
        let mut checked = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src/domain") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("source");
                // This module names the patterns it looks for.
                let text = text.split("mod purity").next().unwrap_or_default();
                for f in FORBIDDEN {
                    assert!(!text.contains(f), "{} uses {f}", path.display());
                }
                // Of the crate, only the domain itself: an allow-list, so a new outer module
                // cannot slip in.
                for (i, _) in text.match_indices("crate::") {
                    assert!(
                        text[i..].starts_with("crate::domain"),
                        "{} imports {}",
                        path.display(),
                        &text[i..(i + 30).min(text.len())]
                    );
                }
                checked += 1;
            }
        }
        assert!(checked >= 10, "only {checked} files checked");
    }
}
