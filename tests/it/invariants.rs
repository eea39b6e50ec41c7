//! The architecture invariants' second lines of defence, each tested with the first line out of
//! the way, so that removing the enforcement turns this suite red (see ARCHITECTURE.md).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use etjanstekort_gateway::domain::saga::Event;
use etjanstekort_gateway::domain::{
    CardHolder, CardNumber, CaseId, Email, HsaId, KivRemovalRoute, NewDeregistration, PersonName,
    Personnummer, Reason, Reporter, Timestamp,
};
use etjanstekort_gateway::privacy::Vault;
use etjanstekort_gateway::storage::{CaseStore, CreateCase, EventMeta, SeaStore, StoreError};
use sea_orm::{ConnectionTrait, Database};

use crate::helpers::{TestDb, test_vault_key};

fn hsa(s: &str) -> HsaId {
    HsaId::parse(s).expect("hsa")
}

fn meta() -> EventMeta {
    EventMeta {
        actor: "system".into(),
        trace_id: String::new(),
        at: Timestamp(1_800_000_000_000_000),
        detail: String::new(),
    }
}

/// Revocation before KIV, second line: even when a case row claims `revoked` without a recorded
/// confirmation (a bug elsewhere, a hand edit), the store refuses to enqueue the KIV removal.
#[tokio::test]
async fn the_store_refuses_a_kiv_removal_without_a_recorded_confirmation() {
    let dir = tempfile::tempdir().expect("dir");
    let db = TestDb::sqlite(dir.path());
    let vault = Arc::new(Vault::from_base64(&test_vault_key()).expect("key"));
    let store = SeaStore::connect(&db.url, 1, Duration::from_secs(5), vault)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let id = CaseId::new();
    store
        .create(CreateCase {
            id: id.clone(),
            principal: hsa("SE1655999991-E1"),
            care_provider: hsa("SE1655999991-E1"),
            request_id: None,
            fingerprint: "f".into(),
            report: NewDeregistration {
                care_unit: hsa("SE1655999991-S1"),
                card_holder: CardHolder {
                    personnummer: Personnummer::parse("19121212-1212").expect("pnr"),
                    full_name: PersonName::parse("Tolvan Tolvansson").expect("name"),
                    email: None,
                },
                card_number: CardNumber::parse("4000001").expect("card"),
                reason: Reason::EmploymentEnded,
                card_received_at: Timestamp(1_700_000_000_000_000),
                reported_by: Reporter {
                    hsa_id: hsa("SE1655999991-P1"),
                    full_name: PersonName::parse("Vera Verksamhetschef").expect("name"),
                    email: Email::parse("vera@example.se").expect("email"),
                },
                route: KivRemovalRoute::CareProvider,
            },
            meta: meta(),
        })
        .await
        .expect("create");
    // The saga's own rule is out of the way: the row says `revoked`, the confirmation is missing.
    let raw = Database::connect(&db.url).await.expect("connect");
    raw.execute_unprepared(&format!(
        "UPDATE cases SET state = 'revoked', head_notified_at = 1 WHERE id = '{id}'"
    ))
    .await
    .expect("tamper");
    drop(raw);
    let err = store
        .apply(&id, None, &Event::NotificationsSent, meta())
        .await
        .expect_err("KIV removal enqueued without a recorded revocation");
    assert!(matches!(err, StoreError::Invariant(_)), "{err:?}");
    // Nothing was written: the case is still where it was, with no removal queued.
    let case = store.get(&id).await.expect("get").expect("case");
    assert_eq!(case.state.as_str(), "revoked");
    let raw = Database::connect(&db.url).await.expect("connect");
    let queued = raw
        .query_all_raw(sea_orm::Statement::from_string(
            raw.get_database_backend(),
            format!("SELECT key FROM effects WHERE case_id = '{id}' AND key LIKE '%remove_kiv%'"),
        ))
        .await
        .expect("query");
    assert!(queued.is_empty(), "a KIV removal was queued");
}

/// `domain` knows nothing of gRPC, SQL or I/O, and reads no clock: checked on its source.
#[test]
fn the_domain_imports_no_io_and_reads_no_clock() {
    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain"),
        &mut files,
    );
    assert!(files.len() > 3, "found the domain's sources");
    let forbidden = [
        "tonic",
        "prost",
        "sea_orm",
        "sqlx",
        "tokio",
        "std::fs",
        "std::net",
        "std::env",
        "std::process",
        "SystemTime",
        "Instant::now",
        "now_utc",
        "now_local",
        "Uuid::now_v7",
    ];
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{} mentions {word}: the domain must stay pure",
                f.display()
            );
        }
    }
}
