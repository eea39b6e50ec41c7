//! Read-only look-ups over the stored rows: listing cases by filter, a case's audit trail, and
//! whether another case removes the same employment. Locks and writes nothing; rows are read
//! back into the domain by `codec.rs`.

use sea_orm::sea_query::{Expr, ExprTrait, JoinType, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::codec::event_of;
use super::entities::{case_events, cases};
use super::{ListQuery, StoreError};
use crate::domain::{CaseEvent, CaseId, State};

/// Case rows matching the filters, in id (creation) order, at most `limit`.
pub(crate) async fn list(
    conn: &impl ConnectionTrait,
    query: &ListQuery,
) -> Result<Vec<cases::Model>, StoreError> {
    use cases::Column as C;
    let mut q = cases::Entity::find();
    if let Some(p) = &query.care_provider {
        q = q.filter(C::CareProviderHsaId.eq(p.to_string()));
    }
    if let Some(units) = &query.care_units {
        q = q.filter(C::CareUnitHsaId.is_in(units.iter().map(ToString::to_string)));
    }
    if !query.states.is_empty() {
        let names: Vec<&str> = query.states.iter().map(|s| s.as_str()).collect();
        let mut cond = Condition::any().add(C::State.is_in(names.clone()));
        if query.include_attention_from {
            cond = cond.add(
                Condition::all()
                    .add(C::State.eq(State::NeedsAttention.as_str()))
                    .add(C::AttentionFrom.is_in(names)),
            );
        }
        q = q.filter(cond);
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
