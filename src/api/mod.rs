//! The gRPC surface: generated code, handlers and the conversions they use.
//! Handlers are thin: authorize, convert, call `app::Gateway`, convert back.

mod convert;
pub mod error;

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::app::Gateway;
use crate::auth::{Authorizer, Principal, Role};
use crate::storage::Created;
use error::ApiError;

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

/// Paging limits from configuration.
#[derive(Clone, Copy, Debug)]
pub struct Paging {
    pub default_size: u32,
    pub max_size: u32,
}

/// Implements every service of the API over one `Gateway`.
#[derive(Clone, Debug)]
pub struct Api {
    gateway: Arc<Gateway>,
    auth: Arc<Authorizer>,
    paging: Paging,
}

type ApiResult<T> = Result<Response<T>, Status>;

impl Api {
    pub fn new(gateway: Arc<Gateway>, auth: Arc<Authorizer>, paging: Paging) -> Self {
        Self {
            gateway,
            auth,
            paging,
        }
    }

    fn principal<T>(&self, req: &Request<T>, role: Role) -> Result<Principal, ApiError> {
        let certs = req.peer_certs();
        let principal = self
            .auth
            .authorize(certs.as_deref().map(Vec::as_slice), role)
            .cloned()
            .map_err(ApiError::from);
        if let Err(e) = &principal {
            tracing::info!(error = ?e, "request denied");
        }
        principal
    }
}

/// The W3C trace id the caller sent in `traceparent`, or a fresh random one.
fn trace_id<T>(req: &Request<T>) -> String {
    req.metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|tp| {
            let mut parts = tp.split('-');
            let (_version, id) = (parts.next()?, parts.next()?);
            (id.len() == 32
                && id.bytes().all(|b| b.is_ascii_hexdigit())
                && id.bytes().any(|b| b != b'0'))
            .then(|| id.to_ascii_lowercase())
        })
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

fn ok<T>(v: T) -> ApiResult<T> {
    Ok(Response::new(v))
}

#[tonic::async_trait]
impl DeregistrationService for Api {
    #[tracing::instrument(skip_all, fields(principal))]
    async fn create_deregistration(
        &self,
        req: Request<pb::CreateDeregistrationRequest>,
    ) -> ApiResult<pb::CreateDeregistrationResponse> {
        let p = self.principal(&req, Role::CareProvider)?;
        tracing::Span::current().record("principal", p.hsa_id.as_str());
        let trace = trace_id(&req);
        let (request_id, report) = convert::new_deregistration(req.get_ref())?;
        let created = self
            .gateway
            .create(&p, request_id, report, trace)
            .await
            .map_err(ApiError::from)?;
        match &created {
            Created::New(c) => tracing::info!(case_id = %c.id, "deregistration accepted"),
            Created::Replayed(c) => tracing::info!(case_id = %c.id, "idempotent retry replayed"),
        }
        ok(pb::CreateDeregistrationResponse {
            deregistration: Some(convert::deregistration_out(&created.into_case())),
        })
    }

    async fn get_deregistration(
        &self,
        req: Request<pb::GetDeregistrationRequest>,
    ) -> ApiResult<pb::GetDeregistrationResponse> {
        let p = self.principal(&req, Role::CareProvider)?;
        let id = convert::case_id("id", &req.get_ref().id)?;
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
        let p = self.principal(&req, Role::CareProvider)?;
        let r = req.get_ref();
        let unit = convert::optional_hsa_id("care_unit_hsa_id", &r.care_unit_hsa_id)?;
        let state = convert::optional_state("state", r.state)?;
        let size = convert::page_size(
            "page_size",
            r.page_size,
            self.paging.default_size,
            self.paging.max_size,
        )?;
        let filters = format!("{}|{}", r.care_unit_hsa_id.trim(), r.state);
        let after = convert::decode_page_token("page_token", &r.page_token, &filters)?;
        let page = self
            .gateway
            .list_own(&p, unit, state, after, size)
            .await
            .map_err(ApiError::from)?;
        ok(pb::ListDeregistrationsResponse {
            deregistrations: page.cases.iter().map(convert::deregistration_out).collect(),
            next_page_token: page
                .last
                .map(|id| convert::encode_page_token(&id, &filters))
                .unwrap_or_default(),
        })
    }

    type WatchDeregistrationStream = Pin<
        Box<dyn Stream<Item = Result<pb::WatchDeregistrationResponse, Status>> + Send + 'static>,
    >;

    async fn watch_deregistration(
        &self,
        req: Request<pb::WatchDeregistrationRequest>,
    ) -> ApiResult<Self::WatchDeregistrationStream> {
        let p = self.principal(&req, Role::CareProvider)?;
        let id = convert::case_id("id", &req.get_ref().id)?;
        self.gateway
            .get_own(&p, &id)
            .await
            .map_err(ApiError::from)?;
        Err(
            ApiError::Unimplemented("WatchDeregistration arrives with the saga engine".into())
                .into(),
        )
    }

    async fn cancel_deregistration(
        &self,
        req: Request<pb::CancelDeregistrationRequest>,
    ) -> ApiResult<pb::CancelDeregistrationResponse> {
        let p = self.principal(&req, Role::CareProvider)?;
        let trace = trace_id(&req);
        let id = convert::case_id("id", &req.get_ref().id)?;
        let reason = convert::free_text("reason", &req.get_ref().reason)?;
        let case = self
            .gateway
            .cancel(&p, &id, reason, trace)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(case_id = %case.id, state = %case.state, "cancel requested");
        ok(pb::CancelDeregistrationResponse {
            deregistration: Some(convert::deregistration_out(&case)),
        })
    }
}

/// Role checked first, so a wrong caller learns nothing about what is implemented.
fn not_yet<T>(api: &Api, req: &Request<T>, role: Role, rpc: &str) -> Status {
    match api.principal(req, role) {
        Err(e) => e.into(),
        Ok(_) => ApiError::Unimplemented(format!("{rpc} arrives with the saga engine")).into(),
    }
}

#[tonic::async_trait]
impl HealthCareOfficeService for Api {
    async fn list_kiv_removal_tasks(
        &self,
        req: Request<pb::ListKivRemovalTasksRequest>,
    ) -> ApiResult<pb::ListKivRemovalTasksResponse> {
        Err(not_yet(
            self,
            &req,
            Role::HealthCareOffice,
            "ListKivRemovalTasks",
        ))
    }

    async fn complete_kiv_removal_task(
        &self,
        req: Request<pb::CompleteKivRemovalTaskRequest>,
    ) -> ApiResult<pb::CompleteKivRemovalTaskResponse> {
        Err(not_yet(
            self,
            &req,
            Role::HealthCareOffice,
            "CompleteKivRemovalTask",
        ))
    }
}

#[tonic::async_trait]
impl RevocationService for Api {
    async fn list_pending_revocations(
        &self,
        req: Request<pb::ListPendingRevocationsRequest>,
    ) -> ApiResult<pb::ListPendingRevocationsResponse> {
        Err(not_yet(
            self,
            &req,
            Role::TjansteidService,
            "ListPendingRevocations",
        ))
    }

    async fn confirm_revocation(
        &self,
        req: Request<pb::ConfirmRevocationRequest>,
    ) -> ApiResult<pb::ConfirmRevocationResponse> {
        Err(not_yet(
            self,
            &req,
            Role::TjansteidService,
            "ConfirmRevocation",
        ))
    }

    async fn reject_revocation(
        &self,
        req: Request<pb::RejectRevocationRequest>,
    ) -> ApiResult<pb::RejectRevocationResponse> {
        Err(not_yet(
            self,
            &req,
            Role::TjansteidService,
            "RejectRevocation",
        ))
    }
}

#[tonic::async_trait]
impl OperationsService for Api {
    async fn list_attention_cases(
        &self,
        req: Request<pb::ListAttentionCasesRequest>,
    ) -> ApiResult<pb::ListAttentionCasesResponse> {
        Err(not_yet(self, &req, Role::Operator, "ListAttentionCases"))
    }

    async fn retry_deregistration(
        &self,
        req: Request<pb::RetryDeregistrationRequest>,
    ) -> ApiResult<pb::RetryDeregistrationResponse> {
        Err(not_yet(self, &req, Role::Operator, "RetryDeregistration"))
    }

    async fn resolve_deregistration(
        &self,
        req: Request<pb::ResolveDeregistrationRequest>,
    ) -> ApiResult<pb::ResolveDeregistrationResponse> {
        Err(not_yet(self, &req, Role::Operator, "ResolveDeregistration"))
    }
}
