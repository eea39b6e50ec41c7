//! `CaseStore` on sea-orm: SQLite (embedded default) and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use migration::MigratorTrait;
use ring::digest;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement, TransactionTrait, TryInsertResult, Value,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};

use super::entities::{case_events, cases, effects, idempotency_keys};
use super::{
    CaseStore, CreateCase, Created, EventMeta, Finished, ListQuery, StoreError, Timing, Work,
    WorkResult,
};
use crate::domain::saga::{
    Delay, Effect, Event, Saga, SnapshotState, Step, initial_effects, transition,
};
use crate::domain::{
    CardHolder, CardNumber, CaseEvent, CaseId, Deregistration, Email, Employment, HsaId,
    KivRemovalRoute, NewDeregistration, PersonName, Personnummer, Reason, Reporter, State,
    Timestamp,
};
use crate::privacy::{Vault, hex};

const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The personal data of a case, stored only as one AEAD ciphertext.
#[derive(Serialize, Deserialize)]
struct Sensitive {
    pnr: String,
    holder_name: String,
    holder_email: Option<String>,
    reporter_name: String,
    reporter_email: String,
}

#[derive(Clone)]
pub struct SeaStore {
    db: DatabaseConnection,
    vault: Arc<Vault>,
    timing: Timing,
    events_tx: broadcast::Sender<CaseEvent>,
    work: Arc<Notify>,
}

impl std::fmt::Debug for SeaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeaStore")
            .field("backend", &self.db.get_database_backend())
            .finish_non_exhaustive()
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl SeaStore {
    /// Connects without migrating. SQLite gets WAL, full sync and one connection: a single
    /// writer keeps latency flat where several would queue in SQLite's busy handler.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
        vault: Arc<Vault>,
    ) -> Result<Self, DbErr> {
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.acquire_timeout(acquire_timeout)
            .connect_timeout(acquire_timeout)
            .sqlx_logging(false);
        if url.starts_with("sqlite:") {
            opts.max_connections(1).min_connections(1);
            opts.map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(5))
                    .create_if_missing(true)
            });
        } else {
            opts.max_connections(max_connections.max(1));
        }
        let db = Database::connect(opts).await?;
        let (events_tx, _) = broadcast::channel(4096);
        Ok(Self {
            db,
            vault,
            timing: Timing::default(),
            events_tx,
            work: Arc::new(Notify::new()),
        })
    }

    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    pub async fn migrate(&self) -> Result<(), DbErr> {
        migration::Migrator::up(&self.db, None).await
    }

    fn is_postgres(&self) -> bool {
        self.db.get_database_backend() == DbBackend::Postgres
    }

    /// Statement with `?` placeholders, renumbered to `$n` for PostgreSQL.
    fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        let backend = self.db.get_database_backend();
        if backend == DbBackend::Postgres {
            let mut out = String::with_capacity(sql.len() + 8);
            let mut n = 0;
            for c in sql.chars() {
                if c == '?' {
                    n += 1;
                    out.push_str(&format!("${n}"));
                } else {
                    out.push(c);
                }
            }
            Statement::from_sql_and_values(backend, out, values)
        } else {
            Statement::from_sql_and_values(backend, sql, values)
        }
    }

    fn seal(&self, case_id: &CaseId, report: &NewDeregistration) -> Result<Vec<u8>, StoreError> {
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
        self.vault
            .seal(&case_id.to_string(), &json)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    fn snapshot_context(id: &str) -> String {
        format!("{id}/kiv-snapshot")
    }

    fn to_domain(&self, m: &cases::Model) -> Result<Deregistration, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("case {}: {what}", m.id));
        let plain = self
            .vault
            .open(&m.id, &m.sensitive)
            .map_err(|_| corrupt("personal data does not decrypt"))?;
        let s: Sensitive =
            serde_json::from_slice(&plain).map_err(|_| corrupt("personal data is malformed"))?;
        let hsa = |v: &str, what: &str| HsaId::parse(v).map_err(|_| corrupt(what));
        let name = |v: &str| PersonName::parse(v).map_err(|_| corrupt("name"));
        let email = |v: &str| Email::parse(v).map_err(|_| corrupt("e-mail"));
        let state = |v: &str| State::from_str_opt(v).ok_or_else(|| corrupt("state"));
        Ok(Deregistration {
            id: CaseId::parse(&m.id).ok_or_else(|| corrupt("id"))?,
            care_provider: hsa(&m.care_provider_hsa_id, "care provider")?,
            report: NewDeregistration {
                care_unit: hsa(&m.care_unit_hsa_id, "care unit")?,
                card_holder: CardHolder {
                    personnummer: Personnummer::parse(&s.pnr)
                        .map_err(|_| corrupt("personnummer"))?,
                    full_name: name(&s.holder_name)?,
                    email: s.holder_email.as_deref().map(email).transpose()?,
                },
                card_number: CardNumber::parse(&m.card_number)
                    .map_err(|_| corrupt("card number"))?,
                reason: Reason::from_str_opt(&m.reason).ok_or_else(|| corrupt("reason"))?,
                card_received_at: Timestamp(m.card_received_at),
                reported_by: Reporter {
                    hsa_id: hsa(&m.reporter_hsa_id, "reporter")?,
                    full_name: name(&s.reporter_name)?,
                    email: email(&s.reporter_email)?,
                },
                route: KivRemovalRoute::from_str_opt(&m.kiv_removal_route)
                    .ok_or_else(|| corrupt("route"))?,
            },
            state: state(&m.state)?,
            state_reason: m.state_reason.clone(),
            revocation_reference: m.revocation_reference.clone(),
            created_at: Timestamp(m.created_at),
            updated_at: Timestamp(m.updated_at),
            attention_from: m.attention_from.as_deref().map(state).transpose()?,
            snapshot: SnapshotState::from_str_opt(&m.snapshot_state)
                .ok_or_else(|| corrupt("snapshot state"))?,
            reported_at: m.reported_at.map(Timestamp),
            revocation_confirmed_at: m.revocation_confirmed_at.map(Timestamp),
            trace_id: m.trace_id.clone(),
        })
    }

    async fn find_case<C: ConnectionTrait>(
        &self,
        conn: &C,
        id: &CaseId,
        lock: bool,
    ) -> Result<Option<cases::Model>, StoreError> {
        let mut q = cases::Entity::find_by_id(id.to_string());
        if lock && self.is_postgres() {
            q = q.lock_exclusive();
        }
        q.one(conn).await.map_err(StoreError::Unavailable)
    }

    async fn create_in(
        &self,
        txn: &DatabaseTransaction,
        cmd: &CreateCase,
        appended: &mut Vec<CaseEvent>,
    ) -> Result<Created, StoreError> {
        let id = cmd.id.to_string();
        // The case row goes first so the idempotency record's foreign key holds; a conflict on
        // the active card number is only reported after the idempotency check below, since a
        // retry of the request that created the active case must replay, not conflict.
        let case = cases::ActiveModel {
            id: Set(id.clone()),
            care_provider_hsa_id: Set(cmd.care_provider.to_string()),
            care_unit_hsa_id: Set(cmd.report.care_unit.to_string()),
            card_number: Set(cmd.report.card_number.to_string()),
            active_card_number: Set(Some(cmd.report.card_number.to_string())),
            holder_pseudonym: Set(self.vault.pseudonym(&cmd.report.card_holder.personnummer)),
            sensitive: Set(self.seal(&cmd.id, &cmd.report)?),
            reason: Set(cmd.report.reason.as_str().to_owned()),
            kiv_removal_route: Set(cmd.report.route.as_str().to_owned()),
            card_received_at: Set(cmd.report.card_received_at.0),
            reporter_hsa_id: Set(cmd.report.reported_by.hsa_id.to_string()),
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
        };
        let inserted = cases::Entity::insert(case)
            .on_conflict(
                OnConflict::column(cases::Column::ActiveCardNumber)
                    .do_nothing()
                    .to_owned(),
            )
            .try_insert()
            .exec_without_returning(txn)
            .await
            .map_err(StoreError::Unavailable)?;
        let card_free = matches!(inserted, TryInsertResult::Inserted(n) if n > 0);

        if let Some(request_id) = &cmd.request_id {
            let existing = idempotency_keys::Entity::find_by_id((
                cmd.principal.to_string(),
                request_id.clone(),
            ))
            .one(txn)
            .await
            .map_err(StoreError::Unavailable)?;
            if let Some(prior) = existing {
                if prior.fingerprint != cmd.fingerprint {
                    return Err(StoreError::RequestIdReused);
                }
                let case_id = CaseId::parse(&prior.case_id)
                    .ok_or_else(|| StoreError::Corrupt("idempotency record".into()))?;
                let model = self
                    .find_case(txn, &case_id, false)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                return Ok(Created::Replayed(self.to_domain(&model)?));
            }
            if card_free {
                let key = idempotency_keys::ActiveModel {
                    principal_hsa_id: Set(cmd.principal.to_string()),
                    request_id: Set(request_id.clone()),
                    fingerprint: Set(cmd.fingerprint.clone()),
                    case_id: Set(id.clone()),
                    created_at: Set(cmd.meta.at.0),
                };
                // A concurrent twin that committed first makes this a no-op on PostgreSQL
                // (it waits for the twin); the caller retries and then replays.
                let r = idempotency_keys::Entity::insert(key)
                    .on_conflict_do_nothing()
                    .exec_without_returning(txn)
                    .await
                    .map_err(StoreError::Unavailable)?;
                if !matches!(r, TryInsertResult::Inserted(n) if n > 0) {
                    return Err(StoreError::ConcurrentRetry);
                }
            }
        }
        if !card_free {
            return Err(StoreError::ActiveCaseExists);
        }
        let model = self
            .find_case(txn, &cmd.id, false)
            .await?
            .ok_or(StoreError::NotFound)?;
        let saga = Saga::new(cmd.report.route);
        let (model, event) = self
            .write_change(
                txn,
                model,
                saga,
                "accepted",
                &initial_effects(&saga),
                &cmd.meta,
                None,
            )
            .await?;
        appended.push(event);
        Ok(Created::New(self.to_domain(&model)?))
    }

    /// Writes the case row for `saga`, appends the audit event and enqueues `effects` — the one
    /// path every state change takes.
    #[allow(clippy::too_many_arguments)]
    async fn write_change(
        &self,
        txn: &DatabaseTransaction,
        model: cases::Model,
        saga: Saga,
        kind: &str,
        effects: &[Effect],
        meta: &EventMeta,
        event: Option<&Event>,
    ) -> Result<(cases::Model, CaseEvent), StoreError> {
        let before = State::from_str_opt(&model.state);
        let seq = model.last_seq + 1;
        let prev = if model.last_hash.is_empty() {
            GENESIS_HASH.to_owned()
        } else {
            model.last_hash.clone()
        };
        let case_id = model.id.clone();
        let hash = event_hash(&prev, &case_id, seq, kind, saga.state.as_str(), meta);

        let mut am: cases::ActiveModel = model.clone().into();
        am.state = Set(saga.state.as_str().to_owned());
        am.attention_from = Set(saga.attention_from.map(|s| s.as_str().to_owned()));
        am.snapshot_state = Set(saga.snapshot.as_str().to_owned());
        am.updated_at = Set(meta.at.0);
        am.version = Set(model.version + 1);
        am.last_seq = Set(seq);
        am.last_hash = Set(hash.clone());
        if saga.state.is_terminal() {
            // Frees the card number for a new case.
            am.active_card_number = Set(None);
        }
        if before != Some(saga.state) {
            let explains = matches!(
                saga.state,
                State::NeedsAttention | State::Rejected | State::Cancelled
            ) || kind == "operator_resolved";
            am.state_reason = Set(if explains && !meta.detail.is_empty() {
                Some(meta.detail.clone())
            } else {
                None
            });
        }
        match event {
            Some(Event::ReportSent) => am.reported_at = Set(Some(meta.at.0)),
            Some(Event::RevocationConfirmed { reference })
                if model.revocation_confirmed_at.is_none() =>
            {
                am.revocation_confirmed_at = Set(Some(meta.at.0));
                am.revocation_reference = Set(Some(reference.clone()));
            }
            _ => {}
        }
        let updated = cases::Entity::update(am)
            .exec(txn)
            .await
            .map_err(StoreError::Unavailable)?;

        let row = case_events::ActiveModel {
            case_id: Set(case_id.clone()),
            seq: Set(seq),
            kind: Set(kind.to_owned()),
            state: Set(saga.state.as_str().to_owned()),
            actor: Set(meta.actor.clone()),
            occurred_at: Set(meta.at.0),
            trace_id: Set(meta.trace_id.clone()),
            detail: Set(meta.detail.clone()),
            prev_hash: Set(prev),
            hash: Set(hash.clone()),
        };
        case_events::Entity::insert(row)
            .exec_without_returning(txn)
            .await
            .map_err(StoreError::Unavailable)?;

        for effect in effects {
            if effect.step == Step::PollOutcome && !self.timing.poll_outcome {
                continue;
            }
            if effect.step == Step::RemoveKiv {
                self.assert_revocation_recorded(txn, &case_id).await?;
            }
            self.enqueue(txn, &case_id, seq, effect, meta.at).await?;
        }
        if saga.state.is_terminal() {
            self.db_exec(
                txn,
                "UPDATE effects SET status = 'cancelled', lease_owner = NULL, lease_until = NULL, updated_at = ? \
                 WHERE case_id = ? AND status = 'pending'",
                vec![meta.at.0.into(), case_id.clone().into()],
            )
            .await?;
        }
        let id = CaseId::parse(&case_id).ok_or_else(|| StoreError::Corrupt("case id".into()))?;
        Ok((
            updated,
            CaseEvent {
                case_id: id,
                sequence: seq,
                kind: kind.to_owned(),
                state: saga.state,
                actor: meta.actor.clone(),
                at: meta.at,
                trace_id: meta.trace_id.clone(),
                detail: meta.detail.clone(),
                hash,
            },
        ))
    }

    /// Architecture invariant, checked where the removal is enqueued: the case's revocation
    /// confirmation must already be durable in this transaction's view of the row.
    async fn assert_revocation_recorded(
        &self,
        txn: &DatabaseTransaction,
        case_id: &str,
    ) -> Result<(), StoreError> {
        let rows = txn
            .query_all_raw(self.stmt(
                "SELECT revocation_confirmed_at FROM cases WHERE id = ?",
                vec![case_id.to_owned().into()],
            ))
            .await
            .map_err(StoreError::Unavailable)?;
        let confirmed: Option<i64> = rows
            .first()
            .and_then(|r| r.try_get::<Option<i64>>("", "revocation_confirmed_at").ok())
            .flatten();
        if confirmed.is_none() {
            return Err(StoreError::Invariant(format!(
                "KIV removal for case {case_id} without a recorded revocation confirmation"
            )));
        }
        Ok(())
    }

    async fn enqueue(
        &self,
        txn: &DatabaseTransaction,
        case_id: &str,
        seq: i64,
        effect: &Effect,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let n = match effect.step {
            Step::Remind(n) => i64::from(n),
            _ => 0,
        };
        let key = match effect.step {
            Step::Remind(n) => format!("{case_id}:remind:{n}"),
            s if s.repeatable() => format!("{case_id}:{}:{seq}", s.name()),
            s => format!("{case_id}:{}", s.name()),
        };
        let delay = match effect.delay {
            Delay::Now => 0,
            Delay::PollInterval => micros(self.timing.poll_interval),
            Delay::RemindAfter => micros(self.timing.remind_after),
            Delay::EscalateAfter => micros(self.timing.escalate_after),
        };
        // A key seen before (an operator retry of a failed step) is re-armed, not duplicated:
        // the connector sees the same key again.
        self.db_exec(
            txn,
            "INSERT INTO effects (key, case_id, step, n, due_at, status, attempts, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET status = 'pending', due_at = excluded.due_at, attempts = 0, \
             lease_owner = NULL, lease_until = NULL, last_error = NULL, updated_at = excluded.updated_at \
             WHERE effects.status <> 'pending'",
            vec![
                key.into(),
                case_id.to_owned().into(),
                effect.step.name().to_owned().into(),
                n.into(),
                now.0.saturating_add(delay).into(),
                now.0.into(),
                now.0.into(),
            ],
        )
        .await
    }

    async fn db_exec(
        &self,
        txn: &DatabaseTransaction,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<(), StoreError> {
        txn.execute_raw(self.stmt(sql, values))
            .await
            .map(|_| ())
            .map_err(StoreError::Unavailable)
    }

    /// Applies `event` to the case inside `txn`. Returns the case and the appended audit
    /// event (none when the event changed nothing).
    async fn apply_in(
        &self,
        txn: &DatabaseTransaction,
        id: &CaseId,
        owner: Option<&HsaId>,
        event: &Event,
        meta: &EventMeta,
    ) -> Result<(Deregistration, Option<CaseEvent>), StoreError> {
        let model = self
            .find_case(txn, id, true)
            .await?
            .ok_or(StoreError::NotFound)?;
        if owner.is_some_and(|o| o.as_str() != model.care_provider_hsa_id) {
            return Err(StoreError::NotFound);
        }
        let current = self.to_domain(&model)?;
        let outcome = transition(current.saga(), event)?;
        let Some(kind) = outcome.audit else {
            // Nothing to record, but possibly work to schedule (a poll that found no outcome
            // yet polls again).
            for effect in &outcome.effects {
                if effect.step == Step::PollOutcome && !self.timing.poll_outcome {
                    continue;
                }
                if effect.step == Step::RemoveKiv {
                    self.assert_revocation_recorded(txn, &model.id).await?;
                }
                self.enqueue(txn, &model.id, model.last_seq, effect, meta.at)
                    .await?;
            }
            return Ok((current, None));
        };
        let (model, appended) = self
            .write_change(
                txn,
                model,
                outcome.saga,
                kind,
                &outcome.effects,
                meta,
                Some(event),
            )
            .await?;
        Ok((self.to_domain(&model)?, Some(appended)))
    }

    fn publish(&self, events: Vec<CaseEvent>, new_work: bool) {
        for e in events {
            // No receivers is fine: nobody is watching.
            let _ = self.events_tx.send(e);
        }
        if new_work {
            self.work.notify_waiters();
        }
    }

    async fn finish_one(
        &self,
        txn: &DatabaseTransaction,
        owner: &str,
        f: &Finished,
        now: Timestamp,
        appended: &mut Vec<CaseEvent>,
    ) -> Result<(), StoreError> {
        let (status, due, error): (&str, Option<i64>, Option<String>) = match &f.result {
            WorkResult::Done { .. } => ("done", None, None),
            WorkResult::Retry { at, error } => ("pending", Some(at.0), Some(error.clone())),
            WorkResult::Failed { error } => ("failed", None, Some(error.clone())),
            WorkResult::Skipped => ("cancelled", None, None),
        };
        // Fencing: only the lease holder may record a result.
        let fenced = txn
            .execute_raw(self.stmt(
                "UPDATE effects SET status = ?, attempts = attempts + 1, due_at = COALESCE(?, due_at), \
                 lease_owner = NULL, lease_until = NULL, last_error = ?, updated_at = ? \
                 WHERE key = ? AND lease_owner = ? AND status = 'pending'",
                vec![
                    status.to_owned().into(),
                    due.into(),
                    error.into(),
                    now.0.into(),
                    f.work.key.clone().into(),
                    owner.to_owned().into(),
                ],
            ))
            .await
            .map_err(StoreError::Unavailable)?;
        if fenced.rows_affected() != 1 {
            tracing::warn!(key = %f.work.key, "lease lost before the result was recorded; dropped");
            return Ok(());
        }
        let case = self
            .find_case(txn, &f.work.case_id, false)
            .await?
            .ok_or(StoreError::NotFound)?;
        let trace_id = case.trace_id.clone();
        let meta = |detail: String| EventMeta {
            actor: "system".into(),
            trace_id: trace_id.clone(),
            at: now,
            detail,
        };
        let event = match &f.result {
            WorkResult::Done {
                event,
                snapshot,
                detail,
            } => {
                if let Some(snap) = snapshot {
                    let json =
                        serde_json::to_vec(snap).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    let sealed = self
                        .vault
                        .seal(&Self::snapshot_context(&case.id), &json)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    self.db_exec(
                        txn,
                        "UPDATE cases SET kiv_snapshot = ? WHERE id = ?",
                        vec![sealed.into(), case.id.clone().into()],
                    )
                    .await?;
                }
                event.clone().map(|e| (e, detail.clone()))
            }
            WorkResult::Failed { error } => Some((
                Event::StepFailed {
                    step: f.work.step,
                    reason: error.clone(),
                },
                format!("{} failed: {error}", f.work.step.name()),
            )),
            WorkResult::Retry { .. } | WorkResult::Skipped => None,
        };
        if let Some((event, detail)) = event {
            match self
                .apply_in(txn, &f.work.case_id, None, &event, &meta(detail))
                .await
            {
                Ok((_, Some(e))) => appended.push(e),
                Ok((_, None)) => {}
                // A result the case no longer accepts (it moved on meanwhile) is recorded as done
                // and otherwise ignored; storage errors abort the whole batch.
                Err(StoreError::Transition(t)) => {
                    tracing::info!(case_id = %f.work.case_id, step = f.work.step.name(), reason = %t, "stale step result ignored");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// True if every event's hash covers its predecessor's hash and its own fields.
pub fn verify_chain(events: &[CaseEvent]) -> bool {
    let mut prev = GENESIS_HASH.to_owned();
    for e in events {
        let meta = EventMeta {
            actor: e.actor.clone(),
            trace_id: e.trace_id.clone(),
            at: e.at,
            detail: e.detail.clone(),
        };
        let h = event_hash(
            &prev,
            &e.case_id.to_string(),
            e.sequence,
            &e.kind,
            e.state.as_str(),
            &meta,
        );
        if h != e.hash {
            return false;
        }
        prev = h;
    }
    true
}

/// SHA-256 over the previous hash and the event's fields, each length-prefixed.
pub(crate) fn event_hash(
    prev: &str,
    case_id: &str,
    seq: i64,
    kind: &str,
    state: &str,
    meta: &EventMeta,
) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let seq = seq.to_string();
    let at = meta.at.0.to_string();
    for part in [
        prev,
        case_id,
        &seq,
        kind,
        state,
        &meta.actor,
        &at,
        &meta.trace_id,
        &meta.detail,
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    hex(ctx.finish().as_ref())
}

fn parse_step(name: &str, n: i64) -> Option<Step> {
    Some(match name {
        "snapshot" => Step::Snapshot,
        "report" => Step::Report,
        "poll_outcome" => Step::PollOutcome,
        "remind" => Step::Remind(u32::try_from(n).ok()?),
        "escalate" => Step::Escalate,
        "notify" => Step::Notify,
        "remove_kiv" => Step::RemoveKiv,
        "restore_kiv" => Step::RestoreKiv,
        _ => return None,
    })
}

#[async_trait]
impl CaseStore for SeaStore {
    async fn create(&self, cmd: CreateCase) -> Result<Created, StoreError> {
        // One retry covers the race where a concurrent twin with the same request_id
        // committed between our insert and our look-up: the second pass replays it.
        for _ in 0..2 {
            let txn = self.db.begin().await.map_err(StoreError::Unavailable)?;
            let mut appended = Vec::new();
            match self.create_in(&txn, &cmd, &mut appended).await {
                Ok(Created::New(case)) => {
                    txn.commit().await.map_err(StoreError::Unavailable)?;
                    self.publish(appended, true);
                    return Ok(Created::New(case));
                }
                Ok(replayed) => {
                    txn.rollback().await.map_err(StoreError::Unavailable)?;
                    return Ok(replayed);
                }
                Err(StoreError::ConcurrentRetry) => {
                    txn.rollback().await.map_err(StoreError::Unavailable)?;
                }
                Err(e) => {
                    let _ = txn.rollback().await;
                    return Err(e);
                }
            }
        }
        Err(StoreError::ConcurrentRetry)
    }

    async fn get(&self, id: &CaseId) -> Result<Option<Deregistration>, StoreError> {
        self.find_case(&self.db, id, false)
            .await?
            .map(|m| self.to_domain(&m))
            .transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Deregistration>, StoreError> {
        let mut q = cases::Entity::find();
        if let Some(p) = &query.care_provider {
            q = q.filter(cases::Column::CareProviderHsaId.eq(p.to_string()));
        }
        if let Some(units) = &query.care_units {
            q = q.filter(cases::Column::CareUnitHsaId.is_in(units.iter().map(ToString::to_string)));
        }
        if !query.states.is_empty() {
            q = q.filter(cases::Column::State.is_in(query.states.iter().map(|s| s.as_str())));
        }
        if let Some(r) = query.route {
            q = q.filter(cases::Column::KivRemovalRoute.eq(r.as_str()));
        }
        match query.revocation_confirmed {
            Some(true) => q = q.filter(cases::Column::RevocationConfirmedAt.is_not_null()),
            Some(false) => q = q.filter(cases::Column::RevocationConfirmedAt.is_null()),
            None => {}
        }
        if let Some(s) = query.snapshot {
            q = q.filter(cases::Column::SnapshotState.eq(s.as_str()));
        }
        if let Some(after) = &query.after {
            q = q.filter(cases::Column::Id.gt(after.to_string()));
        }
        let rows = q
            .order_by_asc(cases::Column::Id)
            .limit(u64::from(query.limit))
            .all(&self.db)
            .await
            .map_err(StoreError::Unavailable)?;
        rows.iter().map(|m| self.to_domain(m)).collect()
    }

    async fn apply(
        &self,
        id: &CaseId,
        owner: Option<&HsaId>,
        event: &Event,
        meta: EventMeta,
    ) -> Result<Deregistration, StoreError> {
        let txn = self.db.begin().await.map_err(StoreError::Unavailable)?;
        let (case, appended) = self.apply_in(&txn, id, owner, event, &meta).await?;
        txn.commit().await.map_err(StoreError::Unavailable)?;
        self.publish(appended.into_iter().collect(), true);
        Ok(case)
    }

    async fn audit(&self, id: &CaseId, kind: &str, meta: EventMeta) -> Result<(), StoreError> {
        let txn = self.db.begin().await.map_err(StoreError::Unavailable)?;
        let model = self
            .find_case(&txn, id, true)
            .await?
            .ok_or(StoreError::NotFound)?;
        let saga = self.to_domain(&model)?.saga();
        let (_, event) = self
            .write_change(&txn, model, saga, kind, &[], &meta, None)
            .await?;
        txn.commit().await.map_err(StoreError::Unavailable)?;
        self.publish(vec![event], false);
        Ok(())
    }

    async fn events(&self, id: &CaseId) -> Result<Vec<CaseEvent>, StoreError> {
        let rows = case_events::Entity::find()
            .filter(case_events::Column::CaseId.eq(id.to_string()))
            .order_by_asc(case_events::Column::Seq)
            .all(&self.db)
            .await
            .map_err(StoreError::Unavailable)?;
        rows.into_iter()
            .map(|e| {
                Ok(CaseEvent {
                    case_id: id.clone(),
                    sequence: e.seq,
                    kind: e.kind,
                    state: State::from_str_opt(&e.state)
                        .ok_or_else(|| StoreError::Corrupt(format!("case {id}: event state")))?,
                    actor: e.actor,
                    at: Timestamp(e.occurred_at),
                    trace_id: e.trace_id,
                    detail: e.detail,
                    hash: e.hash,
                })
            })
            .collect()
    }

    async fn snapshot(&self, id: &CaseId) -> Result<Option<Employment>, StoreError> {
        let Some(model) = self.find_case(&self.db, id, false).await? else {
            return Err(StoreError::NotFound);
        };
        let Some(sealed) = &model.kiv_snapshot else {
            return Ok(None);
        };
        let plain = self
            .vault
            .open(&Self::snapshot_context(&model.id), sealed)
            .map_err(|_| {
                StoreError::Corrupt(format!("case {id}: KIV snapshot does not decrypt"))
            })?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("case {id}: KIV snapshot is malformed")))
    }

    async fn claim(
        &self,
        owner: &str,
        now: Timestamp,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Work>, StoreError> {
        // PostgreSQL: replicas skip rows another replica is claiming. SQLite has one writer,
        // so the statement is atomic as it stands.
        let sql = if self.is_postgres() {
            "UPDATE effects SET lease_owner = ?, lease_until = ? WHERE key IN ( \
               SELECT key FROM effects WHERE status = 'pending' AND due_at <= ? \
               AND (lease_until IS NULL OR lease_until < ?) ORDER BY due_at LIMIT ? FOR UPDATE SKIP LOCKED) \
             RETURNING key, case_id, step, n, attempts"
        } else {
            "UPDATE effects SET lease_owner = ?, lease_until = ? WHERE key IN ( \
               SELECT key FROM effects WHERE status = 'pending' AND due_at <= ? \
               AND (lease_until IS NULL OR lease_until < ?) ORDER BY due_at LIMIT ?) \
             RETURNING key, case_id, step, n, attempts"
        };
        let rows = self
            .db
            .query_all_raw(self.stmt(
                sql,
                vec![
                    owner.to_owned().into(),
                    now.0.saturating_add(micros(lease)).into(),
                    now.0.into(),
                    now.0.into(),
                    i64::from(limit).into(),
                ],
            ))
            .await
            .map_err(StoreError::Unavailable)?;
        rows.iter()
            .map(|r| {
                let get_s = |c: &str| {
                    r.try_get::<String>("", c)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))
                };
                let get_i = |c: &str| {
                    r.try_get::<i64>("", c)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))
                };
                let key = get_s("key")?;
                Ok(Work {
                    case_id: CaseId::parse(&get_s("case_id")?)
                        .ok_or_else(|| StoreError::Corrupt(format!("effect {key}: case id")))?,
                    step: parse_step(&get_s("step")?, get_i("n")?)
                        .ok_or_else(|| StoreError::Corrupt(format!("effect {key}: step")))?,
                    attempts: u32::try_from(get_i("attempts")?).unwrap_or(u32::MAX),
                    key,
                })
            })
            .collect()
    }

    async fn finish(&self, owner: &str, results: Vec<Finished>) -> Result<(), StoreError> {
        if results.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        let txn = self.db.begin().await.map_err(StoreError::Unavailable)?;
        let mut appended = Vec::new();
        for f in &results {
            self.finish_one(&txn, owner, f, now, &mut appended).await?;
        }
        txn.commit().await.map_err(StoreError::Unavailable)?;
        self.publish(appended, true);
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let row = effects::Entity::find()
            .filter(effects::Column::Status.eq("pending"))
            .order_by_asc(effects::Column::DueAt)
            .one(&self.db)
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(row.map(|r| Timestamp(r.due_at.max(r.lease_until.unwrap_or(0)))))
    }

    async fn expedite(&self, id: &CaseId) -> Result<(), StoreError> {
        let txn = self.db.begin().await.map_err(StoreError::Unavailable)?;
        self.db_exec(
            &txn,
            "UPDATE effects SET due_at = ? WHERE case_id = ? AND status = 'pending' AND step <> 'escalate'",
            vec![Timestamp::now().0.into(), id.to_string().into()],
        )
        .await?;
        txn.commit().await.map_err(StoreError::Unavailable)?;
        self.work.notify_waiters();
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<CaseEvent> {
        self.events_tx.subscribe()
    }

    fn work_signal(&self) -> Arc<Notify> {
        self.work.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(StoreError::Unavailable)
    }
}
