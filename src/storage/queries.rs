//! Read-only look-ups over the stored rows: listing cases by filter, a case's audit trail,
//! whether another case removes the same employment, the counts behind the gauges, and whether
//! the schema is current. Locks and writes nothing; rows are read back into the domain by
//! `codec.rs`.

use sea_orm::sea_query::{Expr, ExprTrait, JoinType, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::audit::{ChainHead, HeadRow};
use super::codec::event_of;
use super::entities::{case_events, cases, effects};
use super::{ListQuery, Stats, StepView, StoreError};
use crate::domain::{CaseEvent, CaseId, State, Timestamp};

/// Case rows matching the filters, in id (creation) order, at most `limit`.
///
/// Several states are read one state at a time (each `state = ? AND id > ? ORDER BY id LIMIT n`
/// walks `cases_state` in id order and stops at the limit), then merged: a single `state IN
/// (…)` reads every case in those states and sorts them before the limit applies, so a page
/// would cost as much as all waiting cases (tests/it/plans.rs).
pub(crate) async fn list(
    conn: &impl ConnectionTrait,
    query: &ListQuery,
) -> Result<Vec<cases::Model>, StoreError> {
    use cases::Column as C;
    let mut parts: Vec<Condition> = query
        .states
        .iter()
        .map(|s| Condition::all().add(C::State.eq(s.as_str())))
        .collect();
    if query.include_attention_from {
        parts.extend(query.states.iter().map(|s| {
            Condition::all()
                .add(C::State.eq(State::NeedsAttention.as_str()))
                .add(C::AttentionFrom.eq(s.as_str()))
        }));
    }
    if parts.is_empty() {
        parts.push(Condition::all());
    } else if let Some(units) = query.care_units.as_ref().filter(|u| u.len() > 1) {
        // And one unit at a time: `cases_unit_state` (unit, state, id) is then read in order.
        parts = parts
            .into_iter()
            .flat_map(|p| {
                units
                    .iter()
                    .map(move |u| p.clone().add(C::CareUnitHsaId.eq(u.to_string())))
            })
            .collect();
    }
    let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
    let mut rows: Vec<cases::Model> = Vec::new();
    for part in parts {
        rows.extend(list_part(conn, query, part).await?);
    }
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    rows.dedup_by(|a, b| a.id == b.id);
    rows.truncate(limit);
    Ok(rows)
}

/// One state's share of `list` (`part`: its state condition).
async fn list_part(
    conn: &impl ConnectionTrait,
    query: &ListQuery,
    part: Condition,
) -> Result<Vec<cases::Model>, StoreError> {
    use cases::Column as C;
    // A shredded case is no longer served: its personal data is gone.
    let mut q = cases::Entity::find()
        .filter(C::ShreddedAt.is_null())
        .filter(part);
    if let Some(p) = &query.care_provider {
        q = q.filter(C::CareProviderHsaId.eq(p.to_string()));
    }
    if let Some(units) = &query.care_units {
        q = q.filter(C::CareUnitHsaId.is_in(units.iter().map(ToString::to_string)));
    }
    if let Some(r) = query.route {
        q = q.filter(C::KivRemovalRoute.eq(r.as_str()));
    }
    match query.revocation_confirmed {
        Some(true) => q = q.filter(C::RevocationConfirmedAt.is_not_null()),
        Some(false) => q = q.filter(C::RevocationConfirmedAt.is_null()),
        None => {}
    }
    if let Some(s) = query.snapshot {
        q = q.filter(C::SnapshotState.eq(s.as_str()));
    }
    if let Some(t) = query.created_before {
        q = q.filter(C::CreatedAt.lte(t.0));
    }
    if let Some(t) = query.created_after {
        q = q.filter(C::CreatedAt.gte(t.0));
    }
    if let Some(after) = &query.after {
        q = q.filter(C::Id.gt(after.to_string()));
    }
    q.order_by_asc(C::Id)
        .limit(u64::from(query.limit))
        .all(conn)
        .await
        .map_err(StoreError::Unavailable)
}

/// The case's audit trail, in order.
pub(crate) async fn events(
    conn: &impl ConnectionTrait,
    id: &CaseId,
) -> Result<Vec<CaseEvent>, StoreError> {
    case_events::Entity::find()
        .filter(case_events::Column::CaseId.eq(id.to_string()))
        .order_by_asc(case_events::Column::Seq)
        .all(conn)
        .await
        .map_err(StoreError::Unavailable)?
        .into_iter()
        .map(event_of)
        .collect()
}

/// The events of several cases' sequence ranges, in case and sequence order.
pub(crate) async fn events_in(
    conn: &impl ConnectionTrait,
    ranges: &[super::listen::Range],
) -> Result<Vec<CaseEvent>, StoreError> {
    use case_events::Column as C;
    let mut any = Condition::any();
    for r in ranges {
        any = any.add(
            Condition::all()
                .add(C::CaseId.eq(r.case_id.clone()))
                .add(C::Seq.gte(r.first))
                .add(C::Seq.lte(r.last)),
        );
    }
    case_events::Entity::find()
        .filter(any)
        .order_by_asc(C::CaseId)
        .order_by_asc(C::Seq)
        .all(conn)
        .await
        .map_err(StoreError::Unavailable)?
        .into_iter()
        .map(event_of)
        .collect()
}

/// Whether another case of the same holder (by pseudonym) at the same care unit has a confirmed
/// revocation and is removing, or has removed, the employment.
pub(crate) async fn kiv_removed_by_other_case(
    conn: &impl ConnectionTrait,
    id: &CaseId,
) -> Result<bool, StoreError> {
    use cases::Column as C;
    let (other, this) = ("o", "c");
    let col = |table: &'static str, c: C| Expr::col((table, c));
    let removing = [State::KivRemovalPending, State::Completed].map(State::as_str);
    let mut q = Query::select();
    q.column((other, C::Id))
        .from_as(cases::Entity, other)
        .join_as(
            JoinType::InnerJoin,
            cases::Entity,
            this,
            col(other, C::HolderPseudonym)
                .equals((this, C::HolderPseudonym))
                .and(col(other, C::CareUnitHsaId).equals((this, C::CareUnitHsaId))),
        )
        .and_where(col(this, C::Id).eq(id.to_string()))
        .and_where(col(other, C::Id).ne(col(this, C::Id)))
        .and_where(col(other, C::RevocationConfirmedAt).is_not_null())
        .and_where(col(other, C::State).is_in(removing))
        .limit(1);
    let rows = conn.query_all(&q).await.map_err(StoreError::Unavailable)?;
    Ok(!rows.is_empty())
}

/// Cases by state and the outbox's lag as of `now`. Both read indexes only: `cases_state`
/// (state, id) and `effects_due` (status, due_at).
pub(crate) async fn stats(
    conn: &impl ConnectionTrait,
    now: Timestamp,
) -> Result<Stats, StoreError> {
    use strum::VariantArray;
    let counted: Vec<(String, i64)> = cases::Entity::find()
        .select_only()
        .column(cases::Column::State)
        .column_as(cases::Column::Id.count(), "n")
        .group_by(cases::Column::State)
        .into_tuple()
        .all(conn)
        .await
        .map_err(StoreError::Unavailable)?;
    let count = |state: State| {
        counted
            .iter()
            .find(|(s, _)| s == state.as_str())
            .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0))
    };
    let by_state: Vec<(State, u64)> = State::VARIANTS.iter().map(|s| (*s, count(*s))).collect();
    use effects::Column as E;
    // Due and not held by a live lease: waiting for a worker. Timers not yet due are no lag.
    let oldest: Option<Option<i64>> = effects::Entity::find()
        .select_only()
        .column_as(E::DueAt.min(), "oldest")
        .filter(E::Status.eq("pending"))
        .filter(E::DueAt.lte(now.0))
        .filter(
            Condition::any()
                .add(E::LeaseUntil.is_null())
                .add(E::LeaseUntil.lt(now.0)),
        )
        .into_tuple()
        .one(conn)
        .await
        .map_err(StoreError::Unavailable)?;
    let waited = oldest.flatten().map_or(0, |due| {
        u64::try_from(now.0.saturating_sub(due)).unwrap_or(0)
    });
    Ok(Stats {
        needs_attention: count(State::NeedsAttention),
        by_state,
        oldest_due_age: std::time::Duration::from_micros(waited),
    })
}

/// Whether this build's latest migration is recorded as applied. Only the latest one is looked
/// for: a newer replica's later migrations (rolling upgrades) do not make this one unready.
pub(crate) async fn schema_current(conn: &impl ConnectionTrait) -> Result<bool, StoreError> {
    use migration::MigratorTrait;
    let Some(latest) = migration::Migrator::migrations()
        .last()
        .map(|m| m.name().to_owned())
    else {
        return Ok(true);
    };
    let mut q = Query::select();
    q.expr(Expr::val(1))
        .from(migration::Migrator::migration_table_name())
        .and_where(Expr::col("version").eq(latest))
        .limit(1);
    let rows = conn.query_all(&q).await.map_err(StoreError::Unavailable)?;
    Ok(!rows.is_empty())
}

/// This build's migrations compared with those the database records as applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Known to this build, not applied: the schema is older than this build needs.
    pub pending: Vec<String>,
    /// Applied, not known to this build: a newer version migrated the database (a rollout in
    /// progress, or a rollback of the binary).
    pub unknown: Vec<String>,
}

impl SchemaStatus {
    /// `pending` = `known` − `applied` (in `known`'s order), `unknown` = `applied` − `known`
    /// (in `applied`'s order).
    pub fn of(known: &[String], applied: &[String]) -> Self {
        Self {
            pending: known
                .iter()
                .filter(|k| !applied.contains(k))
                .cloned()
                .collect(),
            unknown: applied
                .iter()
                .filter(|a| !known.contains(a))
                .cloned()
                .collect(),
        }
    }
}

/// The migration versions the database records as applied, in the order they were applied;
/// none when it has no migration table yet. Read-only, so a runtime role without DDL rights
/// may ask, and it never fails on migrations this build does not know (unlike
/// `sea-orm-migration`'s status look-ups).
pub(crate) async fn applied_migrations(
    conn: &impl ConnectionTrait,
) -> Result<Vec<String>, sea_orm::DbErr> {
    use migration::MigratorTrait;
    let table = migration::Migrator::migration_table_name().to_string();
    let exists = match conn.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            "SELECT 1 FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = $1"
        }
        _ => "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1",
    };
    let found = conn
        .query_one_raw(sea_orm::Statement::from_sql_and_values(
            conn.get_database_backend(),
            exists,
            [table.clone().into()],
        ))
        .await?;
    if found.is_none() {
        return Ok(Vec::new());
    }
    let mut q = Query::select();
    q.column("version")
        .from(migration::Migrator::migration_table_name())
        .order_by("applied_at", sea_orm::Order::Asc)
        .order_by("version", sea_orm::Order::Asc);
    conn.query_all(&q)
        .await?
        .iter()
        .map(|row| row.try_get::<String>("", "version"))
        .collect()
}

/// Every case id after `after`, in id order, at most `limit`: the verifier's walk. Reads ids
/// only, so a case whose personal data cannot be decrypted is verified too.
pub(crate) async fn case_ids(
    conn: &impl ConnectionTrait,
    after: Option<&CaseId>,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    use cases::Column as C;
    let mut q = cases::Entity::find().select_only().column(C::Id);
    if let Some(after) = after {
        q = q.filter(C::Id.gt(after.to_string()));
    }
    q.order_by_asc(C::Id)
        .limit(u64::from(limit))
        .into_tuple()
        .all(conn)
        .await
        .map_err(StoreError::Unavailable)
}

/// How many cases there are.
pub(crate) async fn count_cases(conn: &impl ConnectionTrait) -> Result<u64, StoreError> {
    use sea_orm::PaginatorTrait;
    let n = cases::Entity::find()
        .count(conn)
        .await
        .map_err(StoreError::Unavailable)?;
    Ok(n)
}

/// The chain head on the case row (`NotFound` without the row).
pub(crate) async fn chain_head(
    conn: &impl ConnectionTrait,
    id: &CaseId,
) -> Result<ChainHead, StoreError> {
    use cases::Column as C;
    type Head = (i64, String, Option<String>, String, i64, i64);
    let row: Option<Head> = cases::Entity::find()
        .select_only()
        .column(C::LastSeq)
        .column(C::LastHash)
        .column(C::HeadSeal)
        .column(C::State)
        .column(C::UpdatedAt)
        .column(C::Version)
        .filter(C::Id.eq(id.to_string()))
        .into_tuple()
        .one(conn)
        .await
        .map_err(StoreError::Unavailable)?;
    let (sequence, hash, seal, state, updated_at, version) = row.ok_or(StoreError::NotFound)?;
    Ok(ChainHead {
        sequence,
        hash,
        seal,
        row: Some(HeadRow {
            state,
            updated_at,
            version,
        }),
    })
}

/// Case ids after `after` that events name but no case row has, with their event counts.
pub(crate) async fn orphan_event_cases(
    conn: &impl ConnectionTrait,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<(String, u64)>, StoreError> {
    use case_events::Column as E;
    use cases::Column as C;
    let mut exists = Query::select();
    exists
        .expr(Expr::val(1))
        .from(cases::Entity)
        .and_where(Expr::col((cases::Entity, C::Id)).equals((case_events::Entity, E::CaseId)));
    let mut q = Query::select();
    q.column((case_events::Entity, E::CaseId))
        .expr(Expr::col((case_events::Entity, E::Seq)).count())
        .from(case_events::Entity)
        .and_where(Expr::exists(exists).not())
        .group_by_col((case_events::Entity, E::CaseId))
        .order_by((case_events::Entity, E::CaseId), sea_orm::Order::Asc)
        .limit(u64::from(limit));
    if let Some(after) = after {
        q.and_where(Expr::col((case_events::Entity, E::CaseId)).gt(after));
    }
    let rows = conn.query_all(&q).await.map_err(StoreError::Unavailable)?;
    rows.iter()
        .map(|r| {
            let id = r.try_get_by_index::<String>(0)?;
            let n = r.try_get_by_index::<i64>(1)?;
            Ok((id, u64::try_from(n).unwrap_or(0)))
        })
        .collect::<Result<_, sea_orm::DbErr>>()
        .map_err(StoreError::Unavailable)
}

/// A case's event rows as stored, in sequence order (decoded by the caller, row by row).
pub(crate) async fn event_rows(
    conn: &impl ConnectionTrait,
    id: &CaseId,
) -> Result<Vec<case_events::Model>, StoreError> {
    case_events::Entity::find()
        .filter(case_events::Column::CaseId.eq(id.to_string()))
        .order_by_asc(case_events::Column::Seq)
        .all(conn)
        .await
        .map_err(StoreError::Unavailable)
}

/// The lists m0008 filled, which start-up consumes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum UpgradeList {
    /// Cases whose all-legacy trail may still be anchored.
    LegacyTrails,
    /// Cases whose head seal is still the v1 seal.
    V1Seals,
}

impl UpgradeList {
    fn table(self) -> &'static str {
        match self {
            Self::LegacyTrails => "audit_legacy_cases",
            Self::V1Seals => "audit_v1_seals",
        }
    }
}

/// Case ids on one of m0008's lists after `after` (id order, at most `limit`).
pub(crate) async fn listed_cases(
    conn: &impl ConnectionTrait,
    list: UpgradeList,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    let mut q = Query::select();
    q.column("case_id")
        .from(list.table())
        .order_by("case_id", sea_orm::Order::Asc)
        .limit(u64::from(limit));
    if let Some(after) = after {
        q.and_where(Expr::col("case_id").gt(after));
    }
    let rows = conn.query_all(&q).await.map_err(StoreError::Unavailable)?;
    rows.iter()
        .map(|r| r.try_get_by_index::<String>(0))
        .collect::<Result<_, _>>()
        .map_err(StoreError::Unavailable)
}

/// Takes `id` off one of m0008's lists: the case had its one chance.
pub(crate) async fn unlist_case(
    conn: &impl ConnectionTrait,
    list: UpgradeList,
    id: &str,
) -> Result<(), StoreError> {
    let mut q = Query::delete();
    q.from_table(list.table())
        .and_where(Expr::col("case_id").eq(id));
    conn.execute(&q).await.map_err(StoreError::Unavailable)?;
    Ok(())
}

/// The case's outbox rows, in creation order.
pub(crate) async fn steps(
    conn: &impl ConnectionTrait,
    id: &CaseId,
) -> Result<Vec<StepView>, StoreError> {
    use effects::Column as E;
    let rows = effects::Entity::find()
        .filter(E::CaseId.eq(id.to_string()))
        .order_by_asc(E::CreatedAt)
        .order_by_asc(E::Key)
        .all(conn)
        .await
        .map_err(StoreError::Unavailable)?;
    Ok(rows
        .into_iter()
        .map(|r| StepView {
            leased: r.lease_owner.is_some(),
            key: r.key,
            step: r.step,
            status: r.status,
            attempts: u32::try_from(r.attempts).unwrap_or(u32::MAX),
            last_error: r.last_error,
            due_at: Timestamp(r.due_at),
            created_at: Timestamp(r.created_at),
            updated_at: Timestamp(r.updated_at),
        })
        .collect())
}

#[cfg(test)]
mod schema_tests {
    use super::SchemaStatus;

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn pending_is_known_minus_applied_and_unknown_is_applied_minus_known() {
        let known = v(&["m1", "m2", "m3"]);
        assert_eq!(SchemaStatus::of(&known, &known), SchemaStatus::default());
        assert_eq!(
            SchemaStatus::of(&known, &v(&["m1"])),
            SchemaStatus {
                pending: v(&["m2", "m3"]),
                unknown: vec![],
            }
        );
        // A newer version migrated further: nothing pending here, its migration unknown.
        assert_eq!(
            SchemaStatus::of(&known, &v(&["m1", "m2", "m3", "m4"])),
            SchemaStatus {
                pending: vec![],
                unknown: v(&["m4"]),
            }
        );
        assert_eq!(
            SchemaStatus::of(&known, &[]),
            SchemaStatus {
                pending: known.clone(),
                unknown: vec![],
            }
        );
    }
}
