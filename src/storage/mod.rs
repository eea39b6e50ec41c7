//! The case store: the port the API and the engine use (this file), and its sea-orm
//! implementation for SQLite and PostgreSQL. Owns the schema's meaning (encryption at rest, the
//! audit hash chain, the uniqueness constraints, the outbox); must not decide business rules —
//! every state change is `domain::saga::transition`'s verdict, applied with its effects in one
//! transaction. Telling others what was committed is `crate::bus`'s job, not the port's.
//!
//! The implementation, one job per module:
//! - `sea.rs` — `SeaStore`: transactions, delegation, publishing after commit;
//! - `codec.rs` — rows ↔ domain, encryption of the personal data and the KIV snapshot;
//! - `changes.rs` — `ChangeSet`: planning a change (row, audit event, effects) and `flush`;
//! - `create.rs` — idempotent creation decided by unique constraints;
//! - `outbox.rs` — claims under a lease, heartbeats, fenced results, due times;
//! - `node.rs` — the node lock: one live process per node id (`engine.node_id`);
//! - `queries.rs` — read-only look-ups;
//! - `listen.rs` — news between replicas on PostgreSQL (`NOTIFY` on commit, the relay);
//! - `audit.rs` — the audit trail's hash chain;
//! - `retention.rs` — shredding and purging ended cases, purging the outbox, re-encryption;
//! - `sql.rs` — connection set-up, backend differences, row reads with locks;
//! - `settings.rs` — the database settings and the saga timers' durations;
//! - `entities.rs` — the sea-orm entities (crate-private).

mod audit;
mod batch;
mod changes;
mod codec;
mod create;
mod entities;
mod listen;
mod node;
mod outbox;
mod queries;
mod retention;
mod sea;
mod settings;
mod sql;

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::saga::{Event, SnapshotState, Step, TransitionError};
use crate::domain::{
    CaseEvent, CaseId, Deregistration, Employment, HsaId, KivRemovalRoute, NewDeregistration,
    State, Timestamp,
};

pub use audit::{
    BrokenLink, ChainHead, ChainKeys, ChainProblem, ChainReport, HeadRow, orphan_report,
    verify_case, verify_case_unreadable,
};
pub use batch::WriteCounts;
pub use node::{NodeError, NodeLock, valid_node_id};
pub use queries::SchemaStatus;
pub use sea::{MIGRATION_LOCK, SeaStore};
pub use settings::{DatabaseSettings, Timing};

/// Who caused a change, when, and under which trace: recorded on every audit event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMeta {
    /// HSA-id of the acting principal, or `system`.
    pub actor: String,
    pub trace_id: String,
    pub at: Timestamp,
    /// Free text; must never contain personal identity numbers.
    pub detail: String,
}

/// A validated report to store as a new case.
#[derive(Clone, Debug)]
pub struct CreateCase {
    pub id: CaseId,
    /// The calling principal: idempotency keys are scoped to it.
    pub principal: HsaId,
    pub care_provider: HsaId,
    pub request_id: Option<String>,
    /// Keyed digest of the report's content: tells a retry from a reused `request_id`.
    pub fingerprint: String,
    pub report: NewDeregistration,
    pub meta: EventMeta,
    /// The W3C `traceparent` of the creating request's span, kept with the case so the saga's
    /// steps join its trace (`crate::trace_context`).
    pub trace_parent: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    New(Deregistration),
    /// The same principal already sent this `request_id` with the same content.
    Replayed(Deregistration),
}

impl Created {
    pub fn into_case(self) -> Deregistration {
        match self {
            Created::New(c) | Created::Replayed(c) => c,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub care_provider: Option<HsaId>,
    /// Only cases in one of these units (`None`: any).
    pub care_units: Option<Vec<HsaId>>,
    /// Only cases in one of these states (empty: any).
    pub states: Vec<State>,
    pub route: Option<KivRemovalRoute>,
    pub revocation_confirmed: Option<bool>,
    pub snapshot: Option<SnapshotState>,
    /// Also cases needing attention that stopped in one of `states` (e.g. an escalated case
    /// still awaits TjänsteID-service's outcome).
    pub include_attention_from: bool,
    /// Only cases created at or before this instant.
    pub created_before: Option<Timestamp>,
    /// Only cases created at or after this instant.
    pub created_after: Option<Timestamp>,
    /// Keyset pagination: only cases with a greater id (ids are time-ordered).
    pub after: Option<CaseId>,
    pub limit: u32,
}

/// One claimed effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Work {
    /// The idempotency key: case id + step (+ discriminator). Passed to the connector.
    pub key: String,
    pub case_id: CaseId,
    pub step: Step,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// What running an effect came to.
#[derive(Clone, Debug)]
pub enum WorkResult {
    /// Done; `event` (if any) is applied to the case, `snapshot` stored.
    Done {
        event: Option<Event>,
        snapshot: Option<Employment>,
        detail: String,
    },
    /// Retryable failure: try again at `at`.
    Retry { at: Timestamp, error: String },
    /// Terminal failure or retries exhausted: the case needs attention.
    Failed { error: String },
    /// The effect no longer applies to the case (a later event made it stale).
    Skipped,
}

#[derive(Clone, Debug)]
pub struct Finished {
    pub work: Work,
    pub result: WorkResult,
}

/// One outbox row of a case, as the operators' timeline shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepView {
    pub key: String,
    /// The stored step name, e.g. `report_revocation`.
    pub step: String,
    /// `pending`, `done`, `failed` or `cancelled`.
    pub status: String,
    pub attempts: u32,
    /// The last error's reason (no personal data: connectors redact at the source). On a
    /// `pending` row it was retryable; on a `failed` row, terminal.
    pub last_error: Option<String>,
    pub due_at: Timestamp,
    /// A worker holds the row (its lease may have run out).
    pub leased: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The database's view of all cases, for the gauges (the same on every replica).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Cases per state: every state, zeros included.
    pub by_state: Vec<(State, u64)>,
    pub needs_attention: u64,
    /// How long the oldest due, unclaimed step has waited (zero when none is due).
    pub oldest_due_age: Duration,
}

/// The instants a retention pass works to: personal data of cases that ended at or before
/// `personal_data` is shredded, records of cases that ended at or before `record` are purged,
/// finished outbox rows last changed at or before `outbox` are deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionCutoffs {
    pub personal_data: Timestamp,
    pub record: Timestamp,
    pub outbox: Timestamp,
}

/// What a retention pass would do (each list at most the asked limit, oldest first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionDue {
    /// Ended cases whose personal data is due for shredding.
    pub shred: Vec<CaseId>,
    /// Ended cases whose record is due for purging (shredded first if not yet).
    pub purge: Vec<CaseId>,
    /// Finished outbox rows due for deletion.
    pub outbox: u64,
}

/// What stays of a case after its personal data is shredded, until it is purged: who reported
/// which card, when, and the outcome (its audit trail: `CaseStore::events`). No personal data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseRecord {
    pub id: CaseId,
    pub care_provider: String,
    pub care_unit: String,
    /// HSA-id of the head of operations who reported the card.
    pub reporter: String,
    pub card_number: String,
    pub reason: crate::domain::Reason,
    pub state: State,
    pub created_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub revocation_confirmed_at: Option<Timestamp>,
    pub revocation_reference: Option<String>,
    pub shredded_at: Option<Timestamp>,
    /// The master key its data key is wrapped by (`None`: shredded, or from before m0006).
    pub key_id: Option<String>,
}

/// One batch of `keys reencrypt`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReencryptBatch {
    /// The last case the batch looked at: the next batch starts after it.
    pub last: Option<CaseId>,
    /// Rows moved to the current master key.
    pub moved: u64,
    /// Rows that could not be moved (unreadable: logged by id, left as they are).
    pub failed: u64,
}

/// This process's database connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub in_use: u32,
    pub idle: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such case")]
    NotFound,
    #[error("request_id was already used with different content")]
    RequestIdReused,
    #[error("an active case already exists for this card number")]
    ActiveCaseExists,
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The database cannot be reached or did not answer; nothing was changed. Retryable.
    #[error("the case store is unavailable")]
    Unavailable(#[source] sea_orm::DbErr),
    /// Stored data could not be read back (wrong key, corruption). Not retryable.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// A safety check inside the transaction refused the change (e.g. a KIV removal for a case
    /// without recorded revocation). Indicates a bug; nothing was changed.
    #[error("invariant violated: {0}")]
    Invariant(String),
    /// Internal: a concurrent request with the same request_id won the race; retry to replay it.
    #[error("a concurrent request with the same request_id is in progress")]
    ConcurrentRetry,
}

/// Durable storage of cases, their audit trail and their outbox. An implementation publishes
/// what it commits on the process's `crate::bus::EventBus`; the port itself is storage only.
#[async_trait]
pub trait CaseStore: Send + Sync + std::fmt::Debug {
    /// Stores a new case with its first audit event and first effects, atomically. Idempotent
    /// per (principal, request_id): a repeat with the same fingerprint returns the stored case;
    /// with another fingerprint it fails `RequestIdReused`. A second non-terminal case for the
    /// same card number fails `ActiveCaseExists`. Both hold under concurrency because the
    /// database's unique constraints decide, not a prior read.
    async fn create(&self, cmd: CreateCase) -> Result<Created, StoreError>;

    async fn get(&self, id: &CaseId) -> Result<Option<Deregistration>, StoreError>;

    /// Several cases in one round trip (missing ids are left out).
    async fn get_many(&self, ids: &[CaseId]) -> Result<Vec<Deregistration>, StoreError>;

    /// Cases matching the filters, in id (creation) order, at most `limit`.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Deregistration>, StoreError>;

    /// Applies an event through `domain::saga::transition` under a row lock; the state change,
    /// its audit event and its effects commit together. `owner`, when given, must own the case
    /// (else `NotFound`). A repeat that changes nothing returns the case unchanged.
    async fn apply(
        &self,
        id: &CaseId,
        owner: Option<&HsaId>,
        event: &Event,
        meta: EventMeta,
    ) -> Result<Deregistration, StoreError>;

    /// Appends an audit event that changes no state (e.g. a refused early KIV removal).
    async fn audit(&self, id: &CaseId, kind: &str, meta: EventMeta) -> Result<(), StoreError>;

    /// The case's audit trail, in order.
    async fn events(&self, id: &CaseId) -> Result<Vec<CaseEvent>, StoreError>;

    /// Whether another case of the same person at the same care unit has a confirmed
    /// revocation and is removing (or has removed) the employment: then its absence from KIV is
    /// legitimate and must not be "repaired".
    async fn kiv_removed_by_other_case(&self, id: &CaseId) -> Result<bool, StoreError>;

    /// The KIV snapshot taken at acceptance, if any.
    async fn snapshot(&self, id: &CaseId) -> Result<Option<Employment>, StoreError>;

    /// Leases up to `limit` due effects to `owner` until `now + lease`. Effects leased by a
    /// crashed worker become claimable again when their lease runs out.
    async fn claim(
        &self,
        owner: &str,
        now: Timestamp,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Work>, StoreError>;

    /// Records results in one transaction. A result whose lease `owner` no longer holds is
    /// dropped (another worker re-runs the effect under the same key).
    async fn finish(&self, owner: &str, results: Vec<Finished>) -> Result<(), StoreError>;

    /// Gives up the leases of every claim whose owner token starts with `owner_prefix` but not
    /// with `keep_prefix` (a process shutting down; a restarted one giving up what its dead
    /// incarnations held), so workers claim those effects at once. Returns how many.
    async fn release(
        &self,
        owner_prefix: &str,
        keep_prefix: Option<&str>,
    ) -> Result<u64, StoreError>;

    /// Extends the leases of `keys` that the claim `owner` still holds to `now + lease` (the
    /// heartbeat of a running batch). Returns how many it extended.
    async fn renew(
        &self,
        owner: &str,
        keys: &[String],
        now: Timestamp,
        lease: Duration,
    ) -> Result<u64, StoreError>;

    /// When the earliest pending effect falls due, if any.
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError>;

    /// Makes the case's pending effects due now (operator "retry now") and records who did, in
    /// one transaction.
    async fn expedite(&self, id: &CaseId, meta: EventMeta) -> Result<(), StoreError>;

    /// Readiness probe: the database answers and its schema holds this build's latest
    /// migration. Cheap (an indexed look-up); writes nothing.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Counts for the gauges, as of `now`: cases by state (indexed `GROUP BY`) and the age of
    /// the oldest due step nobody holds (the outbox's lag). Read-only.
    async fn stats(&self, now: Timestamp) -> Result<Stats, StoreError>;

    /// What a retention pass as of `cut` would do, at most `limit` cases of each kind. Read-only.
    async fn retention_due(
        &self,
        cut: &RetentionCutoffs,
        limit: u32,
    ) -> Result<RetentionDue, StoreError>;

    /// Destroys the personal data of an ended case (its data key, every ciphertext, the
    /// holder's pseudonym, its idempotency records) if it ended at or before `before` and is
    /// not shredded yet, and appends a `personal_data_shredded` audit event, in one
    /// transaction. Returns whether it did. Idempotent.
    async fn shred(
        &self,
        id: &CaseId,
        before: Timestamp,
        meta: EventMeta,
    ) -> Result<bool, StoreError>;

    /// Deletes a shredded case that ended at or before `before`, with its audit trail, effects
    /// and idempotency records, after writing its purge marker (case id, end, purge time, last
    /// hash), in one transaction. Returns whether it did. Idempotent.
    async fn purge(
        &self,
        id: &CaseId,
        before: Timestamp,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Deletes up to `limit` finished (done or skipped) outbox rows last changed at or before
    /// `before`; returns how many.
    async fn purge_outbox(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError>;

    /// The kept record of a case, shredded or not (`None` once purged).
    async fn record(&self, id: &CaseId) -> Result<Option<CaseRecord>, StoreError>;

    /// How many case rows are not yet under the vault's current master key (shredded rows
    /// excepted).
    async fn reencrypt_pending(&self) -> Result<u64, StoreError>;

    /// Moves up to `limit` rows after `after` (id order) to the current master key, each under
    /// its row lock and committed per batch: re-wraps the data key, or gives a row from before
    /// m0006 a data key of its own. Resumable: a new run starts over and finds only the rows
    /// still to move.
    async fn reencrypt_batch(
        &self,
        after: Option<&CaseId>,
        limit: u32,
    ) -> Result<ReencryptBatch, StoreError>;
    /// The audit chain head recorded on the case row (`NotFound` without the case).
    async fn chain_head(&self, id: &CaseId) -> Result<ChainHead, StoreError>;

    /// The case's trail and the head on its row, read in one snapshot (`NotFound` without the
    /// case).
    async fn audit_trail(&self, id: &CaseId) -> Result<(Vec<CaseEvent>, ChainHead), StoreError>;

    /// Verifies the case's audit chain against the head on its row, with the store's chain keys,
    /// reading both in one snapshot. `NotFound` without the case.
    async fn verify_audit(&self, id: &CaseId) -> Result<ChainReport, StoreError>;

    /// Every case id after `after`, in id order, at most `limit` (undecryptable cases too).
    async fn case_ids(&self, after: Option<&CaseId>, limit: u32)
    -> Result<Vec<CaseId>, StoreError>;

    /// How many cases there are.
    async fn count_cases(&self) -> Result<u64, StoreError>;

    /// Case ids after `after` (id order, at most `limit`) that audit events name but no case
    /// row has, each with its number of events: a trail whose case row was deleted.
    async fn orphan_event_cases(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, u64)>, StoreError>;

    /// The case's outbox rows, in creation order.
    async fn steps(&self, id: &CaseId) -> Result<Vec<StepView>, StoreError>;

    /// Appends a keyed `audit_chain_keyed` event to every case on m0008's list (cases whose
    /// trail was all legacy, pre-m0005, when m0008 ran) whose trail verifies, so the keyed chain
    /// covers it, and takes each listed case off the list. Returns how many were anchored; a
    /// legacy trail that does not verify, and one of a case not on the list (re-hashed without
    /// the key since), is left for the verifier to report.
    async fn anchor_legacy_chains(&self, meta: EventMeta) -> Result<u64, StoreError>;

    /// The connection pool's use, where the implementation has one.
    fn pool(&self) -> Option<PoolStats> {
        None
    }
}
