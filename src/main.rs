#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use etjanstekort_gateway::audit_record::AuditRecord;
use etjanstekort_gateway::config::Layers;
use etjanstekort_gateway::devcerts;
use etjanstekort_gateway::domain::CaseId;
use etjanstekort_gateway::privacy::PrivacySettings;
use etjanstekort_gateway::privacy::Vault;
use etjanstekort_gateway::retention::RetentionSettings;
use etjanstekort_gateway::startup::{App, load_vault, migrate_database};
use etjanstekort_gateway::storage::{
    CaseStore, ChainKeys, ChainReport, DatabaseSettings, SeaStore,
};
use etjanstekort_gateway::telemetry::{Telemetry, TelemetrySettings};
use etjanstekort_gateway::verifier::Walk;

// Under load glibc's malloc and free took a quarter of the gateway's CPU; on mimalloc a create
// costs 17–32 % less (docs/benchmarks.md, "mimalloc, and what bounds SQLite now").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "etjanstekort-gateway",
    version,
    about = "Deregistration gateway for cut eTjänstekort"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve {
        /// Embedded development mode: SQLite, generated dev certificates and principals.
        #[arg(long)]
        dev: bool,
        /// Dev mode's data directory.
        #[arg(long, default_value = "./dev-data")]
        data_dir: PathBuf,
        /// Address to listen on (overrides server.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Configuration file laid over the embedded defaults (also ETK_CONFIG).
        #[arg(long, env = "ETK_CONFIG")]
        config: Option<PathBuf>,
        /// Do not migrate (overrides database.migrate): refuse to start unless the schema is
        /// current. For deployments that migrate in a separate job.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[arg(long)]
        dev: bool,
        #[arg(long, default_value = "./dev-data")]
        data_dir: PathBuf,
        #[arg(long, env = "ETK_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check the configuration as `serve` would read it (defaults, the file, then `ETK_*`
    /// variables) and exit: 0 when it is complete and valid, 1 naming every problem. Reads no
    /// certificate, key or principals file and connects to nothing.
    CheckConfig {
        #[arg(long, env = "ETK_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The audit trail, read from the database directly (no running gateway needed).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Retention of ended cases (docs/privacy.md).
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Master keys: rotation and re-encryption (docs/privacy.md).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

/// Which deployment a maintenance command works on.
#[derive(Debug, Args)]
struct Target {
    /// The dev-mode deployment in `--data-dir`.
    #[arg(long)]
    dev: bool,
    #[arg(long, default_value = "./dev-data")]
    data_dir: PathBuf,
    #[arg(long, env = "ETK_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum RetentionCommand {
    /// Run one retention pass now: shred the personal data of cases ended longer ago than
    /// `retention.personal_data`, purge records older than `retention.record`, delete
    /// finished outbox rows older than `retention.outbox`.
    Purge {
        /// Print what would go, change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print the configured master keys' ids (the current one first); no key material.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Move every case to the current master key, in batches (resumable; a progress bar on a
    /// terminal).
    Reencrypt {
        /// Cases per transaction.
        #[arg(long, default_value_t = 200)]
        batch: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Write the pseudonym key in use to a new file (mode 0600), to pin it with
    /// `privacy.pseudonym_key_file` before master keys rotate.
    ExportPseudonymKey {
        /// The file to create (refused if it exists).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Write one master key's audit chain key to a new file (mode 0600), so that the audit
    /// trail chained under it still verifies (`privacy.audit_chain_key_files`) after the master
    /// key is destroyed. The chain key decrypts nothing.
    ExportAuditKey {
        /// The id of the master key (`keys list`).
        #[arg(long)]
        key_id: String,
        /// The file to create (refused if it exists).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify every case's keyed audit chain (or one case's); read-only. Prints each broken case
    /// with its first broken link; exit status 0 when all verify, 3 when a chain is broken,
    /// 1 when the check could not run.
    Verify {
        #[arg(long)]
        dev: bool,
        #[arg(long, default_value = "./dev-data")]
        data_dir: PathBuf,
        #[arg(long, env = "ETK_CONFIG")]
        config: Option<PathBuf>,
        /// Only this case.
        #[arg(long = "case")]
        case_id: Option<String>,
    },
    /// Verify an exported audit record (ExportAuditRecord's JSON) against its chain head, with
    /// the gateway's key. Exit status as for `verify`.
    VerifyExport {
        /// The exported JSON file.
        file: PathBuf,
        #[arg(long)]
        dev: bool,
        #[arg(long, default_value = "./dev-data")]
        data_dir: PathBuf,
        #[arg(long, env = "ETK_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// `audit verify`'s exit status when a chain is broken (1 is kept for "could not run").
const EXIT_BROKEN: u8 = 3;

fn main() -> ExitCode {
    // One process-wide TLS crypto provider (ring), chosen before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => fail(&*e),
    }
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    tracing::error!(error = %e, "etjanstekort-gateway stopped");
    let mut msg = format!("error: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("{msg}");
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve {
            dev,
            data_dir,
            listen,
            config,
            no_migrate,
        } => {
            let mut layers = Layers::new(config.as_deref())?;
            let telemetry = start_telemetry(&layers)?;
            if dev {
                layers = apply_dev(layers, &data_dir)?;
            }
            if let Some(addr) = listen {
                layers = layers.set("server.listen", addr);
            }
            if no_migrate {
                layers = layers.set("database.migrate", false);
            }
            let served = async {
                let app = App::build(layers.config()?).await?;
                announce(
                    app.local_addr(),
                    app.admin_addr(),
                    app.console_enabled(),
                    dev.then_some(data_dir.as_path()),
                );
                app.run(shutdown_signal()).await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            }
            .await;
            // After the drain (and on failure too): the spans still buffered are sent.
            telemetry.shutdown().await;
            served?;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate {
            dev,
            data_dir,
            config,
        } => {
            let mut layers = Layers::new(config.as_deref())?;
            let telemetry = start_telemetry(&layers)?;
            if dev {
                layers = apply_dev(layers, &data_dir)?;
            }
            // Only what migrating needs: no TLS, principals or connectors. `migrate` always
            // migrates, whatever `database.migrate` says about `serve`.
            let layers = layers.set("database.migrate", true);
            let database: DatabaseSettings = layers.section("database")?;
            let privacy: PrivacySettings = layers.section("privacy")?;
            let migrated = async {
                migrate_database(&database, std::sync::Arc::new(load_vault(&privacy)?)).await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            }
            .await;
            telemetry.shutdown().await;
            migrated?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            // No telemetry: nothing is logged or exported, the verdict goes to stdout/stderr.
            Layers::new(config.as_deref())?.config()?;
            config_ok(config.as_deref());
            Ok(ExitCode::SUCCESS)
        }
        command @ (Command::Retention { .. } | Command::Keys { .. }) => {
            maintenance(command).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    dev,
                    data_dir,
                    config,
                    case_id,
                },
        } => {
            let (database, privacy) = audit_sections(dev, &data_dir, config.as_deref())?;
            audit_verify(&database, &privacy, case_id.as_deref()).await
        }
        Command::Audit {
            command:
                AuditCommand::VerifyExport {
                    file,
                    dev,
                    data_dir,
                    config,
                },
        } => {
            let vault =
                load_vault(&audit_layers(dev, &data_dir, config.as_deref())?.section("privacy")?)?;
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let record = AuditRecord::from_json(&text)?;
            let report = record.verify(&ChainKeys::new(&vault))?;
            Ok(print_report(&record.case.id, &report))
        }
    }
}

/// The two sections the audit commands need (no TLS, principals or connectors); dev mode
/// points them at the dev data directory.
fn audit_sections(
    dev: bool,
    data_dir: &Path,
    config: Option<&Path>,
) -> Result<(DatabaseSettings, PrivacySettings), Box<dyn std::error::Error>> {
    let layers = audit_layers(dev, data_dir, config)?;
    Ok((layers.section("database")?, layers.section("privacy")?))
}

fn audit_layers(
    dev: bool,
    data_dir: &Path,
    config: Option<&Path>,
) -> Result<Layers, Box<dyn std::error::Error>> {
    let layers = Layers::new(config)?;
    Ok(if dev {
        apply_dev(layers, data_dir)?
    } else {
        layers
    })
}

/// Verifies the chains in the database, read-only: no migration, no anchoring (a database
/// whose schema is behind this build is refused).
#[allow(clippy::print_stdout)] // the command's output
async fn audit_verify(
    database: &DatabaseSettings,
    privacy: &PrivacySettings,
    case_id: Option<&str>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use secrecy::ExposeSecret;
    let vault = std::sync::Arc::new(load_vault(privacy)?);
    let store = SeaStore::connect(
        database.url.expose_secret(),
        database.max_connections,
        database.acquire_timeout,
        vault,
    )
    .await?;
    store.ping().await.map_err(|e| {
        format!("the database is unreachable or not migrated to this build (run `migrate`): {e}")
    })?;
    let store: std::sync::Arc<dyn CaseStore> = std::sync::Arc::new(store);
    let mut walk = match case_id {
        Some(raw) => Walk::one(
            store,
            CaseId::parse(raw).ok_or_else(|| format!("--case {raw:?} is not a case id"))?,
        ),
        None => Walk::all(store).await?,
    };
    let mut broken = 0u64;
    while let Some(next) = walk.next().await {
        let (id, report) = next?;
        if print_report(&id.to_string(), &report) != ExitCode::SUCCESS {
            broken += 1;
        }
    }
    let p = walk.progress();
    println!(
        "{} case(s) verified, {} event(s) ({} legacy), {broken} broken",
        p.checked, p.events, p.legacy
    );
    Ok(if broken == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BROKEN)
    })
}

/// Prints a broken chain as `BROKEN <case id> event <n> <problem>: <detail>`.
#[allow(clippy::print_stdout)] // the command's output
fn print_report(case_id: &str, report: &ChainReport) -> ExitCode {
    match &report.broken {
        Some(b) => {
            println!(
                "BROKEN {case_id} event {} {}: {}",
                b.sequence,
                b.problem.as_str(),
                b.detail
            );
            ExitCode::from(EXIT_BROKEN)
        }
        None => ExitCode::SUCCESS,
    }
}

/// The maintenance commands: each logs as `[telemetry]` says, and flushes before it returns.
async fn maintenance(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    let target = match &command {
        Command::Retention {
            command: RetentionCommand::Purge { target, .. },
        }
        | Command::Keys {
            command:
                KeysCommand::List { target }
                | KeysCommand::Reencrypt { target, .. }
                | KeysCommand::ExportPseudonymKey { target, .. }
                | KeysCommand::ExportAuditKey { target, .. },
        } => target,
        Command::Serve { .. }
        | Command::Migrate { .. }
        | Command::CheckConfig { .. }
        | Command::Audit { .. } => {
            return Ok(());
        }
    };
    let layers = Layers::new(target.config.as_deref())?;
    let telemetry = start_telemetry(&layers)?;
    let layers = if target.dev {
        apply_dev(layers, &target.data_dir)?
    } else {
        layers
    };
    let done = async {
        match command {
            Command::Retention {
                command: RetentionCommand::Purge { dry_run, .. },
            } => {
                let retention: RetentionSettings = layers.section("retention")?;
                retention
                    .validate()
                    .map_err(|e| format!("retention: {e}"))?;
                let store = maintenance_store(&layers).await?;
                retention_purge(&store, &retention, dry_run).await
            }
            Command::Keys {
                command: KeysCommand::List { .. },
            } => {
                let vault = load_vault(&layers.section("privacy")?)?;
                print_lines(&vault.key_ids());
                Ok(())
            }
            Command::Keys {
                command: KeysCommand::Reencrypt { batch, .. },
            } => {
                let store = maintenance_store(&layers).await?;
                keys_reencrypt(&store, batch).await
            }
            Command::Keys {
                command: KeysCommand::ExportPseudonymKey { out, .. },
            } => {
                let vault = load_vault(&layers.section("privacy")?)?;
                export_pseudonym_key(&vault, &out)
            }
            Command::Keys {
                command: KeysCommand::ExportAuditKey { key_id, out, .. },
            } => {
                let vault = load_vault(&layers.section("privacy")?)?;
                export_audit_key(&vault, &key_id, &out)
            }
            Command::Serve { .. }
            | Command::Migrate { .. }
            | Command::CheckConfig { .. }
            | Command::Audit { .. } => Ok(()),
        }
    }
    .await;
    telemetry.shutdown().await;
    done
}

/// The store of a maintenance command: connected, not migrated (that is `migrate`'s job), and
/// refused unless its schema is this build's.
async fn maintenance_store(layers: &Layers) -> Result<SeaStore, Box<dyn std::error::Error>> {
    use secrecy::ExposeSecret;
    let database: DatabaseSettings = layers.section("database")?;
    let vault = load_vault(&layers.section("privacy")?)?;
    let store = SeaStore::connect(
        database.url.expose_secret(),
        database.max_connections,
        database.acquire_timeout,
        std::sync::Arc::new(vault),
    )
    .await?;
    store.ping().await?;
    Ok(store)
}

#[allow(clippy::print_stdout)]
fn print_lines(lines: &[String]) {
    for l in lines {
        println!("{l}");
    }
}

/// The most cases a dry run lists by id.
const DRY_RUN_LIMIT: u32 = 10_000;

#[allow(clippy::print_stdout)]
async fn retention_purge(
    store: &SeaStore,
    settings: &RetentionSettings,
    dry_run: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let clock = etjanstekort_gateway::clock::SystemClock;
    if dry_run {
        let due =
            etjanstekort_gateway::retention::plan(store, &clock, settings, DRY_RUN_LIMIT).await?;
        println!(
            "would shred the personal data of {} ended case(s):",
            due.shred.len()
        );
        for id in &due.shred {
            println!("  {id}");
        }
        println!("would purge the record of {} case(s):", due.purge.len());
        for id in &due.purge {
            println!("  {id}");
        }
        println!("would delete {} finished outbox row(s)", due.outbox);
        if due.shred.len() as u64 == u64::from(DRY_RUN_LIMIT)
            || due.purge.len() as u64 == u64::from(DRY_RUN_LIMIT)
        {
            println!("(lists cut at {DRY_RUN_LIMIT} cases)");
        }
        return Ok(());
    }
    let metrics = etjanstekort_gateway::metrics::Metrics::new();
    let done = etjanstekort_gateway::retention::run_pass(store, &clock, settings, &metrics).await?;
    println!(
        "shredded {} case(s), purged {} record(s), deleted {} outbox row(s)",
        done.shredded, done.purged, done.outbox
    );
    Ok(())
}

#[allow(clippy::print_stdout)]
async fn keys_reencrypt(store: &SeaStore, batch: u32) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::IsTerminal;
    // Drawn on stderr, and only on a terminal: piped output and logs stay clean.
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
    } else {
        indicatif::ProgressBar::hidden()
    };
    let report = etjanstekort_gateway::keys::reencrypt(store, batch, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await;
    bar.finish_and_clear();
    let report = report?;
    println!(
        "re-encrypted {} case(s) under key {}",
        report.moved,
        store.current_key_id()
    );
    if report.failed > 0 {
        return Err(format!(
            "{} case(s) could not be read and were left as they are (see the log)",
            report.failed
        )
        .into());
    }
    Ok(())
}

/// Writes key material to a file that must not exist yet, readable by its owner only.
fn write_new_secret(
    out: &Path,
    secret: &secrecy::SecretString,
) -> Result<(), Box<dyn std::error::Error>> {
    use secrecy::ExposeSecret;
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(out)?;
    file.write_all(secret.expose_secret().as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[allow(clippy::print_stdout)]
fn export_audit_key(
    vault: &Vault,
    key_id: &str,
    out: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    write_new_secret(out, &vault.export_audit_chain_key(key_id)?)?;
    println!(
        "audit chain key of {} written to {}; add it to privacy.audit_chain_key_files before \
         removing that master key",
        key_id.trim().to_lowercase(),
        out.display()
    );
    Ok(())
}

#[allow(clippy::print_stdout)]
fn export_pseudonym_key(vault: &Vault, out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    write_new_secret(out, &vault.pseudonym_key_base64())?;
    println!(
        "pseudonym key written to {}; set privacy.pseudonym_key_file to it",
        out.display()
    );
    Ok(())
}

/// Logs and traces as `[telemetry]` and the `OTEL_*` variables say; first, so that everything
/// after it is logged. (`serve --dev` changes nothing in `[telemetry]`.)
fn start_telemetry(layers: &Layers) -> Result<Telemetry, Box<dyn std::error::Error>> {
    let settings: TelemetrySettings = layers.section("telemetry")?;
    Ok(Telemetry::init(&settings)?)
}

/// Points the configuration at the dev environment where it sets nothing itself, creating the
/// environment on first start.
fn apply_dev(layers: Layers, data_dir: &Path) -> Result<Layers, Box<dyn std::error::Error>> {
    let (paths, created) = devcerts::ensure(data_dir)?;
    if created {
        tracing::info!(dir = %data_dir.display(), "created dev certificates, principals and master key");
    }
    Ok(layers
        .fill("tls.cert", &paths.server_cert)
        .fill("tls.key", &paths.server_key)
        .fill("tls.client_ca", &paths.ca)
        // The dev CA's (empty) CRL: client certificates are checked for revocation in dev
        // mode as in production. Ignored where `tls.revocation` names files itself.
        .fill("tls.revocation.files", [&paths.crl])
        .fill("auth.principals_file", &paths.principals)
        .fill("privacy.master_key_file", &paths.master_key)
        .fill(
            "database.url",
            format!("sqlite://{}?mode=rwc", paths.database.display()),
        )
        // Metrics and probes on loopback, where the developer's own tools can reach them.
        .fill("admin.listen", DEV_ADMIN))
}

/// `serve --dev`'s admin listener, unless configured otherwise.
const DEV_ADMIN: &str = "127.0.0.1:9464";

#[allow(clippy::print_stdout)]
fn announce(addr: SocketAddr, admin: Option<SocketAddr>, console: bool, dev_dir: Option<&Path>) {
    println!("etjanstekort-gateway listening on {addr}");
    if let Some(a) = admin {
        println!("admin listener on http://{a} (/metrics, /livez, /readyz)");
    }
    if console {
        println!("operator console on https://{addr}/console (operator certificates only)");
    }
    if let Some(dir) = dev_dir {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        let d = dir.display();
        println!("dev mode: certificates, principals and identities are in {d}");
        println!("  identities: {d}/dev-identities.json");
        println!("  try (with grpcurl installed):");
        println!(
            "    grpcurl -cacert {d}/certs/ca.pem -cert {d}/certs/provider-a.pem -key {d}/certs/provider-a.key \\\n      -import-path proto -proto etjanstekort/v1/deregistration_service.proto \\\n      {addr} etjanstekort.v1.DeregistrationService/ListDeregistrations"
        );
        // etkctl's defaults are this data directory's operator identity and 127.0.0.1:50051.
        println!(
            "  operators: etkctl --dev-data-dir {d} --address https://{addr} cases list --needs-attention"
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[allow(clippy::print_stdout)]
fn config_ok(file: Option<&Path>) {
    match file {
        Some(f) => println!(
            "configuration valid: defaults, {}, environment",
            f.display()
        ),
        None => println!("configuration valid: defaults, environment"),
    }
}
