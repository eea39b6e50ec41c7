//! The cases whose audit trail the gateway may still anchor in the keyed chain: those that,
//! when this migration ran, had events but no keyed one (a trail written entirely before m0005
//! that no start-up has anchored yet). `SeaStore::anchor_legacy_chains` anchors only these and
//! consumes the list; an all-legacy trail of any other case stays broken, so re-hashing a keyed
//! trail with plain SHA-256 and restarting the gateway does not make it verify.
//!
//! Likewise `audit_v1_seals`: the cases whose head seal was, when this migration ran, the v1
//! seal of m0005 (covering the head only). The gateway re-seals each (v2: also the row's state,
//! `updated_at` and `version`) once at start if its chain verifies, and consumes the list; the
//! verifier accepts no v1 seal from the database, so an old head replayed from a backup does not
//! verify.
//!
//! Once filled, the lists only shrink: inserts are refused by a trigger (the same defence the
//! append-only triggers give `case_events`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::run_all;

#[derive(DeriveMigrationName)]
pub struct Migration;

const STATEMENTS: &[&str] = &[
    "CREATE TABLE audit_legacy_cases (case_id TEXT NOT NULL PRIMARY KEY)",
    "INSERT INTO audit_legacy_cases (case_id)
     SELECT c.id FROM cases c
     WHERE EXISTS (SELECT 1 FROM case_events e WHERE e.case_id = c.id)
       AND NOT EXISTS (SELECT 1 FROM case_events e WHERE e.case_id = c.id AND e.key_id IS NOT NULL)",
    "CREATE TABLE audit_v1_seals (case_id TEXT NOT NULL PRIMARY KEY)",
    "INSERT INTO audit_v1_seals (case_id) SELECT id FROM cases WHERE head_seal IS NOT NULL",
];

const SQLITE_TRIGGERS: &[&str] = &[
    "CREATE TRIGGER audit_legacy_cases_no_insert BEFORE INSERT ON audit_legacy_cases
     BEGIN SELECT RAISE(ABORT, 'audit_legacy_cases is filled by m0008 only'); END",
    "CREATE TRIGGER audit_legacy_cases_no_update BEFORE UPDATE ON audit_legacy_cases
     BEGIN SELECT RAISE(ABORT, 'audit_legacy_cases is filled by m0008 only'); END",
    "CREATE TRIGGER audit_v1_seals_no_insert BEFORE INSERT ON audit_v1_seals
     BEGIN SELECT RAISE(ABORT, 'audit_v1_seals is filled by m0008 only'); END",
    "CREATE TRIGGER audit_v1_seals_no_update BEFORE UPDATE ON audit_v1_seals
     BEGIN SELECT RAISE(ABORT, 'audit_v1_seals is filled by m0008 only'); END",
];

const POSTGRES_TRIGGERS: &[&str] = &[
    "CREATE TRIGGER audit_legacy_cases_no_insert BEFORE INSERT OR UPDATE ON audit_legacy_cases
     FOR EACH ROW EXECUTE FUNCTION etk_append_only()",
    "CREATE TRIGGER audit_v1_seals_no_insert BEFORE INSERT OR UPDATE ON audit_v1_seals
     FOR EACH ROW EXECUTE FUNCTION etk_append_only()",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_all(manager, STATEMENTS).await?;
        let triggers = if manager.get_database_backend() == DbBackend::Postgres {
            POSTGRES_TRIGGERS
        } else {
            SQLITE_TRIGGERS
        };
        run_all(manager, triggers).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_all(
            manager,
            &["DROP TABLE audit_v1_seals", "DROP TABLE audit_legacy_cases"],
        )
        .await
    }
}
