//! The pure core: identifier newtypes (parse, don't validate), the free-text rule, the case
//! model and its state machine. Architecture invariant: nothing here imports tonic, prost or
//! sea-orm, nothing here does I/O, and nothing here reads the clock ("now" and "today" are
//! arguments, read by callers from a `clock::Clock`).

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

pub use card_number::{CardNumber, CardNumberError};
pub use case::{
    CardHolder, CaseEvent, CaseId, Deregistration, Employment, KivRemovalRoute, NewDeregistration,
    Reason, Reporter, State,
};
pub use email::{Email, EmailError};
pub use free_text::{FreeText, RequestId, RevocationReference, TextError};
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
