//! The exported audit record of one case (`ExportAuditRecord`, format `etk-audit-record/v1`):
//! the case, every audit event with its hash and key id, and the chain head on the case row.
//! Personal data appear only as keyed pseudonyms, unless the record is for the record keeper
//! (`Purpose::RecordKeeper`). A record verifies offline against its own chain head with the
//! gateway's key (`AuditRecord::verify`; `etjanstekort-gateway audit verify-export`).

use serde::{Deserialize, Serialize};

use crate::domain::{CaseEvent, CaseId, Deregistration, State, Timestamp};
use crate::privacy::Vault;
use crate::storage::{
    BrokenLink, ChainHead, ChainKeys, ChainProblem, ChainReport, HeadRow, verify_case,
};

pub const FORMAT: &str = "etk-audit-record/v1";

/// Who a record is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Personal data as keyed pseudonyms only.
    Pseudonymized,
    /// The record keeper's copy: personal data in clear.
    RecordKeeper,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub format: String,
    pub purpose: Purpose,
    /// Unix microseconds.
    pub exported_at: i64,
    /// HSA-id of the operator who exported it.
    pub exported_by: String,
    pub case: RecordCase,
    pub events: Vec<RecordEvent>,
    pub chain_head: RecordHead,
    /// `<key id>:<HMAC>` under the audit chain key over the format, purpose, export time and
    /// exporter and the case section (its JSON), so an edit of the case part is detected like
    /// an edit of an event. Absent in records exported before m0008 (whose `chain_head` has no
    /// `row` either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_mac: Option<String>,
}

/// A person's data: in clear (record keeper) or as keyed pseudonyms; the other half is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personal_identity_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// HMAC pseudonym of the personal identity number (the one the gateway correlates by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personal_identity_number_pseudonym: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_name_pseudonym: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_pseudonym: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCase {
    pub id: String,
    pub care_provider_hsa_id: String,
    pub care_unit_hsa_id: String,
    pub state: String,
    pub reason: String,
    pub kiv_removal_route: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub revocation_reference: Option<String>,
    pub state_reason: Option<String>,
    /// In clear for the record keeper only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_number_pseudonym: Option<String>,
    pub card_holder: Person,
    pub reported_by_hsa_id: String,
    pub reported_by: Person,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEvent {
    pub sequence: i64,
    pub kind: String,
    pub state: String,
    pub actor: String,
    /// Unix microseconds, as hashed.
    pub time: i64,
    pub trace_id: String,
    pub detail: String,
    pub hash: String,
    /// `null` for a legacy (unkeyed) event.
    pub key_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordHead {
    pub sequence: i64,
    pub hash: String,
    pub seal: Option<String>,
    /// The case row's fields the (v2) seal also covers; absent in records exported before
    /// m0008, whose seal (v1) covers the head only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<RecordHeadRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordHeadRow {
    pub state: String,
    /// Unix microseconds.
    pub updated_at: i64,
    pub version: i64,
}

impl RecordHead {
    /// The chain head as the verifier takes it.
    pub fn to_head(&self) -> ChainHead {
        ChainHead {
            sequence: self.sequence,
            hash: self.hash.clone(),
            seal: self.seal.clone(),
            row: self.row.as_ref().map(|r| HeadRow {
                state: r.state.clone(),
                updated_at: r.updated_at,
                version: r.version,
            }),
        }
    }
}

impl AuditRecord {
    /// The record of `case` with its trail and head, as of `now`.
    pub fn new(
        vault: &Vault,
        purpose: Purpose,
        case: &Deregistration,
        events: &[CaseEvent],
        head: &ChainHead,
        exported_by: &str,
        now: Timestamp,
    ) -> Self {
        let r = &case.report;
        let clear = purpose == Purpose::RecordKeeper;
        let pseudo = |label: &[u8], v: &str| Some(vault.digest(&[label, v.as_bytes()]));
        let holder_email = r.card_holder.email.as_ref().map(|e| e.as_str());
        let (card_holder, reported_by) = if clear {
            (
                Person {
                    personal_identity_number: Some(r.card_holder.personnummer.expose_digits()),
                    full_name: Some(r.card_holder.full_name.as_str().to_owned()),
                    email: holder_email.map(str::to_owned),
                    ..Person::default()
                },
                Person {
                    full_name: Some(r.reported_by.full_name.as_str().to_owned()),
                    email: Some(r.reported_by.email.as_str().to_owned()),
                    ..Person::default()
                },
            )
        } else {
            (
                Person {
                    personal_identity_number_pseudonym: Some(
                        vault.pseudonym(&r.card_holder.personnummer),
                    ),
                    full_name_pseudonym: pseudo(b"name:", r.card_holder.full_name.as_str()),
                    email_pseudonym: holder_email.and_then(|e| pseudo(b"email:", e)),
                    ..Person::default()
                },
                Person {
                    full_name_pseudonym: pseudo(b"name:", r.reported_by.full_name.as_str()),
                    email_pseudonym: pseudo(b"email:", r.reported_by.email.as_str()),
                    ..Person::default()
                },
            )
        };
        let card = r.card_number.to_string();
        let mut record = Self {
            format: FORMAT.to_owned(),
            purpose,
            exported_at: now.0,
            exported_by: exported_by.to_owned(),
            case: RecordCase {
                id: case.id.to_string(),
                care_provider_hsa_id: case.care_provider.to_string(),
                care_unit_hsa_id: r.care_unit.to_string(),
                state: case.state.as_str().to_owned(),
                reason: r.reason.as_str().to_owned(),
                kiv_removal_route: r.route.as_str().to_owned(),
                created_at: case.created_at.0,
                updated_at: case.updated_at.0,
                revocation_reference: case.revocation_reference.clone(),
                state_reason: case.state_reason.clone(),
                card_number: clear.then(|| card.clone()),
                card_number_pseudonym: (!clear).then(|| vault.digest(&[b"card:", card.as_bytes()])),
                card_holder,
                reported_by_hsa_id: r.reported_by.hsa_id.to_string(),
                reported_by,
            },
            events: events
                .iter()
                .map(|e| RecordEvent {
                    sequence: e.sequence,
                    kind: e.kind.clone(),
                    state: e.state.as_str().to_owned(),
                    actor: e.actor.clone(),
                    time: e.at.0,
                    trace_id: e.trace_id.clone(),
                    detail: e.detail.clone(),
                    hash: e.hash.clone(),
                    key_id: e.key_id.clone(),
                })
                .collect(),
            chain_head: RecordHead {
                sequence: head.sequence,
                hash: head.hash.clone(),
                seal: head.seal.clone(),
                row: head.row.as_ref().map(|r| RecordHeadRow {
                    state: r.state.clone(),
                    updated_at: r.updated_at,
                    version: r.version,
                }),
            },
            case_mac: None,
        };
        let key_id = vault.key_id();
        record.case_mac = Some(format!(
            "{key_id}:{}",
            record.case_mac_under(vault.audit_chain_key(), &key_id)
        ));
        record
    }

    /// The HMAC of everything but the events and the head (which the chain covers).
    fn case_mac_under(&self, key: &ring::hmac::Key, key_id: &str) -> String {
        let purpose = serde_json::to_string(&self.purpose).unwrap_or_default();
        // Plain data with string keys, fields in declaration order: the same JSON each time.
        let case = serde_json::to_string(&self.case).unwrap_or_default();
        let (at, by) = (self.exported_at.to_string(), self.exported_by.as_str());
        let mut ctx = ring::hmac::Context::with_key(key);
        for part in [
            "etk audit record case v1",
            key_id,
            self.format.as_str(),
            purpose.as_str(),
            at.as_str(),
            by,
            case.as_str(),
        ] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
        hex::encode(ctx.sign().as_ref())
    }

    /// Why the case section does not hold, if it does not.
    fn case_problem(&self, keys: &ChainKeys) -> Option<String> {
        let Some(mac) = &self.case_mac else {
            // Only a record from before m0008 (v1 head seal, no row) may lack it.
            return self
                .chain_head
                .row
                .is_some()
                .then(|| "the record's case section carries no MAC".to_owned());
        };
        let (key_id, _) = mac.split_once(':').unwrap_or_default();
        let Some(key) = keys.get(key_id) else {
            return Some(format!(
                "the record's case section was sealed with unknown key {key_id}"
            ));
        };
        (format!("{key_id}:{}", self.case_mac_under(key, key_id)) != *mac)
            .then(|| "the record's case section does not match its MAC".to_owned())
    }

    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let record: Self =
            serde_json::from_str(text).map_err(|e| format!("not an audit record: {e}"))?;
        if record.format != FORMAT {
            return Err(format!(
                "unknown format {:?} (expected {FORMAT})",
                record.format
            ));
        }
        Ok(record)
    }

    /// Verifies the record's events against its chain head with `keys`, as the gateway verifies
    /// the database. Needs the gateway's key: the hashes are keyed.
    pub fn verify(&self, keys: &ChainKeys) -> Result<ChainReport, String> {
        let case_id = CaseId::parse(&self.case.id)
            .ok_or_else(|| "the record's case id is invalid".to_owned())?;
        let events = self
            .events
            .iter()
            .map(|e| {
                Ok(CaseEvent {
                    case_id: case_id.clone(),
                    sequence: e.sequence,
                    kind: e.kind.clone(),
                    state: State::from_str_opt(&e.state)
                        .ok_or_else(|| format!("event {}: unknown state", e.sequence))?,
                    actor: e.actor.clone(),
                    at: Timestamp(e.time),
                    trace_id: e.trace_id.clone(),
                    detail: e.detail.clone(),
                    hash: e.hash.clone(),
                    key_id: e.key_id.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut report = verify_case(&events, &self.chain_head.to_head(), keys);
        if report.broken.is_none()
            && let Some(detail) = self.case_problem(keys)
        {
            report.broken = Some(BrokenLink {
                sequence: 0,
                problem: ChainProblem::HashMismatch,
                detail,
            });
        }
        Ok(report)
    }
}
