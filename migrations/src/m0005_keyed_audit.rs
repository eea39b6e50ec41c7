//! The keyed audit chain: the key id of each event's HMAC, a sealed chain head on the case row,
//! and no REPLACE or TRUNCATE path around the append-only triggers of m0001.
//!
//! Events written before this migration keep `key_id` NULL: they are legacy links (plain
//! SHA-256), verified only as a prefix that a keyed event anchors (see `storage::audit`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::run_all;

#[derive(DeriveMigrationName)]
pub struct Migration;

const COLUMNS: &[&str] = &[
    // `Vault::key_id` of the key whose HMAC `hash` is; NULL for legacy events.
    "ALTER TABLE case_events ADD COLUMN key_id TEXT NULL",
    // `<key id>:<HMAC of (case id, last_seq, last_hash)>`, written with the head: rolling the
    // head back over a deleted tail needs the key.
    "ALTER TABLE cases ADD COLUMN head_seal TEXT NULL",
];

const SQLITE_TRIGGERS: &[&str] = &[
    // `INSERT OR REPLACE` deletes the conflicting row without firing DELETE triggers (unless
    // recursive triggers are on): refuse any insert of an existing (case, seq) before the
    // conflict is resolved.
    "CREATE TRIGGER case_events_no_replace BEFORE INSERT ON case_events
     WHEN EXISTS (SELECT 1 FROM case_events WHERE case_id = NEW.case_id AND seq = NEW.seq)
     BEGIN SELECT RAISE(ABORT, 'case_events is append-only'); END",
];

const POSTGRES_TRIGGERS: &[&str] = &[
    // Row triggers do not fire on TRUNCATE (nor on `TRUNCATE cases CASCADE`).
    "CREATE TRIGGER case_events_no_truncate BEFORE TRUNCATE ON case_events
     FOR EACH STATEMENT EXECUTE FUNCTION etk_append_only()",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_all(manager, COLUMNS).await?;
        let triggers = if manager.get_database_backend() == DbBackend::Postgres {
            POSTGRES_TRIGGERS
        } else {
            SQLITE_TRIGGERS
        };
        run_all(manager, triggers).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let trigger = if manager.get_database_backend() == DbBackend::Postgres {
            "DROP TRIGGER case_events_no_truncate ON case_events"
        } else {
            "DROP TRIGGER case_events_no_replace"
        };
        run_all(
            manager,
            &[
                trigger,
                "ALTER TABLE cases DROP COLUMN head_seal",
                "ALTER TABLE case_events DROP COLUMN key_id",
            ],
        )
        .await
    }
}
