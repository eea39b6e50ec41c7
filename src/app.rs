//! The gateway's use cases, free of gRPC: what each call does once the caller is known and
//! the input is parsed. The API layer converts; this layer decides who may see what and
//! turns calls into saga events for the store.

use std::sync::Arc;

use crate::audit_record::{AuditRecord, Purpose};
use crate::auth::Principal;
use crate::bus::EventBus;
use crate::clock::{Clock, SystemClock};
use crate::domain::saga::{Event, TransitionError};
use crate::domain::{
    CardCertificate, CaseEvent, CaseId, Deregistration, FreeText, HsaId, InstantError,
    KivRemovalRoute, NewDeregistration, RequestId, RevocationReference, State, Timestamp, TraceId,
    timestamp,
};
use crate::metrics::Metrics;
use crate::privacy::Vault;
use crate::storage::{
    CaseStore, ChainHead, CreateCase, Created, EventMeta, ListQuery, StepView, StoreError,
};

/// Errors of the use cases; `api::error` maps them to gRPC statuses in one place.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    PermissionDenied(String),
    #[error("deregistration not found")]
    NotFound,
    #[error("{0}")]
    Precondition(String),
    /// The reported revocation time is impossible for this case.
    #[error("revoke_time {0}")]
    RevokedAt(InstantError),
    /// A named certificate cannot be the cut card's: (field path, rule code, rule).
    #[error("{0}: {2}")]
    CertificateRefused(String, &'static str, &'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<TransitionError> for AppError {
    fn from(e: TransitionError) -> Self {
        AppError::Store(StoreError::Transition(e))
    }
}

/// A certificate a confirmation names, with what its DER tells of the holder (checked against
/// the case by `app`; never kept) and the field it came from.
#[derive(Clone)]
pub struct NamedCertificate {
    pub certificate: CardCertificate,
    pub field: String,
    /// The HSA-id in the certificate's subject (DER only).
    pub holder: Option<HsaId>,
    pub not_after: Option<Timestamp>,
}

impl std::fmt::Debug for NamedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedCertificate")
            .field("certificate", &self.certificate)
            .field("field", &self.field)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct Gateway {
    store: Arc<dyn CaseStore>,
    bus: EventBus,
    vault: Arc<Vault>,
    removes_kiv: bool,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

/// The operators' filters over every care provider's cases.
#[derive(Clone, Debug, Default)]
pub struct CaseFilter {
    /// Any of these states (empty: any).
    pub states: Vec<State>,
    pub care_provider: Option<HsaId>,
    pub care_unit: Option<HsaId>,
    pub created_before: Option<Timestamp>,
    pub created_after: Option<Timestamp>,
}

/// A case's audit trail, its outbox steps and its chain head, for operators.
#[derive(Debug)]
pub struct Timeline {
    pub events: Vec<CaseEvent>,
    pub steps: Vec<StepView>,
    pub head: ChainHead,
}

/// A page of cases and the id to continue after, if there may be more.
#[derive(Debug)]
pub struct Page {
    pub cases: Vec<Deregistration>,
    pub last: Option<CaseId>,
}

impl Gateway {
    pub fn new(store: Arc<dyn CaseStore>, bus: EventBus, vault: Arc<Vault>) -> Self {
        Self {
            store,
            bus,
            vault,
            removes_kiv: true,
            clock: Arc::new(SystemClock),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Counts into the process's metrics (by default, a registry of its own).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Reads the time from `clock` instead of the system clock (tests at a fixed date).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The gateway's "now": validation and audit events use this one reading.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn meta(&self, principal: &Principal, trace_id: String, detail: String) -> EventMeta {
        // The caller picks its trace id; one that is malformed or hides an identity number is
        // not written into the append-only trail.
        let trace_id = TraceId::parse(&trace_id).map_or_else(
            || uuid::Uuid::new_v4().simple().to_string(),
            TraceId::into_string,
        );
        EventMeta {
            actor: principal.hsa_id.to_string(),
            trace_id,
            at: self.now(),
            detail,
        }
    }

    /// Whether this gateway can remove employments from KIV itself (care-provider route).
    pub fn removing_kiv(mut self, removes_kiv: bool) -> Self {
        self.removes_kiv = removes_kiv;
        self
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    pub async fn create(
        &self,
        principal: &Principal,
        request_id: Option<RequestId>,
        report: NewDeregistration,
        trace_id: String,
    ) -> Result<Created, AppError> {
        if !principal.holds_unit(&report.care_unit) {
            // The unit is not echoed: an HSA-id suffix is free-form and could carry anything.
            return Err(AppError::PermissionDenied(format!(
                "principal {} holds no grant for the care unit in deregistration.care_unit_hsa_id",
                principal.hsa_id
            )));
        }
        if !self.removes_kiv && report.route == KivRemovalRoute::CareProvider {
            return Err(AppError::Precondition(
                "this gateway has no access to KIV: use KIV_REMOVAL_ROUTE_HEALTH_CARE_OFFICE"
                    .into(),
            ));
        }
        let fingerprint = self.fingerprint(&report);
        let cmd = CreateCase {
            id: crate::clock::new_case_id(),
            principal: principal.hsa_id.clone(),
            care_provider: principal.care_provider.clone(),
            request_id: request_id.map(RequestId::into_string),
            fingerprint,
            report,
            meta: self.meta(principal, trace_id, String::new()),
            // The request's span (the RPC span): the saga's steps continue its trace.
            trace_parent: crate::trace_context::current_traceparent(),
        };
        Ok(self.store.create(cmd).await?)
    }

    /// A case of the caller's care provider; anyone else's is reported as not found, so
    /// case ids cannot be probed across providers.
    pub async fn get_own(
        &self,
        principal: &Principal,
        id: &CaseId,
    ) -> Result<Deregistration, AppError> {
        match self.store.get(id).await? {
            Some(c) if c.care_provider == principal.care_provider => Ok(c),
            _ => Err(AppError::NotFound),
        }
    }

    async fn page(&self, mut query: ListQuery) -> Result<Page, AppError> {
        let limit = query.limit;
        // One extra row tells whether another page exists without a count query.
        query.limit = limit + 1;
        let mut cases = self.store.list(&query).await?;
        let more = cases.len() > limit as usize;
        cases.truncate(limit as usize);
        let last = if more {
            cases.last().map(|c| c.id.clone())
        } else {
            None
        };
        Ok(Page { cases, last })
    }

    fn units_filter(principal: &Principal, unit: Option<HsaId>) -> Result<Vec<HsaId>, AppError> {
        match unit {
            Some(u) if principal.holds_unit(&u) => Ok(vec![u]),
            Some(_) => Err(AppError::PermissionDenied(format!(
                "principal {} holds no grant for the care unit in care_unit_hsa_id",
                principal.hsa_id
            ))),
            None => Ok(principal.care_units.iter().cloned().collect()),
        }
    }

    pub async fn list_own(
        &self,
        principal: &Principal,
        care_unit: Option<HsaId>,
        state: Option<State>,
        after: Option<CaseId>,
        limit: u32,
    ) -> Result<Page, AppError> {
        let care_units = care_unit
            .map(|u| Self::units_filter(principal, Some(u)))
            .transpose()?;
        self.page(ListQuery {
            care_provider: Some(principal.care_provider.clone()),
            care_units,
            states: state.into_iter().collect(),
            after,
            limit,
            ..Default::default()
        })
        .await
    }

    pub async fn cancel(
        &self,
        principal: &Principal,
        id: &CaseId,
        reason: FreeText,
        trace_id: String,
    ) -> Result<Deregistration, AppError> {
        let owner = principal.care_provider.clone();
        match self
            .store
            .apply(
                id,
                Some(&owner),
                &Event::Cancel,
                self.meta(principal, trace_id, reason.into_string()),
            )
            .await
        {
            Err(StoreError::NotFound) => Err(AppError::NotFound),
            other => Ok(other?),
        }
    }

    /// The case's trail so far and subscriptions for what follows (events, and resyncs: news
    /// may have been missed, re-read). Subscribing first means nothing committed between the
    /// read and the subscription is missed (duplicates are filtered by sequence number by the
    /// caller).
    pub async fn watch(&self, principal: &Principal, id: &CaseId) -> Result<Watch, AppError> {
        self.get_own(principal, id).await?;
        let live = self.bus.subscribe();
        let resyncs = self.bus.resyncs();
        let past = self.store.events(id).await?;
        Ok(Watch {
            past,
            live,
            resyncs,
        })
    }

    pub async fn events_after(&self, id: &CaseId, after: i64) -> Result<Vec<CaseEvent>, AppError> {
        Ok(self
            .store
            .events(id)
            .await?
            .into_iter()
            .filter(|e| e.sequence > after)
            .collect())
    }

    // --- Health-care office -------------------------------------------------------------

    /// Removal tasks: only cases whose revocation is recorded, on the office route, in the
    /// office's care units.
    pub async fn list_office_tasks(
        &self,
        principal: &Principal,
        care_unit: Option<HsaId>,
        after: Option<CaseId>,
        limit: u32,
    ) -> Result<Page, AppError> {
        let units = Self::units_filter(principal, care_unit)?;
        self.page(ListQuery {
            care_units: Some(units),
            states: vec![State::KivRemovalPending],
            route: Some(KivRemovalRoute::HealthCareOffice),
            revocation_confirmed: Some(true),
            after,
            limit,
            ..Default::default()
        })
        .await
    }

    pub async fn complete_office_task(
        &self,
        principal: &Principal,
        id: &CaseId,
        comment: FreeText,
        trace_id: String,
    ) -> Result<Deregistration, AppError> {
        let case = match self.store.get(id).await? {
            Some(c) if principal.holds_unit(&c.report.care_unit) => c,
            _ => return Err(AppError::NotFound),
        };
        let result = self
            .store
            .apply(
                id,
                None,
                &Event::OfficeCompleted,
                self.meta(principal, trace_id.clone(), comment.into_string()),
            )
            .await;
        let early = match &result {
            Err(StoreError::Transition(TransitionError::RevocationNotConfirmed)) => Some(
                "health-care office tried to complete the KIV removal before the revocation was confirmed",
            ),
            Err(StoreError::Transition(TransitionError::RevocationNotVerified)) => Some(
                "health-care office tried to complete the KIV removal before the revocation was verified on the CA's revocation list",
            ),
            _ => None,
        };
        if let Some(detail) = early {
            // The refusal itself is part of the record: someone tried to remove too early.
            self.metrics.order_violation_refused();
            tracing::warn!(case_id = %case.id, principal = %principal.hsa_id, "KIV removal before revocation refused");
            self.store
                .audit(
                    id,
                    "early_kiv_removal_refused",
                    self.meta(principal, trace_id, detail.into()),
                )
                .await?;
        }
        Ok(result?)
    }

    // --- TjänsteID-service --------------------------------------------------------------

    pub async fn list_pending_revocations(
        &self,
        after: Option<CaseId>,
        limit: u32,
    ) -> Result<Page, AppError> {
        // Escalated cases still await the outcome: TjänsteID-service must keep seeing them.
        self.page(ListQuery {
            states: vec![State::RevocationRequested],
            include_attention_from: true,
            after,
            limit,
            ..Default::default()
        })
        .await
    }

    pub async fn confirm_revocation(
        &self,
        principal: &Principal,
        id: &CaseId,
        reference: RevocationReference,
        revoked_at: Option<Timestamp>,
        named: Vec<NamedCertificate>,
        trace_id: String,
    ) -> Result<Deregistration, AppError> {
        if revoked_at.is_some() || !named.is_empty() {
            let case = self.store.get(id).await?.ok_or(AppError::NotFound)?;
            if let Some(at) = revoked_at {
                timestamp::revoked_at(at, case.created_at, self.now())
                    .map_err(AppError::RevokedAt)?;
            }
            self.check_named(&case, &named).await?;
        }
        let certificates: Vec<CardCertificate> = named.into_iter().map(|n| n.certificate).collect();
        let reference = reference.into_string();
        let mut detail = crate::engine::confirmation_detail(&reference, &certificates);
        if let Some(t) = revoked_at {
            detail.push_str(&format!("; revoked at {} (unix time)", t.unix_seconds()));
        }
        self.apply_any(
            id,
            &Event::RevocationConfirmed {
                reference,
                certificates,
            },
            self.meta(principal, trace_id, detail),
        )
        .await
    }

    /// A certificate given whole must be the holder's (its subject HSA-id the one KIV's
    /// snapshot names, where it names one) and must not have expired before the report: a
    /// confirmation that names another card's certificate is refused rather than believed.
    async fn check_named(
        &self,
        case: &Deregistration,
        named: &[NamedCertificate],
    ) -> Result<(), AppError> {
        if named
            .iter()
            .all(|n| n.holder.is_none() && n.not_after.is_none())
        {
            return Ok(());
        }
        let holder = match self.store.snapshot(&case.id).await? {
            Some(s) => crate::connectors::card_certs::holder_of(&s),
            None => None,
        };
        for n in named {
            if n.not_after.is_some_and(|t| t < case.created_at) {
                return Err(AppError::CertificateRefused(
                    n.field.clone(),
                    "CERTIFICATE_EXPIRED",
                    "the certificate had expired before the card was reported",
                ));
            }
            if let (Some(expected), Some(got)) = (&holder, &n.holder)
                && !expected.as_str().eq_ignore_ascii_case(got.as_str())
            {
                return Err(AppError::CertificateRefused(
                    n.field.clone(),
                    "CERTIFICATE_OTHER_HOLDER",
                    "the certificate is not the card holder's (its subject serialNumber is not the holder's HSA-id in KIV)",
                ));
            }
        }
        Ok(())
    }

    pub async fn reject_revocation(
        &self,
        principal: &Principal,
        id: &CaseId,
        reason: FreeText,
        trace_id: String,
    ) -> Result<Deregistration, AppError> {
        let reason = reason.into_string();
        self.apply_any(
            id,
            &Event::RevocationRejected {
                reason: reason.clone(),
            },
            self.meta(principal, trace_id, reason),
        )
        .await
    }

    async fn apply_any(
        &self,
        id: &CaseId,
        event: &Event,
        meta: EventMeta,
    ) -> Result<Deregistration, AppError> {
        match self.store.apply(id, None, event, meta).await {
            Err(StoreError::NotFound) => Err(AppError::NotFound),
            other => Ok(other?),
        }
    }

    // --- Operations ---------------------------------------------------------------------

    pub async fn list_attention(
        &self,
        after: Option<CaseId>,
        limit: u32,
    ) -> Result<Page, AppError> {
        self.page(ListQuery {
            states: vec![State::NeedsAttention],
            after,
            limit,
            ..Default::default()
        })
        .await
    }

    /// A case needing attention resumes where it stopped; any other case has its pending
    /// steps made due now.
    pub async fn retry(
        &self,
        principal: &Principal,
        id: &CaseId,
        trace_id: String,
    ) -> Result<Deregistration, AppError> {
        let case = self.store.get(id).await?.ok_or(AppError::NotFound)?;
        if case.state == State::NeedsAttention {
            return self
                .apply_any(
                    id,
                    &Event::OperatorRetry,
                    self.meta(principal, trace_id, String::new()),
                )
                .await;
        }
        if case.state.is_terminal() {
            return Err(TransitionError::NotNeedingAttention { state: case.state }.into());
        }
        self.store
            .expedite(id, self.meta(principal, trace_id, String::new()))
            .await?;
        self.store.get(id).await?.ok_or(AppError::NotFound)
    }

    pub async fn resolve(
        &self,
        principal: &Principal,
        id: &CaseId,
        completed: bool,
        justification: FreeText,
        trace_id: String,
    ) -> Result<Deregistration, AppError> {
        self.apply_any(
            id,
            &Event::OperatorResolve { completed },
            self.meta(principal, trace_id, justification.into_string()),
        )
        .await
    }

    /// Any care provider's case and its chain head. Reading is logged by the API layer, not
    /// recorded as an audit event (it changes nothing and discloses no personal data).
    pub async fn get_any(&self, id: &CaseId) -> Result<(Deregistration, ChainHead), AppError> {
        let case = self.store.get(id).await?.ok_or(AppError::NotFound)?;
        let head = self.store.chain_head(id).await?;
        Ok((case, head))
    }

    /// Every care provider's cases, filtered, in id (creation) order.
    pub async fn list_cases(
        &self,
        filter: CaseFilter,
        after: Option<CaseId>,
        limit: u32,
    ) -> Result<Page, AppError> {
        self.page(ListQuery {
            states: filter.states,
            care_provider: filter.care_provider,
            care_units: filter.care_unit.map(|u| vec![u]),
            created_before: filter.created_before,
            created_after: filter.created_after,
            after,
            limit,
            ..Default::default()
        })
        .await
    }

    pub async fn timeline(&self, id: &CaseId) -> Result<Timeline, AppError> {
        let (events, head) = match self.store.audit_trail(id).await {
            Err(StoreError::NotFound) => return Err(AppError::NotFound),
            other => other?,
        };
        let steps = self.store.steps(id).await?;
        Ok(Timeline {
            events,
            steps,
            head,
        })
    }

    /// An operator cancels a case where the saga allows it; the justification is audited.
    pub async fn cancel_case(
        &self,
        principal: &Principal,
        id: &CaseId,
        justification: FreeText,
        trace_id: String,
    ) -> Result<Deregistration, AppError> {
        self.apply_any(
            id,
            &Event::Cancel,
            self.meta(principal, trace_id, justification.into_string()),
        )
        .await
    }

    /// The case's audit record. The export is first recorded as an audit event of the case
    /// (`audit_exported`, or `audit_exported_for_record_keeper` with the justification), so the
    /// record includes its own export.
    pub async fn export(
        &self,
        principal: &Principal,
        id: &CaseId,
        purpose: Purpose,
        justification: Option<FreeText>,
        trace_id: String,
    ) -> Result<AuditRecord, AppError> {
        let kind = match purpose {
            Purpose::Pseudonymized => "audit_exported",
            Purpose::RecordKeeper => "audit_exported_for_record_keeper",
        };
        let detail = justification.map(FreeText::into_string).unwrap_or_default();
        match self
            .store
            .audit(id, kind, self.meta(principal, trace_id, detail))
            .await
        {
            Err(StoreError::NotFound) => return Err(AppError::NotFound),
            other => other?,
        }
        let case = self.store.get(id).await?.ok_or(AppError::NotFound)?;
        let (events, head) = self.store.audit_trail(id).await?;
        Ok(AuditRecord::new(
            &self.vault,
            purpose,
            &case,
            &events,
            &head,
            principal.hsa_id.as_str(),
            self.now(),
        ))
    }

    pub fn store(&self) -> &Arc<dyn CaseStore> {
        &self.store
    }

    /// Keyed digest of everything the caller sent, in a fixed order.
    fn fingerprint(&self, r: &NewDeregistration) -> String {
        let pnr = r.card_holder.personnummer.expose_digits();
        let received = r.card_received_at.0.to_string();
        self.vault.digest(&[
            r.care_unit.as_str().as_bytes(),
            pnr.as_bytes(),
            r.card_holder.full_name.as_str().as_bytes(),
            r.card_holder
                .email
                .as_ref()
                .map_or("", |e| e.as_str())
                .as_bytes(),
            r.card_number.as_str().as_bytes(),
            r.reason.as_str().as_bytes(),
            received.as_bytes(),
            r.reported_by.hsa_id.as_str().as_bytes(),
            r.reported_by.full_name.as_str().as_bytes(),
            r.reported_by.email.as_str().as_bytes(),
            r.route.as_str().as_bytes(),
        ])
    }
}

/// What `Gateway::watch` hands a watcher.
#[derive(Debug)]
pub struct Watch {
    /// The trail so far, in order.
    pub past: Vec<CaseEvent>,
    /// Events committed from now on (this process's, and on PostgreSQL other replicas').
    pub live: tokio::sync::broadcast::Receiver<CaseEvent>,
    /// Changes when events may have been missed (`EventBus::resync`).
    pub resyncs: tokio::sync::watch::Receiver<u64>,
}
