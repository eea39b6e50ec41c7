//! `CaseStore` on sea-orm: SQLite (embedded default) and PostgreSQL.

use std::collections::{HashMap, HashSet};
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
use crate::privacy::Vault;
use hex::encode as hex;

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
        // Stored values passed the rules of their day: read them back as they are.
        let name = |v: &str| Ok::<_, StoreError>(PersonName::from_stored(v.to_owned()));
        let email = |v: &str| Ok::<_, StoreError>(Email::from_stored(v.to_owned()));
        let state = |v: &str| State::from_str_opt(v).ok_or_else(|| corrupt("state"));
        Ok(Deregistration {
            id: CaseId::parse(&m.id).ok_or_else(|| corrupt("id"))?,
            care_provider: hsa(&m.care_provider_hsa_id, "care provider")?,
            report: NewDeregistration {
                care_unit: hsa(&m.care_unit_hsa_id, "care unit")?,
                card_holder: CardHolder {
                    personnummer: Personnummer::from_stored(&s.pnr)
                        .ok_or_else(|| corrupt("personnummer"))?,
                    full_name: name(&s.holder_name)?,
                    email: s.holder_email.as_deref().map(email).transpose()?,
                },
                card_number: CardNumber::from_stored(m.card_number.clone()),
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
            head_notified_at: m.head_notified_at.map(Timestamp),
            trace_id: m.trace_id.clone(),
        })
    }

    /// The case row, locked for the rest of `txn` (PostgreSQL; SQLite has one writer anyway).
    async fn lock_case(
        &self,
        txn: &DatabaseTransaction,
        id: &CaseId,
    ) -> Result<cases::Model, StoreError> {
        self.find_case(txn, id, true)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Writes `cs`, commits, and only then tells watchers and idle workers.
    async fn commit(&self, txn: DatabaseTransaction, cs: ChangeSet) -> Result<(), StoreError> {
        let appended = self.flush(&txn, cs).await?;
        txn.commit().await.map_err(StoreError::Unavailable)?;
        self.publish(appended);
        Ok(())
    }

    /// An audit event that changes no state.
    fn plan_audit(
        &self,
        cs: &mut ChangeSet,
        model: &mut cases::Model,
        kind: &str,
        meta: &EventMeta,
    ) -> Result<(), StoreError> {
        let saga = Self::saga_of(model)?;
        self.plan_change(cs, model, saga, kind, &[], meta, None)
    }

    /// One unreadable row (wrong key, corruption) must not take every other case with it:
    /// it is logged and left out; the engine then fails just that case's step.
    fn readable(&self, m: &cases::Model) -> Option<Deregistration> {
        match self.to_domain(m) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(case_id = %m.id, error = %e, "case row unreadable; skipped");
                None
            }
        }
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
            head_notified_at: Set(None),
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
        let mut model = self
            .find_case(txn, &cmd.id, false)
            .await?
            .ok_or(StoreError::NotFound)?;
        let saga = Saga::new(cmd.report.route);
        let mut cs = ChangeSet::default();
        self.plan_change(
            &mut cs,
            &mut model,
            saga,
            "accepted",
            &initial_effects(&saga),
            &cmd.meta,
            None,
        )?;
        appended.extend(self.flush(txn, cs).await?);
        Ok(Created::New(self.to_domain(&model)?))
    }

    /// The saga fields of a row, without decrypting the personal data.
    fn saga_of(m: &cases::Model) -> Result<Saga, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("case {}: {what}", m.id));
        let state = |v: &str| State::from_str_opt(v).ok_or_else(|| corrupt("state"));
        Ok(Saga {
            state: state(&m.state)?,
            route: KivRemovalRoute::from_str_opt(&m.kiv_removal_route)
                .ok_or_else(|| corrupt("route"))?,
            snapshot: SnapshotState::from_str_opt(&m.snapshot_state)
                .ok_or_else(|| corrupt("snapshot state"))?,
            attention_from: m.attention_from.as_deref().map(state).transpose()?,
            revocation_confirmed: m.revocation_confirmed_at.is_some(),
            head_notified: m.head_notified_at.is_some(),
        })
    }

    /// Plans a state change on the in-memory row: the new row values, the audit event and the
    /// effects go into `cs`, to be written together by `flush` — the one path every state change
    /// takes.
    #[allow(clippy::too_many_arguments)]
    fn plan_change(
        &self,
        cs: &mut ChangeSet,
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
        let hash = event_hash(&prev, &model.id, seq, kind, saga.state.as_str(), meta);

        model.state = saga.state.as_str().to_owned();
        model.attention_from = saga.attention_from.map(|s| s.as_str().to_owned());
        model.snapshot_state = saga.snapshot.as_str().to_owned();
        model.updated_at = meta.at.0;
        model.version += 1;
        model.last_seq = seq;
        model.last_hash = hash.clone();
        if saga.state.is_terminal() {
            // Frees the card number for a new case.
            model.active_card_number = None;
            cs.terminal.push(model.id.clone());
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
            Some(Event::RevocationConfirmed { reference })
                if model.revocation_confirmed_at.is_none() =>
            {
                model.revocation_confirmed_at = Some(meta.at.0);
                model.revocation_reference = Some(reference.clone());
            }
            _ => {}
        }
        cs.events.push(case_events::ActiveModel {
            case_id: Set(model.id.clone()),
            seq: Set(seq),
            kind: Set(kind.to_owned()),
            state: Set(saga.state.as_str().to_owned()),
            actor: Set(meta.actor.clone()),
            occurred_at: Set(meta.at.0),
            trace_id: Set(meta.trace_id.clone()),
            detail: Set(meta.detail.clone()),
            prev_hash: Set(prev),
            hash: Set(hash.clone()),
        });
        cs.appended.push(CaseEvent {
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
        });
        self.plan_effects(cs, model, effects, meta.at);
        cs.touch(model);
        Ok(())
    }

    fn plan_effects(
        &self,
        cs: &mut ChangeSet,
        model: &cases::Model,
        effects: &[Effect],
        now: Timestamp,
    ) {
        for effect in effects {
            if effect.step == Step::PollOutcome && !self.timing.poll_outcome {
                continue;
            }
            if effect.step == Step::RemoveKiv {
                cs.removals.push(model.id.clone());
            }
            let case_id = &model.id;
            let key = match effect.step {
                Step::Remind(n) => format!("{case_id}:remind:{n}:{}", model.last_seq),
                s if s.repeatable() => format!("{case_id}:{}:{}", s.name(), model.last_seq),
                s => format!("{case_id}:{}", s.name()),
            };
            let delay = match effect.delay {
                Delay::Now => 0,
                Delay::PollInterval => micros(self.timing.poll_interval),
                Delay::RemindAfter => micros(self.timing.remind_after),
                Delay::EscalateAfter => micros(self.timing.escalate_after),
            };
            let n = match effect.step {
                Step::Remind(n) => i64::from(n),
                _ => 0,
            };
            cs.effects.push(EffectRow {
                key,
                case_id: case_id.clone(),
                step: effect.step.name(),
                n,
                due_at: now.0.saturating_add(delay),
                now: now.0,
            });
        }
    }

    /// Writes a change set: case rows, audit events, then (after the invariant check) effects.
    async fn flush(
        &self,
        txn: &DatabaseTransaction,
        cs: ChangeSet,
    ) -> Result<Vec<CaseEvent>, StoreError> {
        // One statement per chunk of rows (UPDATE … FROM VALUES works on SQLite ≥ 3.33 and
        // PostgreSQL alike; VALUES columns are column1…column15 on both).
        for chunk in cs.cases.chunks(64) {
            let mut sql = String::from(
                "UPDATE cases SET state = v.column2, attention_from = v.column3, snapshot_state = v.column4, \
                 kiv_snapshot = v.column5, reported_at = v.column6, revocation_confirmed_at = v.column7, \
                 revocation_reference = v.column8, state_reason = v.column9, active_card_number = v.column10, \
                 updated_at = v.column11, version = v.column12, last_seq = v.column13, last_hash = v.column14, \
                 head_notified_at = v.column15 FROM (VALUES ",
            );
            let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 15);
            for (i, m) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
                values.extend([
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
                ]);
            }
            sql.push_str(") AS v WHERE cases.id = v.column1");
            self.db_exec(txn, &sql, values).await?;
        }
        if !cs.events.is_empty() {
            case_events::Entity::insert_many(cs.events)
                .exec_without_returning(txn)
                .await
                .map_err(StoreError::Unavailable)?;
        }
        if !cs.removals.is_empty() {
            self.assert_revocation_recorded(txn, &cs.removals).await?;
        }
        for chunk in cs.effects.chunks(500) {
            let mut sql = String::from(
                "INSERT INTO effects (key, case_id, step, n, due_at, status, attempts, created_at, updated_at) VALUES ",
            );
            let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 7);
            for (i, e) in chunk.iter().enumerate() {
                sql.push_str(if i == 0 {
                    "(?, ?, ?, ?, ?, 'pending', 0, ?, ?)"
                } else {
                    ", (?, ?, ?, ?, ?, 'pending', 0, ?, ?)"
                });
                values.extend([
                    e.key.clone().into(),
                    e.case_id.clone().into(),
                    e.step.to_owned().into(),
                    e.n.into(),
                    e.due_at.into(),
                    e.now.into(),
                    e.now.into(),
                ]);
            }
            // A key seen before (an operator retry of a failed step, a repeated poll) is re-armed,
            // not duplicated: the connector sees the same key again. Re-arming an effect that is
            // pending but claimed takes it back: its worker loses the lease (its result is
            // dropped) and the effect runs again under the same key — rather than the re-arm
            // being lost if that worker finds the step stale and skips it.
            sql.push_str(
                " ON CONFLICT (key) DO UPDATE SET status = 'pending', due_at = excluded.due_at, attempts = 0, \
                 lease_owner = NULL, lease_until = NULL, last_error = NULL, updated_at = excluded.updated_at \
                 WHERE effects.status <> 'pending' OR effects.lease_owner IS NOT NULL",
            );
            self.db_exec(txn, &sql, values).await?;
        }
        if !cs.terminal.is_empty() {
            let marks = vec!["?"; cs.terminal.len()].join(", ");
            let mut values: Vec<Value> = vec![crate::clock::now().0.into()];
            values.extend(cs.terminal.iter().map(|id| Value::from(id.clone())));
            self.db_exec(
                txn,
                &format!(
                    "UPDATE effects SET status = 'cancelled', lease_owner = NULL, lease_until = NULL, updated_at = ? \
                     WHERE status = 'pending' AND case_id IN ({marks})"
                ),
                values,
            )
            .await?;
        }
        Ok(cs.appended)
    }

    /// Architecture invariant, checked where removals are enqueued: each case's revocation
    /// confirmation must already be durable in this transaction's view of the rows.
    async fn assert_revocation_recorded(
        &self,
        txn: &DatabaseTransaction,
        case_ids: &[String],
    ) -> Result<(), StoreError> {
        let mut ids: Vec<&String> = case_ids.iter().collect();
        ids.sort();
        ids.dedup();
        let marks = vec!["?"; ids.len()].join(", ");
        let rows = txn
            .query_all_raw(self.stmt(
                &format!("SELECT id FROM cases WHERE revocation_confirmed_at IS NOT NULL AND id IN ({marks})"),
                ids.iter().map(|id| Value::from((*id).clone())).collect(),
            ))
            .await
            .map_err(StoreError::Unavailable)?;
        if rows.len() != ids.len() {
            return Err(StoreError::Invariant(
                "KIV removal enqueued for a case without a recorded revocation confirmation".into(),
            ));
        }
        Ok(())
    }

    async fn db_exec(
        &self,
        txn: &DatabaseTransaction,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<u64, StoreError> {
        txn.execute_raw(self.stmt(sql, values))
            .await
            .map(|r| r.rows_affected())
            .map_err(StoreError::Unavailable)
    }

    /// Applies `event` to an in-memory row, planning the writes into `cs`. Returns whether
    /// anything changed.
    fn plan_event(
        &self,
        cs: &mut ChangeSet,
        model: &mut cases::Model,
        event: &Event,
        meta: &EventMeta,
    ) -> Result<bool, StoreError> {
        // Decided under the row lock: of two concurrent confirmations with different
        // references, the second is refused rather than silently dropped.
        if let Event::RevocationConfirmed { reference } = event
            && model
                .revocation_reference
                .as_ref()
                .is_some_and(|r| r != reference)
        {
            return Err(crate::domain::saga::TransitionError::ConflictingReference.into());
        }
        let outcome = transition(Self::saga_of(model)?, event)?;
        match outcome.audit {
            Some(kind) => {
                self.plan_change(
                    cs,
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
                self.plan_effects(cs, model, &outcome.effects, meta.at);
                Ok(false)
            }
        }
    }

    async fn load_many(
        &self,
        conn: &impl ConnectionTrait,
        ids: &[&CaseId],
        lock: bool,
    ) -> Result<HashMap<String, cases::Model>, StoreError> {
        // Locks are taken in id order, and before any effect row (see `finish_in`), so two
        // transactions never wait for each other in a circle.
        let mut q = cases::Entity::find()
            .filter(cases::Column::Id.is_in(ids.iter().map(|i| i.to_string())))
            .order_by_asc(cases::Column::Id);
        if lock && self.is_postgres() {
            q = q.lock_exclusive();
        }
        let rows = q.all(conn).await.map_err(StoreError::Unavailable)?;
        Ok(rows.into_iter().map(|m| (m.id.clone(), m)).collect())
    }

    /// After a commit: events to watchers, and a wake-up for idle workers (the change may have
    /// enqueued effects).
    fn publish(&self, events: Vec<CaseEvent>) {
        for e in events {
            // No receivers is fine: nobody is watching.
            let _ = self.events_tx.send(e);
        }
        self.work.notify_waiters();
    }

    /// Records a batch of results inside `txn`. Fencing first: only results whose lease this
    /// owner still holds count; the rest are dropped (another worker re-runs them).
    async fn finish_in(
        &self,
        txn: &DatabaseTransaction,
        owner: &str,
        results: &[Finished],
        now: Timestamp,
    ) -> Result<Vec<CaseEvent>, StoreError> {
        // Lock order: case rows first (as `apply` does), then effect rows.
        let mut case_ids: Vec<&CaseId> = results.iter().map(|f| &f.work.case_id).collect();
        case_ids.sort();
        case_ids.dedup();
        let mut models = self.load_many(txn, &case_ids, true).await?;
        let mut fenced: HashSet<String> = HashSet::new();
        let mut done_keys: Vec<&str> = Vec::new();
        let mut skipped_keys: Vec<&str> = Vec::new();
        for f in results {
            match &f.result {
                WorkResult::Done { .. } => done_keys.push(&f.work.key),
                WorkResult::Skipped => skipped_keys.push(&f.work.key),
                WorkResult::Retry { at, error } => {
                    let n = self
                        .db_exec(
                            txn,
                            "UPDATE effects SET attempts = attempts + 1, due_at = ?, lease_owner = NULL, \
                             lease_until = NULL, last_error = ?, updated_at = ? \
                             WHERE key = ? AND lease_owner = ? AND status = 'pending'",
                            vec![
                                at.0.into(),
                                error.clone().into(),
                                now.0.into(),
                                f.work.key.clone().into(),
                                owner.to_owned().into(),
                            ],
                        )
                        .await?;
                    if n == 1 {
                        fenced.insert(f.work.key.clone());
                    }
                }
                WorkResult::Failed { error } => {
                    let n = self
                        .db_exec(
                            txn,
                            "UPDATE effects SET status = 'failed', attempts = attempts + 1, lease_owner = NULL, \
                             lease_until = NULL, last_error = ?, updated_at = ? \
                             WHERE key = ? AND lease_owner = ? AND status = 'pending'",
                            vec![
                                error.clone().into(),
                                now.0.into(),
                                f.work.key.clone().into(),
                                owner.to_owned().into(),
                            ],
                        )
                        .await?;
                    if n == 1 {
                        fenced.insert(f.work.key.clone());
                    }
                }
            }
        }
        for (status, keys) in [("done", &done_keys), ("cancelled", &skipped_keys)] {
            if keys.is_empty() {
                continue;
            }
            let marks = vec!["?"; keys.len()].join(", ");
            let mut values: Vec<Value> = vec![
                status.to_owned().into(),
                now.0.into(),
                owner.to_owned().into(),
            ];
            values.extend(keys.iter().map(|k| Value::from((*k).to_owned())));
            let rows = txn
                .query_all_raw(self.stmt(
                    &format!(
                        "UPDATE effects SET status = ?, attempts = attempts + 1, lease_owner = NULL, \
                         lease_until = NULL, last_error = NULL, updated_at = ? \
                         WHERE lease_owner = ? AND status = 'pending' AND key IN ({marks}) RETURNING key"
                    ),
                    values,
                ))
                .await
                .map_err(StoreError::Unavailable)?;
            for r in rows {
                if let Ok(k) = r.try_get::<String>("", "key") {
                    fenced.insert(k);
                }
            }
        }

        let mut events: Vec<(&Finished, Event, String)> = Vec::new();
        for f in results {
            if !fenced.contains(&f.work.key) {
                // Another worker took the effect over; it re-runs it under the same key.
                tracing::warn!(key = %f.work.key, "lease lost before the result was recorded; dropped");
                continue;
            }
            match &f.result {
                WorkResult::Done {
                    event: Some(e),
                    detail,
                    ..
                } => events.push((f, e.clone(), detail.clone())),
                WorkResult::Failed { error } => events.push((
                    f,
                    Event::StepFailed {
                        step: f.work.step,
                        reason: error.clone(),
                    },
                    format!("{} failed: {error}", f.work.step.name()),
                )),
                _ => {}
            }
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut cs = ChangeSet::default();
        for (f, event, detail) in events {
            let Some(model) = models.get_mut(&f.work.case_id.to_string()) else {
                continue;
            };
            let meta = EventMeta {
                actor: "system".into(),
                trace_id: model.trace_id.clone(),
                at: now,
                detail,
            };
            match self.plan_event(&mut cs, model, &event, &meta) {
                Ok(recorded) => {
                    // The snapshot is kept only with the event that records it.
                    if let (
                        true,
                        WorkResult::Done {
                            snapshot: Some(snap),
                            ..
                        },
                    ) = (recorded, &f.result)
                    {
                        let json = serde_json::to_vec(snap)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        model.kiv_snapshot = Some(
                            self.vault
                                .seal(&Self::snapshot_context(&model.id), &json)
                                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        );
                        cs.touch(model);
                    }
                }
                // A result the case no longer accepts (it moved on meanwhile) is recorded as done
                // and otherwise ignored.
                Err(StoreError::Transition(t)) => {
                    tracing::info!(case_id = %f.work.case_id, step = f.work.step.name(), reason = %t, "stale step result ignored");
                }
                Err(e) => return Err(e),
            }
        }
        self.flush(txn, cs).await
    }
}

/// Row effect to insert or re-arm.
#[derive(Debug)]
struct EffectRow {
    key: String,
    case_id: String,
    step: &'static str,
    n: i64,
    due_at: i64,
    now: i64,
}

/// Writes gathered in memory during one transaction and flushed together.
#[derive(Debug, Default)]
struct ChangeSet {
    /// Final versions of touched case rows, in first-touch order.
    cases: Vec<cases::Model>,
    index: HashMap<String, usize>,
    events: Vec<case_events::ActiveModel>,
    effects: Vec<EffectRow>,
    removals: Vec<String>,
    terminal: Vec<String>,
    appended: Vec<CaseEvent>,
}

impl ChangeSet {
    fn touch(&mut self, model: &cases::Model) {
        match self.index.get(&model.id) {
            Some(&i) => self.cases[i] = model.clone(),
            None => {
                self.index.insert(model.id.clone(), self.cases.len());
                self.cases.push(model.clone());
            }
        }
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
    Step::from_stored(name, n)
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
                    self.publish(appended);
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

    async fn get_many(&self, ids: &[CaseId]) -> Result<Vec<Deregistration>, StoreError> {
        let refs: Vec<&CaseId> = ids.iter().collect();
        let rows = self.load_many(&self.db, &refs, false).await?;
        Ok(rows.values().filter_map(|m| self.readable(m)).collect())
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
            let names: Vec<&str> = query.states.iter().map(|s| s.as_str()).collect();
            let mut cond = sea_orm::Condition::any().add(cases::Column::State.is_in(names.clone()));
            if query.include_attention_from {
                cond = cond.add(
                    sea_orm::Condition::all()
                        .add(cases::Column::State.eq(State::NeedsAttention.as_str()))
                        .add(cases::Column::AttentionFrom.is_in(names)),
                );
            }
            q = q.filter(cond);
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
        Ok(rows.iter().filter_map(|m| self.readable(m)).collect())
    }

    async fn apply(
        &self,
        id: &CaseId,
        owner: Option<&HsaId>,
        event: &Event,
        meta: EventMeta,
    ) -> Result<Deregistration, StoreError> {
        let txn = self.db.begin().await.map_err(StoreError::Unavailable)?;
        let mut model = self.lock_case(&txn, id).await?;
        if owner.is_some_and(|o| o.as_str() != model.care_provider_hsa_id) {
            return Err(StoreError::NotFound);
        }
        let mut cs = ChangeSet::default();
        self.plan_event(&mut cs, &mut model, event, &meta)?;
        self.commit(txn, cs).await?;
        self.to_domain(&model)
    }

    async fn audit(&self, id: &CaseId, kind: &str, meta: EventMeta) -> Result<(), StoreError> {
        let txn = self.db.begin().await.map_err(StoreError::Unavailable)?;
        let mut model = self.lock_case(&txn, id).await?;
        let mut cs = ChangeSet::default();
        self.plan_audit(&mut cs, &mut model, kind, &meta)?;
        self.commit(txn, cs).await
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

    async fn kiv_removed_by_other_case(&self, id: &CaseId) -> Result<bool, StoreError> {
        let rows = self
            .db
            .query_all_raw(self.stmt(
                "SELECT o.id FROM cases o JOIN cases c ON o.holder_pseudonym = c.holder_pseudonym \
                 AND o.care_unit_hsa_id = c.care_unit_hsa_id \
                 WHERE c.id = ? AND o.id <> c.id AND o.revocation_confirmed_at IS NOT NULL \
                 AND o.state IN ('kiv_removal_pending', 'completed') LIMIT 1",
                vec![id.to_string().into()],
            ))
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(!rows.is_empty())
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
        let now = crate::clock::now();
        let txn = self.db.begin().await.map_err(StoreError::Unavailable)?;
        let appended = self.finish_in(&txn, owner, &results, now).await?;
        txn.commit().await.map_err(StoreError::Unavailable)?;
        self.publish(appended);
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

    async fn expedite(&self, id: &CaseId, meta: EventMeta) -> Result<(), StoreError> {
        let txn = self.db.begin().await.map_err(StoreError::Unavailable)?;
        let mut model = self.lock_case(&txn, id).await?;
        self.db_exec(
            &txn,
            "UPDATE effects SET due_at = ? WHERE case_id = ? AND status = 'pending' AND step <> 'escalate'",
            vec![meta.at.0.into(), id.to_string().into()],
        )
        .await?;
        let mut cs = ChangeSet::default();
        self.plan_audit(&mut cs, &mut model, "operator_expedited", &meta)?;
        self.commit(txn, cs).await
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
