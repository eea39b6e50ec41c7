//! Authentication and authorization of every call: the verified client certificate becomes a
//! `Principal` (inserted into the request extensions, where handlers read it), and the role
//! the gRPC service needs is checked. Denials are answered and logged here, once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::api::pb;
use crate::auth::{AuthError, Principal, Principals, Role};
use crate::crl::{CertificateRefusal, CrlStore, RefusalReason};
use crate::metrics::Metrics;
use crate::rpc::limit::{self, RateLimiter};

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
    limit: Option<(Arc<RateLimiter>, Arc<Metrics>)>,
    recheck_every: Duration,
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
            limit: None,
            recheck_every: Duration::from_secs(10),
        }
    }

    /// How often long calls (watch streams) judge their caller again between events
    /// (`CallerCheck`): 10 s unless set, and when set to zero (a CRL ages even when no file
    /// is reloaded); at least 50 ms.
    pub fn with_recheck_every(mut self, every: Duration) -> Self {
        self.recheck_every = if every.is_zero() {
            Duration::from_secs(10)
        } else {
            every.max(Duration::from_millis(50))
        };
        self
    }

    /// Limits calls that carry no principal (health, reflection, denials) per certificate.
    pub fn with_rate_limit(mut self, limiter: Arc<RateLimiter>, metrics: Arc<Metrics>) -> Self {
        self.limit = Some((limiter, metrics));
        self
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
            limit: self.limit.clone(),
            recheck_every: self.recheck_every,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Principals>,
    revocation: Option<Revocation>,
    limit: Option<(Arc<RateLimiter>, Arc<Metrics>)>,
    recheck_every: Duration,
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
        let path = req.uri().path();
        let access = access(path);
        let needs = required_role(path);
        // The record keeper reaches the one RPC it has: exporting a case's record.
        let or: &[Role] = if path == EXPORT_AUDIT_RECORD {
            &[Role::RecordKeeper]
        } else {
            &[]
        };
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let leaf = certs.as_deref().and_then(|c| c.first());
        let judged = judge(
            &self.auth,
            self.revocation.as_ref(),
            certs.as_deref(),
            needs,
            or,
        );
        // Calls without a principal spend their certificate's bucket, before any log line.
        if !matches!(judged.verdict, Ok(Some(_)))
            && let Some((limiter, metrics)) = &self.limit
            && let Err(wait) = limiter.check_certificate(&certificate_key(leaf), Instant::now())
        {
            metrics.rate_limited(limit::CERTIFICATE);
            return limit::refusal(wait, limiter.refusal_delay());
        }
        if access == Access::Unknown {
            // Deny by default: no look-alike path (`//console`, `/%63onsole`, unknown prefixes)
            // reaches a handler or a fallback route. The path is not logged: it is the caller's.
            tracing::info!("request refused: no such service");
            let refused = tonic::Status::unimplemented("no such service").into_http();
            return Box::pin(std::future::ready(Ok(refused)));
        }
        match judged.verdict {
            Ok(Some(principal)) => {
                // The RPC span (current here) names the caller: an HSA-id, not personal data.
                tracing::Span::current().record("principal", principal.hsa_id.as_str());
                if let (Some(certs), Some(needs)) = (certs, needs) {
                    req.extensions_mut().insert(CallerCheck {
                        auth: self.auth.clone(),
                        revocation: self.revocation.clone(),
                        certs,
                        needs,
                        every: self.recheck_every,
                    });
                }
                req.extensions_mut().insert(principal);
                Box::pin(self.inner.call(req))
            }
            Ok(None) => Box::pin(self.inner.call(req)),
            Err(e) => {
                log_denial(&e, judged.refusal.as_ref());
                // A browser gets a page (HTTP 403), a gRPC client its status.
                let response = if judged.refusal.is_none() && is_console(req.uri().path()) {
                    crate::console::forbidden()
                } else {
                    denial(&e).into_http()
                };
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

/// The verdict on one call's (or one re-check's) caller.
struct Judged {
    /// The principal, `None` for calls that need none (health, reflection), or the denial.
    verdict: Result<Option<Principal>, AuthError>,
    /// Set when the denial is the CRLs' (revoked, or stale/missing under a refusing policy).
    refusal: Option<(CertificateRefusal, Arc<Metrics>)>,
}

/// Every call with a certificate, health and reflection included, is checked against the CRLs
/// in force now and their freshness — a certificate revoked (or whose CRL went stale) while
/// its connection is open is refused on its next call, not only at its next handshake — and
/// against the principals in force now (a reload applies to the very next call).
fn judge(
    auth: &Principals,
    revocation: Option<&Revocation>,
    certs: Option<&Vec<CertificateDer<'static>>>,
    needs: Option<Role>,
    or: &[Role],
) -> Judged {
    let leaf = certs.and_then(|c| c.first());
    let refusal = match (revocation, leaf) {
        (Some(r), Some(leaf)) => r
            .crls
            .snapshot()
            .check_certificate(leaf.as_ref(), SystemTime::now(), r.crls.settings())
            .err()
            .map(|refusal| (refusal, r.metrics.clone())),
        _ => None,
    };
    let verdict = match (&refusal, needs) {
        (Some((refusal, _)), _) => Err(match refusal.reason {
            RefusalReason::Revoked => AuthError::Revoked {
                serial: refusal.serial.clone(),
            },
            _ => AuthError::RevocationUnknown {
                serial: refusal.serial.clone(),
            },
        }),
        (None, Some(needs)) => auth
            .current()
            .authorize_any(certs.map(Vec::as_slice), needs, or)
            .map(|p| Some(p.clone())),
        // Health and reflection: any verified certificate.
        (None, None) => Ok(None),
    };
    Judged { verdict, refusal }
}

/// Logs a denial once (the certificate's serial number and issuer for a CRL's refusal, never
/// its subject), and counts a CRL's refusal.
fn log_denial(e: &AuthError, refusal: Option<&(CertificateRefusal, Arc<Metrics>)>) {
    if let Some((refusal, metrics)) = refusal {
        tracing::warn!(serial = %refusal.serial, issuer = %refusal.issuer,
            reason = refusal.reason.label(),
            "request denied: the client certificate is revoked or its CRL is not usable");
        metrics.client_certificate_refused(refusal.reason.label());
    } else {
        tracing::info!(reason = %e, "request denied");
    }
}

/// What a long call (a watch stream) needs to judge its caller again while it runs: the
/// certificate and role it was admitted with, judged against the principals and CRLs in force
/// at each re-check. In the request extensions of every call that has a principal.
#[derive(Clone, Debug)]
pub struct CallerCheck {
    auth: Arc<Principals>,
    revocation: Option<Revocation>,
    certs: Arc<Vec<CertificateDer<'static>>>,
    needs: Role,
    every: Duration,
}

impl CallerCheck {
    /// `Ok` while the caller would still be admitted; otherwise the status its next call
    /// would get (`CERTIFICATE_REVOKED`, `REVOCATION_STATUS_UNKNOWN`, `UNKNOWN_PRINCIPAL`,
    /// `ROLE_REQUIRED`), logged and counted like a call's denial.
    pub fn recheck(&self) -> Result<(), tonic::Status> {
        let judged = judge(
            &self.auth,
            self.revocation.as_ref(),
            Some(&self.certs),
            Some(self.needs),
            &[],
        );
        match judged.verdict {
            Ok(_) => Ok(()),
            Err(e) => {
                log_denial(&e, judged.refusal.as_ref());
                Err(denial(&e))
            }
        }
    }

    /// How often a long call re-checks between its events.
    pub fn every(&self) -> Duration {
        self.every
    }
}

/// The key of a certificate's bucket: its issuer (raw DER) and serial number, which name one
/// certificate; the whole certificate if it does not parse (the handshake admits none such).
fn certificate_key(leaf: Option<&CertificateDer<'_>>) -> Vec<u8> {
    let Some(leaf) = leaf else {
        return Vec::new();
    };
    match X509Certificate::from_der(leaf.as_ref()) {
        Ok((_, c)) => {
            let mut key = c.issuer().as_raw().to_vec();
            key.push(0);
            key.extend_from_slice(c.raw_serial());
            key
        }
        Err(_) => leaf.as_ref().to_vec(),
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
