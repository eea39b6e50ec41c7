#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use etjanstekort_gateway::config::Layers;
use etjanstekort_gateway::devcerts;
use etjanstekort_gateway::privacy::PrivacySettings;
use etjanstekort_gateway::startup::{App, load_vault, open_store};
use etjanstekort_gateway::storage::DatabaseSettings;
use etjanstekort_gateway::telemetry::{Telemetry, TelemetrySettings};

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
}

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
        Ok(()) => ExitCode::SUCCESS,
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

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve {
            dev,
            data_dir,
            listen,
            config,
        } => {
            let mut layers = Layers::new(config.as_deref())?;
            let telemetry = start_telemetry(&layers)?;
            if dev {
                layers = apply_dev(layers, &data_dir)?;
            }
            if let Some(addr) = listen {
                layers = layers.set("server.listen", addr);
            }
            let served = async {
                let app = App::build(layers.config()?).await?;
                announce(
                    app.local_addr(),
                    app.admin_addr(),
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
            Ok(())
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
            // Only what migrating needs: no TLS, principals or connectors.
            let database: DatabaseSettings = layers.section("database")?;
            let privacy: PrivacySettings = layers.section("privacy")?;
            let migrated = async {
                open_store(&database, std::sync::Arc::new(load_vault(&privacy)?)).await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            }
            .await;
            telemetry.shutdown().await;
            migrated?;
            tracing::info!("migrations applied");
            Ok(())
        }
    }
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
fn announce(addr: SocketAddr, admin: Option<SocketAddr>, dev_dir: Option<&Path>) {
    println!("etjanstekort-gateway listening on {addr}");
    if let Some(a) = admin {
        println!("admin listener on http://{a} (/metrics, /livez, /readyz)");
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
