//! Cases, their append-only hash-chained audit trail, and idempotency records.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::run_all;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// `{blob}` is the only column type that differs between the dialects.
const TABLES: &[&str] = &[
    // Personnummer, names and e-mail addresses live only in `sensitive`, encrypted (AEAD);
    // `holder_pseudonym` is a keyed HMAC for look-ups. `active_card_number` is the card
    // number while the case is not terminal and NULL after: its UNIQUE constraint is the
    // "one active case per card" invariant, enforced by the database under concurrency.
    "CREATE TABLE cases (
        id TEXT NOT NULL PRIMARY KEY,
        care_provider_hsa_id TEXT NOT NULL,
        care_unit_hsa_id TEXT NOT NULL,
        card_number TEXT NOT NULL,
        active_card_number TEXT NULL UNIQUE,
        holder_pseudonym TEXT NOT NULL,
        sensitive {blob} NOT NULL,
        reason TEXT NOT NULL,
        kiv_removal_route TEXT NOT NULL,
        card_received_at BIGINT NOT NULL,
        reporter_hsa_id TEXT NOT NULL,
        state TEXT NOT NULL,
        state_reason TEXT NULL,
        revocation_reference TEXT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        version BIGINT NOT NULL
    )",
    "CREATE INDEX cases_provider_id ON cases (care_provider_hsa_id, id)",
    "CREATE INDEX cases_unit_state ON cases (care_unit_hsa_id, state)",
    "CREATE INDEX cases_state ON cases (state, id)",
    "CREATE INDEX cases_holder_pseudonym ON cases (holder_pseudonym)",
    // Append-only: each event's hash covers the previous event's hash of the same case.
    "CREATE TABLE case_events (
        case_id TEXT NOT NULL REFERENCES cases (id),
        seq BIGINT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        actor TEXT NOT NULL,
        occurred_at BIGINT NOT NULL,
        trace_id TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (case_id, seq)
    )",
    // (principal, request_id) is unique: a concurrent retry finds the first request's record.
    "CREATE TABLE idempotency_keys (
        principal_hsa_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        case_id TEXT NOT NULL REFERENCES cases (id),
        created_at BIGINT NOT NULL,
        PRIMARY KEY (principal_hsa_id, request_id)
    )",
];

const SQLITE_TRIGGERS: &[&str] = &[
    "CREATE TRIGGER case_events_no_update BEFORE UPDATE ON case_events
     BEGIN SELECT RAISE(ABORT, 'case_events is append-only'); END",
    "CREATE TRIGGER case_events_no_delete BEFORE DELETE ON case_events
     BEGIN SELECT RAISE(ABORT, 'case_events is append-only'); END",
];

const POSTGRES_TRIGGERS: &[&str] = &[
    "CREATE FUNCTION etk_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$",
    "CREATE TRIGGER case_events_append_only BEFORE UPDATE OR DELETE ON case_events
     FOR EACH ROW EXECUTE FUNCTION etk_append_only()",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let blob = if backend == DbBackend::Postgres {
            "BYTEA"
        } else {
            "BLOB"
        };
        let tables: Vec<String> = TABLES.iter().map(|s| s.replace("{blob}", blob)).collect();
        let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
        run_all(manager, &tables).await?;
        let triggers = if backend == DbBackend::Postgres {
            POSTGRES_TRIGGERS
        } else {
            SQLITE_TRIGGERS
        };
        run_all(manager, triggers).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut stmts = vec![
            "DROP TABLE idempotency_keys",
            "DROP TABLE case_events",
            "DROP TABLE cases",
        ];
        if manager.get_database_backend() == DbBackend::Postgres {
            stmts.push("DROP FUNCTION etk_append_only()");
        }
        run_all(manager, &stmts).await
    }
}
