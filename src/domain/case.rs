//! A deregistration case: what a care provider reports, and the state it is in.

use std::fmt;

use super::saga::{Saga, SnapshotState};
use super::{CardNumber, Email, HsaId, Personnummer};

/// Microseconds since the Unix epoch, UTC. Stored as a 64-bit integer on every backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(d.as_micros() as i64)
    }

    pub fn from_unix(seconds: i64, nanos: i32) -> Option<Self> {
        seconds
            .checked_mul(1_000_000)
            .and_then(|us| us.checked_add(i64::from(nanos) / 1_000))
            .map(Self)
    }

    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    pub fn subsec_nanos(self) -> i32 {
        (self.0.rem_euclid(1_000_000) * 1_000) as i32
    }
}

/// Identifies a case. Time-ordered (UUIDv7), so ordering by id is ordering by creation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaseId(uuid::Uuid);

impl CaseId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::try_parse(s.trim()).ok().map(Self)
    }
}

impl Default for CaseId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaseId({self})")
    }
}

/// A person's name as written. Personal data: `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct PersonName(String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PersonNameError {
    #[error("is required")]
    Empty,
    #[error("must be at most 200 characters without control characters")]
    Format,
    #[error("must not contain digits that could be a personal identity number")]
    ContainsIdentityNumber,
}

impl super::Rule for PersonNameError {
    fn code(&self) -> &'static str {
        match self {
            PersonNameError::Empty => "REQUIRED",
            PersonNameError::Format => "FORMAT",
            PersonNameError::ContainsIdentityNumber => "CONTAINS_IDENTITY_NUMBER",
        }
    }
}

impl PersonName {
    pub fn parse(input: &str) -> Result<Self, PersonNameError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(PersonNameError::Empty);
        }
        if s.chars().count() > 200 || s.chars().any(char::is_control) {
            return Err(PersonNameError::Format);
        }
        // Names carry no long numbers; six digits in all is already a birth date.
        if s.chars().filter(|c| c.is_numeric()).count() >= 6 {
            return Err(PersonNameError::ContainsIdentityNumber);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name read back from storage: it passed the rules in force when it was stored, and
    /// rules tightened since must not make an old case unreadable.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonName(<redacted>)")
    }
}

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable name used in storage and audit events.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }

            pub fn from_str_opt(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(
    /// Where a case is in the routine.
    State {
        Accepted = "accepted",
        RevocationRequested = "revocation_requested",
        Revoked = "revoked",
        KivRemovalPending = "kiv_removal_pending",
        Completed = "completed",
        Rejected = "rejected",
        Cancelled = "cancelled",
        NeedsAttention = "needs_attention",
    }
);

impl State {
    /// Terminal states end the case; the card number is free for a new case.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Completed | State::Rejected | State::Cancelled)
    }
}

str_enum!(
    /// Why the card is taken out of use.
    Reason {
        EmploymentEnded = "employment_ended",
        AgreementEnded = "agreement_ended",
    }
);

str_enum!(
    /// Who removes the employment from KIV.
    KivRemovalRoute {
        CareProvider = "care_provider",
        HealthCareOffice = "health_care_office",
    }
);

/// The person whose card was cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardHolder {
    pub personnummer: Personnummer,
    pub full_name: PersonName,
    pub email: Option<Email>,
}

/// The head of operations who received the cut card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reporter {
    pub hsa_id: HsaId,
    pub full_name: PersonName,
    pub email: Email,
}

/// A validated report of a cut card, as a care provider submits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeregistration {
    pub care_unit: HsaId,
    pub card_holder: CardHolder,
    pub card_number: CardNumber,
    pub reason: Reason,
    pub card_received_at: Timestamp,
    pub reported_by: Reporter,
    pub route: KivRemovalRoute,
}

/// A stored case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deregistration {
    pub id: CaseId,
    pub care_provider: HsaId,
    pub report: NewDeregistration,
    pub state: State,
    pub state_reason: Option<String>,
    pub revocation_reference: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Where a case in `NeedsAttention` stopped.
    pub attention_from: Option<State>,
    pub snapshot: SnapshotState,
    /// When the report went out to TjänsteID-service.
    pub reported_at: Option<Timestamp>,
    /// When the revocation confirmation was recorded; never cleared.
    pub revocation_confirmed_at: Option<Timestamp>,
    /// When the head of operations was told.
    pub head_notified_at: Option<Timestamp>,
    /// The trace of the request that created the case; saga steps link to it.
    pub trace_id: String,
}

impl Deregistration {
    pub fn saga(&self) -> Saga {
        Saga {
            state: self.state,
            route: self.report.route,
            snapshot: self.snapshot,
            attention_from: self.attention_from,
            revocation_confirmed: self.revocation_confirmed_at.is_some(),
            head_notified: self.head_notified_at.is_some(),
        }
    }
}

/// An employment entry as KIV holds it: its DN and every attribute. Personal data (it
/// carries the personnummer): `Debug` prints only the attribute names.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Employment {
    pub dn: String,
    pub attributes: std::collections::BTreeMap<String, Vec<String>>,
}

impl fmt::Debug for Employment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Employment")
            .field("attributes", &self.attributes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One entry of a case's audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseEvent {
    pub case_id: CaseId,
    pub sequence: i64,
    pub kind: String,
    pub state: State,
    pub actor: String,
    pub at: Timestamp,
    pub trace_id: String,
    pub detail: String,
    pub hash: String,
}
