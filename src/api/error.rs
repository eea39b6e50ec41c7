//! The one place where errors become gRPC statuses. Messages name fields and rules and never
//! carry personal data (the domain's error types cannot hold it).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::app::AppError;
use crate::auth::AuthError;
use crate::storage::StoreError;

#[derive(Debug)]
pub enum ApiError {
    InvalidArgument(Vec<FieldViolation>),
    Unauthenticated(String),
    PermissionDenied(String),
    NotFound(String),
    AlreadyExists(String),
    FailedPrecondition(String),
    Unimplemented(String),
    Unavailable(String),
    Internal(String),
}

impl ApiError {
    /// One field violation: the field path, a stable rule code and the rule in words.
    pub fn invalid(field: &str, code: &str, rule: impl std::fmt::Display) -> Self {
        ApiError::InvalidArgument(vec![violation(field, code, rule)])
    }
}

pub fn violation(field: &str, code: &str, rule: impl std::fmt::Display) -> FieldViolation {
    let mut v = FieldViolation::new(field, rule.to_string());
    v.reason = code.to_owned();
    v
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::InvalidArgument(v) => {
                // Field paths and rule codes only: never the rejected values.
                let fields: Vec<String> = v
                    .iter()
                    .map(|f| format!("{}={}", f.field, f.reason))
                    .collect();
                tracing::info!(violations = ?fields, "request rejected: invalid argument");
                let summary = v
                    .iter()
                    .map(|f| format!("{}: {}", f.field, f.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid request: {summary}"),
                    ErrorDetails::with_bad_request(v),
                )
            }
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::PermissionDenied(m) => {
                tracing::info!(reason = %m, "request denied");
                Status::permission_denied(m)
            }
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::AlreadyExists(m) => Status::already_exists(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::Unimplemented(m) => Status::unimplemented(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::Internal(m) => Status::internal(m),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::NoCertificate | AuthError::NoHsaId => {
                ApiError::Unauthenticated(e.to_string())
            }
            AuthError::UnknownPrincipal(_) | AuthError::WrongRole { .. } => {
                ApiError::PermissionDenied(e.to_string())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("deregistration not found".into()),
            StoreError::RequestIdReused => ApiError::AlreadyExists(
                "request_id was already used with different content; use a new request_id for a new report".into(),
            ),
            StoreError::ActiveCaseExists => {
                ApiError::AlreadyExists("an active deregistration already exists for this card_number".into())
            }
            StoreError::Transition(t) => ApiError::FailedPrecondition(t.to_string()),
            StoreError::Unavailable(ref db) => {
                tracing::warn!(error = %db, "case store unavailable");
                ApiError::Unavailable("the case store is unavailable; nothing was stored, retry later".into())
            }
            StoreError::ConcurrentRetry => {
                ApiError::Unavailable("a concurrent request with the same request_id is in progress; retry".into())
            }
            StoreError::Invariant(m) => {
                tracing::error!(error = %m, "invariant check refused a change");
                ApiError::Internal("an internal safety check refused the change; nothing was changed".into())
            }
            StoreError::Corrupt(m) => {
                tracing::error!(error = %m, "stored data unreadable");
                ApiError::Internal("stored data is unreadable".into())
            }
        }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::PermissionDenied(m) => ApiError::PermissionDenied(m),
            AppError::NotFound => ApiError::NotFound("deregistration not found".into()),
            AppError::Precondition(m) => ApiError::FailedPrecondition(m),
            AppError::RevokedAt(e) => {
                use crate::domain::Rule;
                ApiError::invalid("revoke_time", e.code(), e)
            }
            AppError::Store(s) => s.into(),
        }
    }
}
