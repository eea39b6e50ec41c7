//! A deregistration case: what a care provider reports, and the state it is in.

use std::collections::BTreeMap;
use std::fmt;

use super::saga::{Saga, SnapshotState, Verification};
use super::{CardCertificate, CardNumber, Email, HsaId, PersonName, Personnummer, Timestamp};

/// Identifies a case. Time-ordered (UUIDv7), so ordering by id is ordering by creation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaseId(uuid::Uuid);

impl CaseId {
    /// Wraps a generated id; `clock::new_case_id` makes them (a UUIDv7 reads the clock).
    pub fn from_uuid(id: uuid::Uuid) -> Self {
        Self(id)
    }

    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::try_parse(s.trim()).ok().map(Self)
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

/// Where a case is in the routine. The names (`as_str`) are stored and in the audit trail:
/// they never change.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum State {
    Accepted,
    RevocationRequested,
    Revoked,
    KivRemovalPending,
    Completed,
    Rejected,
    Cancelled,
    NeedsAttention,
}

impl State {
    /// Terminal states end the case; the card number is free for a new case.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Completed | State::Rejected | State::Cancelled)
    }
}

/// Why the card is taken out of use.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum Reason {
    EmploymentEnded,
    AgreementEnded,
}

/// Who removes the employment from KIV.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum KivRemovalRoute {
    CareProvider,
    HealthCareOffice,
}

// The stable names in storage and audit events, through strum; `from_str_opt` is `FromStr`
// without the error value, for readers that map a miss to "corrupt row".
impl State {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
    pub fn from_str_opt(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
    pub fn from_str_opt(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

impl KivRemovalRoute {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
    pub fn from_str_opt(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

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
    /// The W3C `traceparent` of the span that created the case (not personal data): the saga
    /// steps' spans continue that trace. `None` for cases stored before it was kept.
    pub trace_parent: Option<String>,
    /// The revocation check in force for the case, and whether it is done.
    pub verification: Verification,
    /// The card's certificates named in the confirmation (serial and issuer only).
    pub revoked_certificates: Vec<CardCertificate>,
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
            verification: self.verification,
        }
    }
}

/// Marks, at the end of an attribute's name in a snapshot, that its values are binary and
/// written in base64 (`userCertificate;binary;base64`); other values are text as read.
pub const BASE64_SUFFIX: &str = ";base64";

/// An employment entry as KIV holds it: its DN and every attribute (binary ones under their
/// name + [`BASE64_SUFFIX`]), and what the card check reads from the person entry it sits
/// under. Personal data (it carries the personnummer): `Debug` prints only attribute names.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Employment {
    pub dn: String,
    pub attributes: BTreeMap<String, Vec<String>>,
    /// The person entry above the employment (KIV keeps a person's employments below the
    /// person): its `hsaIdentity` and `userCertificate;binary`, when it has either. `None` in
    /// snapshots taken before this was read (the field is then absent), and when there is no
    /// person entry. Restoring never writes it: removing an employment leaves the person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<PersonEntry>,
}

/// The part of a KIV person entry a snapshot keeps; attributes as in [`Employment`].
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PersonEntry {
    pub dn: String,
    pub attributes: BTreeMap<String, Vec<String>>,
}

impl fmt::Debug for Employment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Employment")
            .field("attributes", &self.attributes.keys().collect::<Vec<_>>())
            .field("person", &self.person)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for PersonEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersonEntry")
            .field("attributes", &self.attributes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The values of every attribute in `attributes` whose description, apart from options in
/// `options`, is `name` (both without regard to case; `userCertificate` with `["binary"]`
/// finds `userCertificate` and `userCertificate;binary`), as bytes: base64-marked values
/// decoded (a value that does not decode is left out), text values as their UTF-8.
pub fn attribute_bytes(
    attributes: &BTreeMap<String, Vec<String>>,
    name: &str,
    options: &[&str],
) -> Vec<Vec<u8>> {
    use base64::Engine;
    let mut out = Vec::new();
    for (key, values) in attributes {
        let (description, encoded) = match key.strip_suffix(BASE64_SUFFIX) {
            Some(d) => (d, true),
            None => (key.as_str(), false),
        };
        let mut parts = description.split(';');
        let named = parts.next().is_some_and(|n| n.eq_ignore_ascii_case(name))
            && parts.all(|o| options.iter().any(|w| o.eq_ignore_ascii_case(w)));
        if !named {
            continue;
        }
        for v in values {
            if encoded {
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(v) {
                    out.push(bytes);
                }
            } else {
                out.push(v.as_bytes().to_vec());
            }
        }
    }
    out
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
    /// Id of the key that made `hash` (`Vault::key_id`); `None` for a legacy (pre-m0005,
    /// plain SHA-256) event.
    pub key_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    /// Snapshots stored before the person entry was read still open, and one without a person
    /// entry is written exactly as before.
    #[test]
    fn old_snapshots_still_read_and_write_the_same() {
        let old = r#"{"dn":"cn=u,cn=19121212,ou=Personal,o=VGR","attributes":{"hsaPersonIdentityNumber":["191212121212"],"jpegPhoto;base64":["AAE="]}}"#;
        let e: Employment = serde_json::from_str(old).expect("an old snapshot reads");
        assert_eq!(e.person, None);
        assert_eq!(
            attribute_bytes(&e.attributes, "jpegPhoto", &[]),
            vec![vec![0, 1]]
        );
        assert_eq!(serde_json::to_string(&e).expect("json"), old);

        let with_person = Employment {
            person: Some(PersonEntry {
                dn: "cn=19121212,ou=Personal,o=VGR".into(),
                attributes: BTreeMap::from([(
                    format!("userCertificate;binary{BASE64_SUFFIX}"),
                    vec!["MAMCAQE=".into()],
                )]),
            }),
            ..e
        };
        let json = serde_json::to_string(&with_person).expect("json");
        assert_eq!(
            serde_json::from_str::<Employment>(&json).expect("reads back"),
            with_person
        );
    }

    #[test]
    fn snapshot_debug_names_attributes_only() {
        let e = Employment {
            dn: "cn=u,cn=19121212,ou=Personal,o=VGR".into(),
            attributes: BTreeMap::from([(
                "hsaPersonIdentityNumber".into(),
                vec!["191212121212".into()],
            )]),
            person: Some(PersonEntry {
                dn: "cn=19121212,ou=Personal,o=VGR".into(),
                attributes: BTreeMap::from([(
                    "hsaIdentity".into(),
                    vec!["SE1655999991-P000000000042".into()],
                )]),
            }),
        };
        let printed = format!("{e:?}");
        assert!(printed.contains("hsaPersonIdentityNumber") && printed.contains("hsaIdentity"));
        for value in ["19121212", "P000000000042"] {
            assert!(!printed.contains(value), "{printed}");
        }
    }

    #[test]
    fn attribute_bytes_match_names_and_options() {
        let attributes = BTreeMap::from([
            (
                "userCertificate;binary;base64".into(),
                vec!["AQI=".into(), "!".into()],
            ),
            ("USERCERTIFICATE".into(), vec!["ab".into()]),
            ("userCertificate;lang-sv".into(), vec!["x".into()]),
            ("userCertificateX".into(), vec!["y".into()]),
        ]);
        let mut found = attribute_bytes(&attributes, "usercertificate", &["binary"]);
        found.sort();
        assert_eq!(found, vec![vec![1, 2], b"ab".to_vec()]);
    }

    /// Existing databases and audit chains hold these exact names.
    #[test]
    fn stored_names_never_change() {
        let states: Vec<&str> = State::VARIANTS.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            states,
            [
                "accepted",
                "revocation_requested",
                "revoked",
                "kiv_removal_pending",
                "completed",
                "rejected",
                "cancelled",
                "needs_attention"
            ]
        );
        let reasons: Vec<&str> = Reason::VARIANTS.iter().map(|s| s.as_str()).collect();
        assert_eq!(reasons, ["employment_ended", "agreement_ended"]);
        let routes: Vec<&str> = KivRemovalRoute::VARIANTS
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(routes, ["care_provider", "health_care_office"]);
        for s in State::VARIANTS {
            assert_eq!(State::from_str_opt(s.as_str()), Some(*s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(State::from_str_opt("Accepted"), None);
        assert_eq!(
            Reason::from_str_opt("agreement_ended"),
            Some(Reason::AgreementEnded)
        );
        assert_eq!(
            KivRemovalRoute::from_str_opt("health_care_office"),
            Some(KivRemovalRoute::HealthCareOffice)
        );
    }
}
