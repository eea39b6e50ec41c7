//! Idempotent creation of a case: the case row, its idempotency record and its first change.
//! A look-up answers replays and reused ids; the database's unique constraints (one active case
//! per card; one record per principal and `request_id`) decide the rest, so concurrent twins
//! cannot both win.
//! Commits nothing itself (the caller owns the transaction and retries `ConcurrentRetry`).

use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait,
    IntoActiveModel, QueryFilter, QueryTrait, TryInsertResult, TryIntoModel,
};

use super::changes::ChangeSet;
use super::codec::Codec;
use super::entities::{cases, idempotency_keys};
use std::collections::{HashMap, HashSet};

use super::sql::{Lock, load_cases};
use super::{CreateCase, Created, StoreError, Timing};
use crate::domain::saga::{Saga, initial_effects};
use crate::domain::{CaseEvent, CaseId};

/// Creates the case in `txn`, or finds the one this request already created. Returns the
/// events appended (none for a replay), to publish once the caller has committed.
///
/// `create_many` with one command: a new case takes five statements (the idempotency look-up,
/// then the case row as it stands after its `accepted` event — built in memory, never re-read —
/// the idempotency record, the event and the first effects). Nothing is written before a
/// refusal is known, except where a concurrent twin decides it (`ConcurrentRetry`: the caller
/// rolls back and tries again).
pub(crate) async fn create_in(
    txn: &DatabaseTransaction,
    codec: &Codec,
    timing: Timing,
    cmd: &CreateCase,
) -> Result<(Created, Vec<CaseEvent>), StoreError> {
    let (mut answers, appended) = create_many(txn, codec, timing, &[cmd]).await?;
    let created = answers
        .pop()
        .ok_or_else(|| StoreError::Invariant("a create was not answered".into()))??;
    Ok((created, appended))
}

/// What a new case's row and first change look like before anything is written.
struct Planned {
    model: cases::Model,
    changes: ChangeSet,
}

/// The case row as it stands after its `accepted` event, with that event and its first
/// effects, planned in memory.
fn plan(codec: &Codec, timing: Timing, cmd: &CreateCase) -> Result<Planned, StoreError> {
    let mut model = codec
        .new_case(cmd, timing.check_revocation)?
        .try_into_model()
        .map_err(|e| StoreError::Corrupt(format!("new case row: {e}")))?;
    let saga = Saga::new(cmd.report.route).with_check(timing.check_revocation);
    let mut changes = ChangeSet::new(timing, codec);
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
    changes.change(
        &mut model,
        saga,
        "accepted",
        &initial_effects(&saga),
        &meta,
        None,
    )?;
    // The row is inserted as it stands now; the change set writes only its event and effects.
    changes.untouch(&model.id);
    Ok(Planned { model, changes })
}

/// How one of several creates is answered, before the batch commits.
pub(crate) type Outcome = Result<Created, StoreError>;

/// What `create_many` decided for one command.
enum Decision {
    /// A new case, planned.
    New(Box<Planned>),
    /// An earlier request's case (stored, or new in this batch: the index of its command).
    Replay(String),
    ReplayOf(usize),
    /// The request id of an earlier command in this batch, with other content.
    ReusedOf(usize),
    Refused(StoreError),
}

/// Rows per multi-row statement: well below both backends' limits on bound parameters.
const ROWS_PER_STATEMENT: usize = 64;

/// Several creates in `txn` with a handful of statements in all, whatever their number: one
/// look-up of their request ids, one insert each of case rows, idempotency records, events
/// and effects, and one read of the cases replayed. Decides exactly as `create_in` would for
/// each command in turn: a command with the request id of an earlier one in the batch replays
/// it (or is refused as a reused id); a second new case for a card is refused.
///
/// Returns each command's answer (refusals write nothing), the events appended, and `Err`
/// when the batch cannot be decided here (a database error, or a twin on another replica
/// committed meanwhile): then the caller rolls back and runs each through `create_in`.
pub(crate) async fn create_many(
    txn: &DatabaseTransaction,
    codec: &Codec,
    timing: Timing,
    cmds: &[&CreateCase],
) -> Result<(Vec<Outcome>, Vec<CaseEvent>), StoreError> {
    let keys: Vec<Option<String>> = cmds
        .iter()
        .map(|c| {
            c.request_id
                .as_ref()
                .map(|r| codec.request_key(c.principal.as_str(), r))
        })
        .collect();
    let stored = stored_records(txn, cmds, &keys).await?;

    let mut decisions: Vec<Decision> = Vec::with_capacity(cmds.len());
    let mut batch_keys: HashMap<(String, String), usize> = HashMap::new();
    let mut batch_cards: HashMap<String, usize> = HashMap::new();
    for (i, (cmd, key)) in cmds.iter().zip(&keys).enumerate() {
        let principal = cmd.principal.to_string();
        if let (Some(key), Some(raw)) = (key, &cmd.request_id) {
            let prior = stored
                .get(&(principal.clone(), key.clone()))
                .or_else(|| stored.get(&(principal.clone(), raw.clone())));
            if let Some(prior) = prior {
                decisions.push(if prior.fingerprint == cmd.fingerprint {
                    Decision::Replay(prior.case_id.clone())
                } else {
                    Decision::Refused(StoreError::RequestIdReused)
                });
                continue;
            }
            if let Some(&j) = batch_keys.get(&(principal.clone(), key.clone())) {
                decisions.push(if cmds[j].fingerprint == cmd.fingerprint {
                    Decision::ReplayOf(j)
                } else {
                    Decision::ReusedOf(j)
                });
                continue;
            }
        }
        let card = cmd.report.card_number.to_string();
        if batch_cards.contains_key(&card) {
            decisions.push(Decision::Refused(StoreError::ActiveCaseExists));
            continue;
        }
        batch_cards.insert(card, i);
        if let Some(key) = key {
            batch_keys.insert((principal, key.clone()), i);
        }
        decisions.push(Decision::New(Box::new(plan(codec, timing, cmd)?)));
    }

    // One active case per card, decided by the unique index: a conflict inserts nothing, and
    // RETURNING names the rows that went in.
    let rows: Vec<&cases::Model> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::New(p) => Some(&p.model),
            _ => None,
        })
        .collect();
    let mut inserted: HashSet<String> = HashSet::new();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut insert = cases::Entity::insert_many(
            chunk
                .iter()
                .map(|m| (*m).clone().into_active_model().reset_all()),
        )
        .on_conflict(
            OnConflict::column(cases::Column::ActiveCardNumber)
                .do_nothing()
                .to_owned(),
        )
        .into_query();
        insert.returning_col(cases::Column::Id);
        for row in txn
            .query_all(&insert)
            .await
            .map_err(StoreError::Unavailable)?
        {
            inserted.insert(row.try_get("", "id").map_err(StoreError::Unavailable)?);
        }
    }
    // A card with an active stored case; or, for a request id, a twin that committed on
    // another replica since the look-up (PostgreSQL): look again, as `create_in` does.
    let conflicted: Vec<usize> = decisions
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d, Decision::New(p) if !inserted.contains(&p.model.id)))
        .map(|(i, _)| i)
        .collect();
    let again = if conflicted.iter().any(|&i| keys[i].is_some()) {
        let cmds_again: Vec<&CreateCase> = conflicted.iter().map(|&i| cmds[i]).collect();
        let keys_again: Vec<Option<String>> = conflicted.iter().map(|&i| keys[i].clone()).collect();
        stored_records(txn, &cmds_again, &keys_again).await?
    } else {
        HashMap::new()
    };
    for i in conflicted {
        let cmd = cmds[i];
        let prior = keys[i].as_ref().and_then(|key| {
            let principal = cmd.principal.to_string();
            again
                .get(&(principal.clone(), key.clone()))
                .or_else(|| again.get(&(principal, cmd.request_id.clone().unwrap_or_default())))
        });
        decisions[i] = match prior {
            Some(p) if p.fingerprint == cmd.fingerprint => Decision::Replay(p.case_id.clone()),
            Some(_) => Decision::Refused(StoreError::RequestIdReused),
            None => Decision::Refused(StoreError::ActiveCaseExists),
        };
    }
    // An id taken by an earlier command of the batch is refused only if that command stores
    // it. If it does not (its card was active), one by one this command would have been the
    // first with the id: that is decided one by one, not guessed here.
    for i in 0..decisions.len() {
        if let Decision::ReusedOf(j) = decisions[i] {
            if !matches!(decisions[j], Decision::New(_)) {
                return Err(StoreError::ConcurrentRetry);
            }
            decisions[i] = Decision::Refused(StoreError::RequestIdReused);
        }
    }
    // A repeat of a request in this batch answers as that request does.
    for i in 0..decisions.len() {
        if let Decision::ReplayOf(j) = decisions[i] {
            decisions[i] = match &decisions[j] {
                Decision::New(_) => Decision::ReplayOf(j),
                Decision::Replay(id) => Decision::Replay(id.clone()),
                Decision::Refused(StoreError::RequestIdReused) => {
                    Decision::Refused(StoreError::RequestIdReused)
                }
                _ => Decision::Refused(StoreError::ActiveCaseExists),
            };
        }
    }

    let mut records = Vec::new();
    let mut changes = ChangeSet::new(timing, codec);
    for (i, d) in decisions.iter_mut().enumerate() {
        let Decision::New(p) = d else { continue };
        if let Some(key) = &keys[i] {
            records.push(idempotency_keys::ActiveModel {
                principal_hsa_id: Set(cmds[i].principal.to_string()),
                request_id: Set(key.clone()),
                fingerprint: Set(cmds[i].fingerprint.clone()),
                case_id: Set(cmds[i].id.to_string()),
                created_at: Set(cmds[i].meta.at.0),
            });
        }
        changes.absorb(std::mem::replace(
            &mut p.changes,
            ChangeSet::new(timing, codec),
        ));
    }
    for chunk in records.chunks(ROWS_PER_STATEMENT) {
        let n = chunk.len() as u64;
        let r = idempotency_keys::Entity::insert_many(chunk.to_vec())
            .on_conflict_do_nothing()
            .exec_without_returning(txn)
            .await
            .map_err(StoreError::Unavailable)?;
        if !matches!(r, TryInsertResult::Inserted(k) if k == n) {
            // A twin on another replica holds one of these ids now.
            return Err(StoreError::ConcurrentRetry);
        }
    }
    let appended = changes.flush(txn).await?;

    let replayed: Vec<CaseId> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Replay(id) => CaseId::parse(id),
            _ => None,
        })
        .collect();
    let replayed = if replayed.is_empty() {
        HashMap::new()
    } else {
        load_cases(txn, &replayed.iter().collect::<Vec<_>>(), Lock::No).await?
    };
    let mut news = HashMap::new();
    for (i, d) in decisions.iter().enumerate() {
        if let Decision::New(p) = d {
            news.insert(i, codec.to_domain(&p.model)?);
        }
    }
    let answers = decisions
        .into_iter()
        .enumerate()
        .map(|(i, d)| match d {
            Decision::New(_) => Ok(Created::New(news[&i].clone())),
            Decision::Replay(id) => replayed
                .get(&id)
                .ok_or(StoreError::NotFound)
                .and_then(|m| codec.to_domain(m))
                .map(Created::Replayed),
            // Resolved above: the first request with this id is a new case.
            Decision::ReplayOf(j) => news
                .get(&j)
                .cloned()
                .map(Created::Replayed)
                .ok_or(StoreError::ActiveCaseExists),
            Decision::Refused(e) => Err(e),
            // Resolved above.
            Decision::ReusedOf(_) => Err(StoreError::RequestIdReused),
        })
        .collect();
    Ok((answers, appended))
}

/// The stored idempotency records among `cmds`' request ids (by digest, and by the id itself
/// for records from before ids were digested), keyed by (principal, request id).
async fn stored_records(
    txn: &DatabaseTransaction,
    cmds: &[&CreateCase],
    keys: &[Option<String>],
) -> Result<HashMap<(String, String), idempotency_keys::Model>, StoreError> {
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (cmd, key) in cmds.iter().zip(keys) {
        if let (Some(key), Some(raw)) = (key, &cmd.request_id) {
            wanted.push((cmd.principal.to_string(), key.clone()));
            wanted.push((cmd.principal.to_string(), raw.clone()));
        }
    }
    let mut found = HashMap::new();
    for chunk in wanted.chunks(2 * ROWS_PER_STATEMENT) {
        let principals: HashSet<&str> = chunk.iter().map(|(p, _)| p.as_str()).collect();
        let ids: HashSet<&str> = chunk.iter().map(|(_, r)| r.as_str()).collect();
        let rows = idempotency_keys::Entity::find()
            .filter(idempotency_keys::Column::PrincipalHsaId.is_in(principals))
            .filter(idempotency_keys::Column::RequestId.is_in(ids))
            .all(txn)
            .await
            .map_err(StoreError::Unavailable)?;
        for row in rows {
            found.insert((row.principal_hsa_id.clone(), row.request_id.clone()), row);
        }
    }
    Ok(found)
}
