//! Retention and re-encryption on the stored rows: which ended cases are due for shredding or
//! purging, shredding one (its data key, ciphertexts, idempotency records and outbox error
//! texts destroyed, an audit event appended),
//! purging one (a `retention_purges` marker written, then its events, effects, idempotency
//! records and row deleted — the m0006 triggers allow deleting events only under such a
//! marker, and a marker only for a shredded case), purging finished outbox rows, and moving
//! rows to the current master key. Every change re-checks its conditions on the locked row.

use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::codec::{Codec, Rekeyed};
use super::entities::{case_events, cases, effects, idempotency_keys, retention_purges};
use super::sql::exec;
use super::{CaseRecord, RetentionCutoffs, RetentionDue, StoreError};
use crate::domain::{CaseId, Reason, State, Timestamp};

/// The finished statuses of an effect row (`outbox.rs`): done, or skipped as no longer
/// applying.
const FINISHED: [&str; 2] = ["done", "cancelled"];

fn ended_before(before: Timestamp) -> Condition {
    Condition::all()
        .add(cases::Column::EndedAt.is_not_null())
        .add(cases::Column::EndedAt.lte(before.0))
}

fn ids(rows: Vec<String>) -> Result<Vec<CaseId>, StoreError> {
    rows.iter()
        .map(|id| CaseId::parse(id).ok_or_else(|| StoreError::Corrupt(format!("case {id}: id"))))
        .collect()
}

/// What a retention pass as of these cut-offs would do (at most `limit` cases of each kind).
pub(crate) async fn due(
    conn: &impl ConnectionTrait,
    cut: &RetentionCutoffs,
    limit: u32,
) -> Result<RetentionDue, StoreError> {
    use cases::Column as C;
    let select = |cond: Condition| {
        cases::Entity::find()
            .select_only()
            .column(C::Id)
            .filter(cond)
            .order_by_asc(C::EndedAt)
            .order_by_asc(C::Id)
            .limit(u64::from(limit))
            .into_tuple::<String>()
    };
    let shred = select(ended_before(cut.personal_data).add(C::ShreddedAt.is_null()))
        .all(conn)
        .await
        .map_err(StoreError::Unavailable)?;
    // A case is purged only after it was shredded; a pass shreds first.
    let purge = select(ended_before(cut.record))
        .all(conn)
        .await
        .map_err(StoreError::Unavailable)?;
    let outbox = effects::Entity::find()
        .filter(effects::Column::Status.is_in(FINISHED))
        .filter(effects::Column::UpdatedAt.lte(cut.outbox.0))
        .count(conn)
        .await
        .map_err(StoreError::Unavailable)?;
    Ok(RetentionDue {
        shred: ids(shred)?,
        purge: ids(purge)?,
        outbox,
    })
}

/// Shreds the locked row if it is still due (ended at or before `before`, not yet shredded).
/// Returns the row as changed, or `None` when there was nothing to do. The caller appends the
/// audit event and commits.
pub(crate) async fn shred_in(
    txn: &DatabaseTransaction,
    model: &mut cases::Model,
    before: Timestamp,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let due = model.shredded_at.is_none() && model.ended_at.is_some_and(|e| e <= before.0);
    if !due {
        return Ok(false);
    }
    Codec::shred(model, at);
    cases::Entity::update_many()
        .col_expr(cases::Column::DataKey, Expr::value(model.data_key.clone()))
        .col_expr(cases::Column::KeyId, Expr::value(model.key_id.clone()))
        .col_expr(
            cases::Column::Sensitive,
            Expr::value(model.sensitive.clone()),
        )
        .col_expr(
            cases::Column::KivSnapshot,
            Expr::value(model.kiv_snapshot.clone()),
        )
        .col_expr(
            cases::Column::HolderPseudonym,
            Expr::value(model.holder_pseudonym.clone()),
        )
        .col_expr(cases::Column::ShreddedAt, Expr::value(model.shredded_at))
        .filter(cases::Column::Id.eq(model.id.clone()))
        .exec(txn)
        .await
        .map_err(StoreError::Unavailable)?;
    // The request fingerprint is a keyed digest of the report, personal data included.
    idempotency_keys::Entity::delete_many()
        .filter(idempotency_keys::Column::CaseId.eq(model.id.clone()))
        .exec(txn)
        .await
        .map_err(StoreError::Unavailable)?;
    // An effect's last error is a connector's or mail server's text about this case (a
    // bounced address, a name in a directory error): it goes with the personal data. The rows
    // themselves (ids, steps, times) stay until the outbox period or the purge removes them.
    effects::Entity::update_many()
        .col_expr(
            effects::Column::LastError,
            Expr::value(Option::<String>::None),
        )
        .filter(effects::Column::CaseId.eq(model.id.clone()))
        .filter(effects::Column::LastError.is_not_null())
        .exec(txn)
        .await
        .map_err(StoreError::Unavailable)?;
    Ok(true)
}

/// Purges the locked row if its record is due (shredded, ended at or before `before`): the
/// marker first, then everything of the case.
pub(crate) async fn purge_in(
    txn: &DatabaseTransaction,
    model: &cases::Model,
    before: Timestamp,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let Some(ended) = model.ended_at.filter(|e| *e <= before.0) else {
        return Ok(false);
    };
    if model.shredded_at.is_none() {
        return Ok(false);
    }
    retention_purges::Entity::insert(retention_purges::ActiveModel {
        case_id: Set(model.id.clone()),
        ended_at: Set(ended),
        purged_at: Set(at.0),
        last_seq: Set(model.last_seq),
        last_hash: Set(model.last_hash.clone()),
    })
    .exec(txn)
    .await
    .map_err(StoreError::Unavailable)?;
    let id = model.id.clone();
    for stmt in [
        Query::delete()
            .from_table(case_events::Entity)
            .and_where(Expr::col(case_events::Column::CaseId).eq(id.clone()))
            .to_owned(),
        Query::delete()
            .from_table(effects::Entity)
            .and_where(Expr::col(effects::Column::CaseId).eq(id.clone()))
            .to_owned(),
        Query::delete()
            .from_table(idempotency_keys::Entity)
            .and_where(Expr::col(idempotency_keys::Column::CaseId).eq(id.clone()))
            .to_owned(),
        Query::delete()
            .from_table(cases::Entity)
            .and_where(Expr::col(cases::Column::Id).eq(id.clone()))
            .to_owned(),
    ] {
        exec(txn, &stmt).await?;
    }
    Ok(true)
}

/// Deletes up to `limit` finished outbox rows last changed at or before `before`.
pub(crate) async fn purge_outbox(
    conn: &impl ConnectionTrait,
    before: Timestamp,
    limit: u32,
) -> Result<u64, StoreError> {
    use effects::Column as C;
    // One status at a time, oldest first: each look-up walks `effects_done` in order and stops
    // at the limit (`status IN (…)` would sort every finished row first).
    let mut keys: Vec<String> = Vec::new();
    for status in FINISHED {
        let left = u64::from(limit).saturating_sub(keys.len() as u64);
        if left == 0 {
            break;
        }
        let some: Vec<String> = effects::Entity::find()
            .select_only()
            .column(C::Key)
            .filter(C::Status.eq(status))
            .filter(C::UpdatedAt.lte(before.0))
            .order_by_asc(C::UpdatedAt)
            .limit(left)
            .into_tuple()
            .all(conn)
            .await
            .map_err(StoreError::Unavailable)?;
        keys.extend(some);
    }
    if keys.is_empty() {
        return Ok(0);
    }
    // Re-checked in the DELETE: a row re-armed meanwhile is pending again and stays.
    let stmt = Query::delete()
        .from_table(effects::Entity)
        .and_where(Expr::col(C::Key).is_in(keys))
        .and_where(Expr::col(C::Status).is_in(FINISHED))
        .to_owned();
    exec(conn, &stmt).await
}

/// Rows not yet under `current` (a legacy row has no key id), not shredded, after `after`.
fn needs_rekey(current: &str) -> Condition {
    use cases::Column as C;
    Condition::all().add(C::ShreddedAt.is_null()).add(
        Condition::any()
            .add(C::KeyId.is_null())
            .add(C::KeyId.ne(current.to_owned())),
    )
}

/// How many rows `keys reencrypt` still has to move.
pub(crate) async fn rekey_pending(
    conn: &impl ConnectionTrait,
    current: &str,
) -> Result<u64, StoreError> {
    cases::Entity::find()
        .filter(needs_rekey(current))
        .count(conn)
        .await
        .map_err(StoreError::Unavailable)
}

/// The ids of the next `limit` rows to move, after `after`, in id order.
pub(crate) async fn rekey_batch(
    conn: &impl ConnectionTrait,
    current: &str,
    after: Option<&CaseId>,
    limit: u32,
) -> Result<Vec<CaseId>, StoreError> {
    let mut q = cases::Entity::find()
        .select_only()
        .column(cases::Column::Id)
        .filter(needs_rekey(current));
    if let Some(a) = after {
        q = q.filter(cases::Column::Id.gt(a.to_string()));
    }
    let rows = q
        .order_by_asc(cases::Column::Id)
        .limit(u64::from(limit))
        .into_tuple()
        .all(conn)
        .await
        .map_err(StoreError::Unavailable)?;
    ids(rows)
}

/// Moves one locked row to the current master key and writes the changed columns.
pub(crate) async fn rekey_in(
    txn: &DatabaseTransaction,
    codec: &Codec,
    model: &mut cases::Model,
) -> Result<Rekeyed, StoreError> {
    let done = codec.reencrypt(model)?;
    if done == Rekeyed::Current {
        return Ok(done);
    }
    cases::Entity::update_many()
        .col_expr(cases::Column::DataKey, Expr::value(model.data_key.clone()))
        .col_expr(cases::Column::KeyId, Expr::value(model.key_id.clone()))
        .col_expr(
            cases::Column::Sensitive,
            Expr::value(model.sensitive.clone()),
        )
        .col_expr(
            cases::Column::KivSnapshot,
            Expr::value(model.kiv_snapshot.clone()),
        )
        .filter(cases::Column::Id.eq(model.id.clone()))
        .exec(txn)
        .await
        .map_err(StoreError::Unavailable)?;
    Ok(done)
}

/// The kept record of a case: everything but its personal data.
pub(crate) fn record_of(m: &cases::Model) -> Result<CaseRecord, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("case {}: {what}", m.id));
    Ok(CaseRecord {
        id: CaseId::parse(&m.id).ok_or_else(|| corrupt("id"))?,
        care_provider: m.care_provider_hsa_id.clone(),
        care_unit: m.care_unit_hsa_id.clone(),
        reporter: m.reporter_hsa_id.clone(),
        card_number: m.card_number.clone(),
        reason: Reason::from_str_opt(&m.reason).ok_or_else(|| corrupt("reason"))?,
        state: State::from_str_opt(&m.state).ok_or_else(|| corrupt("state"))?,
        created_at: Timestamp(m.created_at),
        ended_at: m.ended_at.map(Timestamp),
        revocation_confirmed_at: m.revocation_confirmed_at.map(Timestamp),
        revocation_reference: m.revocation_reference.clone(),
        shredded_at: m.shredded_at.map(Timestamp),
        key_id: m.key_id.clone(),
    })
}
