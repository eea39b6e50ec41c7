//! `SeaStore`: the `CaseStore` port on sea-orm, for SQLite (embedded default) and PostgreSQL.
//! Owns the transactions — begin, delegate to the modules that do the work, commit — and
//! publishing on the event bus after a commit. Builds no SQL and decodes no rows itself.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use migration::MigratorTrait;
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};

use super::audit::{
    ChainHead, ChainKeys, ChainProblem, ChainReport, verify_case, verify_case_unreadable,
};
use super::batch::{WriteCounts, Writer, Written};
use super::changes::ChangeSet;
use super::codec::Codec;
use super::queries::UpgradeList;
use super::sql::{self, Lock};
use super::{
    CaseRecord, CaseStore, CreateCase, Created, EventMeta, Finished, ListQuery, ReencryptBatch,
    RetentionCutoffs, RetentionDue, StepView, StoreError, Timing, Work, listen, outbox, queries,
    retention,
};
use crate::bus::EventBus;
use crate::domain::saga::Event;
use crate::domain::{CaseEvent, CaseId, Deregistration, Employment, HsaId, Timestamp};
use crate::privacy::Vault;

/// The advisory lock key `migrate` holds on PostgreSQL (any fixed number unique to this
/// application within the database; here "etkmigr" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x0065_746b_6d69_6772;

#[derive(Clone)]
pub struct SeaStore {
    db: DatabaseConnection,
    /// Where plain reads go: SQLite's read-only connections beside the writer, else `db`.
    read: DatabaseConnection,
    codec: Codec,
    /// The keys the audit chain is verified with (the current one; a rotation adds earlier ones).
    keys: ChainKeys,
    timing: Timing,
    bus: EventBus,
    /// Names this store's commits in its notifications, so its relay skips its own news.
    origin: String,
    /// Group commit of single-case writes (`storage::batch`), started at the first write (so
    /// on the process's bus, which `with_bus` hands over after `connect`).
    writer: Arc<std::sync::OnceLock<Writer>>,
}

impl std::fmt::Debug for SeaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeaStore")
            .field("backend", &self.db.get_database_backend())
            .finish_non_exhaustive()
    }
}

async fn status(conn: &impl sea_orm::ConnectionTrait) -> Result<super::SchemaStatus, DbErr> {
    use migration::MigratorTrait;
    let known: Vec<String> = migration::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let applied = queries::applied_migrations(conn).await?;
    Ok(super::SchemaStatus::of(&known, &applied))
}

/// The pending migrations' names, or an error naming the applied ones this build does not know.
async fn refuse_newer(conn: &impl sea_orm::ConnectionTrait) -> Result<Vec<String>, DbErr> {
    let status = status(conn).await?;
    if !status.unknown.is_empty() {
        return Err(DbErr::Custom(format!(
            "the database schema is newer than this build: it records migrations this build \
             does not know ({}): migrate with that newer version (this one still serves the \
             schema; `serve` skips migrating then)",
            status.unknown.join(", ")
        )));
    }
    Ok(status.pending)
}

impl SeaStore {
    /// Connects without migrating. Publishes on a bus of its own until `with_bus` hands it the
    /// process's bus.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
        vault: Arc<Vault>,
    ) -> Result<Self, DbErr> {
        let db = sql::connect(url, max_connections, acquire_timeout).await?;
        let read = sql::connect_reader(url, acquire_timeout)
            .await?
            .unwrap_or_else(|| db.clone());
        Ok(Self {
            db,
            read,
            keys: ChainKeys::new(&vault),
            codec: Codec::new(vault),
            timing: Timing::default(),
            bus: EventBus::new(),
            origin: uuid::Uuid::new_v4().simple().to_string(),
            writer: Arc::default(),
        })
    }

    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        // A writer of its own: creates written together share one timing.
        self.writer = Arc::default();
        self
    }

    /// The bus committed events are published on (watchers) and whose work signal is raised
    /// after every commit (idle workers).
    pub fn with_bus(mut self, bus: EventBus) -> Self {
        self.bus = bus;
        self.writer = Arc::default();
        self
    }

    /// The group commit's work so far (this store and its clones since `with_bus`).
    pub fn write_counts(&self) -> WriteCounts {
        self.writer.get().map(Writer::counts).unwrap_or_default()
    }

    fn writer(&self) -> &Writer {
        self.writer.get_or_init(|| {
            let (db, bus, origin) = (self.db.clone(), self.bus.clone(), self.origin.clone());
            if self.db.get_database_backend() == sea_orm::DbBackend::Postgres {
                Writer::direct(db, bus, origin)
            } else {
                Writer::start(db, bus, origin)
            }
        })
    }

    /// Applies the pending migrations and returns their names (none: nothing to do). On
    /// PostgreSQL in one transaction holding an advisory lock: concurrent runs (replicas starting
    /// together, two migration jobs) queue on the lock, and a later one finds nothing left to do.
    /// SQLite is one process's file with one connection: its runs cannot overlap.
    ///
    /// Refuses a database that records migrations this build does not know: this binary is
    /// older than the schema, and only the newer version may migrate it further.
    pub async fn migrate(&self) -> Result<Vec<String>, DbErr> {
        use sea_orm::ConnectionTrait;
        if self.db.get_database_backend() != sea_orm::DbBackend::Postgres {
            let pending = refuse_newer(&self.db).await?;
            migration::Migrator::up(&self.db, None).await?;
            return Ok(pending);
        }
        let txn = self.db.begin().await?;
        // Held until the commit (or rollback); the lock waits as long as a run takes.
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await?;
        let pending = refuse_newer(&txn).await?;
        migration::Migrator::up(&txn, None).await?;
        txn.commit().await?;
        Ok(pending)
    }

    /// This build's migrations against those the database has applied; writes nothing (no
    /// DDL: a runtime user without DDL rights may ask). Migrations this build does not know
    /// are reported, not refused: during a rollout older replicas run against a newer schema.
    pub async fn schema_status(&self) -> Result<super::SchemaStatus, DbErr> {
        status(&self.db).await
    }

    /// On PostgreSQL, the relay that brings other replicas' commits to this store's bus
    /// (`storage::listen`), running until the returned task is aborted; `None` on SQLite (one
    /// process: the bus already has everything).
    /// The listening connection is checked every `check` (see `listen::relay`).
    pub fn spawn_relay(&self, check: Duration) -> Option<tokio::task::JoinHandle<()>> {
        (self.db.get_database_backend() == sea_orm::DbBackend::Postgres).then(|| {
            tokio::spawn(listen::relay(
                self.db.clone(),
                self.origin.clone(),
                self.bus.clone(),
                check,
            ))
        })
    }

    /// On SQLite, keeps the query planner's statistics fresh: `PRAGMA optimize=0x10002` at once
    /// (analyses every table whose statistics are missing or stale, cheaply: SQLite samples),
    /// then `PRAGMA optimize` every `every` (re-analyses only tables that changed a lot). The
    /// hot queries' plans do not depend on statistics (tests/it/plans.rs); fresh ones keep the
    /// others good. `None` on PostgreSQL, whose autovacuum analyses.
    pub fn spawn_optimizer(&self, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        (self.db.get_database_backend() == sea_orm::DbBackend::Sqlite).then(|| {
            let db = self.db.clone();
            tokio::spawn(async move {
                use sea_orm::ConnectionTrait;
                let mut pragma = "PRAGMA optimize=0x10002";
                loop {
                    if let Err(e) = db.execute_unprepared(pragma).await {
                        tracing::warn!(error = %e, "PRAGMA optimize failed; retried at the next interval");
                    }
                    pragma = "PRAGMA optimize";
                    tokio::time::sleep(every).await;
                }
            })
        })
    }

    /// Test hook: hands every statement this store runs from now on to `sink` (the query-plan
    /// tests explain them). Call it before the store is cloned.
    #[doc(hidden)]
    pub fn on_statement(&mut self, sink: impl Fn(&sea_orm::Statement) + Send + Sync + 'static) {
        let sink = Arc::new(sink);
        let on_read = sink.clone();
        self.db
            .set_metric_callback(move |info: &sea_orm::metric::Info<'_>| sink(info.statement));
        self.read
            .set_metric_callback(move |info: &sea_orm::metric::Info<'_>| on_read(info.statement));
    }

    /// The id of the master key new data is encrypted under.
    pub fn current_key_id(&self) -> String {
        self.codec.current_key_id()
    }

    /// Re-seals, once, each head m0008 found sealed with the v1 seal (the head only) with the v2
    /// seal (also the row's state, `updated_at` and `version`), if the case's chain verifies
    /// under the v1 seal; every listed case is taken off the list, re-sealed or not, and one whose
    /// chain does not verify stays as found, for the verifier to report. Returns how many were
    /// re-sealed.
    pub async fn reseal_v1_heads(&self) -> Result<u64, StoreError> {
        use sea_orm::sea_query::Expr;
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

        use super::entities::cases;
        const BATCH: u32 = 100;
        let mut resealed = 0;
        let mut after: Option<String> = None;
        loop {
            let ids =
                queries::listed_cases(&self.db, UpgradeList::V1Seals, after.as_deref(), BATCH)
                    .await?;
            let Some(last) = ids.last() else {
                return Ok(resealed);
            };
            after = Some(last.clone());
            for id in &ids {
                let txn = self.begin().await?;
                queries::unlist_case(&txn, UpgradeList::V1Seals, id).await?;
                let Some(case_id) = CaseId::parse(id) else {
                    txn.commit().await.map_err(StoreError::Unavailable)?;
                    continue;
                };
                let model = match sql::lock_case(&txn, &case_id).await {
                    Ok(model) => model,
                    Err(StoreError::NotFound) => {
                        txn.commit().await.map_err(StoreError::Unavailable)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let mut head = queries::chain_head(&txn, &case_id).await?;
                let events = queries::events(&txn, &case_id).await?;
                let row = head.row.take();
                // The v1 seal covers the head only.
                let intact = verify_case(&events, &head, &self.keys).broken.is_none();
                let key_id = head.key_id().to_owned();
                let key = self.keys.get(&key_id);
                let (Some(row), Some(key), true) = (row, key, intact) else {
                    txn.commit().await.map_err(StoreError::Unavailable)?;
                    tracing::warn!(case_id = %case_id, "audit chain head does not verify; not re-sealed");
                    continue;
                };
                let seal = super::audit::head_seal(
                    key,
                    &key_id,
                    &model.id,
                    head.sequence,
                    &head.hash,
                    Some(&row),
                );
                cases::Entity::update_many()
                    .col_expr(cases::Column::HeadSeal, Expr::value(seal))
                    .filter(cases::Column::Id.eq(model.id.clone()))
                    .exec(&txn)
                    .await
                    .map_err(StoreError::Unavailable)?;
                txn.commit().await.map_err(StoreError::Unavailable)?;
                resealed += 1;
            }
        }
    }

    /// A read-only transaction that sees one snapshot (PostgreSQL's default READ COMMITTED takes
    /// a new one per statement; SQLite's read transaction keeps its first).
    async fn begin_snapshot(&self) -> Result<DatabaseTransaction, StoreError> {
        use sea_orm::{AccessMode, IsolationLevel};
        let isolation = (self.db.get_database_backend() == sea_orm::DbBackend::Postgres)
            .then_some(IsolationLevel::RepeatableRead);
        let access = isolation.map(|_| AccessMode::ReadOnly);
        self.db
            .begin_with_config(isolation, access)
            .await
            .map_err(StoreError::Unavailable)
    }

    async fn read_chain(&self, id: &CaseId) -> Result<(Vec<CaseEvent>, ChainHead), StoreError> {
        let txn = self.begin_snapshot().await?;
        let head = queries::chain_head(&txn, id).await?;
        let events = queries::events(&txn, id).await?;
        txn.commit().await.map_err(StoreError::Unavailable)?;
        Ok((events, head))
    }

    async fn begin(&self) -> Result<DatabaseTransaction, StoreError> {
        self.db.begin().await.map_err(StoreError::Unavailable)
    }

    /// Writes `cs`, commits, and only then tells watchers and idle workers.
    async fn commit(&self, txn: DatabaseTransaction, cs: ChangeSet) -> Result<(), StoreError> {
        let appended = cs.flush(&txn).await?;
        self.commit_appended(txn, appended).await
    }

    async fn commit_appended(
        &self,
        txn: DatabaseTransaction,
        appended: Vec<CaseEvent>,
    ) -> Result<(), StoreError> {
        // Inside the transaction: other replicas hear of it on commit, and never of a rollback.
        if !appended.is_empty() {
            listen::announce(&txn, &self.origin, &appended).await?;
        }
        txn.commit().await.map_err(StoreError::Unavailable)?;
        self.bus.publish(appended);
        // The change may have enqueued effects or made them due.
        self.bus.notify_work();
        Ok(())
    }
}

#[async_trait]
impl CaseStore for SeaStore {
    async fn create(&self, cmd: CreateCase) -> Result<Created, StoreError> {
        let cmd = Arc::new(cmd);
        // One retry covers the race where a concurrent twin with the same request_id (another
        // replica) committed between our look-up and our insert: the second pass replays it.
        for _ in 0..2 {
            let created = self
                .writer()
                .create(cmd.clone(), self.codec.clone(), self.timing)
                .await;
            match created {
                Err(StoreError::ConcurrentRetry) => continue,
                other => return other,
            }
        }
        Err(StoreError::ConcurrentRetry)
    }

    async fn get(&self, id: &CaseId) -> Result<Option<Deregistration>, StoreError> {
        let Some(m) = sql::find_case(&self.read, id, Lock::No).await? else {
            return Ok(None);
        };
        match self.codec.to_domain(&m) {
            // Shredded: the case as the API knows it is gone (its record stays).
            Err(StoreError::NotFound) => Ok(None),
            other => other.map(Some),
        }
    }

    async fn get_many(&self, ids: &[CaseId]) -> Result<Vec<Deregistration>, StoreError> {
        let refs: Vec<&CaseId> = ids.iter().collect();
        let rows = sql::load_cases(&self.read, &refs, Lock::No).await?;
        Ok(rows
            .values()
            .filter_map(|m| self.codec.readable(m))
            .collect())
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Deregistration>, StoreError> {
        let rows = queries::list(&self.read, query).await?;
        Ok(rows.iter().filter_map(|m| self.codec.readable(m)).collect())
    }

    async fn apply(
        &self,
        id: &CaseId,
        owner: Option<&HsaId>,
        event: &Event,
        meta: EventMeta,
    ) -> Result<Deregistration, StoreError> {
        let (codec, timing) = (self.codec.clone(), self.timing);
        let (id, owner) = (id.clone(), owner.cloned());
        let (event, meta) = (Arc::new(event.clone()), Arc::new(meta));
        self.writer()
            .submit(move |txn| {
                let (codec, id, owner) = (codec.clone(), id.clone(), owner.clone());
                let (event, meta) = (event.clone(), meta.clone());
                Box::pin(async move {
                    let mut model = sql::lock_case(txn, &id).await?;
                    if owner.is_some_and(|o| o.as_str() != model.care_provider_hsa_id) {
                        return Err(StoreError::NotFound);
                    }
                    let mut cs = ChangeSet::new(timing, &codec);
                    cs.event(&mut model, &event, &meta)?;
                    // Read back before the first write, so that its refusal writes nothing.
                    let value = codec.to_domain(&model)?;
                    let enqueued = cs.enqueues();
                    let appended = cs.flush(txn).await?;
                    Ok(Written::new(value, appended, enqueued))
                })
            })
            .await
    }

    async fn audit(&self, id: &CaseId, kind: &str, meta: EventMeta) -> Result<(), StoreError> {
        let (codec, timing) = (self.codec.clone(), self.timing);
        let (id, kind, meta) = (id.clone(), Arc::<str>::from(kind), Arc::new(meta));
        self.writer()
            .submit(move |txn| {
                let (codec, id, kind, meta) =
                    (codec.clone(), id.clone(), kind.clone(), meta.clone());
                Box::pin(async move {
                    let mut model = sql::lock_case(txn, &id).await?;
                    let mut cs = ChangeSet::new(timing, &codec);
                    cs.audit(&mut model, &kind, &meta)?;
                    Ok(Written::new((), cs.flush(txn).await?, false))
                })
            })
            .await
    }

    async fn events(&self, id: &CaseId) -> Result<Vec<CaseEvent>, StoreError> {
        queries::events(&self.read, id).await
    }

    async fn kiv_removed_by_other_case(&self, id: &CaseId) -> Result<bool, StoreError> {
        queries::kiv_removed_by_other_case(&self.db, id).await
    }

    async fn snapshot(&self, id: &CaseId) -> Result<Option<Employment>, StoreError> {
        let model = sql::find_case(&self.read, id, Lock::No)
            .await?
            .ok_or(StoreError::NotFound)?;
        self.codec.open_snapshot(&model)
    }

    async fn claim(
        &self,
        owner: &str,
        now: Timestamp,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<Work>, StoreError> {
        outbox::claim(&self.db, owner, now, lease, limit).await
    }

    async fn finish(&self, owner: &str, results: Vec<Finished>) -> Result<(), StoreError> {
        if results.is_empty() {
            return Ok(());
        }
        let (codec, timing) = (self.codec.clone(), self.timing);
        let (owner, results) = (Arc::<str>::from(owner), Arc::new(results));
        self.writer()
            .submit(move |txn| {
                let (codec, owner, results) = (codec.clone(), owner.clone(), results.clone());
                Box::pin(async move {
                    let now = crate::clock::now();
                    let appended =
                        outbox::finish_in(txn, &codec, timing, &owner, &results, now).await?;
                    // Results enqueue the next steps (or wake a waiting one).
                    Ok(Written::new((), appended, true))
                })
            })
            .await
    }

    async fn renew(
        &self,
        owner: &str,
        keys: &[String],
        now: Timestamp,
        lease: Duration,
    ) -> Result<u64, StoreError> {
        outbox::renew(&self.db, owner, keys, now, lease).await
    }

    async fn release(
        &self,
        owner_prefix: &str,
        keep_prefix: Option<&str>,
    ) -> Result<u64, StoreError> {
        let released = outbox::release(&self.db, owner_prefix, keep_prefix).await?;
        if released > 0 {
            // Due now: wake the idle workers, here and on the other replicas. The leases are
            // given up whether or not the wake-up goes out (the others then find the steps at
            // their next idle poll), so its failure is not the release's.
            self.bus.notify_work();
            if let Err(e) = listen::wake_others(&self.db, &self.origin).await {
                tracing::warn!(
                    error = %e,
                    steps = released,
                    "released leases, but cannot wake the other replicas; they take the steps at their next idle poll"
                );
            }
        }
        Ok(released)
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        outbox::next_due(&self.read).await
    }

    async fn expedite(&self, id: &CaseId, meta: EventMeta) -> Result<(), StoreError> {
        let (codec, timing) = (self.codec.clone(), self.timing);
        let (id, meta) = (id.clone(), Arc::new(meta));
        self.writer()
            .submit(move |txn| {
                let (codec, id, meta) = (codec.clone(), id.clone(), meta.clone());
                Box::pin(async move {
                    let mut model = sql::lock_case(txn, &id).await?;
                    // Planned before the first write, so that a refusal writes nothing.
                    let mut cs = ChangeSet::new(timing, &codec);
                    cs.audit(&mut model, "operator_expedited", &meta)?;
                    outbox::expedite(txn, &id, meta.at).await?;
                    // Made its timers due now.
                    Ok(Written::new((), cs.flush(txn).await?, true))
                })
            })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if queries::schema_current(&self.db).await? {
            Ok(())
        } else {
            Err(StoreError::Unavailable(DbErr::Custom(
                "the database schema lacks this build's migrations (run `migrate`)".into(),
            )))
        }
    }

    async fn stats(&self, now: Timestamp) -> Result<super::Stats, StoreError> {
        queries::stats(&self.read, now).await
    }

    async fn retention_due(
        &self,
        cut: &RetentionCutoffs,
        limit: u32,
    ) -> Result<RetentionDue, StoreError> {
        retention::due(&self.db, cut, limit).await
    }

    async fn shred(
        &self,
        id: &CaseId,
        before: Timestamp,
        meta: EventMeta,
    ) -> Result<bool, StoreError> {
        let txn = self.begin().await?;
        let mut model = match sql::lock_case(&txn, id).await {
            Err(StoreError::NotFound) => return Ok(false),
            other => other?,
        };
        if !retention::shred_in(&txn, &mut model, before, meta.at).await? {
            txn.rollback().await.map_err(StoreError::Unavailable)?;
            return Ok(false);
        }
        let mut cs = ChangeSet::new(self.timing, &self.codec);
        cs.audit(&mut model, "personal_data_shredded", &meta)?;
        self.commit(txn, cs).await?;
        Ok(true)
    }

    async fn purge(
        &self,
        id: &CaseId,
        before: Timestamp,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let txn = self.begin().await?;
        let model = match sql::lock_case(&txn, id).await {
            Err(StoreError::NotFound) => return Ok(false),
            other => other?,
        };
        if !retention::purge_in(&txn, &model, before, at).await? {
            txn.rollback().await.map_err(StoreError::Unavailable)?;
            return Ok(false);
        }
        txn.commit().await.map_err(StoreError::Unavailable)?;
        Ok(true)
    }

    async fn purge_outbox(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        retention::purge_outbox(&self.db, before, limit).await
    }

    async fn record(&self, id: &CaseId) -> Result<Option<CaseRecord>, StoreError> {
        sql::find_case(&self.db, id, Lock::No)
            .await?
            .as_ref()
            .map(retention::record_of)
            .transpose()
    }

    async fn reencrypt_pending(&self) -> Result<u64, StoreError> {
        retention::rekey_pending(&self.db, &self.codec.current_key_id()).await
    }

    async fn reencrypt_batch(
        &self,
        after: Option<&CaseId>,
        limit: u32,
    ) -> Result<ReencryptBatch, StoreError> {
        let current = self.codec.current_key_id();
        let ids = retention::rekey_batch(&self.db, &current, after, limit).await?;
        let mut batch = ReencryptBatch {
            last: ids.last().cloned(),
            ..ReencryptBatch::default()
        };
        if ids.is_empty() {
            return Ok(batch);
        }
        let txn = self.begin().await?;
        // Row locks in id order, like every other multi-case transaction.
        let refs: Vec<&CaseId> = ids.iter().collect();
        let rows = sql::load_cases(&txn, &refs, Lock::ForUpdate).await?;
        for id in &ids {
            let Some(mut model) = rows.get(&id.to_string()).cloned() else {
                continue;
            };
            match retention::rekey_in(&txn, &self.codec, &mut model).await {
                Ok(super::codec::Rekeyed::Current) => {}
                Ok(_) => batch.moved += 1,
                Err(StoreError::Corrupt(e)) => {
                    tracing::error!(case_id = %id, error = %e, "case row not re-encrypted: unreadable");
                    batch.failed += 1;
                }
                Err(e) => return Err(e),
            }
        }
        txn.commit().await.map_err(StoreError::Unavailable)?;
        Ok(batch)
    }

    async fn chain_head(&self, id: &CaseId) -> Result<ChainHead, StoreError> {
        queries::chain_head(&self.db, id).await
    }

    async fn audit_trail(&self, id: &CaseId) -> Result<(Vec<CaseEvent>, ChainHead), StoreError> {
        self.read_chain(id).await
    }

    async fn verify_audit(&self, id: &CaseId) -> Result<ChainReport, StoreError> {
        let txn = self.begin_snapshot().await?;
        let head = queries::chain_head(&txn, id).await?;
        let rows = queries::event_rows(&txn, id).await?;
        txn.commit().await.map_err(StoreError::Unavailable)?;
        // An event row that does not decode is that case's broken link, not the end of a walk.
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let seq = row.seq;
            match super::codec::event_of(row) {
                Ok(e) => events.push(e),
                Err(_) => {
                    return Ok(verify_case_unreadable(&events, seq, &head, &self.keys));
                }
            }
        }
        Ok(verify_case(&events, &head, &self.keys))
    }

    async fn orphan_event_cases(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        queries::orphan_event_cases(&self.db, after, limit).await
    }

    async fn case_ids(
        &self,
        after: Option<&CaseId>,
        limit: u32,
    ) -> Result<Vec<CaseId>, StoreError> {
        let ids = queries::case_ids(&self.db, after, limit).await?;
        ids.iter()
            .map(|id| {
                CaseId::parse(id).ok_or_else(|| StoreError::Corrupt(format!("case id {id:?}")))
            })
            .collect()
    }

    async fn count_cases(&self) -> Result<u64, StoreError> {
        queries::count_cases(&self.db).await
    }

    async fn steps(&self, id: &CaseId) -> Result<Vec<StepView>, StoreError> {
        queries::steps(&self.db, id).await
    }

    async fn anchor_legacy_chains(&self, meta: EventMeta) -> Result<u64, StoreError> {
        const BATCH: u32 = 100;
        let mut anchored = 0;
        let mut after: Option<String> = None;
        loop {
            let ids =
                queries::listed_cases(&self.db, UpgradeList::LegacyTrails, after.as_deref(), BATCH)
                    .await?;
            let Some(last) = ids.last() else {
                return Ok(anchored);
            };
            after = Some(last.clone());
            for id in &ids {
                let txn = self.begin().await?;
                // Taken off the list whatever follows: a listed trail is anchored at most once,
                // and one found rewritten stays as found, for the verifier to report.
                queries::unlist_case(&txn, UpgradeList::LegacyTrails, id).await?;
                let model = match CaseId::parse(id) {
                    Some(case_id) => match sql::lock_case(&txn, &case_id).await {
                        Ok(model) => Some((case_id, model)),
                        Err(StoreError::NotFound) => None,
                        Err(e) => return Err(e),
                    },
                    None => None,
                };
                let Some((case_id, mut model)) = model else {
                    txn.commit().await.map_err(StoreError::Unavailable)?;
                    continue;
                };
                let head = queries::chain_head(&txn, &case_id).await?;
                let events = queries::events(&txn, &case_id).await?;
                // Only a legacy trail that verifies up to the row's head is anchored.
                let report = verify_case(&events, &head, &self.keys);
                let intact = report
                    .broken
                    .is_some_and(|b| b.problem == ChainProblem::UnanchoredLegacy)
                    && events
                        .last()
                        .is_some_and(|e| e.sequence == head.sequence && e.hash == head.hash);
                if !intact {
                    txn.commit().await.map_err(StoreError::Unavailable)?;
                    tracing::warn!(case_id = %case_id, "legacy audit trail does not verify; not anchored");
                    continue;
                }
                let mut cs = ChangeSet::new(self.timing, &self.codec);
                cs.audit(&mut model, "audit_chain_keyed", &meta)?;
                self.commit(txn, cs).await?;
                anchored += 1;
            }
        }
    }

    fn pool(&self) -> Option<super::PoolStats> {
        sql::pool_stats(&self.db)
    }
}
