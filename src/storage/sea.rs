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
    TransactionTrait, TryInsertResult,
};
use serde::{Deserialize, Serialize};

use super::entities::{case_events, cases, idempotency_keys};
use super::{CaseStore, CreateCase, Created, EventMeta, ListQuery, StoreError};
use crate::domain::saga::{Command, transition};
use crate::domain::{
    CardHolder, CardNumber, CaseEvent, CaseId, Deregistration, Email, HsaId, KivRemovalRoute,
    NewDeregistration, PersonName, Personnummer, Reason, Reporter, State, Timestamp,
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
}

impl std::fmt::Debug for SeaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeaStore")
            .field("backend", &self.db.get_database_backend())
            .finish()
    }
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
        Ok(Self { db, vault })
    }

    pub async fn migrate(&self) -> Result<(), DbErr> {
        migration::Migrator::up(&self.db, None).await
    }

    fn is_postgres(&self) -> bool {
        self.db.get_database_backend() == DbBackend::Postgres
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

    fn to_domain(&self, m: cases::Model) -> Result<Deregistration, StoreError> {
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
            state: State::from_str_opt(&m.state).ok_or_else(|| corrupt("state"))?,
            state_reason: m.state_reason,
            revocation_reference: m.revocation_reference,
            created_at: Timestamp(m.created_at),
            updated_at: Timestamp(m.updated_at),
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
                return Ok(Created::Replayed(self.to_domain(model)?));
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
        self.append_event(txn, &cmd.id, "accepted", State::Accepted, &cmd.meta)
            .await?;
        let model = self
            .find_case(txn, &cmd.id, false)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(Created::New(self.to_domain(model)?))
    }

    async fn append_event(
        &self,
        txn: &DatabaseTransaction,
        case_id: &CaseId,
        kind: &str,
        state: State,
        meta: &EventMeta,
    ) -> Result<(), StoreError> {
        let last = case_events::Entity::find()
            .filter(case_events::Column::CaseId.eq(case_id.to_string()))
            .order_by_desc(case_events::Column::Seq)
            .one(txn)
            .await
            .map_err(StoreError::Unavailable)?;
        let (seq, prev_hash) = match last {
            Some(e) => (e.seq + 1, e.hash),
            None => (1, GENESIS_HASH.to_owned()),
        };
        let case_id = case_id.to_string();
        let hash = event_hash(&prev_hash, &case_id, seq, kind, state.as_str(), meta);
        let row = case_events::ActiveModel {
            case_id: Set(case_id),
            seq: Set(seq),
            kind: Set(kind.to_owned()),
            state: Set(state.as_str().to_owned()),
            actor: Set(meta.actor.clone()),
            occurred_at: Set(meta.at.0),
            trace_id: Set(meta.trace_id.clone()),
            detail: Set(meta.detail.clone()),
            prev_hash: Set(prev_hash),
            hash: Set(hash),
        };
        case_events::Entity::insert(row)
            .exec_without_returning(txn)
            .await
            .map_err(StoreError::Unavailable)?;
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

#[async_trait]
impl CaseStore for SeaStore {
    async fn create(&self, cmd: CreateCase) -> Result<Created, StoreError> {
        // One retry covers the race where a concurrent twin with the same request_id
        // committed between our insert and our look-up: the second pass replays it.
        for _ in 0..2 {
            let txn = self.db.begin().await.map_err(StoreError::Unavailable)?;
            match self.create_in(&txn, &cmd).await {
                Ok(Created::New(case)) => {
                    txn.commit().await.map_err(StoreError::Unavailable)?;
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
                    // Dropping the transaction rolls it back; say so explicitly when we can.
                    let _ = txn.rollback().await;
                    return Err(e);
                }
            }
        }
        Err(StoreError::RequestIdReused)
    }

    async fn get(&self, id: &CaseId) -> Result<Option<Deregistration>, StoreError> {
        self.find_case(&self.db, id, false)
            .await?
            .map(|m| self.to_domain(m))
            .transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Deregistration>, StoreError> {
        let mut q = cases::Entity::find();
        if let Some(p) = &query.care_provider {
            q = q.filter(cases::Column::CareProviderHsaId.eq(p.to_string()));
        }
        if let Some(u) = &query.care_unit {
            q = q.filter(cases::Column::CareUnitHsaId.eq(u.to_string()));
        }
        if let Some(s) = query.state {
            q = q.filter(cases::Column::State.eq(s.as_str()));
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
        rows.into_iter().map(|m| self.to_domain(m)).collect()
    }

    async fn apply(
        &self,
        id: &CaseId,
        owner: Option<&HsaId>,
        command: &Command,
        meta: EventMeta,
    ) -> Result<Deregistration, StoreError> {
        let txn = self.db.begin().await.map_err(StoreError::Unavailable)?;
        let model = self
            .find_case(&txn, id, true)
            .await?
            .ok_or(StoreError::NotFound)?;
        if owner.is_some_and(|o| o.as_str() != model.care_provider_hsa_id) {
            return Err(StoreError::NotFound);
        }
        let current = State::from_str_opt(&model.state)
            .ok_or_else(|| StoreError::Corrupt(format!("case {id}: state")))?;
        let t = transition(current, command)?;
        let Some(next) = t.next else {
            return self.to_domain(model);
        };
        let mut am: cases::ActiveModel = model.clone().into();
        am.state = Set(next.as_str().to_owned());
        am.updated_at = Set(meta.at.0);
        am.version = Set(model.version + 1);
        if next.is_terminal() {
            // Frees the card number for a new case.
            am.active_card_number = Set(None);
        }
        if !meta.detail.is_empty() {
            am.state_reason = Set(Some(meta.detail.clone()));
        }
        let updated = cases::Entity::update(am)
            .exec(&txn)
            .await
            .map_err(StoreError::Unavailable)?;
        self.append_event(&txn, id, t.event_kind, next, &meta)
            .await?;
        txn.commit().await.map_err(StoreError::Unavailable)?;
        self.to_domain(updated)
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

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(StoreError::Unavailable)
    }
}
