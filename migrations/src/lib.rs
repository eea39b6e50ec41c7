//! Schema migrations for etjanstekort-gateway. One set serves SQLite and PostgreSQL; where the
//! dialects differ (blob type, triggers) a migration picks the statement by backend.

pub use sea_orm_migration::prelude::*;

mod m0001_cases;
mod m0002_saga;
mod m0003_head_notified;
mod m0004_trace_parent;
mod m0005_keyed_audit;
mod m0006_retention;
mod m0007_purge_guard;
mod m0008_audit_legacy_cases;
mod m0009_revocation_check;
mod m0010_plans;

#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_cases::Migration),
            Box::new(m0002_saga::Migration),
            Box::new(m0003_head_notified::Migration),
            Box::new(m0004_trace_parent::Migration),
            Box::new(m0005_keyed_audit::Migration),
            Box::new(m0006_retention::Migration),
            Box::new(m0007_purge_guard::Migration),
            Box::new(m0008_audit_legacy_cases::Migration),
            Box::new(m0009_revocation_check::Migration),
            Box::new(m0010_plans::Migration),
        ]
    }
}

/// The names of `migrations` (as the migration table records them), in order.
pub fn names(migrations: &[sea_orm_migration::Migration]) -> Vec<String> {
    migrations.iter().map(|m| m.name().to_owned()).collect()
}

/// Runs each statement on its own: not every driver accepts several in one call.
pub(crate) async fn run_all(manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    let conn = manager.get_connection();
    for sql in statements {
        conn.execute_unprepared(sql).await?;
    }
    Ok(())
}
