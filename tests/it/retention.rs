//! Retention (crypto-shredding, purging) and key rotation on the real store, SQLite always and
//! PostgreSQL when `ETK_TEST_POSTGRES_URL` is set. Time is a `FakeClock`: nothing waits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etjanstekort_gateway::clock::{Clock, FakeClock};
use etjanstekort_gateway::domain::saga::{Event, Step};
use etjanstekort_gateway::domain::{Employment, State, Timestamp};
use etjanstekort_gateway::metrics::Metrics;
use etjanstekort_gateway::privacy::{PseudonymKey, Vault};
use etjanstekort_gateway::retention::{PassReport, RetentionSettings, run_pass};
use etjanstekort_gateway::storage::{
    CaseStore, Created, Finished, ListQuery, SeaStore, StoreError, WorkResult,
};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

use crate::helpers::TestDb;
use crate::store::{cmd, meta, report};

const DAY: i64 = 86_400_000_000;

fn key(n: u8) -> [u8; 32] {
    [n; 32]
}

async fn open_with(db: &TestDb, vault: Vault) -> SeaStore {
    let store = SeaStore::connect(&db.url, 4, Duration::from_secs(5), Arc::new(vault))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

async fn raw(db: &TestDb) -> DatabaseConnection {
    Database::connect(&db.url).await.expect("raw connection")
}

async fn count(conn: &DatabaseConnection, sql: &str) -> i64 {
    let row = conn
        .query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .expect(sql)
        .expect("a row");
    row.try_get_by_index::<i64>(0).expect("a count")
}

async fn blobs(conn: &DatabaseConnection, sql: &str) -> Vec<Option<Vec<u8>>> {
    let row = conn
        .query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .expect(sql)
        .expect("a row");
    (0..3)
        .map(|i| row.try_get_by_index::<Option<Vec<u8>>>(i).expect("a blob"))
        .collect()
}

fn settings() -> RetentionSettings {
    RetentionSettings {
        personal_data: Duration::from_secs(30 * 24 * 3600),
        record: Duration::from_secs(365 * 24 * 3600),
        outbox: Duration::from_secs(7 * 24 * 3600),
        interval: Duration::from_secs(3600),
        // One case per round: a pass must go round until nothing is left.
        batch_size: 1,
    }
}

fn employment() -> Employment {
    Employment {
        dn: "cn=Tolvan Tolvansson,ou=Enhet,o=VGR".into(),
        attributes: BTreeMap::from([("mail".into(), vec!["tolvan@example.se".into()])]),
        ..Default::default()
    }
}

/// Takes the case's KIV snapshot through the outbox, as a worker would.
async fn take_snapshot(store: &SeaStore, case: &etjanstekort_gateway::domain::CaseId) {
    let now = etjanstekort_gateway::clock::now();
    let claimed = store
        .claim("w", now, Duration::from_secs(30), 20)
        .await
        .expect("claim");
    let work = claimed
        .into_iter()
        .find(|w| &w.case_id == case && w.step == Step::Snapshot)
        .expect("the snapshot step");
    store
        .finish(
            "w",
            vec![Finished {
                work,
                result: WorkResult::Done {
                    event: Some(Event::SnapshotTaken { found: true }),
                    snapshot: Some(employment()),
                    detail: String::new(),
                },
            }],
        )
        .await
        .expect("finish");
}

async fn retention_contract(db: TestDb) {
    let store = open_with(&db, Vault::from_master_key(&key(1)).expect("key")).await;
    let vault = Vault::from_master_key(&key(1)).expect("key");
    let conn = raw(&db).await;
    let ended = store
        .create(cmd(Some("req-ended"), "f", "7000001"))
        .await
        .expect("create")
        .into_case();
    let active = store
        .create(cmd(None, "f", "7000002"))
        .await
        .expect("create")
        .into_case();
    take_snapshot(&store, &ended.id).await;
    assert_eq!(
        store.snapshot(&ended.id).await.expect("snapshot"),
        Some(employment())
    );
    store
        .apply(&ended.id, None, &Event::Cancel, meta("SE1655999991-E1"))
        .await
        .expect("cancel");
    let active_events = store.events(&active.id).await.expect("events");
    // What a copy of the row (a backup, a dump) holds of its personal data.
    let copy = blobs(
        &conn,
        &format!(
            "SELECT data_key, sensitive, kiv_snapshot FROM cases WHERE id = '{}'",
            ended.id
        ),
    )
    .await;
    let (sensitive, snapshot) = (
        copy[1].clone().expect("sensitive"),
        copy[2].clone().expect("snapshot"),
    );

    let clock = FakeClock::at(etjanstekort_gateway::clock::now());
    let metrics = Metrics::new();
    let s = settings();
    // Within the period nothing goes.
    clock.advance(DAY);
    let pass = run_pass(&store, &*clock, &s, &metrics).await.expect("pass");
    assert_eq!(pass, PassReport::default());
    assert!(store.get(&ended.id).await.expect("get").is_some());
    // The store re-checks on the locked row: a case not due, or active, is left alone; a
    // record is never purged before its personal data is shredded.
    let far = Timestamp(i64::MAX / 2);
    for id in [&ended.id, &active.id] {
        assert!(
            !store
                .shred(id, Timestamp(0), meta("system"))
                .await
                .expect("shred")
        );
        assert!(!store.purge(id, far, clock.now()).await.expect("purge"));
    }
    assert!(
        !store
            .shred(&active.id, far, meta("system"))
            .await
            .expect("shred")
    );

    // After it, the ended case's personal data is destroyed; the active case is untouched.
    clock.advance(30 * DAY);
    let pass = run_pass(&store, &*clock, &s, &metrics).await.expect("pass");
    assert_eq!((pass.shredded, pass.purged), (1, 0));
    assert!(
        pass.outbox >= 2,
        "the done snapshot and the cancelled report: {pass:?}"
    );
    assert_eq!(store.get(&ended.id).await.expect("get"), None);
    assert_eq!(store.snapshot(&ended.id).await.expect("snapshot"), None);
    // Not listed either: a page holds only cases that can be shown.
    let page = store
        .list(&ListQuery {
            limit: 1,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(
        page.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        vec![active.id.clone()]
    );
    let where_ended = format!("WHERE id = '{}'", ended.id);
    assert_eq!(
        count(
            &conn,
            &format!(
                "SELECT COUNT(*) FROM cases {where_ended} AND data_key IS NULL AND key_id IS NULL \
                 AND length(sensitive) = 0 AND kiv_snapshot IS NULL AND holder_pseudonym = '' \
                 AND shredded_at IS NOT NULL"
            )
        )
        .await,
        1,
        "data key, ciphertexts and pseudonym are gone"
    );
    assert_eq!(
        count(
            &conn,
            &format!(
                "SELECT COUNT(*) FROM idempotency_keys WHERE case_id = '{}'",
                ended.id
            )
        )
        .await,
        0,
        "the request fingerprint (a digest of the report) is gone"
    );
    // The copy taken before does not decrypt: not with the master key, and not with any data
    // key still in the database.
    assert!(vault.open(&ended.id.to_string(), &sensitive).is_err());
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT id, data_key FROM cases WHERE data_key IS NOT NULL",
        ))
        .await
        .expect("data keys");
    assert_eq!(rows.len(), 1, "only the active case still has a data key");
    for row in rows {
        let id: String = row.try_get("", "id").expect("id");
        let wrapped: Vec<u8> = row.try_get("", "data_key").expect("data_key");
        let k = vault
            .open_data_key(&format!("{id}/data-key"), &wrapped)
            .expect("the active case's key");
        assert!(k.open(&ended.id.to_string(), &sensitive).is_err());
        assert!(
            k.open(&format!("{}/kiv-snapshot", ended.id), &snapshot)
                .is_err()
        );
    }
    // The revocation record and its audit trail stay, and the chain still verifies.
    let record = store
        .record(&ended.id)
        .await
        .expect("record")
        .expect("kept");
    assert_eq!(record.state, State::Cancelled);
    assert_eq!(record.card_number, "7000001");
    assert_eq!(record.reporter, "SE1655999991-P1");
    assert_eq!(record.shredded_at, Some(clock.now()));
    assert!(record.ended_at.is_some());
    let events = store.events(&ended.id).await.expect("events");
    let chain = store.verify_audit(&ended.id).await.expect("verify");
    assert!(chain.broken.is_none(), "{chain:?}");
    assert_eq!(
        events.last().map(|e| e.kind.as_str()),
        Some("personal_data_shredded")
    );
    // The active case: readable, its key, its trail and its pending steps as they were.
    let still = store.get(&active.id).await.expect("get").expect("active");
    assert_eq!(still.report, report("7000002"));
    assert_eq!(
        store.events(&active.id).await.expect("events"),
        active_events
    );
    assert_eq!(
        count(
            &conn,
            &format!(
                "SELECT COUNT(*) FROM effects WHERE case_id = '{}' AND status = 'pending'",
                active.id
            )
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &conn,
            &format!(
                "SELECT COUNT(*) FROM effects WHERE case_id = '{}'",
                ended.id
            )
        )
        .await,
        0,
        "finished outbox rows past their period are gone"
    );
    let rendered = metrics.render();
    assert!(
        rendered.contains("etk_retention_removed_total{what=\"personal_data\"} 1"),
        "{rendered}"
    );
    // The audit trail stays append-only for every case without a purge marker, and a marker
    // cannot be written for a case that still has its personal data.
    let refused = |sql: String| {
        let conn = &conn;
        async move {
            assert!(conn.execute_unprepared(&sql).await.is_err(), "{sql}");
        }
    };
    refused(format!(
        "DELETE FROM case_events WHERE case_id = '{}'",
        ended.id
    ))
    .await;
    refused(format!(
        "DELETE FROM case_events WHERE case_id = '{}'",
        active.id
    ))
    .await;
    refused(format!(
        "INSERT INTO retention_purges (case_id, ended_at, purged_at, last_seq, last_hash) \
         VALUES ('{}', 0, 0, 0, '')",
        active.id
    ))
    .await;

    // After the record period the record goes too, leaving its purge marker.
    let last_hash = events.last().expect("events").hash.clone();
    clock.advance(335 * DAY);
    let pass = run_pass(&store, &*clock, &s, &metrics).await.expect("pass");
    assert_eq!((pass.shredded, pass.purged), (0, 1));
    assert_eq!(store.record(&ended.id).await.expect("record"), None);
    assert!(store.events(&ended.id).await.expect("events").is_empty());
    assert_eq!(
        count(
            &conn,
            &format!(
                "SELECT COUNT(*) FROM retention_purges WHERE case_id = '{}' AND last_hash = '{last_hash}'",
                ended.id
            )
        )
        .await,
        1
    );
    refused("DELETE FROM retention_purges".into()).await;
    refused("UPDATE retention_purges SET purged_at = 0".into()).await;
    assert!(store.get(&active.id).await.expect("get").is_some());
    assert_eq!(
        store.events(&active.id).await.expect("events"),
        active_events
    );
    // Nothing more to do.
    let pass = run_pass(&store, &*clock, &s, &metrics).await.expect("pass");
    assert_eq!(pass, PassReport::default());
}

#[tokio::test]
async fn retention_contract_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    retention_contract(TestDb::sqlite(dir.path())).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn retention_contract_on_postgres() {
    retention_contract(TestDb::postgres().await).await;
}

/// Shredding also blanks the error texts the case's outbox rows hold (a bounced address, a
/// name in a directory's answer), in the same transaction; other cases' rows keep theirs.
async fn shredding_blanks_outbox_errors(db: TestDb) {
    let store = open_with(&db, Vault::from_master_key(&key(1)).expect("key")).await;
    let conn = raw(&db).await;
    let ended = store
        .create(cmd(None, "f", "7100001"))
        .await
        .expect("create")
        .into_case();
    let active = store
        .create(cmd(None, "f", "7100002"))
        .await
        .expect("create")
        .into_case();
    store
        .apply(&ended.id, None, &Event::Cancel, meta("SE1655999991-E1"))
        .await
        .expect("cancel");
    conn.execute_unprepared(
        "UPDATE effects SET last_error = '550 mailbox tolvan.tolvansson@example.se unavailable'",
    )
    .await
    .expect("errors");
    let errors = |id: String| {
        let conn = &conn;
        async move {
            count(
                conn,
                &format!(
                    "SELECT COUNT(*) FROM effects WHERE case_id = '{id}' AND last_error IS NOT NULL"
                ),
            )
            .await
        }
    };
    let rows_of_ended = count(
        &conn,
        &format!(
            "SELECT COUNT(*) FROM effects WHERE case_id = '{}'",
            ended.id
        ),
    )
    .await;
    assert!(rows_of_ended > 0);
    assert_eq!(errors(ended.id.to_string()).await, rows_of_ended);
    let active_errors = errors(active.id.to_string()).await;
    assert!(active_errors > 0);

    assert!(
        store
            .shred(&ended.id, Timestamp(i64::MAX / 2), meta("system"))
            .await
            .expect("shred")
    );
    assert_eq!(errors(ended.id.to_string()).await, 0, "error texts blanked");
    assert_eq!(
        count(
            &conn,
            &format!(
                "SELECT COUNT(*) FROM effects WHERE case_id = '{}'",
                ended.id
            ),
        )
        .await,
        rows_of_ended,
        "the rows themselves wait for the outbox period"
    );
    assert_eq!(errors(active.id.to_string()).await, active_errors);
}

#[tokio::test]
async fn shredding_blanks_outbox_errors_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    shredding_blanks_outbox_errors(TestDb::sqlite(dir.path())).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn shredding_blanks_outbox_errors_on_postgres() {
    shredding_blanks_outbox_errors(TestDb::postgres().await).await;
}

/// A purge marker (what lets a case's audit events be deleted) is written only for a case that
/// ended, is in a terminal state and is shredded — not for a live case whose `shredded_at` was
/// set by hand (m0007) — and on PostgreSQL the markers cannot be truncated.
async fn a_purge_marker_needs_an_ended_shredded_case(db: TestDb) {
    let store = open_with(&db, Vault::from_master_key(&key(1)).expect("key")).await;
    let conn = raw(&db).await;
    let mut ids = Vec::new();
    for card in ["7200001", "7200002", "7200003"] {
        ids.push(
            store
                .create(cmd(None, "f", card))
                .await
                .expect("create")
                .into_case()
                .id,
        );
    }
    let (shredded, unshredded, live) = (&ids[0], &ids[1], &ids[2]);
    for id in [shredded, unshredded] {
        store
            .apply(id, None, &Event::Cancel, meta("SE1655999991-E1"))
            .await
            .expect("cancel");
    }
    assert!(
        store
            .shred(shredded, Timestamp(i64::MAX / 2), meta("system"))
            .await
            .expect("shred")
    );
    let marker = |id: &etjanstekort_gateway::domain::CaseId| {
        format!(
            "INSERT INTO retention_purges (case_id, ended_at, purged_at, last_seq, last_hash) \
             VALUES ('{id}', 0, 0, 0, '')"
        )
    };
    let set = |id: &etjanstekort_gateway::domain::CaseId, cols: &str| {
        format!("UPDATE cases SET {cols} WHERE id = '{id}'")
    };
    // A live case made to look ended and shredded: its state still says it is live.
    conn.execute_unprepared(&set(live, "shredded_at = 1, ended_at = 1"))
        .await
        .expect("forge");
    assert!(
        conn.execute_unprepared(&marker(live)).await.is_err(),
        "live"
    );
    // An ended case not shredded.
    assert!(
        conn.execute_unprepared(&marker(unshredded)).await.is_err(),
        "unshredded"
    );
    // A shredded, terminal case without an end time.
    let ended_at = count(
        &conn,
        &format!("SELECT ended_at FROM cases WHERE id = '{shredded}'"),
    )
    .await;
    conn.execute_unprepared(&set(shredded, "ended_at = NULL"))
        .await
        .expect("forge");
    assert!(
        conn.execute_unprepared(&marker(shredded)).await.is_err(),
        "no end time"
    );
    // With its end time back, it is what a purge may mark.
    conn.execute_unprepared(&set(shredded, &format!("ended_at = {ended_at}")))
        .await
        .expect("restore");
    conn.execute_unprepared(&marker(shredded))
        .await
        .expect("the marker of an ended, shredded case");
    if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        for sql in [
            "TRUNCATE retention_purges",
            "TRUNCATE case_events",
            "TRUNCATE cases CASCADE",
        ] {
            assert!(
                conn.execute_unprepared(sql).await.is_err(),
                "allowed: {sql}"
            );
        }
    }
    assert_eq!(
        count(&conn, "SELECT COUNT(*) FROM retention_purges").await,
        1
    );
}

#[tokio::test]
async fn a_purge_marker_needs_an_ended_shredded_case_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    a_purge_marker_needs_an_ended_shredded_case(TestDb::sqlite(dir.path())).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn a_purge_marker_needs_an_ended_shredded_case_on_postgres() {
    a_purge_marker_needs_an_ended_shredded_case(TestDb::postgres().await).await;
}

/// A value as releases before m0006 sealed it with the master key: `1 | nonce | ciphertext`.
fn seal_v1(master: &[u8; 32], context: &str, plain: &[u8]) -> Vec<u8> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use ring::hkdf;
    struct Len;
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            32
        }
    }
    let mut enc = [0u8; 32];
    hkdf::Salt::new(hkdf::HKDF_SHA256, b"etjanstekort-gateway/v1")
        .extract(master)
        .expand(&[b"aead"], Len)
        .and_then(|okm| okm.fill(&mut enc))
        .expect("derive");
    let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &enc).expect("key"));
    let nonce = [3u8; 12];
    let mut buf = plain.to_vec();
    aead.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(context.as_bytes()),
        &mut buf,
    )
    .expect("seal");
    let mut out = vec![1u8];
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Turns a case row into one as releases before m0006 wrote it: personal data sealed by the
/// master key itself, no data key, no key id.
async fn make_legacy(conn: &DatabaseConnection, id: &str, master: &[u8; 32]) {
    let json = br#"{"pnr":"191212121212","holder_name":"Tolvan Tolvansson","holder_email":null,"reporter_name":"Vera Verksamhetschef","reporter_email":"vera@example.se"}"#;
    let sealed = seal_v1(master, id, json);
    let literal = match conn.get_database_backend() {
        sea_orm::DbBackend::Postgres => format!("'\\x{}'::bytea", hex(&sealed)),
        _ => format!("x'{}'", hex(&sealed)),
    };
    conn.execute_unprepared(&format!(
        "UPDATE cases SET sensitive = {literal}, data_key = NULL, key_id = NULL WHERE id = '{id}'"
    ))
    .await
    .expect("a row as before m0006");
}

/// The cases, in id order (`get_many` promises no order).
async fn read_all(
    store: &SeaStore,
    ids: &[etjanstekort_gateway::domain::CaseId],
) -> Vec<etjanstekort_gateway::domain::Deregistration> {
    let mut all = store.get_many(ids).await.expect("get_many");
    all.sort_by_key(|c| c.id.to_string());
    all
}

async fn rotation_contract(db: TestDb) {
    let conn = raw(&db).await;
    let old = Vault::from_master_key(&key(1)).expect("key");
    let (old_id, pinned) = (old.key_id(), old.pseudonym_key_base64());
    let store = open_with(&db, old).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let c = store
            .create(cmd(Some(&format!("r{i}")), "f", &format!("800000{i}")))
            .await
            .expect("create")
            .into_case();
        ids.push(c.id);
    }
    take_snapshot(&store, &ids[0]).await;
    // One row from before m0006, sealed by the master key itself: still readable.
    make_legacy(&conn, &ids[4].to_string(), &key(1)).await;
    let legacy = store.get(&ids[4]).await.expect("get").expect("legacy row");
    assert_eq!(legacy.report, report("8000004"));
    let before = read_all(&store, &ids).await;
    assert_eq!(before.len(), 5);
    let pseudonyms = || {
        let conn = &conn;
        async move {
            count(
                conn,
                "SELECT COUNT(DISTINCT holder_pseudonym) FROM cases WHERE shredded_at IS NULL",
            )
            .await
        }
    };
    assert_eq!(pseudonyms().await, 1);
    drop(store);

    // A new key made current; the old one still decrypts. The pseudonym key is pinned to a
    // key of its own, exported from the old keyring.
    use secrecy::ExposeSecret;
    let pseudonym_key = || {
        use base64::Engine;
        PseudonymKey::Own(
            base64::engine::general_purpose::STANDARD
                .decode(pinned.expose_secret())
                .expect("base64")
                .into(),
        )
    };
    let new_id = etjanstekort_gateway::privacy::key_id_of(&key(2));
    let both =
        Vault::keyring(&[&key(1), &key(2)], Some(&new_id), pseudonym_key()).expect("keyring");
    let store = open_with(&db, both).await;
    assert_eq!(read_all(&store, &ids).await, before);
    let fresh = store
        .create(cmd(None, "f", "8000009"))
        .await
        .expect("create")
        .into_case();
    assert_eq!(
        store
            .record(&fresh.id)
            .await
            .expect("record")
            .expect("row")
            .key_id,
        Some(new_id.clone())
    );
    assert_eq!(
        store
            .record(&ids[1])
            .await
            .expect("record")
            .expect("row")
            .key_id,
        Some(old_id.clone())
    );
    assert_eq!(pseudonyms().await, 1, "the same holder, the same pseudonym");
    assert_eq!(store.reencrypt_pending().await.expect("pending"), 5);

    // Interrupted after one batch of two; the next run moves the rest.
    let first = store.reencrypt_batch(None, 2).await.expect("batch");
    assert_eq!(first.moved, 2);
    drop(store);
    let both =
        Vault::keyring(&[&key(1), &key(2)], Some(&new_id), pseudonym_key()).expect("keyring");
    let store = open_with(&db, both).await;
    let mut seen = Vec::new();
    let report = etjanstekort_gateway::keys::reencrypt(&store, 2, &mut |done, total| {
        seen.push((done, total))
    })
    .await
    .expect("reencrypt");
    assert_eq!((report.moved, report.failed), (3, 0));
    assert_eq!(seen.first(), Some(&(0, 3)));
    assert_eq!(seen.last(), Some(&(3, 3)));
    assert_eq!(store.reencrypt_pending().await.expect("pending"), 0);
    assert_eq!(
        count(
            &conn,
            &format!(
                "SELECT COUNT(*) FROM cases WHERE key_id = '{new_id}' AND data_key IS NOT NULL"
            )
        )
        .await,
        6
    );
    drop(store);

    // The old key removed: every case is still readable, snapshot included; the request ids
    // still replay (their digests use the pinned pseudonym key).
    let new_only = Vault::keyring(&[&key(2)], None, pseudonym_key()).expect("keyring");
    let store = open_with(&db, new_only).await;
    assert_eq!(read_all(&store, &ids).await, before);
    assert_eq!(
        store.snapshot(&ids[0]).await.expect("snapshot"),
        Some(employment())
    );
    assert!(matches!(
        store.create(cmd(Some("r1"), "f", "8000001")).await,
        Ok(Created::Replayed(c)) if c.id == ids[1]
    ));
    assert_eq!(pseudonyms().await, 1);
    drop(store);
    // And the old key alone reads nothing any more.
    let store = open_with(&db, Vault::from_master_key(&key(1)).expect("key")).await;
    for id in &ids {
        assert!(matches!(store.get(id).await, Err(StoreError::Corrupt(_))));
    }
}

#[tokio::test]
async fn rotation_contract_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    rotation_contract(TestDb::sqlite(dir.path())).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn rotation_contract_on_postgres() {
    rotation_contract(TestDb::postgres().await).await;
}

/// A row from before m0006 is shredded like any other: its ciphertexts are nulled.
#[tokio::test]
async fn a_row_from_before_m0006_is_shredded_too() {
    let dir = tempfile::tempdir().expect("dir");
    let db = TestDb::sqlite(dir.path());
    let store = open_with(&db, Vault::from_master_key(&key(1)).expect("key")).await;
    let conn = raw(&db).await;
    let case = store
        .create(cmd(None, "f", "9000001"))
        .await
        .expect("create")
        .into_case();
    make_legacy(&conn, &case.id.to_string(), &key(1)).await;
    store
        .apply(&case.id, None, &Event::Cancel, meta("SE1655999991-E1"))
        .await
        .expect("cancel");
    let clock = FakeClock::at(etjanstekort_gateway::clock::now());
    clock.advance(31 * DAY);
    let pass = run_pass(&store, &*clock, &settings(), &Metrics::new())
        .await
        .expect("pass");
    assert_eq!(pass.shredded, 1);
    assert_eq!(store.get(&case.id).await.expect("get"), None);
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM cases WHERE length(sensitive) = 0 AND shredded_at IS NOT NULL"
        )
        .await,
        1
    );
}

/// The maintenance commands on the dev deployment: a dry run lists the case and changes
/// nothing, `keys list` names the key, `keys reencrypt` moves the case to a new current key
/// (no progress bar when stderr is not a terminal), and a real pass shreds it.
#[tokio::test]
async fn the_maintenance_commands_work_on_the_dev_deployment() {
    use crate::launcher::run_once;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().to_str().expect("utf-8 path");
    let dev = ["--dev", "--data-dir", data];
    fn args<'a>(dev: [&'a str; 3], cmd: &[&'a str]) -> Vec<&'a str> {
        cmd.iter().copied().chain(dev).collect()
    }
    let (ok, _, err) = run_once(&args(dev, &["migrate"]), &[]);
    assert!(ok, "{err}");
    let master = std::fs::read_to_string(dir.path().join("master.key")).expect("dev key");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("etjanstekort.sqlite").display()
    );
    let db = TestDb {
        url: url.clone(),
        name: String::new(),
    };
    let vault = Vault::from_base64(&master).expect("key");
    let old_id = vault.key_id();
    let store = open_with(&db, vault).await;
    let case = store
        .create(cmd(None, "f", "9100001"))
        .await
        .expect("create")
        .into_case();
    store
        .apply(&case.id, None, &Event::Cancel, meta("SE1655999991-E1"))
        .await
        .expect("cancel");
    drop(store);
    let now = [("ETK_RETENTION__PERSONAL_DATA", "0s".to_owned())];

    let (ok, out, err) = run_once(&args(dev, &["retention", "purge", "--dry-run"]), &now);
    assert!(ok, "{err}");
    assert!(
        out.contains("would shred the personal data of 1 ended case(s)"),
        "{out}"
    );
    assert!(out.contains(&case.id.to_string()), "{out}");
    let store = open_with(&db, Vault::from_base64(&master).expect("key")).await;
    assert!(
        store.get(&case.id).await.expect("get").is_some(),
        "a dry run changes nothing"
    );
    drop(store);

    let (ok, out, err) = run_once(&args(dev, &["keys", "list"]), &[]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), old_id);

    // The pseudonym key in use, exported to a file of its own (0600, never over a file).
    let exported = dir.path().join("pseudonym.key");
    let out_arg = exported.to_str().expect("utf-8 path");
    let (ok, _, err) = run_once(
        &args(dev, &["keys", "export-pseudonym-key", "--out", out_arg]),
        &[],
    );
    assert!(ok, "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&exported)
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let pinned = std::fs::read_to_string(&exported).expect("exported key");
    let (ok, _, _) = run_once(
        &args(dev, &["keys", "export-pseudonym-key", "--out", out_arg]),
        &[],
    );
    assert!(!ok, "an existing file is not overwritten");
    let pnr = etjanstekort_gateway::domain::Personnummer::parse(
        "19121212-1212",
        etjanstekort_gateway::clock::now().utc_date(),
    )
    .expect("pnr");
    let own = {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(pinned.trim())
            .expect("base64");
        Vault::keyring(&[&key(9)], None, PseudonymKey::Own(raw.into())).expect("keyring")
    };
    assert_eq!(
        own.pseudonym(&pnr),
        Vault::from_base64(&master).expect("key").pseudonym(&pnr)
    );

    use base64::Engine;
    let new_key = base64::engine::general_purpose::STANDARD.encode(key(5));
    let new_id = etjanstekort_gateway::privacy::key_id_of(&key(5));
    let rotated = [
        ("ETK_PRIVACY__MASTER_KEYS", format!("[\"{new_key}\"]")),
        ("ETK_PRIVACY__CURRENT_KEY", new_id.clone()),
        ("ETK_PRIVACY__PSEUDONYM_KEY_ID", old_id.clone()),
    ];
    let (ok, out, err) = run_once(&args(dev, &["keys", "reencrypt", "--batch", "1"]), &rotated);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("re-encrypted 1 case(s) under key {new_id}")),
        "{out}"
    );
    assert!(
        !err.contains('\r'),
        "no progress bar off a terminal: {err:?}"
    );
    // Without the current key named, several keys are refused.
    let (ok, _, err) = run_once(
        &args(dev, &["keys", "list"]),
        &[("ETK_PRIVACY__MASTER_KEYS", format!("[\"{new_key}\"]"))],
    );
    assert!(!ok && err.contains("current_key"), "{err}");

    let mut env = rotated.to_vec();
    env.extend(now);
    let (ok, out, err) = run_once(&args(dev, &["retention", "purge"]), &env);
    assert!(ok, "{err}");
    assert!(out.contains("shredded 1 case(s)"), "{out}");
    let store = open_with(&db, Vault::from_base64(&new_key).expect("key")).await;
    assert_eq!(store.get(&case.id).await.expect("get"), None);
}

/// The engine runs retention passes on its own: a cancelled case's personal data goes once
/// its period (here zero) has passed.
#[tokio::test]
async fn the_engine_shreds_ended_cases_on_its_schedule() {
    use crate::helpers::{Options, spawn_app_opts, test_vault_key};
    let dir = tempfile::tempdir().expect("dir");
    let db = TestDb::sqlite(dir.path());
    // The ended case is there before the engine starts (the engine would otherwise report a
    // new case before it could be cancelled).
    let store = open_with(&db, Vault::from_base64(&test_vault_key()).expect("key")).await;
    let case = store
        .create(cmd(None, "f", "9200001"))
        .await
        .expect("create")
        .into_case();
    store
        .apply(&case.id, None, &Event::Cancel, meta("SE1655999991-E1"))
        .await
        .expect("cancel");
    let _app = spawn_app_opts(Options {
        db: Some(db.url.clone()),
        retention: Some(RetentionSettings {
            personal_data: Duration::ZERO,
            interval: Duration::from_millis(50),
            ..RetentionSettings::default()
        }),
        ..Options::default()
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let record = store.record(&case.id).await.expect("record").expect("kept");
        if record.shredded_at.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the engine did not shred the ended case in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.get(&case.id).await.expect("get"), None);
}

/// A master key rotated out and destroyed: the audit chains made under it keep verifying from
/// its exported chain key (`keys export-audit-key`, `privacy.audit_chain_key_files`), in the
/// store and in `audit verify`; without the export the verifier names the unknown key.
#[tokio::test]
async fn a_retired_master_keys_chains_verify_from_its_exported_chain_key() {
    use crate::launcher::run_once;
    use base64::Engine;
    use etjanstekort_gateway::privacy::{PrivacySettings, key_id_of};
    use etjanstekort_gateway::storage::ChainProblem;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().to_str().expect("utf-8 path");
    let dev = ["--dev", "--data-dir", data];
    fn args<'a>(dev: [&'a str; 3], cmd: &[&'a str]) -> Vec<&'a str> {
        cmd.iter().copied().chain(dev).collect()
    }
    let (ok, _, err) = run_once(&args(dev, &["migrate"]), &[]);
    assert!(ok, "{err}");
    let master_a = std::fs::read_to_string(dir.path().join("master.key")).expect("dev key");
    let raw_a = base64::engine::general_purpose::STANDARD
        .decode(master_a.trim())
        .expect("base64");
    let a_id = key_id_of(&raw_a);
    let db = TestDb {
        url: format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("etjanstekort.sqlite").display()
        ),
        name: String::new(),
    };
    // One case chained wholly under A, one begun under A and ended under B.
    let store = open_with(&db, Vault::from_base64(&master_a).expect("key")).await;
    let under_a = store
        .create(cmd(None, "f", "9200001"))
        .await
        .expect("create")
        .into_case();
    store
        .apply(&under_a.id, None, &Event::Cancel, meta("SE1655999991-E1"))
        .await
        .expect("cancel");
    let spanning = store
        .create(cmd(None, "f", "9200002"))
        .await
        .expect("create")
        .into_case();
    drop(store);
    let master_b = base64::engine::general_purpose::STANDARD.encode(key(6));
    let b_id = key_id_of(&key(6));
    let ring = Vault::keyring(
        &[&raw_a, &key(6)],
        Some(&b_id),
        PseudonymKey::Master(a_id.clone()),
    )
    .expect("keyring");
    let store = open_with(&db, ring).await;
    store
        .apply(&spanning.id, None, &Event::Cancel, meta("SE1655999991-E1"))
        .await
        .expect("cancel");
    let moved = etjanstekort_gateway::keys::reencrypt(&store, 10, &mut |_, _| {})
        .await
        .expect("reencrypt");
    assert_eq!(moved.moved, 2);
    drop(store);

    // A's chain key exported (0600, never over a file) while A is still configured.
    let rotated = [
        ("ETK_PRIVACY__MASTER_KEYS", format!("[\"{master_b}\"]")),
        ("ETK_PRIVACY__CURRENT_KEY", b_id.clone()),
        ("ETK_PRIVACY__PSEUDONYM_KEY_ID", a_id.clone()),
    ];
    let exported = dir.path().join("a.audit-key");
    let out_arg = exported.to_str().expect("utf-8 path");
    let export = [
        "keys",
        "export-audit-key",
        "--key-id",
        &a_id,
        "--out",
        out_arg,
    ];
    let (ok, _, err) = run_once(&args(dev, &export), &rotated);
    assert!(ok, "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&exported)
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (ok, _, _) = run_once(&args(dev, &export), &rotated);
    assert!(!ok, "an existing file is not overwritten");
    assert!(
        !std::fs::read_to_string(&exported)
            .expect("export")
            .contains(master_a.trim()),
        "the master key itself is not exported"
    );

    // A is gone: only B is configured (the key wins over the dev key file).
    let only_b = [("ETK_PRIVACY__MASTER_KEY", master_b.clone())];
    let (ok, out, _) = run_once(&args(dev, &["audit", "verify"]), &only_b);
    assert!(!ok, "{out}");
    assert!(
        out.contains("unknown_key") && out.contains(&a_id) && out.contains("2 broken"),
        "{out}"
    );
    let mut with_export = only_b.to_vec();
    with_export.push((
        "ETK_PRIVACY__AUDIT_CHAIN_KEY_FILES",
        format!("[\"{out_arg}\"]"),
    ));
    let (ok, out, err) = run_once(&args(dev, &["audit", "verify"]), &with_export);
    assert!(ok, "{out}{err}");
    assert!(out.contains("2 case(s) verified"), "{out}");

    // The store sees the same, and every case still reads under B.
    let settings = PrivacySettings {
        master_key: Some(master_b.clone().into()),
        audit_chain_key_files: vec![exported.clone()],
        ..PrivacySettings::default()
    };
    let store = open_with(&db, Vault::load(&settings).expect("vault")).await;
    for id in [&under_a.id, &spanning.id] {
        let chain = store.verify_audit(id).await.expect("verify");
        assert!(chain.broken.is_none(), "{chain:?}");
        assert!(store.get(id).await.expect("get").is_some());
    }
    drop(store);
    let store = open_with(&db, Vault::from_base64(&master_b).expect("key")).await;
    for id in [&under_a.id, &spanning.id] {
        let chain = store.verify_audit(id).await.expect("verify");
        assert_eq!(
            chain.broken.map(|b| (b.sequence, b.problem)),
            Some((1, ChainProblem::UnknownKey))
        );
    }
}
