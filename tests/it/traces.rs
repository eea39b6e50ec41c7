//! One case is one trace: the saga's steps and the reconciliation's restores join the trace of
//! the request that created the case; the LDAP and SMTP calls are client spans below them; and
//! no span carries personal data. Spans are collected in memory by an OpenTelemetry SDK under a
//! subscriber scoped to the test's thread (a current-thread runtime, so every task of the
//! engine runs under it).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etjanstekort_gateway::app::Gateway;
use etjanstekort_gateway::auth::{Principal, Role};
use etjanstekort_gateway::bus::EventBus;
use etjanstekort_gateway::connectors::Connectors;
use etjanstekort_gateway::connectors::ldap::Removal;
use etjanstekort_gateway::connectors::simulated::{
    Faults, LogNotifier, SimulatedKiv, SimulatedTjansteId,
};
use etjanstekort_gateway::connectors::smtp::SmtpNotifier;
use etjanstekort_gateway::connectors::{Kiv, Notice, Notifier, Recipient};
use etjanstekort_gateway::domain::{
    CardHolder, CardNumber, CaseId, Email, HsaId, KivRemovalRoute, NewDeregistration, PersonName,
    Personnummer, Reason, Reporter, State, Timestamp,
};
use etjanstekort_gateway::engine::{Engine, EngineSettings};
use etjanstekort_gateway::privacy::Vault;
use etjanstekort_gateway::storage::{CaseStore, CreateCase, EventMeta, SeaStore, Timing};
use etjanstekort_gateway::trace_context;
use opentelemetry::Value;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

use crate::helpers::{TestDb, test_vault_key, unit_a};
use crate::real::{KivWorld, ldap_kiv, person, smtp, unit};
use crate::servers::{Slapd, SmtpServer};

/// The caller's trace: what a request's `traceparent` names.
const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// Every form of the test's personal data that must never reach a span: the personnummer
/// whole, without century, with separator, masked (its birth date), and the names and
/// addresses.
const PERSONAL: &[&str] = &[
    "191212121212",
    "1212121212",
    "19121212-1212",
    "121212-1212",
    "19121212",
    "****",
    "Tolvan",
    "Tolvansson",
    "Vera",
    "Verksamhetschef",
    "tolvan@example.se",
    "vera@example.se",
    "cn=P",
    "ou=Personal",
];

/// Spans exported in memory while the guard lives (this thread only).
struct Traced {
    exporter: InMemorySpanExporter,
    _provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

fn traced() -> Traced {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    Traced {
        exporter,
        _guard: tracing::subscriber::set_default(subscriber),
        _provider: provider,
    }
}

impl Traced {
    /// The finished spans once all of `names` are among them (bounded). A span may end a
    /// moment after the work it covers: SQLite's worker thread holds the span of the command
    /// it ran until its next command.
    async fn spans_named(&self, names: &[&str]) -> Vec<SpanData> {
        // Bounded, but not tight: on a loaded 2-core machine a step due now (the restore) ran
        // more than 10 s later.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.exporter.get_finished_spans().expect("spans");
            let missing: Vec<&&str> = names
                .iter()
                .filter(|n| !spans.iter().any(|s| s.name == **n))
                .collect();
            if missing.is_empty() {
                return spans;
            }
            assert!(Instant::now() < deadline, "spans never ended: {missing:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn attr(s: &SpanData, key: &str) -> Option<Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

fn attr_str(s: &SpanData, key: &str) -> String {
    attr(s, key)
        .map(|v| v.as_str().into_owned())
        .unwrap_or_default()
}

/// Everything a span exports as text: name, attributes, events, links, status.
fn exported_text(s: &SpanData) -> String {
    let mut out = format!("{}\n", s.name);
    for kv in &s.attributes {
        out.push_str(&format!("{}={}\n", kv.key, kv.value));
    }
    for e in &s.events.events {
        out.push_str(&format!("event {}\n", e.name));
        for kv in &e.attributes {
            out.push_str(&format!("{}={}\n", kv.key, kv.value));
        }
    }
    for l in &s.links.links {
        for kv in &l.attributes {
            out.push_str(&format!("{}={}\n", kv.key, kv.value));
        }
    }
    if let Status::Error { description } = &s.status {
        out.push_str(&format!("status {description}\n"));
    }
    out
}

fn assert_no_personal_data(spans: &[SpanData]) {
    assert!(!spans.is_empty());
    for s in spans {
        let text = exported_text(s);
        for p in PERSONAL {
            assert!(!text.contains(p), "{p:?} in span {}:\n{text}", s.name);
        }
    }
}

fn hsa(s: &str) -> HsaId {
    HsaId::parse(s).expect("hsa")
}

fn report() -> NewDeregistration {
    NewDeregistration {
        care_unit: hsa(&unit_a()),
        card_holder: CardHolder {
            personnummer: Personnummer::parse(
                "19121212-1212",
                etjanstekort_gateway::clock::now().utc_date(),
            )
            .expect("pnr"),
            full_name: PersonName::parse("Tolvan Tolvansson").expect("name"),
            email: Some(Email::parse("tolvan@example.se").expect("email")),
        },
        card_number: CardNumber::parse("7100001").expect("card"),
        reason: Reason::EmploymentEnded,
        card_received_at: Timestamp(etjanstekort_gateway::clock::now().0 - 3_600_000_000),
        reported_by: Reporter {
            hsa_id: hsa("SE1655999991-P1"),
            full_name: PersonName::parse("Vera Verksamhetschef").expect("name"),
            email: Email::parse("vera@example.se").expect("email"),
        },
        route: KivRemovalRoute::CareProvider,
    }
}

struct World {
    store: Arc<SeaStore>,
    gateway: Gateway,
    engine: Engine,
    kiv: Arc<SimulatedKiv>,
    _dir: tempfile::TempDir,
}

async fn world(confirm_after: Option<Duration>) -> World {
    crate::helpers::install_crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDb::sqlite(dir.path());
    let vault = Arc::new(Vault::from_base64(&test_vault_key()).expect("key"));
    let timers = Timing {
        poll_interval: Duration::from_millis(20),
        ..Timing::default()
    };
    let bus = EventBus::new();
    let store = SeaStore::connect(&db.url, 4, Duration::from_secs(5), vault.clone())
        .await
        .expect("connect")
        .with_timing(timers)
        .with_bus(bus.clone());
    store.migrate().await.expect("migrate");
    let store = Arc::new(store);
    // Employed explicitly: an auto-employing simulation would re-create a removed employment
    // on the reconciler's look-up.
    let kiv = Arc::new(SimulatedKiv::new(false, Faults::default(), None));
    kiv.employ(&person(), &unit());
    let connectors = Connectors {
        tjansteid: Arc::new(SimulatedTjansteId::new(
            confirm_after,
            Faults::default(),
            None,
        )),
        kiv: kiv.clone(),
        notifier: Arc::new(LogNotifier::new(Faults::default(), None)),
        gateway_removes_kiv: true,
        revocation: None,
    };
    let settings = EngineSettings {
        workers: 0,
        timers,
        ..EngineSettings::default()
    };
    World {
        gateway: Gateway::new(store.clone(), bus.clone(), vault),
        engine: Engine::new(store.clone(), bus, connectors, settings),
        store,
        kiv,
        _dir: dir,
    }
}

impl World {
    /// Creates the case as the API does, inside a request span continuing `CALLER`. Returns
    /// the case id and the request span's id.
    async fn create(&self) -> (CaseId, SpanId) {
        let principal = Principal {
            hsa_id: hsa("SE1655999991-E1"),
            role: Role::CareProvider,
            care_provider: hsa("SE1655999991-E1"),
            care_units: HashSet::from([hsa(&unit_a())]),
        };
        let request = tracing::info_span!(parent: None, "grpc.request");
        assert!(trace_context::set_parent_from(&request, Some(CALLER)));
        let request_id = opentelemetry::trace::TraceContextExt::span(
            &tracing_opentelemetry::OpenTelemetrySpanExt::context(&request),
        )
        .span_context()
        .span_id();
        let case = self
            .gateway
            .create(&principal, None, report(), CALLER_TRACE.into())
            .instrument(request)
            .await
            .expect("create")
            .into_case();
        let stored = case.trace_parent.as_deref().expect("traceparent stored");
        let sc = trace_context::parse(stored).expect("a valid traceparent");
        assert_eq!(sc.trace_id().to_string(), CALLER_TRACE);
        assert_eq!(sc.span_id(), request_id);
        (case.id, request_id)
    }

    /// Runs the engine's steps until `done` holds for the case (bounded).
    async fn run_until(&self, id: &CaseId, what: &str, done: impl Fn(State) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.engine.run_batch().await.expect("batch");
            let state = self.store.get(id).await.expect("get").expect("case").state;
            if done(state) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: still {state:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn caller_trace() -> TraceId {
    TraceId::from_hex(CALLER_TRACE).expect("hex")
}

#[tokio::test]
async fn a_case_is_one_trace_from_report_to_kiv_removal() {
    let t = traced();
    let w = world(Some(Duration::ZERO)).await;
    let (id, request_span) = w.create().await;
    w.run_until(&id, "completion", |s| s == State::Completed)
        .await;

    let spans = t
        .spans_named(&[
            "saga.step snapshot",
            "saga.step report",
            "saga.step poll_outcome",
            "saga.step notify_head",
            "saga.step notify_holder",
            "saga.step remove_kiv",
        ])
        .await;
    let steps: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("saga.step "))
        .collect();
    let names: HashSet<String> = steps.iter().map(|s| attr_str(s, "step")).collect();
    for step in [
        "snapshot",
        "report",
        "poll_outcome",
        "notify_head",
        "notify_holder",
        "remove_kiv",
    ] {
        assert!(names.contains(step), "no span of step {step}: {names:?}");
    }
    for s in &steps {
        let step = attr_str(s, "step");
        assert_eq!(s.name, format!("saga.step {step}"));
        assert_eq!(s.span_context.trace_id(), caller_trace(), "{step}");
        // A child of the request that created the case, not of another step.
        assert_eq!(s.parent_span_id, request_span, "{step}");
        assert_eq!(attr_str(s, "case_id"), id.to_string(), "{step}");
        assert!(
            matches!(attr(s, "attempt"), Some(Value::I64(n)) if n >= 1),
            "{step}"
        );
        let connector = attr_str(s, "connector");
        let expected = match step.as_str() {
            "notify_head" | "notify_holder" => "log",
            _ => "simulated",
        };
        assert_eq!(connector, expected, "{step}");
        assert_eq!(attr_str(s, "outcome"), "done", "{step}");
        assert_eq!(attr_str(s, "trace_id"), CALLER_TRACE, "{step}");
        assert_eq!(s.status, Status::Unset, "{step}");
    }
    assert_no_personal_data(&spans);
}

#[tokio::test]
async fn a_reconciliation_restore_joins_the_case_trace() {
    let t = traced();
    let w = world(None).await;
    let (id, request_span) = w.create().await;
    let (p, u) = (person(), unit());
    w.run_until(&id, "the report", |s| s == State::RevocationRequested)
        .await;
    assert!(w.kiv.remove_out_of_band(&p, &u));
    assert_eq!(w.engine.reconcile_once().await.expect("reconcile"), 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !w.kiv.contains(&p, &u) {
        assert!(Instant::now() < deadline, "employment not restored");
        w.engine.run_batch().await.expect("batch");
    }

    let spans = t
        .spans_named(&[
            "saga.reconcile employment_missing",
            "saga.reconcile lookup",
            "saga.step restore_kiv",
        ])
        .await;
    let violation = spans
        .iter()
        .find(|s| s.name == "saga.reconcile employment_missing")
        .expect("violation span");
    assert_eq!(violation.span_context.trace_id(), caller_trace());
    assert_eq!(violation.parent_span_id, request_span);
    assert_eq!(attr_str(violation, "case_id"), id.to_string());
    assert_eq!(attr_str(violation, "outcome"), "restore_scheduled");
    // The look-up that found it belongs to the pass's trace, linked from the case's.
    let lookup = spans
        .iter()
        .find(|s| s.name == "saga.reconcile lookup")
        .expect("look-up span");
    assert_ne!(lookup.span_context.trace_id(), caller_trace());
    assert_eq!(attr_str(lookup, "kiv.employment"), "missing");
    assert_eq!(attr_str(lookup, "case_id"), id.to_string());
    assert!(
        violation
            .links
            .links
            .iter()
            .any(|l| l.span_context == lookup.span_context)
    );
    let restore = spans
        .iter()
        .find(|s| s.name == "saga.step restore_kiv")
        .expect("restore step span");
    assert_eq!(restore.span_context.trace_id(), caller_trace());
    assert_eq!(attr_str(restore, "outcome"), "done");
    assert_no_personal_data(&spans);
}

#[tokio::test]
async fn a_case_stored_without_a_trace_context_gets_traces_of_its_own() {
    let t = traced();
    let w = world(None).await;
    let id = etjanstekort_gateway::clock::new_case_id();
    w.store
        .create(CreateCase {
            id: id.clone(),
            principal: hsa("SE1655999991-E1"),
            care_provider: hsa("SE1655999991-E1"),
            request_id: None,
            fingerprint: String::new(),
            report: report(),
            meta: EventMeta {
                actor: "SE1655999991-E1".into(),
                trace_id: CALLER_TRACE.into(),
                at: etjanstekort_gateway::clock::now(),
                detail: String::new(),
            },
            trace_parent: None,
        })
        .await
        .expect("create");
    w.run_until(&id, "the report", |s| s == State::RevocationRequested)
        .await;
    let spans = t
        .spans_named(&["saga.step snapshot", "saga.step report"])
        .await;
    let steps: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("saga.step "))
        .collect();
    assert!(steps.len() >= 2, "{}", steps.len());
    for s in &steps {
        assert_eq!(s.parent_span_id, SpanId::INVALID, "a root");
        assert_ne!(s.span_context.trace_id(), caller_trace());
        assert_eq!(attr_str(s, "case_id"), id.to_string());
    }
    assert_no_personal_data(&spans);
}

// ---- client spans against the real servers ---------------------------------------------------

#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs slapd and aiosmtpd: set ETK_REQUIRE_REAL_SERVERS=1 (see README)"
)]
#[tokio::test]
async fn ldap_and_smtp_calls_are_client_spans_without_personal_data() {
    let slapd = Slapd::start();
    let mail = SmtpServer::start();
    let (p, u) = (person(), unit());
    slapd.employ(&p, &u).await;
    let kiv = ldap_kiv(&slapd, Removal::Delete);
    let notifier = SmtpNotifier::new(smtp(&mail));
    let t = traced();

    let step = tracing::info_span!(parent: None, "step");
    async {
        let found = kiv.lookup(&p, &u).await.expect("lookup").expect("employed");
        kiv.remove("k1", &p, &u).await.expect("remove");
        kiv.restore("k2", &found).await.expect("restore");
        // A second add of the same entry: 68 entryAlreadyExists, and still a success.
        kiv.restore("k2", &found).await.expect("restore again");
        let notice = Notice {
            recipient: Recipient::CardHolder,
            to: Email::parse("tolvan@example.se").expect("email"),
            case_id: etjanstekort_gateway::clock::new_case_id(),
            holder_name: PersonName::parse("Tolvan Tolvansson").expect("name"),
            holder_masked: p.masked(),
            care_unit: u.clone(),
            revocation_reference: "TJID-1".into(),
        };
        notifier.notify("k3", &notice).await.expect("notify");
    }
    .instrument(step.clone())
    .await;
    // Probes stay out of the traces.
    kiv.probe().await.expect("probe");
    let step_id = opentelemetry::trace::TraceContextExt::span(
        &tracing_opentelemetry::OpenTelemetrySpanExt::context(&step),
    )
    .span_context()
    .span_id();
    drop(step);

    let spans = t.spans_named(&["smtp send"]).await;
    let ldap: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("ldap "))
        .collect();
    let ops: Vec<String> = ldap.iter().map(|s| attr_str(s, "ldap.operation")).collect();
    for op in ["connect", "bind", "search", "delete", "add"] {
        assert!(ops.iter().any(|o| o == op), "no {op} span: {ops:?}");
    }
    let (host, port) = slapd
        .url()
        .rsplit_once(':')
        .map(|(h, p)| (h.rsplit('/').next().unwrap_or(h).to_owned(), p.to_owned()))
        .expect("host:port");
    for s in &ldap {
        assert_eq!(s.span_kind, SpanKind::Client, "{}", s.name);
        assert_eq!(s.parent_span_id, step_id, "{}", s.name);
        assert_eq!(attr_str(s, "server.address"), host);
        assert!(matches!(attr(s, "server.port"), Some(Value::I64(n)) if n.to_string() == port));
        assert_eq!(s.status, Status::Unset, "{}", s.name);
    }
    let codes: HashSet<i64> = ldap
        .iter()
        .filter_map(|s| match attr(s, "ldap.result_code") {
            Some(Value::I64(rc)) => Some(rc),
            _ => None,
        })
        .collect();
    assert_eq!(codes, HashSet::from([0, 68]), "result codes");
    // One connection per operation (look-up, removal, two restores); the probe made none.
    assert_eq!(ops.iter().filter(|o| *o == "connect").count(), 4, "{ops:?}");

    let sends: Vec<&SpanData> = spans.iter().filter(|s| s.name == "smtp send").collect();
    assert_eq!(sends.len(), 1);
    let send = sends[0];
    assert_eq!(send.span_kind, SpanKind::Client);
    assert_eq!(send.parent_span_id, step_id);
    assert_eq!(attr_str(send, "server.address"), "127.0.0.1");
    assert!(matches!(attr(send, "server.port"), Some(Value::I64(n)) if n == i64::from(mail.port)));
    assert!(matches!(
        attr(send, "smtp.reply_code"),
        Some(Value::I64(250))
    ));
    assert_no_personal_data(&spans);
}
