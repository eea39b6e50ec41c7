//! The W3C `traceparent` of the request that created a case: the saga's steps continue that
//! trace. Not personal data. Cases created before this migration keep NULL (their steps start
//! traces of their own, tagged with the case id).

use sea_orm_migration::prelude::*;

use crate::run_all;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_all(
            manager,
            &["ALTER TABLE cases ADD COLUMN trace_parent TEXT NULL"],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_all(manager, &["ALTER TABLE cases DROP COLUMN trace_parent"]).await
    }
}
