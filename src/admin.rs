//! The admin listener: plain HTTP for Prometheus and Kubernetes, apart from the mTLS gRPC port.
//! Owns its settings (`[admin]`), readiness (`Readiness`) and the routes:
//!
//! - `/metrics` — `crate::metrics` in the Prometheus text format;
//! - `/livez` — the process and its runtime answer; never asks the database or a registry, so a
//!   database outage does not get pods restarted;
//! - `/readyz` — the gateway can take and durably store reports: the database answered the last
//!   probe with a current schema, and the process is not shutting down. A registry (KIV, SMTP)
//!   being down does not count: cases wait safely for it (see `etk_connector_up`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::storage::CaseStore;

/// `[admin]`: the plain-HTTP admin listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Where to listen; unset: no admin listener (and no database gauges). It serves no
    /// personal data but is unauthenticated: bind it to loopback or a cluster-internal address.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// How often the database gauges (cases by state, needing attention, outbox lag) are
    /// recounted.
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
}

/// Whether the gateway can take and store reports. Set by the health prober (the database)
/// and by shutdown (draining), read by `/readyz`.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    database: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
}

impl Readiness {
    pub fn set_database(&self, ok: bool) {
        self.database.store(ok, Ordering::Relaxed);
    }

    /// From now on not ready, whatever the database says: load balancers stop sending before
    /// the server stops accepting.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.database.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    fn why_not(&self) -> &'static str {
        if self.draining.load(Ordering::Relaxed) {
            "shutting down\n"
        } else {
            "the database is unreachable or its schema is not current\n"
        }
    }
}

#[derive(Clone, Debug)]
struct Admin {
    metrics: Arc<Metrics>,
    store: Arc<dyn CaseStore>,
    readiness: Readiness,
}

/// The admin routes over shared state.
pub fn router(
    metrics: Arc<Metrics>,
    store: Arc<dyn CaseStore>,
    readiness: Readiness,
) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(metrics_page))
        .route("/livez", axum::routing::get(livez))
        .route("/readyz", axum::routing::get(readyz))
        .with_state(Admin {
            metrics,
            store,
            readiness,
        })
}

async fn metrics_page(State(admin): State<Admin>) -> impl IntoResponse {
    // The pool is this process's own state: read at scrape time, no query needed.
    if let Some(pool) = admin.store.pool() {
        admin.metrics.set_pool(pool);
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        admin.metrics.render(),
    )
}

/// Answering at all is the check: the runtime schedules tasks and the listener accepts.
async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(admin): State<Admin>) -> (StatusCode, &'static str) {
    if admin.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, admin.readiness.why_not())
    }
}

/// Recounts the database gauges every `every`, until the task is aborted. From the database,
/// not in-process counts, so every replica reports the same, correct numbers.
pub async fn refresh_stats(store: Arc<dyn CaseStore>, metrics: Arc<Metrics>, every: Duration) {
    let mut failing = false;
    loop {
        match store.stats(crate::clock::now()).await {
            Ok(stats) => {
                metrics.set_case_stats(&stats);
                if failing {
                    tracing::info!("case gauges refreshed again");
                    failing = false;
                }
            }
            // Once per outage: the prober already reports the database itself.
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot refresh the case gauges; they keep their last values");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(every).await;
    }
}
