//! Rows ↔ domain: the one place that reads a stored row back into domain types and turns
//! domain values into row values. Owns the encryption of the personal data (`cases.sensitive`,
//! bound to the case id) and of the KIV snapshot (bound to `<case id>/kiv-snapshot`), both
//! under the case's own data key (`cases.data_key`, wrapped by a master key and bound to
//! `<case id>/data-key`), and what shredding and re-encryption do to a row. A row from before
//! m0006 has no data key: its values are sealed by the master key itself and read as such.
//! Decides nothing and runs no SQL; a row that cannot be read is `StoreError::Corrupt`, never
//! guessed.

use std::sync::Arc;

use sea_orm::ActiveValue::Set;
use serde::{Deserialize, Serialize};

use super::audit::GENESIS_HASH;
use super::entities::{case_events, cases, effects};
use super::{CreateCase, StoreError, Work};
use crate::domain::saga::{Saga, SnapshotState, Step, Verification};
use crate::domain::{
    CardCertificate, CardHolder, CardNumber, CaseEvent, CaseId, Deregistration, Email, Employment,
    HsaId, KivRemovalRoute, NewDeregistration, PersonName, Personnummer, Reason, Reporter, State,
    Timestamp,
};
use crate::privacy::{DataKey, Vault, VaultError};

/// The personal data of a case, stored only as one AEAD ciphertext.
#[derive(Serialize, Deserialize)]
struct Sensitive {
    pnr: String,
    holder_name: String,
    holder_email: Option<String>,
    reporter_name: String,
    reporter_email: String,
}

/// Encrypts and decrypts with the store's vault; cheap to clone.
#[derive(Clone)]
pub(crate) struct Codec {
    vault: Arc<Vault>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").finish_non_exhaustive()
    }
}

fn corrupt(id: &str, what: &str) -> StoreError {
    StoreError::Corrupt(format!("case {id}: {what}"))
}

fn state(id: &str, v: &str) -> Result<State, StoreError> {
    State::from_str_opt(v).ok_or_else(|| corrupt(id, "state"))
}

fn snapshot_context(case_id: &str) -> String {
    format!("{case_id}/kiv-snapshot")
}

fn data_key_context(case_id: &str) -> String {
    format!("{case_id}/data-key")
}

/// What seals a row's personal data: its own data key, or (a row from before m0006) the
/// master keyring itself.
enum RowKey<'a> {
    Data(Box<DataKey>),
    Master(&'a Vault),
}

impl RowKey<'_> {
    fn seal(&self, context: &str, plain: &[u8]) -> Result<Vec<u8>, VaultError> {
        match self {
            RowKey::Data(k) => k.seal(context, plain),
            RowKey::Master(v) => v.seal(context, plain),
        }
    }

    fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        match self {
            RowKey::Data(k) => k.open(context, sealed),
            RowKey::Master(v) => v.open(context, sealed),
        }
    }
}

/// What `Codec::reencrypt` did to a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rekeyed {
    /// Already under the current master key, or shredded: nothing to do.
    Current,
    /// The data key re-wrapped by the current master key.
    Rewrapped,
    /// A row from before m0006: given a data key, its values sealed again under it.
    Migrated,
}

impl Codec {
    pub(crate) fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }

    /// The id of the master key new data is encrypted under.
    pub(crate) fn current_key_id(&self) -> String {
        self.vault.key_id()
    }

    pub(crate) fn vault(&self) -> &Vault {
        &self.vault
    }

    /// How a caller's `request_id` is kept: a keyed digest, scoped to the caller. The id is the
    /// caller's free choice, so it is never stored in clear, whatever it may hide.
    pub(crate) fn request_key(&self, principal: &str, request_id: &str) -> String {
        self.vault
            .digest(&[b"request-id:", principal.as_bytes(), request_id.as_bytes()])
    }

    /// The row of a new case in `ACCEPTED`, before its first event (`last_seq` 0, genesis
    /// hash): personal data sealed, the holder looked up by pseudonym only.
    pub(crate) fn new_case(
        &self,
        cmd: &CreateCase,
        check_revocation: bool,
    ) -> Result<cases::ActiveModel, StoreError> {
        let report = &cmd.report;
        let id = cmd.id.to_string();
        let (key, wrapped) = self
            .vault
            .new_data_key(&data_key_context(&id))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(cases::ActiveModel {
            id: Set(cmd.id.to_string()),
            care_provider_hsa_id: Set(cmd.care_provider.to_string()),
            care_unit_hsa_id: Set(report.care_unit.to_string()),
            card_number: Set(report.card_number.to_string()),
            active_card_number: Set(Some(report.card_number.to_string())),
            holder_pseudonym: Set(self.vault.pseudonym(&report.card_holder.personnummer)),
            sensitive: Set(seal_sensitive(&RowKey::Data(Box::new(key)), &id, report)?),
            reason: Set(report.reason.as_str().to_owned()),
            kiv_removal_route: Set(report.route.as_str().to_owned()),
            card_received_at: Set(report.card_received_at.0),
            reporter_hsa_id: Set(report.reported_by.hsa_id.to_string()),
            state: Set(State::Accepted.as_str().to_owned()),
            state_reason: Set(None),
            revocation_reference: Set(None),
            created_at: Set(cmd.meta.at.0),
            updated_at: Set(cmd.meta.at.0),
            version: Set(1),
            attention_from: Set(None),
            snapshot_state: Set(SnapshotState::Pending.as_str().to_owned()),
            kiv_snapshot: Set(None),
            reported_at: Set(None),
            revocation_confirmed_at: Set(None),
            trace_id: Set(cmd.meta.trace_id.clone()),
            last_seq: Set(0),
            last_hash: Set(GENESIS_HASH.to_owned()),
            head_notified_at: Set(None),
            trace_parent: Set(cmd.trace_parent.clone()),
            data_key: Set(Some(wrapped)),
            key_id: Set(Some(self.vault.key_id())),
            ended_at: Set(None),
            shredded_at: Set(None),
            head_seal: Set(None),
            revocation_check: Set(Saga::new(report.route)
                .with_check(check_revocation)
                .verification
                .as_str()
                .to_owned()),
            revoked_certificates: Set(None),
        })
    }

    /// The key that seals the row's personal data. A shredded row has none.
    fn row_key(&self, m: &cases::Model) -> Result<RowKey<'_>, StoreError> {
        if m.shredded_at.is_some() {
            return Err(StoreError::NotFound);
        }
        match &m.data_key {
            Some(wrapped) => self
                .vault
                .open_data_key(&data_key_context(&m.id), wrapped)
                .map(|k| RowKey::Data(Box::new(k)))
                .map_err(|_| corrupt(&m.id, "data key does not decrypt")),
            None => Ok(RowKey::Master(&self.vault)),
        }
    }

    /// Destroys the row's personal data: the wrapped data key (every copy of the ciphertexts,
    /// in backups too, is then noise), the ciphertexts themselves, and the holder's pseudonym.
    /// What remains is the revocation record: who reported which card, when, the outcome, and
    /// the audit chain.
    pub(crate) fn shred(m: &mut cases::Model, at: Timestamp) {
        m.data_key = None;
        m.key_id = None;
        m.sensitive = Vec::new();
        m.kiv_snapshot = None;
        m.holder_pseudonym = String::new();
        m.shredded_at = Some(at.0);
    }

    /// Moves the row to the current master key: its data key re-wrapped, or (a row from
    /// before m0006) a data key made and its values sealed again under it.
    pub(crate) fn reencrypt(&self, m: &mut cases::Model) -> Result<Rekeyed, StoreError> {
        let current = self.vault.key_id();
        if m.shredded_at.is_some() {
            return Ok(Rekeyed::Current);
        }
        let fail = |what: &str| corrupt(&m.id, what);
        if let Some(wrapped) = &m.data_key {
            if m.key_id.as_deref() == Some(current.as_str()) {
                return Ok(Rekeyed::Current);
            }
            m.data_key = Some(
                self.vault
                    .rewrap_data_key(&data_key_context(&m.id), wrapped)
                    .map_err(|_| fail("data key does not decrypt"))?,
            );
            m.key_id = Some(current);
            return Ok(Rekeyed::Rewrapped);
        }
        let context = data_key_context(&m.id);
        let (key, wrapped) = self
            .vault
            .new_data_key(&context)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let plain = self
            .vault
            .open(&m.id, &m.sensitive)
            .map_err(|_| fail("personal data does not decrypt"))?;
        let sensitive = key
            .seal(&m.id, &plain)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let snapshot = match &m.kiv_snapshot {
            Some(sealed) => {
                let ctx = snapshot_context(&m.id);
                let plain = self
                    .vault
                    .open(&ctx, sealed)
                    .map_err(|_| fail("KIV snapshot does not decrypt"))?;
                Some(
                    key.seal(&ctx, &plain)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                )
            }
            None => None,
        };
        m.sensitive = sensitive;
        m.kiv_snapshot = snapshot;
        m.data_key = Some(wrapped);
        m.key_id = Some(current);
        Ok(Rekeyed::Migrated)
    }
}

fn seal_sensitive(
    key: &RowKey<'_>,
    case_id: &str,
    report: &NewDeregistration,
) -> Result<Vec<u8>, StoreError> {
    let s = Sensitive {
        pnr: report.card_holder.personnummer.expose_digits(),
        holder_name: report.card_holder.full_name.as_str().to_owned(),
        holder_email: report
            .card_holder
            .email
            .as_ref()
            .map(|e| e.as_str().to_owned()),
        reporter_name: report.reported_by.full_name.as_str().to_owned(),
        reporter_email: report.reported_by.email.as_str().to_owned(),
    };
    let json = serde_json::to_vec(&s).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    key.seal(case_id, &json)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Codec {
    /// The whole case, personal data decrypted. A shredded case is `NotFound`: its personal
    /// data is gone, and with it the case as the API knows it (its record stays, see
    /// `storage::retention`).
    pub(crate) fn to_domain(&self, m: &cases::Model) -> Result<Deregistration, StoreError> {
        let corrupt = |what: &str| corrupt(&m.id, what);
        let plain = self
            .row_key(m)?
            .open(&m.id, &m.sensitive)
            .map_err(|_| corrupt("personal data does not decrypt"))?;
        let s: Sensitive =
            serde_json::from_slice(&plain).map_err(|_| corrupt("personal data is malformed"))?;
        let hsa = |v: &str, what: &str| HsaId::parse(v).map_err(|_| corrupt(what));
        // Stored values passed the rules of their day: read them back as they are.
        let name = |v: &str| PersonName::from_stored(v.to_owned());
        let email = |v: &str| Email::from_stored(v.to_owned());
        let saga = saga_of(m)?;
        Ok(Deregistration {
            id: CaseId::parse(&m.id).ok_or_else(|| corrupt("id"))?,
            care_provider: hsa(&m.care_provider_hsa_id, "care provider")?,
            report: NewDeregistration {
                care_unit: hsa(&m.care_unit_hsa_id, "care unit")?,
                card_holder: CardHolder {
                    personnummer: Personnummer::from_stored(&s.pnr)
                        .ok_or_else(|| corrupt("personnummer"))?,
                    full_name: name(&s.holder_name),
                    email: s.holder_email.as_deref().map(email),
                },
                card_number: CardNumber::from_stored(m.card_number.clone()),
                reason: Reason::from_str_opt(&m.reason).ok_or_else(|| corrupt("reason"))?,
                card_received_at: Timestamp(m.card_received_at),
                reported_by: Reporter {
                    hsa_id: hsa(&m.reporter_hsa_id, "reporter")?,
                    full_name: name(&s.reporter_name),
                    email: email(&s.reporter_email),
                },
                route: saga.route,
            },
            state: saga.state,
            state_reason: m.state_reason.clone(),
            revocation_reference: m.revocation_reference.clone(),
            created_at: Timestamp(m.created_at),
            updated_at: Timestamp(m.updated_at),
            attention_from: saga.attention_from,
            snapshot: saga.snapshot,
            reported_at: m.reported_at.map(Timestamp),
            revocation_confirmed_at: m.revocation_confirmed_at.map(Timestamp),
            head_notified_at: m.head_notified_at.map(Timestamp),
            trace_id: m.trace_id.clone(),
            trace_parent: m.trace_parent.clone(),
            verification: saga.verification,
            revoked_certificates: certificates_of(m)?,
        })
    }

    /// One unreadable row (wrong key, corruption) must not take every other case with it:
    /// it is logged and left out; the engine then fails just that case's step.
    pub(crate) fn readable(&self, m: &cases::Model) -> Option<Deregistration> {
        match self.to_domain(m) {
            Ok(c) => Some(c),
            Err(StoreError::NotFound) => None,
            Err(e) => {
                tracing::error!(case_id = %m.id, error = %e, "case row unreadable; skipped");
                None
            }
        }
    }

    /// The sealed KIV snapshot for the row's `kiv_snapshot` column.
    pub(crate) fn seal_snapshot(
        &self,
        m: &cases::Model,
        snapshot: &Employment,
    ) -> Result<Vec<u8>, StoreError> {
        let json = serde_json::to_vec(snapshot).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.row_key(m)?
            .seal(&snapshot_context(&m.id), &json)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    pub(crate) fn open_snapshot(&self, m: &cases::Model) -> Result<Option<Employment>, StoreError> {
        let Some(sealed) = &m.kiv_snapshot else {
            return Ok(None);
        };
        let plain = self
            .row_key(m)?
            .open(&snapshot_context(&m.id), sealed)
            .map_err(|_| corrupt(&m.id, "KIV snapshot does not decrypt"))?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|_| corrupt(&m.id, "KIV snapshot is malformed"))
    }
}

/// The saga fields of a row, without decrypting the personal data.
pub(crate) fn saga_of(m: &cases::Model) -> Result<Saga, StoreError> {
    Ok(Saga {
        state: state(&m.id, &m.state)?,
        route: KivRemovalRoute::from_str_opt(&m.kiv_removal_route)
            .ok_or_else(|| corrupt(&m.id, "route"))?,
        snapshot: SnapshotState::from_str_opt(&m.snapshot_state)
            .ok_or_else(|| corrupt(&m.id, "snapshot state"))?,
        attention_from: m
            .attention_from
            .as_deref()
            .map(|v| state(&m.id, v))
            .transpose()?,
        revocation_confirmed: m.revocation_confirmed_at.is_some(),
        head_notified: m.head_notified_at.is_some(),
        verification: Verification::from_str_opt(&m.revocation_check)
            .ok_or_else(|| corrupt(&m.id, "revocation check"))?,
    })
}

/// The certificates the confirmation named (none before it, or when it named none).
pub(crate) fn certificates_of(m: &cases::Model) -> Result<Vec<CardCertificate>, StoreError> {
    match &m.revoked_certificates {
        None => Ok(Vec::new()),
        Some(json) => {
            serde_json::from_str(json).map_err(|_| corrupt(&m.id, "revoked certificates"))
        }
    }
}

/// Writes the saga's fields into the row (the rest of a change is the planner's).
pub(crate) fn set_saga(m: &mut cases::Model, saga: &Saga) {
    m.state = saga.state.as_str().to_owned();
    m.attention_from = saga.attention_from.map(|s| s.as_str().to_owned());
    m.snapshot_state = saga.snapshot.as_str().to_owned();
    m.revocation_check = saga.verification.as_str().to_owned();
}

/// The audit event as its `case_events` row.
pub(crate) fn event_row(e: &CaseEvent, prev_hash: String) -> case_events::ActiveModel {
    case_events::ActiveModel {
        case_id: Set(e.case_id.to_string()),
        seq: Set(e.sequence),
        kind: Set(e.kind.clone()),
        state: Set(e.state.as_str().to_owned()),
        actor: Set(e.actor.clone()),
        occurred_at: Set(e.at.0),
        trace_id: Set(e.trace_id.clone()),
        detail: Set(e.detail.clone()),
        prev_hash: Set(prev_hash),
        hash: Set(e.hash.clone()),
        key_id: Set(e.key_id.clone()),
    }
}

pub(crate) fn event_of(row: case_events::Model) -> Result<CaseEvent, StoreError> {
    Ok(CaseEvent {
        case_id: CaseId::parse(&row.case_id).ok_or_else(|| corrupt(&row.case_id, "event"))?,
        state: state(&row.case_id, &row.state)?,
        sequence: row.seq,
        kind: row.kind,
        actor: row.actor,
        at: Timestamp(row.occurred_at),
        trace_id: row.trace_id,
        detail: row.detail,
        hash: row.hash,
        key_id: row.key_id,
    })
}

/// A claimed effect row as the engine's unit of work.
pub(crate) fn work_of(row: &effects::Model) -> Result<Work, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("effect {}: {what}", row.key));
    Ok(Work {
        key: row.key.clone(),
        case_id: CaseId::parse(&row.case_id).ok_or_else(|| corrupt("case id"))?,
        step: Step::from_stored(&row.step, row.n).ok_or_else(|| corrupt("step"))?,
        attempts: u32::try_from(row.attempts).unwrap_or(u32::MAX),
    })
}
