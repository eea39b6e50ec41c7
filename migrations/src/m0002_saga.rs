//! The saga: case fields the state machine reads, the chain head on the case row, and the
//! transactional outbox of effects.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::run_all;

#[derive(DeriveMigrationName)]
pub struct Migration;

const STATEMENTS: &[&str] = &[
    "ALTER TABLE cases ADD COLUMN attention_from TEXT NULL",
    "ALTER TABLE cases ADD COLUMN snapshot_state TEXT NOT NULL DEFAULT 'pending'",
    // The KIV employment as it was at acceptance, AEAD-encrypted like `sensitive`.
    "ALTER TABLE cases ADD COLUMN kiv_snapshot {blob} NULL",
    "ALTER TABLE cases ADD COLUMN reported_at BIGINT NULL",
    // Set once when the revocation confirmation is recorded; never cleared. Enqueueing a KIV
    // removal checks it in the same transaction.
    "ALTER TABLE cases ADD COLUMN revocation_confirmed_at BIGINT NULL",
    "ALTER TABLE cases ADD COLUMN trace_id TEXT NOT NULL DEFAULT ''",
    // Head of the case's audit chain, so appending needs no extra read.
    "ALTER TABLE cases ADD COLUMN last_seq BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE cases ADD COLUMN last_hash TEXT NOT NULL DEFAULT ''",
    "UPDATE cases SET
        last_seq = (SELECT MAX(e.seq) FROM case_events e WHERE e.case_id = cases.id),
        last_hash = (SELECT e.hash FROM case_events e WHERE e.case_id = cases.id ORDER BY e.seq DESC LIMIT 1)
     WHERE EXISTS (SELECT 1 FROM case_events e WHERE e.case_id = cases.id)",
    // The outbox. `key` is the effect's idempotency key (case id + step [+ discriminator]):
    // the same key is passed to the connector on every attempt.
    "CREATE TABLE effects (
        key TEXT NOT NULL PRIMARY KEY,
        case_id TEXT NOT NULL REFERENCES cases (id),
        step TEXT NOT NULL,
        n BIGINT NOT NULL,
        due_at BIGINT NOT NULL,
        status TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        lease_owner TEXT NULL,
        lease_until BIGINT NULL,
        last_error TEXT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    )",
    "CREATE INDEX effects_due ON effects (status, due_at)",
    "CREATE INDEX effects_case ON effects (case_id, status)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let blob = if manager.get_database_backend() == DbBackend::Postgres {
            "BYTEA"
        } else {
            "BLOB"
        };
        let stmts: Vec<String> = STATEMENTS
            .iter()
            .map(|s| s.replace("{blob}", blob))
            .collect();
        let stmts: Vec<&str> = stmts.iter().map(String::as_str).collect();
        run_all(manager, &stmts).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_all(
            manager,
            &[
                "DROP TABLE effects",
                "ALTER TABLE cases DROP COLUMN attention_from",
                "ALTER TABLE cases DROP COLUMN snapshot_state",
                "ALTER TABLE cases DROP COLUMN kiv_snapshot",
                "ALTER TABLE cases DROP COLUMN reported_at",
                "ALTER TABLE cases DROP COLUMN revocation_confirmed_at",
                "ALTER TABLE cases DROP COLUMN trace_id",
                "ALTER TABLE cases DROP COLUMN last_seq",
                "ALTER TABLE cases DROP COLUMN last_hash",
            ],
        )
        .await
    }
}
