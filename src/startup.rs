//! Start-up: everything is wired here. `build_connectors` turns the connector settings into
//! connectors, `App::build` wires configuration into a bound server and admin listener (port 0
//! works; the bound addresses are exposed), `App::run` serves until the shutdown future
//! resolves, then drains; `probe_health` keeps readiness, gRPC health and the reachability
//! gauges current.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tower_layer::Stack;

use crate::admin::Readiness;
use crate::api::pb::deregistration_service_server::DeregistrationServiceServer;
use crate::api::pb::health_care_office_service_server::HealthCareOfficeServiceServer;
use crate::api::pb::operations_service_server::OperationsServiceServer;
use crate::api::pb::revocation_service_server::RevocationServiceServer;
use crate::api::{Api, pb};
use crate::app::Gateway;
use crate::auth::{Authorizer, Principals};
use crate::bus::EventBus;
use crate::config::Config;
use crate::connectors::crl_status::CrlRevocationStatus;
use crate::connectors::simulated::{LogNotifier, SimulatedKiv, SimulatedTjansteId};
use crate::connectors::simulated_list::SimulatedList;
use crate::connectors::smtp::{Smtp, SmtpNotifier, SmtpTjansteId};
use crate::connectors::{
    Connectors, Kiv, KivSettings, Notifier, NotifierSettings, OfficeOnly, RevocationCheckSettings,
    TjansteId, TjansteIdSettings, ldap::LdapKiv,
};
use crate::crl::CrlStore;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::privacy::{PrivacySettings, Vault};
use crate::reload::Reloader;
use crate::rpc::{self, AuthLayer, RateLimitLayer, RateLimiter, RequestSizeLayer, RpcLayer};
use crate::server::caps::ConnectionCaps;
use crate::storage::NodeLock;
use crate::storage::{CaseStore, DatabaseSettings, EventMeta, SeaStore};
use crate::tls::TlsState;

/// How long shutdown waits, after cutting off the steps still running at the end of the
/// grace, for their futures to be dropped (a cancelled future ends at its next yield point,
/// which is at once unless a connector blocks a thread).
const STEPS_END_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("master key: {0}")]
    Key(#[from] crate::privacy::VaultError),
    #[error(transparent)]
    Principals(#[from] crate::auth::PrincipalsError),
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// `database.migrate` is off and the schema lacks migrations this build needs.
    #[error(
        "the database schema lacks migrations this build needs: {0} (run `migrate` first, or \
         let `serve` migrate: database.migrate = true)"
    )]
    SchemaBehind(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("connector: {0}")]
    Connector(String),
    #[error("database: {0}")]
    Store(#[from] crate::storage::StoreError),
    #[error(transparent)]
    Node(#[from] crate::storage::NodeError),
}

fn read(what: &'static str, path: &std::path::Path) -> Result<String, StartError> {
    std::fs::read_to_string(path).map_err(|source| StartError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Opens the store for `serve`. With `db.migrate`, applies the pending migrations (under the
/// migration lock); without, refuses a schema that lacks any of this build's migrations, naming
/// them. A schema a newer version migrated (migrations this build does not know) is served as
/// it is, with a warning, and never migrated: during a rollout (or a rollback of the binary)
/// older replicas keep running against it.
pub async fn open_store(db: &DatabaseSettings, vault: Arc<Vault>) -> Result<SeaStore, StartError> {
    let store = connect_store(db, vault).await?;
    let status = store.schema_status().await?;
    if !status.unknown.is_empty() {
        tracing::warn!(
            migrations = %status.unknown.join(", "),
            "the database records migrations this build does not know (a newer version's); \
             serving it without migrating"
        );
    }
    if db.migrate && status.unknown.is_empty() {
        apply_migrations(&store).await?;
    } else if !status.pending.is_empty() {
        return Err(StartError::SchemaBehind(status.pending.join(", ")));
    }
    anchor_legacy_chains(&store).await?;
    Ok(store)
}

/// The `migrate` command: applies the pending migrations under the migration lock, whatever
/// `database.migrate` says. Refuses a schema that records migrations this build does not know
/// (this binary is older than the schema).
pub async fn migrate_database(db: &DatabaseSettings, vault: Arc<Vault>) -> Result<(), StartError> {
    let store = connect_store(db, vault).await?;
    apply_migrations(&store).await?;
    anchor_legacy_chains(&store).await
}

async fn connect_store(db: &DatabaseSettings, vault: Arc<Vault>) -> Result<SeaStore, StartError> {
    use secrecy::ExposeSecret;
    Ok(SeaStore::connect(
        db.url.expose_secret(),
        db.max_connections,
        db.acquire_timeout,
        vault,
    )
    .await?)
}

async fn apply_migrations(store: &SeaStore) -> Result<(), StartError> {
    let applied = store.migrate().await?;
    if applied.is_empty() {
        tracing::info!("database schema is current; no migration to apply");
    } else {
        tracing::info!(migrations = %applied.join(", "), "migrations applied");
    }
    Ok(())
}

/// Covers trails from before the keyed chain (m0005) with a keyed link, once per case m0008
/// listed (see `storage::audit`), and re-seals the v1 heads m0008 listed as v2; the lists are
/// consumed, so later starts change nothing.
async fn anchor_legacy_chains(store: &SeaStore) -> Result<(), StartError> {
    let meta = EventMeta {
        actor: "system".into(),
        trace_id: uuid::Uuid::new_v4().simple().to_string(),
        at: crate::clock::now(),
        detail: "legacy SHA-256 trail anchored in the keyed audit chain".into(),
    };
    let n = store.anchor_legacy_chains(meta).await?;
    if n > 0 {
        tracing::info!(cases = n, "legacy audit trails anchored in the keyed chain");
    }
    let n = store.reseal_v1_heads().await?;
    if n > 0 {
        tracing::info!(cases = n, "audit chain heads re-sealed (v2)");
    }
    Ok(())
}

/// The keyring `[privacy]` describes (key files read, the current and pseudonym keys checked).
pub fn load_vault(privacy: &PrivacySettings) -> Result<Vault, StartError> {
    Ok(Vault::load(privacy)?)
}

/// The connectors the configuration chooses.
/// `metrics` receives what connectors count themselves (the CRL connector's list updates).
pub fn build_connectors(config: &Config, metrics: &Arc<Metrics>) -> Result<Connectors, String> {
    let faults = config.simulated.faults();
    let journal = config.simulated.journal.as_deref();
    let smtp = match &config.smtp {
        Some(s) if config.tjansteid.uses_smtp() || config.notifier.uses_smtp() => {
            Some(Smtp::new(s)?)
        }
        _ => None,
    };
    // `Config` refuses an smtp kind without `[smtp]`; this only keeps the match total.
    let relay = || smtp.clone().ok_or_else(|| "[smtp] is required".to_owned());
    let tjansteid: Arc<dyn TjansteId> = match &config.tjansteid {
        TjansteIdSettings::Simulated(s) => Arc::new(SimulatedTjansteId::new(
            s.confirm_after.delay(),
            faults,
            journal,
        )),
        TjansteIdSettings::Smtp(desk) => Arc::new(SmtpTjansteId::new(
            relay()?,
            desk.service_desk.clone(),
            desk.reply_instructions.clone(),
        )?),
    };
    let notifier: Arc<dyn Notifier> = match &config.notifier {
        NotifierSettings::Log {} => Arc::new(LogNotifier::new(faults, journal)),
        NotifierSettings::Smtp {} => Arc::new(SmtpNotifier::new(relay()?)),
    };
    let kiv: Arc<dyn Kiv> = match &config.kiv {
        KivSettings::Simulated(s) => {
            let kiv = SimulatedKiv::new(s.auto_employ, faults, journal);
            // With the check on, simulated people carry card certificates for it to find.
            Arc::new(match config.revocation_check {
                RevocationCheckSettings::Off => kiv,
                _ => kiv.with_card_certificates()?,
            })
        }
        KivSettings::Ldap(s) => Arc::new(LdapKiv::new((**s).clone())?),
        KivSettings::Office {} => Arc::new(OfficeOnly),
    };
    Ok(Connectors {
        tjansteid,
        kiv,
        notifier,
        gateway_removes_kiv: !matches!(config.kiv, KivSettings::Office {}),
        revocation: match &config.revocation_check {
            RevocationCheckSettings::Off => None,
            RevocationCheckSettings::Simulated(s) => Some(Arc::new(SimulatedList::new(s))),
            RevocationCheckSettings::Crl(s) => {
                Some(Arc::new(CrlRevocationStatus::new(s, metrics.clone())?))
            }
        },
    })
}

/// The layers every call passes through (see `App::build`).
type ServerLayers = Stack<
    RateLimitLayer,
    Stack<AuthLayer, Stack<RequestSizeLayer, Stack<RpcLayer, tower_layer::Identity>>>,
>;

#[derive(Debug)]
pub struct App {
    addr: SocketAddr,
    listener: TcpListener,
    /// The admin listener and its bound address, when `admin.listen` is set.
    admin: Option<(TcpListener, SocketAddr)>,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    stats_every: Duration,
    router: tonic::transport::server::Router<ServerLayers>,
    tls: Arc<TlsState>,
    reloader: Reloader,
    store: Arc<dyn CaseStore>,
    engine: Arc<Engine>,
    probes: Connectors,
    health: tonic_health::server::HealthReporter,
    grace: Duration,
    /// How long the listener keeps accepting after readiness turned false (`server.drain_delay`).
    drain_delay: Duration,
    /// Set at shutdown: open watch streams end (`SHUTTING_DOWN`).
    draining: tokio::sync::watch::Sender<bool>,
    /// Whether the operator console is served (`[console] enabled`).
    console: bool,
    probe_every: Duration,
    /// Connections from which nothing arrives for this long are closed (`None`: off).
    idle_timeout: Option<Duration>,
    /// A TLS handshake not finished within this is dropped.
    handshake_timeout: Duration,
    connection_caps: Arc<ConnectionCaps>,
    /// Brings other replicas' news (PostgreSQL); stopped with the app.
    relay: Option<Relay>,
    /// Keeps SQLite's planner statistics fresh; stopped with the app.
    optimizer: Option<Relay>,
    /// How often every audit chain is verified (zero: never).
    audit_every: Duration,
    /// The node id this process's saga workers hold, released when the app is dropped (after
    /// its leases were given up).
    node: Option<NodeLock>,
}

/// A background task of the store (`SeaStore::spawn_relay`, `SeaStore::spawn_optimizer`),
/// aborted when dropped.
#[derive(Debug)]
struct Relay(tokio::task::JoinHandle<()>);

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl App {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let connectors = build_connectors(&config, &metrics).map_err(StartError::Connector)?;
        if config.server.require_reachable_at_start {
            connectors.probe().await.map_err(StartError::Connector)?;
        }
        Self::build_with_metrics(config, connectors, metrics).await
    }

    /// Builds with the given connectors (tests hold on to simulated ones to inspect them).
    pub async fn build_with(config: Config, connectors: Connectors) -> Result<Self, StartError> {
        Self::build_with_metrics(config, connectors, Arc::new(Metrics::new())).await
    }

    async fn build_with_metrics(
        config: Config,
        connectors: Connectors,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StartError> {
        let vault = Arc::new(load_vault(&config.privacy)?);
        // Key ids are not secret: they tell which key is current after a rotation.
        tracing::info!(current_key = %vault.key_id(), keys = vault.key_ids().len(), "master keys loaded");
        let timing = crate::storage::Timing {
            poll_outcome: connectors.tjansteid.polls(),
            // New cases are checked when a checker is configured; each case keeps its mode.
            check_revocation: connectors.revocation.is_some(),
            ..config.engine.timers
        };
        // One bus per process: the store publishes what it commits, watchers and workers listen.
        let bus = EventBus::new();
        let store = open_store(&config.database, vault.clone())
            .await?
            .with_timing(timing)
            .with_bus(bus.clone());
        // PostgreSQL: other replicas' commits reach this process's bus too.
        let relay = store.spawn_relay(config.database.listen_check).map(Relay);
        // SQLite: planner statistics at start and hourly (cheap; PostgreSQL's autovacuum does it).
        let optimizer = store.spawn_optimizer(Duration::from_secs(3600)).map(Relay);
        let store: Arc<dyn CaseStore> = Arc::new(store);
        let probes = connectors.clone();
        let gateway_removes_kiv = connectors.gateway_removes_kiv;
        // A process that runs saga steps holds its node id for life (refused when another
        // live process holds it), so its restart can take over its own leases at once.
        let node = if config.engine.workers > 0 {
            use secrecy::ExposeSecret;
            let lock =
                NodeLock::acquire(config.database.url.expose_secret(), config.engine.node_id())
                    .await?;
            tracing::info!(node_id = %lock.id(), "node id held");
            Some(lock)
        } else {
            None
        };
        let mut engine = Engine::new(
            store.clone(),
            bus.clone(),
            connectors,
            config.engine.clone(),
        )
        .with_metrics(metrics.clone())
        .with_retention(config.retention.clone());
        if let Some(lock) = &node {
            engine = engine.with_node(lock);
        }
        let engine = Arc::new(engine);
        let principals = Arc::new(Principals::new(Authorizer::load(
            &config.auth.principals_file,
        )?));
        let (tls, crls) = build_tls(&config, &metrics).await?;
        let rate_limiter = Arc::new(RateLimiter::new(config.limits.clone()));
        let mut auth_layer = AuthLayer::new(principals.clone())
            .with_rate_limit(rate_limiter.clone(), metrics.clone())
            .with_recheck_every(config.server.reload_interval);
        if let Some(crls) = &crls {
            auth_layer = auth_layer.with_revocation(crls.clone(), metrics.clone());
        }
        let reloader = Reloader::new(
            &config.auth.principals_file,
            &config.tls,
            principals,
            tls.clone(),
            crls,
            metrics.clone(),
            config.server.reload_interval,
        );

        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.server.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;
        let admin = match config.admin.listen {
            Some(at) => {
                let bind_err = |source| StartError::Bind { addr: at, source };
                let l = TcpListener::bind(at).await.map_err(bind_err)?;
                let bound = l.local_addr().map_err(bind_err)?;
                Some((l, bound))
            }
            None => None,
        };

        let watchers = crate::api::Watchers::new(config.limits.watch_streams_per_principal)
            .with_metrics(metrics.clone());
        let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
        let api = Api::new(
            Arc::new(
                Gateway::new(store.clone(), bus, vault)
                    .removing_kiv(gateway_removes_kiv)
                    .with_metrics(metrics.clone()),
            ),
            config.api,
            Arc::new(watchers),
            drain_rx,
        );
        let max_request = config.server.max_request_bytes;
        let (health, health_service) = tonic_health::server::health_reporter();
        let health_service = health_service.max_decoding_message_size(max_request);
        // Not ready until the first probe has seen the database.
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let error_details = crate::api::error::detail_descriptors().map_err(reflection_err)?;
        let reflection_builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc.ErrorInfo, BadRequest, RetryInfo: grpcurl prints details by name.
                .register_file_descriptor_set(error_details.clone())
        };
        let reflection = reflection_builder()
            .build_v1()
            .map_err(reflection_err)?
            .max_decoding_message_size(max_request);
        // v1alpha too: several clients (e.g. grpcio-reflection) still speak only that.
        let reflection_alpha = reflection_builder()
            .build_v1alpha()
            .map_err(reflection_err)?
            .max_decoding_message_size(max_request);

        // The console's pages share the listener (and so mutual TLS and the auth layer, which
        // admits operators only to `/console`); unknown paths still end in UNIMPLEMENTED.
        let mut routes = tonic::service::Routes::builder();
        routes
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(
                DeregistrationServiceServer::new(api.clone())
                    .max_decoding_message_size(max_request),
            )
            .add_service(
                HealthCareOfficeServiceServer::new(api.clone())
                    .max_decoding_message_size(max_request),
            )
            .add_service(
                RevocationServiceServer::new(api.clone()).max_decoding_message_size(max_request),
            )
            .add_service(OperationsServiceServer::new(api).max_decoding_message_size(max_request));
        let mut routes = routes.routes();
        if config.console.enabled {
            let console = crate::console::router(store.clone(), config.console.clone());
            let grpc = std::mem::take(routes.axum_router_mut());
            *routes.axum_router_mut() = grpc.merge(console);
        }
        // Outermost first. The RPC layer wraps everything so that every call, denied, refused
        // or timed out, has its span, its "request finished" line and its outcome; the timeout
        // lives in it (not `Server::timeout`, which sits outside user layers and would only drop
        // the call). The size layer only rewrites tonic's answer to an oversized message (the
        // check itself is each service's `max_decoding_message_size`). Authentication runs
        // inside the span, so denials carry the trace id; the rate limit needs its principal,
        // so it comes after, and before any handler or database work.
        // The outcome hook is where RPC metrics attach.
        // TLS is ours (`tls::incoming`): its configuration is swapped on reload.
        let s = &config.server;
        let connection_caps = Arc::new(ConnectionCaps::new(
            s.max_handshakes,
            s.max_connections,
            config.limits.connections_per_principal,
            metrics.clone(),
        ));
        let router = Server::builder()
            .concurrency_limit_per_connection(s.concurrency_per_connection)
            .max_concurrent_streams(s.max_concurrent_streams)
            .http2_keepalive_interval(Some(s.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(s.http2_keepalive_timeout))
            .layer(RpcLayer::new(s.request_timeout, rpc_metrics(&metrics)))
            .layer(RequestSizeLayer::new(max_request))
            .layer(auth_layer)
            .layer(RateLimitLayer::new(rate_limiter, Some(metrics.clone())))
            .add_routes(routes);
        Ok(Self {
            addr,
            listener,
            admin,
            metrics,
            readiness: Readiness::default(),
            stats_every: config
                .admin
                .stats_interval
                .clamp(Duration::from_millis(50), Duration::from_secs(3600)),
            router,
            tls,
            reloader,
            store,
            engine,
            probes,
            health,
            grace: config.server.shutdown_grace,
            drain_delay: config.server.drain_delay,
            draining: drain_tx,
            console: config.console.enabled,
            probe_every: config
                .server
                .health_probe
                .clamp(Duration::from_millis(50), Duration::from_secs(3600)),
            idle_timeout: config.server.idle_timeout(),
            handshake_timeout: config.server.tls_handshake_timeout,
            connection_caps,
            relay,
            optimizer,
            audit_every: config.audit.verify_interval,
            node,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the operator console is served at `/console` on the gRPC listener.
    pub fn console_enabled(&self) -> bool {
        self.console
    }

    /// The admin listener's bound address (`/metrics`, `/livez`, `/readyz`), if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, a)| *a)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves until `shutdown` resolves, then drains for the grace period: not ready at once,
    /// no new connections, in-flight RPCs finish and workers finish the steps they hold (and
    /// claim no more). After the grace, what still runs is cut off and the leases this process
    /// holds are released, so other replicas take those steps at once.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let prober = tokio::spawn(probe_health(
            self.store.clone(),
            self.probes.clone(),
            Verdicts {
                health: self.health.clone(),
                readiness: self.readiness.clone(),
                metrics: self.metrics.clone(),
            },
            self.probe_every,
        ));
        // The admin listener serves through the drain (so `/readyz` says 503 and `/metrics`
        // still answers) and stops last.
        let (admin_stop, admin_rx) = tokio::sync::oneshot::channel::<()>();
        let mut admin_tasks = tokio::task::JoinSet::new();
        if let Some((listener, _)) = self.admin {
            let app = crate::admin::router(
                self.metrics.clone(),
                self.store.clone(),
                self.readiness.clone(),
            );
            admin_tasks.spawn(async move {
                let stop = async move {
                    let _ = admin_rx.await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    tracing::error!(error = %e, "admin listener failed");
                }
            });
            admin_tasks.spawn(crate::admin::refresh_stats(
                self.store.clone(),
                self.metrics.clone(),
                self.stats_every,
            ));
        }
        let audit_verifier = (!self.audit_every.is_zero()).then(|| {
            tokio::spawn(crate::verifier::run_periodic(
                self.store.clone(),
                self.metrics.clone(),
                self.audit_every,
            ))
        });
        let reloader = tokio::spawn(self.reloader.run());
        let (engine_stop, engine_rx) = tokio::sync::watch::channel(false);
        let mut engine = self.engine.clone().spawn(engine_rx);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = self.router.serve_with_incoming_shutdown(
            crate::tls::incoming(
                self.listener,
                self.tls,
                self.handshake_timeout,
                self.idle_timeout,
                self.connection_caps,
            ),
            async move {
                let _ = stop_rx.await;
            },
        );
        tokio::pin!(serve);
        let result = tokio::select! {
            r = &mut serve => {
                let _ = engine_stop.send(true);
                r
            }
            () = shutdown => {
                tracing::info!(
                    drain_delay_ms = self.drain_delay.as_millis() as u64,
                    grace_seconds = self.grace.as_secs(),
                    "shutting down: draining requests and steps"
                );
                // Not ready first, and for good: the prober must not turn it back.
                prober.abort();
                self.readiness.drain();
                for s in SERVICES {
                    self.health.set_service_status(s, ServingStatus::NotServing).await;
                }
                // Watchers move to another replica now rather than hold the drain open; the
                // workers claim no more and finish the steps they hold.
                let _ = self.draining.send(true);
                let _ = engine_stop.send(true);
                // Still accepting (the server future is polled) while the load balancers
                // notice the readiness; it ends early only if the server fails.
                match tokio::time::timeout(self.drain_delay, &mut serve).await {
                    Ok(r) => r,
                    Err(_) => {
                // One grace for both: in-flight RPCs finish while the workers finish the steps
                // they hold.
                let deadline = tokio::time::Instant::now() + self.grace;
                let _ = stop_tx.send(());
                let rpcs = async {
                    match tokio::time::timeout_at(deadline, &mut serve).await {
                        Ok(r) => r,
                        Err(_) => {
                            tracing::warn!("grace period over; closing remaining connections");
                            Ok(())
                        }
                    }
                };
                let steps = async {
                    if tokio::time::timeout_at(deadline, async {
                        while engine.join_next().await.is_some() {}
                    })
                    .await
                    .is_err()
                    {
                        tracing::warn!("grace period over; steps still running are abandoned and their leases released");
                    }
                };
                let (r, ()) = tokio::join!(rpcs, steps);
                r
                    }
                }
            }
        };
        prober.abort();
        reloader.abort();
        if let Some(v) = audit_verifier {
            v.abort();
        }
        // Whatever still runs is stopped; the leases this process still holds (a step
        // abandoned, a batch whose results could not be recorded) are given up at once, so
        // other replicas take those steps now rather than when the leases run out.
        // Aborting only asks a task to stop at its next yield point: the leases are given up
        // once every step future is gone, never while a step may still be mid-call (another
        // replica would run it a second time alongside).
        engine.abort_all();
        while engine.join_next().await.is_some() {}
        if tokio::time::timeout(STEPS_END_WAIT, self.engine.steps_ended())
            .await
            .is_err()
        {
            tracing::warn!(
                "a cancelled step has not ended; its lease is kept until it runs out so no other replica runs it alongside"
            );
        } else {
            match self.engine.release_leases().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(steps = n, "released the leases of unfinished steps"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot release leases; other replicas take the steps when they run out")
                }
            }
        }
        // Watchers' news stops with the process; the node id is free for the next start.
        drop(self.relay);
        drop(self.node);
        drop(self.optimizer);
        let _ = admin_stop.send(());
        // Idle keep-alive connections (a scraper's) close at once; a stuck one is cut.
        let _ = tokio::time::timeout(Duration::from_secs(2), admin_tasks.join_next()).await;
        admin_tasks.abort_all();
        result
    }
}

/// The TLS configuration of the gRPC listener: server identity, client CAs and, when CRL
/// sources are configured, the CRLs (files must load at start; URLs that cannot be fetched yet
/// are logged and retried by the reloader, and `without_crl` decides meanwhile).
async fn build_tls(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<TlsState>, Option<Arc<CrlStore>>), StartError> {
    let tls_err = |what: &str, e: String| StartError::Tls(format!("{what}: {e}"));
    let identity = crate::tls::load_server_identity(
        read("TLS certificate", &config.tls.cert)?.as_bytes(),
        read("TLS key", &config.tls.key)?.as_bytes(),
    )
    .map_err(|e| tls_err("server certificate and key", e))?;
    let cas = crate::crl::read_pem_certificates(&config.tls.client_ca)
        .map_err(|e| tls_err("client CA bundle", e))?;
    let roots = crate::tls::load_client_roots(&cas).map_err(|e| tls_err("client CA bundle", e))?;
    let revocation = &config.tls.revocation;
    let crls = if revocation.enabled() {
        let store = Arc::new(CrlStore::new(revocation.clone(), &cas, metrics.clone()));
        if let (_, Some(e)) = store.refresh_files(true) {
            return Err(tls_err("CRL file", e.to_string()));
        }
        store.refresh_urls(true).await;
        Some(store)
    } else {
        tracing::warn!(
            "no CRLs configured ([tls.revocation]): client certificates are not checked for revocation"
        );
        None
    };
    let snapshot = crls.as_ref().map(|c| c.snapshot()).unwrap_or_default();
    let state = TlsState::new(identity, roots, snapshot, crls.clone(), metrics.clone())
        .map_err(|e| tls_err("configuration", e))?;
    Ok((Arc::new(state), crls))
}

/// The RPC layer's outcome hook: each finished RPC counted and timed.
fn rpc_metrics(metrics: &Arc<Metrics>) -> rpc::RpcHook {
    let metrics = metrics.clone();
    Arc::new(move |o: &rpc::RpcOutcome| {
        metrics.rpc_finished(o.service, o.method, o.code, o.elapsed);
    })
}

/// An embedded descriptor set that does not decode: a build fault, reported like an unreadable file.
fn reflection_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StartError {
    StartError::Read {
        what: "reflection descriptors",
        path: "embedded".into(),
        source: std::io::Error::other(e),
    }
}

fn serving(ok: bool) -> ServingStatus {
    if ok {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// The overall gRPC health entry and the API services' entries: they follow readiness.
const SERVICES: [&str; 5] = [
    "",
    <DeregistrationServiceServer<Api> as tonic::server::NamedService>::NAME,
    <HealthCareOfficeServiceServer<Api> as tonic::server::NamedService>::NAME,
    <RevocationServiceServer<Api> as tonic::server::NamedService>::NAME,
    <OperationsServiceServer<Api> as tonic::server::NamedService>::NAME,
];

/// Where the prober's verdicts go.
#[derive(Debug)]
struct Verdicts {
    health: tonic_health::server::HealthReporter,
    readiness: Readiness,
    metrics: Arc<Metrics>,
}

/// Readiness follows the database alone: the gateway can take and durably store reports while
/// a registry is down (cases wait for it). So `/readyz`, gRPC health `""` and the API services'
/// entries follow the database; every part also has its own entry (`etjanstekort.database`,
/// `etjanstekort.connector.<name>`), and each connector its `etk_connector_up` gauge. A part
/// changing state is logged once.
async fn probe_health(
    store: Arc<dyn CaseStore>,
    connectors: Connectors,
    to: Verdicts,
    every: Duration,
) {
    let mut last = None;
    let mut last_parts: HashMap<String, ServingStatus> = HashMap::new();
    loop {
        // Bounded: a database that accepts connections but stalls must read as down, not
        // leave the last verdict standing.
        let database = match tokio::time::timeout(every, store.ping()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {every:?}")),
        };
        let database_ok = database.is_ok();
        to.readiness.set_database(database_ok);
        to.metrics.set_database_up(database_ok);
        let mut parts = vec![("etjanstekort.database".to_owned(), database)];
        for (name, result) in connectors.probe_each().await {
            to.metrics.set_connector_up(name, result.is_ok());
            parts.push((
                format!("etjanstekort.connector.{name}"),
                result.map_err(|e| e.to_string()),
            ));
        }
        for (name, result) in &parts {
            let status = serving(result.is_ok());
            if last_parts.get(name) == Some(&status) {
                continue;
            }
            match result {
                Err(e) => {
                    tracing::warn!(part = %name, error = %e, "unreachable: health entry NOT_SERVING")
                }
                // The first verdict of a healthy part is not news.
                Ok(()) if last_parts.contains_key(name) => {
                    tracing::info!(part = %name, "reachable again: health entry SERVING")
                }
                Ok(()) => {}
            }
            to.health.set_service_status(name, status).await;
            last_parts.insert(name.clone(), status);
        }
        let status = serving(database_ok);
        if last != Some(status) {
            if database_ok {
                tracing::info!("ready: the database is reachable; health is SERVING");
            } else {
                tracing::warn!("not ready: the database is unreachable; health is NOT_SERVING");
            }
            for s in SERVICES {
                to.health.set_service_status(s, status).await;
            }
            last = Some(status);
        }
        tokio::time::sleep(every).await;
    }
}
