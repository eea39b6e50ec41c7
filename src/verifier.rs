//! Verifying the audit chains of many cases: the one walk behind `VerifyAuditChain`, the offline
//! `audit verify` subcommand and the periodic check inside the gateway (`[audit]`). Each case is
//! verified by `CaseStore::verify_audit` (its events against the sealed head on its row, in one
//! snapshot); this module pages through the cases, then through the trails whose case row is
//! gone (orphans, each reported broken), and keeps the counts. A case whose trail or row cannot
//! be read is reported broken and the walk goes on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::CaseId;
use crate::metrics::Metrics;
use crate::storage::{BrokenLink, CaseStore, ChainProblem, ChainReport, StoreError, orphan_report};

/// `[audit]`: the periodic verification inside the gateway.
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// How often every case's audit chain is verified (log + metric when one is broken); the
    /// first run starts one interval after start-up. `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub verify_interval: Duration,
}

/// Cases read per page of the walk.
const PAGE: u32 = 200;

/// Counts of a walk so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub checked: u64,
    /// Cases to verify, counted when the walk began (cases created meanwhile are verified too).
    pub total: u64,
    pub broken: u64,
    pub events: u64,
    pub legacy: u64,
}

/// A walk over one case or every case, verifying one case per `next`.
#[derive(Debug)]
pub struct Walk {
    store: Arc<dyn CaseStore>,
    /// Ids read but not yet verified.
    queue: VecDeque<CaseId>,
    /// Where the next page starts; `None` once everything is read (or for a one-case walk).
    after: Option<Option<CaseId>>,
    /// Orphan trails read but not yet reported: case id and event count.
    orphans: VecDeque<(String, u64)>,
    /// Where the next page of orphans starts; `None` once all are read (or for a one-case walk).
    orphans_after: Option<Option<String>>,
    progress: Progress,
    /// A one-case walk: a missing case is an error, not skipped.
    single: bool,
}

impl Walk {
    /// Every case, in id order.
    pub async fn all(store: Arc<dyn CaseStore>) -> Result<Self, StoreError> {
        let total = store.count_cases().await?;
        Ok(Self {
            store,
            queue: VecDeque::new(),
            after: Some(None),
            orphans: VecDeque::new(),
            orphans_after: Some(None),
            progress: Progress {
                total,
                ..Progress::default()
            },
            single: false,
        })
    }

    /// One case (`NotFound` from `next` if it does not exist).
    pub fn one(store: Arc<dyn CaseStore>, id: CaseId) -> Self {
        Self {
            store,
            queue: VecDeque::from([id]),
            after: None,
            orphans: VecDeque::new(),
            orphans_after: None,
            progress: Progress {
                total: 1,
                ..Progress::default()
            },
            single: true,
        }
    }

    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Verifies the next case; `None` when every case is done.
    pub async fn next(&mut self) -> Option<Result<(CaseId, ChainReport), StoreError>> {
        loop {
            if self.queue.is_empty()
                && let Some(after) = self.after.take()
            {
                match self.store.case_ids(after.as_ref(), PAGE).await {
                    Ok(ids) => {
                        if ids.len() == PAGE as usize {
                            self.after = Some(ids.last().cloned());
                        }
                        self.queue.extend(ids);
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            let Some(id) = self.queue.pop_front() else {
                return self.next_orphan().await;
            };
            let report = match self.store.verify_audit(&id).await {
                Ok(r) => r,
                // A walk over every case skips a case that vanished meanwhile.
                Err(StoreError::NotFound) if !self.single => continue,
                Err(StoreError::Corrupt(_)) => unreadable(),
                Err(e) => return Some(Err(e)),
            };
            return Some(Ok((id, self.count(report))));
        }
    }

    /// The next trail without a case row, once every case is done.
    async fn next_orphan(&mut self) -> Option<Result<(CaseId, ChainReport), StoreError>> {
        loop {
            if self.orphans.is_empty()
                && let Some(after) = self.orphans_after.take()
            {
                match self.store.orphan_event_cases(after.as_deref(), PAGE).await {
                    Ok(ids) => {
                        if ids.len() == PAGE as usize {
                            self.orphans_after = Some(ids.last().map(|(id, _)| id.clone()));
                        }
                        self.orphans.extend(ids);
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            let (raw, events) = self.orphans.pop_front()?;
            let report = orphan_report(events);
            let Some(id) = CaseId::parse(&raw) else {
                // Not even a case id: counted and logged, but there is nothing to name.
                self.count(report);
                tracing::error!(
                    events,
                    "audit events under an unreadable case id and no case row"
                );
                continue;
            };
            return Some(Ok((id, self.count(report))));
        }
    }

    fn count(&mut self, report: ChainReport) -> ChainReport {
        let p = &mut self.progress;
        p.checked += 1;
        p.total = p.total.max(p.checked);
        p.events += report.events;
        p.legacy += report.legacy;
        p.broken += u64::from(report.broken.is_some());
        report
    }
}

/// The report on a case whose row or trail cannot be read at all.
fn unreadable() -> ChainReport {
    ChainReport {
        broken: Some(BrokenLink {
            sequence: 0,
            problem: ChainProblem::HashMismatch,
            detail: "the case's row or audit trail cannot be read".into(),
        }),
        ..ChainReport::default()
    }
}

/// Logs a broken chain: the case id, the first broken link and why (no personal data).
pub fn log_broken(id: &CaseId, report: &ChainReport) {
    if let Some(b) = &report.broken {
        tracing::error!(
            case_id = %id,
            sequence = b.sequence,
            problem = b.problem.as_str(),
            detail = %b.detail,
            "audit chain broken"
        );
    }
}

/// Verifies every case's chain every `every` (the first run one interval after start), logging
/// each broken case and setting `etk_audit_chain_broken_cases`.
pub async fn run_periodic(store: Arc<dyn CaseStore>, metrics: Arc<Metrics>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match verify_everything(store.clone()).await {
            Ok(p) => {
                metrics.audit_verified(p.broken);
                tracing::info!(
                    cases = p.checked,
                    broken = p.broken,
                    events = p.events,
                    legacy_events = p.legacy,
                    "audit chains verified"
                );
            }
            Err(e) => tracing::warn!(error = %e, "audit chain verification could not finish"),
        }
    }
}

async fn verify_everything(store: Arc<dyn CaseStore>) -> Result<Progress, StoreError> {
    let mut walk = Walk::all(store).await?;
    while let Some(r) = walk.next().await {
        let (id, report) = r?;
        log_broken(&id, &report);
    }
    Ok(walk.progress())
}
