//! News between replicas on PostgreSQL: every commit that appends audit events also sends a
//! notification (`NOTIFY` inside the transaction, so it is delivered on commit and never for a
//! rollback), and each replica's relay `LISTEN`s, reads the announced events back from the
//! events table and publishes them on its own bus (watchers) and wakes its idle workers.
//!
//! A notification names what was committed, not what it says: the committing replica's origin
//! and, per case, the range of event sequence numbers (case ids are random, never personal
//! data). The relay keeps one connection of its own; when it drops, the relay reconnects with
//! backoff and then tells every watcher to resync (re-read its case's trail from the last
//! event it sent), since notifications sent while nobody listened are gone. Watchers drop
//! duplicates and fill gaps by sequence number, so a stream shows each event once, in order.
//! SQLite is one process: its bus alone carries the news.

use std::collections::BTreeMap;
use std::time::Duration;

use sea_orm::sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement};

use super::{StoreError, queries};
use crate::bus::EventBus;
use crate::domain::{CaseEvent, CaseId};

/// The notification channel.
const CHANNEL: &str = "etk_events";
/// A payload must stay below PostgreSQL's 8000 bytes; longer announcements are split.
const PAYLOAD_MAX: usize = 7000;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One case's events in one commit: sequence numbers `first..=last`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    pub case_id: String,
    pub first: i64,
    pub last: i64,
}

/// The payloads announcing `events`, committed by `origin`: `"<origin> <case>:<first>-<last> …"`,
/// split so that none is longer than `PAYLOAD_MAX`.
pub(crate) fn payloads(origin: &str, events: &[CaseEvent]) -> Vec<String> {
    let mut ranges: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for e in events {
        let r = ranges
            .entry(e.case_id.to_string())
            .or_insert((e.sequence, e.sequence));
        r.0 = r.0.min(e.sequence);
        r.1 = r.1.max(e.sequence);
    }
    let mut out = Vec::new();
    let mut current = String::new();
    for (case, (first, last)) in ranges {
        let part = format!(" {case}:{first}-{last}");
        if !current.is_empty() && current.len() + part.len() > PAYLOAD_MAX {
            out.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push_str(origin);
        }
        current.push_str(&part);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Reads a payload back: its origin and ranges. Parts that do not parse are skipped (a
/// notification is a hint; watchers fill gaps from the table).
pub(crate) fn parse(payload: &str) -> (&str, Vec<Range>) {
    let mut parts = payload.split(' ');
    let origin = parts.next().unwrap_or_default();
    let ranges = parts
        .filter_map(|p| {
            let (case, seqs) = p.split_once(':')?;
            let (first, last) = seqs.split_once('-')?;
            let id = CaseId::parse(case)?;
            Some(Range {
                case_id: id.to_string(),
                first: first.parse().ok()?,
                last: last.parse().ok()?,
            })
        })
        .collect();
    (origin, ranges)
}

/// Sends the notifications for `events` inside `txn` (PostgreSQL only; delivered on commit).
pub(crate) async fn announce(
    txn: &DatabaseTransaction,
    origin: &str,
    events: &[CaseEvent],
) -> Result<(), StoreError> {
    if txn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    for payload in payloads(origin, events) {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [CHANNEL.into(), payload.into()],
        ))
        .await
        .map_err(StoreError::Unavailable)?;
    }
    Ok(())
}

/// Wakes other replicas' idle workers: work was made due without an event (leases given up).
pub(crate) async fn wake_others(
    conn: &impl ConnectionTrait,
    origin: &str,
) -> Result<(), StoreError> {
    if conn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [CHANNEL.into(), origin.into()],
    ))
    .await
    .map_err(StoreError::Unavailable)?;
    Ok(())
}

/// The relay: listens for other replicas' commits on a connection of its own and hands their
/// events to `bus`, for as long as the task runs. Never returns.
///
/// A connection that dies without a word (no FIN or RST reaches us: a dropped NAT or firewall
/// entry, a failed-over server) would leave the relay waiting forever, so every `check` the
/// listening connection must answer `SELECT 1` within `check`; if it does not, it is dropped,
/// a new one listens, and the watchers resync.
pub(crate) async fn relay(db: DatabaseConnection, origin: String, bus: EventBus, check: Duration) {
    let options = db.get_postgres_connection_pool().connect_options();
    let mut backoff = BACKOFF_MIN;
    loop {
        // A one-connection pool of its own with the store's connect options: the listening
        // connection is held for good and must not take one from the request pool. A new pool
        // for every attempt: a dropped listener hands its connection back only after an
        // `UNLISTEN`, which a dead connection never answers, and must not block the next one.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .connect_lazy_with((*options).clone());
        match listen(&pool).await {
            Ok(mut listener) => {
                backoff = BACKOFF_MIN;
                tracing::debug!("listening for other replicas' commits");
                // Whatever was committed while nobody listened: watchers re-read, workers look.
                bus.resync();
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + check, check);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    let received = tokio::select! {
                        r = listener.try_recv() => r,
                        _ = tick.tick() => {
                            match alive(&mut listener, check).await {
                                Ok(()) => continue,
                                Err(e) => {
                                    tracing::warn!(error = %e, "the connection listening for other replicas' commits does not answer; reconnecting");
                                    break;
                                }
                            }
                        }
                    };
                    match received {
                        Ok(Some(n)) => relay_one(&db, &origin, &bus, n.payload()).await,
                        // The connection dropped and was made again (and listens again).
                        Ok(None) => {
                            tracing::warn!(
                                "lost the connection listening for other replicas' commits; reconnected"
                            );
                            bus.resync();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "listening for other replicas' commits failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot listen for other replicas' commits")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Whether the listening connection answers `SELECT 1` within `limit`. Notifications that
/// arrive meanwhile are kept by the listener for the next `try_recv`.
async fn alive(listener: &mut PgListener, limit: Duration) -> Result<(), String> {
    match tokio::time::timeout(
        limit,
        sea_orm::sqlx::query("SELECT 1").execute(&mut *listener),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}", crate::engine::human(limit))),
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// One notification: another replica's events published here, idle workers woken.
async fn relay_one(db: &DatabaseConnection, origin: &str, bus: &EventBus, payload: &str) {
    let (from, ranges) = parse(payload);
    if from == origin {
        // Published by this process when it committed.
        return;
    }
    // Work may have been enqueued or made due.
    bus.notify_work();
    if ranges.is_empty() || !bus.has_subscribers() {
        return;
    }
    match queries::events_in(db, &ranges).await {
        Ok(events) => bus.publish(events),
        Err(e) => {
            // The events stay in the table: watchers re-read from there.
            tracing::warn!(error = %e, "cannot read other replicas' events; watchers resync");
            bus.resync();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{State, Timestamp};

    fn event(case_id: &CaseId, sequence: i64) -> CaseEvent {
        CaseEvent {
            case_id: case_id.clone(),
            sequence,
            kind: "accepted".into(),
            state: State::Accepted,
            actor: "system".into(),
            at: Timestamp(1_700_000_000_000_000),
            trace_id: String::new(),
            detail: String::new(),
            hash: String::new(),
            key_id: None,
        }
    }

    #[test]
    fn a_payload_names_the_origin_and_each_cases_range_and_reads_back() {
        let (a, b) = (crate::clock::new_case_id(), crate::clock::new_case_id());
        let events = [event(&a, 3), event(&b, 1), event(&a, 4), event(&a, 5)];
        let sent = payloads("origin-1", &events);
        assert_eq!(sent.len(), 1);
        let (origin, mut ranges) = parse(&sent[0]);
        assert_eq!(origin, "origin-1");
        ranges.sort_by(|x, y| x.case_id.cmp(&y.case_id));
        let mut expected = vec![
            Range {
                case_id: a.to_string(),
                first: 3,
                last: 5,
            },
            Range {
                case_id: b.to_string(),
                first: 1,
                last: 1,
            },
        ];
        expected.sort_by(|x, y| x.case_id.cmp(&y.case_id));
        assert_eq!(ranges, expected);
        assert!(payloads("o", &[]).is_empty(), "nothing to announce");
    }

    #[test]
    fn a_long_announcement_is_split_below_the_payload_limit_and_loses_no_case() {
        let ids: Vec<CaseId> = (0..1000).map(|_| crate::clock::new_case_id()).collect();
        let events: Vec<CaseEvent> = ids.iter().map(|id| event(id, 7)).collect();
        let sent = payloads("origin-1", &events);
        assert!(sent.len() > 1);
        let mut seen = Vec::new();
        for p in &sent {
            assert!(p.len() <= PAYLOAD_MAX, "{}", p.len());
            let (origin, ranges) = parse(p);
            assert_eq!(origin, "origin-1");
            seen.extend(ranges.into_iter().map(|r| r.case_id));
        }
        seen.sort();
        let mut all: Vec<String> = ids.iter().map(ToString::to_string).collect();
        all.sort();
        assert_eq!(seen, all);
    }

    #[test]
    fn parts_that_do_not_parse_are_skipped() {
        let id = crate::clock::new_case_id();
        let payload = format!("o junk x:1-2 {id}:a-2 {id}:2-3");
        let (origin, ranges) = parse(&payload);
        assert_eq!(origin, "o");
        assert_eq!(
            ranges,
            vec![Range {
                case_id: id.to_string(),
                first: 2,
                last: 3
            }]
        );
    }
}
