//! Group commit: single-case writes that arrive together share one transaction and one commit
//! (one fsync). On SQLite a writer task takes what is queued — at most `MAX_BATCH` jobs — runs
//! each in the shared transaction, commits once, then answers each caller; durability is as
//! before (`synchronous=FULL`). On PostgreSQL (`Writer::direct`) each write runs at once in a
//! transaction of its own, concurrently: PostgreSQL's commits share WAL flushes themselves.
//!
//! A job that is refused fails alone: the writes' contract is that a refusal (`NotFound`,
//! `RequestIdReused`, `ActiveCaseExists`, a refused transition) is decided before the job's
//! first write, so the batch goes on without it. Any other error may leave a partial write in
//! the transaction: the batch is rolled back and each of its jobs runs again in a transaction
//! of its own, where an error fails only that job. A commit that fails fails the whole batch
//! (nothing of it is stored); the callers' retries are safe, as every write is idempotent or
//! refused on repetition.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::codec::Codec;
use super::{CreateCase, Created, StoreError, Timing, create, listen};
use crate::bus::EventBus;
use crate::domain::CaseEvent;

/// Most jobs in one transaction: enough to share a commit among every request in flight at
/// the concurrency the gateway is sized for, few enough that one batch's locks (PostgreSQL row
/// locks) and latency stay short.
pub(crate) const MAX_BATCH: usize = 64;

/// Jobs queued for the writer beyond the one it runs; a caller waits for room beyond that.
const QUEUE: usize = 1024;

/// What a job gives back: its answer, the events it appended, and whether it made work due
/// (enqueued effects), so the engine is woken only then.
pub(crate) struct Written<T> {
    pub value: T,
    pub appended: Vec<CaseEvent>,
    pub enqueued: bool,
}

impl<T> Written<T> {
    /// `value`, with the events a write appended and whether it enqueued work.
    pub fn new(value: T, appended: Vec<CaseEvent>, enqueued: bool) -> Self {
        Self {
            value,
            appended,
            enqueued,
        }
    }
}

type JobFuture<'t, T> = Pin<Box<dyn Future<Output = Result<Written<T>, StoreError>> + Send + 't>>;

/// One write: runs in whichever transaction it is given, as many times as it is asked (a
/// batch that is rolled back runs it again alone).
pub(crate) trait WriteFn<T>:
    for<'t> Fn(&'t DatabaseTransaction) -> JobFuture<'t, T> + Send + Sync + 'static
{
}
impl<T, F> WriteFn<T> for F where
    F: for<'t> Fn(&'t DatabaseTransaction) -> JobFuture<'t, T> + Send + Sync + 'static
{
}

/// A queued job, its answer type erased so that jobs of every kind share a batch.
trait Job: Send {
    /// Runs the write in `txn`, keeping the answer until the commit decides.
    fn run<'t>(
        &'t mut self,
        txn: &'t DatabaseTransaction,
    ) -> Pin<Box<dyn Future<Output = Result<Staged, StoreError>> + Send + 't>>;
    /// Answers the caller: the kept answer if `outcome` is Ok, else the error.
    fn answer(self: Box<Self>, outcome: Result<(), StoreError>);
    /// A create, which a batch writes together with the other creates (`create_many`).
    fn as_create(&mut self) -> Option<&mut CreateJob> {
        None
    }
    fn is_create(&self) -> bool {
        false
    }
}

/// A create: alone it runs `create_in`; beside other creates, `create_many` writes them all
/// with a few multi-row statements.
pub(crate) struct CreateJob {
    cmd: Arc<CreateCase>,
    codec: Codec,
    timing: Timing,
    kept: Option<Created>,
    reply: oneshot::Sender<Result<Created, StoreError>>,
    span: tracing::Span,
}

impl Job for CreateJob {
    fn run<'t>(
        &'t mut self,
        txn: &'t DatabaseTransaction,
    ) -> Pin<Box<dyn Future<Output = Result<Staged, StoreError>> + Send + 't>> {
        let span = self.span.clone();
        Box::pin(
            async move {
                let (created, appended) =
                    create::create_in(txn, &self.codec, self.timing, &self.cmd).await?;
                let enqueued = matches!(created, Created::New(_));
                self.kept = Some(created);
                Ok(Staged { appended, enqueued })
            }
            .instrument(span),
        )
    }

    fn answer(self: Box<Self>, outcome: Result<(), StoreError>) {
        let this = *self;
        reply(this.reply, this.kept, outcome);
    }

    fn as_create(&mut self) -> Option<&mut CreateJob> {
        Some(self)
    }
    fn is_create(&self) -> bool {
        true
    }
}

/// A job's effects on the batch once it ran.
struct Staged {
    appended: Vec<CaseEvent>,
    enqueued: bool,
}

struct Typed<T, F> {
    write: F,
    kept: Option<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
    /// The caller's span: the job's statements belong to its request's trace.
    span: tracing::Span,
}

impl<T: Send + 'static, F: WriteFn<T>> Job for Typed<T, F> {
    fn run<'t>(
        &'t mut self,
        txn: &'t DatabaseTransaction,
    ) -> Pin<Box<dyn Future<Output = Result<Staged, StoreError>> + Send + 't>> {
        let span = self.span.clone();
        Box::pin(
            async move {
                let w = (self.write)(txn).await?;
                self.kept = Some(w.value);
                Ok(Staged {
                    appended: w.appended,
                    enqueued: w.enqueued,
                })
            }
            .instrument(span),
        )
    }

    fn answer(self: Box<Self>, outcome: Result<(), StoreError>) {
        let this = *self;
        reply(this.reply, this.kept, outcome);
    }
}

/// Answers a job's caller: what the job kept if its batch committed, else the batch's error.
fn reply<T>(
    to: oneshot::Sender<Result<T, StoreError>>,
    kept: Option<T>,
    outcome: Result<(), StoreError>,
) {
    let answer = outcome.and_then(|()| {
        kept.ok_or_else(|| StoreError::Invariant("a committed write kept no answer".into()))
    });
    // The caller may have gone away (a cancelled request); the write stands regardless.
    let _ = to.send(answer);
}

/// Errors a write returns only before its first write (see the module doc).
fn refused_before_writing(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::NotFound
            | StoreError::RequestIdReused
            | StoreError::ActiveCaseExists
            | StoreError::Transition(_)
    )
}

/// The handle callers queue jobs on. The writer task ends when the last handle is dropped.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    route: Route,
    counts: Arc<Counts>,
}

/// Where a job goes.
#[derive(Clone)]
enum Route {
    /// Queued for the writer task, which batches.
    Queue(mpsc::Sender<Box<dyn Job>>),
    /// Run at once in a transaction of its own, beside the others (see `Writer::direct`).
    Direct(Committer),
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Route::Queue(_) => "Queue",
            Route::Direct(_) => "Direct",
        })
    }
}

/// What the writer has done so far: commits, and the jobs they carried.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    commits: AtomicU64,
    committed_jobs: AtomicU64,
}

/// `Counts` read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// Transactions committed by the writer.
    pub commits: u64,
    /// Writes those transactions carried.
    pub jobs: u64,
}

impl std::fmt::Debug for dyn Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Writer {
    /// Starts the writer task on the current runtime.
    pub(crate) fn start(db: DatabaseConnection, bus: EventBus, origin: String) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let counts = Arc::new(Counts::default());
        let committer = Committer {
            db,
            bus,
            origin,
            counts: counts.clone(),
        };
        tokio::spawn(write_loop(committer, jobs));
        Self {
            route: Route::Queue(queue),
            counts,
        }
    }

    /// A writer without batching: each write runs at once in a transaction of its own,
    /// concurrently with the others, as many as the pool has connections. For PostgreSQL,
    /// whose commits already share WAL flushes among concurrent transactions, and where one
    /// writer connection would serialise the work of several backends (measured: with the
    /// engine running, creates fell from ≈ 180 to ≈ 35–100 a second through the queue).
    pub(crate) fn direct(db: DatabaseConnection, bus: EventBus, origin: String) -> Self {
        let counts = Arc::new(Counts::default());
        let committer = Committer {
            db,
            bus,
            origin,
            counts: counts.clone(),
        };
        Self {
            route: Route::Direct(committer),
            counts,
        }
    }

    /// Hands `job` on; false if the writer is gone.
    async fn send(&self, job: Box<dyn Job>) -> bool {
        match &self.route {
            Route::Queue(queue) => queue.send(job).await.is_ok(),
            Route::Direct(committer) => {
                committer.run_alone(vec![job]).await;
                true
            }
        }
    }

    pub(crate) fn counts(&self) -> WriteCounts {
        WriteCounts {
            commits: self.counts.commits.load(Ordering::Relaxed),
            jobs: self.counts.committed_jobs.load(Ordering::Relaxed),
        }
    }

    /// Creates a case in the next batch (see `CaseStore::create`), answered once it committed.
    pub(crate) async fn create(
        &self,
        cmd: Arc<CreateCase>,
        codec: Codec,
        timing: Timing,
    ) -> Result<Created, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(CreateJob {
            cmd,
            codec,
            timing,
            kept: None,
            reply,
            span: tracing::Span::current(),
        });
        if !self.send(job).await {
            return Err(gone());
        }
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Runs `write` in the next batch and returns its answer once that batch has committed.
    pub(crate) async fn submit<T: Send + 'static>(
        &self,
        write: impl WriteFn<T>,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Typed {
            write,
            kept: None,
            reply,
            span: tracing::Span::current(),
        });
        if !self.send(job).await {
            return Err(gone());
        }
        answer.await.unwrap_or_else(|_| Err(gone()))
    }
}

fn gone() -> StoreError {
    StoreError::Unavailable(DbErr::Custom(
        "the store's writer stopped before answering".into(),
    ))
}

async fn write_loop(committer: Committer, mut jobs: mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let c = committer.clone();
        // Its own task: a panicking job drops its batch's answers (the callers see the store
        // unavailable) but not the writer.
        if let Err(e) = tokio::spawn(async move { c.run(taken).await }).await {
            tracing::error!(error = %e, "a batch of writes panicked; its callers were told the store is unavailable");
        }
    }
}

#[derive(Clone)]
struct Committer {
    db: DatabaseConnection,
    bus: EventBus,
    origin: String,
    counts: Arc<Counts>,
}

impl Committer {
    async fn run(&self, jobs: Vec<Box<dyn Job>>) {
        if jobs.len() == 1 {
            return self.run_alone(jobs).await;
        }
        let (started, size) = (std::time::Instant::now(), jobs.len());
        let txn = match self.db.begin().await {
            Ok(txn) => txn,
            Err(e) => return answer_all(jobs, &e),
        };
        let mut done: Vec<Box<dyn Job>> = Vec::with_capacity(jobs.len());
        // Refused jobs are answered only once the batch is committed: a refusal may rest on an
        // earlier job's write in this transaction (a card a create just took, a case an apply
        // just cancelled), which a rollback or a failed commit would undo.
        let mut refused: Vec<(Box<dyn Job>, StoreError)> = Vec::new();
        let mut staged = Vec::with_capacity(jobs.len());
        let (mut creates, others): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|j| j.is_create());
        if creates.len() > 1 {
            match self.create_many(&txn, &mut creates).await {
                Ok((answers, appended)) => {
                    for (mut job, answer) in creates.into_iter().zip(answers) {
                        match answer {
                            Ok(created) => {
                                if let Some(c) = job.as_create() {
                                    c.kept = Some(created);
                                }
                                done.push(job);
                            }
                            Err(e) => refused.push((job, e)),
                        }
                    }
                    staged.push(Staged {
                        enqueued: !appended.is_empty(),
                        appended,
                    });
                }
                Err(_) => {
                    // Not decidable together (a database error, a twin on another replica):
                    // each create alone, where its error is its own.
                    let _ = txn.rollback().await;
                    creates.extend(others);
                    return self.run_alone(creates).await;
                }
            }
            creates = Vec::new();
        }
        let mut pending = creates.into_iter().chain(others);
        while let Some(mut job) = pending.next() {
            match job.run(&txn).await {
                Ok(s) => {
                    staged.push(s);
                    done.push(job);
                }
                Err(e) if refused_before_writing(&e) => refused.push((job, e)),
                Err(_) => {
                    // It may have written part of itself: undo the batch, and give every job
                    // of it a transaction of its own (this one answers with its error again;
                    // the refused ones are decided again without the others' writes).
                    let _ = txn.rollback().await;
                    done.push(job);
                    done.extend(refused.into_iter().map(|(j, _)| j));
                    done.extend(pending);
                    return self.run_alone(done).await;
                }
            }
        }
        if done.is_empty() {
            // Nothing written: the refusals stand on the committed state alone.
            let _ = txn.rollback().await;
            return refused.into_iter().for_each(|(j, e)| j.answer(Err(e)));
        }
        let written = started.elapsed();
        let committed = self.commit(txn, staged, done.len()).await;
        // Where a batch's time goes (docs/benchmarks.md): the writer is the one serial path.
        tracing::debug!(
            jobs = size,
            written_ms = written.as_secs_f64() * 1e3,
            commit_ms = started.elapsed().saturating_sub(written).as_secs_f64() * 1e3,
            "batch of writes committed"
        );
        match committed {
            Ok(()) => {
                done.into_iter().for_each(|j| j.answer(Ok(())));
                refused.into_iter().for_each(|(j, e)| j.answer(Err(e)));
            }
            Err(e) => {
                answer_all(done, &e);
                answer_all(refused.into_iter().map(|(j, _)| j).collect(), &e);
            }
        }
    }

    /// The creates' commands written together; the answers in their order.
    async fn create_many(
        &self,
        txn: &DatabaseTransaction,
        creates: &mut [Box<dyn Job>],
    ) -> Result<(Vec<create::Outcome>, Vec<CaseEvent>), StoreError> {
        let mut cmds = Vec::with_capacity(creates.len());
        let mut setting = None;
        for job in creates.iter_mut() {
            if let Some(c) = job.as_create() {
                setting.get_or_insert_with(|| (c.codec.clone(), c.timing));
                cmds.push(c.cmd.clone());
            }
        }
        let Some((codec, timing)) = setting else {
            return Ok((Vec::new(), Vec::new()));
        };
        let refs: Vec<&CreateCase> = cmds.iter().map(|c| &**c).collect();
        create::create_many(txn, &codec, timing, &refs).await
    }

    /// Each job in a transaction of its own.
    async fn run_alone(&self, jobs: Vec<Box<dyn Job>>) {
        for mut job in jobs {
            let txn = match self.db.begin().await {
                Ok(txn) => txn,
                Err(e) => {
                    job.answer(Err(StoreError::Unavailable(e)));
                    continue;
                }
            };
            match job.run(&txn).await {
                Ok(s) => {
                    let outcome = self.commit(txn, vec![s], 1).await;
                    job.answer(outcome.map_err(StoreError::Unavailable));
                }
                Err(e) => {
                    let _ = txn.rollback().await;
                    job.answer(Err(e));
                }
            }
        }
    }

    /// Announces (PostgreSQL), commits, and only then tells watchers and — if anything was
    /// enqueued — the engine.
    async fn commit(
        &self,
        txn: DatabaseTransaction,
        staged: Vec<Staged>,
        jobs: usize,
    ) -> Result<(), DbErr> {
        let enqueued = staged.iter().any(|s| s.enqueued);
        let appended: Vec<CaseEvent> = staged.into_iter().flat_map(|s| s.appended).collect();
        // Inside the transaction: other replicas hear of it on commit, and never of a rollback.
        if !appended.is_empty()
            && let Err(e) = listen::announce(&txn, &self.origin, &appended).await
        {
            let _ = txn.rollback().await;
            return Err(match e {
                StoreError::Unavailable(e) => e,
                other => DbErr::Custom(other.to_string()),
            });
        }
        txn.commit().await?;
        self.counts.commits.fetch_add(1, Ordering::Relaxed);
        self.counts
            .committed_jobs
            .fetch_add(jobs as u64, Ordering::Relaxed);
        self.bus.publish(appended);
        if enqueued {
            self.bus.notify_work();
        }
        Ok(())
    }
}

fn answer_all(jobs: Vec<Box<dyn Job>>, e: &DbErr) {
    for job in jobs {
        job.answer(Err(StoreError::Unavailable(DbErr::Custom(e.to_string()))));
    }
}

#[cfg(test)]
mod tests;
