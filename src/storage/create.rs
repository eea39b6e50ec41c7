//! Idempotent creation of a case: the case row, its idempotency record and its first change.
//! A look-up answers replays and reused ids; the database's unique constraints (one active case
//! per card; one record per principal and `request_id`) decide the rest, so concurrent twins
//! cannot both win.
//! Commits nothing itself (the caller owns the transaction and retries `ConcurrentRetry`).

use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, IntoActiveModel, QueryFilter,
    TryInsertResult, TryIntoModel,
};

use super::changes::ChangeSet;
use super::codec::Codec;
use super::entities::{cases, idempotency_keys};
use super::sql::{Lock, find_case};
use super::{CreateCase, Created, StoreError, Timing};
use crate::domain::saga::{Saga, initial_effects};
use crate::domain::{CaseEvent, CaseId};

/// Creates the case in `txn`, or finds the one this request already created. Returns the
/// events appended (none for a replay), to publish once the caller has committed.
///
/// A new case takes five statements: the idempotency look-up, then the case row as it stands
/// after its `accepted` event (built in memory, never re-read), the idempotency record, the
/// event and the first effects. Nothing is written before a refusal is known, except where a
/// concurrent twin decides it (`ConcurrentRetry`: the caller rolls back).
pub(crate) async fn create_in(
    txn: &DatabaseTransaction,
    codec: &Codec,
    timing: Timing,
    cmd: &CreateCase,
) -> Result<(Created, Vec<CaseEvent>), StoreError> {
    let request_key = cmd
        .request_id
        .as_ref()
        .map(|r| (codec.request_key(cmd.principal.as_str(), r), r));
    if let Some((key, raw)) = &request_key
        && let Some(replayed) = replay(txn, codec, cmd, key, raw).await?
    {
        return Ok((replayed, Vec::new()));
    }

    let mut model = codec
        .new_case(cmd, timing.check_revocation)?
        .try_into_model()
        .map_err(|e| StoreError::Corrupt(format!("new case row: {e}")))?;
    let saga = Saga::new(cmd.report.route).with_check(timing.check_revocation);
    let mut cs = ChangeSet::new(timing, codec);
    // The mode in force is part of the record (and of the chained hash), not only a column.
    let mut meta = cmd.meta.clone();
    if timing.check_revocation {
        if !meta.detail.is_empty() {
            meta.detail.push_str("; ");
        }
        meta.detail.push_str(
            "revocation check on: the revocation is verified on the CA's lists before KIV",
        );
    }
    cs.change(
        &mut model,
        saga,
        "accepted",
        &initial_effects(&saga),
        &meta,
        None,
    )?;
    // The row is inserted as it stands now; the change set writes only its event and effects.
    cs.untouch(&model.id);

    // One active case per card, decided by the unique index: a conflict inserts nothing.
    let inserted = cases::Entity::insert(model.clone().into_active_model().reset_all())
        .on_conflict(
            OnConflict::column(cases::Column::ActiveCardNumber)
                .do_nothing()
                .to_owned(),
        )
        .try_insert()
        .exec_without_returning(txn)
        .await
        .map_err(StoreError::Unavailable)?;
    if !matches!(inserted, TryInsertResult::Inserted(n) if n > 0) {
        // A twin of this request may have committed since the look-up (PostgreSQL, another
        // replica): then this is its replay, not a conflict.
        if let Some((key, raw)) = &request_key
            && let Some(replayed) = replay(txn, codec, cmd, key, raw).await?
        {
            return Ok((replayed, Vec::new()));
        }
        return Err(StoreError::ActiveCaseExists);
    }

    if let Some((key, _)) = request_key {
        let record = idempotency_keys::ActiveModel {
            principal_hsa_id: Set(cmd.principal.to_string()),
            request_id: Set(key),
            fingerprint: Set(cmd.fingerprint.clone()),
            case_id: Set(cmd.id.to_string()),
            created_at: Set(cmd.meta.at.0),
        };
        // A concurrent twin that committed first makes this a no-op on PostgreSQL (it waits
        // for the twin); the caller rolls back, retries, and then replays.
        let r = idempotency_keys::Entity::insert(record)
            .on_conflict_do_nothing()
            .exec_without_returning(txn)
            .await
            .map_err(StoreError::Unavailable)?;
        if !matches!(r, TryInsertResult::Inserted(n) if n > 0) {
            return Err(StoreError::ConcurrentRetry);
        }
    }
    let appended = cs.flush(txn).await?;
    Ok((Created::New(codec.to_domain(&model)?), appended))
}

/// The case an earlier request with this id created (`None`: a new request), or
/// `RequestIdReused` when that request carried other content.
async fn replay(
    txn: &DatabaseTransaction,
    codec: &Codec,
    cmd: &CreateCase,
    key: &str,
    raw: &str,
) -> Result<Option<Created>, StoreError> {
    // One look-up for the digest and, for records from before request ids were digested, the
    // id itself.
    let Some(prior) = idempotency_keys::Entity::find()
        .filter(idempotency_keys::Column::PrincipalHsaId.eq(cmd.principal.to_string()))
        .filter(idempotency_keys::Column::RequestId.is_in([key, raw]))
        .one(txn)
        .await
        .map_err(StoreError::Unavailable)?
    else {
        return Ok(None);
    };
    if prior.fingerprint != cmd.fingerprint {
        return Err(StoreError::RequestIdReused);
    }
    let case_id = CaseId::parse(&prior.case_id)
        .ok_or_else(|| StoreError::Corrupt("idempotency record".into()))?;
    let model = find_case(txn, &case_id, Lock::No)
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok(Some(Created::Replayed(codec.to_domain(&model)?)))
}
