//! The keyed audit chain against someone who can write the database: rewrites through every
//! path the database leaves open are named by the verifier (store, offline command, RPC, the
//! gateway's periodic check); the paths it can close (REPLACE, TRUNCATE) are refused. On SQLite
//! always and on PostgreSQL when `ETK_TEST_POSTGRES_URL` is set.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::audit_record::AuditRecord;
use etjanstekort_gateway::domain::saga::Event;
use etjanstekort_gateway::domain::{
    CardHolder, CardNumber, CaseId, Email, HsaId, KivRemovalRoute, NewDeregistration, PersonName,
    Personnummer, Reason, Reporter, Timestamp,
};
use etjanstekort_gateway::privacy::Vault;
use etjanstekort_gateway::storage::{
    CaseStore, ChainKeys, ChainProblem, CreateCase, EventMeta, SeaStore,
};
use etjanstekort_gateway::verifier::Walk;
use pb::deregistration_service_client::DeregistrationServiceClient;
use pb::operations_service_client::OperationsServiceClient;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use tonic::Code;

use crate::helpers::{
    Options, TestApp, TestDb, reason, report, spawn_app_opts, test_vault_key, unit_a,
};

fn vault() -> Arc<Vault> {
    Arc::new(Vault::from_base64(&test_vault_key()).expect("key"))
}

async fn open(db: &TestDb) -> SeaStore {
    let store = SeaStore::connect(&db.url, 4, Duration::from_secs(5), vault())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

fn hsa(s: &str) -> HsaId {
    HsaId::parse(s).expect("hsa")
}

fn meta(actor: &str) -> EventMeta {
    EventMeta {
        actor: actor.into(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        at: etjanstekort_gateway::clock::now(),
        detail: "a detail".into(),
    }
}

fn new_case(card: &str) -> CreateCase {
    let today = etjanstekort_gateway::clock::now().utc_date();
    CreateCase {
        id: etjanstekort_gateway::clock::new_case_id(),
        principal: hsa("SE1655999991-E1"),
        care_provider: hsa("SE1655999991-E1"),
        request_id: None,
        fingerprint: card.into(),
        report: NewDeregistration {
            care_unit: hsa("SE1655999991-S1"),
            card_holder: CardHolder {
                personnummer: Personnummer::parse("19121212-1212", today).expect("pnr"),
                full_name: PersonName::parse("Tolvan Tolvansson").expect("name"),
                email: None,
            },
            card_number: CardNumber::parse(card).expect("card"),
            reason: Reason::AgreementEnded,
            card_received_at: Timestamp(1_700_000_000_000_000),
            reported_by: Reporter {
                hsa_id: hsa("SE1655999991-P1"),
                full_name: PersonName::parse("Vera Verksamhetschef").expect("name"),
                email: Email::parse("vera@example.se").expect("email"),
            },
            route: KivRemovalRoute::HealthCareOffice,
        },
        meta: meta("SE1655999991-E1"),
        trace_parent: None,
    }
}

/// A case with two events (accepted, cancelled).
async fn case_with_two_events(store: &SeaStore, card: &str) -> CaseId {
    let case = store
        .create(new_case(card))
        .await
        .expect("create")
        .into_case();
    store
        .apply(&case.id, None, &Event::Cancel, meta("SE1655999991-E1"))
        .await
        .expect("cancel");
    case.id
}

/// Every broken case and its first broken link, by walking all cases.
async fn broken_cases(store: Arc<dyn CaseStore>) -> BTreeMap<String, (i64, ChainProblem)> {
    let mut walk = Walk::all(store).await.expect("walk");
    let mut out = BTreeMap::new();
    while let Some(next) = walk.next().await {
        let (id, report) = next.expect("verify");
        if let Some(b) = report.broken {
            out.insert(id.to_string(), (b.sequence, b.problem));
        }
    }
    out
}

async fn exec(conn: &DatabaseConnection, sql: &str) -> Result<(), sea_orm::DbErr> {
    conn.execute_unprepared(sql).await.map(|_| ())
}

/// An event row as stored, for re-hashing.
struct Row {
    seq: i64,
    kind: String,
    state: String,
    actor: String,
    at: i64,
    trace_id: String,
    detail: String,
    hash: String,
}

async fn rows(conn: &DatabaseConnection, case: &CaseId) -> Vec<Row> {
    let sql = format!(
        "SELECT seq, kind, state, actor, occurred_at, trace_id, detail, hash FROM case_events \
         WHERE case_id = '{case}' ORDER BY seq"
    );
    conn.query_all_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .expect("rows")
        .iter()
        .map(|r| Row {
            seq: r.try_get("", "seq").expect("seq"),
            kind: r.try_get("", "kind").expect("kind"),
            state: r.try_get("", "state").expect("state"),
            actor: r.try_get("", "actor").expect("actor"),
            at: r.try_get("", "occurred_at").expect("at"),
            trace_id: r.try_get("", "trace_id").expect("trace"),
            detail: r.try_get("", "detail").expect("detail"),
            hash: r.try_get("", "hash").expect("hash"),
        })
        .collect()
}

/// What someone without the key can compute: the chain re-hashed with plain SHA-256 over the
/// same length-prefixed fields (the pre-m0005 formula, which is public).
fn unkeyed_hash(prev: &str, case: &CaseId, r: &Row) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let (case, seq, at) = (case.to_string(), r.seq.to_string(), r.at.to_string());
    for part in [
        prev,
        case.as_str(),
        seq.as_str(),
        r.kind.as_str(),
        r.state.as_str(),
        r.actor.as_str(),
        at.as_str(),
        r.trace_id.as_str(),
        r.detail.as_str(),
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    hex::encode(ctx.finish().as_ref())
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Turns the database's own defences off, as an attacker with owner rights can.
async fn drop_defences(conn: &DatabaseConnection) {
    if conn.get_database_backend() == DbBackend::Postgres {
        exec(conn, "ALTER TABLE case_events DISABLE TRIGGER USER")
            .await
            .expect("disable triggers");
    } else {
        for t in [
            "case_events_no_update",
            "case_events_no_delete",
            "case_events_no_replace",
        ] {
            exec(conn, &format!("DROP TRIGGER {t}"))
                .await
                .expect("drop trigger");
        }
    }
}

/// Re-hashes `case`'s whole trail with plain SHA-256 (as m0005 found pre-keyed trails, or as
/// someone without the key can) and leaves its head unsealed.
async fn make_legacy(conn: &DatabaseConnection, case: &CaseId) {
    let mut prev = GENESIS.to_owned();
    for r in rows(conn, case).await {
        let h = unkeyed_hash(&prev, case, &r);
        exec(
            conn,
            &format!(
                "UPDATE case_events SET prev_hash = '{prev}', hash = '{h}', key_id = NULL \
                 WHERE case_id = '{case}' AND seq = {}",
                r.seq
            ),
        )
        .await
        .expect("legacy");
        prev = h;
    }
    exec(
        conn,
        &format!("UPDATE cases SET last_hash = '{prev}', head_seal = NULL WHERE id = '{case}'"),
    )
    .await
    .expect("legacy head");
}

async fn tampering_is_named(db: TestDb) {
    let store = open(&db).await;
    let [updated, replaced, rehashed, truncated, untouched]: [CaseId; 5] = [
        case_with_two_events(&store, "2000001").await,
        case_with_two_events(&store, "2000002").await,
        case_with_two_events(&store, "2000003").await,
        case_with_two_events(&store, "2000004").await,
        case_with_two_events(&store, "2000005").await,
    ];
    let store: Arc<dyn CaseStore> = Arc::new(store);
    assert_eq!(
        broken_cases(store.clone()).await,
        BTreeMap::new(),
        "untouched"
    );

    let conn = Database::connect(&db.url).await.expect("raw connection");
    let postgres = conn.get_database_backend() == DbBackend::Postgres;
    // With the defences up, no path rewrites or wipes an event.
    let mut refused = vec![
        format!("UPDATE case_events SET detail = 'x' WHERE case_id = '{updated}'"),
        format!("DELETE FROM case_events WHERE case_id = '{updated}'"),
    ];
    if postgres {
        refused.extend([
            "TRUNCATE case_events".to_owned(),
            "TRUNCATE cases CASCADE".to_owned(),
            format!(
                "INSERT INTO case_events (case_id, seq, kind, state, actor, occurred_at, trace_id, \
                 detail, prev_hash, hash) VALUES ('{replaced}', 1, 'k', 'accepted', 'a', 0, '', '', '', '') \
                 ON CONFLICT (case_id, seq) DO UPDATE SET actor = 'someone else'"
            ),
        ]);
    } else {
        for verb in ["INSERT OR REPLACE", "REPLACE"] {
            refused.push(format!(
                "{verb} INTO case_events (case_id, seq, kind, state, actor, occurred_at, trace_id, \
                 detail, prev_hash, hash, key_id) SELECT case_id, seq, kind, state, 'someone else', \
                 occurred_at, trace_id, detail, prev_hash, hash, key_id FROM case_events \
                 WHERE case_id = '{replaced}' AND seq = 1"
            ));
        }
    }
    for sql in &refused {
        assert!(exec(&conn, sql).await.is_err(), "allowed: {sql}");
    }
    assert_eq!(
        broken_cases(store.clone()).await,
        BTreeMap::new(),
        "a refused statement changed something"
    );

    drop_defences(&conn).await;
    // 1. An event rewritten in place.
    exec(
        &conn,
        &format!(
            "UPDATE case_events SET detail = 'rewritten' WHERE case_id = '{updated}' AND seq = 1"
        ),
    )
    .await
    .expect("update");
    // 2. An event replaced by a new row with the same key.
    let replace = if postgres {
        format!(
            "INSERT INTO case_events (case_id, seq, kind, state, actor, occurred_at, trace_id, detail, \
             prev_hash, hash, key_id) SELECT case_id, seq, kind, state, 'someone else', occurred_at, \
             trace_id, detail, prev_hash, hash, key_id FROM case_events WHERE case_id = '{replaced}' \
             AND seq = 1 ON CONFLICT (case_id, seq) DO UPDATE SET actor = EXCLUDED.actor"
        )
    } else {
        format!(
            "INSERT OR REPLACE INTO case_events (case_id, seq, kind, state, actor, occurred_at, \
             trace_id, detail, prev_hash, hash, key_id) SELECT case_id, seq, kind, state, \
             'someone else', occurred_at, trace_id, detail, prev_hash, hash, key_id FROM case_events \
             WHERE case_id = '{replaced}' AND seq = 1"
        )
    };
    exec(&conn, &replace).await.expect("replace");
    // 3. An event rewritten and the whole chain re-hashed without the key, head included.
    let mut prev = GENESIS.to_owned();
    for mut r in rows(&conn, &rehashed).await {
        if r.seq == 1 {
            r.detail = "rewritten".into();
        }
        let h = unkeyed_hash(&prev, &rehashed, &r);
        exec(
            &conn,
            &format!(
                "UPDATE case_events SET detail = '{}', prev_hash = '{prev}', hash = '{h}', key_id = NULL \
                 WHERE case_id = '{rehashed}' AND seq = {}",
                r.detail, r.seq
            ),
        )
        .await
        .expect("rehash");
        prev = h;
    }
    exec(
        &conn,
        &format!("UPDATE cases SET last_hash = '{prev}', head_seal = NULL WHERE id = '{rehashed}'"),
    )
    .await
    .expect("rehash head");
    // 4. The last event deleted and the head rolled back to the one before.
    let first = rows(&conn, &truncated).await.remove(0);
    exec(
        &conn,
        &format!("DELETE FROM case_events WHERE case_id = '{truncated}' AND seq = 2"),
    )
    .await
    .expect("delete");
    exec(
        &conn,
        &format!(
            "UPDATE cases SET last_seq = 1, last_hash = '{}' WHERE id = '{truncated}'",
            first.hash
        ),
    )
    .await
    .expect("roll back head");

    let expected = BTreeMap::from([
        (updated.to_string(), (1, ChainProblem::HashMismatch)),
        (replaced.to_string(), (1, ChainProblem::HashMismatch)),
        (rehashed.to_string(), (2, ChainProblem::UnanchoredLegacy)),
        (truncated.to_string(), (1, ChainProblem::HeadMismatch)),
    ]);
    assert_eq!(broken_cases(store.clone()).await, expected);
    assert_eq!(
        store.verify_audit(&untouched).await.expect("verify").broken,
        None
    );

    // The offline command reads the database directly and names every broken case.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etjanstekort-gateway"))
        .args(["audit", "verify"])
        .env("ETK_DATABASE__URL", &db.url)
        .env("ETK_PRIVACY__MASTER_KEY", test_vault_key())
        .env("NO_COLOR", "1")
        .output()
        .expect("run audit verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (id, (seq, problem)) in &expected {
        let line = format!("BROKEN {id} event {seq} {}", problem.as_str());
        assert!(stdout.contains(&line), "{line} missing:\n{stdout}");
    }
    assert!(!stdout.contains(&untouched.to_string()), "{stdout}");
    assert!(stdout.contains("5 case(s) verified"), "{stdout}");
    // One intact case alone passes.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etjanstekort-gateway"))
        .args(["audit", "verify", "--case", &untouched.to_string()])
        .env("ETK_DATABASE__URL", &db.url)
        .env("ETK_PRIVACY__MASTER_KEY", test_vault_key())
        .output()
        .expect("run audit verify --case");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn tampering_is_named_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    tampering_is_named(TestDb::sqlite(dir.path())).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn tampering_is_named_on_postgres() {
    tampering_is_named(TestDb::postgres().await).await;
}

/// Trails written before m0005 (plain SHA-256, no key id) that m0008 found are anchored by a
/// keyed event when the store is opened, then verify; a legacy trail rewritten before that is
/// not anchored, nor is a keyed trail re-hashed as legacy after m0008 (restart or not).
async fn legacy_trails_are_anchored(db: TestDb) {
    let store = open(&db).await;
    let intact = case_with_two_events(&store, "3000001").await;
    let forged = case_with_two_events(&store, "3000002").await;
    let conn = Database::connect(&db.url).await.expect("raw connection");
    drop_defences(&conn).await;
    // Make both trails legacy ones, as m0005 found them; the second with a rewritten event
    // whose legacy hash was not recomputed.
    for case in [&intact, &forged] {
        make_legacy(&conn, case).await;
    }
    exec(
        &conn,
        &format!(
            "UPDATE case_events SET detail = 'rewritten' WHERE case_id = '{forged}' AND seq = 1"
        ),
    )
    .await
    .expect("forge");
    let store: Arc<dyn CaseStore> = Arc::new(store);
    assert_eq!(
        broken_cases(store.clone()).await,
        BTreeMap::from([
            (intact.to_string(), (2, ChainProblem::UnanchoredLegacy)),
            (forged.to_string(), (1, ChainProblem::HashMismatch)),
        ]),
        "legacy trails are not accepted unanchored"
    );

    // m0008 lists the trails it finds all legacy (undone and run again here, as on an upgrade
    // of a database that m0005 left with these trails).
    undo_through_m0008(&conn).await;
    // Opening the store as the gateway does migrates and anchors the intact one (once).
    let settings: etjanstekort_gateway::storage::DatabaseSettings =
        etjanstekort_gateway::config::Layers::defaults()
            .set("database.url", db.url.clone())
            .section("database")
            .expect("database settings");
    let reopened = etjanstekort_gateway::startup::open_store(&settings, vault())
        .await
        .expect("open");
    let report = reopened.verify_audit(&intact).await.expect("verify");
    assert_eq!(report.broken, None);
    assert_eq!((report.events, report.legacy), (3, 2));
    let events = reopened.events(&intact).await.expect("events");
    assert_eq!(events[2].kind, "audit_chain_keyed");
    etjanstekort_gateway::startup::open_store(&settings, vault())
        .await
        .expect("open again");
    assert_eq!(reopened.events(&intact).await.expect("events").len(), 3);
    // A keyed trail re-hashed later without the key (plain SHA-256, head unsealed) is not on
    // m0008's list: restarting the gateway does not launder it into a verifying trail.
    let laundered = case_with_two_events(&reopened, "3000003").await;
    make_legacy(&conn, &laundered).await;
    etjanstekort_gateway::startup::open_store(&settings, vault())
        .await
        .expect("restart");
    assert_eq!(reopened.events(&laundered).await.expect("events").len(), 2);
    // Nor can the list be extended (short of dropping its trigger too).
    exec(
        &conn,
        &format!("INSERT INTO audit_legacy_cases (case_id) VALUES ('{laundered}')"),
    )
    .await
    .expect_err("the list of anchorable trails is closed");
    let reopened: Arc<dyn CaseStore> = Arc::new(reopened);
    assert_eq!(
        broken_cases(reopened).await,
        BTreeMap::from([
            (forged.to_string(), (1, ChainProblem::HashMismatch)),
            (laundered.to_string(), (2, ChainProblem::UnanchoredLegacy)),
        ])
    );
    // Rewriting an anchored legacy event breaks the anchor's link.
    exec(
        &conn,
        &format!(
            "UPDATE case_events SET actor = 'someone else' WHERE case_id = '{intact}' AND seq = 1"
        ),
    )
    .await
    .expect("rewrite");
    let mut prev = GENESIS.to_owned();
    for r in rows(&conn, &intact).await.into_iter().take(2) {
        let h = unkeyed_hash(&prev, &intact, &r);
        exec(
            &conn,
            &format!(
                "UPDATE case_events SET prev_hash = '{prev}', hash = '{h}' WHERE case_id = '{intact}' AND seq = {}",
                r.seq
            ),
        )
        .await
        .expect("re-hash legacy");
        prev = h;
    }
    let store = open(&db).await;
    let b = store
        .verify_audit(&intact)
        .await
        .expect("verify")
        .broken
        .expect("broken");
    assert_eq!((b.sequence, b.problem), (3, ChainProblem::HashMismatch));
}

#[tokio::test]
async fn legacy_trails_are_anchored_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    legacy_trails_are_anchored(TestDb::sqlite(dir.path())).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn legacy_trails_are_anchored_on_postgres() {
    legacy_trails_are_anchored(TestDb::postgres().await).await;
}

/// The holes a walk over case rows alone would miss: a case whose events were all deleted, a
/// trail whose case row was deleted (orphan), and an event row that does not decode (reported
/// as that case's broken link, the walk going on). The counts are what the periodic check sets
/// `etk_audit_chain_broken_cases` from.
async fn verifier_holes_are_reported(db: TestDb) {
    let store = open(&db).await;
    let [emptied, orphaned, unreadable, untouched]: [CaseId; 4] = [
        case_with_two_events(&store, "4000001").await,
        case_with_two_events(&store, "4000002").await,
        case_with_two_events(&store, "4000003").await,
        case_with_two_events(&store, "4000004").await,
    ];
    // One connection, so that the session settings below hold for every statement.
    let mut opts = sea_orm::ConnectOptions::new(db.url.clone());
    opts.max_connections(1).min_connections(1);
    let conn = Database::connect(opts).await.expect("raw connection");
    drop_defences(&conn).await;
    let no_foreign_keys = if conn.get_database_backend() == DbBackend::Postgres {
        "SET session_replication_role = replica"
    } else {
        "PRAGMA foreign_keys = OFF"
    };
    exec(&conn, no_foreign_keys)
        .await
        .expect("foreign keys off");
    exec(
        &conn,
        &format!("DELETE FROM case_events WHERE case_id = '{emptied}'"),
    )
    .await
    .expect("delete trail");
    exec(
        &conn,
        &format!(
            "UPDATE cases SET last_seq = 0, last_hash = '', head_seal = NULL WHERE id = '{emptied}'"
        ),
    )
    .await
    .expect("reset head");
    for sql in [
        format!("DELETE FROM effects WHERE case_id = '{orphaned}'"),
        format!("DELETE FROM idempotency_keys WHERE case_id = '{orphaned}'"),
        format!("DELETE FROM cases WHERE id = '{orphaned}'"),
    ] {
        exec(&conn, &sql).await.expect("delete the case row");
    }
    exec(
        &conn,
        &format!(
            "UPDATE case_events SET state = 'no_such_state' WHERE case_id = '{unreadable}' AND seq = 2"
        ),
    )
    .await
    .expect("corrupt event");

    let store: Arc<dyn CaseStore> = Arc::new(store);
    assert_eq!(
        broken_cases(store.clone()).await,
        BTreeMap::from([
            (emptied.to_string(), (0, ChainProblem::HeadMismatch)),
            (orphaned.to_string(), (0, ChainProblem::HeadMismatch)),
            (unreadable.to_string(), (2, ChainProblem::HashMismatch)),
        ])
    );
    let mut walk = Walk::all(store.clone()).await.expect("walk");
    while let Some(next) = walk.next().await {
        next.expect("the walk goes on past every hole");
    }
    let p = walk.progress();
    assert_eq!((p.checked, p.broken), (4, 3));
    assert_eq!(
        store.verify_audit(&untouched).await.expect("verify").broken,
        None
    );
}

#[tokio::test]
async fn verifier_holes_are_reported_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    verifier_holes_are_reported(TestDb::sqlite(dir.path())).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn verifier_holes_are_reported_on_postgres() {
    verifier_holes_are_reported(TestDb::postgres().await).await;
}

/// The v1 head seal of m0005 (HMAC over the case id, last sequence and hash only), as the
/// gateway wrote it before m0008.
fn v1_seal(case: &CaseId, seq: i64, hash: &str) -> String {
    let v = vault();
    let mut ctx = ring::hmac::Context::with_key(v.audit_chain_key());
    let (case, seq) = (case.to_string(), seq.to_string());
    for part in [
        "etk audit head v1",
        v.key_id().as_str(),
        case.as_str(),
        seq.as_str(),
        hash,
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    format!("{}:{}", v.key_id(), hex::encode(ctx.sign().as_ref()))
}

/// The head columns of a case row.
async fn head_row(conn: &DatabaseConnection, case: &CaseId) -> (i64, String, String, String) {
    let sql =
        format!("SELECT last_seq, last_hash, head_seal, state FROM cases WHERE id = '{case}'");
    let r = conn
        .query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .expect("query")
        .expect("row");
    (
        r.try_get("", "last_seq").expect("seq"),
        r.try_get("", "last_hash").expect("hash"),
        r.try_get("", "head_seal").expect("seal"),
        r.try_get("", "state").expect("state"),
    )
}

/// An old head (sequence, hash and seal, as a backup holds them) put back after the tail was
/// deleted does not verify on a row that moved on since: the seal covers the row's state, time
/// and version, and the row's state must be the last event's. v1 seals (head only) are
/// re-sealed once at start for the cases m0008 found, and never accepted otherwise.
async fn old_heads_do_not_verify(db: TestDb) {
    let store = open(&db).await;
    let conn = Database::connect(&db.url).await.expect("raw connection");
    let make = |card: &'static str| {
        let store = &store;
        async move {
            store
                .create(new_case(card))
                .await
                .expect("create")
                .into_case()
                .id
        }
    };
    let [moved_on, rolled_back, v1_sealed, v1_replayed] = [
        make("5000001").await,
        make("5000002").await,
        make("5000003").await,
        make("5000004").await,
    ];
    let mut backups = BTreeMap::new();
    for case in [&moved_on, &rolled_back] {
        backups.insert(case.to_string(), head_row(&conn, case).await);
        store
            .apply(case, None, &Event::Cancel, meta("SE1655999991-E1"))
            .await
            .expect("cancel");
    }
    drop_defences(&conn).await;
    for case in [&moved_on, &rolled_back] {
        exec(
            &conn,
            &format!("DELETE FROM case_events WHERE case_id = '{case}' AND seq = 2"),
        )
        .await
        .expect("delete tail");
        let (seq, hash, seal, state) = &backups[&case.to_string()];
        // The head restored; for `rolled_back` the state too (its time and version stay).
        let state = if case == &rolled_back {
            format!(", state = '{state}'")
        } else {
            String::new()
        };
        exec(
            &conn,
            &format!(
                "UPDATE cases SET last_seq = {seq}, last_hash = '{hash}', head_seal = '{seal}'{state} \
                 WHERE id = '{case}'"
            ),
        )
        .await
        .expect("restore the old head");
    }
    // Heads as m0005 sealed them (v1); one of them replayed over a deleted tail.
    for case in [&v1_sealed, &v1_replayed] {
        let (seq, hash, _, _) = head_row(&conn, case).await;
        exec(
            &conn,
            &format!(
                "UPDATE cases SET head_seal = '{}' WHERE id = '{case}'",
                v1_seal(case, seq, &hash)
            ),
        )
        .await
        .expect("v1 seal");
    }
    store
        .apply(&v1_replayed, None, &Event::Cancel, meta("SE1655999991-E1"))
        .await
        .expect("cancel");
    let (seq, _, _, _) = head_row(&conn, &v1_replayed).await;
    exec(
        &conn,
        &format!("DELETE FROM case_events WHERE case_id = '{v1_replayed}' AND seq = {seq}"),
    )
    .await
    .expect("delete tail");
    let (first_seq, first_hash) = (seq - 1, rows(&conn, &v1_replayed).await[0].hash.clone());
    exec(
        &conn,
        &format!(
            "UPDATE cases SET last_seq = {first_seq}, last_hash = '{first_hash}', head_seal = '{}' \
             WHERE id = '{v1_replayed}'",
            v1_seal(&v1_replayed, first_seq, &first_hash)
        ),
    )
    .await
    .expect("replay the v1 head");

    let broken = broken_cases;
    let store: Arc<dyn CaseStore> = Arc::new(store);
    let head = |seq| (seq, ChainProblem::HeadMismatch);
    assert_eq!(
        broken(store.clone()).await,
        BTreeMap::from([
            (moved_on.to_string(), head(1)),
            (rolled_back.to_string(), head(1)),
            (v1_sealed.to_string(), head(1)),
            (v1_replayed.to_string(), head(1)),
        ]),
        "no v1 seal is accepted from the database, nor an old v2 head on a row that moved on"
    );
    // m0008 lists the v1 seals (undone and run again, as on an upgrade); opening the store
    // re-seals those whose chain verifies under the v1 seal, once.
    undo_through_m0008(&conn).await;
    let settings: etjanstekort_gateway::storage::DatabaseSettings =
        etjanstekort_gateway::config::Layers::defaults()
            .set("database.url", db.url.clone())
            .section("database")
            .expect("database settings");
    let reopened = etjanstekort_gateway::startup::open_store(&settings, vault())
        .await
        .expect("open");
    let reopened: Arc<dyn CaseStore> = Arc::new(reopened);
    let after = broken(reopened.clone()).await;
    assert!(!after.contains_key(&v1_sealed.to_string()), "{after:?}");
    for case in [&moved_on, &rolled_back, &v1_replayed] {
        assert!(after.contains_key(&case.to_string()), "{case} {after:?}");
    }
}

#[tokio::test]
async fn old_heads_do_not_verify_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    old_heads_do_not_verify(TestDb::sqlite(dir.path())).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn old_heads_do_not_verify_on_postgres() {
    old_heads_do_not_verify(TestDb::postgres().await).await;
}

/// The walk pages through every case (more than one page of ids).
#[tokio::test]
async fn the_walk_reaches_every_case() {
    let dir = tempfile::tempdir().expect("dir");
    let db = TestDb::sqlite(dir.path());
    let store = open(&db).await;
    let n = 205;
    for i in 0..n {
        store
            .create(new_case(&format!("{}", 7_000_000 + i)))
            .await
            .expect("create");
    }
    let store: Arc<dyn CaseStore> = Arc::new(store);
    let mut walk = Walk::all(store).await.expect("walk");
    let mut seen = std::collections::BTreeSet::new();
    while let Some(next) = walk.next().await {
        let (id, report) = next.expect("verify");
        assert_eq!(report.broken, None);
        seen.insert(id.to_string());
    }
    assert_eq!(seen.len(), n);
    let p = walk.progress();
    assert_eq!((p.checked, p.total, p.events, p.broken), (205, 205, 205, 0));
}

async fn app_on(dir: &tempfile::TempDir, audit_every: Option<f64>) -> (TestApp, TestDb) {
    let db = TestDb::sqlite(dir.path());
    let app = spawn_app_opts(Options {
        db: Some(db.url.clone()),
        engine: false,
        audit_every,
        ..Options::default()
    })
    .await;
    (app, db)
}

async fn reported(app: &TestApp, request_id: &str, card: &str) -> String {
    let mut d = report(&unit_a(), "19121212-1212", card);
    if let Some(h) = d.card_holder.as_mut() {
        h.email = "tolvan@example.se".into();
    }
    app.create_case(request_id, d).await
}

/// Everything a stream sent.
async fn verify_stream(
    ops: &mut OperationsServiceClient<tonic::transport::Channel>,
    id: &str,
) -> Vec<pb::VerifyAuditChainResponse> {
    let mut stream = ops
        .verify_audit_chain(pb::VerifyAuditChainRequest { id: id.into() })
        .await
        .expect("verify")
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.expect("message") {
        out.push(m);
    }
    out
}

#[tokio::test]
async fn operators_see_cases_masked_and_every_action_is_audited() {
    let dir = tempfile::tempdir().expect("dir");
    let (app, _db) = app_on(&dir, None).await;
    let id = reported(&app, "r-1", "4000001").await;
    let other = reported(&app, "r-2", "4000002").await;
    let mut ops = OperationsServiceClient::new(app.channel("operator").await);

    // A case of any provider, masked: no full personnummer, no names, no e-mail addresses.
    let got = ops
        .get_case(pb::GetCaseRequest { id: id.clone() })
        .await
        .expect("get")
        .into_inner();
    let d = got.deregistration.clone().expect("case");
    let holder = d.card_holder.clone().expect("holder");
    assert_eq!(holder.personal_identity_number, "19121212-****");
    assert_eq!(holder.full_name, "***");
    assert_eq!(holder.email, "***");
    let reporter = d.reported_by.clone().expect("reporter");
    assert_eq!(
        (reporter.full_name.as_str(), reporter.email.as_str()),
        ("***", "***")
    );
    assert_eq!(d.card_number, "***");
    assert_eq!(got.card_holder_pseudonym.len(), 64);
    let head = got.chain_head.clone().expect("head");
    assert_eq!(head.sequence, 1);
    let key_id = vault().key_id();
    assert_eq!(head.key_id, key_id);
    let debug = format!("{got:?}");
    for secret in [
        "1212121212",
        "Tolvan",
        "Vera",
        "tolvan@",
        "vera@",
        "4000001",
    ] {
        assert!(!debug.contains(secret), "{secret} shown to an operator");
    }

    // Lists with filters, masked too.
    let list = |r: pb::ListCasesRequest| {
        let mut ops = ops.clone();
        async move { ops.list_cases(r).await }
    };
    let all = list(pb::ListCasesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        all.deregistrations
            .iter()
            .map(|d| d.id.as_str())
            .collect::<Vec<_>>(),
        [id.as_str(), other.as_str()]
    );
    assert!(all.deregistrations.iter().all(|d| {
        d.card_holder.as_ref().is_some_and(|h| h.full_name == "***") && d.card_number == "***"
    }));
    let paged = list(pb::ListCasesRequest {
        page_size: 1,
        ..Default::default()
    })
    .await
    .expect("page 1")
    .into_inner();
    assert_eq!(paged.deregistrations.len(), 1);
    let page2 = list(pb::ListCasesRequest {
        page_size: 1,
        page_token: paged.next_page_token.clone(),
        ..Default::default()
    })
    .await
    .expect("page 2")
    .into_inner();
    assert_eq!(page2.deregistrations[0].id, other);
    let count = |r: pb::ListCasesRequest| {
        let list = &list;
        async move {
            list(r)
                .await
                .expect("list")
                .into_inner()
                .deregistrations
                .len()
        }
    };
    let provider = d.care_provider_hsa_id.clone();
    assert_eq!(
        count(pb::ListCasesRequest {
            care_provider_hsa_id: provider.clone(),
            care_unit_hsa_id: unit_a(),
            states: vec![pb::State::Accepted as i32],
            max_age: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0
            }),
            ..Default::default()
        })
        .await,
        2
    );
    for r in [
        pb::ListCasesRequest {
            needs_attention: true,
            ..Default::default()
        },
        pb::ListCasesRequest {
            states: vec![pb::State::Completed as i32],
            ..Default::default()
        },
        pb::ListCasesRequest {
            care_provider_hsa_id: "SE1655999991-E9".into(),
            ..Default::default()
        },
        pb::ListCasesRequest {
            min_age: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        },
    ] {
        assert_eq!(count(r.clone()).await, 0, "{r:?}");
    }
    let err = list(pb::ListCasesRequest {
        min_age: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
        ..Default::default()
    })
    .await
    .expect_err("negative age");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Cancel: justification required, then audited with the operator as actor.
    let err = ops
        .cancel_case(pb::CancelCaseRequest {
            id: id.clone(),
            justification: String::new(),
        })
        .await
        .expect_err("no justification");
    assert_eq!(err.code(), Code::InvalidArgument);
    let cancelled = ops
        .cancel_case(pb::CancelCaseRequest {
            id: id.clone(),
            justification: "reported twice by mistake".into(),
        })
        .await
        .expect("cancel")
        .into_inner()
        .deregistration
        .expect("case");
    assert_eq!(cancelled.state, pb::State::Cancelled as i32);
    assert_eq!(cancelled.card_holder.expect("holder").full_name, "***");
    let err = ops
        .cancel_case(pb::CancelCaseRequest {
            id: other.clone(),
            justification: "x".into(),
        })
        .await;
    assert!(err.is_ok(), "an accepted case can be cancelled");

    // The timeline: every event with actor, time, trace id and key id; the outbox steps.
    let t = ops
        .get_case_timeline(pb::GetCaseTimelineRequest { id: id.clone() })
        .await
        .expect("timeline")
        .into_inner();
    let kinds: Vec<&str> = t.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["accepted", "cancelled"]);
    let cancel = &t.events[1];
    let operator_hsa = operator_hsa_id();
    assert_eq!(cancel.actor, operator_hsa);
    assert_eq!(cancel.detail, "reported twice by mistake");
    assert_eq!(cancel.trace_id.len(), 32);
    assert!(cancel.event_time.is_some());
    assert_eq!(cancel.key_id, key_id);
    assert!(!t.steps.is_empty(), "the case's outbox steps");
    assert!(
        t.steps
            .iter()
            .all(|s| s.status == pb::StepStatus::Cancelled as i32)
    );
    assert_eq!(t.chain_head.expect("head").sequence, 2);

    // Export, pseudonymized: events, hashes, head; verifies against its head with the key.
    let exported = ops
        .export_audit_record(pb::ExportAuditRecordRequest {
            id: id.clone(),
            purpose: pb::ExportPurpose::Unspecified as i32,
            justification: String::new(),
        })
        .await
        .expect("export")
        .into_inner();
    for secret in [
        "1212121212",
        "Tolvan",
        "Vera",
        "tolvan@",
        "vera@",
        "4000001",
    ] {
        assert!(
            !exported.record_json.contains(secret),
            "{secret} in the export"
        );
    }
    let record = AuditRecord::from_json(&exported.record_json).expect("record");
    assert_eq!(record.events.last().expect("event").kind, "audit_exported");
    assert_eq!(record.events.last().expect("event").actor, operator_hsa);
    assert_eq!(record.chain_head.sequence, 3);
    assert_eq!(exported.chain_head.expect("head").sequence, 3);
    let keys = ChainKeys::new(&vault());
    assert_eq!(record.verify(&keys).expect("verify").broken, None);
    // An edited export no longer verifies against its head.
    let mut edited = record.clone();
    edited.events[1].detail = "something else".into();
    assert!(edited.verify(&keys).expect("verify").broken.is_some());
    let mut cut = record.clone();
    cut.events.pop();
    assert!(cut.verify(&keys).expect("verify").broken.is_some());
    // The case section is covered too: edited, or its MAC removed, it no longer verifies.
    let edits: [fn(&mut AuditRecord); 5] = [
        |r| r.case.state = "completed".into(),
        |r| r.case.care_unit_hsa_id.push('9'),
        |r| r.case.revocation_reference = Some("forged".into()),
        |r| r.exported_by.push('x'),
        |r| r.case_mac = None,
    ];
    for (i, edit) in edits.iter().enumerate() {
        let mut edited = record.clone();
        edit(&mut edited);
        assert!(
            edited.verify(&keys).expect("verify").broken.is_some(),
            "edit {i} not detected"
        );
    }
    // An empty events list never verifies.
    let mut emptied = record.clone();
    emptied.events.clear();
    assert!(emptied.verify(&keys).expect("verify").broken.is_some());
    // …and not without the gateway's key.
    let stranger = ChainKeys::new(&Vault::from_master_key(&[9; 32]).expect("vault"));
    assert!(record.verify(&stranger).expect("verify").broken.is_some());
    // The offline command agrees.
    let file = dir.path().join("export.json");
    std::fs::write(&file, &exported.record_json).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etjanstekort-gateway"))
        .args(["audit", "verify-export"])
        .arg(&file)
        .env("ETK_PRIVACY__MASTER_KEY", test_vault_key())
        .output()
        .expect("verify-export");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&file, serde_json::to_string(&edited).expect("json")).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etjanstekort-gateway"))
        .args(["audit", "verify-export"])
        .arg(&file)
        .env("ETK_PRIVACY__MASTER_KEY", test_vault_key())
        .output()
        .expect("verify-export");
    assert_eq!(out.status.code(), Some(3));

    // For the record keeper: not for operators (a role of its own in the principals file)…
    let err = ops
        .export_audit_record(pb::ExportAuditRecordRequest {
            id: id.clone(),
            purpose: pb::ExportPurpose::RecordKeeper as i32,
            justification: "arkivering enligt beslut 2026-11".into(),
        })
        .await
        .expect_err("an operator exports personal data");
    assert_eq!(err.code(), Code::PermissionDenied);
    // …and the record keeper reaches no other operator RPC.
    let mut keeper = OperationsServiceClient::new(app.channel("record-keeper").await);
    let err = keeper
        .get_case(pb::GetCaseRequest { id: id.clone() })
        .await
        .expect_err("a record keeper reads cases");
    assert_eq!(err.code(), Code::PermissionDenied);
    // Only with a justification, then with the personal data, audited.
    let err = keeper
        .export_audit_record(pb::ExportAuditRecordRequest {
            id: id.clone(),
            purpose: pb::ExportPurpose::RecordKeeper as i32,
            justification: String::new(),
        })
        .await
        .expect_err("no justification");
    assert_eq!(err.code(), Code::InvalidArgument);
    let kept = keeper
        .export_audit_record(pb::ExportAuditRecordRequest {
            id: id.clone(),
            purpose: pb::ExportPurpose::RecordKeeper as i32,
            justification: "arkivering enligt beslut 2026-11".into(),
        })
        .await
        .expect("record keeper export")
        .into_inner();
    let kept = AuditRecord::from_json(&kept.record_json).expect("record");
    assert_eq!(
        kept.case.card_holder.personal_identity_number.as_deref(),
        Some("191212121212")
    );
    let last = kept.events.last().expect("event");
    assert_eq!(
        (last.kind.as_str(), last.detail.as_str()),
        (
            "audit_exported_for_record_keeper",
            "arkivering enligt beslut 2026-11"
        )
    );
    assert_eq!(kept.verify(&keys).expect("verify").broken, None);

    // Verify: one case, and all, with a final summary.
    let one = verify_stream(&mut ops, &id).await;
    let last = one.last().expect("summary");
    assert!(last.done);
    assert_eq!(
        (last.cases_checked, last.cases_broken, last.events_checked),
        (1, 0, 4)
    );
    let all = verify_stream(&mut ops, "").await;
    let last = all.last().expect("summary");
    assert!(last.done);
    assert_eq!(
        (last.cases_checked, last.cases_total, last.cases_broken),
        (2, 2, 0)
    );
    let err = ops
        .verify_audit_chain(pb::VerifyAuditChainRequest {
            id: etjanstekort_gateway::clock::new_case_id().to_string(),
        })
        .await
        .expect_err("unknown case");
    assert_eq!(err.code(), Code::NotFound);
}

fn operator_hsa_id() -> String {
    etjanstekort_gateway::devcerts::dev_clients()
        .into_iter()
        .find(|c| c.name == "operator")
        .expect("operator")
        .hsa_id
}

#[tokio::test]
async fn the_rpc_and_the_gateway_itself_name_a_rewritten_case() {
    let dir = tempfile::tempdir().expect("dir");
    let (app, db) = app_on(&dir, Some(0.1)).await;
    let id = reported(&app, "r-1", "5000001").await;
    let fine = reported(&app, "r-2", "5000002").await;
    let conn = Database::connect(&db.url).await.expect("raw connection");
    drop_defences(&conn).await;
    exec(
        &conn,
        &format!("UPDATE case_events SET actor = 'someone else' WHERE case_id = '{id}'"),
    )
    .await
    .expect("rewrite");
    let mut ops = OperationsServiceClient::new(app.channel("operator").await);
    let all = verify_stream(&mut ops, "").await;
    let broken: Vec<_> = all.iter().filter_map(|m| m.broken.clone()).collect();
    assert_eq!(broken.len(), 1, "{all:?}");
    assert_eq!(broken[0].deregistration_id, id);
    assert_eq!(broken[0].sequence, 1);
    assert_eq!(
        broken[0].problem,
        pb::AuditChainProblem::HashMismatch as i32
    );
    let last = all.last().expect("summary");
    assert!(last.done);
    assert_eq!((last.cases_checked, last.cases_broken), (2, 1));
    assert!(
        verify_stream(&mut ops, &fine)
            .await
            .last()
            .expect("summary")
            .cases_broken
            == 0
    );
    // The periodic check sets the metric (waits at most 10 s for the first runs).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = crate::admin::scrape(&app).await;
        if m.get("etk_audit_chain_broken_cases") == Some(&1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metric never set: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_care_provider_cannot_call_operator_rpcs() {
    let dir = tempfile::tempdir().expect("dir");
    let (app, _db) = app_on(&dir, None).await;
    let id = reported(&app, "r-1", "6000001").await;
    for who in ["provider-a", "office", "tjansteid"] {
        let mut ops = OperationsServiceClient::new(app.channel(who).await);
        let denied = [
            ops.get_case(pb::GetCaseRequest { id: id.clone() })
                .await
                .err(),
            ops.list_cases(pb::ListCasesRequest::default()).await.err(),
            ops.get_case_timeline(pb::GetCaseTimelineRequest { id: id.clone() })
                .await
                .err(),
            ops.cancel_case(pb::CancelCaseRequest {
                id: id.clone(),
                justification: "x".into(),
            })
            .await
            .err(),
            ops.verify_audit_chain(pb::VerifyAuditChainRequest::default())
                .await
                .err(),
            ops.export_audit_record(pb::ExportAuditRecordRequest {
                id: id.clone(),
                ..Default::default()
            })
            .await
            .err(),
        ];
        for (i, err) in denied.into_iter().enumerate() {
            let err = err.unwrap_or_else(|| panic!("{who} reached operator RPC {i}"));
            assert_eq!(err.code(), Code::PermissionDenied, "{who} {i}");
            assert_eq!(reason(&err), "ROLE_REQUIRED");
        }
    }
    // Nothing was recorded by the refused calls.
    let mut provider = DeregistrationServiceClient::new(app.channel("provider-a").await);
    let d = provider
        .get_deregistration(pb::GetDeregistrationRequest { id })
        .await
        .expect("get")
        .into_inner()
        .deregistration
        .expect("case");
    assert_eq!(d.state, pb::State::Accepted as i32);
}

/// Undoes m0008 and every migration after it (they run again when the store opens).
async fn undo_through_m0008(conn: &sea_orm::DatabaseConnection) {
    use migration::MigratorTrait as _;
    let after_m0007 = migration::Migrator::migrations().len() - 7;
    migration::Migrator::down(conn, Some(u32::try_from(after_m0007).expect("count")))
        .await
        .expect("undo m0008 and later");
}
