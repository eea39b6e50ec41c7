//! The case store: the port the API and engine use, and its sea-orm implementation for
//! SQLite and PostgreSQL. Owns the schema's meaning (encryption at rest, the audit hash
//! chain, the uniqueness constraints); must not decide business rules — those come from
//! `domain::saga`.

mod entities;
mod sea;

use async_trait::async_trait;

use crate::domain::saga::{Command, TransitionError};
use crate::domain::{
    CaseEvent, CaseId, Deregistration, HsaId, NewDeregistration, State, Timestamp,
};

pub use sea::{SeaStore, verify_chain};

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
    pub care_unit: Option<HsaId>,
    pub state: Option<State>,
    /// Keyset pagination: only cases with a greater id (ids are time-ordered).
    pub after: Option<CaseId>,
    pub limit: u32,
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
    /// Internal: a concurrent request with the same request_id won the race; retry to replay it.
    #[error("a concurrent request with the same request_id is in progress")]
    ConcurrentRetry,
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Durable storage of cases and their audit trail.
#[async_trait]
pub trait CaseStore: Send + Sync + std::fmt::Debug {
    /// Stores a new case with its first audit event, atomically. Idempotent per
    /// (principal, request_id): a repeat with the same fingerprint returns the stored case;
    /// with another fingerprint it fails `RequestIdReused`. A second non-terminal case for
    /// the same card number fails `ActiveCaseExists`. Both hold under concurrency because
    /// the database's unique constraints decide, not a prior read.
    async fn create(&self, cmd: CreateCase) -> Result<Created, StoreError>;

    async fn get(&self, id: &CaseId) -> Result<Option<Deregistration>, StoreError>;

    /// Cases matching the filters, in id (creation) order, at most `limit`.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Deregistration>, StoreError>;

    /// Applies a command through `domain::saga::transition` under a row lock and appends the
    /// audit event in the same transaction. `owner`, when given, must own the case (else
    /// `NotFound`). A repeat that changes nothing returns the case unchanged.
    async fn apply(
        &self,
        id: &CaseId,
        owner: Option<&HsaId>,
        command: &Command,
        meta: EventMeta,
    ) -> Result<Deregistration, StoreError>;

    /// The case's audit trail, in order.
    async fn events(&self, id: &CaseId) -> Result<Vec<CaseEvent>, StoreError>;

    /// Cheap liveness probe for health checks.
    async fn ping(&self) -> Result<(), StoreError>;
}
