//! The case store's contract, run on SQLite always and on PostgreSQL when
//! `ETK_TEST_POSTGRES_URL` is set.

use std::sync::Arc;
use std::time::Duration;

use etjanstekort_gateway::domain::saga::Event;
use etjanstekort_gateway::domain::{
    CardHolder, CardNumber, Email, HsaId, KivRemovalRoute, NewDeregistration, PersonName,
    Personnummer, Reason, Reporter, State, Timestamp,
};
use etjanstekort_gateway::privacy::Vault;
use etjanstekort_gateway::storage::{
    CaseStore, CreateCase, Created, EventMeta, ListQuery, SeaStore, StoreError,
};
use sea_orm::{ConnectionTrait, Database};

use crate::helpers::{TestDb, test_vault_key};

async fn open(db: &TestDb) -> SeaStore {
    let vault = Arc::new(Vault::from_base64(&test_vault_key()).expect("key"));
    let store = SeaStore::connect(&db.url, 8, Duration::from_secs(5), vault)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

pub(crate) fn hsa(s: &str) -> HsaId {
    HsaId::parse(s).expect("hsa")
}

pub(crate) fn report(card: &str) -> NewDeregistration {
    NewDeregistration {
        care_unit: hsa("SE1655999991-S1"),
        card_holder: CardHolder {
            personnummer: Personnummer::parse(
                "19121212-1212",
                etjanstekort_gateway::clock::now().utc_date(),
            )
            .expect("pnr"),
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
    }
}

pub(crate) fn meta(actor: &str) -> EventMeta {
    EventMeta {
        actor: actor.into(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        at: etjanstekort_gateway::clock::now(),
        detail: String::new(),
    }
}

pub(crate) fn cmd(request_id: Option<&str>, fingerprint: &str, card: &str) -> CreateCase {
    CreateCase {
        id: etjanstekort_gateway::clock::new_case_id(),
        principal: hsa("SE1655999991-E1"),
        care_provider: hsa("SE1655999991-E1"),
        request_id: request_id.map(str::to_owned),
        fingerprint: fingerprint.into(),
        report: report(card),
        meta: meta("SE1655999991-E1"),
        trace_parent: None,
    }
}

async fn contract(db: TestDb) {
    let store = open(&db).await;
    // Create, then replay by request_id, then conflict on content.
    let created = store
        .create(cmd(Some("r1"), "f1", "1000001"))
        .await
        .expect("create");
    let Created::New(case) = created else {
        panic!("expected a new case")
    };
    assert_eq!(case.state, State::Accepted);
    assert_eq!(case.report, report("1000001"));
    let replay = store
        .create(cmd(Some("r1"), "f1", "1000001"))
        .await
        .expect("replay");
    assert_eq!(replay, Created::Replayed(case.clone()));
    assert!(matches!(
        store.create(cmd(Some("r1"), "other", "1000002")).await,
        Err(StoreError::RequestIdReused)
    ));
    // The caller's request id is kept only as a keyed digest.
    let raw = Database::connect(&db.url).await.expect("raw");
    let keys = raw
        .query_all_raw(sea_orm::Statement::from_string(
            raw.get_database_backend(),
            "SELECT request_id FROM idempotency_keys",
        ))
        .await
        .expect("keys");
    assert_eq!(keys.len(), 1);
    let key: String = keys[0].try_get("", "request_id").expect("request_id");
    assert!(
        key != "r1" && key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    // A record written by an earlier release, with the id in clear, still replays.
    raw.execute_unprepared("UPDATE idempotency_keys SET request_id = 'r1'")
        .await
        .expect("a record as earlier releases wrote it");
    assert_eq!(
        store
            .create(cmd(Some("r1"), "f1", "1000001"))
            .await
            .expect("replay"),
        Created::Replayed(case.clone())
    );
    assert!(matches!(
        store.create(cmd(None, "f3", "1000001")).await,
        Err(StoreError::ActiveCaseExists)
    ));
    // Nothing of the refused requests was stored.
    let all = store
        .list(&ListQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(all.len(), 1);

    // A transition appends a chained event; a repeat changes nothing.
    let cancelled = store
        .apply(
            &case.id,
            Some(&case.care_provider),
            &Event::Cancel,
            meta("SE1655999991-E1"),
        )
        .await
        .expect("cancel");
    assert_eq!(cancelled.state, State::Cancelled);
    store
        .apply(
            &case.id,
            Some(&case.care_provider),
            &Event::Cancel,
            meta("SE1655999991-E1"),
        )
        .await
        .expect("repeat");
    assert!(matches!(
        store
            .apply(
                &case.id,
                Some(&hsa("SE1655999991-E2")),
                &Event::Cancel,
                meta("x")
            )
            .await,
        Err(StoreError::NotFound)
    ));
    let events = store.events(&case.id).await.expect("events");
    assert_eq!(
        events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["accepted", "cancelled"]
    );
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        store.verify_audit(&case.id).await.expect("verify").broken,
        None
    );

    // The card is free again once the case is terminal.
    store
        .create(cmd(None, "f4", "1000001"))
        .await
        .expect("card freed");

    let conn = Database::connect(&db.url).await.expect("raw connection");
    // The audit trail is append-only in the database itself.
    for sql in [
        "UPDATE case_events SET actor = 'x'",
        "DELETE FROM case_events",
    ] {
        assert!(
            conn.execute_unprepared(sql).await.is_err(),
            "{sql} was allowed"
        );
    }
    // Personal data is not in the clear at rest.
    let rows = conn
        .query_all_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT sensitive, holder_pseudonym FROM cases",
        ))
        .await
        .expect("rows");
    for row in rows {
        let blob: Vec<u8> = row.try_get("", "sensitive").expect("blob");
        let text = String::from_utf8_lossy(&blob);
        assert!(
            !text.contains("1212121212") && !text.contains("Tolvan"),
            "plaintext at rest"
        );
        let pseudonym: String = row.try_get("", "holder_pseudonym").expect("pseudonym");
        assert!(!pseudonym.contains("1212121212"));
    }

    // The creating request's trace context is kept with the case and read back as stored;
    // a case created without one has none.
    assert_eq!(case.trace_parent, None);
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let traced = store
        .create(CreateCase {
            trace_parent: Some(tp.into()),
            ..cmd(None, "f9", "1000009")
        })
        .await
        .expect("create")
        .into_case();
    assert_eq!(traced.trace_parent.as_deref(), Some(tp));
    let read = store.get(&traced.id).await.expect("get").expect("case");
    assert_eq!(read.trace_parent.as_deref(), Some(tp));
    let listed = store
        .get_many(std::slice::from_ref(&traced.id))
        .await
        .expect("get_many");
    assert_eq!(listed[0].trace_parent.as_deref(), Some(tp));
}

#[tokio::test]
async fn store_contract_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    contract(TestDb::sqlite(dir.path())).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn store_contract_on_postgres() {
    let db = TestDb::postgres().await;
    contract(db).await;
}

#[tokio::test]
async fn unreadable_data_is_reported_not_guessed() {
    let dir = tempfile::tempdir().expect("dir");
    let db = TestDb::sqlite(dir.path());
    let store = open(&db).await;
    let case = store
        .create(cmd(None, "f", "2000001"))
        .await
        .expect("create")
        .into_case();
    drop(store);
    // The same database opened with another master key cannot read the personal data.
    let other = Arc::new(Vault::from_master_key(&[9u8; 32]).expect("key"));
    let store = SeaStore::connect(&db.url, 1, Duration::from_secs(5), other)
        .await
        .expect("connect");
    assert!(matches!(
        store.get(&case.id).await,
        Err(StoreError::Corrupt(_))
    ));
}

/// The personal data is sealed to its case: another case's ciphertext copied into a row does
/// not decrypt there (a moved or swapped blob is never read as this case's holder).
#[tokio::test]
async fn personal_data_is_bound_to_its_case() {
    let dir = tempfile::tempdir().expect("dir");
    let db = TestDb::sqlite(dir.path());
    let store = open(&db).await;
    let a = store
        .create(cmd(None, "f", "2100001"))
        .await
        .expect("create")
        .into_case();
    let b = store
        .create(cmd(None, "f", "2100002"))
        .await
        .expect("create")
        .into_case();
    let conn = Database::connect(&db.url).await.expect("raw");
    conn.execute_unprepared(&format!(
        "UPDATE cases SET sensitive = (SELECT sensitive FROM cases WHERE id = '{}') WHERE id = '{}'",
        a.id, b.id
    ))
    .await
    .expect("copy a's personal data into b");
    assert!(store.get(&a.id).await.expect("a").is_some());
    assert!(matches!(
        store.get(&b.id).await,
        Err(StoreError::Corrupt(_))
    ));
}

async fn outbox_contract(db: TestDb) {
    use etjanstekort_gateway::domain::saga::Step;
    use etjanstekort_gateway::storage::{Finished, WorkResult};
    let store = open(&db).await;
    let lease = Duration::from_secs(30);
    let case = store
        .create(cmd(None, "f", "3000001"))
        .await
        .expect("create")
        .into_case();

    // A new case starts with its KIV snapshot and its report, side by side; each claimable once.
    let a = store
        .claim("owner-a", etjanstekort_gateway::clock::now(), lease, 10)
        .await
        .expect("claim");
    let mut steps: Vec<_> = a.iter().map(|w| (w.step, w.key.clone())).collect();
    steps.sort_by_key(|(s, _)| s.name());
    assert_eq!(
        steps,
        vec![
            (Step::Report, format!("{}:report", case.id)),
            (Step::Snapshot, format!("{}:snapshot", case.id))
        ]
    );
    assert!(
        store
            .claim("owner-b", etjanstekort_gateway::clock::now(), lease, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    let work = |batch: &[etjanstekort_gateway::storage::Work], step: Step| {
        batch
            .iter()
            .find(|w| w.step == step)
            .cloned()
            .expect("claimed")
    };
    let done = |w: etjanstekort_gateway::storage::Work, event: Event| Finished {
        work: w,
        result: WorkResult::Done {
            event: Some(event),
            snapshot: None,
            detail: String::new(),
        },
    };

    // A result from a worker that does not hold the lease is dropped.
    store
        .finish(
            "owner-b",
            vec![done(
                work(&a, Step::Snapshot),
                Event::SnapshotTaken { found: false },
            )],
        )
        .await
        .expect("finish");
    assert_eq!(store.events(&case.id).await.expect("events").len(), 1);
    // So is its failure: the holder's effect stays pending, the case unchanged.
    store
        .finish(
            "owner-b",
            vec![Finished {
                work: work(&a, Step::Report),
                result: WorkResult::Failed {
                    error: "not mine to report".into(),
                },
            }],
        )
        .await
        .expect("finish");
    assert_eq!(store.events(&case.id).await.expect("events").len(), 1);

    // After the lease runs out, another worker takes the effects over under the same keys.
    let later = Timestamp(etjanstekort_gateway::clock::now().0 + 60_000_000);
    let b = store
        .claim("owner-b", later, lease, 10)
        .await
        .expect("claim");
    let mut keys: Vec<_> = b.iter().map(|w| w.key.clone()).collect();
    keys.sort();
    let mut expected: Vec<_> = a.iter().map(|w| w.key.clone()).collect();
    expected.sort();
    assert_eq!(keys, expected);
    store
        .finish(
            "owner-b",
            vec![
                done(
                    work(&b, Step::Snapshot),
                    Event::SnapshotTaken { found: false },
                ),
                done(work(&b, Step::Report), Event::ReportSent),
            ],
        )
        .await
        .expect("finish");
    let events = store.events(&case.id).await.expect("events");
    assert_eq!(
        events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        [
            "accepted",
            "kiv_employment_not_found",
            "revocation_requested"
        ]
    );
    assert_eq!(
        store.verify_audit(&case.id).await.expect("verify").broken,
        None
    );
    // ... and the original owner's late result changes nothing.
    store
        .finish(
            "owner-a",
            vec![done(work(&a, Step::Report), Event::ReportSent)],
        )
        .await
        .expect("late finish");
    assert_eq!(
        store.events(&case.id).await.expect("events").len(),
        events.len()
    );

    // The result enqueued the next step (the outcome poll, a second on), in the same transaction.
    let next = store
        .claim("owner-a", Timestamp(later.0 + 2_000_000), lease, 10)
        .await
        .expect("claim");
    assert_eq!(
        next.iter().map(|w| w.step).collect::<Vec<_>>(),
        vec![Step::PollOutcome]
    );

    // Concurrent claimers never get the same effect.
    for i in 0..40 {
        store
            .create(cmd(None, "f", &format!("31{i:05}")))
            .await
            .expect("create");
    }
    let mut claims = Vec::new();
    for o in 0..4 {
        let s = store.clone();
        claims.push(tokio::spawn(async move {
            s.claim(
                &format!("c{o}"),
                etjanstekort_gateway::clock::now(),
                Duration::from_secs(30),
                15,
            )
            .await
            .expect("claim")
        }));
    }
    let mut keys = Vec::new();
    for c in claims {
        keys.extend(c.await.expect("join").into_iter().map(|w| w.key));
    }
    let unique: std::collections::HashSet<_> = keys.iter().cloned().collect();
    assert_eq!(unique.len(), keys.len(), "an effect was claimed twice");
    assert_eq!(keys.len(), 60, "4 claimers × 15 out of 80 due effects");
}

#[tokio::test]
async fn outbox_contract_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    outbox_contract(TestDb::sqlite(dir.path())).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn outbox_contract_on_postgres() {
    let db = TestDb::postgres().await;
    outbox_contract(db).await;
}

#[tokio::test]
async fn one_unreadable_row_does_not_take_the_others_with_it() {
    let dir = tempfile::tempdir().expect("dir");
    let db = TestDb::sqlite(dir.path());
    let store = open(&db).await;
    let good = store
        .create(cmd(None, "f", "4000001"))
        .await
        .expect("create")
        .into_case();
    let bad = store
        .create(cmd(None, "f", "4000002"))
        .await
        .expect("create")
        .into_case();
    let conn = Database::connect(&db.url).await.expect("raw");
    conn.execute_unprepared(&format!(
        "UPDATE cases SET sensitive = x'00' WHERE id = '{}'",
        bad.id
    ))
    .await
    .expect("corrupt one row");
    let many = store
        .get_many(&[good.id.clone(), bad.id.clone()])
        .await
        .expect("get_many");
    assert_eq!(
        many.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        vec![good.id.clone()]
    );
    let listed = store
        .list(&ListQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert!(matches!(
        store.get(&bad.id).await,
        Err(StoreError::Corrupt(_))
    ));
}

/// The store's own guard, behind the saga's rule: even if a row claims to await its removal from
/// KIV without a recorded (and, with the check on, verified) confirmation — a bug, a hand edit —
/// no KIV removal is enqueued and nothing changes. (An operator's retry of such a row is the
/// one event the saga lets through to the guard: it resumes where the row says it stopped.)
async fn kiv_removal_needs_a_recorded_revocation(db: TestDb) {
    let store = open(&db).await;
    let conn = Database::connect(&db.url).await.expect("raw");
    for (card, edit) in [
        ("5000001", ""),
        // Confirmed, but the revocation check is on and has not verified it.
        (
            "5000002",
            ", revocation_confirmed_at = 1, revocation_reference = 'R', revocation_check = 'required'",
        ),
    ] {
        let mut c = cmd(None, "f", card);
        c.report.route = KivRemovalRoute::CareProvider;
        let case = store.create(c).await.expect("create").into_case();
        conn.execute_unprepared(&format!(
            "UPDATE cases SET state = 'needs_attention', attention_from = 'kiv_removal_pending'{edit} WHERE id = '{}'",
            case.id
        ))
        .await
        .expect("a row that skipped the confirmation");
        let refused = store
            .apply(&case.id, None, &Event::OperatorRetry, meta("operator"))
            .await;
        assert!(
            matches!(refused, Err(StoreError::Invariant(_))),
            "{card}: {refused:?}"
        );
        let after = store.get(&case.id).await.expect("get").expect("case");
        assert_eq!(after.state, State::NeedsAttention);
        assert_eq!(store.events(&case.id).await.expect("events").len(), 1);
    }
    let far = Timestamp(etjanstekort_gateway::clock::now().0 + 86_400_000_000);
    let work = store
        .claim("w", far, Duration::from_secs(30), 100)
        .await
        .expect("claim");
    assert!(
        work.iter()
            .all(|w| w.step != etjanstekort_gateway::domain::saga::Step::RemoveKiv),
        "{work:?}"
    );
}

#[tokio::test]
async fn kiv_removal_needs_a_recorded_revocation_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    kiv_removal_needs_a_recorded_revocation(TestDb::sqlite(dir.path())).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn kiv_removal_needs_a_recorded_revocation_on_postgres() {
    let db = TestDb::postgres().await;
    kiv_removal_needs_a_recorded_revocation(db).await;
}

/// Group commit (issue 12): creates that arrive together share transactions, and each one that
/// is refused fails alone, with its own error, while the rest of its batch is stored. On
/// PostgreSQL (`shared` false) every write runs in a transaction of its own, concurrently, and
/// the answers are the same.
async fn concurrent_creates_share_commits(db: TestDb, shared: bool) {
    let store = open(&db).await;
    for i in 0..5 {
        store
            .create(cmd(Some(&format!("base-{i}")), "f", &format!("200000{i}")))
            .await
            .expect("base case");
    }
    let before = store.write_counts();
    let mut calls = Vec::new();
    let mut spawn = |c: CreateCase, expect: &'static str| {
        let store = store.clone();
        calls.push((expect, tokio::spawn(async move { store.create(c).await })));
    };
    for i in 0..5 {
        // The same request again; its id with other content; a new id for an active card.
        spawn(
            cmd(Some(&format!("base-{i}")), "f", &format!("200000{i}")),
            "replayed",
        );
        spawn(
            cmd(Some(&format!("base-{i}")), "other", "2999999"),
            "reused",
        );
        spawn(
            cmd(Some(&format!("dup-{i}")), "f", &format!("200000{i}")),
            "active",
        );
    }
    for i in 0..40 {
        spawn(
            cmd(Some(&format!("new-{i}")), "f", &format!("3000{i:03}")),
            "new",
        );
    }
    // Within the batch: a request sent twice, an id used for two reports, a card twice. Which
    // of a pair comes first is the writer's order on SQLite and a race on PostgreSQL, so each
    // pair is judged as a whole.
    for i in 0..3 {
        let twin = || cmd(Some(&format!("twin-{i}")), "f", &format!("400000{i}"));
        spawn(twin(), "pair:twin");
        spawn(twin(), "pair:twin");
        spawn(
            cmd(Some(&format!("both-{i}")), "f", &format!("500000{i}")),
            "pair:both",
        );
        spawn(
            cmd(Some(&format!("both-{i}")), "g", &format!("510000{i}")),
            "pair:both",
        );
        spawn(
            cmd(Some(&format!("card-{i}")), "f", &format!("600000{i}")),
            "pair:card",
        );
        spawn(
            cmd(Some(&format!("card2-{i}")), "f", &format!("600000{i}")),
            "pair:card",
        );
    }
    let kind = |got: &Result<Created, StoreError>| match got {
        Ok(Created::New(_)) => "new",
        Ok(Created::Replayed(_)) => "replayed",
        Err(StoreError::RequestIdReused) => "reused",
        Err(StoreError::ActiveCaseExists) => "active",
        _ => "unexpected",
    };
    let mut pairs: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    let mut twin_ids: std::collections::HashMap<String, Vec<_>> = Default::default();
    for (expect, call) in calls {
        let got = call.await.expect("joined");
        let Some(pair) = expect.strip_prefix("pair:") else {
            assert_eq!(kind(&got), expect, "{got:?}");
            continue;
        };
        pairs.entry(pair).or_default().push(kind(&got));
        if let (Ok(Created::New(c) | Created::Replayed(c)), "twin") = (&got, pair) {
            twin_ids
                .entry(c.report.card_number.to_string())
                .or_default()
                .push(c.id.clone());
        }
    }
    let mut sorted = |pair: &str| {
        let mut k = pairs.remove(pair).unwrap_or_default();
        k.sort_unstable();
        k
    };
    assert_eq!(
        sorted("twin"),
        ["new", "new", "new", "replayed", "replayed", "replayed"],
        "a request sent twice: one new case, one replay"
    );
    assert_eq!(
        sorted("both"),
        ["new", "new", "new", "reused", "reused", "reused"],
        "an id sent with two reports: one new case, one refusal"
    );
    assert_eq!(
        sorted("card"),
        ["active", "active", "active", "new", "new", "new"],
        "a card reported twice: one new case, one refusal"
    );
    assert_eq!(twin_ids.len(), 3);
    for ids in twin_ids.values() {
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], ids[1], "a request sent twice is one case");
    }
    let listed = store
        .list(&ListQuery {
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(
        listed.len(),
        54,
        "the 5 first cases, the 40 new ones and 9 from within the batch"
    );
    let after = store.write_counts();
    let (commits, jobs) = (after.commits - before.commits, after.jobs - before.jobs);
    // 49 new cases and 8 replays committed; the refusals are answered without a commit.
    assert_eq!(jobs, 57);
    if shared {
        assert!(
            commits * 4 <= jobs,
            "{jobs} writes took {commits} commits: concurrent writes did not share them"
        );
    } else {
        assert_eq!(commits, jobs, "PostgreSQL: one transaction per write");
    }
}

#[tokio::test]
async fn concurrent_creates_share_commits_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    concurrent_creates_share_commits(TestDb::sqlite(dir.path()), true).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn concurrent_creates_answer_alike_on_postgres() {
    concurrent_creates_share_commits(TestDb::postgres().await, false).await;
}

/// Within one batch, a request id whose first request is refused (its card already has an
/// active case) stores nothing, so the next request with that id is new, as one by one.
#[tokio::test]
async fn an_id_whose_first_request_was_refused_is_free_within_a_batch() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&TestDb::sqlite(dir.path())).await;
    store
        .create(cmd(Some("held"), "f", "8000001"))
        .await
        .expect("the card's active case");
    let (a, b) = (store.clone(), store.clone());
    // Spawned in this order on the test's one thread: queued together, in this order.
    let first = tokio::spawn(async move { a.create(cmd(Some("again"), "f", "8000001")).await });
    let second = tokio::spawn(async move { b.create(cmd(Some("again"), "g", "8000002")).await });
    assert!(matches!(
        first.await.expect("joined"),
        Err(StoreError::ActiveCaseExists)
    ));
    assert!(matches!(second.await.expect("joined"), Ok(Created::New(_))));
}
