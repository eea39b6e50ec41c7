//! Retention and key rotation: per-case data keys (crypto-shredding), when a case ended and
//! when its personal data was destroyed, and the one audited way to delete a case's audit
//! trail once its record has been kept for the retention period.
//!
//! Rows written before this migration keep `data_key` NULL: their `sensitive` and
//! `kiv_snapshot` stay sealed directly by the master key (layout v1) and are read as before;
//! `keys reencrypt` gives them a data key of their own. Shredding works on both kinds (the
//! ciphertexts are nulled; for a legacy row the copies in old backups go with the old master
//! key, see docs/privacy.md).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::run_all;

#[derive(DeriveMigrationName)]
pub struct Migration;

const STATEMENTS: &[&str] = &[
    // The case's random data key, wrapped (AEAD) by the master key named in `key_id`. NULL for a
    // row from before this migration (sealed by the master key itself) and after shredding.
    "ALTER TABLE cases ADD COLUMN data_key {blob} NULL",
    "ALTER TABLE cases ADD COLUMN key_id TEXT NULL",
    // When the case reached a terminal state: the retention periods count from here.
    "ALTER TABLE cases ADD COLUMN ended_at BIGINT NULL",
    // When its personal data was destroyed (the data key and every ciphertext nulled).
    "ALTER TABLE cases ADD COLUMN shredded_at BIGINT NULL",
    // Cases that ended before this migration count from their last change.
    "UPDATE cases SET ended_at = updated_at WHERE state IN ('completed', 'rejected', 'cancelled')",
    "CREATE INDEX cases_ended ON cases (ended_at)",
    "CREATE INDEX cases_key_id ON cases (key_id)",
    "CREATE INDEX effects_done ON effects (status, updated_at)",
    // One row per purged case, kept for good: the audited trace of the only deletions the
    // audit trail allows. Its presence is what lets the trigger below delete that case's
    // events; a marker can only be written for a case whose personal data is already gone.
    "CREATE TABLE retention_purges (
        case_id TEXT NOT NULL PRIMARY KEY,
        ended_at BIGINT NOT NULL,
        purged_at BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        last_hash TEXT NOT NULL
    )",
];

const SQLITE_TRIGGERS: &[&str] = &[
    "DROP TRIGGER case_events_no_delete",
    "CREATE TRIGGER case_events_no_delete BEFORE DELETE ON case_events
     WHEN NOT EXISTS (SELECT 1 FROM retention_purges p WHERE p.case_id = OLD.case_id)
     BEGIN SELECT RAISE(ABORT, 'case_events is append-only'); END",
    "CREATE TRIGGER retention_purges_only_shredded BEFORE INSERT ON retention_purges
     WHEN NOT EXISTS (SELECT 1 FROM cases c WHERE c.id = NEW.case_id AND c.shredded_at IS NOT NULL)
     BEGIN SELECT RAISE(ABORT, 'only a shredded case may be purged'); END",
    "CREATE TRIGGER retention_purges_no_update BEFORE UPDATE ON retention_purges
     BEGIN SELECT RAISE(ABORT, 'retention_purges is append-only'); END",
    "CREATE TRIGGER retention_purges_no_delete BEFORE DELETE ON retention_purges
     BEGIN SELECT RAISE(ABORT, 'retention_purges is append-only'); END",
];

const POSTGRES_TRIGGERS: &[&str] = &[
    // UPDATE stays refused; DELETE only for a case with a purge marker.
    "DROP TRIGGER case_events_append_only ON case_events",
    "CREATE TRIGGER case_events_append_only BEFORE UPDATE ON case_events
     FOR EACH ROW EXECUTE FUNCTION etk_append_only()",
    "CREATE FUNCTION etk_purge_marked() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
       IF NOT EXISTS (SELECT 1 FROM retention_purges p WHERE p.case_id = OLD.case_id) THEN
         RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
       END IF;
       RETURN OLD;
     END $$",
    "CREATE TRIGGER case_events_purge_marked BEFORE DELETE ON case_events
     FOR EACH ROW EXECUTE FUNCTION etk_purge_marked()",
    "CREATE FUNCTION etk_purge_only_shredded() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
       IF NOT EXISTS (SELECT 1 FROM cases c WHERE c.id = NEW.case_id AND c.shredded_at IS NOT NULL) THEN
         RAISE EXCEPTION 'only a shredded case may be purged';
       END IF;
       RETURN NEW;
     END $$",
    "CREATE TRIGGER retention_purges_only_shredded BEFORE INSERT ON retention_purges
     FOR EACH ROW EXECUTE FUNCTION etk_purge_only_shredded()",
    "CREATE TRIGGER retention_purges_append_only BEFORE UPDATE OR DELETE ON retention_purges
     FOR EACH ROW EXECUTE FUNCTION etk_append_only()",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let postgres = manager.get_database_backend() == DbBackend::Postgres;
        let blob = if postgres { "BYTEA" } else { "BLOB" };
        let stmts: Vec<String> = STATEMENTS
            .iter()
            .map(|s| s.replace("{blob}", blob))
            .collect();
        let stmts: Vec<&str> = stmts.iter().map(String::as_str).collect();
        run_all(manager, &stmts).await?;
        run_all(
            manager,
            if postgres {
                POSTGRES_TRIGGERS
            } else {
                SQLITE_TRIGGERS
            },
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let postgres = manager.get_database_backend() == DbBackend::Postgres;
        let triggers: &[&str] = if postgres {
            &[
                "DROP TABLE retention_purges",
                "DROP TRIGGER case_events_purge_marked ON case_events",
                "DROP FUNCTION etk_purge_marked()",
                "DROP FUNCTION etk_purge_only_shredded()",
                "DROP TRIGGER case_events_append_only ON case_events",
                "CREATE TRIGGER case_events_append_only BEFORE UPDATE OR DELETE ON case_events
                 FOR EACH ROW EXECUTE FUNCTION etk_append_only()",
            ]
        } else {
            &[
                "DROP TABLE retention_purges",
                "DROP TRIGGER case_events_no_delete",
                "CREATE TRIGGER case_events_no_delete BEFORE DELETE ON case_events
                 BEGIN SELECT RAISE(ABORT, 'case_events is append-only'); END",
            ]
        };
        run_all(manager, triggers).await?;
        run_all(
            manager,
            &[
                "DROP INDEX effects_done",
                "DROP INDEX cases_key_id",
                "DROP INDEX cases_ended",
                "ALTER TABLE cases DROP COLUMN shredded_at",
                "ALTER TABLE cases DROP COLUMN ended_at",
                "ALTER TABLE cases DROP COLUMN key_id",
                "ALTER TABLE cases DROP COLUMN data_key",
            ],
        )
        .await
    }
}
