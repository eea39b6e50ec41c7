//! The one place where errors become gRPC statuses. Every non-OK status the gateway answers
//! carries a `google.rpc.ErrorInfo` with a stable `reason` (a client branches on it, never on
//! the message text) in the domain [`ERROR_DOMAIN`]; validation adds `google.rpc.BadRequest`,
//! and the retryable causes add `google.rpc.RetryInfo`. Messages name fields and rules and
//! never carry personal data (the domain's error types cannot hold it).

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::app::AppError;
use crate::auth::AuthError;
use crate::domain::saga::TransitionError;
use crate::storage::StoreError;

/// The `ErrorInfo.domain` of every error this gateway answers.
pub const ERROR_DOMAIN: &str = "etjanstekort.vgregion.se";

/// Why a call failed, as `ErrorInfo.reason`. The names are part of the API contract (listed in
/// `docs/api.md`): they are only ever added, never renamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    ValidationFailed,
    CertificateRequired,
    NoHsaIdInCertificate,
    UnknownPrincipal,
    CertificateRevoked,
    RevocationStatusUnknown,
    RoleRequired,
    UnitNotGranted,
    CaseNotFound,
    DuplicateRequestId,
    CardHasActiveCase,
    RouteNotAvailable,
    CancelTooLate,
    NotReported,
    OutcomeSettled,
    RevocationNotConfirmed,
    RevocationNotVerified,
    ConflictingRevocationReference,
    WrongRoute,
    NotAwaitingKivRemoval,
    NotNeedingAttention,
    StoreUnavailable,
    ConcurrentRequest,
    RequestTimeout,
    TooManyWatchStreams,
    RateLimited,
    RequestTooLarge,
    ShuttingDown,
    Internal,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The gRPC code a reason is answered with; one code per reason.
    pub fn code(self) -> Code {
        use Reason as R;
        match self {
            R::ValidationFailed => Code::InvalidArgument,
            R::CertificateRequired
            | R::NoHsaIdInCertificate
            | R::CertificateRevoked
            | R::RevocationStatusUnknown => Code::Unauthenticated,
            R::UnknownPrincipal | R::RoleRequired | R::UnitNotGranted => Code::PermissionDenied,
            R::CaseNotFound => Code::NotFound,
            R::DuplicateRequestId | R::CardHasActiveCase => Code::AlreadyExists,
            R::RouteNotAvailable
            | R::CancelTooLate
            | R::NotReported
            | R::OutcomeSettled
            | R::RevocationNotConfirmed
            | R::RevocationNotVerified
            | R::ConflictingRevocationReference
            | R::WrongRoute
            | R::NotAwaitingKivRemoval
            | R::NotNeedingAttention => Code::FailedPrecondition,
            R::StoreUnavailable | R::ConcurrentRequest | R::ShuttingDown => Code::Unavailable,
            R::RequestTimeout => Code::DeadlineExceeded,
            R::TooManyWatchStreams | R::RateLimited | R::RequestTooLarge => Code::ResourceExhausted,
            R::Internal => Code::Internal,
        }
    }

    /// The wait suggested in `RetryInfo`, for the causes where the same call (same request_id)
    /// can simply be sent again. `RATE_LIMITED` carries one too, computed from the caller's
    /// bucket ([`rate_limited`]).
    pub fn retry_delay(self) -> Option<Duration> {
        match self {
            // An outage: give the database a moment.
            Reason::StoreUnavailable => Some(Duration::from_secs(1)),
            // The other request finishes within one transaction: a short wait suffices.
            Reason::ConcurrentRequest => Some(Duration::from_millis(200)),
            // Another replica takes the call (the load balancer no longer sends here).
            Reason::ShuttingDown => Some(Duration::from_millis(100)),
            _ => None,
        }
    }
}

impl From<&AuthError> for Reason {
    fn from(e: &AuthError) -> Self {
        match e {
            AuthError::NoCertificate => Reason::CertificateRequired,
            AuthError::NoHsaId => Reason::NoHsaIdInCertificate,
            AuthError::UnknownPrincipal(_) => Reason::UnknownPrincipal,
            AuthError::WrongRole { .. } => Reason::RoleRequired,
            AuthError::Revoked { .. } => Reason::CertificateRevoked,
            AuthError::RevocationUnknown { .. } => Reason::RevocationStatusUnknown,
        }
    }
}

impl From<&TransitionError> for Reason {
    fn from(e: &TransitionError) -> Self {
        match e {
            TransitionError::CancelTooLate { .. } => Reason::CancelTooLate,
            TransitionError::NotReported => Reason::NotReported,
            TransitionError::OutcomeSettled { .. } => Reason::OutcomeSettled,
            TransitionError::RevocationNotConfirmed => Reason::RevocationNotConfirmed,
            TransitionError::RevocationNotVerified => Reason::RevocationNotVerified,
            TransitionError::ConflictingReference => Reason::ConflictingRevocationReference,
            TransitionError::WrongRoute => Reason::WrongRoute,
            TransitionError::NotAwaitingKivRemoval { .. } => Reason::NotAwaitingKivRemoval,
            TransitionError::NotNeedingAttention { .. } => Reason::NotNeedingAttention,
        }
    }
}

/// The status for a reason: its code, the message, and `ErrorInfo` (+ `RetryInfo` where a
/// retry makes sense) on top of the given details. Every status the gateway builds goes
/// through here, the auth layer's and the timeout's too.
pub fn status_with(
    reason: Reason,
    message: impl Into<String>,
    mut details: ErrorDetails,
) -> Status {
    details.set_error_info(
        reason.as_str(),
        ERROR_DOMAIN,
        HashMap::<String, String>::new(),
    );
    if let Some(delay) = reason.retry_delay() {
        details.set_retry_info(Some(delay));
    }
    Status::with_error_details(reason.code(), message, details)
}

/// [`status_with`] without further details.
pub fn status(reason: Reason, message: impl Into<String>) -> Status {
    status_with(reason, message, ErrorDetails::new())
}

/// `RATE_LIMITED`: the caller's rate limit is used up; `RetryInfo` says when its next call
/// will be admitted.
pub fn rate_limited(retry_after: Duration) -> Status {
    let mut details = ErrorDetails::new();
    details.set_retry_info(Some(retry_after));
    status_with(
        Reason::RateLimited,
        "rate limit of this principal exceeded; retry after the RetryInfo delay",
        details,
    )
}

/// The `google.rpc` error-detail types (`google/rpc/error_details.proto`, `status.proto`) for
/// server reflection, so that grpcurl and other reflection clients print details by name.
/// tonic-types ships them with bare file names; they are served under their canonical paths,
/// which is how every client's own copy names them. Their imports (`google/protobuf/any.proto`,
/// `duration.proto`) are in `pb::FILE_DESCRIPTOR_SET`.
pub fn detail_descriptors() -> Result<prost_types::FileDescriptorSet, prost::DecodeError> {
    let mut set: prost_types::FileDescriptorSet =
        prost::Message::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)?;
    let canonical = |name: &mut String| {
        if !name.starts_with("google/") {
            *name = format!("google/rpc/{name}");
        }
    };
    for file in &mut set.file {
        if let Some(name) = file.name.as_mut() {
            canonical(name);
        }
        file.dependency.iter_mut().for_each(canonical);
    }
    Ok(set)
}

#[derive(Debug)]
pub enum ApiError {
    /// Field violations; answered as INVALID_ARGUMENT, `VALIDATION_FAILED` with `BadRequest`.
    InvalidArgument(Vec<FieldViolation>),
    /// Any other refusal: the reason decides the code.
    Refused(Reason, String),
}

impl ApiError {
    /// One field violation: the field path, a stable rule code and the rule in words.
    pub fn invalid(field: &str, code: &str, rule: impl std::fmt::Display) -> Self {
        ApiError::InvalidArgument(vec![violation(field, code, rule)])
    }

    fn refused(reason: Reason, message: impl Into<String>) -> Self {
        ApiError::Refused(reason, message.into())
    }

    /// This replica is shutting down: the call (a watch) is to be made again, and reaches
    /// another replica.
    pub fn shutting_down() -> Self {
        ApiError::refused(
            Reason::ShuttingDown,
            "this gateway replica is shutting down; call again to reach another one",
        )
    }

    /// The reason the status will carry.
    pub fn reason(&self) -> Reason {
        match self {
            ApiError::InvalidArgument(_) => Reason::ValidationFailed,
            ApiError::Refused(r, _) => *r,
        }
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
                status_with(
                    Reason::ValidationFailed,
                    format!("invalid request: {summary}"),
                    ErrorDetails::with_bad_request(v),
                )
            }
            ApiError::Refused(reason, m) => {
                if reason.code() == Code::PermissionDenied {
                    tracing::info!(reason = %m, "request denied");
                }
                status(reason, m)
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::refused(Reason::from(&e), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => {
                ApiError::refused(Reason::CaseNotFound, "deregistration not found")
            }
            StoreError::RequestIdReused => ApiError::refused(
                Reason::DuplicateRequestId,
                "request_id was already used with different content; use a new request_id for a new report",
            ),
            StoreError::ActiveCaseExists => ApiError::refused(
                Reason::CardHasActiveCase,
                "an active deregistration already exists for this card_number",
            ),
            StoreError::Transition(t) => ApiError::refused(Reason::from(&t), t.to_string()),
            StoreError::Unavailable(ref db) => {
                tracing::warn!(error = %db, "case store unavailable");
                ApiError::refused(
                    Reason::StoreUnavailable,
                    "the case store is unavailable; nothing was stored, retry later",
                )
            }
            StoreError::ConcurrentRetry => ApiError::refused(
                Reason::ConcurrentRequest,
                "a concurrent request with the same request_id is in progress; retry",
            ),
            StoreError::Invariant(m) => {
                tracing::error!(error = %m, "invariant check refused a change");
                ApiError::refused(
                    Reason::Internal,
                    "an internal safety check refused the change; nothing was changed",
                )
            }
            StoreError::Corrupt(m) => {
                tracing::error!(error = %m, "stored data unreadable");
                ApiError::refused(Reason::Internal, "stored data is unreadable")
            }
        }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            // The application refuses callers only for a care unit they hold no grant for.
            AppError::PermissionDenied(m) => ApiError::refused(Reason::UnitNotGranted, m),
            AppError::NotFound => {
                ApiError::refused(Reason::CaseNotFound, "deregistration not found")
            }
            // Its one precondition: the care-provider route on a gateway without KIV access.
            AppError::Precondition(m) => ApiError::refused(Reason::RouteNotAvailable, m),
            AppError::RevokedAt(e) => {
                use crate::domain::Rule;
                ApiError::invalid("revoke_time", e.code(), e)
            }
            AppError::CertificateRefused(field, code, rule) => {
                ApiError::invalid(&field, code, rule)
            }
            AppError::Store(s) => s.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{HsaId, State};
    use strum::IntoEnumIterator as _;

    fn hsa() -> HsaId {
        HsaId::parse("SE2321000131-E000000000001").expect("valid HSA-id")
    }

    /// Every error source the API maps, one value per variant, with the reason it must carry.
    fn every_error() -> Vec<(ApiError, &'static str)> {
        use TransitionError as T;
        let s = State::Revoked;
        let store = |e: StoreError| ApiError::from(AppError::Store(e));
        vec![
            (
                ApiError::invalid("f", "REQUIRED", "is required"),
                "VALIDATION_FAILED",
            ),
            (AuthError::NoCertificate.into(), "CERTIFICATE_REQUIRED"),
            (AuthError::NoHsaId.into(), "NO_HSA_ID_IN_CERTIFICATE"),
            (
                AuthError::Revoked {
                    serial: "01".into(),
                }
                .into(),
                "CERTIFICATE_REVOKED",
            ),
            (
                AuthError::UnknownPrincipal(hsa()).into(),
                "UNKNOWN_PRINCIPAL",
            ),
            (
                AuthError::WrongRole {
                    principal: hsa(),
                    has: "a",
                    needs: "b",
                }
                .into(),
                "ROLE_REQUIRED",
            ),
            (
                AppError::PermissionDenied("no grant".into()).into(),
                "UNIT_NOT_GRANTED",
            ),
            (AppError::NotFound.into(), "CASE_NOT_FOUND"),
            (
                AppError::Precondition("no KIV".into()).into(),
                "ROUTE_NOT_AVAILABLE",
            ),
            (store(StoreError::NotFound), "CASE_NOT_FOUND"),
            (store(StoreError::RequestIdReused), "DUPLICATE_REQUEST_ID"),
            (store(StoreError::ActiveCaseExists), "CARD_HAS_ACTIVE_CASE"),
            (
                store(T::CancelTooLate { state: s }.into()),
                "CANCEL_TOO_LATE",
            ),
            (store(T::NotReported.into()), "NOT_REPORTED"),
            (
                store(T::OutcomeSettled { state: s }.into()),
                "OUTCOME_SETTLED",
            ),
            (
                store(T::RevocationNotConfirmed.into()),
                "REVOCATION_NOT_CONFIRMED",
            ),
            (
                store(T::ConflictingReference.into()),
                "CONFLICTING_REVOCATION_REFERENCE",
            ),
            (store(T::WrongRoute.into()), "WRONG_ROUTE"),
            (
                store(T::NotAwaitingKivRemoval { state: s }.into()),
                "NOT_AWAITING_KIV_REMOVAL",
            ),
            (
                store(T::NotNeedingAttention { state: s }.into()),
                "NOT_NEEDING_ATTENTION",
            ),
            (
                store(StoreError::Unavailable(sea_orm::DbErr::Custom(
                    "down".into(),
                ))),
                "STORE_UNAVAILABLE",
            ),
            (store(StoreError::ConcurrentRetry), "CONCURRENT_REQUEST"),
            (
                ApiError::Refused(Reason::TooManyWatchStreams, "cap".into()),
                "TOO_MANY_WATCH_STREAMS",
            ),
            (
                ApiError::Refused(Reason::RequestTooLarge, "big".into()),
                "REQUEST_TOO_LARGE",
            ),
            (ApiError::shutting_down(), "SHUTTING_DOWN"),
            (store(StoreError::Invariant("x".into())), "INTERNAL"),
            (store(StoreError::Corrupt("x".into())), "INTERNAL"),
        ]
    }

    #[test]
    fn every_api_error_carries_its_reason_domain_and_code() {
        for (e, want) in every_error() {
            let reason = e.reason();
            let status = Status::from(e);
            let info = status.get_details_error_info().expect(want);
            assert_eq!(info.reason, want);
            assert_eq!(info.domain, ERROR_DOMAIN);
            assert_eq!(reason.as_str(), want);
            assert_eq!(status.code(), reason.code(), "{want}");
            // RetryInfo exactly where resending the same call is the answer.
            let retry = status.get_details_retry_info();
            let retryable = matches!(
                want,
                "STORE_UNAVAILABLE" | "CONCURRENT_REQUEST" | "SHUTTING_DOWN"
            );
            assert_eq!(retry.is_some(), retryable, "{want}");
        }
        // The rate limit's status: its reason, code and the caller's own wait.
        let limited = rate_limited(Duration::from_millis(1500));
        let info = limited.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "RATE_LIMITED");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(limited.code(), Code::ResourceExhausted);
        let retry = limited.get_details_retry_info().expect("RetryInfo");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(1500)));
        let validation = Status::from(ApiError::invalid("f", "REQUIRED", "is required"));
        let bad = validation
            .get_details_bad_request()
            .expect("BadRequest kept");
        assert_eq!(bad.field_violations[0].field, "f");
    }

    #[test]
    fn the_codes_are_unchanged_by_the_reasons() {
        let code = |e: ApiError| Status::from(e).code();
        assert_eq!(code(AppError::NotFound.into()), Code::NotFound);
        assert_eq!(
            code(StoreError::RequestIdReused.into()),
            Code::AlreadyExists
        );
        assert_eq!(
            code(StoreError::ActiveCaseExists.into()),
            Code::AlreadyExists
        );
        assert_eq!(
            code(TransitionError::WrongRoute.into_api()),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(TransitionError::ConflictingReference.into_api()),
            Code::FailedPrecondition
        );
        assert_eq!(code(StoreError::ConcurrentRetry.into()), Code::Unavailable);
        assert_eq!(code(AuthError::NoHsaId.into()), Code::Unauthenticated);
        assert_eq!(
            code(AuthError::UnknownPrincipal(hsa()).into()),
            Code::PermissionDenied
        );
        assert_eq!(code(StoreError::Corrupt("x".into()).into()), Code::Internal);
    }

    trait IntoApi {
        fn into_api(self) -> ApiError;
    }
    impl IntoApi for TransitionError {
        fn into_api(self) -> ApiError {
            StoreError::Transition(self).into()
        }
    }

    #[test]
    fn the_detail_types_are_served_under_their_canonical_paths() {
        let set = detail_descriptors().expect("decodes");
        let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
        assert!(
            names.contains(&"google/rpc/error_details.proto"),
            "{names:?}"
        );
        assert!(names.contains(&"google/rpc/status.proto"), "{names:?}");
        for f in &set.file {
            for dep in &f.dependency {
                assert!(dep.starts_with("google/"), "{}: {dep}", f.name());
            }
        }
    }

    /// The reasons are contract: each one is documented, with its code, in docs/api.md.
    #[test]
    fn every_reason_is_documented_with_its_code() {
        let doc = include_str!("../../docs/api.md");
        for r in Reason::iter() {
            let row = format!("| `{}` | `{}` |", r.as_str(), code_name(r.code()));
            assert!(doc.contains(&row), "docs/api.md lacks the row {row}");
        }
    }

    fn code_name(c: Code) -> &'static str {
        match c {
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Unavailable => "UNAVAILABLE",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::Internal => "INTERNAL",
            other => unreachable!("no reason uses {other:?}"),
        }
    }
}
