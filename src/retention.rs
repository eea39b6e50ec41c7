//! Retention (`[retention]`): how long an ended case's personal data, its revocation record and
//! finished outbox rows are kept, and the pass that removes what is past its time. The engine
//! runs a pass on a schedule (`Engine::spawn`); `retention purge [--dry-run]` runs one by hand.
//! Owns the periods and the order of a pass; what shredding and purging do to the rows is the
//! store's (`storage::retention`).

use std::time::Duration;

use serde::Deserialize;

use crate::clock::Clock;
use crate::domain::Timestamp;
use crate::metrics::{Metrics, Retained};
use crate::storage::{CaseStore, EventMeta, RetentionCutoffs, RetentionDue, StoreError};

/// Periods beyond this are surely a typo (and would underflow the cut-off timestamps).
const LONGEST: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Personal data of a case that ended (completed, rejected, cancelled) is destroyed this
    /// long after it ended.
    #[serde(with = "humantime_serde")]
    pub personal_data: Duration,
    /// The revocation record (the case row without personal data, and its audit trail) is kept
    /// this long after the case ended, then purged.
    #[serde(with = "humantime_serde")]
    pub record: Duration,
    /// Finished (done or skipped) outbox rows are deleted this long after they finished.
    #[serde(with = "humantime_serde")]
    pub outbox: Duration,
    /// How often the engine runs a pass; zero turns the job off.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Cases (and outbox rows) handled per round of a pass.
    pub batch_size: u32,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            personal_data: Duration::from_secs(180 * 24 * 3600),
            record: Duration::from_secs(3653 * 24 * 3600),
            outbox: Duration::from_secs(30 * 24 * 3600),
            interval: Duration::from_secs(3600),
            batch_size: 500,
        }
    }
}

impl RetentionSettings {
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.batch_size == 0 {
            problems.push("batch_size must be at least 1".to_owned());
        }
        // The record outlives the personal data: a purge needs the case shredded first.
        if self.record < self.personal_data {
            problems.push("record must be at least as long as personal_data".to_owned());
        }
        for (name, d) in [
            ("personal_data", self.personal_data),
            ("record", self.record),
            ("outbox", self.outbox),
            ("interval", self.interval),
        ] {
            if d > LONGEST {
                problems.push(format!("{name} is longer than 100 years"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The cut-offs of a pass as of `now`.
    pub fn cutoffs(&self, now: Timestamp) -> RetentionCutoffs {
        let before = |d: Duration| {
            let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
            Timestamp(now.0.saturating_sub(micros))
        };
        RetentionCutoffs {
            personal_data: before(self.personal_data),
            record: before(self.record),
            outbox: before(self.outbox),
        }
    }
}

/// What one pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub shredded: u64,
    pub purged: u64,
    pub outbox: u64,
}

/// Rounds per pass at most: a backlog larger than this many batches is left for the next pass.
const MAX_ROUNDS: usize = 100;

/// One retention pass as of `clock`'s now: ended cases past `personal_data` shredded (each with
/// an audit event), then cases past `record` purged (their purge markers kept), then finished
/// outbox rows past `outbox` deleted — in rounds of `batch_size` until nothing is left or
/// `MAX_ROUNDS` is reached. Counted in `metrics`. Active cases are never touched: only a case
/// with an end time qualifies, and the store re-checks that on the locked row.
pub async fn run_pass(
    store: &dyn CaseStore,
    clock: &dyn Clock,
    settings: &RetentionSettings,
    metrics: &Metrics,
) -> Result<PassReport, StoreError> {
    let result = pass(store, clock, settings, metrics).await;
    metrics.retention_pass(result.is_ok());
    result
}

async fn pass(
    store: &dyn CaseStore,
    clock: &dyn Clock,
    settings: &RetentionSettings,
    metrics: &Metrics,
) -> Result<PassReport, StoreError> {
    let now = clock.now();
    let cut = settings.cutoffs(now);
    let mut report = PassReport::default();
    for _ in 0..MAX_ROUNDS {
        let due = store.retention_due(&cut, settings.batch_size).await?;
        let mut round = PassReport::default();
        for id in &due.shred {
            let meta = EventMeta {
                actor: "system".into(),
                trace_id: String::new(),
                at: now,
                detail: "personal data destroyed after the retention period".into(),
            };
            if store.shred(id, cut.personal_data, meta).await? {
                round.shredded += 1;
            }
        }
        for id in &due.purge {
            if store.purge(id, cut.record, now).await? {
                round.purged += 1;
            }
        }
        round.outbox = store.purge_outbox(cut.outbox, settings.batch_size).await?;
        metrics.retention_removed(Retained::PersonalData, round.shredded);
        metrics.retention_removed(Retained::Record, round.purged);
        metrics.retention_removed(Retained::Outbox, round.outbox);
        report.shredded += round.shredded;
        report.purged += round.purged;
        report.outbox += round.outbox;
        if round == PassReport::default() {
            break;
        }
    }
    if report != PassReport::default() {
        tracing::info!(
            shredded = report.shredded,
            purged = report.purged,
            outbox = report.outbox,
            "retention pass"
        );
    }
    Ok(report)
}

/// What a pass as of `clock`'s now would remove (at most `limit` cases of each kind), without
/// removing anything: `retention purge --dry-run`.
pub async fn plan(
    store: &dyn CaseStore,
    clock: &dyn Clock,
    settings: &RetentionSettings,
    limit: u32,
) -> Result<RetentionDue, StoreError> {
    store
        .retention_due(&settings.cutoffs(clock.now()), limit)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_count_back_from_now() {
        let s = RetentionSettings {
            personal_data: Duration::from_secs(10),
            record: Duration::from_secs(100),
            outbox: Duration::from_secs(1),
            ..RetentionSettings::default()
        };
        let cut = s.cutoffs(Timestamp(1_000_000_000));
        assert_eq!(cut.personal_data, Timestamp(990_000_000));
        assert_eq!(cut.record, Timestamp(900_000_000));
        assert_eq!(cut.outbox, Timestamp(999_000_000));
    }

    #[test]
    fn the_record_may_not_go_before_the_personal_data() {
        let s = RetentionSettings {
            personal_data: Duration::from_secs(100),
            record: Duration::from_secs(10),
            batch_size: 0,
            ..RetentionSettings::default()
        };
        let e = s.validate().unwrap_err();
        assert!(e.contains("record must be at least"), "{e}");
        assert!(e.contains("batch_size"), "{e}");
        assert!(RetentionSettings::default().validate().is_ok());
    }
}
