//! Resumption after a crash, with the real binary: a process killed with SIGKILL while its
//! steps run takes them back as soon as it is restarted (its node id, not the lease, decides);
//! two live processes never share a node id; a heartbeat keeps a step longer than its lease
//! from being taken over. On SQLite and on PostgreSQL.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use etjanstekort_gateway::api::pb;
use pb::deregistration_service_client::DeregistrationServiceClient;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

use crate::helpers::{TestDb, create, report, unit_a};
use crate::launcher::{Server, run};

/// Where the test's database is: dev mode's SQLite file in the data dir, or PostgreSQL.
enum Db {
    Sqlite,
    Postgres(TestDb),
}

impl Db {
    async fn new(postgres: bool) -> Self {
        if postgres {
            Self::Postgres(TestDb::postgres().await)
        } else {
            Self::Sqlite
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Sqlite => Vec::new(),
            Self::Postgres(db) => vec![("ETK_DATABASE__URL", db.url.clone())],
        }
    }

    /// A connection of the test's own, to look at the outbox.
    async fn connect(&self, dir: &Path) -> DatabaseConnection {
        let url = match self {
            Self::Sqlite => format!(
                "sqlite://{}?mode=ro",
                dir.join("etjanstekort.sqlite").display()
            ),
            Self::Postgres(db) => db.url.clone(),
        };
        Database::connect(url).await.expect("connect")
    }
}

/// The keys of the pending effects some claim holds.
async fn leased(conn: &DatabaseConnection) -> BTreeSet<String> {
    conn.query_all_raw(sea_orm::Statement::from_string(
        conn.get_database_backend(),
        "SELECT key FROM effects WHERE status = 'pending' AND lease_owner IS NOT NULL",
    ))
    .await
    .expect("leases")
    .iter()
    .map(|r| r.try_get::<String>("", "key").expect("key"))
    .collect()
}

async fn status_of(conn: &DatabaseConnection, key: &str) -> String {
    let sql = match conn.get_database_backend() {
        sea_orm::DbBackend::Postgres => "SELECT status FROM effects WHERE key = $1",
        _ => "SELECT status FROM effects WHERE key = ?",
    };
    conn.query_one_raw(sea_orm::Statement::from_sql_and_values(
        conn.get_database_backend(),
        sql,
        [key.into()],
    ))
    .await
    .expect("effect")
    .expect("a row")
    .try_get("", "status")
    .expect("status")
}

fn journal(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

async fn new_cases(server: &Server, dir: &Path, n: u32) -> Vec<String> {
    let mut client = DeregistrationServiceClient::new(server.channel(dir, "provider-a").await);
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            client
                .create_deregistration(create(
                    &format!("resume-{i}"),
                    report(&unit_a(), "19121212-1212", &format!("83{i:05}")),
                ))
                .await
                .expect("create")
                .into_inner()
                .deregistration
                .expect("case")
                .id,
        );
    }
    ids
}

/// Killed with SIGKILL while its steps run (each takes 1.5 s) under a 30 s lease, the process
/// is started again: the steps it held run again at once, not after the lease.
async fn a_restart_takes_back_the_steps_its_killed_incarnation_held(db: Db) {
    let dir = tempfile::tempdir().expect("dir");
    let journal_path = dir.path().join("journal.log");
    let mut env = db.env();
    env.extend([
        ("ETK_TJANSTEID__CONFIRM_AFTER", "never".to_owned()),
        ("ETK_SIMULATED__LATENCY", "1500ms".to_owned()),
        ("ETK_SIMULATED__JOURNAL", journal_path.display().to_string()),
        ("ETK_ENGINE__LEASE", "30s".to_owned()),
        ("ETK_ENGINE__IDLE_POLL", "100ms".to_owned()),
    ]);
    let server = Server::start(dir.path(), &env);
    new_cases(&server, dir.path(), 4).await;
    let conn = db.connect(dir.path()).await;
    // Held, and still held a moment later: in flight, not about to finish.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let first = leased(&conn).await;
        if !first.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if leased(&conn).await.intersection(&first).next().is_some() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no step was ever held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9();
    let held = leased(&conn).await;
    assert!(!held.is_empty(), "killed after its steps had finished");

    let restarted = Instant::now();
    let server = Server::start(dir.path(), &env);
    // Generous next to the 1.5 s a step takes, far inside the 30 s lease.
    let bound = Duration::from_secs(10);
    loop {
        let mut open = Vec::new();
        for key in &held {
            if status_of(&conn, key).await == "pending" {
                open.push(key.clone());
            }
        }
        if open.is_empty() {
            // For the record (a figure, not an assertion): process start plus the 1.5 s step.
            eprintln!(
                "the held steps ran again {:?} after the restart began",
                restarted.elapsed()
            );
            break;
        }
        assert!(
            restarted.elapsed() < bound,
            "steps the killed process held did not run again within {bound:?} of the restart: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // They ran: each case's report went out (under its one key).
    let entries = journal(&journal_path);
    for key in held.iter().filter(|k| k.ends_with(":report")) {
        assert!(
            entries.iter().any(|(kind, k)| kind == "report" && k == key),
            "{key} not in the journal: {entries:?}"
        );
    }
    let out = server.terminate();
    assert!(
        out.contains("released the leases a previous incarnation of this node held"),
        "{out}"
    );
}

#[tokio::test]
async fn a_restart_takes_back_the_steps_its_killed_incarnation_held_on_sqlite() {
    a_restart_takes_back_the_steps_its_killed_incarnation_held(Db::new(false).await).await;
}

#[tokio::test]
#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL"
)]
async fn a_restart_takes_back_the_steps_its_killed_incarnation_held_on_postgres() {
    a_restart_takes_back_the_steps_its_killed_incarnation_held(Db::new(true).await).await;
}

/// A second live process with the same configured node id refuses to start; one with none
/// configured takes a free derived one.
async fn two_live_processes_never_share_a_node_id(db: Db) {
    let dir = tempfile::tempdir().expect("dir");
    let mut env = db.env();
    env.push(("ETK_ENGINE__NODE_ID", "twin".to_owned()));
    let first = Server::start(dir.path(), &env);
    let (ok, out) = run(dir.path(), &["serve", "--listen", "127.0.0.1:0"], &env);
    assert!(!ok, "the second process with node id twin started: {out}");
    assert!(
        out.contains("engine.node_id \"twin\" is held by another live process"),
        "{out}"
    );
    // Without a configured node id it takes one of its own and serves.
    let second = Server::start(dir.path(), &db.env());
    second.terminate();
    // Once the first is gone, the id is free again.
    first.kill9();
    let again = Server::start(dir.path(), &env);
    again.terminate();
}

#[tokio::test]
async fn two_live_processes_never_share_a_node_id_on_sqlite() {
    two_live_processes_never_share_a_node_id(Db::new(false).await).await;
}

#[tokio::test]
#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL"
)]
async fn two_live_processes_never_share_a_node_id_on_postgres() {
    two_live_processes_never_share_a_node_id(Db::new(true).await).await;
}

/// Steps of 5 s under a 3 s lease, with idle workers looking for work every 50 ms: the
/// heartbeat keeps each step's lease, so no other worker takes it over — every report goes
/// out once, in one attempt.
#[tokio::test]
async fn a_heartbeat_keeps_a_step_longer_than_its_lease() {
    let dir = tempfile::tempdir().expect("dir");
    let journal_path = dir.path().join("journal.log");
    let env = vec![
        ("ETK_TJANSTEID__CONFIRM_AFTER", "never".to_owned()),
        // Generous margins: the suite runs on 2 loaded cores, and a renewal that comes late
        // cuts the step off (safe, but not what this test is about).
        ("ETK_SIMULATED__LATENCY", "5s".to_owned()),
        ("ETK_SIMULATED__JOURNAL", journal_path.display().to_string()),
        ("ETK_ENGINE__LEASE", "3s".to_owned()),
        ("ETK_ENGINE__IDLE_POLL", "50ms".to_owned()),
        ("ETK_ENGINE__BATCH_SIZE", "1".to_owned()),
    ];
    let server = Server::start(dir.path(), &env);
    let ids = new_cases(&server, dir.path(), 3).await;
    let mut client =
        DeregistrationServiceClient::new(server.channel(dir.path(), "provider-a").await);
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let state = client
                .get_deregistration(pb::GetDeregistrationRequest { id: id.clone() })
                .await
                .expect("get")
                .into_inner()
                .deregistration
                .expect("case")
                .state;
            if state == pb::State::RevocationRequested as i32 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} was never reported: {state}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let out = server.terminate();
    let entries = journal(&journal_path);
    for id in &ids {
        let reports = entries
            .iter()
            .filter(|(kind, k)| kind == "report" && *k == format!("{id}:report"))
            .count();
        assert_eq!(reports, 1, "{id}: {entries:?}");
    }
    assert!(!out.contains("saga step cut off"), "{out}");
}
