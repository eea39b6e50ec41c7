//! `loadgen`: the gateway's load generator (issue 12). Drives `CreateDeregistration`,
//! `GetDeregistration` and `ListDeregistrations` over mTLS at several concurrency levels and, in
//! the same run and with the same client set-up, a bare tonic echo server with the same TLS
//! configuration (the ceiling); prints req/s, p50/p90/p99, errors by gRPC status code, the
//! gateway's CPU time per request and the ratio gateway/echo; then an end-to-end completions
//! figure (created → `STATE_COMPLETED`, simulated registries at zero latency).
//!
//! By default it starts the gateway itself (`serve --dev` in a temporary data directory, SQLite
//! or `--database-url`); `--addr` measures a running one instead. See docs/benchmarks.md.

#![forbid(unsafe_code)]
// The command's output is its table (or JSON) on stdout.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::loadgen::cpu::cpu_micros;
use etjanstekort_gateway::loadgen::reports::ReportGen;
use etjanstekort_gateway::loadgen::stats::{Percentiles, micros, percentiles};
use pb::deregistration_service_client::DeregistrationServiceClient;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// What the echo child prints once it listens.
const ECHO_ANNOUNCE: &str = "loadgen echo listening on ";
/// What the gateway prints once it listens.
const GATEWAY_ANNOUNCE: &str = "etjanstekort-gateway listening on ";

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Load generator: the gateway over mTLS beside a bare tonic echo server with the same TLS set-up"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// The bare echo server (grpc.health.v1.Health/Check over mTLS); loadgen runs it as its own
    /// process so that its CPU time can be read like the gateway's.
    #[command(hide = true)]
    EchoServer {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        client_ca: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    Create,
    Get,
    List,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Get => "get",
            Op::List => "list",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Requests in flight, one run per level (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64])]
    concurrency: Vec<usize>,
    /// Measured time of each run (e.g. 5s, 300ms).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time before each run's measurement.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// HTTP/2 connections each target's requests are spread over (the same for both).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The gateway calls measured after each echo run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Op::Create, Op::Get, Op::List])]
    ops: Vec<Op>,
    /// How many times the whole sequence (every level: echo, then the gateway calls) runs.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Cases created before the measurement starts (cost with stored data).
    #[arg(long, default_value_t = 0)]
    stored: u64,
    /// Cases created for the end-to-end completions figure after the runs (0: skip).
    #[arg(long, default_value_t = 1000)]
    completions: u64,
    /// Longest wait for every case of the completions figure to complete.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    completions_timeout: Duration,
    /// After each gateway run, wait (at most this long) until the gateway's CPU use falls
    /// below 10 % of a core, so that the saga work a run left behind does not fall into the
    /// next one; 0s: do not wait.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    settle_timeout: Duration,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,

    /// The gateway binary started in dev mode (default: `etjanstekort-gateway` beside loadgen).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Dev data directory of the started gateway (default: a new temporary one, removed at
    /// the end).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database of the started gateway (default: SQLite in the data directory), e.g.
    /// postgres://postgres@127.0.0.1:5432/loadgen (an empty database; migrated at start).
    #[arg(long)]
    database_url: Option<String>,

    /// Measure a running gateway at this address (host:port) instead of starting one.
    #[arg(long)]
    addr: Option<String>,
    /// With --addr: the gateway's process id, for its CPU time per request.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// With --addr: a directory laid out as a dev data directory's `certs/` (ca.pem,
    /// server.pem, server.key, <identity>.pem, <identity>.key).
    #[arg(long)]
    certs_dir: Option<PathBuf>,
    /// CA that signed the gateway's certificate (default: <certs>/ca.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate and key (default: <certs>/<identity>.pem and .key).
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    /// The echo server's certificate, key and client CA (defaults: <certs>/server.pem,
    /// <certs>/server.key, the --ca).
    #[arg(long)]
    server_cert: Option<PathBuf>,
    #[arg(long)]
    server_key: Option<PathBuf>,
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Dev identity (file name in the certs directory) of the care provider that calls.
    #[arg(long, default_value = "provider-a")]
    identity: String,
    /// Care unit of the reports (default: the dev provider-a's unit).
    #[arg(long)]
    care_unit: Option<String>,
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Sub::EchoServer {
            cert,
            key,
            client_ca,
            listen,
        }) => match runtime.block_on(echo_main(&cert, &key, &client_ca, listen)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadgen echo-server: {e}");
                ExitCode::from(2)
            }
        },
        None => match runtime.block_on(run(cli.run)) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("loadgen: setup failed: {e}");
                ExitCode::from(2)
            }
        },
    }
}

async fn echo_main(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    listen: std::net::SocketAddr,
) -> Result<(), Box<dyn std::error::Error>> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    etjanstekort_gateway::loadgen::echo::serve(
        listen,
        &read(cert)?,
        &read(key)?,
        &read(client_ca)?,
        |addr| println!("{ECHO_ANNOUNCE}{addr}"),
    )
    .await
}

/// A child process (gateway or echo): SIGTERM, then SIGKILL after 15 s, on drop.
struct Proc {
    child: Child,
    addr: String,
}

impl Proc {
    /// Spawns `cmd` (stdout piped) and waits until it prints a line starting with `announce`;
    /// the rest of that line is its address. Its stdout is read (and dropped) afterwards.
    fn spawn(mut cmd: Command, announce: &'static str, wait: Duration) -> Result<Self, String> {
        let what = format!("{:?}", cmd.get_program());
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { return };
                if let Some(a) = line.trim().strip_prefix(announce) {
                    let _ = tx.send(a.to_owned());
                    break;
                }
            }
            // Keep reading so that the child never blocks on a full pipe.
            for _ in lines {}
        });
        let mut proc = Self {
            child,
            addr: String::new(),
        };
        match rx.recv_timeout(wait) {
            Ok(addr) => {
                proc.addr = addr;
                Ok(proc)
            }
            Err(_) => {
                let status = proc.child.try_wait().ok().flatten();
                Err(match status {
                    Some(s) => format!("{what} exited ({s}) before it listened"),
                    None => format!("{what} did not listen within {wait:?}"),
                })
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The started gateway's configuration, laid over the dev defaults: the simulated registries
/// at zero latency, TjänsteID-service confirming at the first poll, the rate limits out of
/// the way (the load generator is one principal), the admin listener on a free port.
const GATEWAY_CONFIG: &str = r#"# Written by loadgen.
[admin]
listen = "127.0.0.1:0"

[tjansteid]
kind = "simulated"
confirm_after = "0s"

[kiv]
kind = "simulated"
auto_employ = true

[engine.timers]
# The simulated desk confirms at the first poll; the default first poll after 1 s would make
# the completions figure a measure of that wait, not of the gateway's work.
poll_interval = "10ms"

[simulated]
latency = "0s"
failure_rate = 0.0

[limits]
connections_per_principal = 1024

[limits.care_provider]
requests_per_second = 1000000000.0
burst = 1000000000

[limits.certificate]
requests_per_second = 1000000000.0
burst = 1000000000
"#;

/// The files the clients and the echo server use.
#[derive(Debug)]
struct Tls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_ca: PathBuf,
}

impl Tls {
    fn resolve(args: &RunArgs, certs: Option<&Path>) -> Result<Self, String> {
        let pick = |given: &Option<PathBuf>, file: &str| -> Result<PathBuf, String> {
            given
                .clone()
                .or_else(|| certs.map(|c| c.join(file)))
                .ok_or_else(|| format!("no {file}: give --certs-dir or the file's own flag"))
        };
        let ca = pick(&args.ca, "ca.pem")?;
        Ok(Self {
            cert: pick(&args.cert, &format!("{}.pem", args.identity))?,
            key: pick(&args.key, &format!("{}.key", args.identity))?,
            server_cert: pick(&args.server_cert, "server.pem")?,
            server_key: pick(&args.server_key, "server.key")?,
            client_ca: args.client_ca.clone().unwrap_or_else(|| ca.clone()),
            ca,
        })
    }

    fn client(&self) -> Result<ClientTlsConfig, String> {
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)?))
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?))
            .domain_name("localhost"))
    }
}

fn read(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// `n` separate HTTP/2 connections to `addr`.
async fn connect(addr: &str, tls: &ClientTlsConfig, n: usize) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let ch = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| format!("address {addr}: {e}"))?
            .tls_config(tls.clone())
            .map_err(|e| format!("TLS set-up: {e}"))?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e} ({e:?})"))?;
        channels.push(ch);
    }
    Ok(channels)
}

/// Waits until `Health/Check("")` answers SERVING.
async fn wait_serving(channel: &Channel, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(r) if r.get_ref().status == 1 => return Ok(()),
            Ok(r) => last = format!("status {}", r.get_ref().status),
            Err(e) => last = format!("{:?}: {}", e.code(), e.message()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("not serving within {within:?} (last: {last})"))
}

/// One kind of request, sent by worker `worker`.
#[async_trait::async_trait]
trait Call: Send + Sync {
    async fn call(&self, worker: usize) -> Result<(), tonic::Status>;
}

struct EchoCall(Vec<HealthClient<Channel>>);

#[async_trait::async_trait]
impl Call for EchoCall {
    async fn call(&self, worker: usize) -> Result<(), tonic::Status> {
        let mut c = self.0[worker % self.0.len()].clone();
        c.check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
    }
}

type Gw = DeregistrationServiceClient<Channel>;

struct CreateCall {
    clients: Vec<Gw>,
    reports: Arc<ReportGen>,
    /// The ids of the cases created, in the order their answers came.
    ids: Arc<Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl Call for CreateCall {
    async fn call(&self, worker: usize) -> Result<(), tonic::Status> {
        let mut c = self.clients[worker % self.clients.len()].clone();
        let created = c
            .create_deregistration(self.reports.next_request())
            .await?
            .into_inner();
        if let (Some(d), Ok(mut ids)) = (created.deregistration, self.ids.lock()) {
            ids.push(d.id);
        }
        Ok(())
    }
}

struct GetCall {
    clients: Vec<Gw>,
    ids: Vec<String>,
    next: AtomicU64,
}

#[async_trait::async_trait]
impl Call for GetCall {
    async fn call(&self, worker: usize) -> Result<(), tonic::Status> {
        let mut c = self.clients[worker % self.clients.len()].clone();
        // Spread over every stored case, not only the newest.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = &self.ids[(n.wrapping_mul(2_654_435_761) % self.ids.len() as u64) as usize];
        c.get_deregistration(pb::GetDeregistrationRequest { id: id.clone() })
            .await
            .map(|_| ())
    }
}

struct ListCall {
    clients: Vec<Gw>,
    unit: String,
}

#[async_trait::async_trait]
impl Call for ListCall {
    async fn call(&self, worker: usize) -> Result<(), tonic::Status> {
        let mut c = self.clients[worker % self.clients.len()].clone();
        c.list_deregistrations(pb::ListDeregistrationsRequest {
            care_unit_hsa_id: self.unit.clone(),
            page_size: 20,
            ..Default::default()
        })
        .await
        .map(|_| ())
    }
}

/// What one timed run measured.
#[derive(Debug, Default)]
struct Measured {
    ok: u64,
    latencies: Vec<u32>,
    errors: BTreeMap<String, u64>,
    server_cpu_us: Option<u64>,
    client_cpu_us: Option<u64>,
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

fn cpu_delta(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(b?.saturating_sub(a?))
}

/// `conc` workers call as fast as answers come for `warmup` + `duration`; what started after
/// the warm-up is measured, and the server's CPU time over the measured window is read.
async fn drive(
    call: Arc<dyn Call>,
    conc: usize,
    warmup: Duration,
    duration: Duration,
    server_pid: Option<u32>,
) -> Measured {
    let from = Instant::now() + warmup;
    let end = from + duration;
    let mut set = JoinSet::new();
    for w in 0..conc.max(1) {
        let call = call.clone();
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let r = call.call(w).await;
                if t0 >= from {
                    match r {
                        Ok(()) => lat.push(micros(t0.elapsed())),
                        Err(s) => *errors.entry(code_name(s.code())).or_default() += 1,
                    }
                }
            }
            (lat, errors)
        });
    }
    tokio::time::sleep_until(from).await;
    let own = std::process::id();
    let (server0, client0) = (server_pid.and_then(cpu_micros), cpu_micros(own));
    let mut m = Measured::default();
    while let Some(done) = set.join_next().await {
        if let Ok((lat, errors)) = done {
            m.ok += lat.len() as u64;
            m.latencies.extend(lat);
            for (k, v) in errors {
                *m.errors.entry(k).or_default() += v;
            }
        }
    }
    m.server_cpu_us = cpu_delta(server0, server_pid.and_then(cpu_micros));
    m.client_cpu_us = cpu_delta(client0, cpu_micros(own));
    m
}

/// `conc` workers make `n` calls in all; returns the successes, the errors by code and the
/// time taken.
async fn drive_count(
    call: Arc<dyn Call>,
    conc: usize,
    n: u64,
) -> (u64, BTreeMap<String, u64>, Duration) {
    let start = Instant::now();
    let tickets = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for w in 0..conc.max(1) {
        let (call, tickets) = (call.clone(), tickets.clone());
        set.spawn(async move {
            let mut ok = 0u64;
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            while tickets.fetch_add(1, Ordering::Relaxed) < n {
                match call.call(w).await {
                    Ok(()) => ok += 1,
                    Err(s) => *errors.entry(code_name(s.code())).or_default() += 1,
                }
            }
            (ok, errors)
        });
    }
    let mut ok = 0;
    let mut errors = BTreeMap::new();
    while let Some(done) = set.join_next().await {
        if let Ok((o, e)) = done {
            ok += o;
            for (k, v) in e {
                *errors.entry(k).or_default() += v;
            }
        }
    }
    (ok, errors, start.elapsed())
}

/// Waits (at most `limit`) until process `pid` uses under 10 % of a core over 300 ms.
async fn settle(pid: Option<u32>, limit: Duration) -> Duration {
    let start = Instant::now();
    let Some(pid) = pid else {
        return Duration::ZERO;
    };
    while start.elapsed() < limit {
        let a = cpu_micros(pid);
        tokio::time::sleep(Duration::from_millis(300)).await;
        match cpu_delta(a, cpu_micros(pid)) {
            Some(d) if d > 30_000 => {}
            _ => break,
        }
    }
    start.elapsed()
}

/// One row of the result.
#[derive(Debug, serde::Serialize)]
struct Row {
    repetition: u32,
    target: &'static str,
    op: &'static str,
    concurrency: usize,
    requests: u64,
    seconds: f64,
    req_per_s: f64,
    #[serde(flatten)]
    latency: Percentiles,
    /// The server's CPU time in the measured window per successful request.
    server_cpu_us_per_req: Option<f64>,
    /// The same, counted on until the server was idle again (the saga work a create left).
    server_cpu_us_per_req_settled: Option<f64>,
    /// loadgen's own CPU time per request (client and TLS on the same machine).
    client_cpu_us_per_req: Option<f64>,
    /// req/s over the echo's req/s at the same concurrency in the same repetition.
    ratio_to_echo: Option<f64>,
    errors: BTreeMap<String, u64>,
}

#[derive(Debug, serde::Serialize)]
struct Prefill {
    cases: u64,
    created: u64,
    seconds: f64,
    /// How long the gateway took to become idle after the last create (the saga work; at most
    /// the larger of --settle-timeout and 300 s).
    settle_seconds: f64,
    errors: BTreeMap<String, u64>,
}

#[derive(Debug, serde::Serialize)]
struct Completions {
    cases: u64,
    created: u64,
    create_errors: BTreeMap<String, u64>,
    create_seconds: f64,
    completed: u64,
    /// Cases that ended otherwise (rejected, cancelled).
    ended_otherwise: u64,
    /// Cases still not ended at the timeout.
    not_completed: u64,
    /// From the first create to the last completion seen.
    seconds: f64,
    completions_per_s: f64,
}

#[derive(Debug, serde::Serialize)]
struct Setup {
    cpus: usize,
    /// `/proc/loadavg` at the start (other work on the machine skews every figure).
    load_average: String,
    gateway: String,
    database: &'static str,
    connections: usize,
    duration_s: f64,
    warmup_s: f64,
    concurrency: Vec<usize>,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    setup: Setup,
    stored: Option<Prefill>,
    runs: Vec<Row>,
    completions: Option<Completions>,
}

/// The printed table, row by row.
struct Table {
    on: bool,
}

impl Table {
    fn header(&self, setup: &Setup) {
        if !self.on {
            return;
        }
        println!(
            "loadgen: {} CPUs (load average {}), gateway {} ({}), {} connections per target, {:?} measured after {:?} warm-up",
            setup.cpus,
            setup.load_average,
            setup.gateway,
            setup.database,
            setup.connections,
            Duration::from_secs_f64(setup.duration_s),
            Duration::from_secs_f64(setup.warmup_s),
        );
        println!(
            "{:>3} {:<7} {:<6} {:>4} {:>8} {:>9} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>7}  errors",
            "rep",
            "target",
            "op",
            "conc",
            "requests",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "srv µs/req",
            "+settled",
            "cli µs/req",
            "ratio",
        );
    }

    fn row(&self, r: &Row) {
        if !self.on {
            return;
        }
        let opt = |v: Option<f64>, prec: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.prec$}"))
        };
        let errors = if r.errors.is_empty() {
            "0".to_owned()
        } else {
            r.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "{:>3} {:<7} {:<6} {:>4} {:>8} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>10} {:>10} {:>10} {:>7}  {errors}",
            r.repetition,
            r.target,
            r.op,
            r.concurrency,
            r.requests,
            r.req_per_s,
            r.latency.p50_ms,
            r.latency.p90_ms,
            r.latency.p99_ms,
            opt(r.server_cpu_us_per_req, 0),
            opt(r.server_cpu_us_per_req_settled, 0),
            opt(r.client_cpu_us_per_req, 0),
            opt(r.ratio_to_echo, 4),
        );
    }

    fn line(&self, s: &str) {
        if self.on {
            println!("{s}");
        }
    }
}

fn per_request(cpu: Option<u64>, n: u64) -> Option<f64> {
    (n > 0).then_some(cpu? as f64 / n as f64)
}

/// Everything the run needs and removes at its end.
struct Started {
    gateway: Option<Proc>,
    gateway_addr: String,
    gateway_pid: Option<u32>,
    tls: Tls,
    /// A temporary data directory to remove at the end.
    temp_dir: Option<PathBuf>,
}

impl Drop for Started {
    fn drop(&mut self) {
        // The gateway stops before its data directory goes.
        drop(self.gateway.take());
        if let Some(d) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn start_gateway(args: &RunArgs) -> Result<Started, String> {
    let bin = match &args.gateway_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find loadgen's own path: {e}"))?
            .with_file_name("etjanstekort-gateway"),
    };
    let (dir, temp_dir) = match &args.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let d =
                std::env::temp_dir().join(format!("etk-loadgen-{}", uuid::Uuid::new_v4().simple()));
            (d.clone(), Some(d))
        }
    };
    let mut started = Started {
        gateway: None,
        gateway_addr: String::new(),
        gateway_pid: None,
        tls: Tls::resolve(args, Some(&dir.join("certs")))?,
        temp_dir,
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("data directory {}: {e}", dir.display()))?;
    let config = dir.join("loadgen-gateway.toml");
    std::fs::write(&config, GATEWAY_CONFIG)
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let log = dir.join("gateway.log");
    let log_file =
        std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .stderr(Stdio::from(log_file));
    if let Some(url) = &args.database_url {
        // In the environment, not in a file: the URL may carry a password.
        cmd.env("ETK_DATABASE__URL", url);
    }
    let gateway = Proc::spawn(cmd, GATEWAY_ANNOUNCE, Duration::from_secs(120)).map_err(|e| {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: String = tail.lines().rev().take(5).collect::<Vec<_>>().join("\n");
        format!("{e} ({}); last log lines:\n{tail}", bin.display())
    })?;
    started.gateway_addr = gateway.addr.clone();
    started.gateway_pid = Some(gateway.pid());
    started.gateway = Some(gateway);
    Ok(started)
}

fn attach_gateway(args: &RunArgs, addr: &str) -> Result<Started, String> {
    Ok(Started {
        gateway: None,
        gateway_addr: addr.to_owned(),
        gateway_pid: args.gateway_pid,
        tls: Tls::resolve(args, args.certs_dir.as_deref())?,
        temp_dir: None,
    })
}

fn start_echo(tls: &Tls) -> Result<Proc, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find loadgen's path: {e}"))?;
    let mut cmd = Command::new(me);
    cmd.arg("echo-server")
        .arg("--cert")
        .arg(&tls.server_cert)
        .arg("--key")
        .arg(&tls.server_key)
        .arg("--client-ca")
        .arg(&tls.client_ca);
    Proc::spawn(cmd, ECHO_ANNOUNCE, Duration::from_secs(30))
}

/// The whole run; `Ok(false)` when the completions figure could not be completed.
async fn run(args: RunArgs) -> Result<bool, String> {
    if args.connections == 0 || args.concurrency.is_empty() {
        return Err("--connections and --concurrency must not be empty or 0".into());
    }
    let started = match &args.addr {
        Some(a) => attach_gateway(&args, a)?,
        None => start_gateway(&args)?,
    };
    let client_tls = started.tls.client()?;
    let echo = start_echo(&started.tls)?;

    let gw_channels = connect(&started.gateway_addr, &client_tls, args.connections).await?;
    wait_serving(&gw_channels[0], Duration::from_secs(60))
        .await
        .map_err(|e| format!("gateway at {}: {e}", started.gateway_addr))?;
    let echo_channels = connect(&echo.addr, &client_tls, args.connections).await?;
    wait_serving(&echo_channels[0], Duration::from_secs(10))
        .await
        .map_err(|e| format!("echo at {}: {e}", echo.addr))?;

    let unit = args
        .care_unit
        .clone()
        .unwrap_or_else(etjanstekort_gateway::devcerts::unit_a);
    let gw: Vec<Gw> = gw_channels
        .iter()
        .cloned()
        .map(DeregistrationServiceClient::new)
        .collect();
    let echo_clients: Vec<_> = echo_channels
        .iter()
        .cloned()
        .map(HealthClient::new)
        .collect();
    let reports = Arc::new(ReportGen::new(&unit));
    let ids = Arc::new(Mutex::new(Vec::new()));
    let create: Arc<dyn Call> = Arc::new(CreateCall {
        clients: gw.clone(),
        reports: reports.clone(),
        ids: ids.clone(),
    });
    let max_conc = args.concurrency.iter().copied().max().unwrap_or(1);
    let database = match (&args.addr, &args.database_url) {
        (Some(_), _) => "as configured",
        (None, Some(u)) if u.starts_with("postgres") => "PostgreSQL",
        (None, _) => "SQLite",
    };
    let setup = Setup {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        gateway: match (&args.addr, started.gateway_pid) {
            (Some(a), _) => format!("at {a}"),
            (None, pid) => format!(
                "started, serve --dev, pid {}",
                pid.map_or_else(String::new, |p| p.to_string())
            ),
        },
        database,
        connections: args.connections,
        duration_s: args.duration.as_secs_f64(),
        warmup_s: args.warmup.as_secs_f64(),
        concurrency: args.concurrency.clone(),
    };
    let table = Table {
        on: args.output == Output::Table,
    };
    table.header(&setup);
    let pid = started.gateway_pid;
    settle(pid, args.settle_timeout).await;

    let stored = if args.stored > 0 {
        let (created, errors, took) = drive_count(create.clone(), 64, args.stored).await;
        let settled = settle(pid, args.settle_timeout.max(Duration::from_secs(300))).await;
        let p = Prefill {
            cases: args.stored,
            created,
            seconds: took.as_secs_f64(),
            settle_seconds: settled.as_secs_f64(),
            errors,
        };
        table.line(&format!(
            "stored: {} cases created in {:.1} s before the runs ({:.0}/s), errors {:?}; the gateway was idle {:.0} s later",
            p.created,
            p.seconds,
            p.created as f64 / p.seconds.max(1e-9),
            p.errors,
            p.settle_seconds,
        ));
        Some(p)
    } else {
        None
    };

    let mut runs = Vec::new();
    for rep in 1..=args.repeat.max(1) {
        for &conc in &args.concurrency {
            let echo_call: Arc<dyn Call> = Arc::new(EchoCall(echo_clients.clone()));
            let m = drive(
                echo_call,
                conc,
                args.warmup,
                args.duration,
                Some(echo.pid()),
            )
            .await;
            let echo_row = row(rep, "echo", "check", conc, &args, m, None, None);
            table.row(&echo_row);
            let echo_rps = echo_row.req_per_s;
            runs.push(echo_row);
            for &op in &args.ops {
                let call: Arc<dyn Call> = match op {
                    Op::Create => create.clone(),
                    Op::Get => {
                        let known = ids.lock().map(|v| v.clone()).unwrap_or_default();
                        if known.is_empty() {
                            table.line("get: skipped (no case created yet: add create to --ops or use --stored)");
                            continue;
                        }
                        Arc::new(GetCall {
                            clients: gw.clone(),
                            ids: known,
                            next: AtomicU64::new(0),
                        })
                    }
                    Op::List => Arc::new(ListCall {
                        clients: gw.clone(),
                        unit: unit.clone(),
                    }),
                };
                let m = drive(call, conc, args.warmup, args.duration, pid).await;
                let before_settle = m.server_cpu_us;
                let cpu_at_end = pid.and_then(cpu_micros);
                settle(pid, args.settle_timeout).await;
                let settled = before_settle
                    .and_then(|b| Some(b + cpu_delta(cpu_at_end, pid.and_then(cpu_micros))?));
                let r = row(
                    rep,
                    "gateway",
                    op.name(),
                    conc,
                    &args,
                    m,
                    Some(echo_rps),
                    settled,
                );
                table.row(&r);
                runs.push(r);
            }
        }
    }

    let completions = if args.completions > 0 {
        let c = completions(
            &gw,
            &reports,
            args.completions,
            max_conc,
            args.completions_timeout,
        )
        .await;
        table.line(&format!(
            "completions: {} of {} cases created ({:.1} s, errors {:?}) reached STATE_COMPLETED in {:.2} s: {:.0} completions/s end to end{}",
            c.completed,
            c.cases,
            c.create_seconds,
            c.create_errors,
            c.seconds,
            c.completions_per_s,
            if c.not_completed + c.ended_otherwise > 0 {
                format!(
                    "; {} not completed within {:?}, {} ended otherwise",
                    c.not_completed, args.completions_timeout, c.ended_otherwise
                )
            } else {
                String::new()
            }
        ));
        Some(c)
    } else {
        None
    };
    let all_completed = completions
        .as_ref()
        .is_none_or(|c| c.completed == c.cases && c.created == c.cases);
    if args.output == Output::Json {
        let report = Report {
            setup,
            stored,
            runs,
            completions,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    }
    drop(echo);
    drop(started);
    Ok(all_completed)
}

#[allow(clippy::too_many_arguments)]
fn row(
    repetition: u32,
    target: &'static str,
    op: &'static str,
    concurrency: usize,
    args: &RunArgs,
    mut m: Measured,
    echo_rps: Option<f64>,
    settled_cpu: Option<u64>,
) -> Row {
    let seconds = args.duration.as_secs_f64();
    let req_per_s = m.ok as f64 / seconds.max(1e-9);
    Row {
        repetition,
        target,
        op,
        concurrency,
        requests: m.ok,
        seconds,
        req_per_s,
        latency: percentiles(&mut m.latencies),
        server_cpu_us_per_req: per_request(m.server_cpu_us, m.ok),
        server_cpu_us_per_req_settled: per_request(settled_cpu, m.ok),
        client_cpu_us_per_req: per_request(m.client_cpu_us, m.ok),
        ratio_to_echo: echo_rps.filter(|e| *e > 0.0).map(|e| req_per_s / e),
        errors: m.errors,
    }
}

/// Creates `n` cases at `conc` in flight, then follows them (GetDeregistration, a window of
/// the oldest unfinished at a time) until every one is `STATE_COMPLETED` or `timeout` passed.
async fn completions(
    gw: &[Gw],
    reports: &Arc<ReportGen>,
    n: u64,
    conc: usize,
    timeout: Duration,
) -> Completions {
    let start = Instant::now();
    let ids = Arc::new(Mutex::new(Vec::new()));
    let create: Arc<dyn Call> = Arc::new(CreateCall {
        clients: gw.to_vec(),
        reports: reports.clone(),
        ids: ids.clone(),
    });
    let (created, create_errors, create_took) = drive_count(create, conc, n).await;
    let mut pending: VecDeque<String> = ids.lock().map(|v| v.clone()).unwrap_or_default().into();
    let (mut completed, mut ended_otherwise) = (0u64, 0u64);
    let mut last = start;
    let deadline = start + timeout;
    let completed_state = pb::State::Completed as i32;
    let ended = [pb::State::Rejected as i32, pb::State::Cancelled as i32];
    while !pending.is_empty() && Instant::now() < deadline {
        let mut set = JoinSet::new();
        for i in 0..pending.len().min(32) {
            let Some(id) = pending.pop_front() else { break };
            let mut c = gw[i % gw.len()].clone();
            set.spawn(async move {
                let state = c
                    .get_deregistration(pb::GetDeregistrationRequest { id: id.clone() })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().deregistration)
                    .map(|d| d.state);
                (id, state)
            });
        }
        let mut done = HashSet::new();
        while let Some(Ok((id, state))) = set.join_next().await {
            match state {
                Some(s) if s == completed_state => {
                    completed += 1;
                    last = Instant::now();
                    done.insert(id);
                }
                Some(s) if ended.contains(&s) => {
                    ended_otherwise += 1;
                    done.insert(id);
                }
                _ => pending.push_back(id),
            }
        }
        if done.is_empty() {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let seconds = (last - start).as_secs_f64();
    Completions {
        cases: n,
        created,
        create_errors,
        create_seconds: create_took.as_secs_f64(),
        completed,
        ended_otherwise,
        not_completed: pending.len() as u64,
        seconds,
        completions_per_s: if seconds > 0.0 {
            completed as f64 / seconds
        } else {
            0.0
        },
    }
}
