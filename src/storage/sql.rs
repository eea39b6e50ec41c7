//! SQL helpers shared by the store's modules: opening the connection pool (SQLite's pragmas,
//! its single writer), running a sea-query statement, and reading case rows with or without a
//! row lock, in id order. Owns the differences between the two backends; knows nothing of the
//! saga, the outbox or the codec.

use std::collections::HashMap;
use std::time::Duration;

use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Select, StatementBuilder,
};

use super::StoreError;
use super::entities::cases;
use crate::domain::CaseId;

/// Opens the pool. SQLite gets WAL, full sync and one connection: a single writer keeps
/// latency flat where several would queue in SQLite's busy handler (and makes every
/// transaction serial, which is what the store relies on there instead of row locks).
pub(crate) async fn connect(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<DatabaseConnection, DbErr> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.acquire_timeout(acquire_timeout)
        .connect_timeout(acquire_timeout)
        .sqlx_logging(false);
    if url.starts_with("sqlite:") {
        opts.max_connections(1).min_connections(1);
        opts.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5))
                .create_if_missing(true)
        });
    } else {
        opts.max_connections(max_connections.max(1));
    }
    Database::connect(opts).await
}

/// Connections that only read, beside the single writer: for a SQLite file, a pool of read-only
/// connections, which WAL lets read while the writer writes (each read sees what was committed
/// when it began). `None` elsewhere: PostgreSQL's pool serves both, and an in-memory SQLite
/// database exists only on its one connection.
pub(crate) async fn connect_reader(
    url: &str,
    acquire_timeout: Duration,
) -> Result<Option<DatabaseConnection>, DbErr> {
    if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(None);
    }
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.acquire_timeout(acquire_timeout)
        .connect_timeout(acquire_timeout)
        .sqlx_logging(false)
        // One per core of the machine this was measured on; the writer has its own.
        .max_connections(READERS)
        .min_connections(1);
    opts.map_sqlx_sqlite_opts(|o| {
        o.read_only(true)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(5))
    });
    Database::connect(opts).await.map(Some)
}

/// Read-only SQLite connections beside the writer.
const READERS: u32 = 2;

/// The pool's connections in use and idle. The backend is checked first: sea-orm's pool
/// accessors panic on the other backend.
pub(crate) fn pool_stats(db: &DatabaseConnection) -> Option<super::PoolStats> {
    let (size, idle) = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            let p = db.get_postgres_connection_pool();
            (p.size(), p.num_idle())
        }
        sea_orm::DbBackend::Sqlite => {
            let p = db.get_sqlite_connection_pool();
            (p.size(), p.num_idle())
        }
        _ => return None,
    };
    let idle = u32::try_from(idle).unwrap_or(u32::MAX).min(size);
    Some(super::PoolStats {
        in_use: size - idle,
        idle,
    })
}

/// Runs a built statement; returns the number of rows it affected.
pub(crate) async fn exec(
    conn: &impl ConnectionTrait,
    stmt: &impl StatementBuilder,
) -> Result<u64, StoreError> {
    conn.execute(stmt)
        .await
        .map(|r| r.rows_affected())
        .map_err(StoreError::Unavailable)
}

/// Microseconds, as timestamps are stored.
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Whether rows read for a change are locked. PostgreSQL locks them (`FOR UPDATE`); SQLite has
/// no row locks and needs none (one writer), and sea-query leaves the clause out there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lock {
    No,
    ForUpdate,
}

/// One case row.
pub(crate) async fn find_case(
    conn: &impl ConnectionTrait,
    id: &CaseId,
    lock: Lock,
) -> Result<Option<cases::Model>, StoreError> {
    find_case_query(id, lock)
        .one(conn)
        .await
        .map_err(StoreError::Unavailable)
}

fn find_case_query(id: &CaseId, lock: Lock) -> Select<cases::Entity> {
    let q = cases::Entity::find_by_id(id.to_string());
    match lock {
        Lock::ForUpdate => q.lock_exclusive(),
        Lock::No => q,
    }
}

/// The case row, locked for the rest of the transaction.
pub(crate) async fn lock_case(
    conn: &impl ConnectionTrait,
    id: &CaseId,
) -> Result<cases::Model, StoreError> {
    find_case(conn, id, Lock::ForUpdate)
        .await?
        .ok_or(StoreError::NotFound)
}

/// Several case rows by id (missing ids are left out).
pub(crate) async fn load_cases(
    conn: &impl ConnectionTrait,
    ids: &[&CaseId],
    lock: Lock,
) -> Result<HashMap<String, cases::Model>, StoreError> {
    // Locks are taken in id order, and before any effect row (see `outbox::finish_in`), so two
    // transactions never wait for each other in a circle.
    let mut q = cases::Entity::find()
        .filter(cases::Column::Id.is_in(ids.iter().map(|i| i.to_string())))
        .order_by_asc(cases::Column::Id);
    if lock == Lock::ForUpdate {
        q = q.lock_exclusive();
    }
    let rows = q.all(conn).await.map_err(StoreError::Unavailable)?;
    Ok(rows.into_iter().map(|m| (m.id.clone(), m)).collect())
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, QueryTrait};

    use super::*;

    #[test]
    fn a_case_read_for_a_change_is_locked_on_postgresql() {
        let id = crate::clock::new_case_id();
        let locked = find_case_query(&id, Lock::ForUpdate);
        assert!(
            locked
                .build(DbBackend::Postgres)
                .to_string()
                .ends_with("FOR UPDATE")
        );
        assert!(
            !locked
                .build(DbBackend::Sqlite)
                .to_string()
                .contains("FOR UPDATE")
        );
        let plain = find_case_query(&id, Lock::No).build(DbBackend::Postgres);
        assert!(!plain.to_string().contains("FOR UPDATE"));
    }
}
