//! A tighter guard on the purge marker: m0006 let a `retention_purges` row be written for any
//! case whose `shredded_at` was set. A marker is what allows deleting a case's audit events, so
//! it now also needs the case to have ended (`ended_at` set) and to be in a terminal state —
//! a live case whose `shredded_at` was set by hand cannot have its trail removed. m0006's
//! trigger (SQLite) and function (PostgreSQL) are replaced in place, as m0006 may already be
//! applied.
//!
//! On PostgreSQL, row triggers do not fire on TRUNCATE, so `TRUNCATE retention_purges` would
//! silently remove the trace of every purge: refused here. (`case_events` has its own TRUNCATE
//! trigger since m0005; `cases` cannot be truncated without CASCADE because of the foreign keys
//! on it, and with CASCADE the `case_events` trigger refuses.)

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::run_all;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// What a case must be for a purge marker: ended, terminal, shredded.
const PURGEABLE: &str = "c.id = NEW.case_id AND c.shredded_at IS NOT NULL AND c.ended_at IS NOT NULL \
     AND c.state IN ('completed', 'rejected', 'cancelled')";

/// m0006's condition, restored by `down`.
const SHREDDED: &str = "c.id = NEW.case_id AND c.shredded_at IS NOT NULL";

fn sqlite_trigger(condition: &str) -> [String; 2] {
    [
        "DROP TRIGGER retention_purges_only_shredded".to_owned(),
        format!(
            "CREATE TRIGGER retention_purges_only_shredded BEFORE INSERT ON retention_purges
             WHEN NOT EXISTS (SELECT 1 FROM cases c WHERE {condition})
             BEGIN SELECT RAISE(ABORT, 'only an ended, shredded case may be purged'); END"
        ),
    ]
}

fn postgres_function(condition: &str) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION etk_purge_only_shredded() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NOT EXISTS (SELECT 1 FROM cases c WHERE {condition}) THEN
             RAISE EXCEPTION 'only an ended, shredded case may be purged';
           END IF;
           RETURN NEW;
         END $$"
    )
}

const POSTGRES_NO_TRUNCATE: &[&str] = &[
    "CREATE FUNCTION etk_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN RAISE EXCEPTION '% cannot be truncated', TG_TABLE_NAME; END $$",
    "CREATE TRIGGER retention_purges_no_truncate BEFORE TRUNCATE ON retention_purges
     FOR EACH STATEMENT EXECUTE FUNCTION etk_no_truncate()",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            run_all(manager, &[postgres_function(PURGEABLE).as_str()]).await?;
            run_all(manager, POSTGRES_NO_TRUNCATE).await
        } else {
            let stmts = sqlite_trigger(PURGEABLE);
            run_all(manager, &stmts.each_ref().map(String::as_str)).await
        }
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            run_all(
                manager,
                &[
                    "DROP TRIGGER retention_purges_no_truncate ON retention_purges",
                    "DROP FUNCTION etk_no_truncate()",
                    postgres_function(SHREDDED).as_str(),
                ],
            )
            .await
        } else {
            let stmts = sqlite_trigger(SHREDDED);
            run_all(manager, &stmts.each_ref().map(String::as_str)).await
        }
    }
}
