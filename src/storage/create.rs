//! Idempotent creation of a case: the case row, its idempotency record and its first change,
//! decided by the database's unique constraints (one active case per card; one record per
//! principal and `request_id`) rather than by a prior read, so concurrent twins cannot both win.
//! Commits nothing itself (the caller owns the transaction and retries `ConcurrentRetry`).

use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, TryInsertResult};

use super::changes::ChangeSet;
use super::codec::Codec;
use super::entities::{cases, idempotency_keys};
use super::sql::{Lock, find_case};
use super::{CreateCase, Created, StoreError, Timing};
use crate::domain::saga::{Saga, initial_effects};
use crate::domain::{CaseEvent, CaseId};

/// Creates the case in `txn`, or finds the one this request already created. Returns the
/// events appended (none for a replay), to publish once the caller has committed.
pub(crate) async fn create_in(
    txn: &DatabaseTransaction,
    codec: &Codec,
    timing: Timing,
    cmd: &CreateCase,
) -> Result<(Created, Vec<CaseEvent>), StoreError> {
    // The case row goes first so the idempotency record's foreign key holds; a conflict on
    // the active card number is only reported after the idempotency check below, since a
    // retry of the request that created the active case must replay, not conflict.
    let inserted = cases::Entity::insert(codec.new_case(cmd, timing.check_revocation)?)
        .on_conflict(
            OnConflict::column(cases::Column::ActiveCardNumber)
                .do_nothing()
                .to_owned(),
        )
        .try_insert()
        .exec_without_returning(txn)
        .await
        .map_err(StoreError::Unavailable)?;
    let card_free = matches!(inserted, TryInsertResult::Inserted(n) if n > 0);

    if let Some(request_id) = &cmd.request_id {
        let request_key = codec.request_key(cmd.principal.as_str(), request_id);
        // One look-up for the digest and, for records from before request ids were digested,
        // the id itself (a new request misses both; no second round trip).
        let existing = idempotency_keys::Entity::find()
            .filter(idempotency_keys::Column::PrincipalHsaId.eq(cmd.principal.to_string()))
            .filter(
                idempotency_keys::Column::RequestId
                    .is_in([request_key.clone(), request_id.clone()]),
            )
            .one(txn)
            .await
            .map_err(StoreError::Unavailable)?;
        if let Some(prior) = existing {
            if prior.fingerprint != cmd.fingerprint {
                return Err(StoreError::RequestIdReused);
            }
            let case_id = CaseId::parse(&prior.case_id)
                .ok_or_else(|| StoreError::Corrupt("idempotency record".into()))?;
            let model = find_case(txn, &case_id, Lock::No)
                .await?
                .ok_or(StoreError::NotFound)?;
            return Ok((Created::Replayed(codec.to_domain(&model)?), Vec::new()));
        }
        if card_free {
            let key = idempotency_keys::ActiveModel {
                principal_hsa_id: Set(cmd.principal.to_string()),
                request_id: Set(request_key),
                fingerprint: Set(cmd.fingerprint.clone()),
                case_id: Set(cmd.id.to_string()),
                created_at: Set(cmd.meta.at.0),
            };
            // A concurrent twin that committed first makes this a no-op on PostgreSQL
            // (it waits for the twin); the caller retries and then replays.
            let r = idempotency_keys::Entity::insert(key)
                .on_conflict_do_nothing()
                .exec_without_returning(txn)
                .await
                .map_err(StoreError::Unavailable)?;
            if !matches!(r, TryInsertResult::Inserted(n) if n > 0) {
                return Err(StoreError::ConcurrentRetry);
            }
        }
    }
    if !card_free {
        return Err(StoreError::ActiveCaseExists);
    }
    let mut model = find_case(txn, &cmd.id, Lock::No)
        .await?
        .ok_or(StoreError::NotFound)?;
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
    let appended = cs.flush(txn).await?;
    Ok((Created::New(codec.to_domain(&model)?), appended))
}
