//! Several gateways on one PostgreSQL database: news between replicas (a watcher on one follows
//! what another commits, through a dropped connection; idle workers woken by another's commit),
//! migrations that cannot race, `serve --no-migrate` (an old schema refused by name; a runtime
//! role with only the documented grants), a drain that hands steps over at once, and three
//! processes of which one is killed mid-flight.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::devcerts;
use pb::deregistration_service_client::DeregistrationServiceClient;
use pb::revocation_service_client::RevocationServiceClient;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, TransactionTrait};
use tonic::transport::Channel;

use crate::admin::http_get;
use crate::helpers::{Options, TestApp, TestDb, create, report, spawn_app_opts, unit_a};
use crate::launcher::{Server, run};

/// The statements docs/deployment.md runs for the runtime role of a `serve --no-migrate`
/// deployment, after `migrate` (`{db}`, `{role}` and `{owner}` filled in);
/// `the_documented_grants_are_the_tested_ones` keeps the two in step.
const RUNTIME_GRANTS: &[&str] = &[
    "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
    "GRANT CONNECT ON DATABASE {db} TO {role}",
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}",
    "GRANT DELETE ON cases, case_events, effects, idempotency_keys TO {role}",
    "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT, INSERT, UPDATE ON TABLES TO {role}",
];

#[test]
fn the_documented_grants_are_the_tested_ones() {
    let doc = include_str!("../../docs/deployment.md");
    let (_, after) = doc
        .split_once("-- in database etjanstekort, after `migrate` ran as etk_owner")
        .expect("the grants block");
    let (block, _) = after.split_once("```").expect("its end");
    let code: String = block
        .lines()
        .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join(" ");
    let documented: Vec<String> = code
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect();
    let tested: Vec<String> = RUNTIME_GRANTS
        .iter()
        .map(|g| {
            g.replace("{db}", "etjanstekort")
                .replace("{role}", "etk_runtime")
                .replace("{owner}", "etk_owner")
        })
        .collect();
    assert_eq!(documented, tested);
}

async fn replica(db: &TestDb, engine: bool, idle_poll: f64) -> TestApp {
    spawn_app_opts(Options {
        db: Some(db.url.clone()),
        engine,
        confirm_after: None,
        idle_poll,
        ..Options::default()
    })
    .await
}

async fn new_case(client: &mut DeregistrationServiceClient<Channel>, n: u32) -> String {
    client
        .create_deregistration(create(
            &format!("replica-{n}"),
            report(&unit_a(), "19121212-1212", &format!("77{n:05}")),
        ))
        .await
        .expect("create")
        .into_inner()
        .deregistration
        .expect("case")
        .id
}

async fn wait_state(client: &mut DeregistrationServiceClient<Channel>, id: &str, state: pb::State) {
    // Generous: with new connections locked out, a replica whose pool is busy retries its steps
    // with backoff until a pooled connection is free; on a loaded machine that took over 30 s.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = client
            .get_deregistration(pb::GetDeregistrationRequest { id: id.to_owned() })
            .await
            .expect("get")
            .into_inner()
            .deregistration
            .expect("case")
            .state;
        if got == state as i32 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} stuck in {got}, waiting for {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn confirm(app: &TestApp, id: &str) {
    RevocationServiceClient::new(app.channel("tjansteid").await)
        .confirm_revocation(pb::ConfirmRevocationRequest {
            deregistration_id: id.to_owned(),
            revocation_reference: "TJID-42".into(),
            revoke_time: None,
            ..Default::default()
        })
        .await
        .expect("confirm");
}

/// Reads the stream to its end (a case's watch ends with its terminal event): sequence numbers
/// and the last state.
async fn read_to_end(
    stream: &mut tonic::Streaming<pb::WatchDeregistrationResponse>,
    seqs: &mut Vec<i64>,
) -> i32 {
    let mut last = 0;
    let read = async {
        while let Some(m) = stream.message().await.expect("stream") {
            let e = m.event.expect("event");
            seqs.push(e.sequence);
            last = e.state;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .unwrap_or_else(|_| panic!("the watch did not follow the case to its end: {seqs:?}"));
    last
}

async fn admin_db(db: &TestDb) -> DatabaseConnection {
    Database::connect(&db.url).await.expect("connect")
}

/// Terminates the backends listening for notifications in the test database (the replicas'
/// relays) once there are `at_least` of them; returns how many were terminated.
async fn cut_listeners(conn: &DatabaseConnection, at_least: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = conn
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                 AND query LIKE 'LISTEN%'",
            ))
            .await
            .expect("terminate");
        if rows.len() >= at_least {
            return rows.len();
        }
        assert!(Instant::now() < deadline, "the relays never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How the news is disturbed while A commits the rest of the saga.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    None,
    /// Every listening connection cut just before.
    Listeners,
    /// Cut, and no new connection let in until A has finished: nothing A commits meanwhile is
    /// announced to anyone; B's watcher learns of it only by resyncing when it listens again.
    UntilFinished,
}

/// Replica A does the work, replica B (API only) serves the watcher: B's stream shows every
/// event A commits, live, once and in order, to the end.
async fn watch_across_replicas(cut: Cut) {
    let db = TestDb::postgres().await;
    let a = replica(&db, true, 0.05).await;
    let b = replica(&db, false, 0.05).await;
    let mut on_a = a.provider("provider-a").await;
    let id = new_case(&mut on_a, 1).await;
    wait_state(&mut on_a, &id, pb::State::RevocationRequested).await;
    let mut stream = b
        .provider("provider-a")
        .await
        .watch_deregistration(pb::WatchDeregistrationRequest { id: id.clone() })
        .await
        .expect("watch on B")
        .into_inner();
    let admin = admin_db(&db).await;
    // The database's own setting is changed from another database.
    let server = Database::connect(std::env::var("ETK_TEST_POSTGRES_URL").expect("set"))
        .await
        .expect("connect");
    let allow = |yes: bool| format!("ALTER DATABASE {} ALLOW_CONNECTIONS {yes}", db.name);
    if cut == Cut::UntilFinished {
        // The replicas keep the connections they have; no new one is let in.
        server
            .execute_unprepared(&allow(false))
            .await
            .expect("lock out");
    }
    if cut != Cut::None {
        assert!(cut_listeners(&admin, 2).await >= 2);
    }
    // The rest of the saga happens on A after B's watcher subscribed.
    confirm(&a, &id).await;
    if cut == Cut::UntilFinished {
        wait_state(&mut on_a, &id, pb::State::Completed).await;
        server
            .execute_unprepared(&allow(true))
            .await
            .expect("let in");
    }
    let mut seqs = Vec::new();
    let last = read_to_end(&mut stream, &mut seqs).await;
    assert_eq!(last, pb::State::Completed as i32, "{seqs:?}");
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "each event once, in order"
    );
    assert_eq!(seqs.len(), 7, "{seqs:?}");
}

#[tokio::test]
#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL"
)]
async fn a_watcher_on_one_replica_follows_a_case_another_replica_works() {
    watch_across_replicas(Cut::None).await;
}

#[tokio::test]
#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL"
)]
async fn the_news_survives_a_dropped_listening_connection() {
    watch_across_replicas(Cut::Listeners).await;
}

#[tokio::test]
#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL"
)]
async fn events_committed_while_a_replica_cannot_listen_reach_its_watcher_when_it_can() {
    watch_across_replicas(Cut::UntilFinished).await;
}

#[tokio::test]
#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL"
)]
async fn a_commit_on_one_replica_wakes_the_idle_workers_of_another() {
    let db = TestDb::postgres().await;
    // B's workers would sleep for a minute unless woken; A takes the report (API only).
    let b = spawn_app_opts(Options {
        db: Some(db.url.clone()),
        engine: true,
        confirm_after: Some(0.05),
        idle_poll: 60.0,
        ..Options::default()
    })
    .await;
    let a = replica(&db, false, 0.05).await;
    // Let B's workers find nothing and go to sleep.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut on_a = a.provider("provider-a").await;
    let id = new_case(&mut on_a, 2).await;
    wait_state(&mut on_a, &id, pb::State::Completed).await;
    drop(b);
}

/// A TCP proxy in front of PostgreSQL whose connections can be frozen one by one: bytes stop
/// flowing both ways and nothing is closed, as when a NAT or firewall entry is dropped — a
/// connection dead without a word.
struct FreezingProxy {
    addr: std::net::SocketAddr,
    /// Per connection: the proxy's own port towards PostgreSQL (`client_port` there), and its
    /// switch.
    conns: Switches,
    /// Set by `freeze_all`: connections made from then on are frozen from the start.
    all: Arc<AtomicBool>,
}

/// Per proxied connection: its port towards PostgreSQL and whether it is frozen.
type Switches = Arc<Mutex<Vec<(u16, Arc<AtomicBool>)>>>;

impl FreezingProxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let conns: Switches = Arc::default();
        let registry = conns.clone();
        let all = Arc::new(AtomicBool::new(false));
        let all_frozen = all.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let port = server.local_addr().expect("addr").port();
                let frozen = Arc::new(AtomicBool::new(all_frozen.load(Ordering::SeqCst)));
                registry
                    .lock()
                    .expect("registry")
                    .push((port, frozen.clone()));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, frozen.clone()));
                tokio::spawn(pipe(sr, cw, frozen));
            }
        });
        Self { addr, conns, all }
    }

    /// Freezes every connection through the proxy, those to come as well.
    fn freeze_all(&self) {
        self.all.store(true, Ordering::SeqCst);
        for (_, f) in self.conns.lock().expect("registry").iter() {
            f.store(true, Ordering::SeqCst);
        }
    }

    /// Freezes the connection whose port towards PostgreSQL is `port`; whether it was this
    /// proxy's.
    fn freeze(&self, port: u16) -> bool {
        let conns = self.conns.lock().expect("registry");
        conns
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, f)| f.store(true, Ordering::SeqCst))
            .is_some()
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Swallowed: both sockets stay open, nothing more goes through.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL"
)]
async fn a_listening_connection_dead_without_a_word_is_found_and_replaced() {
    let db = TestDb::postgres().await;
    // postgres://user@host:port/db: B reaches host:port through the proxy.
    let (_, rest) = db.url.split_once('@').expect("user@host");
    let (upstream, _) = rest.split_once('/').expect("host/db");
    let proxy = FreezingProxy::start(upstream.to_owned()).await;
    let proxied = db.url.replacen(upstream, &proxy.addr.to_string(), 1);
    let a = replica(&db, true, 0.05).await;
    let b = spawn_app_opts(Options {
        db: Some(proxied),
        engine: false,
        settings: vec![("database.listen_check", "300ms".into())],
        ..Options::default()
    })
    .await;
    let mut on_a = a.provider("provider-a").await;
    let id = new_case(&mut on_a, 3).await;
    wait_state(&mut on_a, &id, pb::State::RevocationRequested).await;
    let mut stream = b
        .provider("provider-a")
        .await
        .watch_deregistration(pb::WatchDeregistrationRequest { id: id.clone() })
        .await
        .expect("watch on B")
        .into_inner();
    // B's listening connection goes silent (A's does not pass the proxy). Its last statement
    // is its `LISTEN`, or the `SELECT 1` of its check once one ran (300 ms); no other
    // connection through the proxy runs that statement.
    let admin = admin_db(&db).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ports = admin
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT client_port FROM pg_stat_activity \
                 WHERE datname = current_database() \
                 AND (query LIKE 'LISTEN%' OR query = 'SELECT 1')",
            ))
            .await
            .expect("listeners");
        let frozen = ports
            .iter()
            .filter_map(|r| r.try_get::<i32>("", "client_port").ok())
            .filter(|p| proxy.freeze(u16::try_from(*p).expect("port")))
            .count();
        if frozen > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "B never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The rest of the saga happens on A; B's watcher sees all of it once B's check finds the
    // dead connection, listens anew and resyncs.
    confirm(&a, &id).await;
    let mut seqs = Vec::new();
    let last = read_to_end(&mut stream, &mut seqs).await;
    assert_eq!(last, pb::State::Completed as i32, "{seqs:?}");
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "each event once, in order"
    );
}

/// A's database goes silent while A runs a step of 4 s under a lease of 2 s: A cuts the step off
/// before its lease can run out (its renewals and its node lock's checks go unanswered), so B,
/// which takes the step over once the lease ran out, is the only one that ever runs it.
#[tokio::test]
#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL"
)]
async fn a_replica_cut_off_from_the_database_stops_its_step_before_another_takes_it_over() {
    use etjanstekort_gateway::connectors::Connectors;
    use etjanstekort_gateway::connectors::simulated::{
        Faults, LogNotifier, SimulatedKiv, SimulatedTjansteId,
    };
    let db = TestDb::postgres().await;
    let (_, rest) = db.url.split_once('@').expect("user@host");
    let (upstream, _) = rest.split_once('/').expect("host/db");
    let proxy = FreezingProxy::start(upstream.to_owned()).await;
    let proxied = db.url.replacen(upstream, &proxy.addr.to_string(), 1);
    let slow = Faults {
        latency: Duration::from_secs(4),
        failure_rate: 0.0,
    };
    let a_tjansteid = Arc::new(SimulatedTjansteId::new(None, slow, None));
    let lease = || vec![("engine.lease", "2s".into())];
    let a = spawn_app_opts(Options {
        db: Some(proxied),
        engine: true,
        idle_poll: 0.05,
        settings: lease(),
        connectors: Some(Connectors {
            tjansteid: a_tjansteid.clone(),
            kiv: Arc::new(SimulatedKiv::new(true, slow, None)),
            notifier: Arc::new(LogNotifier::new(slow, None)),
            gateway_removes_kiv: true,
            revocation: None,
        }),
        ..Options::default()
    })
    .await;
    let mut on_a = a.provider("provider-a").await;
    let id = new_case(&mut on_a, 6).await;
    let conn = admin_db(&db).await;
    let held = format!(
        "SELECT count(*) FROM effects WHERE key = '{id}:report' AND status = 'pending' \
         AND lease_owner IS NOT NULL"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&conn, &held).await == 0 {
        assert!(Instant::now() < deadline, "A never claimed the report");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let claimed = Instant::now();
    proxy.freeze_all();
    let b = spawn_app_opts(Options {
        db: Some(db.url.clone()),
        engine: true,
        idle_poll: 0.05,
        settings: lease(),
        ..Options::default()
    })
    .await;
    let mut on_b = b.provider("provider-a").await;
    wait_state(&mut on_b, &id, pb::State::RevocationRequested).await;
    // A's step would have sent the report 4 s after it began: look until well after that.
    let report = format!("{id}:report");
    while claimed.elapsed() < Duration::from_secs(7) {
        assert_eq!(
            a_tjansteid.deliveries().get(&report),
            None,
            "A ran the step beside B"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        a_tjansteid.deliveries().get(&report),
        None,
        "A ran the step beside B"
    );
    assert_eq!(b.tjansteid.deliveries().get(&report), Some(&1));
}

fn env_db(url: &str) -> Vec<(&'static str, String)> {
    vec![("ETK_DATABASE__URL", url.to_owned())]
}

#[tokio::test]
#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL"
)]
async fn two_migrate_runs_at_once_both_succeed_and_the_second_finds_nothing_to_do() {
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().expect("dir");
    devcerts::ensure(dir.path()).expect("dev environment");
    // The test holds the migration lock, so both runs are certain to meet at it.
    let admin = admin_db(&db).await;
    let holder = admin.begin().await.expect("begin");
    holder
        .execute_unprepared(&format!(
            "SELECT pg_advisory_xact_lock({})",
            etjanstekort_gateway::storage::MIGRATION_LOCK
        ))
        .await
        .expect("take the migration lock");
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (dir, env) = (dir.path().to_owned(), env_db(&db.url));
            std::thread::spawn(move || run(&dir, &["migrate"], &env))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(
        &admin,
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()",
    )
    .await
        < 2
    {
        assert!(Instant::now() < deadline, "the two runs never both waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.commit().await.expect("release the migration lock");
    let outs: Vec<(bool, String)> = runs.into_iter().map(|r| r.join().expect("join")).collect();
    for (ok, out) in &outs {
        assert!(ok, "a concurrent migrate failed: {out}");
    }
    let applied = outs
        .iter()
        .filter(|(_, o)| o.contains("migrations applied"))
        .count();
    let idle = outs
        .iter()
        .filter(|(_, o)| o.contains("no migration to apply"))
        .count();
    assert_eq!((applied, idle), (1, 1), "{outs:?}");
}

/// The dev database with only the first `n` migrations applied.
async fn partly_migrated(dir: &Path, n: u32) {
    use migration::MigratorTrait;
    let (paths, _) = devcerts::ensure(dir).expect("dev environment");
    let url = format!("sqlite://{}?mode=rwc", paths.database.display());
    let conn = Database::connect(&url).await.expect("sqlite");
    migration::Migrator::up(&conn, Some(n))
        .await
        .expect("migrate");
    conn.close().await.expect("close");
}

#[tokio::test]
async fn serve_without_migrating_refuses_an_older_schema_naming_what_is_missing() {
    let dir = tempfile::tempdir().expect("dir");
    let names = {
        use migration::MigratorTrait;
        migration::Migrator::migrations()
            .iter()
            .map(|m| m.name().to_owned())
            .collect::<Vec<_>>()
    };
    let n = u32::try_from(names.len() - 1).expect("few");
    partly_migrated(dir.path(), n).await;
    let serve = ["serve", "--listen", "127.0.0.1:0"];
    // The flag, and the setting.
    for (args, env) in [
        ([&serve[..], &["--no-migrate"]].concat(), vec![]),
        (
            serve.to_vec(),
            vec![("ETK_DATABASE__MIGRATE", "false".to_owned())],
        ),
    ] {
        let (ok, out) = run(dir.path(), &args, &env);
        assert!(!ok, "started on an old schema: {out}");
        let last = names.last().expect("a migration");
        assert!(out.contains(last.as_str()), "{out}");
        assert!(
            !out.contains(names[names.len() - 2].as_str()),
            "names an applied one: {out}"
        );
    }
    // `migrate` applies the rest; then it starts.
    let (ok, out) = run(dir.path(), &["migrate"], &[]);
    assert!(ok && out.contains("migrations applied"), "{out}");
    let server = Server::start_with(dir.path(), &["--no-migrate"], &[]);
    server.terminate();
}

#[tokio::test]
async fn an_older_build_serves_a_schema_a_newer_one_migrated_but_does_not_migrate_it() {
    let dir = tempfile::tempdir().expect("dir");
    let all = {
        use migration::MigratorTrait;
        u32::try_from(migration::Migrator::migrations().len()).expect("few")
    };
    partly_migrated(dir.path(), all).await;
    // A newer version's migration, as its `migrate` would have recorded it.
    let (paths, _) = devcerts::ensure(dir.path()).expect("dev environment");
    let conn = Database::connect(format!("sqlite://{}", paths.database.display()))
        .await
        .expect("sqlite");
    conn.execute_unprepared(
        "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m9999_from_the_future', 0)",
    )
    .await
    .expect("record a future migration");
    conn.close().await.expect("close");

    // Mid-rollout (or after a rollback) this build keeps serving: with and without migrating.
    for args in [&["--no-migrate"][..], &[]] {
        let server = Server::start_with(dir.path(), args, &[]);
        let out = server.terminate();
        assert!(
            out.contains("does not know") && out.contains("m9999_from_the_future"),
            "no warning naming the unknown migration: {out}"
        );
    }
    // Its `migrate` refuses: the binary is older than the schema.
    let (ok, out) = run(dir.path(), &["migrate"], &[]);
    assert!(!ok, "an older build migrated a newer schema: {out}");
    assert!(
        out.contains("newer than this build") && out.contains("m9999_from_the_future"),
        "{out}"
    );
}

/// Drops the role everywhere it has privileges; best effort (a test's leftovers only).
async fn drop_role(db: &TestDb, role: &str) {
    if let Ok(conn) = Database::connect(&db.url).await {
        let _ = conn
            .execute_unprepared(&format!("DROP OWNED BY {role}"))
            .await;
        let _ = conn.execute_unprepared(&format!("DROP ROLE {role}")).await;
    }
}

#[tokio::test]
#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL"
)]
async fn a_runtime_role_with_only_the_documented_grants_serves_without_migrating() {
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().expect("dir");
    devcerts::ensure(dir.path()).expect("dev environment");
    let (ok, out) = run(dir.path(), &["migrate"], &env_db(&db.url));
    assert!(ok, "{out}");
    let role = format!(
        "etk_rt_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let admin = admin_db(&db).await;
    admin
        .execute_unprepared(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .expect("create role");
    // The tables' owner: the role `migrate` ran as.
    let (user_part, at) = db.url.split_once('@').expect("user@host in the test URL");
    let owner = user_part.rsplit('/').next().expect("user");
    for g in RUNTIME_GRANTS {
        admin
            .execute_unprepared(
                &g.replace("{db}", &db.name)
                    .replace("{role}", &role)
                    .replace("{owner}", owner),
            )
            .await
            .expect("grant");
    }
    let url = format!("postgres://{role}@{at}");
    // Migrating needs DDL rights, which the role lacks: the default mode is refused...
    let (ok, out) = run(
        dir.path(),
        &["serve", "--listen", "127.0.0.1:0"],
        &env_db(&url),
    );
    assert!(!ok, "the runtime role could migrate: {out}");
    assert!(
        out.contains("permission denied"),
        "refused for another reason than rights: {out}"
    );
    // ...and without migrating it runs a case to its end.
    let mut env = env_db(&url);
    env.push(("ETK_TJANSTEID__CONFIRM_AFTER", "100ms".to_owned()));
    env.push(("ETK_ENGINE__IDLE_POLL", "50ms".to_owned()));
    env.push(("ETK_ENGINE__TIMERS__POLL_INTERVAL", "50ms".to_owned()));
    let server = Server::start_with(dir.path(), &["--no-migrate"], &env);
    let mut client =
        DeregistrationServiceClient::new(server.channel(dir.path(), "provider-a").await);
    let id = new_case(&mut client, 3).await;
    wait_state(&mut client, &id, pb::State::Completed).await;
    let out = server.terminate();
    assert!(!out.contains("permission denied"), "{out}");
    // Retention runs under the same role: shredding, purging the record (its audit events
    // under a marker) and the finished outbox rows all need DELETE where the docs grant it.
    let mut env = env_db(&url);
    env.extend(
        [
            "ETK_RETENTION__PERSONAL_DATA",
            "ETK_RETENTION__RECORD",
            "ETK_RETENTION__OUTBOX",
        ]
        .map(|k| (k, "0s".to_owned())),
    );
    let (ok, out) = run(dir.path(), &["retention", "purge"], &env);
    assert!(ok, "{out}");
    assert!(
        out.contains("shredded 1 case(s), purged 1 record(s)"),
        "{out}"
    );
    drop_role(&db, &role).await;
}

fn replica_env(
    db: &TestDb,
    journal: &Path,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("ETK_DATABASE__URL", db.url.clone()),
        ("ETK_SIMULATED__JOURNAL", journal.display().to_string()),
        ("ETK_ENGINE__IDLE_POLL", "100ms".to_owned()),
        ("ETK_ENGINE__TIMERS__POLL_INTERVAL", "100ms".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

/// The lease owner id of `server`'s saga engine, as it logged it at start (the JSON log's
/// `owner`: `<node id>:<32 hex digits>`).
fn lease_owner_of(server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = server.output();
        let found = out
            .lines()
            .filter(|l| l.contains("saga engine started"))
            .find_map(|l| {
                let (_, rest) = l.split_once("\"owner\":\"")?;
                let (owner, _) = rest.split_once('"')?;
                let (_, incarnation) = owner.split_once(':')?;
                (incarnation.len() == 32 && incarnation.chars().all(|c| c.is_ascii_hexdigit()))
                    .then(|| owner.to_owned())
            });
        if let Some(owner) = found {
            return owner;
        }
        assert!(Instant::now() < deadline, "no lease owner logged: {out}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The keys of the pending effects whose lease `owner` holds.
async fn leased_by(conn: &DatabaseConnection, owner: &str) -> BTreeSet<String> {
    conn.query_all_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "SELECT key FROM effects WHERE status = 'pending' AND lease_owner LIKE $1",
        [format!("{owner}-%").into()],
    ))
    .await
    .expect("leases")
    .iter()
    .map(|r| r.try_get::<String>("", "key").expect("key"))
    .collect()
}

/// SIGKILLs `server` while it holds leases (a step still held after 50 ms: one in flight,
/// not one about to finish); returns the effects it held when it died (read after its death:
/// no step of it can have finished them since).
async fn kill_while_holding_leases(conn: &DatabaseConnection, server: Server) -> BTreeSet<String> {
    let owner = lease_owner_of(&server);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let first = leased_by(conn, &owner).await;
        if !first.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if leased_by(conn, &owner)
                .await
                .intersection(&first)
                .next()
                .is_some()
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the replica never held a lease");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    let held = leased_by(conn, &owner).await;
    assert!(!held.is_empty(), "killed after its steps had finished");
    held
}

/// Asserts that the effects `held` (a killed replica's) were all finished by the others.
async fn finished_by_others(conn: &DatabaseConnection, held: &BTreeSet<String>) {
    for key in held {
        let row = conn
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT status FROM effects WHERE key = $1",
                [key.clone().into()],
            ))
            .await
            .expect("effect")
            .expect("a row");
        let status: String = row.try_get("", "status").expect("status");
        assert_ne!(status, "pending", "{key} was left behind");
    }
}

async fn count(conn: &DatabaseConnection, sql: &str) -> i64 {
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            sql,
        ))
        .await
        .expect("query")
        .expect("a row");
    row.try_get_by_index::<i64>(0).expect("a count")
}

#[tokio::test]
async fn a_draining_replica_ends_its_watches_at_once_and_still_serves_during_the_drain_delay() {
    // A drain delay far longer than the test: whatever the test sees happens within it.
    let mut app = spawn_app_opts(Options {
        engine: false,
        settings: vec![("server.drain_delay", "10m".into())],
        ..Options::default()
    })
    .await;
    let mut client = app.provider("provider-a").await;
    let id = new_case(&mut client, 5).await;
    let mut stream = client
        .watch_deregistration(pb::WatchDeregistrationRequest { id: id.clone() })
        .await
        .expect("watch")
        .into_inner();
    let first = stream.message().await.expect("the first event");
    assert!(first.is_some(), "the watch starts with the case's events");

    app.shutdown();
    // The watch ends now, telling the watcher to go elsewhere; it does not wait for the drain.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the watch ended without saying why"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the watch still runs during the drain");
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert_eq!(crate::helpers::reason(&ended), "SHUTTING_DOWN");
    // Not ready, yet new connections are still served during the drain delay.
    let (code, _, _) = http_get(app.admin, "/readyz").await;
    assert_eq!(code, 503);
    let mut fresh = app.provider("provider-a").await;
    fresh
        .get_deregistration(pb::GetDeregistrationRequest { id: id.clone() })
        .await
        .expect("served during the drain delay");
    // A new watch ends at once too.
    let refused = match fresh
        .watch_deregistration(pb::WatchDeregistrationRequest { id })
        .await
    {
        Ok(r) => r
            .into_inner()
            .message()
            .await
            .expect_err("a new watch is ended"),
        Err(status) => status,
    };
    assert_eq!(crate::helpers::reason(&refused), "SHUTTING_DOWN");
}

#[tokio::test]
#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL"
)]
async fn sigterm_drains_not_ready_first_and_hands_held_steps_over_at_once() {
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().expect("dir");
    let journal = dir.path().join("journal.log");
    // A's steps take far longer than its grace; their lease is far longer still.
    let a = Server::start(
        dir.path(),
        &replica_env(
            &db,
            &journal,
            &[
                ("ETK_SIMULATED__LATENCY", "30s"),
                ("ETK_ENGINE__LEASE", "120s"),
                ("ETK_SERVER__SHUTDOWN_GRACE", "2s"),
                ("ETK_TJANSTEID__CONFIRM_AFTER", "100ms"),
            ],
        ),
    );
    let admin = a.admin_addr();
    let mut client = DeregistrationServiceClient::new(a.channel(dir.path(), "provider-a").await);
    let id = new_case(&mut client, 4).await;
    let conn = admin_db(&db).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(
        &conn,
        "SELECT count(*) FROM effects WHERE lease_owner IS NOT NULL",
    )
    .await
        == 0
    {
        assert!(Instant::now() < deadline, "A never claimed the first steps");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // B, fast; A's leases block it, and its idle workers look again only after a minute
    // unless woken (A's release wakes them).
    let b = Server::start(
        dir.path(),
        &replica_env(
            &db,
            &journal,
            &[
                ("ETK_TJANSTEID__CONFIRM_AFTER", "100ms"),
                ("ETK_ENGINE__IDLE_POLL", "60s"),
            ],
        ),
    );
    let sent = Instant::now();
    let mut a = a;
    a.sigterm();
    // Not ready during the drain.
    let mut saw_503 = false;
    while !a.exited() && sent.elapsed() < Duration::from_secs(10) {
        let answer = tokio::time::timeout(Duration::from_secs(1), http_get(admin, "/readyz")).await;
        if matches!(answer, Ok((503, _, _))) {
            saw_503 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_503, "/readyz never said 503 during the drain");
    let out = a.terminate();
    // B takes the steps over long before A's leases (or B's idle poll) would have run out.
    let mut on_b = DeregistrationServiceClient::new(b.channel(dir.path(), "provider-a").await);
    wait_state(&mut on_b, &id, pb::State::Completed).await;
    assert!(
        sent.elapsed() < Duration::from_secs(60),
        "waited for the lease"
    );
    assert!(
        out.contains("released the leases of unfinished steps"),
        "{out}"
    );
    b.terminate();
}

#[tokio::test]
#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL"
)]
async fn three_replicas_one_killed_mid_flight_every_case_completes_once() {
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().expect("dir");
    devcerts::ensure(dir.path()).expect("dev environment");
    let (ok, out) = run(dir.path(), &["migrate"], &env_db(&db.url));
    assert!(ok, "{out}");
    let journal = dir.path().join("journal.log");
    let env = replica_env(
        &db,
        &journal,
        &[
            ("ETK_TJANSTEID__CONFIRM_AFTER", "300ms"),
            ("ETK_SIMULATED__LATENCY", "30ms"),
            ("ETK_ENGINE__LEASE", "2s"),
            ("ETK_ENGINE__BATCH_SIZE", "4"),
        ],
    );
    // The first replica (to be killed) is slow, so its steps are in flight when it dies.
    let mut slow = env.clone();
    slow.push(("ETK_SIMULATED__LATENCY", "400ms".to_owned()));
    let servers: Vec<Server> = std::iter::once(Server::start(dir.path(), &slow))
        .chain((1..3).map(|_| Server::start(dir.path(), &env)))
        .collect();
    const CASES: u32 = 45;
    let mut ids = BTreeSet::new();
    for i in 0..CASES {
        // Reports spread over the three replicas.
        let s = &servers[(i % 3) as usize];
        let mut c = DeregistrationServiceClient::new(s.channel(dir.path(), "provider-a").await);
        ids.insert(new_case(&mut c, 100 + i).await);
    }
    // While it holds steps, the first replica dies without a word.
    let conn = admin_db(&db).await;
    let mut servers = servers.into_iter();
    let held = kill_while_holding_leases(&conn, servers.next().expect("first")).await;
    let rest: Vec<Server> = servers.collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let open = count(
            &conn,
            "SELECT count(*) FROM cases WHERE state <> 'completed'",
        )
        .await;
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} cases did not complete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count(&conn, "SELECT count(*) FROM cases").await,
        i64::from(CASES)
    );
    finished_by_others(&conn, &held).await;
    // Every side effect under its one key, whichever replica ran it (and however often).
    let entries: Vec<(String, String)> = std::fs::read_to_string(&journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    for id in &ids {
        let keys = |kind: &str| -> BTreeSet<String> {
            entries
                .iter()
                .filter(|(k, v)| k == kind && v.starts_with(id.as_str()))
                .map(|(_, v)| v.clone())
                .collect()
        };
        assert_eq!(keys("report"), BTreeSet::from([format!("{id}:report")]));
        assert_eq!(
            keys("remove_kiv"),
            BTreeSet::from([format!("{id}:remove_kiv")])
        );
        assert_eq!(
            keys("notify"),
            BTreeSet::from([format!("{id}:notify_head"), format!("{id}:notify_holder")])
        );
    }
    for s in rest {
        s.terminate();
    }
}

/// A valid personnummer per `i` (distinct birth dates in 1980, so distinct KIV persons).
fn personnummer(i: u32) -> String {
    let (month, day) = (1 + i / 28, 1 + i % 28);
    let body = format!("80{month:02}{day:02}123");
    let sum: u32 = body
        .chars()
        .enumerate()
        .map(|(n, c)| {
            let d = c.to_digit(10).expect("digit") * if n % 2 == 0 { 2 } else { 1 };
            d / 10 + d % 10
        })
        .sum();
    let check = (10 - sum % 10) % 10;
    format!("19{}-{}{check}", &body[..6], &body[6..])
}

#[tokio::test]
#[cfg_attr(
    not(all(etk_postgres, etk_real_servers)),
    ignore = "needs PostgreSQL, slapd and aiosmtpd: set ETK_TEST_POSTGRES_URL and ETK_REQUIRE_REAL_SERVERS=1"
)]
async fn three_replicas_on_real_registries_one_killed_every_effect_under_one_key() {
    use crate::real::{KivWorld, ldap_kiv, unit};
    use crate::servers::{LDAP_ADMIN, LDAP_PASSWORD, Slapd, SmtpServer};
    use etjanstekort_gateway::connectors::Kiv;
    use etjanstekort_gateway::connectors::ldap::Removal;
    use etjanstekort_gateway::domain::Personnummer;

    let slapd = Slapd::start();
    let mail = SmtpServer::start();
    let smtp_ca = mail.dir.path().join("ca.pem");
    std::fs::write(&smtp_ca, &mail.ca_pem).expect("write the CA");
    const CASES: u32 = 24;
    let today = etjanstekort_gateway::clock::now().utc_date();
    let people: Vec<Personnummer> = (0..CASES)
        .map(|i| Personnummer::parse(&personnummer(i), today).expect("valid"))
        .collect();
    for p in &people {
        slapd.employ(p, &unit()).await;
    }
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().expect("dir");
    devcerts::ensure(dir.path()).expect("dev environment");
    let (ok, out) = run(dir.path(), &["migrate"], &env_db(&db.url));
    assert!(ok, "{out}");
    let s = |v: &str| v.to_owned();
    let env: Vec<(&str, String)> = vec![
        ("ETK_DATABASE__URL", db.url.clone()),
        ("ETK_ENGINE__IDLE_POLL", s("100ms")),
        ("ETK_ENGINE__LEASE", s("3s")),
        ("ETK_ENGINE__BATCH_SIZE", s("4")),
        ("ETK_KIV__KIND", s("ldap")),
        ("ETK_KIV__URL", slapd.url()),
        ("ETK_KIV__BASE_DN", s("ou=Personal,o=VGR")),
        ("ETK_KIV__OBJECT_CLASS", s("vgrAnstallning")),
        ("ETK_KIV__BIND__DN", s(LDAP_ADMIN)),
        ("ETK_KIV__BIND__PASSWORD", s(LDAP_PASSWORD)),
        (
            "ETK_KIV__CA_FILE",
            slapd.dir.path().join("ca.pem").display().to_string(),
        ),
        ("ETK_KIV__TIMEOUT", s("2s")),
        ("ETK_TJANSTEID__KIND", s("smtp")),
        ("ETK_TJANSTEID__SERVICE_DESK", s("tjansteid@desk.test")),
        ("ETK_NOTIFIER__KIND", s("smtp")),
        ("ETK_SMTP__HOST", s("127.0.0.1")),
        ("ETK_SMTP__PORT", mail.port.to_string()),
        (
            "ETK_SMTP__FROM",
            s("eTjänstekort-gateway <noreply@gateway.test>"),
        ),
        ("ETK_SMTP__CA_FILE", smtp_ca.display().to_string()),
        ("ETK_SMTP__HELLO_NAME", s("gateway.test")),
        ("ETK_SMTP__TIMEOUT", s("2s")),
    ];
    let servers: Vec<Server> = (0..3).map(|_| Server::start(dir.path(), &env)).collect();
    let mut ids = Vec::new();
    for (i, p) in people.iter().enumerate() {
        let s = &servers[i % 3];
        let mut c = DeregistrationServiceClient::new(s.channel(dir.path(), "provider-a").await);
        let id = c
            .create_deregistration(create(
                &format!("real-{i}"),
                report(&unit_a(), &p.expose_digits(), &format!("66{i:05}")),
            ))
            .await
            .expect("create")
            .into_inner()
            .deregistration
            .expect("case")
            .id;
        ids.push(id);
    }
    // The desk confirms each report as it arrives (through the second replica); the first
    // replica dies once the work after the confirmations is under way.
    let conn = admin_db(&db).await;
    let desk = servers[1].channel(dir.path(), "tjansteid").await;
    let mut confirmed = BTreeSet::new();
    let mut killed = None;
    let mut servers: Vec<Option<Server>> = servers.into_iter().map(Some).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut on_b = DeregistrationServiceClient::new(
            servers[1]
                .as_ref()
                .expect("up")
                .channel(dir.path(), "provider-a")
                .await,
        );
        let mut open = 0;
        for id in &ids {
            let state = on_b
                .get_deregistration(pb::GetDeregistrationRequest { id: id.clone() })
                .await
                .expect("get")
                .into_inner()
                .deregistration
                .expect("case")
                .state;
            if state == pb::State::RevocationRequested as i32 && confirmed.insert(id.clone()) {
                RevocationServiceClient::new(desk.clone())
                    .confirm_revocation(pb::ConfirmRevocationRequest {
                        deregistration_id: id.clone(),
                        revocation_reference: "TJID-7".into(),
                        revoke_time: None,
                        ..Default::default()
                    })
                    .await
                    .expect("confirm");
            }
            if state != pb::State::Completed as i32 {
                open += 1;
            }
        }
        if open == 0 {
            break;
        }
        let completed = count(
            &conn,
            "SELECT count(*) FROM cases WHERE state = 'completed'",
        )
        .await;
        if killed.is_none() && completed > 0 {
            // The mail server holds its replies a while, so the first replica's mail steps
            // are in flight when it dies.
            mail.stall(1.5);
            let held = kill_while_holding_leases(&conn, servers[0].take().expect("up")).await;
            mail.stall(0.0);
            killed = Some((completed, held));
        }
        assert!(Instant::now() < deadline, "{open} cases did not complete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (killed, held) = killed.expect("a replica was killed");
    assert!(
        killed < i64::from(CASES),
        "the kill came too late to mean anything"
    );
    finished_by_others(&conn, &held).await;

    // Every message under its one key: the report and the two notices per case, whichever
    // replica sent them (a re-run after the kill re-sends under the same Message-ID).
    let message_ids: Vec<String> = mail
        .messages()
        .iter()
        .filter_map(|m| {
            m.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("message-id")
                    .then(|| value.trim().to_owned())
            })
        })
        .collect();
    for id in &ids {
        let keys: BTreeSet<&str> = message_ids
            .iter()
            .filter(|m| m.starts_with(&format!("<{id}.")))
            .map(String::as_str)
            .collect();
        let expected: BTreeSet<String> = ["report", "notify_head", "notify_holder"]
            .iter()
            .map(|step| format!("<{id}.{step}@gateway.test>"))
            .collect();
        assert_eq!(
            keys,
            expected.iter().map(String::as_str).collect::<BTreeSet<_>>()
        );
    }
    // And every employment is gone from the directory.
    let kiv = ldap_kiv(&slapd, Removal::Delete);
    for p in &people {
        assert!(kiv.lookup(p, &unit()).await.expect("lookup").is_none());
    }
    for s in servers.into_iter().flatten() {
        s.terminate();
    }
}
