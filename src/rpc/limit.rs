//! Per-principal limits (`[limits]`): a token bucket per caller, at the rate of its role. A
//! call over its principal's rate is answered `RESOURCE_EXHAUSTED` (`RATE_LIMITED`) with a
//! `RetryInfo` saying when the next call will be admitted, before any handler or database work,
//! so one flooding caller spends only its own budget. The refusal itself is held back for
//! `refusal_delay`: a caller that retries at once, over and over, gets a few refusals a second
//! per stream rather than thousands, each costing the server a TLS record, a span and an
//! answer. Principals' buckets are bounded by the principals file. Calls that carry no
//! principal — health checks, reflection, and calls denied to a CA-signed certificate that is
//! not (or no longer) a principal — are limited by `AuthLayer` through `check_certificate`: a
//! bucket per client certificate (issuer and serial number) at the `certificate` rate, at most
//! `certificate_buckets` of them (the least recently used goes first).
//!
//! The bucket is a few lines of arithmetic over a time the caller passes in, kept here rather
//! than pulled in from a rate-limiting crate with its own clock and concurrent map.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tonic::body::Body;

use crate::auth::{Principal, Role};
use crate::domain::HsaId;
use crate::metrics::Metrics;

/// One role's rate: `burst` calls at once, refilled at `requests_per_second`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateSettings {
    pub requests_per_second: f64,
    pub burst: u32,
}

/// `[limits]`: what one principal may hold and spend.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Open `WatchDeregistration` streams per principal.
    pub watch_streams_per_principal: usize,
    /// Open connections per caller (by the client certificate's HSA-id); one more is closed
    /// right after its handshake.
    pub connections_per_principal: usize,
    /// A call over the rate is answered only after this long: a caller retrying in a tight
    /// loop then holds one of its own streams instead of spending the server's CPU.
    #[serde(with = "humantime_serde")]
    pub refusal_delay: Duration,
    pub care_provider: RateSettings,
    pub health_care_office: RateSettings,
    pub tjansteid_service: RateSettings,
    pub operator: RateSettings,
    /// Calls without a principal (health, reflection, denied calls), per client certificate.
    pub certificate: RateSettings,
    /// The most certificates whose buckets are kept; beyond it the least recently used is
    /// forgotten (a forgotten certificate starts again with a full bucket).
    pub certificate_buckets: usize,
}

impl LimitSettings {
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.watch_streams_per_principal == 0 {
            problems.push("watch_streams_per_principal must be at least 1".to_owned());
        }
        if self.connections_per_principal == 0 {
            problems.push("connections_per_principal must be at least 1".to_owned());
        }
        if self.certificate_buckets == 0 {
            problems.push("certificate_buckets must be at least 1".to_owned());
        }
        for (role, r) in self.rates() {
            if !(r.requests_per_second.is_finite() && r.requests_per_second > 0.0) {
                problems.push(format!("{role}.requests_per_second must be above 0"));
            }
            if r.burst == 0 {
                problems.push(format!("{role}.burst must be at least 1"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    fn rates(&self) -> [(&'static str, RateSettings); 5] {
        [
            (Role::CareProvider.as_str(), self.care_provider),
            (Role::HealthCareOffice.as_str(), self.health_care_office),
            (Role::TjansteidService.as_str(), self.tjansteid_service),
            (Role::Operator.as_str(), self.operator),
            (CERTIFICATE, self.certificate),
        ]
    }

    fn rate(&self, role: Role) -> RateSettings {
        match role {
            Role::CareProvider => self.care_provider,
            Role::HealthCareOffice => self.health_care_office,
            Role::TjansteidService => self.tjansteid_service,
            // Record keepers call one RPC, rarely: the operators' rate.
            Role::Operator | Role::RecordKeeper => self.operator,
        }
    }
}

/// A token bucket: full (`burst` tokens) when made, one token per admitted call, refilled
/// continuously at the rate.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: RateSettings, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    /// Admits one call at `now`, or says how long until a token is there.
    fn take(&mut self, rate: RateSettings, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.requests_per_second).min(f64::from(rate.burst));
        self.at = now.max(self.at);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / rate.requests_per_second,
            ))
        }
    }
}

/// The `role` label of calls refused by a certificate's bucket (calls without a principal).
pub const CERTIFICATE: &str = "certificate";

/// The buckets of every principal that has called, each at its role's rate, and those of the
/// certificates that called without a principal.
#[derive(Debug)]
pub struct RateLimiter {
    settings: LimitSettings,
    buckets: Mutex<HashMap<HsaId, Bucket>>,
    certificates: Mutex<HashMap<Vec<u8>, Bucket>>,
}

impl RateLimiter {
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            settings,
            buckets: Mutex::new(HashMap::new()),
            certificates: Mutex::new(HashMap::new()),
        }
    }

    /// How long a refusal is held back (`refusal_delay`).
    pub fn refusal_delay(&self) -> Duration {
        self.settings.refusal_delay
    }

    /// Admits one call without a principal from the certificate `key` (its issuer and serial
    /// number) at `now`, or returns the wait. At most `certificate_buckets` are kept: when a
    /// new certificate would exceed that, the least recently used bucket is forgotten.
    pub fn check_certificate(&self, key: &[u8], now: Instant) -> Result<(), Duration> {
        let rate = self.settings.certificate;
        let mut buckets = self
            .certificates
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(key) && buckets.len() >= self.settings.certificate_buckets {
            let oldest = buckets
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                buckets.remove(&oldest);
            }
        }
        buckets
            .entry(key.to_vec())
            .or_insert_with(|| Bucket::full(rate, now))
            .take(rate, now)
    }

    /// Admits one call of `principal` at `now`, or returns the wait until it would be.
    pub fn check(&self, principal: &Principal, now: Instant) -> Result<(), Duration> {
        let rate = self.settings.rate(principal.role);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        buckets
            .entry(principal.hsa_id.clone())
            .or_insert_with(|| Bucket::full(rate, now))
            .take(rate, now)
    }
}

/// Applies the rate limit to every call that carries a principal (placed inside `AuthLayer`).
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
    metrics: Option<Arc<Metrics>>,
}

impl RateLimitLayer {
    pub fn new(limiter: Arc<RateLimiter>, metrics: Option<Arc<Metrics>>) -> Self {
        Self { limiter, metrics }
    }
}

impl<S> tower_layer::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> RateLimitService<S> {
        RateLimitService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RateLimitService<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S> tower_service::Service<http::Request<Body>> for RateLimitService<S>
where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if let Some(p) = req.extensions().get::<Principal>()
            && let Err(wait) = self.layer.limiter.check(p, Instant::now())
        {
            if let Some(m) = &self.layer.metrics {
                m.rate_limited(p.role.as_str());
            }
            return refusal(wait, self.layer.limiter.refusal_delay());
        }
        Box::pin(self.inner.call(req))
    }
}

/// The answer to a call over its bucket: `RATE_LIMITED` with the wait, after `delay`. No log
/// line above DEBUG (a flood would flood the log too): the counter tells.
pub(crate) fn refusal(
    wait: Duration,
    delay: Duration,
) -> Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>> {
    tracing::debug!(
        retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "rate limited"
    );
    let status = crate::api::error::rate_limited(wait);
    Box::pin(async move {
        tokio::time::sleep(delay).await;
        Ok(status.into_http())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32) -> RateSettings {
        RateSettings {
            requests_per_second: per_second,
            burst,
        }
    }

    fn settings(care_provider: RateSettings) -> LimitSettings {
        LimitSettings {
            watch_streams_per_principal: 4,
            connections_per_principal: 4,
            refusal_delay: Duration::ZERO,
            care_provider,
            health_care_office: rate(1.0, 1),
            tjansteid_service: rate(1.0, 1),
            operator: rate(100.0, 100),
            certificate: rate(1.0, 2),
            certificate_buckets: 2,
        }
    }

    fn principal(n: u32, role: Role) -> Principal {
        let hsa_id = HsaId::parse(&format!("SE2321000131-E{n:012}")).expect("valid HSA-id");
        Principal {
            care_provider: hsa_id.clone(),
            hsa_id,
            role,
            care_units: Default::default(),
        }
    }

    #[test]
    fn a_burst_is_admitted_then_calls_wait_for_the_refill() {
        let mut b = Bucket::full(rate(2.0, 3), Instant::now());
        let t0 = b.at;
        for _ in 0..3 {
            b.take(rate(2.0, 3), t0).expect("within the burst");
        }
        let wait = b.take(rate(2.0, 3), t0).expect_err("burst used up");
        assert_eq!(wait, Duration::from_millis(500), "one token per 0.5 s");
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        b.take(rate(2.0, 3), t1).expect("refilled");
        assert!(b.take(rate(2.0, 3), t1).is_err());
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            b.take(rate(2.0, 3), t2).expect("full again");
        }
        assert!(b.take(rate(2.0, 3), t2).is_err(), "never more than burst");
    }

    #[test]
    fn each_principal_spends_its_own_bucket_at_its_roles_rate() {
        let limiter = RateLimiter::new(settings(rate(1.0, 2)));
        let now = Instant::now();
        let a = principal(1, Role::CareProvider);
        let b = principal(2, Role::CareProvider);
        let op = principal(3, Role::Operator);
        limiter.check(&a, now).expect("1");
        limiter.check(&a, now).expect("2");
        let wait = limiter.check(&a, now).expect_err("a's burst is used up");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        // b is untouched by a's flood; the operator has its own role's rate.
        limiter.check(&b, now).expect("b has its own bucket");
        for _ in 0..100 {
            limiter.check(&op, now).expect("operator's burst is 100");
        }
        assert_eq!(limiter.buckets.lock().expect("lock").len(), 3);
    }

    #[test]
    fn certificates_without_a_principal_spend_their_own_bounded_buckets() {
        let limiter = RateLimiter::new(settings(rate(1.0, 1)));
        let t0 = Instant::now();
        limiter.check_certificate(b"ca/1", t0).expect("1");
        limiter.check_certificate(b"ca/1", t0).expect("2");
        let wait = limiter
            .check_certificate(b"ca/1", t0)
            .expect_err("the certificate's burst is used up");
        assert_eq!(wait, Duration::from_secs(1));
        // Another certificate has its own bucket.
        let t1 = t0 + Duration::from_millis(10);
        limiter.check_certificate(b"ca/2", t1).expect("own bucket");
        // A third one exceeds the two kept: the least recently used (ca/1) is forgotten.
        let t2 = t0 + Duration::from_millis(20);
        limiter.check_certificate(b"ca/3", t2).expect("own bucket");
        let kept = limiter.certificates.lock().expect("lock");
        assert_eq!(kept.len(), 2, "bounded by certificate_buckets");
        assert!(kept.contains_key(b"ca/2".as_slice()) && kept.contains_key(b"ca/3".as_slice()));
        drop(kept);
        // Principals' buckets are separate.
        assert!(limiter.buckets.lock().expect("lock").is_empty());
    }

    #[test]
    fn settings_without_a_rate_or_burst_are_refused() {
        assert!(settings(rate(1.0, 1)).validate().is_ok());
        let e = settings(rate(0.0, 0)).validate().expect_err("refused");
        assert!(e.contains("care_provider.requests_per_second"), "{e}");
        assert!(e.contains("care_provider.burst"), "{e}");
        assert!(settings(rate(f64::NAN, 1)).validate().is_err());
        let mut s = settings(rate(1.0, 1));
        s.certificate = rate(1.0, 0);
        s.certificate_buckets = 0;
        let e = s.validate().expect_err("refused");
        assert!(e.contains("certificate.burst"), "{e}");
        assert!(e.contains("certificate_buckets"), "{e}");
    }
}
