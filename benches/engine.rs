//! Engine throughput and footprint on SQLite with simulated connectors.
//!
//! `cargo bench --bench engine` — prints figures; `docs/benchmarks.md` records a run.
//! Env: ETK_BENCH_CASES (default 5000), ETK_BENCH_WAITING (default 10000); for `waiting_cpu`
//! also ETK_BENCH_POLL_MAX (default "10m"; "1s" polls every case every second, as before
//! issue #12) and ETK_BENCH_WARM (how long the cases wait before the 60 s measured, default
//! "60s").

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use etjanstekort_gateway::bus::EventBus;
use etjanstekort_gateway::connectors::Connectors;
use etjanstekort_gateway::connectors::simulated::{
    Faults, LogNotifier, SimulatedKiv, SimulatedTjansteId,
};
use etjanstekort_gateway::domain::saga::SnapshotState;
use etjanstekort_gateway::domain::{
    CardHolder, CardNumber, Email, HsaId, KivRemovalRoute, NewDeregistration, PersonName,
    Personnummer, Reason, Reporter, State,
};
use etjanstekort_gateway::engine::{Engine, EngineSettings};
use etjanstekort_gateway::privacy::Vault;
use etjanstekort_gateway::storage::{
    CaseStore, CreateCase, EventMeta, ListQuery, SeaStore, Timing,
};

fn report(i: usize) -> NewDeregistration {
    let pnr = Personnummer::synthetic(
        1950 + (i % 50) as i32,
        1 + (i % 12) as u8,
        1 + (i % 28) as u8,
        1 + (i % 998) as u16,
    )
    .unwrap();
    NewDeregistration {
        care_unit: HsaId::parse("SE1655999991-S000000000011").unwrap(),
        card_holder: CardHolder {
            personnummer: pnr,
            full_name: PersonName::parse("Bench Person").unwrap(),
            email: Some(Email::parse("holder@example.se").unwrap()),
        },
        card_number: CardNumber::parse(&format!("{:012}", 900_000_000 + i)).unwrap(),
        reason: Reason::EmploymentEnded,
        card_received_at: etjanstekort_gateway::clock::now(),
        reported_by: Reporter {
            hsa_id: HsaId::parse("SE1655999991-P000000000099").unwrap(),
            full_name: PersonName::parse("Bench Chef").unwrap(),
            email: Email::parse("chef@example.se").unwrap(),
        },
        route: KivRemovalRoute::CareProvider,
    }
}

/// Snapshot, report, outcome poll, notify head, notify holder, KIV removal.
const EFFECTS_PER_CASE: usize = 6;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn store(dir: &std::path::Path, poll: bool, bus: EventBus) -> Arc<SeaStore> {
    let vault = Arc::new(Vault::from_master_key(&[5u8; 32]).unwrap());
    let url = format!("sqlite://{}?mode=rwc", dir.join("bench.sqlite").display());
    let s = SeaStore::connect(&url, 1, Duration::from_secs(30), vault)
        .await
        .unwrap()
        .with_timing(Timing {
            poll_interval: Duration::ZERO,
            remind_after: Duration::from_secs(86_400),
            escalate_after: Duration::from_secs(864_000),
            poll_outcome: poll,
            ..Timing::default()
        })
        .with_bus(bus);
    s.migrate().await.unwrap();
    Arc::new(s)
}

async fn create_cases(store: &Arc<SeaStore>, n: usize, offset: usize) -> f64 {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let per = n.div_ceil(16);
    for t in 0..16 {
        let store = store.clone();
        set.spawn(async move {
            for i in (t * per)..((t + 1) * per).min(n) {
                let p = HsaId::parse("SE1655999991-E000000000001").unwrap();
                store
                    .create(CreateCase {
                        id: etjanstekort_gateway::clock::new_case_id(),
                        principal: p.clone(),
                        care_provider: p,
                        request_id: None,
                        fingerprint: String::new(),
                        report: report(offset + i),
                        meta: EventMeta {
                            actor: "bench".into(),
                            trace_id: "0".repeat(32),
                            at: etjanstekort_gateway::clock::now(),
                            detail: String::new(),
                        },
                        trace_parent: None,
                    })
                    .await
                    .unwrap();
            }
        });
    }
    while set.join_next().await.is_some() {}
    n as f64 / started.elapsed().as_secs_f64()
}

async fn remaining(store: &Arc<SeaStore>, states: Vec<State>) -> bool {
    !store
        .list(&ListQuery {
            states,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
}

/// `employ`: the simulated KIV keeps an employment per person in this process's memory —
/// registry state, not gateway state — so the footprint run leaves it off.
fn connectors(latency: Duration, confirm: Option<Duration>, employ: bool) -> Connectors {
    let f = Faults {
        latency,
        failure_rate: 0.0,
    };
    Connectors {
        tjansteid: Arc::new(SimulatedTjansteId::new(confirm, f, None)),
        kiv: Arc::new(SimulatedKiv::new(employ, f, None)),
        notifier: Arc::new(LogNotifier::new(f, None)),
        gateway_removes_kiv: true,
        revocation: None,
    }
}

fn engine_cfg(workers: usize, batch: u32) -> EngineSettings {
    EngineSettings {
        workers,
        batch_size: batch,
        idle_poll: Duration::from_millis(20),
        reconcile_interval: Duration::ZERO,
        ..EngineSettings::default()
    }
}

async fn completions(n: usize, latency: Duration, workers: usize, batch: u32) {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::new();
    let store = store(dir.path(), true, bus.clone()).await;
    let created = create_cases(&store, n, 0).await;
    let engine = Arc::new(Engine::new(
        store.clone(),
        bus,
        connectors(latency, Some(Duration::ZERO), true),
        engine_cfg(workers, batch),
    ));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let mut set = engine.spawn(rx);
    let open = vec![
        State::Accepted,
        State::RevocationRequested,
        State::Revoked,
        State::KivRemovalPending,
        State::NeedsAttention,
    ];
    while remaining(&store, open.clone()).await {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    while set.join_next().await.is_some() {}
    let attention = remaining(&store, vec![State::NeedsAttention]).await;
    println!(
        "completions  cases={n} latency={}ms workers={workers} batch={batch}: {:.0} cases/s ({secs:.2} s; {} effects/case){}; creation {created:.0} cases/s",
        latency.as_millis(),
        n as f64 / secs,
        EFFECTS_PER_CASE,
        if attention {
            " SOME NEED ATTENTION"
        } else {
            ""
        }
    );
}

async fn waiting(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::new();
    let store = store(dir.path(), false, bus.clone()).await;
    let engine = Arc::new(Engine::new(
        store.clone(),
        bus,
        connectors(Duration::ZERO, None, false),
        engine_cfg(4, 128),
    ));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut set = engine.spawn(rx);
    let settle = |store: Arc<SeaStore>| async move {
        while remaining(&store, vec![State::Accepted]).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let base = rss_kib();
    println!("waiting      start: RSS {base} KiB");
    let mut rows = Vec::new();
    let mut total = 0;
    for step in [n / 10, n / 2, n] {
        let add = step - total;
        create_cases(&store, add, total).await;
        total = step;
        settle(store.clone()).await;
        rows.push((total, rss_kib()));
    }
    let _ = stop.send(true);
    while set.join_next().await.is_some() {}
    let waiting = store
        .list(&ListQuery {
            states: vec![State::RevocationRequested],
            snapshot: Some(SnapshotState::Absent),
            limit: u32::MAX,
            ..Default::default()
        })
        .await
        .unwrap()
        .len();
    for (cases, rss) in rows {
        println!(
            "waiting      cases={cases}: RSS {} KiB (+{} KiB over start)",
            rss,
            rss.saturating_sub(base)
        );
    }
    println!("waiting      {waiting} cases in REVOCATION_REQUESTED, engine idle");
}

/// CPU time this process has used (user + system), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // Clock ticks: 100 a second on Linux.
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

fn env_duration(name: &str, default: &str) -> Duration {
    humantime::parse_duration(&std::env::var(name).unwrap_or_else(|_| default.to_owned())).unwrap()
}

/// CPU of the whole process (engine with default settings: 4 workers, idle_poll 1 s, the
/// reconciliation pass every 60 s) while `n` cases wait for an outcome that never comes, the
/// simulated desk being polled.
async fn waiting_cpu(n: usize) {
    let poll_max = env_duration("ETK_BENCH_POLL_MAX", "10m");
    let warm = env_duration("ETK_BENCH_WARM", "60s");
    let dir = tempfile::tempdir().unwrap();
    let bus = EventBus::new();
    let vault = Arc::new(Vault::from_master_key(&[5u8; 32]).unwrap());
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.sqlite").display()
    );
    let store = SeaStore::connect(&url, 1, Duration::from_secs(30), vault)
        .await
        .unwrap()
        .with_timing(Timing {
            poll_interval: Duration::from_secs(1),
            poll_max,
            poll_outcome: true,
            ..Timing::default()
        })
        .with_bus(bus.clone());
    store.migrate().await.unwrap();
    let store = Arc::new(store);
    let engine = Arc::new(Engine::new(
        store.clone(),
        bus,
        connectors(Duration::ZERO, None, false),
        EngineSettings::default(),
    ));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut set = engine.spawn(rx);
    create_cases(&store, n, 0).await;
    while remaining(&store, vec![State::Accepted]).await {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(warm).await;
    let (cpu0, t0) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (cpu, wall) = (cpu_time() - cpu0, t0.elapsed());
    let _ = stop.send(true);
    while set.join_next().await.is_some() {}
    println!(
        "waiting_cpu  cases={n} poll_max={} waited≥{}: {} ms CPU in {:.1} s = {:.2} % of a core",
        humantime::format_duration(poll_max),
        humantime::format_duration(warm),
        cpu.as_millis(),
        wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    );
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = std::env::var("ETK_BENCH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let w: usize = std::env::var("ETK_BENCH_WAITING")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `cargo bench --bench engine -- waiting` measures memory in a fresh process, before any
    // other run has grown the heap.
    let only = std::env::args()
        .skip(1)
        .find(|a| a == "waiting" || a == "completions" || a == "waiting_cpu");
    rt.block_on(async {
        if only.as_deref() == Some("waiting_cpu") {
            waiting_cpu(w).await;
            return;
        }
        if only.as_deref() != Some("completions") {
            waiting(w).await;
        }
        if only.as_deref() != Some("waiting") {
            completions(n, Duration::ZERO, 4, 128).await;
            completions(n / 2, Duration::from_millis(100), 8, 256).await;
        }
    });
}
