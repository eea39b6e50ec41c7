//! Authentication and authorization of every call: the verified client certificate becomes a
//! `Principal` (inserted into the request extensions, where handlers read it), and the role
//! the gRPC service needs is checked. Denials are answered and logged here, once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::api::pb;
use crate::auth::{AuthError, Principals, Role};
use crate::crl::CrlStore;
use crate::metrics::Metrics;

/// What a path needs before any handler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// An API service or the console: a principal with this role.
    Needs(Role),
    /// Health and reflection: only the client certificate mutual TLS has already verified.
    Open,
    /// Anything else (`//console`, `/%63onsole`, unknown prefixes): refused here, deny by
    /// default, so no look-alike path reaches a handler or a fallback route unauthorized.
    Unknown,
}

/// The one path a record keeper may call (besides the operators, who may call it too).
const EXPORT_AUDIT_RECORD: &str = "/etjanstekort.v1.OperationsService/ExportAuditRecord";

/// Served to any verified client certificate.
const OPEN_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn access(path: &str) -> Access {
    let service = path
        .strip_prefix('/')
        .and_then(|p| p.split('/').next())
        .unwrap_or_default();
    if let Some(role) = role_of(service) {
        Access::Needs(role)
    } else if OPEN_SERVICES.contains(&service) {
        Access::Open
    } else {
        Access::Unknown
    }
}

/// The role each API service requires (`None` for health, reflection and unknown paths).
#[cfg(test)]
fn required_role(path: &str) -> Option<Role> {
    match access(path) {
        Access::Needs(role) => Some(role),
        Access::Open | Access::Unknown => None,
    }
}

fn role_of(service: &str) -> Option<Role> {
    match service {
        pb::deregistration_service_server::SERVICE_NAME => Some(Role::CareProvider),
        pb::health_care_office_service_server::SERVICE_NAME => Some(Role::HealthCareOffice),
        pb::revocation_service_server::SERVICE_NAME => Some(Role::TjansteidService),
        pb::operations_service_server::SERVICE_NAME => Some(Role::Operator),
        // The console's pages (`crate::console`): operators only, like their RPCs.
        s if s == CONSOLE => Some(Role::Operator),
        _ => None,
    }
}

/// The first path segment of the console's pages.
const CONSOLE: &str = "console";

fn is_console(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.split('/').next())
        .is_some_and(|s| s == CONSOLE)
}

/// The status a denial is answered with (messages name the rule, never personal data), with
/// its `ErrorInfo` reason like every other error.
pub fn denial(e: &AuthError) -> tonic::Status {
    crate::api::error::status(e.into(), e.to_string())
}

/// Certificate → principal, role by service.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Arc<Principals>,
    revocation: Option<Revocation>,
}

/// The CRLs in force, consulted on every call: a certificate revoked while its connection is
/// open is refused on its next call, not only at its next handshake.
#[derive(Clone, Debug)]
struct Revocation {
    crls: Arc<CrlStore>,
    metrics: Arc<Metrics>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Principals>) -> Self {
        Self {
            auth,
            revocation: None,
        }
    }

    /// Checks each call's client certificate against `crls` as well.
    pub fn with_revocation(mut self, crls: Arc<CrlStore>, metrics: Arc<Metrics>) -> Self {
        self.revocation = Some(Revocation { crls, metrics });
        self
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
            revocation: self.revocation.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Principals>,
    revocation: Option<Revocation>,
}

impl<S> tower_service::Service<http::Request<Body>> for AuthService<S>
where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let needs = match access(req.uri().path()) {
            Access::Needs(role) => role,
            Access::Open => return Box::pin(self.inner.call(req)),
            Access::Unknown => {
                // The path is not logged: it is the caller's text.
                tracing::info!("request refused: no such service");
                let refused = tonic::Status::unimplemented("no such service").into_http();
                return Box::pin(std::future::ready(Ok(refused)));
            }
        };
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let leaf = certs.as_deref().and_then(|c| c.first());
        if let (Some(r), Some(leaf)) = (&self.revocation, leaf)
            && let Some((serial, issuer)) = r.crls.snapshot().revocation_of(leaf.as_ref())
        {
            tracing::warn!(serial = %serial, issuer = %issuer,
                "request denied: the client certificate has been revoked");
            r.metrics.client_certificate_refused("revoked");
            let e = AuthError::Revoked { serial };
            return Box::pin(std::future::ready(Ok(denial(&e).into_http())));
        }
        // The principals in force now: a reload applies to the very next call.
        let principals = self.auth.current();
        // The record keeper reaches the one RPC it has: exporting a case's record.
        let or: &[Role] = if req.uri().path() == EXPORT_AUDIT_RECORD {
            &[Role::RecordKeeper]
        } else {
            &[]
        };
        match principals.authorize_any(certs.as_deref().map(Vec::as_slice), needs, or) {
            Ok(principal) => {
                // The RPC span (current here) names the caller: an HSA-id, not personal data.
                tracing::Span::current().record("principal", principal.hsa_id.as_str());
                req.extensions_mut().insert(principal.clone());
                Box::pin(self.inner.call(req))
            }
            Err(e) => {
                tracing::info!(reason = %e, "request denied");
                // A browser gets a page (HTTP 403), a gRPC client its status.
                let response = if is_console(req.uri().path()) {
                    crate::console::forbidden()
                } else {
                    denial(&e).into_http()
                };
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_api_service_needs_its_role() {
        let role = |p: &str| required_role(p);
        assert_eq!(
            role("/etjanstekort.v1.DeregistrationService/CreateDeregistration"),
            Some(Role::CareProvider)
        );
        assert_eq!(
            role("/etjanstekort.v1.HealthCareOfficeService/ListKivRemovalTasks"),
            Some(Role::HealthCareOffice)
        );
        assert_eq!(
            role("/etjanstekort.v1.RevocationService/ConfirmRevocation"),
            Some(Role::TjansteidService)
        );
        assert_eq!(
            role("/etjanstekort.v1.OperationsService/RetryDeregistration"),
            Some(Role::Operator)
        );
        // Unknown methods of an API service still need its role.
        assert_eq!(
            role("/etjanstekort.v1.OperationsService/Nope"),
            Some(Role::Operator)
        );
        assert_eq!(role("/grpc.health.v1.Health/Check"), None);
        // The console's pages, whatever follows the prefix; not a look-alike.
        assert_eq!(role("/console"), Some(Role::Operator));
        assert_eq!(role("/console/cases/x"), Some(Role::Operator));
        assert_eq!(role("/consoles"), None);
        assert!(is_console("/console/") && !is_console("/consoles/x"));
        assert_eq!(
            role("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
    }

    #[test]
    fn only_known_services_health_reflection_and_the_console_are_routed() {
        for open in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(access(open), Access::Open, "{open}");
        }
        for unknown in [
            "",
            "/",
            "//console",
            "//console/cases/x",
            "/%63onsole",
            "/Console",
            "/consoles",
            "console",
            "/metrics",
            "/grpc.health.v1.Healthz/Check",
            "//etjanstekort.v1.OperationsService/ListCases",
            "/etjanstekort.v1.Nope/X",
        ] {
            assert_eq!(access(unknown), Access::Unknown, "{unknown:?}");
        }
    }

    /// An inner service that records whether it was reached.
    #[derive(Clone)]
    struct Handler(Arc<std::sync::atomic::AtomicUsize>);

    impl tower_service::Service<http::Request<Body>> for Handler {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok(http::Response::new(Body::empty())))
        }
    }

    #[tokio::test]
    async fn unknown_and_unauthorized_paths_never_reach_a_handler() {
        use tower_layer::Layer as _;
        use tower_service::Service as _;
        let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let layer = AuthLayer::new(Arc::new(Principals::default()));
        let mut service = layer.layer(Handler(reached.clone()));
        for method in ["GET", "HEAD", "POST"] {
            for path in [
                "//console",
                "/%63onsole",
                "/%2Fconsole",
                "/nope/x",
                "//etjanstekort.v1.OperationsService/ListCases",
                // Known, but no certificate: denied too.
                "/console",
                "/console/cases/x",
                "/etjanstekort.v1.OperationsService/ListCases",
            ] {
                let req = http::Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::empty())
                    .unwrap();
                let response = service.call(req).await.unwrap();
                let grpc_status = response
                    .headers()
                    .get("grpc-status")
                    .map(|v| v.to_str().unwrap().to_owned());
                assert!(
                    response.status() == http::StatusCode::FORBIDDEN || grpc_status.is_some(),
                    "{method} {path}: {response:?}"
                );
                if path.starts_with("//") || path.contains('%') || path.starts_with("/nope") {
                    assert_eq!(grpc_status.as_deref(), Some("12"), "{method} {path}");
                }
            }
        }
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0);
        // Health passes through to its handler.
        let req = http::Request::builder()
            .method("POST")
            .uri("/grpc.health.v1.Health/Check")
            .body(Body::empty())
            .unwrap();
        service.call(req).await.unwrap();
        assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
