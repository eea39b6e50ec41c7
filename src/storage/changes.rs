//! Change planning and flush: the one path every state change takes. `ChangeSet` applies the
//! saga's verdict to in-memory case rows and gathers the audit events and effects it causes;
//! `flush` writes them in the caller's transaction, after re-checking revocation-before-KIV.
//! Owns the effect keys and due times; must not decide which state follows which (that is
//! `domain::saga::transition`) nor commit (the caller commits, then publishes).

use std::collections::HashMap;

use sea_orm::sea_query::{
    Expr, ExprTrait, InsertStatement, IntoIden, OnConflict, Query, TableRef, UpdateStatement,
    ValueTuple,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect, Value,
};

use super::audit::{GENESIS_HASH, HeadRow, head_seal, keyed_hash};
use super::codec::{Codec, event_row, saga_of, set_saga};
use super::entities::{case_events, cases, effects};
use super::sql::{exec, micros};
use super::{EventMeta, StoreError, Timing};
use crate::domain::saga::{
    Delay, Effect, Event, Saga, Step, TransitionError, Verification, transition,
};
use crate::domain::{CaseEvent, CaseId, State, Timestamp};

/// Case rows per bulk UPDATE and effect rows per INSERT: well below both backends' limits on
/// bound parameters (SQLite 32 766, PostgreSQL 65 535).
const CASES_PER_STATEMENT: usize = 64;
const EFFECTS_PER_STATEMENT: usize = 500;

/// Effect row to insert or re-arm.
#[derive(Debug)]
struct EffectRow {
    key: String,
    case_id: String,
    step: &'static str,
    n: i64,
    due_at: i64,
    /// When it was planned: its `created_at`/`updated_at`.
    planned_at: i64,
}

/// Writes gathered in memory during one transaction and flushed together.
#[derive(Debug)]
pub(crate) struct ChangeSet {
    timing: Timing,
    /// Holds the vault whose audit chain key hashes the events.
    codec: Codec,
    /// Final versions of touched case rows, in first-touch order.
    cases: Vec<cases::Model>,
    index: HashMap<String, usize>,
    events: Vec<case_events::ActiveModel>,
    effects: Vec<EffectRow>,
    /// Cases for which a KIV removal is enqueued: re-checked in `flush`.
    removals: Vec<String>,
    /// Cases that ended: their pending effects are cancelled.
    terminal: Vec<String>,
    /// Cases that came to need attention: their pending revocation-check timers are cancelled
    /// (an operator's retry arms new ones; an old deadline must not cut the new round short).
    parked: Vec<String>,
    appended: Vec<CaseEvent>,
}

impl ChangeSet {
    pub(crate) fn new(timing: Timing, codec: &Codec) -> Self {
        Self {
            timing,
            codec: codec.clone(),
            cases: Vec::new(),
            index: HashMap::new(),
            events: Vec::new(),
            effects: Vec::new(),
            removals: Vec::new(),
            parked: Vec::new(),
            terminal: Vec::new(),
            appended: Vec::new(),
        }
    }

    /// Marks the row as changed; `flush` writes its latest version.
    pub(crate) fn touch(&mut self, model: &cases::Model) {
        match self.index.get(&model.id) {
            Some(&i) => self.cases[i] = model.clone(),
            None => {
                self.index.insert(model.id.clone(), self.cases.len());
                self.cases.push(model.clone());
            }
        }
    }

    /// Takes over `other`'s writes (planned with the same timing and codec), after its own.
    pub(crate) fn absorb(&mut self, other: ChangeSet) {
        for model in &other.cases {
            self.touch(model);
        }
        self.events.extend(other.events);
        self.effects.extend(other.effects);
        self.removals.extend(other.removals);
        self.terminal.extend(other.terminal);
        self.parked.extend(other.parked);
        self.appended.extend(other.appended);
    }

    /// Whether `flush` enqueues effects (new work for the engine).
    pub(crate) fn enqueues(&self) -> bool {
        !self.effects.is_empty()
    }

    /// Forgets the row: `flush` writes its events and effects but not the row itself (a new
    /// case, which its creator inserts as it stands after its first change).
    pub(crate) fn untouch(&mut self, id: &str) {
        if let Some(i) = self.index.remove(id) {
            self.cases.remove(i);
            for v in self.index.values_mut() {
                if *v > i {
                    *v -= 1;
                }
            }
        }
    }

    /// Applies `event` to an in-memory row through `transition`. Returns whether anything
    /// changed (a repeat that changes nothing records nothing).
    pub(crate) fn event(
        &mut self,
        model: &mut cases::Model,
        event: &Event,
        meta: &EventMeta,
    ) -> Result<bool, StoreError> {
        // Decided under the row lock: of two concurrent confirmations with different
        // references, the second is refused rather than silently dropped.
        if let Event::RevocationConfirmed { reference, .. } = event
            && model
                .revocation_reference
                .as_ref()
                .is_some_and(|r| r != reference)
        {
            return Err(TransitionError::ConflictingReference.into());
        }
        let outcome = transition(saga_of(model)?, event)?;
        match outcome.audit {
            Some(kind) => {
                self.change(
                    model,
                    outcome.saga,
                    kind,
                    &outcome.effects,
                    meta,
                    Some(event),
                )?;
                Ok(true)
            }
            None => {
                // Nothing to record, but possibly work to schedule (a poll that found no outcome
                // yet polls again).
                self.schedule(model, &outcome.effects, meta.at);
                Ok(false)
            }
        }
    }

    /// An audit event that changes no state.
    pub(crate) fn audit(
        &mut self,
        model: &mut cases::Model,
        kind: &str,
        meta: &EventMeta,
    ) -> Result<(), StoreError> {
        let saga = saga_of(model)?;
        self.change(model, saga, kind, &[], meta, None)
    }

    /// Plans a state change on the in-memory row: the new row values, the audit event (chained
    /// to the row's last hash) and the effects.
    pub(crate) fn change(
        &mut self,
        model: &mut cases::Model,
        saga: Saga,
        kind: &str,
        effects: &[Effect],
        meta: &EventMeta,
        event: Option<&Event>,
    ) -> Result<(), StoreError> {
        let before = State::from_str_opt(&model.state);
        let seq = model.last_seq + 1;
        let prev = if model.last_hash.is_empty() {
            GENESIS_HASH.to_owned()
        } else {
            model.last_hash.clone()
        };
        let vault = self.codec.vault();
        let (key, key_id) = (vault.audit_chain_key(), vault.key_id());
        let hash = keyed_hash(
            key,
            &key_id,
            &prev,
            &model.id,
            seq,
            kind,
            saga.state.as_str(),
            meta,
        );

        set_saga(model, &saga);
        model.updated_at = meta.at.0;
        model.version += 1;
        model.last_seq = seq;
        model.last_hash = hash.clone();
        let row = HeadRow {
            state: model.state.clone(),
            updated_at: model.updated_at,
            version: model.version,
        };
        model.head_seal = Some(head_seal(key, &key_id, &model.id, seq, &hash, Some(&row)));
        if saga.state == State::NeedsAttention && before != Some(State::NeedsAttention) {
            self.parked.push(model.id.clone());
        }
        if saga.state.is_terminal() {
            // Frees the card number for a new case.
            model.active_card_number = None;
            // The retention periods count from the first terminal state.
            model.ended_at.get_or_insert(meta.at.0);
            self.terminal.push(model.id.clone());
        }
        if before != Some(saga.state) {
            let explains = matches!(
                saga.state,
                State::NeedsAttention | State::Rejected | State::Cancelled
            ) || kind == "operator_resolved";
            model.state_reason = (explains && !meta.detail.is_empty()).then(|| meta.detail.clone());
        }
        match event {
            Some(Event::ReportSent) => model.reported_at = Some(meta.at.0),
            Some(Event::HeadNotified) if model.head_notified_at.is_none() => {
                model.head_notified_at = Some(meta.at.0)
            }
            Some(Event::RevocationConfirmed {
                reference,
                certificates,
            }) if model.revocation_confirmed_at.is_none() => {
                model.revocation_confirmed_at = Some(meta.at.0);
                model.revocation_reference = Some(reference.clone());
                if !certificates.is_empty() {
                    model.revoked_certificates = Some(
                        serde_json::to_string(certificates)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    );
                }
            }
            _ => {}
        }
        let appended = CaseEvent {
            case_id: CaseId::parse(&model.id)
                .ok_or_else(|| StoreError::Corrupt("case id".into()))?,
            sequence: seq,
            kind: kind.to_owned(),
            state: saga.state,
            actor: meta.actor.clone(),
            at: meta.at,
            trace_id: meta.trace_id.clone(),
            detail: meta.detail.clone(),
            hash,
            key_id: Some(key_id),
        };
        self.events.push(event_row(&appended, prev));
        self.appended.push(appended);
        self.schedule(model, effects, meta.at);
        self.touch(model);
        Ok(())
    }

    /// Effects to enqueue for the case, each under its stable key and due after its delay.
    fn schedule(&mut self, model: &cases::Model, effects: &[Effect], now: Timestamp) {
        for effect in effects {
            if effect.step == Step::PollOutcome && !self.timing.poll_outcome {
                continue;
            }
            if effect.step == Step::RemoveKiv {
                self.removals.push(model.id.clone());
            }
            let case_id = &model.id;
            let key = match effect.step {
                Step::Remind(n) => format!("{case_id}:remind:{n}:{}", model.last_seq),
                s if s.repeatable() => format!("{case_id}:{}:{}", s.name(), model.last_seq),
                s => format!("{case_id}:{}", s.name()),
            };
            let delay = match effect.delay {
                Delay::Now => 0,
                // The longer the case has waited for the outcome, the longer until the next
                // poll (`Timing::poll_delay`): waiting cases cost next to nothing.
                Delay::PollInterval => {
                    let waited = model
                        .reported_at
                        .map_or(0, |r| u64::try_from(now.0.saturating_sub(r)).unwrap_or(0));
                    micros(
                        self.timing
                            .poll_delay(std::time::Duration::from_micros(waited)),
                    )
                }
                Delay::RemindAfter => micros(self.timing.remind_after),
                Delay::EscalateAfter => micros(self.timing.escalate_after),
                Delay::VerifyWithin => micros(self.timing.verify_within),
                Delay::At(t) => Ord::max(t.0.saturating_sub(now.0), 0),
            };
            let n = match effect.step {
                Step::Remind(n) => i64::from(n),
                _ => 0,
            };
            self.effects.push(EffectRow {
                key,
                case_id: case_id.clone(),
                step: effect.step.name(),
                n,
                due_at: now.0.saturating_add(delay),
                planned_at: now.0,
            });
        }
    }

    /// Writes the change set in `txn`: case rows, audit events, then (after the invariant
    /// check) effects, then cancels what ended cases still had pending. Returns the appended
    /// events, to publish once the caller has committed.
    pub(crate) async fn flush(
        self,
        txn: &DatabaseTransaction,
    ) -> Result<Vec<CaseEvent>, StoreError> {
        for chunk in self.cases.chunks(CASES_PER_STATEMENT) {
            update_cases(txn, chunk).await?;
        }
        if !self.events.is_empty() {
            case_events::Entity::insert_many(self.events)
                .exec_without_returning(txn)
                .await
                .map_err(StoreError::Unavailable)?;
        }
        if !self.removals.is_empty() {
            assert_revocation_recorded(txn, &self.removals).await?;
        }
        for chunk in self.effects.chunks(EFFECTS_PER_STATEMENT) {
            enqueue(txn, chunk).await?;
        }
        if !self.parked.is_empty() {
            effects::Entity::update_many()
                .col_expr(effects::Column::Status, Expr::value("cancelled"))
                .col_expr(
                    effects::Column::LeaseOwner,
                    Expr::value(Value::String(None)),
                )
                .col_expr(
                    effects::Column::LeaseUntil,
                    Expr::value(Value::BigInt(None)),
                )
                .col_expr(
                    effects::Column::UpdatedAt,
                    Expr::value(crate::clock::now().0),
                )
                .filter(effects::Column::Status.eq("pending"))
                .filter(
                    effects::Column::Step
                        .is_in([Step::VerifyRevocation.name(), Step::VerifyDeadline.name()]),
                )
                .filter(effects::Column::CaseId.is_in(self.parked))
                .exec(txn)
                .await
                .map_err(StoreError::Unavailable)?;
        }
        if !self.terminal.is_empty() {
            let now = crate::clock::now();
            effects::Entity::update_many()
                .col_expr(effects::Column::Status, Expr::value("cancelled"))
                .col_expr(
                    effects::Column::LeaseOwner,
                    Expr::value(Value::String(None)),
                )
                .col_expr(
                    effects::Column::LeaseUntil,
                    Expr::value(Value::BigInt(None)),
                )
                .col_expr(effects::Column::UpdatedAt, Expr::value(now.0))
                .filter(effects::Column::Status.eq("pending"))
                .filter(effects::Column::CaseId.is_in(self.terminal))
                .exec(txn)
                .await
                .map_err(StoreError::Unavailable)?;
        }
        Ok(self.appended)
    }
}

/// Writes the changed columns of case rows, one statement per chunk: `UPDATE … FROM (VALUES
/// …)` works on SQLite ≥ 3.33 and PostgreSQL alike, whose VALUES columns are both named
/// `column1`, `column2`, ….
async fn update_cases(txn: &DatabaseTransaction, rows: &[cases::Model]) -> Result<(), StoreError> {
    exec(txn, &update_cases_statement(rows)).await.map(|_| ())
}

fn update_cases_statement(rows: &[cases::Model]) -> UpdateStatement {
    use cases::Column as C;
    // Column 1 is the id; the rest in this order.
    let columns = [
        C::State,
        C::AttentionFrom,
        C::SnapshotState,
        C::KivSnapshot,
        C::ReportedAt,
        C::RevocationConfirmedAt,
        C::RevocationReference,
        C::StateReason,
        C::ActiveCardNumber,
        C::UpdatedAt,
        C::Version,
        C::LastSeq,
        C::LastHash,
        C::HeadNotifiedAt,
        C::EndedAt,
        C::HeadSeal,
        C::RevocationCheck,
        C::RevokedCertificates,
    ];
    let values = rows.iter().map(|m| {
        ValueTuple::Many(vec![
            m.id.clone().into(),
            m.state.clone().into(),
            m.attention_from.clone().into(),
            m.snapshot_state.clone().into(),
            m.kiv_snapshot.clone().into(),
            m.reported_at.into(),
            m.revocation_confirmed_at.into(),
            m.revocation_reference.clone().into(),
            m.state_reason.clone().into(),
            m.active_card_number.clone().into(),
            m.updated_at.into(),
            m.version.into(),
            m.last_seq.into(),
            m.last_hash.clone().into(),
            m.head_notified_at.into(),
            m.ended_at.into(),
            m.head_seal.clone().into(),
            m.revocation_check.clone().into(),
            m.revoked_certificates.clone().into(),
        ])
    });
    let v = |i: usize| Expr::col(("v", format!("column{i}")));
    let mut update = Query::update();
    update
        .table(cases::Entity)
        .values(columns.iter().enumerate().map(|(i, c)| (*c, v(i + 2))))
        .from(TableRef::ValuesList(values.collect(), "v".into_iden()))
        .and_where(Expr::col((cases::Entity, C::Id)).eq(v(1)));
    update
}

/// Inserts effect rows. A key seen before (an operator retry of a failed step, a repeated poll)
/// is re-armed, not duplicated: the connector sees the same key again. Re-arming an effect that
/// is pending but claimed takes it back: its worker loses the lease (its result is dropped) and
/// the effect runs again under the same key — rather than the re-arm being lost if that worker
/// finds the step stale and skips it.
async fn enqueue(txn: &DatabaseTransaction, rows: &[EffectRow]) -> Result<(), StoreError> {
    exec(txn, &enqueue_statement(rows)?).await.map(|_| ())
}

fn enqueue_statement(rows: &[EffectRow]) -> Result<InsertStatement, StoreError> {
    use effects::Column as C;
    let mut insert = Query::insert();
    insert.into_table(effects::Entity).columns([
        C::Key,
        C::CaseId,
        C::Step,
        C::N,
        C::DueAt,
        C::Status,
        C::Attempts,
        C::CreatedAt,
        C::UpdatedAt,
    ]);
    for e in rows {
        insert
            .values([
                e.key.clone().into(),
                e.case_id.clone().into(),
                e.step.into(),
                e.n.into(),
                e.due_at.into(),
                "pending".into(),
                0i64.into(),
                e.planned_at.into(),
                e.planned_at.into(),
            ])
            .map_err(|e| StoreError::Invariant(e.to_string()))?;
    }
    let current = |c: C| Expr::col((effects::Entity, c));
    insert.on_conflict(
        OnConflict::column(C::Key)
            .update_columns([C::DueAt, C::UpdatedAt])
            .value(C::Status, "pending")
            .value(C::Attempts, 0i64)
            .value(C::LeaseOwner, Value::String(None))
            .value(C::LeaseUntil, Value::BigInt(None))
            .value(C::LastError, Value::String(None))
            .action_and_where(
                current(C::Status)
                    .ne("pending")
                    .or(current(C::LeaseOwner).is_not_null()),
            )
            .to_owned(),
    );
    Ok(insert)
}

/// Architecture invariant, checked where removals are enqueued: each case's revocation
/// confirmation must already be durable in this transaction's view of the rows, and — with the
/// revocation check on — its verification (`revocation_check` not `required`).
async fn assert_revocation_recorded(
    txn: &impl ConnectionTrait,
    case_ids: &[String],
) -> Result<(), StoreError> {
    let mut ids: Vec<&String> = case_ids.iter().collect();
    ids.sort();
    ids.dedup();
    let confirmed: Vec<String> = cases::Entity::find()
        .select_only()
        .column(cases::Column::Id)
        .filter(cases::Column::RevocationConfirmedAt.is_not_null())
        .filter(cases::Column::RevocationCheck.ne(Verification::Required.as_str()))
        .filter(cases::Column::Id.is_in(ids.iter().map(|id| (*id).clone())))
        .into_tuple()
        .all(txn)
        .await
        .map_err(StoreError::Unavailable)?;
    if confirmed.len() != ids.len() {
        return Err(StoreError::Invariant(
            "KIV removal enqueued for a case without a recorded (and, with the check on, verified) revocation confirmation".into(),
        ));
    }
    Ok(())
}
