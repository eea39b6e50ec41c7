//! The saga engine: workers that claim due effects from the outbox with leases, run them
//! through the connectors with the effect's idempotency key, and record the results — and a
//! reconciliation pass that guards KIV until revocation is confirmed.
//!
//! A case waiting days for an outcome costs rows (the case, its timers), not a task: workers
//! only hold what they have claimed, and sleep until the next effect falls due.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::bus::EventBus;
use crate::connectors::{
    ConnectorError, Connectors, CutCardReport, Notice, Recipient, RevocationOutcome,
};
use crate::domain::saga::{Event, SnapshotState, Step, step_applies};
use crate::domain::{Deregistration, State, Timestamp};
use crate::metrics::Metrics;
use crate::retention::RetentionSettings;
use crate::storage::{CaseStore, EventMeta, Finished, ListQuery, StoreError, Work, WorkResult};

mod retry;
mod settings;
mod spans;
mod verify;

pub use verify::confirmation_detail;

pub use retry::RetryPolicy;
pub use settings::EngineSettings;

#[derive(Debug)]
pub struct Engine {
    store: Arc<dyn CaseStore>,
    bus: EventBus,
    connectors: Connectors,
    cfg: EngineSettings,
    /// Lease owner id of this process: `<node id>:<incarnation>` with a node lock
    /// (`with_node`), else `etk-<incarnation>`. A claim's token is the owner, `-` and a number.
    owner: String,
    /// The node lock's `held_until` (`storage::NodeLock`): no step runs past it, no claim is
    /// made after it. `None`: no node lock, or one held for the process's life.
    node_held: Option<watch::Receiver<Option<std::time::Instant>>>,
    /// With a node lock: the prefix of every incarnation's leases of this node id, and how
    /// long after start they may be released (the previous incarnations are dead).
    dead_incarnations: Option<(String, Duration)>,
    /// Numbers this process's claims: each claim's lease token is unique, so a result is
    /// recorded only by the claim that still holds the effect, even within one process.
    claims: std::sync::atomic::AtomicU64,
    metrics: Arc<Metrics>,
    /// The retention job's settings; `None` runs no retention passes.
    retention: Option<RetentionSettings>,
    /// The step tasks whose futures still exist (running, or aborted but not yet dropped).
    steps: Arc<LiveSteps>,
}

/// Counts the step tasks whose futures have not been dropped yet. Aborting a task only asks
/// it to stop at its next yield point; shutdown waits here before giving up leases, so a step
/// still in the middle of a call never runs at the same time as another replica's retry.
#[derive(Debug, Default)]
struct LiveSteps {
    count: std::sync::atomic::AtomicUsize,
    none_left: tokio::sync::Notify,
}

/// Held by a step task's future: counted while it exists, uncounted when dropped (finished
/// or cancelled).
#[derive(Debug)]
struct LiveStep(Arc<LiveSteps>);

impl LiveSteps {
    fn enter(self: &Arc<Self>) -> LiveStep {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        LiveStep(self.clone())
    }

    async fn none_left(&self) {
        loop {
            let notified = self.none_left.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for LiveStep {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.none_left.notify_waiters();
        }
    }
}

impl Engine {
    pub fn new(
        store: Arc<dyn CaseStore>,
        bus: EventBus,
        connectors: Connectors,
        cfg: EngineSettings,
    ) -> Self {
        Self {
            store,
            bus,
            connectors,
            cfg,
            owner: format!("etk-{}", uuid::Uuid::new_v4().simple()),
            node_held: None,
            dead_incarnations: None,
            claims: std::sync::atomic::AtomicU64::new(0),
            metrics: Arc::new(Metrics::new()),
            retention: None,
            steps: Arc::default(),
        }
    }

    /// Names this process's leases after the node id `lock` holds, stops claiming and cuts
    /// its steps off when the lock can no longer be proven held, and — at start, once the lock
    /// allows — releases the leases of the node's earlier (dead) incarnations.
    pub fn with_node(mut self, lock: &crate::storage::NodeLock) -> Self {
        self.owner = format!("{}:{}", lock.id(), uuid::Uuid::new_v4().simple());
        let held = lock.held_until();
        let bounded = held.borrow().is_some();
        self.node_held = bounded.then_some(held);
        self.dead_incarnations = Some((format!("{}:", lock.id()), lock.release_after()));
        self
    }

    /// The lease owner id of this process (logged at start).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs retention passes (`crate::retention`) every `settings.interval` (none when zero).
    pub fn with_retention(mut self, settings: RetentionSettings) -> Self {
        self.retention = Some(settings);
        self
    }

    /// Records into the process's metrics (by default, a registry of its own).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Starts the workers and the reconciliation pass; they stop when `shutdown` turns true.
    pub fn spawn(self: Arc<Self>, shutdown: watch::Receiver<bool>) -> JoinSet<()> {
        let mut set = JoinSet::new();
        if self.cfg.workers == 0 {
            return set;
        }
        // The owner id marks this process's leases (`effects.lease_owner`): logged so an
        // operator can tell which replica holds a step.
        tracing::info!(owner = %self.owner, workers = self.cfg.workers, "saga engine started");
        if self.dead_incarnations.is_some() {
            let me = self.clone();
            let stop = shutdown.clone();
            set.spawn(async move { me.release_dead_incarnations(stop).await });
        }
        for i in 0..self.cfg.workers {
            let me = self.clone();
            let stop = shutdown.clone();
            set.spawn(async move { me.worker(i, stop).await });
        }
        if self
            .retention
            .as_ref()
            .is_some_and(|r| !r.interval.is_zero())
        {
            let me = self.clone();
            let stop = shutdown.clone();
            set.spawn(async move { me.retention_job(stop).await });
        }
        if !self.cfg.reconcile_interval.is_zero() {
            let me = self.clone();
            set.spawn(async move { me.reconciler(shutdown).await });
        }
        set
    }

    /// A retention pass at start and then every interval. Every replica with workers runs it:
    /// a pass re-checks each case on its locked row, so two replicas' passes never both act.
    async fn retention_job(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(settings) = self.retention.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let clock = crate::clock::SystemClock;
            if let Err(e) =
                crate::retention::run_pass(&*self.store, &clock, &settings, &self.metrics).await
            {
                tracing::warn!(error = %e, "retention pass failed; next one at the next interval");
            }
        }
    }

    async fn worker(self: Arc<Self>, index: usize, mut stop: watch::Receiver<bool>) {
        let signal = self.bus.work_signal();
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            match self.run_batch().await {
                Ok(n) if n > 0 => {
                    failures = 0;
                    continue;
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(worker = index, error = %e, "engine batch failed; backing off");
                }
            }
            // Registered only now, while idle: the signal wakes one waiter, and a worker busy
            // with a batch must not be the one it picks. Work enqueued since the batch is
            // found by `next_due` below (due now: no wait), or its signal is kept for us.
            let notified = signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = if failures > 0 {
                self.cfg.retry.delay(failures.min(8))
            } else if !self.node_held_now() {
                // Nothing is claimed meanwhile; due work must not make this a busy loop.
                self.cfg.idle_poll
            } else {
                match self.store.next_due().await {
                    Ok(Some(due)) => {
                        let us = (due.0 - crate::clock::now().0).max(0) as u64;
                        Duration::from_micros(us).min(self.cfg.idle_poll)
                    }
                    _ => self.cfg.idle_poll,
                }
            };
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Gives up the leases that earlier incarnations of this node id still hold: they are
    /// dead (the node lock is this process's), so their steps need not wait for the leases to
    /// run out. Waits as long as the lock asks first (PostgreSQL: a holder that lost its
    /// session has cut its steps off by then); retried until it succeeds.
    async fn release_dead_incarnations(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some((prefix, after)) = self.dead_incarnations.clone() else {
            return;
        };
        let mut wait = after;
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            let mine = format!("{}-", self.owner);
            match self.store.release(&prefix, Some(&mine)).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(
                            steps = n,
                            "released the leases a previous incarnation of this node held"
                        );
                    }
                    return;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    wait = self.cfg.retry.delay(failures.min(8));
                    tracing::warn!(error = %e, "cannot release the leases of this node's previous incarnation yet; trying again");
                }
            }
        }
    }

    /// Whether the node lock is known to be held now (always, without a node lock).
    fn node_held_now(&self) -> bool {
        self.node_held.as_ref().is_none_or(|h| {
            h.borrow()
                .is_none_or(|until| std::time::Instant::now() < until)
        })
    }

    /// Resolves once no step task of this engine exists any more: every step finished, or was
    /// cancelled and its future dropped (its connector call cut off). Shutdown awaits this
    /// after aborting the workers and before `release_leases`.
    pub async fn steps_ended(&self) {
        self.steps.none_left().await;
    }

    /// Gives up the leases this process's claims still hold (at shutdown, after its workers
    /// were stopped or aborted and `steps_ended` resolved), so other replicas take those steps
    /// at once. Returns how many.
    pub async fn release_leases(&self) -> Result<u64, StoreError> {
        self.store.release(&format!("{}-", self.owner), None).await
    }

    /// Claims one batch, runs it concurrently (latency is hidden by running many at once),
    /// and records all results in one transaction. Returns how many effects it ran.
    pub async fn run_batch(&self) -> Result<usize, StoreError> {
        if !self.node_held_now() {
            // Another process may hold the node id now: nothing is claimed under it.
            return Ok(0);
        }
        let n_claim = self
            .claims
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = format!("{}-{n_claim}", self.owner);
        let claimed_at = std::time::Instant::now();
        let work = self
            .store
            .claim(
                &token,
                crate::clock::now(),
                self.cfg.lease,
                self.cfg.batch_size,
            )
            .await?;
        if work.is_empty() {
            return Ok(0);
        }
        let n = work.len();
        if n >= self.cfg.batch_size as usize {
            // More may be due: the news woke only this worker, so it passes it on.
            self.bus.notify_work();
        }
        // The leases run until `claimed_at + lease` at the latest (the store counts from a
        // later instant); a heartbeat moves them on while the batch runs.
        let (held_tx, held) = watch::channel(held_until(claimed_at, self.cfg.lease));
        let renewing = Arc::new(tokio::sync::Mutex::new(()));
        let heartbeat = Heartbeat(tokio::spawn(heartbeat(
            self.store.clone(),
            token.clone(),
            work.iter().map(|w| w.key.clone()).collect(),
            self.cfg.lease,
            held_tx,
            renewing.clone(),
        )));
        let step_deadline = claimed_at + self.cfg.step_timeout;
        let mut ids: Vec<_> = work.iter().map(|w| w.case_id.clone()).collect();
        ids.sort();
        ids.dedup();
        let cases: std::collections::HashMap<_, _> = self
            .store
            .get_many(&ids)
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        let mut set = JoinSet::new();
        for w in work {
            let case = cases.get(&w.case_id).cloned();
            let store = self.store.clone();
            let connectors = self.connectors.clone();
            let cfg = self.cfg.clone();
            let metrics = self.metrics.clone();
            let span = spans::step(
                &w,
                case.as_ref(),
                spans::connector_of(&self.connectors, w.step),
            );
            let held = held.clone();
            let node_held = self.node_held.clone();
            // Counted from before the spawn until the future is dropped, however it ends.
            let live = self.steps.enter();
            set.spawn(async move {
                let _live = live;
                // Read before the step's span is entered: sqlx's SQLite worker keeps the span
                // current at a command alive until its next command (docs/observability.md),
                // and a step span that does not end is never exported.
                let snapshot = match w.step {
                    Step::RestoreKiv | Step::VerifyRevocation => {
                        Some(store.snapshot(&w.case_id).await)
                    }
                    _ => None,
                };
                async move {
                    // A step ends within its time limit (counted from the claim, so loading
                    // the cases eats into it too), and is cut off before its lease could run
                    // out unrenewed (or the node lock unproven): else another worker could
                    // take it over while it still runs and do it twice.
                    let started = std::time::Instant::now();
                    let connector = connector_of(w.step);
                    let result = tokio::select! {
                        r = execute(&connectors, &cfg, &metrics, &w, case, snapshot) => r,
                        cut = cut_off(held, node_held, step_deadline) => {
                            let why = match cut {
                                Cut::TimedOut => {
                                    metrics.connector_error(connector, true);
                                    format!("timed out after {}", human(cfg.step_timeout))
                                }
                                Cut::LeaseUnrenewed => "cut off: its lease could not be renewed (database unreachable?)".to_owned(),
                                Cut::NodeUnproven => "cut off: this process could not prove it still holds its node id".to_owned(),
                            };
                            tracing::warn!(reason = %why, "saga step cut off");
                            retry_or_give_up(&cfg, &w, why)
                        }
                    };
                    metrics.step_finished(w.step, connector, (&result).into(), started.elapsed());
                    spans::record_outcome(&tracing::Span::current(), &result);
                    Finished { work: w, result }
                }
                .instrument(span)
                .await
            });
        }
        let mut results = Vec::with_capacity(n);
        while let Some(r) = set.join_next().await {
            match r {
                Ok(f) => results.push(f),
                // A panicking step leaves its lease to expire; it is retried then.
                Err(e) => tracing::error!(error = %e, "saga step task failed"),
            }
        }
        // Every step has ended: no renewal runs beside the recording (on PostgreSQL the two
        // would lock the same effect rows in different orders).
        let quiet = renewing.lock().await;
        drop(heartbeat);
        drop(quiet);
        self.store.finish(&token, results).await?;
        Ok(n)
    }

    async fn reconciler(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.cfg.reconcile_interval) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!(error = %e, "reconciliation pass failed");
            }
        }
    }

    /// Checks every case whose revocation is unconfirmed: if its employment vanished from KIV,
    /// the violation is recorded and the employment restored from the snapshot. Returns how
    /// many violations it found.
    pub async fn reconcile_once(&self) -> Result<usize, StoreError> {
        let mut found = 0;
        // One trace per pass, begun only when a case is checked: an idle pass exports nothing.
        let mut pass: Option<tracing::Span> = None;
        // Unconfirmed cases, then confirmed ones that may still await their verification.
        let scans = [
            (
                vec![
                    State::Accepted,
                    State::RevocationRequested,
                    State::NeedsAttention,
                ],
                false,
            ),
            (vec![State::Revoked, State::NeedsAttention], true),
        ];
        for (states, confirmed) in scans {
            let mut after: Option<crate::domain::CaseId> = None;
            loop {
                let page = self
                    .store
                    .list(&ListQuery {
                        states: states.clone(),
                        revocation_confirmed: Some(confirmed),
                        // Only these are checked (below): the others are not even read, so a
                        // pass over cases that have nothing to guard costs next to nothing.
                        snapshot: Some(SnapshotState::Taken),
                        after: after.clone(),
                        limit: 200,
                        ..Default::default()
                    })
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                for case in &page {
                    let saga = case.saga();
                    // Only a taken snapshot proves there was an employment to guard. Before the snapshot
                    // step has run (KIV down at acceptance), a missing entry proves nothing: the step
                    // itself will record whether the person was employed.
                    let check = saga.guards_kiv() && saga.snapshot == SnapshotState::Taken;
                    if !check {
                        continue;
                    }
                    let pass = pass.get_or_insert_with(spans::reconcile_pass);
                    if self.reconcile_case(case, pass).await? {
                        found += 1;
                    }
                }
            }
        }
        if let Some(pass) = pass {
            pass.record("violations", found);
        }
        Ok(found)
    }

    /// Looks one case's employment up in KIV; true when it is missing (a violation, recorded
    /// as `EmploymentMissing`, which schedules the restore). The look-up is a span of the pass;
    /// the violation is a span of the case's own trace, linked to that look-up — a look-up a
    /// minute for days would bury the case's trace.
    async fn reconcile_case(
        &self,
        case: &Deregistration,
        pass: &tracing::Span,
    ) -> Result<bool, StoreError> {
        let kiv = self.connectors.kiv.name();
        let lookup = spans::reconcile_lookup(pass, &case.id, kiv);
        let r = self
            .connectors
            .kiv
            .lookup(
                &case.report.card_holder.personnummer,
                &case.report.care_unit,
            )
            .instrument(lookup.clone())
            .await;
        let employment = match r {
            Ok(Some(_)) => "present",
            Ok(None) => "missing",
            Err(e) => {
                self.metrics
                    .connector_error(CONNECTOR_KIV, e.is_retryable());
                lookup.record("otel.status_description", e.to_string().as_str());
                tracing::info!(parent: &lookup, case_id = %case.id, error = %e, "KIV look-up failed during reconciliation");
                "lookup_failed"
            }
        };
        lookup.record("kiv.employment", employment);
        if employment != "missing" {
            return Ok(false);
        }
        if self.store.kiv_removed_by_other_case(&case.id).await? {
            // Another case of this person at this unit was confirmed and removed the
            // employment: its absence is the routine, not a violation.
            lookup.record("kiv.employment", "removed_by_other_case");
            tracing::info!(parent: &lookup, case_id = %case.id, "employment removed by another confirmed case; not restored");
            return Ok(false);
        }
        let span = spans::reconcile_violation(case, kiv, &lookup);
        self.metrics.reconciliation_restore();
        tracing::warn!(parent: &span, case_id = %case.id, "employment removed from KIV before the revocation was confirmed");
        let meta = EventMeta {
            actor: "system".into(),
            trace_id: case.trace_id.clone(),
            at: crate::clock::now(),
            detail: "employment removed from KIV before the revocation was confirmed (and, with the check on, verified)".into(),
        };
        // The write runs outside the span: sqlx's SQLite worker keeps the span current at a
        // write transaction alive long after it (see docs/observability.md), and this span
        // must end to be exported.
        let outcome = match self
            .store
            .apply(&case.id, None, &Event::EmploymentMissing, meta)
            .await
        {
            Ok(_) => "restore_scheduled",
            // The case moved on meanwhile (confirmed, cancelled): nothing to restore.
            Err(StoreError::Transition(_)) => "stale",
            Err(e) => {
                span.record("otel.status_description", e.to_string().as_str());
                return Err(e);
            }
        };
        span.record("outcome", outcome);
        Ok(true)
    }
}

/// How long a lease renewed (or taken) at `issued` is surely held: the lease less a sixth,
/// for clock drift between replicas and the time a cut-off step takes to let go.
fn held_until(issued: std::time::Instant, lease: Duration) -> std::time::Instant {
    issued + lease - lease / 6
}

/// Aborts the batch's heartbeat when the batch ends (or is dropped).
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the batch's leases every third of a lease; each renewal that succeeds moves `held`
/// on. One that fails or hangs leaves `held` where it was, so the steps are cut off before
/// the leases can run out. A renewal runs holding `renewing`, which the batch takes before
/// recording its results.
async fn heartbeat(
    store: Arc<dyn CaseStore>,
    token: String,
    keys: Vec<String>,
    lease: Duration,
    held: watch::Sender<std::time::Instant>,
    renewing: Arc<tokio::sync::Mutex<()>>,
) {
    let every = lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let _renewing = renewing.lock().await;
        let issued = std::time::Instant::now();
        let renew = store.renew(&token, &keys, crate::clock::now(), lease);
        match tokio::time::timeout(every, renew).await {
            Ok(Ok(_)) => {
                held.send_replace(held_until(issued, lease));
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leases of running steps"),
            Err(_) => tracing::warn!("renewing the leases of running steps took too long"),
        }
    }
}

/// Why a running step was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// `engine.step_timeout` passed.
    TimedOut,
    /// Its lease was not renewed in time.
    LeaseUnrenewed,
    /// The node lock could not be proven held.
    NodeUnproven,
}

/// Resolves when a step must be cut off: at `deadline`, or when its lease (`held`) or the
/// node lock (`node`) may run out. Both move on while the step runs.
async fn cut_off(
    held: watch::Receiver<std::time::Instant>,
    node: Option<watch::Receiver<Option<std::time::Instant>>>,
    deadline: std::time::Instant,
) -> Cut {
    async fn changed<T>(rx: &mut Option<watch::Receiver<T>>) {
        match rx {
            Some(r) => {
                if r.changed().await.is_err() {
                    // The sender is gone: the last value holds for good.
                    *rx = None;
                }
            }
            None => std::future::pending().await,
        }
    }
    let mut lease_until = *held.borrow();
    let mut node_until = node.as_ref().and_then(|n| *n.borrow());
    let mut held = Some(held);
    let mut node = node;
    loop {
        if let Some(h) = held.as_mut() {
            lease_until = *h.borrow_and_update();
        }
        if let Some(n) = node.as_mut() {
            node_until = *n.borrow_and_update();
        }
        let mut first = (deadline, Cut::TimedOut);
        if lease_until < first.0 {
            first = (lease_until, Cut::LeaseUnrenewed);
        }
        if let Some(n) = node_until.filter(|n| *n < first.0) {
            first = (n, Cut::NodeUnproven);
        }
        if std::time::Instant::now() >= first.0 {
            return first.1;
        }
        tokio::select! {
            () = tokio::time::sleep_until(first.0.into()) => {}
            () = changed(&mut held) => {}
            () = changed(&mut node) => {}
        }
    }
}

fn report_of(case: &Deregistration) -> CutCardReport {
    let r = &case.report;
    CutCardReport {
        case_id: case.id.clone(),
        personnummer: r.card_holder.personnummer.clone(),
        card_number: r.card_number.clone(),
        holder_name: r.card_holder.full_name.clone(),
        care_unit: r.care_unit.clone(),
        care_provider: case.care_provider.clone(),
        reporter_name: r.reported_by.full_name.clone(),
        reporter_email: r.reported_by.email.clone(),
    }
}

fn done(event: Event) -> WorkResult {
    WorkResult::Done {
        event: Some(event),
        snapshot: None,
        detail: String::new(),
    }
}

/// The connector port a step calls, as the `connector` label of its metrics (the name of its
/// gRPC health entry; `none` for a step that calls none).
fn connector_of(step: Step) -> &'static str {
    match step {
        Step::Snapshot | Step::RemoveKiv | Step::RestoreKiv => CONNECTOR_KIV,
        Step::Report | Step::PollOutcome | Step::Remind(_) => "tjansteid",
        Step::NotifyHead | Step::NotifyHolder => "notifier",
        Step::VerifyRevocation => CONNECTOR_REVOCATION,
        Step::Escalate | Step::VerifyDeadline => "none",
    }
}

const CONNECTOR_REVOCATION: &str = "revocation_check";

const CONNECTOR_KIV: &str = "kiv";

/// Runs one effect. Connector errors are classified where they arise; this only counts.
/// `snapshot` is the case's KIV snapshot, read beforehand for `RestoreKiv` (else `None`).
async fn execute(
    c: &Connectors,
    cfg: &EngineSettings,
    metrics: &Metrics,
    w: &Work,
    case: Option<Deregistration>,
    snapshot: Option<Result<Option<crate::domain::Employment>, StoreError>>,
) -> WorkResult {
    let Some(case) = case else {
        return WorkResult::Failed {
            error: "case not found or unreadable (see the log)".into(),
        };
    };
    if !step_applies(&case.saga(), w.step) {
        return WorkResult::Skipped;
    }
    let pnr = &case.report.card_holder.personnummer;
    let unit = &case.report.care_unit;
    let result: Result<WorkResult, ConnectorError> = async {
        Ok(match w.step {
            Step::Snapshot => {
                let found = c.kiv.lookup(pnr, unit).await?;
                WorkResult::Done {
                    event: Some(Event::SnapshotTaken {
                        found: found.is_some(),
                    }),
                    detail: if found.is_some() {
                        String::new()
                    } else {
                        "no employment at the care unit in KIV at acceptance".into()
                    },
                    snapshot: found,
                }
            }
            Step::Report => {
                c.tjansteid.report(&w.key, &report_of(&case)).await?;
                done(Event::ReportSent)
            }
            Step::PollOutcome => {
                let reported = case.reported_at.unwrap_or(case.updated_at);
                match c.tjansteid.fetch_outcome(&case.id, reported).await? {
                    RevocationOutcome::Pending => done(Event::OutcomePending),
                    // Outside text goes through the same filter as server errors before it
                    // reaches the case and its append-only trail.
                    RevocationOutcome::Confirmed {
                        reference,
                        certificates,
                    } => {
                        let reference = crate::connectors::redact(&reference);
                        WorkResult::Done {
                            detail: confirmation_detail(&reference, &certificates),
                            event: Some(Event::RevocationConfirmed {
                                reference,
                                certificates,
                            }),
                            snapshot: None,
                        }
                    }
                    RevocationOutcome::Rejected { reason } => {
                        let reason = crate::connectors::redact(&reason);
                        WorkResult::Done {
                            detail: reason.clone(),
                            event: Some(Event::RevocationRejected { reason }),
                            snapshot: None,
                        }
                    }
                }
            }
            Step::Remind(n) => {
                c.tjansteid.remind(&w.key, &report_of(&case), n).await?;
                done(Event::ReminderSent { n })
            }
            Step::Escalate => WorkResult::Done {
                event: Some(Event::EscalationDue),
                snapshot: None,
                detail: format!(
                    "no outcome from TjänsteID-service within {} of the report",
                    human(cfg.timers.escalate_after)
                ),
            },
            Step::NotifyHead => {
                let to = case.report.reported_by.email.clone();
                c.notifier
                    .notify(&w.key, &notice(&case, Recipient::HeadOfOperations, to))
                    .await?;
                done(Event::HeadNotified)
            }
            Step::NotifyHolder => {
                if let Some(to) = case.report.card_holder.email.clone() {
                    c.notifier
                        .notify(&w.key, &notice(&case, Recipient::CardHolder, to))
                        .await?;
                }
                done(Event::NotificationsSent)
            }
            Step::RemoveKiv => {
                c.kiv.remove(&w.key, pnr, unit).await?;
                done(Event::KivRemoved)
            }
            Step::VerifyRevocation => {
                verify::verify(c, metrics, &case, snapshot.unwrap_or(Ok(None))).await?
            }
            Step::VerifyDeadline => {
                metrics.revocation_check("overdue");
                WorkResult::Done {
                    event: Some(Event::VerificationOverdue),
                    snapshot: None,
                    detail: format!(
                        "the card's certificates were not found revoked on their CA's revocation lists within {} of the check's start",
                        human(cfg.timers.verify_within)
                    ),
                }
            }
            Step::RestoreKiv => match snapshot.unwrap_or(Ok(None)) {
                Ok(Some(snapshot)) => {
                    c.kiv.restore(&w.key, &snapshot).await?;
                    done(Event::EmploymentRestored)
                }
                Ok(None) => {
                    return Err(ConnectorError::Terminal(
                        "no KIV snapshot to restore from".into(),
                    ));
                }
                Err(e) => return Err(ConnectorError::Retryable(e.to_string())),
            },
        })
    }
    .await;
    if let Err(e) = &result {
        metrics.connector_error(connector_of(w.step), e.is_retryable());
    }
    match result {
        Ok(r) => r,
        Err(ConnectorError::Retryable(e)) => retry_or_give_up(cfg, w, e),
        Err(ConnectorError::Terminal(error)) => give_up(error),
    }
}

/// A retryable failure: again after a backoff, or — attempts exhausted — for good.
fn retry_or_give_up(cfg: &EngineSettings, w: &Work, error: String) -> WorkResult {
    match cfg.retry.after_failure(w.attempts) {
        Some(wait) => {
            tracing::info!(%error, "step failed; will retry");
            WorkResult::Retry {
                at: Timestamp(crate::clock::now().0 + wait.as_micros() as i64),
                error,
            }
        }
        None => give_up(format!(
            "gave up after {} attempts: {error}",
            w.attempts + 1
        )),
    }
}

fn give_up(error: String) -> WorkResult {
    tracing::warn!(%error, "step failed for good; the case needs attention");
    WorkResult::Failed { error }
}

fn notice(case: &Deregistration, recipient: Recipient, to: crate::domain::Email) -> Notice {
    let r = &case.report;
    Notice {
        recipient,
        to,
        case_id: case.id.clone(),
        holder_name: r.card_holder.full_name.clone(),
        holder_masked: r.card_holder.personnummer.masked(),
        care_unit: r.care_unit.clone(),
        revocation_reference: case.revocation_reference.clone().unwrap_or_default(),
    }
}

/// "10 days", "3 hours", "5 minutes", "30 seconds": for messages people read.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = if s >= 2 * 86_400 {
        (s / 86_400, "days")
    } else if s >= 2 * 3600 {
        (s / 3600, "hours")
    } else if s >= 120 {
        (s / 60, "minutes")
    } else {
        (s, "seconds")
    };
    format!("{n} {unit}")
}

#[cfg(test)]
mod cut_off_tests {
    use std::time::Instant;

    use super::*;

    const LONG: Duration = Duration::from_secs(600);

    async fn within_a_minute(f: impl std::future::Future<Output = Cut>) -> Cut {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("cut off")
    }

    #[tokio::test]
    async fn a_step_is_cut_off_when_its_lease_is_not_renewed() {
        let (_tx, held) = watch::channel(Instant::now() + Duration::from_millis(50));
        let cut = within_a_minute(cut_off(held, None, Instant::now() + LONG)).await;
        assert_eq!(cut, Cut::LeaseUnrenewed);
    }

    #[tokio::test]
    async fn a_step_is_cut_off_when_the_node_lock_is_unproven() {
        let (_tx, held) = watch::channel(Instant::now() + LONG);
        let (_node_tx, node) = watch::channel(Some(Instant::now() + Duration::from_millis(50)));
        let cut = within_a_minute(cut_off(held, Some(node), Instant::now() + LONG)).await;
        assert_eq!(cut, Cut::NodeUnproven);
    }

    #[tokio::test]
    async fn a_step_is_cut_off_at_its_time_limit() {
        let (_tx, held) = watch::channel(Instant::now() + LONG);
        let (_node_tx, node) = watch::channel(None);
        let deadline = Instant::now() + Duration::from_millis(50);
        let cut = within_a_minute(cut_off(held, Some(node), deadline)).await;
        assert_eq!(cut, Cut::TimedOut);
    }

    /// Renewals move the lease on: the step runs on while they come, and is cut off only once
    /// they stop (the node lock's sender gone: held for good).
    #[tokio::test]
    async fn renewals_keep_a_step_running() {
        let (tx, held) = watch::channel(Instant::now() + Duration::from_secs(1));
        let (node_tx, node) = watch::channel(None);
        drop(node_tx);
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renewer = {
            let stopped = stopped.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    tx.send_replace(Instant::now() + Duration::from_secs(1));
                }
                stopped.store(true, std::sync::atomic::Ordering::SeqCst);
                // The sender stays: the lease simply is not renewed any more.
                tokio::time::sleep(LONG).await;
                drop(tx);
            })
        };
        let cut = within_a_minute(cut_off(held, Some(node), Instant::now() + LONG)).await;
        assert_eq!(cut, Cut::LeaseUnrenewed);
        assert!(
            stopped.load(std::sync::atomic::Ordering::SeqCst),
            "cut off while its lease was being renewed"
        );
        renewer.abort();
    }
}
