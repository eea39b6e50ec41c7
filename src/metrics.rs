//! The process's Prometheus metrics: every family, its name, labels and unit, in one place, and
//! their rendering in the Prometheus text format (served on the admin listener's `/metrics`).
//!
//! One `Metrics` per `App`, shared as `Arc<Metrics>`; each has its own registry (prefix `etk`),
//! so nothing is global and tests stay apart. Label values are bounded by construction: fixed
//! names (steps, states, connectors, codes) or gRPC names checked against the served API — never
//! a case id, and never personal data.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::domain::saga::Step;
use crate::storage::{PoolStats, Stats, WorkResult};

/// The `Content-Type` of `render`'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The label value standing in for any gRPC service or method the gateway does not serve
/// (a caller choosing paths must not be able to create series).
const OTHER: &str = "_other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    service: &'static str,
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcMethodLabels {
    service: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetentionLabels {
    what: &'static str,
}

/// What a retention pass removed (the `what` label of `etk_retention_removed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retained {
    /// An ended case's personal data, shredded.
    PersonalData,
    /// An ended case's record (row and audit trail), purged.
    Record,
    /// A finished outbox row, deleted.
    Outbox,
}

impl Retained {
    fn label(self) -> &'static str {
        match self {
            Retained::PersonalData => "personal_data",
            Retained::Record => "record",
            Retained::Outbox => "outbox",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
    connector: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepOutcomeLabels {
    step: &'static str,
    connector: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepOnlyLabels {
    step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorErrorLabels {
    connector: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabels {
    connector: &'static str,
}

/// A principal's role: four values, never the principal itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    file: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrlUpdateLabels {
    source: &'static str,
    outcome: &'static str,
}

/// A CA's name: bounded by the configured client-CA bundle.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// How a step's execution ended (the `outcome` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// Done: its event goes to the case.
    Done,
    /// Failed retryably: tried again later.
    Retry,
    /// Failed for good (or out of attempts): the case needs attention.
    Failed,
    /// No longer applied to the case.
    Skipped,
}

impl StepOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Retry => "retry",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

impl From<&WorkResult> for StepOutcome {
    fn from(r: &WorkResult) -> Self {
        match r {
            WorkResult::Done { .. } => Self::Done,
            WorkResult::Retry { .. } => Self::Retry,
            WorkResult::Failed { .. } => Self::Failed,
            WorkResult::Skipped => Self::Skipped,
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Histograms<RpcMethodLabels>,
    cases: Family<StateLabels, Gauge>,
    cases_needing_attention: Gauge,
    outbox_lag: Gauge<f64, AtomicU64>,
    step_duration: Histograms<StepLabels>,
    steps: Family<StepOutcomeLabels, Counter>,
    step_retries: Family<StepOnlyLabels, Counter>,
    connector_errors: Family<ConnectorErrorLabels, Counter>,
    connector_up: Family<ConnectorLabels, Gauge>,
    database_up: Gauge,
    reconciliation_restores: Counter,
    order_violations_refused: Counter,
    db_pool: Family<StateLabels, Gauge>,
    watch_streams_open: Gauge,
    rate_limited: Family<RoleLabels, Counter>,
    retention_removed: Family<RetentionLabels, Counter>,
    retention_passes: Family<RetentionPassLabels, Counter>,
    audit_broken_cases: Gauge,
    audit_verifications: Counter,
    client_certificates_refused: Family<ReasonLabels, Counter>,
    connections_refused: Family<ReasonLabels, Counter>,
    config_reloads: Family<ReloadLabels, Counter>,
    crl_updates: Family<CrlUpdateLabels, Counter>,
    crl_next_update: Family<IssuerLabels, Gauge>,
    revocation_checks: Family<RevocationCheckLabels, Counter>,
    card_crl_updates: Family<CrlUpdateLabels, Counter>,
    card_crl_next_update: Family<IssuerLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetentionPassLabels {
    outcome: &'static str,
}

/// A revocation check's verdict: five values.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevocationCheckLabels {
    outcome: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn rpc_histogram() -> Histogram {
    // 1 ms … ~16 s: unary calls, with room above the default request timeout's usual range.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn step_histogram() -> Histogram {
    // 5 ms … ~80 s: directory and mail-server round trips up to a step's time limit.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("etk");
        let rpc_requests = Family::default();
        registry.register(
            "rpc_requests",
            "gRPC requests handled, by service, method and status code",
            rpc_requests.clone(),
        );
        let rpc_duration: Histograms<RpcMethodLabels> = Family::new_with_constructor(rpc_histogram);
        registry.register_with_unit(
            "rpc_duration",
            "Time from a gRPC request's arrival to its final status, by service and method",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let cases = Family::default();
        registry.register(
            "cases",
            "Cases by state, counted in the database (all replicas)",
            cases.clone(),
        );
        let cases_needing_attention = Gauge::default();
        registry.register(
            "cases_needing_attention",
            "Cases waiting for an operator (state needs_attention), counted in the database",
            cases_needing_attention.clone(),
        );
        let outbox_lag = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "outbox_lag",
            "How long the oldest due, unclaimed saga step has waited (0 when none is due)",
            Unit::Seconds,
            outbox_lag.clone(),
        );
        let step_duration: Histograms<StepLabels> = Family::new_with_constructor(step_histogram);
        registry.register_with_unit(
            "saga_step_duration",
            "Time to execute one saga step, by step and connector",
            Unit::Seconds,
            step_duration.clone(),
        );
        let steps = Family::default();
        registry.register(
            "saga_steps",
            "Saga step executions by step, connector and outcome (done, retry, failed, skipped)",
            steps.clone(),
        );
        let step_retries = Family::default();
        registry.register(
            "saga_step_retries",
            "Saga steps scheduled to run again after a retryable failure, by step",
            step_retries.clone(),
        );
        let connector_errors = Family::default();
        registry.register(
            "connector_errors",
            "Errors of calls to outside systems, by connector and class (retryable, terminal)",
            connector_errors.clone(),
        );
        let connector_up = Family::default();
        registry.register(
            "connector_up",
            "Whether the connector's server answered the last health probe (1) or not (0)",
            connector_up.clone(),
        );
        let database_up = Gauge::default();
        registry.register(
            "database_up",
            "Whether the database answered the last health probe with a current schema (1) or not (0)",
            database_up.clone(),
        );
        let revocation_checks = Family::<RevocationCheckLabels, Counter>::default();
        registry.register(
            "revocation_checks",
            "Verdicts of the revocation check on the CA's lists after a confirmation (verified, not_yet_listed, discrepancy, unverifiable, overdue)",
            revocation_checks.clone(),
        );
        let reconciliation_restores = Counter::default();
        registry.register(
            "reconciliation_restores",
            "Employments found removed from KIV before the revocation was confirmed (restore ordered)",
            reconciliation_restores.clone(),
        );
        let order_violations_refused = Counter::default();
        registry.register(
            "order_violations_refused",
            "KIV removals refused because the revocation was not confirmed yet",
            order_violations_refused.clone(),
        );
        let db_pool = Family::default();
        registry.register(
            "db_pool_connections",
            "Database connections of this process's pool, by state (in_use, idle)",
            db_pool.clone(),
        );
        let watch_streams_open = Gauge::default();
        registry.register(
            "watch_streams_open",
            "WatchDeregistration streams open now (each holds a task until its client goes away)",
            watch_streams_open.clone(),
        );
        let rate_limited = Family::default();
        registry.register(
            "rate_limited",
            "Calls refused with RESOURCE_EXHAUSTED by the per-principal rate limit, by role",
            rate_limited.clone(),
        );
        let retention_removed = Family::default();
        registry.register(
            "retention_removed",
            "What the retention job removed: personal_data (ended cases shredded), record (cases purged with their audit trail), outbox (finished outbox rows deleted)",
            retention_removed.clone(),
        );
        let retention_passes = Family::default();
        registry.register(
            "retention_passes",
            "Retention job passes, by outcome (ok, failed)",
            retention_passes.clone(),
        );
        let audit_broken_cases = Gauge::default();
        registry.register(
            "audit_chain_broken_cases",
            "Cases whose audit chain did not verify in the last periodic verification",
            audit_broken_cases.clone(),
        );
        let audit_verifications = Counter::default();
        registry.register(
            "audit_chain_verifications",
            "Completed periodic verifications of every case's audit chain",
            audit_verifications.clone(),
        );
        let client_certificates_refused = Family::default();
        registry.register(
            "client_certificates_refused",
            "Client certificates refused for revocation (at the handshake, or on a call of a connection opened before), by reason (revoked, crl_stale, no_crl)",
            client_certificates_refused.clone(),
        );
        let connections_refused = Family::default();
        registry.register(
            "connections_refused",
            "Connections closed by a connection limit, by reason (max_connections, max_handshakes: closed when accepted; per_principal: closed after the handshake)",
            connections_refused.clone(),
        );
        let config_reloads = Family::default();
        registry.register(
            "config_reloads",
            "Reloads of trusted files, by file (principals, server_certificate, client_ca) and outcome (applied, refused)",
            config_reloads.clone(),
        );
        let crl_updates = Family::default();
        registry.register(
            "crl_updates",
            "CRLs loaded or refused, by source (file, url) and outcome (applied, bad_signature, rollback, fetch_failed, ...)",
            crl_updates.clone(),
        );
        let crl_next_update = Family::default();
        registry.register_with_unit(
            "crl_next_update_timestamp",
            "nextUpdate of the CRL in force, by issuing CA (Unix time)",
            Unit::Seconds,
            crl_next_update.clone(),
        );
        let card_crl_updates = Family::default();
        registry.register(
            "card_crl_updates",
            "CRLs of card certificates' CAs (the revocation check) loaded or refused, by source (file, url) and outcome (applied, bad_signature, rollback, fetch_failed, ...)",
            card_crl_updates.clone(),
        );
        let card_crl_next_update = Family::default();
        registry.register_with_unit(
            "card_crl_next_update_timestamp",
            "nextUpdate of the CRL in force for the revocation check, by card certificates' issuing CA (Unix time)",
            Unit::Seconds,
            card_crl_next_update.clone(),
        );
        Self {
            registry,
            client_certificates_refused,
            connections_refused,
            config_reloads,
            crl_updates,
            crl_next_update,
            card_crl_updates,
            card_crl_next_update,
            rpc_requests,
            rpc_duration,
            cases,
            cases_needing_attention,
            outbox_lag,
            step_duration,
            steps,
            step_retries,
            connector_errors,
            connector_up,
            database_up,
            reconciliation_restores,
            revocation_checks,
            order_violations_refused,
            db_pool,
            watch_streams_open,
            rate_limited,
            retention_removed,
            retention_passes,
            audit_broken_cases,
            audit_verifications,
        }
    }

    /// Everything, in the Prometheus text format (`CONTENT_TYPE`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoding error would be a bug in a family.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!(error = %e, "encoding the metrics failed");
        }
        out
    }

    /// One gRPC request reached its final status. Services and methods the gateway does not
    /// serve are counted as `_other`.
    pub fn rpc_finished(&self, service: &str, method: &str, code: tonic::Code, elapsed: Duration) {
        let (service, method) = known_rpc(service, method);
        self.rpc_requests
            .get_or_create(&RpcLabels {
                service,
                method,
                code: code_name(code),
            })
            .inc();
        self.rpc_duration
            .get_or_create(&RpcMethodLabels { service, method })
            .observe(elapsed.as_secs_f64());
    }

    /// One execution of a saga step ended; `connector` is the port it called (`none` for a
    /// step that calls none).
    pub fn step_finished(
        &self,
        step: Step,
        connector: &'static str,
        outcome: StepOutcome,
        elapsed: Duration,
    ) {
        let step = step.name();
        self.step_duration
            .get_or_create(&StepLabels { step, connector })
            .observe(elapsed.as_secs_f64());
        self.steps
            .get_or_create(&StepOutcomeLabels {
                step,
                connector,
                outcome: outcome.as_str(),
            })
            .inc();
        if outcome == StepOutcome::Retry {
            self.step_retries
                .get_or_create(&StepOnlyLabels { step })
                .inc();
        }
    }

    /// A call to an outside system failed, classified where it arose.
    pub fn connector_error(&self, connector: &'static str, retryable: bool) {
        let class = if retryable { "retryable" } else { "terminal" };
        self.connector_errors
            .get_or_create(&ConnectorErrorLabels { connector, class })
            .inc();
    }

    /// The health prober's verdict on one connector's server.
    pub fn set_connector_up(&self, connector: &'static str, up: bool) {
        self.connector_up
            .get_or_create(&ConnectorLabels { connector })
            .set(i64::from(up));
    }

    /// The health prober's verdict on the database.
    pub fn set_database_up(&self, up: bool) {
        self.database_up.set(i64::from(up));
    }

    /// The reconciliation pass found an employment removed too early and ordered its restore.
    pub fn retention_removed(&self, what: Retained, n: u64) {
        self.retention_removed
            .get_or_create(&RetentionLabels { what: what.label() })
            .inc_by(n);
    }

    pub fn retention_pass(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.retention_passes
            .get_or_create(&RetentionPassLabels { outcome })
            .inc();
    }

    /// One verdict of the revocation check (`outcome` is one of five fixed names).
    pub fn revocation_check(&self, outcome: &'static str) {
        self.revocation_checks
            .get_or_create(&RevocationCheckLabels { outcome })
            .inc();
    }

    pub fn reconciliation_restore(&self) {
        self.reconciliation_restores.inc();
    }

    /// A watch stream opened (`+1`) or ended and freed what it held (`-1`).
    pub fn watch_streams_add(&self, delta: i64) {
        self.watch_streams_open.inc_by(delta);
    }

    /// A call of a principal with this role was refused by the rate limit.
    pub fn rate_limited(&self, role: &'static str) {
        self.rate_limited.get_or_create(&RoleLabels { role }).inc();
    }

    /// An early KIV removal was refused (FAILED_PRECONDITION).
    pub fn order_violation_refused(&self) {
        self.order_violations_refused.inc();
    }

    /// A connection was closed by a connection limit (`reason`: max_connections,
    /// max_handshakes, per_principal).
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A client certificate was refused at the handshake for revocation (`reason`: revoked,
    /// crl_stale, no_crl).
    pub fn client_certificate_refused(&self, reason: &'static str) {
        self.client_certificates_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A changed trusted file was put in force (`applied`) or refused (`refused`).
    pub fn config_reload(&self, file: &'static str, outcome: &'static str) {
        self.config_reloads
            .get_or_create(&ReloadLabels { file, outcome })
            .inc();
    }

    /// A CRL from a file or URL was put in force or refused (`outcome` names why).
    pub fn crl_update(&self, source: &'static str, outcome: &'static str) {
        self.crl_updates
            .get_or_create(&CrlUpdateLabels { source, outcome })
            .inc();
    }

    /// The `nextUpdate` of the CRL in force for a CA, as Unix seconds.
    pub fn set_crl_next_update(&self, issuer: &str, unix_seconds: u64) {
        self.crl_next_update
            .get_or_create(&IssuerLabels {
                issuer: issuer.to_owned(),
            })
            .set(clamp(unix_seconds));
    }

    /// A CRL of a card certificates' CA (the revocation check) was put in force or refused.
    pub fn card_crl_update(&self, source: &'static str, outcome: &'static str) {
        self.card_crl_updates
            .get_or_create(&CrlUpdateLabels { source, outcome })
            .inc();
    }

    /// The `nextUpdate` of the revocation check's CRL in force for a CA, as Unix seconds.
    pub fn set_card_crl_next_update(&self, issuer: &str, unix_seconds: u64) {
        self.card_crl_next_update
            .get_or_create(&IssuerLabels {
                issuer: issuer.to_owned(),
            })
            .set(clamp(unix_seconds));
    }

    /// The database's view of all cases; every state is set, zeros included, so a state that
    /// empties reads 0 rather than its last value.
    pub fn set_case_stats(&self, stats: &Stats) {
        for (state, n) in &stats.by_state {
            self.cases
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(clamp(*n));
        }
        self.cases_needing_attention
            .set(clamp(stats.needs_attention));
        self.outbox_lag.set(stats.oldest_due_age.as_secs_f64());
    }

    /// A periodic verification of every audit chain finished and found `broken` cases.
    pub fn audit_verified(&self, broken: u64) {
        self.audit_broken_cases.set(clamp(broken));
        self.audit_verifications.inc();
    }

    pub fn set_pool(&self, pool: PoolStats) {
        for (state, n) in [("in_use", pool.in_use), ("idle", pool.idle)] {
            self.db_pool
                .get_or_create(&StateLabels { state })
                .set(i64::from(n));
        }
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// gRPC status codes as the Prometheus gRPC ecosystem writes them (`grpc_code` of
/// go-grpc-prometheus): `OK`, `InvalidArgument`, …
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "Canceled",
        C::Unknown => "Unknown",
        C::InvalidArgument => "InvalidArgument",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::Unavailable => "Unavailable",
        C::DataLoss => "DataLoss",
        C::Unauthenticated => "Unauthenticated",
    }
}

/// The gRPC services and methods this gateway serves, read once from the embedded descriptor
/// sets (its API, health, reflection): fully qualified service → methods.
fn served() -> &'static HashMap<&'static str, HashSet<&'static str>> {
    static SERVED: OnceLock<HashMap<&'static str, HashSet<&'static str>>> = OnceLock::new();
    SERVED.get_or_init(|| {
        use prost::Message as _;
        let sets = [
            crate::api::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut served: HashMap<&'static str, HashSet<&'static str>> = HashMap::new();
        for bytes in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
                continue;
            };
            for file in set.file {
                let package = file.package().to_owned();
                for service in file.service {
                    let name = if package.is_empty() {
                        service.name().to_owned()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    // Leaked once per process (a few dozen short names): label values are
                    // then plain `&'static str`, compared and hashed without allocation.
                    let name: &'static str = Box::leak(name.into_boxed_str());
                    let methods = served.entry(name).or_default();
                    for m in service.method {
                        methods.insert(Box::leak(m.name().to_owned().into_boxed_str()));
                    }
                }
            }
        }
        // The console's pages (`crate::console`), one bounded name for all of them.
        served
            .entry(crate::rpc::names::CONSOLE.service)
            .or_default()
            .insert(crate::rpc::names::CONSOLE.method);
        served
    })
}

fn known_rpc(service: &str, method: &str) -> (&'static str, &'static str) {
    match served().get_key_value(service) {
        Some((s, methods)) => (s, methods.get(method).copied().unwrap_or(OTHER)),
        None => (OTHER, OTHER),
    }
}

#[cfg(test)]
mod tests {
    use strum::VariantArray as _;

    use super::*;
    use crate::domain::State;

    /// The sample lines (`name{labels} value`) of the rendered text, checked for shape.
    fn samples(text: &str) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let value: f64 = value.parse().expect("numeric value");
            out.insert(series.to_owned(), value);
        }
        out
    }

    const CREATE: (&str, &str) = (
        "etjanstekort.v1.DeregistrationService",
        "CreateDeregistration",
    );

    #[test]
    fn rpc_requests_are_counted_by_method_and_code() {
        let m = Metrics::new();
        let ms = Duration::from_millis;
        m.rpc_finished(CREATE.0, CREATE.1, tonic::Code::Ok, ms(3));
        m.rpc_finished(CREATE.0, CREATE.1, tonic::Code::Ok, ms(5));
        m.rpc_finished(CREATE.0, CREATE.1, tonic::Code::InvalidArgument, ms(1));
        let s = samples(&m.render());
        let series = |code: &str| {
            format!(
                "etk_rpc_requests_total{{service=\"{}\",method=\"{}\",code=\"{code}\"}}",
                CREATE.0, CREATE.1
            )
        };
        assert_eq!(s.get(&series("OK")), Some(&2.0), "{s:#?}");
        assert_eq!(s.get(&series("InvalidArgument")), Some(&1.0));
        let count = format!(
            "etk_rpc_duration_seconds_count{{service=\"{}\",method=\"{}\"}}",
            CREATE.0, CREATE.1
        );
        assert_eq!(s.get(&count), Some(&3.0));
    }

    #[test]
    fn paths_the_gateway_does_not_serve_create_no_series() {
        let m = Metrics::new();
        for i in 0..50 {
            m.rpc_finished(
                &format!("evil.Service{i}"),
                "X",
                tonic::Code::Unimplemented,
                Duration::ZERO,
            );
            m.rpc_finished(
                CREATE.0,
                &format!("Nope{i}"),
                tonic::Code::Unimplemented,
                Duration::ZERO,
            );
        }
        m.rpc_finished(
            "grpc.health.v1.Health",
            "Check",
            tonic::Code::Ok,
            Duration::ZERO,
        );
        let text = m.render();
        assert!(!text.contains("evil") && !text.contains("Nope"), "{text}");
        let s = samples(&text);
        let other =
            "etk_rpc_requests_total{service=\"_other\",method=\"_other\",code=\"Unimplemented\"}";
        assert_eq!(s.get(other), Some(&50.0));
        assert!(s.contains_key(
            "etk_rpc_requests_total{service=\"grpc.health.v1.Health\",method=\"Check\",code=\"OK\"}"
        ));
    }

    #[test]
    fn every_state_is_set_each_refresh_including_zeros() {
        let m = Metrics::new();
        let stats = |attention: u64| Stats {
            by_state: State::VARIANTS
                .iter()
                .map(|s| {
                    (
                        *s,
                        if *s == State::NeedsAttention {
                            attention
                        } else {
                            0
                        },
                    )
                })
                .collect(),
            needs_attention: attention,
            oldest_due_age: Duration::from_millis(2500),
        };
        m.set_case_stats(&stats(3));
        m.set_case_stats(&stats(0));
        let s = samples(&m.render());
        assert_eq!(s.get("etk_cases{state=\"needs_attention\"}"), Some(&0.0));
        assert_eq!(s.get("etk_cases{state=\"completed\"}"), Some(&0.0));
        assert_eq!(s.get("etk_cases_needing_attention"), Some(&0.0));
        assert_eq!(s.get("etk_outbox_lag_seconds"), Some(&2.5));
    }

    #[test]
    fn steps_count_outcomes_retries_and_errors() {
        let m = Metrics::new();
        m.step_finished(
            Step::Report,
            "tjansteid",
            StepOutcome::Retry,
            Duration::from_millis(7),
        );
        m.step_finished(
            Step::Report,
            "tjansteid",
            StepOutcome::Done,
            Duration::from_millis(7),
        );
        m.step_finished(
            Step::Remind(2),
            "tjansteid",
            StepOutcome::Done,
            Duration::ZERO,
        );
        m.connector_error("tjansteid", true);
        m.connector_error("kiv", false);
        m.set_connector_up("kiv", false);
        m.set_connector_up("notifier", true);
        m.order_violation_refused();
        m.reconciliation_restore();
        m.set_pool(PoolStats { in_use: 2, idle: 3 });
        m.retention_removed(Retained::PersonalData, 2);
        m.retention_removed(Retained::Record, 1);
        m.retention_removed(Retained::Outbox, 5);
        m.retention_pass(true);
        let s = samples(&m.render());
        for (series, want) in [
            (
                "etk_saga_steps_total{step=\"report\",connector=\"tjansteid\",outcome=\"retry\"}",
                1.0,
            ),
            (
                "etk_saga_steps_total{step=\"report\",connector=\"tjansteid\",outcome=\"done\"}",
                1.0,
            ),
            // The reminder's number is not a label: one series for every reminder.
            (
                "etk_saga_steps_total{step=\"remind\",connector=\"tjansteid\",outcome=\"done\"}",
                1.0,
            ),
            ("etk_saga_step_retries_total{step=\"report\"}", 1.0),
            (
                "etk_saga_step_duration_seconds_count{step=\"report\",connector=\"tjansteid\"}",
                2.0,
            ),
            (
                "etk_connector_errors_total{connector=\"tjansteid\",class=\"retryable\"}",
                1.0,
            ),
            (
                "etk_connector_errors_total{connector=\"kiv\",class=\"terminal\"}",
                1.0,
            ),
            ("etk_connector_up{connector=\"kiv\"}", 0.0),
            ("etk_connector_up{connector=\"notifier\"}", 1.0),
            ("etk_order_violations_refused_total", 1.0),
            ("etk_reconciliation_restores_total", 1.0),
            ("etk_db_pool_connections{state=\"in_use\"}", 2.0),
            ("etk_db_pool_connections{state=\"idle\"}", 3.0),
            ("etk_retention_removed_total{what=\"personal_data\"}", 2.0),
            ("etk_retention_removed_total{what=\"record\"}", 1.0),
            ("etk_retention_removed_total{what=\"outbox\"}", 5.0),
            ("etk_retention_passes_total{outcome=\"ok\"}", 1.0),
        ] {
            assert_eq!(s.get(series), Some(&want), "{series}: {s:#?}");
        }
    }

    #[test]
    fn each_metrics_has_its_own_registry() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.order_violation_refused();
        let s = samples(&b.render());
        assert_eq!(s.get("etk_order_violations_refused_total"), Some(&0.0));
    }
}
