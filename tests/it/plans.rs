//! Query plans of the hot paths (issue #12, item 1): every statement the store runs to create,
//! claim, finish, list (each list RPC's filter, keyset paged), catch a watcher up, find the next
//! due step, reconcile and plan retention is recorded as it runs, then explained — on SQLite
//! both on a fresh database without statistics and on one filled with 20,000 cases and 50,000
//! effects (mostly done) and `ANALYZE`d; on PostgreSQL on the filled and analysed one. No plan
//! may walk `cases`, `effects` or `case_events` whole: no `SCAN` of them (with or without an
//! index) on SQLite, no `Seq Scan` on PostgreSQL, and on SQLite no index search bounded only by
//! a status or state (a few values, each with many rows) unless the walk is in index order and
//! stops at the `LIMIT`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etjanstekort_gateway::domain::saga::{Event, SnapshotState};
use etjanstekort_gateway::domain::{KivRemovalRoute, State, Timestamp};
use etjanstekort_gateway::privacy::Vault;
use etjanstekort_gateway::storage::{
    CaseStore, Finished, ListQuery, RetentionCutoffs, SeaStore, WorkResult,
};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

use crate::helpers::{TestDb, test_vault_key};
use crate::store::{cmd, hsa, meta};

type Recorded = Arc<Mutex<Vec<Statement>>>;

async fn open(db: &TestDb) -> (SeaStore, Recorded) {
    let vault = Arc::new(Vault::from_base64(&test_vault_key()).expect("key"));
    let mut store = SeaStore::connect(&db.url, 4, Duration::from_secs(5), vault)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let recorded: Recorded = Arc::default();
    let sink = recorded.clone();
    store.on_statement(move |s| sink.lock().expect("lock").push(s.clone()));
    (store, recorded)
}

/// Runs every hot path once.
async fn exercise(store: &SeaStore) {
    let mut ids = Vec::new();
    // Enough for a batch of results whose keys outnumber what the planner guesses a status
    // holds (the fence's `key IN (…)`).
    for i in 0..8 {
        let card = format!("300000{i}");
        let case = store
            .create(cmd(Some(&format!("p{i}")), "f", &card))
            .await
            .expect("create")
            .into_case();
        ids.push(case.id);
    }
    // A replay looks the request up.
    store
        .create(cmd(Some("p0"), "f", "3000000"))
        .await
        .expect("replay");
    // The engine's round: claim, load, record results.
    let now = etjanstekort_gateway::clock::now();
    let work = store
        .claim("plans-1", now, Duration::from_secs(30), 16)
        .await
        .expect("claim");
    assert!(!work.is_empty());
    store.get_many(&ids).await.expect("get_many");
    let results = work
        .into_iter()
        .map(|w| Finished {
            result: match w.step {
                etjanstekort_gateway::domain::saga::Step::Report => WorkResult::Done {
                    event: Some(Event::ReportSent),
                    snapshot: None,
                    detail: "sent".into(),
                },
                // One retry (fenced by key), the rest done (fenced as a batch).
                _ if w.case_id == ids[7] => WorkResult::Retry {
                    at: Timestamp(now.0 + 1_000_000),
                    error: "later".into(),
                },
                _ => WorkResult::Done {
                    event: None,
                    snapshot: None,
                    detail: "looked".into(),
                },
            },
            work: w,
        })
        .collect();
    store.finish("plans-1", results).await.expect("finish");
    store.next_due().await.expect("next_due");
    // The outcome: pending (a poll re-armed), confirmed, rejected.
    store
        .apply(&ids[0], None, &Event::OutcomePending, meta("system"))
        .await
        .expect("pending");
    let confirmed = Event::RevocationConfirmed {
        reference: "TID-1".into(),
        certificates: Vec::new(),
    };
    store
        .apply(&ids[0], None, &confirmed, meta("SE1655999991-T1"))
        .await
        .expect("confirm");
    store
        .apply(
            &ids[1],
            None,
            &Event::RevocationRejected {
                reason: "no".into(),
            },
            meta("SE1655999991-T1"),
        )
        .await
        .expect("reject");
    store.get(&ids[2]).await.expect("get");
    // Watch catch-up.
    store.events(&ids[0]).await.expect("events");
    // Every list RPC's query (`app.rs`), first page and next page.
    let provider = hsa("SE1655999991-E1");
    let unit = hsa("SE1655999991-S1");
    let queries = [
        // ListDeregistrations, without and with a care unit and state.
        ListQuery {
            care_provider: Some(provider.clone()),
            ..ListQuery::default()
        },
        ListQuery {
            care_provider: Some(provider.clone()),
            care_units: Some(vec![unit.clone()]),
            states: vec![State::RevocationRequested],
            ..ListQuery::default()
        },
        // ListKivRemovalTasks.
        ListQuery {
            care_units: Some(vec![unit.clone(), hsa("SE1655999991-S2")]),
            states: vec![State::KivRemovalPending],
            route: Some(KivRemovalRoute::HealthCareOffice),
            revocation_confirmed: Some(true),
            ..ListQuery::default()
        },
        // ListPendingRevocations.
        ListQuery {
            states: vec![State::RevocationRequested],
            include_attention_from: true,
            ..ListQuery::default()
        },
        // ListAttentionCases.
        ListQuery {
            states: vec![State::NeedsAttention],
            ..ListQuery::default()
        },
        // The reconciliation pass.
        ListQuery {
            states: vec![
                State::Accepted,
                State::RevocationRequested,
                State::NeedsAttention,
            ],
            revocation_confirmed: Some(false),
            snapshot: Some(SnapshotState::Taken),
            ..ListQuery::default()
        },
    ];
    for q in queries {
        for after in [None, Some(ids[0].clone())] {
            store
                .list(&ListQuery {
                    after,
                    limit: 51,
                    ..q.clone()
                })
                .await
                .expect("list");
        }
    }
    // The retention pass's look-ups.
    let cut = RetentionCutoffs {
        personal_data: now,
        record: now,
        outbox: now,
    };
    store.retention_due(&cut, 100).await.expect("retention_due");
    store.purge_outbox(now, 100).await.expect("purge_outbox");
}

/// Column names of `table`, in order.
async fn columns(raw: &DatabaseConnection, table: &str) -> Vec<String> {
    let sql = match raw.get_database_backend() {
        DbBackend::Postgres => format!(
            "SELECT column_name AS name FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = '{table}' \
             ORDER BY ordinal_position"
        ),
        _ => format!("SELECT name FROM pragma_table_info('{table}')"),
    };
    raw.query_all_raw(Statement::from_string(raw.get_database_backend(), sql))
        .await
        .expect("columns")
        .iter()
        .map(|r| r.try_get::<String>("", "name").expect("name"))
        .collect()
}

/// `INSERT INTO table (columns) SELECT …` copying one template row `t` once per `i` in
/// 1..=count, with `overrides` replacing some columns' values.
async fn clone_rows(
    raw: &DatabaseConnection,
    table: &str,
    template: &str,
    count: u32,
    overrides: &[(&str, &str)],
) {
    let cols = columns(raw, table).await;
    let values: Vec<String> = cols
        .iter()
        .map(|c| {
            overrides
                .iter()
                .find(|(name, _)| name == c)
                .map_or_else(|| format!("t.{c}"), |(_, v)| (*v).to_owned())
        })
        .collect();
    let (with, seq) = match raw.get_database_backend() {
        DbBackend::Postgres => (
            String::new(),
            format!("generate_series(1, {count}) AS seq(i)"),
        ),
        _ => (
            format!(
                "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {count}) "
            ),
            "seq".to_owned(),
        ),
    };
    let sql = format!(
        "{with}INSERT INTO {table} ({}) SELECT {} FROM {seq}, ({template}) t",
        cols.join(", "),
        values.join(", ")
    );
    raw.execute_unprepared(&sql).await.expect("fill");
}

/// Fills the database like one that has served for a while: 20,000 cases, most completed,
/// across 50 providers and 200 units; 60,000 events; 50,000 effects, nine in ten done.
async fn fill(raw: &DatabaseConnection) {
    const CASES: u32 = 20_000;
    let state = "CASE i % 10 WHEN 0 THEN 'revocation_requested' WHEN 1 THEN 'kiv_removal_pending' \
                 WHEN 2 THEN 'needs_attention' WHEN 3 THEN 'accepted' ELSE 'completed' END";
    let ended = "CASE WHEN i % 10 >= 4 THEN t.created_at ELSE NULL END";
    let confirmed = "CASE WHEN i % 10 = 1 OR i % 10 >= 4 THEN t.created_at ELSE NULL END";
    let id = "t.id || '-' || i";
    let provider = "'SE1655999991-F' || (i % 50)";
    let unit = "'SE1655999991-U' || (i % 200)";
    let pseudonym = "t.holder_pseudonym || i";
    clone_rows(
        raw,
        "cases",
        "SELECT * FROM cases ORDER BY id LIMIT 1",
        CASES,
        &[
            ("id", id),
            ("active_card_number", "NULL"),
            ("state", state),
            ("ended_at", ended),
            ("revocation_confirmed_at", confirmed),
            ("care_provider_hsa_id", provider),
            ("care_unit_hsa_id", unit),
            ("holder_pseudonym", pseudonym),
        ],
    )
    .await;
    for seq in 1..=3 {
        clone_rows(
            raw,
            "case_events",
            "SELECT e.* FROM case_events e JOIN (SELECT id FROM cases ORDER BY id LIMIT 1) c \
             ON e.case_id = c.id WHERE e.seq = 1",
            CASES,
            &[
                ("case_id", "t.case_id || '-' || i"),
                ("seq", &seq.to_string()),
            ],
        )
        .await;
    }
    let case_of = format!("(SELECT id FROM cases ORDER BY id LIMIT 1) || '-' || (1 + i % {CASES})");
    clone_rows(
        raw,
        "effects",
        "SELECT * FROM effects ORDER BY key LIMIT 1",
        50_000,
        &[
            ("key", "t.key || '-' || i"),
            ("case_id", &case_of),
            (
                "status",
                "CASE WHEN i % 10 = 0 THEN 'pending' ELSE 'done' END",
            ),
            ("due_at", "t.due_at + i"),
            ("updated_at", "t.updated_at + i"),
            ("lease_owner", "NULL"),
            ("lease_until", "NULL"),
        ],
    )
    .await;
    raw.execute_unprepared("ANALYZE").await.expect("analyze");
}

/// The plan of one recorded statement, one line per step.
async fn explain(raw: &DatabaseConnection, stmt: &Statement) -> Vec<String> {
    let backend = raw.get_database_backend();
    let (prefix, column) = match backend {
        DbBackend::Postgres => ("EXPLAIN ", "QUERY PLAN"),
        _ => ("EXPLAIN QUERY PLAN ", "detail"),
    };
    let explained = Statement {
        sql: format!("{prefix}{}", stmt.sql),
        values: stmt.values.clone(),
        db_backend: backend,
    };
    raw.query_all_raw(explained)
        .await
        .unwrap_or_else(|e| panic!("explain {}: {e}", stmt.sql))
        .iter()
        .map(|r| r.try_get::<String>("", column).expect("plan line"))
        .collect()
}

const TABLES: [&str; 3] = ["cases", "effects", "case_events"];

/// Why the plan of `sql` walks a table whole, if it does.
fn unbounded(backend: DbBackend, sql: &str, plan: &[String]) -> Option<String> {
    for line in plan {
        let line = line.trim();
        if backend == DbBackend::Postgres {
            if let Some(t) = TABLES.iter().find(|t| {
                line.contains(&format!("Seq Scan on {t} "))
                    || line.ends_with(&format!("Seq Scan on {t}"))
            }) {
                return Some(format!("sequential scan of {t}: {line}"));
            }
            continue;
        }
        for t in TABLES {
            if line.starts_with(&format!("SCAN {t}")) {
                return Some(format!("walks {t}: {line}"));
            }
            // Bounded only by a status or state: every pending effect, every waiting case.
            let low = ["(status=?)", "(state=?)", "(status=? AND state=?)"];
            let by_low =
                line.starts_with(&format!("SEARCH {t} ")) && low.iter().any(|l| line.ends_with(l));
            // … unless walked in index order up to the LIMIT (a top-N read).
            let top_n = sql.contains(" LIMIT ")
                && sql.contains(" ORDER BY ")
                && !plan.iter().any(|l| l.contains("TEMP B-TREE"));
            if by_low && !top_n {
                return Some(format!("walks every row of one status of {t}: {line}"));
            }
            // A page that must be sorted reads every match before the limit applies.
            if line.starts_with(&format!("SEARCH {t} "))
                && sql.contains(" LIMIT ")
                && plan.iter().any(|l| l.contains("TEMP B-TREE FOR ORDER BY"))
            {
                return Some(format!("sorts every match of {t} for one page: {line}"));
            }
        }
    }
    None
}

fn hot(stmt: &Statement) -> bool {
    let sql = stmt.sql.trim_start();
    ["SELECT", "UPDATE", "DELETE", "INSERT", "WITH"]
        .iter()
        .any(|k| sql.starts_with(k))
        && TABLES.iter().any(|t| sql.contains(&format!("\"{t}\"")))
}

async fn check(db: &TestDb, analysed_only: bool) {
    let (store, recorded) = open(db).await;
    exercise(&store).await;
    let mut stmts: Vec<Statement> = recorded.lock().expect("lock").clone();
    stmts.retain(hot);
    let mut seen = std::collections::HashSet::new();
    stmts.retain(|s| seen.insert(s.sql.clone()));
    assert!(stmts.len() > 20, "recorded {} statements", stmts.len());
    let raw = Database::connect(&db.url).await.expect("raw");
    let backend = raw.get_database_backend();
    let mut problems = Vec::new();
    if !analysed_only {
        for s in &stmts {
            let plan = explain(&raw, s).await;
            if let Some(why) = unbounded(backend, &s.sql, &plan) {
                problems.push(format!("without statistics: {why}\n  {}", s.sql));
            }
        }
    }
    fill(&raw).await;
    for s in &stmts {
        let plan = explain(&raw, s).await;
        if let Some(why) = unbounded(backend, &s.sql, &plan) {
            problems.push(format!("with statistics: {why}\n  {}", s.sql));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn hot_queries_are_bounded_by_an_index_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    check(&TestDb::sqlite(dir.path()), false).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn hot_queries_are_bounded_by_an_index_on_postgres() {
    check(&TestDb::postgres().await, true).await;
}

#[test]
fn the_checker_refuses_a_walk() {
    let walk = ["SCAN effects".to_owned()];
    assert!(unbounded(DbBackend::Sqlite, "UPDATE effects", &walk).is_some());
    let by_status = ["SEARCH effects USING INDEX effects_due (status=?)".to_owned()];
    assert!(unbounded(DbBackend::Sqlite, "UPDATE \"effects\" SET", &by_status).is_some());
    let seq = ["Seq Scan on cases  (cost=0.00..1.00 rows=1 width=8)".to_owned()];
    assert!(unbounded(DbBackend::Postgres, "SELECT", &seq).is_some());
}

/// Item 3: a case waiting for TjänsteID-service's outcome is polled less and less often — each
/// poll waits as long as the case has waited (`Timing::poll_delay`), at most `poll_max`.
#[tokio::test]
async fn each_poll_of_a_waiting_case_is_planned_later_up_to_poll_max() {
    let dir = tempfile::tempdir().expect("dir");
    let db = TestDb::sqlite(dir.path());
    let (store, _) = open(&db).await;
    let raw = Database::connect(&db.url).await.expect("raw");
    let id = store
        .create(cmd(None, "f", "3100001"))
        .await
        .expect("create")
        .into_case()
        .id;
    let t0 = etjanstekort_gateway::clock::now().0;
    let at = |us: i64| {
        let mut m = meta("system");
        m.at = Timestamp(t0 + us);
        m
    };
    let poll_due = |steps: Vec<etjanstekort_gateway::storage::StepView>| {
        steps
            .into_iter()
            .find(|s| s.step == "poll_outcome" && s.status == "pending")
            .expect("a poll is planned")
            .due_at
            .0
    };
    store
        .apply(&id, None, &Event::ReportSent, at(0))
        .await
        .expect("sent");
    // Each poll that finds no outcome plans the next one, when it ran.
    let mut ran = poll_due(store.steps(&id).await.expect("steps"));
    let mut waits = vec![ran - t0];
    for _ in 0..14 {
        // The poll ran: its row is done (as `finish` records it), and its result re-arms it.
        raw.execute_unprepared("UPDATE effects SET status = 'done' WHERE step = 'poll_outcome'")
            .await
            .expect("poll done");
        store
            .apply(&id, None, &Event::OutcomePending, at(ran - t0))
            .await
            .expect("pending");
        let next = poll_due(store.steps(&id).await.expect("steps"));
        waits.push(next - ran);
        ran = next;
    }
    let secs: Vec<i64> = waits.iter().map(|w| w / 1_000_000).collect();
    // poll_interval 1 s, poll_max 10 min (the defaults).
    assert_eq!(
        secs,
        [1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600, 600, 600]
    );
}
