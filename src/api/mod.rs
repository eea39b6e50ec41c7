//! The gRPC surface: generated code, handlers and the conversions they use.
//! Handlers are thin: convert, call `app::Gateway`, convert back. Authentication, the RPC span
//! and timeouts happen before them, in `crate::rpc`'s layers.

// Public for the fuzz harnesses (tests/it/fuzz.rs), which feed it decoded arbitrary bytes.
pub mod convert;
pub mod error;
mod watch;
mod watchers;

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::app::{self, Gateway};
use crate::audit_record::Purpose;
use crate::auth::{AuthError, Principal, Role};
use crate::rpc::auth::CallerCheck;
use crate::storage::Created;
use crate::telemetry::current_trace_id;
use crate::verifier::{Progress, Walk};
use error::ApiError;
pub use watchers::Watchers;

/// Generated messages and services of `etjanstekort.v1`.
#[allow(clippy::all, clippy::pedantic, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("etjanstekort.v1");

    /// Encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/etjanstekort_v1_descriptor.bin"));
}

use pb::deregistration_service_server::DeregistrationService;
use pb::health_care_office_service_server::HealthCareOfficeService;
use pb::operations_service_server::OperationsService;
use pb::revocation_service_server::RevocationService;

/// Paging limits of the list calls (`[api]`).
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    #[serde(rename = "default_page_size")]
    pub default_size: u32,
    #[serde(rename = "max_page_size")]
    pub max_size: u32,
}

impl Paging {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_size == 0 || self.default_size == 0 || self.default_size > self.max_size {
            return Err("default_page_size must be between 1 and max_page_size".into());
        }
        Ok(())
    }
}

/// Implements every service of the API over one `Gateway`.
#[derive(Clone, Debug)]
pub struct Api {
    gateway: Arc<Gateway>,
    paging: Paging,
    watchers: Arc<Watchers>,
    /// Turns true when the replica starts to drain: open watch streams end (`SHUTTING_DOWN`).
    draining: tokio::sync::watch::Receiver<bool>,
}

type ApiResult<T> = Result<Response<T>, Status>;

impl Api {
    pub fn new(
        gateway: Arc<Gateway>,
        paging: Paging,
        watchers: Arc<Watchers>,
        draining: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            gateway,
            paging,
            watchers,
            draining,
        }
    }

    fn page_size(&self, raw: i32) -> Result<u32, ApiError> {
        convert::page_size(
            "page_size",
            raw,
            self.paging.default_size,
            self.paging.max_size,
        )
    }

    fn page_token(
        &self,
        p: &Principal,
        token: &str,
        filters: &str,
    ) -> Result<Option<crate::domain::CaseId>, ApiError> {
        convert::decode_page_token(
            self.gateway.vault(),
            p.hsa_id.as_str(),
            "page_token",
            token,
            filters,
        )
    }

    fn next_token(
        &self,
        p: &Principal,
        last: Option<&crate::domain::CaseId>,
        filters: &str,
    ) -> String {
        last.map(|id| {
            convert::encode_page_token(self.gateway.vault(), p.hsa_id.as_str(), id, filters)
        })
        .unwrap_or_default()
    }
}

/// The caller, authenticated by `rpc::AuthLayer` for the service's role before any handler
/// runs. Its absence is a wiring fault: refused, never served unauthenticated.
fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| error::status(error::Reason::Internal, "the request was not authenticated"))
}

/// Names the case on the RPC span (and so on every log line of the request).
fn record_case(id: &crate::domain::CaseId) {
    tracing::Span::current().record("case_id", tracing::field::display(id));
}

fn ok<T>(v: T) -> ApiResult<T> {
    Ok(Response::new(v))
}

#[tonic::async_trait]
impl DeregistrationService for Api {
    async fn create_deregistration(
        &self,
        req: Request<pb::CreateDeregistrationRequest>,
    ) -> ApiResult<pb::CreateDeregistrationResponse> {
        let p = principal(&req)?;
        let trace = current_trace_id();
        let (request_id, report) = convert::new_deregistration(req.get_ref(), self.gateway.now())?;
        let created = self
            .gateway
            .create(&p, request_id, report, trace)
            .await
            .map_err(ApiError::from)?;
        match &created {
            Created::New(c) => {
                record_case(&c.id);
                tracing::info!(case_id = %c.id, "deregistration accepted");
            }
            Created::Replayed(c) => {
                record_case(&c.id);
                tracing::info!(case_id = %c.id, "idempotent retry replayed");
            }
        }
        ok(pb::CreateDeregistrationResponse {
            deregistration: Some(convert::deregistration_out(&created.into_case())),
        })
    }

    async fn get_deregistration(
        &self,
        req: Request<pb::GetDeregistrationRequest>,
    ) -> ApiResult<pb::GetDeregistrationResponse> {
        let p = principal(&req)?;
        let id = convert::case_id("id", &req.get_ref().id)?;
        record_case(&id);
        let case = self
            .gateway
            .get_own(&p, &id)
            .await
            .map_err(ApiError::from)?;
        ok(pb::GetDeregistrationResponse {
            deregistration: Some(convert::deregistration_out(&case)),
        })
    }

    async fn list_deregistrations(
        &self,
        req: Request<pb::ListDeregistrationsRequest>,
    ) -> ApiResult<pb::ListDeregistrationsResponse> {
        let p = principal(&req)?;
        let r = req.get_ref();
        let unit = convert::optional_hsa_id("care_unit_hsa_id", &r.care_unit_hsa_id)?;
        let state = convert::optional_state("state", r.state)?;
        let size = self.page_size(r.page_size)?;
        let filters = format!("list|{}|{}", r.care_unit_hsa_id.trim(), r.state);
        let after = self.page_token(&p, &r.page_token, &filters)?;
        let page = self
            .gateway
            .list_own(&p, unit, state, after, size)
            .await
            .map_err(ApiError::from)?;
        ok(pb::ListDeregistrationsResponse {
            deregistrations: page.cases.iter().map(convert::deregistration_out).collect(),
            next_page_token: self.next_token(&p, page.last.as_ref(), &filters),
        })
    }

    type WatchDeregistrationStream = Pin<
        Box<dyn Stream<Item = Result<pb::WatchDeregistrationResponse, Status>> + Send + 'static>,
    >;

    async fn watch_deregistration(
        &self,
        req: Request<pb::WatchDeregistrationRequest>,
    ) -> ApiResult<Self::WatchDeregistrationStream> {
        let p = principal(&req)?;
        let caller = req.extensions().get::<CallerCheck>().cloned();
        let id = convert::case_id("id", &req.get_ref().id)?;
        record_case(&id);
        // Counted before anything is held: over the cap nothing is subscribed or spawned.
        let permit = self.watchers.try_open(&p.hsa_id).ok_or_else(|| {
            ApiError::Refused(
                error::Reason::TooManyWatchStreams,
                "this principal has the maximum number of watch streams open; close one first"
                    .into(),
            )
        })?;
        let watch = self.gateway.watch(&p, &id).await.map_err(ApiError::from)?;
        Ok(Response::new(Box::pin(watch::stream(
            self.gateway.clone(),
            id,
            watch,
            permit,
            caller,
            self.draining.clone(),
        ))))
    }

    async fn cancel_deregistration(
        &self,
        req: Request<pb::CancelDeregistrationRequest>,
    ) -> ApiResult<pb::CancelDeregistrationResponse> {
        let p = principal(&req)?;
        let trace = current_trace_id();
        let id = convert::case_id("id", &req.get_ref().id)?;
        record_case(&id);
        let reason = convert::free_text("reason", &req.get_ref().reason)?;
        let case = self
            .gateway
            .cancel(&p, &id, reason, trace)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(case_id = %case.id, principal = %p.hsa_id, state = %case.state, "cancel requested");
        ok(pb::CancelDeregistrationResponse {
            deregistration: Some(convert::deregistration_out(&case)),
        })
    }
}

#[tonic::async_trait]
impl HealthCareOfficeService for Api {
    async fn list_kiv_removal_tasks(
        &self,
        req: Request<pb::ListKivRemovalTasksRequest>,
    ) -> ApiResult<pb::ListKivRemovalTasksResponse> {
        let p = principal(&req)?;
        let r = req.get_ref();
        let unit = convert::optional_hsa_id("care_unit_hsa_id", &r.care_unit_hsa_id)?;
        let size = self.page_size(r.page_size)?;
        let filters = format!("tasks|{}", r.care_unit_hsa_id.trim());
        let after = self.page_token(&p, &r.page_token, &filters)?;
        let page = self
            .gateway
            .list_office_tasks(&p, unit, after, size)
            .await
            .map_err(ApiError::from)?;
        ok(pb::ListKivRemovalTasksResponse {
            tasks: page.cases.iter().map(convert::office_task_out).collect(),
            next_page_token: self.next_token(&p, page.last.as_ref(), &filters),
        })
    }

    async fn complete_kiv_removal_task(
        &self,
        req: Request<pb::CompleteKivRemovalTaskRequest>,
    ) -> ApiResult<pb::CompleteKivRemovalTaskResponse> {
        let p = principal(&req)?;
        let trace = current_trace_id();
        let id = convert::case_id("deregistration_id", &req.get_ref().deregistration_id)?;
        record_case(&id);
        let comment = convert::free_text("comment", &req.get_ref().comment)?;
        let case = self
            .gateway
            .complete_office_task(&p, &id, comment, trace)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(case_id = %case.id, principal = %p.hsa_id, "KIV removal completed by the health-care office");
        ok(pb::CompleteKivRemovalTaskResponse {
            deregistration: Some(convert::deregistration_out(&case)),
        })
    }
}

#[tonic::async_trait]
impl RevocationService for Api {
    async fn list_pending_revocations(
        &self,
        req: Request<pb::ListPendingRevocationsRequest>,
    ) -> ApiResult<pb::ListPendingRevocationsResponse> {
        let p = principal(&req)?;
        let r = req.get_ref();
        let size = self.page_size(r.page_size)?;
        let after = self.page_token(&p, &r.page_token, "pending")?;
        let page = self
            .gateway
            .list_pending_revocations(after, size)
            .await
            .map_err(ApiError::from)?;
        ok(pb::ListPendingRevocationsResponse {
            revocations: page
                .cases
                .iter()
                .map(convert::pending_revocation_out)
                .collect(),
            next_page_token: self.next_token(&p, page.last.as_ref(), "pending"),
        })
    }

    async fn confirm_revocation(
        &self,
        req: Request<pb::ConfirmRevocationRequest>,
    ) -> ApiResult<pb::ConfirmRevocationResponse> {
        let p = principal(&req)?;
        let trace = current_trace_id();
        let id = convert::case_id("deregistration_id", &req.get_ref().deregistration_id)?;
        record_case(&id);
        let reference =
            convert::reference("revocation_reference", &req.get_ref().revocation_reference)?;
        let revoked_at = convert::optional_time("revoke_time", req.get_ref().revoke_time.as_ref())?;
        let certificates = convert::revoked_certificates(
            "revoked_certificates",
            &req.get_ref().revoked_certificates,
        )?;
        let case = self
            .gateway
            .confirm_revocation(&p, &id, reference, revoked_at, certificates, trace)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(case_id = %case.id, principal = %p.hsa_id, state = %case.state, "revocation confirmed");
        ok(pb::ConfirmRevocationResponse {
            deregistration: Some(convert::deregistration_out(&case)),
        })
    }

    async fn reject_revocation(
        &self,
        req: Request<pb::RejectRevocationRequest>,
    ) -> ApiResult<pb::RejectRevocationResponse> {
        let p = principal(&req)?;
        let trace = current_trace_id();
        let id = convert::case_id("deregistration_id", &req.get_ref().deregistration_id)?;
        record_case(&id);
        let reason = convert::required_text("reason", &req.get_ref().reason)?;
        let case = self
            .gateway
            .reject_revocation(&p, &id, reason, trace)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(case_id = %case.id, principal = %p.hsa_id, state = %case.state, "revocation rejected");
        ok(pb::RejectRevocationResponse {
            deregistration: Some(convert::deregistration_out(&case)),
        })
    }
}

#[tonic::async_trait]
impl OperationsService for Api {
    async fn list_attention_cases(
        &self,
        req: Request<pb::ListAttentionCasesRequest>,
    ) -> ApiResult<pb::ListAttentionCasesResponse> {
        let p = principal(&req)?;
        let r = req.get_ref();
        let size = self.page_size(r.page_size)?;
        let after = self.page_token(&p, &r.page_token, "attention")?;
        let page = self
            .gateway
            .list_attention(after, size)
            .await
            .map_err(ApiError::from)?;
        ok(pb::ListAttentionCasesResponse {
            deregistrations: page
                .cases
                .iter()
                .map(convert::deregistration_masked)
                .collect(),
            next_page_token: self.next_token(&p, page.last.as_ref(), "attention"),
        })
    }

    async fn retry_deregistration(
        &self,
        req: Request<pb::RetryDeregistrationRequest>,
    ) -> ApiResult<pb::RetryDeregistrationResponse> {
        let p = principal(&req)?;
        let trace = current_trace_id();
        let id = convert::case_id("id", &req.get_ref().id)?;
        record_case(&id);
        let case = self
            .gateway
            .retry(&p, &id, trace)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(case_id = %case.id, principal = %p.hsa_id, state = %case.state, "operator retry");
        ok(pb::RetryDeregistrationResponse {
            deregistration: Some(convert::deregistration_masked(&case)),
        })
    }

    async fn resolve_deregistration(
        &self,
        req: Request<pb::ResolveDeregistrationRequest>,
    ) -> ApiResult<pb::ResolveDeregistrationResponse> {
        let p = principal(&req)?;
        let trace = current_trace_id();
        let r = req.get_ref();
        let id = convert::case_id("id", &r.id)?;
        record_case(&id);
        let completed = match pb::Resolution::try_from(r.resolution) {
            Ok(pb::Resolution::Completed) => true,
            Ok(pb::Resolution::Cancelled) => false,
            _ => {
                return Err(ApiError::invalid(
                    "resolution",
                    "REQUIRED",
                    "is required: RESOLUTION_COMPLETED or RESOLUTION_CANCELLED",
                )
                .into());
            }
        };
        let justification = convert::required_text("justification", &r.justification)?;
        let case = self
            .gateway
            .resolve(&p, &id, completed, justification, trace)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(case_id = %case.id, principal = %p.hsa_id, state = %case.state, "operator resolved");
        ok(pb::ResolveDeregistrationResponse {
            deregistration: Some(convert::deregistration_masked(&case)),
        })
    }

    async fn get_case(&self, req: Request<pb::GetCaseRequest>) -> ApiResult<pb::GetCaseResponse> {
        let p = principal(&req)?;
        let id = convert::case_id("id", &req.get_ref().id)?;
        record_case(&id);
        let (case, head) = self.gateway.get_any(&id).await.map_err(ApiError::from)?;
        tracing::info!(case_id = %case.id, principal = %p.hsa_id, "operator read the case");
        ok(pb::GetCaseResponse {
            card_holder_pseudonym: self
                .gateway
                .vault()
                .pseudonym(&case.report.card_holder.personnummer),
            needs_attention: case.state == crate::domain::State::NeedsAttention,
            chain_head: Some(convert::chain_head_out(&head)),
            deregistration: Some(convert::deregistration_masked(&case)),
        })
    }

    async fn list_cases(
        &self,
        req: Request<pb::ListCasesRequest>,
    ) -> ApiResult<pb::ListCasesResponse> {
        let p = principal(&req)?;
        let r = req.get_ref();
        let now = self.gateway.now();
        let mut states = convert::states("states", &r.states)?;
        if r.needs_attention {
            if !states.is_empty() && !states.contains(&crate::domain::State::NeedsAttention) {
                // Both filters at once match nothing; answered as an empty page.
                return ok(pb::ListCasesResponse::default());
            }
            states = vec![crate::domain::State::NeedsAttention];
        }
        let filter = app::CaseFilter {
            states,
            care_provider: convert::optional_hsa_id(
                "care_provider_hsa_id",
                &r.care_provider_hsa_id,
            )?,
            care_unit: convert::optional_hsa_id("care_unit_hsa_id", &r.care_unit_hsa_id)?,
            created_before: convert::age_bound("min_age", r.min_age.as_ref(), now)?,
            created_after: convert::age_bound("max_age", r.max_age.as_ref(), now)?,
        };
        let size = self.page_size(r.page_size)?;
        // The age bounds are taken from the clock on every page; the keyset (the last id) keeps
        // the paging consistent, so they stay out of the token's filters.
        let filters = format!(
            "cases|{:?}|{}|{}|{}",
            r.states,
            r.care_provider_hsa_id.trim(),
            r.care_unit_hsa_id.trim(),
            r.needs_attention
        );
        let after = self.page_token(&p, &r.page_token, &filters)?;
        let page = self
            .gateway
            .list_cases(filter, after, size)
            .await
            .map_err(ApiError::from)?;
        ok(pb::ListCasesResponse {
            deregistrations: page
                .cases
                .iter()
                .map(convert::deregistration_masked)
                .collect(),
            next_page_token: self.next_token(&p, page.last.as_ref(), &filters),
        })
    }

    async fn get_case_timeline(
        &self,
        req: Request<pb::GetCaseTimelineRequest>,
    ) -> ApiResult<pb::GetCaseTimelineResponse> {
        let p = principal(&req)?;
        let id = convert::case_id("id", &req.get_ref().id)?;
        record_case(&id);
        let t = self.gateway.timeline(&id).await.map_err(ApiError::from)?;
        tracing::info!(case_id = %id, principal = %p.hsa_id, "operator read the timeline");
        ok(pb::GetCaseTimelineResponse {
            events: t.events.iter().map(convert::event_out).collect(),
            steps: t.steps.iter().map(convert::step_out).collect(),
            chain_head: Some(convert::chain_head_out(&t.head)),
        })
    }

    async fn cancel_case(
        &self,
        req: Request<pb::CancelCaseRequest>,
    ) -> ApiResult<pb::CancelCaseResponse> {
        let p = principal(&req)?;
        let trace = current_trace_id();
        let id = convert::case_id("id", &req.get_ref().id)?;
        record_case(&id);
        let justification = convert::required_text("justification", &req.get_ref().justification)?;
        let case = self
            .gateway
            .cancel_case(&p, &id, justification, trace)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(case_id = %case.id, principal = %p.hsa_id, state = %case.state, "operator cancelled");
        ok(pb::CancelCaseResponse {
            deregistration: Some(convert::deregistration_masked(&case)),
        })
    }

    type VerifyAuditChainStream =
        Pin<Box<dyn Stream<Item = Result<pb::VerifyAuditChainResponse, Status>> + Send + 'static>>;

    async fn verify_audit_chain(
        &self,
        req: Request<pb::VerifyAuditChainRequest>,
    ) -> ApiResult<Self::VerifyAuditChainStream> {
        let p = principal(&req)?;
        let raw = &req.get_ref().id;
        let store = self.gateway.store().clone();
        let mut walk = if raw.trim().is_empty() {
            tracing::info!(principal = %p.hsa_id, "operator verifies every audit chain");
            Walk::all(store)
                .await
                .map_err(|e| ApiError::from(app::AppError::from(e)))?
        } else {
            let id = convert::case_id("id", raw)?;
            record_case(&id);
            tracing::info!(principal = %p.hsa_id, case_id = %id, "operator verifies an audit chain");
            // A missing case is NOT_FOUND before the stream starts.
            self.gateway.get_any(&id).await.map_err(ApiError::from)?;
            Walk::one(store, id)
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let message = |p: Progress, broken: Option<pb::BrokenAuditChain>, done: bool| {
                pb::VerifyAuditChainResponse {
                    cases_checked: clamp(p.checked),
                    cases_total: clamp(p.total),
                    cases_broken: clamp(p.broken),
                    broken,
                    done,
                    events_checked: clamp(p.events),
                    legacy_events: clamp(p.legacy),
                }
            };
            while let Some(next) = walk.next().await {
                let (id, report) = match next {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = tx
                            .send(Err(ApiError::from(app::AppError::from(e)).into()))
                            .await;
                        return;
                    }
                };
                let progress = walk.progress();
                let msg = match &report.broken {
                    Some(b) => {
                        crate::verifier::log_broken(&id, &report);
                        Some(message(progress, Some(convert::broken_out(&id, b)), false))
                    }
                    // Progress every PROGRESS_EVERY cases.
                    None if progress.checked % PROGRESS_EVERY == 0 => {
                        Some(message(progress, None, false))
                    }
                    None => None,
                };
                if let Some(m) = msg
                    && tx.send(Ok(m)).await.is_err()
                {
                    return;
                }
            }
            let _ = tx.send(Ok(message(walk.progress(), None, true))).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn export_audit_record(
        &self,
        req: Request<pb::ExportAuditRecordRequest>,
    ) -> ApiResult<pb::ExportAuditRecordResponse> {
        let p = principal(&req)?;
        let trace = current_trace_id();
        let r = req.get_ref();
        let id = convert::case_id("id", &r.id)?;
        record_case(&id);
        let (purpose, justification) = match pb::ExportPurpose::try_from(r.purpose) {
            Ok(pb::ExportPurpose::Unspecified | pb::ExportPurpose::Pseudonymized) => (
                Purpose::Pseudonymized,
                Some(convert::free_text("justification", &r.justification)?),
            ),
            // Personal data in clear: the record keeper's role only, not the operators'.
            Ok(pb::ExportPurpose::RecordKeeper) if p.role != Role::RecordKeeper => {
                return Err(ApiError::from(AuthError::WrongRole {
                    principal: p.hsa_id.clone(),
                    has: p.role.as_str(),
                    needs: Role::RecordKeeper.as_str(),
                })
                .into());
            }
            Ok(pb::ExportPurpose::RecordKeeper) => (
                Purpose::RecordKeeper,
                Some(convert::required_text("justification", &r.justification)?),
            ),
            Err(_) => {
                return Err(ApiError::invalid(
                    "purpose",
                    "UNKNOWN_ENUM",
                    "is not a known ExportPurpose value",
                )
                .into());
            }
        };
        let record = self
            .gateway
            .export(&p, &id, purpose, justification, trace)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(case_id = %id, principal = %p.hsa_id, purpose = ?purpose, "audit record exported");
        let head = record.chain_head.to_head();
        ok(pb::ExportAuditRecordResponse {
            record_json: record.to_json(),
            chain_head: Some(convert::chain_head_out(&head)),
        })
    }
}

/// Cases between two progress messages of `VerifyAuditChain`.
const PROGRESS_EVERY: u64 = 50;

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
