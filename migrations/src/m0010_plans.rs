//! Indexes that bound the hot queries whatever the planner's statistics (issue #12, tests in
//! tests/it/plans.rs).

use sea_orm_migration::prelude::*;

use crate::run_all;

#[derive(DeriveMigrationName)]
pub struct Migration;

const STATEMENTS: &[&str] = &[
    // The rows a claim holds: recording a batch's results looks them up by owner token, which
    // bounds the statement by the batch. Without it (and without statistics) SQLite walked
    // `effects_due` over every pending effect. Partial: unleased rows (nearly all) stay out.
    "CREATE INDEX effects_lease ON effects (lease_owner) WHERE lease_owner IS NOT NULL",
    // A unit's cases in one state in id order: a page of the office's tasks (per unit and
    // state, keyset by id) reads the page, not every task of the unit.
    "DROP INDEX cases_unit_state",
    "CREATE INDEX cases_unit_state ON cases (care_unit_hsa_id, state, id)",
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
                "DROP INDEX cases_unit_state",
                "CREATE INDEX cases_unit_state ON cases (care_unit_hsa_id, state)",
                "DROP INDEX effects_lease",
            ],
        )
        .await
    }
}
