//! The revocation check (issue #14): the mode in force for each case (`off`, `required`,
//! `verified`; every case from before is `off`: the confirmation alone sufficed), and the card
//! certificates the confirmation named (JSON: serial and issuer only, never the certificate).

use sea_orm_migration::prelude::*;

use crate::run_all;

#[derive(DeriveMigrationName)]
pub struct Migration;

const STATEMENTS: &[&str] = &[
    "ALTER TABLE cases ADD COLUMN revocation_check TEXT NOT NULL DEFAULT 'off'",
    "ALTER TABLE cases ADD COLUMN revoked_certificates TEXT NULL",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_all(manager, STATEMENTS).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_all(
            manager,
            &[
                "ALTER TABLE cases DROP COLUMN revoked_certificates",
                "ALTER TABLE cases DROP COLUMN revocation_check",
            ],
        )
        .await
    }
}
