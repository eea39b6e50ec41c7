//! Per-principal limits (`[limits]`): a token bucket per caller, at the rate of its role. A
//! call over its principal's rate is answered `RESOURCE_EXHAUSTED` (`RATE_LIMITED`) with a
//! `RetryInfo` saying when the next call will be admitted, before any handler or database work,
//! so one flooding caller spends only its own budget. The refusal itself is held back for
//! `refusal_delay`: a caller that retries at once, over and over, gets a few refusals a second
//! per stream rather than thousands, each costing the server a TLS record, a span and an
//! answer. Buckets exist only for authenticated
//! principals (the principals file's entries), so their number is bounded by that file.
//! Health checks and reflection carry no principal and are not limited here (the per-connection
//! limits bound them).
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
    /// A call over the rate is answered only after this long: a caller retrying in a tight
    /// loop then holds one of its own streams instead of spending the server's CPU.
    #[serde(with = "humantime_serde")]
    pub refusal_delay: Duration,
    pub care_provider: RateSettings,
    pub health_care_office: RateSettings,
    pub tjansteid_service: RateSettings,
    pub operator: RateSettings,
}

impl LimitSettings {
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.watch_streams_per_principal == 0 {
            problems.push("watch_streams_per_principal must be at least 1".to_owned());
        }
        for (role, r) in self.rates() {
            if !(r.requests_per_second.is_finite() && r.requests_per_second > 0.0) {
                problems.push(format!(
                    "{}.requests_per_second must be above 0",
                    role.as_str()
                ));
            }
            if r.burst == 0 {
                problems.push(format!("{}.burst must be at least 1", role.as_str()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    fn rates(&self) -> [(Role, RateSettings); 4] {
        [
            (Role::CareProvider, self.care_provider),
            (Role::HealthCareOffice, self.health_care_office),
            (Role::TjansteidService, self.tjansteid_service),
            (Role::Operator, self.operator),
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

/// The buckets of every principal that has called, each at its role's rate.
#[derive(Debug)]
pub struct RateLimiter {
    settings: LimitSettings,
    buckets: Mutex<HashMap<HsaId, Bucket>>,
}

impl RateLimiter {
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            settings,
            buckets: Mutex::new(HashMap::new()),
        }
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
            // The span already names the principal; no line per refused call (a flood would
            // flood the log too): the counter tells.
            tracing::debug!(retry_after_ms = wait.as_millis() as u64, "rate limited");
            let status = crate::api::error::rate_limited(wait);
            let delay = self.layer.limiter.settings.refusal_delay;
            return Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(status.into_http())
            });
        }
        Box::pin(self.inner.call(req))
    }
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
            refusal_delay: Duration::ZERO,
            care_provider,
            health_care_office: rate(1.0, 1),
            tjansteid_service: rate(1.0, 1),
            operator: rate(100.0, 100),
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
    fn settings_without_a_rate_or_burst_are_refused() {
        assert!(settings(rate(1.0, 1)).validate().is_ok());
        let e = settings(rate(0.0, 0)).validate().expect_err("refused");
        assert!(e.contains("care_provider.requests_per_second"), "{e}");
        assert!(e.contains("care_provider.burst"), "{e}");
        assert!(settings(rate(f64::NAN, 1)).validate().is_err());
    }
}
