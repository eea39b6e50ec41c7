//! The outbox: claiming due effects under a lease, recording their results fenced by that
//! lease, and the effects' due times. Owns the `effects` rows' status, lease and attempts;
//! results become saga events through `ChangeSet` like every other change, and this module
//! commits nothing itself (the caller owns the transaction).

use std::collections::HashSet;
use std::time::Duration;

use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType, Order, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    UpdateMany, Value,
};

use super::changes::ChangeSet;
use super::codec::{Codec, work_of};
use super::entities::effects;
use super::sql::{Lock, load_cases, micros};
use super::{EventMeta, Finished, StoreError, Timing, Work, WorkResult};
use crate::domain::saga::{Event, Step};
use crate::domain::{CaseEvent, CaseId, Timestamp};

const PENDING: &str = "pending";

/// Leases up to `limit` due effects (pending, and not leased or their lease run out) to
/// `owner` until `now + lease`, earliest due first.
pub(crate) async fn claim(
    conn: &impl ConnectionTrait,
    owner: &str,
    now: Timestamp,
    lease: Duration,
    limit: u32,
) -> Result<Vec<Work>, StoreError> {
    let rows = claim_statement(owner, now, lease, limit)
        .exec_with_returning(conn)
        .await
        .map_err(StoreError::Unavailable)?;
    rows.iter().map(work_of).collect()
}

fn claim_statement(
    owner: &str,
    now: Timestamp,
    lease: Duration,
    limit: u32,
) -> UpdateMany<effects::Entity> {
    use effects::Column as C;
    let mut due = Query::select();
    due.column(C::Key)
        .from(effects::Entity)
        .and_where(Expr::col(C::Status).eq(PENDING))
        .and_where(Expr::col(C::DueAt).lte(now.0))
        .and_where(
            Expr::col(C::LeaseUntil)
                .is_null()
                .or(Expr::col(C::LeaseUntil).lt(now.0)),
        )
        .order_by(C::DueAt, Order::Asc)
        .limit(u64::from(limit))
        // PostgreSQL: replicas skip rows another replica is claiming. SQLite has one writer, so
        // the statement is atomic as it stands (sea-query leaves the clause out there).
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    effects::Entity::update_many()
        .col_expr(C::LeaseOwner, Expr::value(owner))
        .col_expr(
            C::LeaseUntil,
            Expr::value(now.0.saturating_add(micros(lease))),
        )
        .filter(C::Key.in_subquery(due))
}

/// Gives up at once the leases held by claims whose owner token starts with `owner_prefix`
/// (but not with `keep_prefix`) and returns how many: the effects stay due and another worker
/// claims them without waiting for the lease to run out (no attempt is counted: the step did
/// not finish).
pub(crate) async fn release(
    conn: &impl ConnectionTrait,
    owner_prefix: &str,
    keep_prefix: Option<&str>,
) -> Result<u64, StoreError> {
    use effects::Column as C;
    let mut update = effects::Entity::update_many()
        .col_expr(C::LeaseOwner, Expr::value(Value::String(None)))
        .col_expr(C::LeaseUntil, Expr::value(Value::BigInt(None)))
        .filter(C::Status.eq(PENDING))
        .filter(C::LeaseOwner.starts_with(owner_prefix));
    if let Some(keep) = keep_prefix {
        update = update.filter(C::LeaseOwner.not_like(format!("{keep}%")));
    }
    let res = update.exec(conn).await.map_err(StoreError::Unavailable)?;
    Ok(res.rows_affected)
}

/// Moves the leases of `keys` that the claim `owner` still holds on to `now + lease` (the
/// heartbeat of a running batch) and returns how many it moved.
pub(crate) async fn renew(
    conn: &impl ConnectionTrait,
    owner: &str,
    keys: &[String],
    now: Timestamp,
    lease: Duration,
) -> Result<u64, StoreError> {
    use effects::Column as C;
    if keys.is_empty() {
        return Ok(0);
    }
    let res = effects::Entity::update_many()
        .col_expr(
            C::LeaseUntil,
            Expr::value(now.0.saturating_add(micros(lease))),
        )
        .filter(C::Key.is_in(keys.iter().map(String::as_str)))
        .filter(C::LeaseOwner.eq(owner))
        .filter(C::Status.eq(PENDING))
        .exec(conn)
        .await
        .map_err(StoreError::Unavailable)?;
    Ok(res.rows_affected)
}

/// When the earliest pending effect falls due (or its lease runs out), if any.
pub(crate) async fn next_due(conn: &impl ConnectionTrait) -> Result<Option<Timestamp>, StoreError> {
    let row = effects::Entity::find()
        .filter(effects::Column::Status.eq(PENDING))
        .order_by_asc(effects::Column::DueAt)
        .one(conn)
        .await
        .map_err(StoreError::Unavailable)?;
    Ok(row.map(|r| Timestamp(std::cmp::max(r.due_at, r.lease_until.unwrap_or(0)))))
}

/// Makes the case's pending effects due at `at` — except the escalation timer, which keeps
/// its deadline. The caller holds the case's row lock.
pub(crate) async fn expedite(
    txn: &DatabaseTransaction,
    id: &CaseId,
    at: Timestamp,
) -> Result<(), StoreError> {
    effects::Entity::update_many()
        .col_expr(effects::Column::DueAt, Expr::value(at.0))
        .filter(effects::Column::CaseId.eq(id.to_string()))
        .filter(effects::Column::Status.eq(PENDING))
        .filter(effects::Column::Step.ne(Step::Escalate.name()))
        .exec(txn)
        .await
        .map_err(StoreError::Unavailable)?;
    Ok(())
}

/// Records a batch of results inside `txn` and returns the audit events appended. Fencing
/// first: only results whose lease this owner still holds count; the rest are dropped
/// (another worker re-runs them under the same key).
pub(crate) async fn finish_in(
    txn: &DatabaseTransaction,
    codec: &Codec,
    timing: Timing,
    owner: &str,
    results: &[Finished],
    now: Timestamp,
) -> Result<Vec<CaseEvent>, StoreError> {
    // Lock order: case rows first (as `apply` does), then effect rows.
    let mut case_ids: Vec<&CaseId> = results.iter().map(|f| &f.work.case_id).collect();
    case_ids.sort();
    case_ids.dedup();
    let started = std::time::Instant::now();
    let mut models = load_cases(txn, &case_ids, Lock::ForUpdate).await?;
    let loaded = started.elapsed();
    let fenced = fence(txn, owner, results, now).await?;
    let fenced_at = started.elapsed();

    let mut events: Vec<(&Finished, Event, String)> = Vec::new();
    for f in results {
        if !fenced.contains(&f.work.key) {
            // Another worker took the effect over; it re-runs it under the same key.
            tracing::warn!(key = %f.work.key, "lease lost before the result was recorded; dropped");
            continue;
        }
        match &f.result {
            WorkResult::Done {
                event: Some(e),
                detail,
                ..
            } => events.push((f, e.clone(), detail.clone())),
            WorkResult::Failed { error } => events.push((
                f,
                Event::StepFailed {
                    step: f.work.step,
                    reason: error.clone(),
                },
                format!("{} failed: {error}", f.work.step.name()),
            )),
            _ => {}
        }
    }
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut cs = ChangeSet::new(timing, codec);
    for (f, event, detail) in events {
        let Some(model) = models.get_mut(&f.work.case_id.to_string()) else {
            continue;
        };
        let meta = EventMeta {
            actor: "system".into(),
            trace_id: model.trace_id.clone(),
            at: now,
            detail,
        };
        match cs.event(model, &event, &meta) {
            Ok(recorded) => {
                // The snapshot is kept only with the event that records it.
                if let (
                    true,
                    WorkResult::Done {
                        snapshot: Some(snap),
                        ..
                    },
                ) = (recorded, &f.result)
                {
                    model.kiv_snapshot = Some(codec.seal_snapshot(model, snap)?);
                    cs.touch(model);
                }
            }
            // A result the case no longer accepts (it moved on meanwhile) is recorded as done
            // and otherwise ignored.
            Err(StoreError::Transition(t)) => {
                tracing::info!(case_id = %f.work.case_id, step = f.work.step.name(), reason = %t, "stale step result ignored");
            }
            Err(e) => return Err(e),
        }
    }
    let applied = started.elapsed();
    let appended = cs.flush(txn).await?;
    // Where a batch's recording time goes (docs/benchmarks.md): it runs on the one writer.
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    tracing::debug!(
        results = results.len(),
        cases = case_ids.len(),
        load_ms = ms(loaded),
        fence_ms = ms(fenced_at.saturating_sub(loaded)),
        apply_ms = ms(applied.saturating_sub(fenced_at)),
        flush_ms = ms(started.elapsed().saturating_sub(applied)),
        "step results recorded"
    );
    Ok(appended)
}

/// Updates the effect rows of the results whose lease `owner` still holds (the fence: the
/// `lease_owner` condition) and returns their keys.
async fn fence(
    txn: &DatabaseTransaction,
    owner: &str,
    results: &[Finished],
    now: Timestamp,
) -> Result<HashSet<String>, StoreError> {
    use effects::Column as C;
    let held = |key: &str| {
        Expr::col(C::Key)
            .eq(key)
            .and(Expr::col(C::LeaseOwner).eq(owner))
            .and(Expr::col(C::Status).eq(PENDING))
    };
    // Every outcome counts an attempt and gives the lease up.
    let release = || {
        effects::Entity::update_many()
            .col_expr(C::Attempts, Expr::col(C::Attempts).add(1))
            .col_expr(C::LeaseOwner, Expr::value(Value::String(None)))
            .col_expr(C::LeaseUntil, Expr::value(Value::BigInt(None)))
            .col_expr(C::UpdatedAt, Expr::value(now.0))
    };
    let mut fenced: HashSet<String> = HashSet::new();
    let mut done_keys: Vec<&str> = Vec::new();
    let mut skipped_keys: Vec<&str> = Vec::new();
    for f in results {
        let key = f.work.key.as_str();
        let update = match &f.result {
            WorkResult::Done { .. } => {
                done_keys.push(key);
                continue;
            }
            WorkResult::Skipped => {
                skipped_keys.push(key);
                continue;
            }
            WorkResult::Retry { at, error } => release()
                .col_expr(C::DueAt, Expr::value(at.0))
                .col_expr(C::LastError, Expr::value(error.clone())),
            WorkResult::Failed { error } => release()
                .col_expr(C::Status, Expr::value("failed"))
                .col_expr(C::LastError, Expr::value(error.clone())),
        };
        let n = update
            .filter(held(key))
            .exec(txn)
            .await
            .map_err(StoreError::Unavailable)?
            .rows_affected;
        if n == 1 {
            fenced.insert(key.to_owned());
        }
    }
    for (status, keys) in [("done", done_keys), ("cancelled", skipped_keys)] {
        if keys.is_empty() {
            continue;
        }
        let rows = release()
            .col_expr(C::Status, Expr::value(status))
            .col_expr(C::LastError, Expr::value(Value::String(None)))
            .filter(C::LeaseOwner.eq(owner))
            .filter(C::Status.eq(PENDING))
            .filter(C::Key.is_in(keys))
            .exec_with_returning(txn)
            .await
            .map_err(StoreError::Unavailable)?;
        fenced.extend(rows.into_iter().map(|r| r.key));
    }
    Ok(fenced)
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, QueryTrait};

    use super::*;

    #[test]
    fn concurrent_claimers_skip_each_others_rows_on_postgresql_only() {
        let claim = claim_statement("w", Timestamp(0), Duration::from_secs(1), 10);
        let postgres = claim.build(DbBackend::Postgres).to_string();
        assert!(postgres.contains("FOR UPDATE SKIP LOCKED"), "{postgres}");
        // SQLite knows no row locks (and needs none: one writer).
        let sqlite = claim.build(DbBackend::Sqlite).to_string();
        assert!(!sqlite.contains("FOR UPDATE"), "{sqlite}");
    }
}
