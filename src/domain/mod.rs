//! The pure core: identifier newtypes (parse, don't validate), the case model and its
//! state machine. Architecture invariant: nothing here imports tonic, prost or sea-orm,
//! and nothing here does I/O.

mod card_number;
mod case;
pub mod date;
mod email;
mod hsa_id;
mod personnummer;
pub mod saga;

pub use card_number::{CardNumber, CardNumberError};
pub use case::{
    CardHolder, CaseEvent, CaseId, Deregistration, Employment, KivRemovalRoute, NewDeregistration,
    PersonName, PersonNameError, Reason, Reporter, State, Timestamp,
};
pub use email::{Email, EmailError};
pub use hsa_id::{HsaId, HsaIdError};
pub use personnummer::{
    IdentityKind, Personnummer, PersonnummerError, appears_in as personnummer_appears_in,
};

/// A validation rule's stable code (for `google.rpc.BadRequest` field violations' `reason`),
/// next to its human-readable description (`Display`).
pub trait Rule: std::fmt::Display {
    fn code(&self) -> &'static str;
}
