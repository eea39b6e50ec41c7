//! Per-caller bounds, measured on the real binary (`serve --dev` as a child process, so its
//! memory is its own):
//!
//! - `watchers`: three rounds of 1,000 watch streams opened and then dropped by their client;
//!   the server's RSS and `etk_watch_streams_open` with the streams open and after the drop.
//! - `flood`: provider-b's GetDeregistration latency (p50/p99 of ETK_BENCH_SAMPLES calls,
//!   default 1000, 50 a second) alone, then
//!   while provider-a floods from 64 concurrent callers, with the dev rate limit and with the
//!   limit lifted.
//!
//! `cargo bench --bench limits [-- watchers|flood]`; `docs/benchmarks.md` records a run.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etjanstekort_gateway::api::pb;
use pb::deregistration_service_client::DeregistrationServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The gateway binary, killed on drop.
struct Gateway {
    child: Child,
    addr: String,
    admin: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_etjanstekort-gateway"));
        cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .env("ETK_ADMIN__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "gateway exited");
            if let Some(a) = line
                .trim()
                .strip_prefix("etjanstekort-gateway listening on ")
            {
                addr = Some(a.to_owned());
            }
            if let Some(rest) = line.trim().strip_prefix("admin listener on http://") {
                admin = rest.split(' ').next().map(str::to_owned);
            }
        }
        // Keep reading so the child never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Self {
            child,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// One sample of `/metrics`.
    async fn metric(&self, series: &str) -> f64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(&self.admin).await.unwrap();
        let req = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut body = String::new();
        tcp.read_to_string(&mut body).await.unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(f64::NAN)
    }

    async fn channel(&self, dir: &Path, who: &str) -> Channel {
        connect(&self.addr, dir, who).await
    }
}

/// An mTLS channel as the dev identity `who`; its connection runs on the current runtime.
async fn connect(addr: &str, dir: &Path, who: &str) -> Channel {
    let read = |f: &str| std::fs::read_to_string(dir.join("certs").join(f)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(
            read(&format!("{who}.pem")),
            read(&format!("{who}.key")),
        ))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn report(unit: &str, card: &str) -> pb::CreateDeregistrationRequest {
    pb::CreateDeregistrationRequest {
        request_id: format!("bench-{card}"),
        deregistration: Some(pb::Deregistration {
            care_unit_hsa_id: unit.to_owned(),
            card_holder: Some(pb::CardHolder {
                personal_identity_number: "19121212-1212".into(),
                full_name: "Bench Person".into(),
                email: "holder@example.se".into(),
            }),
            card_number: card.to_owned(),
            reason: pb::Reason::EmploymentEnded as i32,
            card_received_time: Some(prost_types::Timestamp {
                seconds: 1_790_000_000,
                nanos: 0,
            }),
            card_cut_across_chip: true,
            reported_by: Some(pb::Reporter {
                hsa_id: format!("{}-P000000000099", etjanstekort_gateway::devcerts::TEST_ORG),
                full_name: "Bench Chef".into(),
                email: "chef@example.se".into(),
            }),
            kiv_removal_route: pb::KivRemovalRoute::CareProvider as i32,
            ..Default::default()
        }),
    }
}

async fn create(channel: &Channel, unit: &str, card: &str) -> String {
    DeregistrationServiceClient::new(channel.clone())
        .create_deregistration(report(unit, card))
        .await
        .unwrap()
        .into_inner()
        .deregistration
        .unwrap()
        .id
}

async fn watchers() {
    const STREAMS: usize = 1000;
    // Below the server's 128 streams per connection.
    const PER_CONNECTION: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    // No engine: the case never changes, so only the clients going away can end the streams.
    let gw = Gateway::start(
        dir.path(),
        &[
            ("ETK_ENGINE__WORKERS", "0"),
            ("ETK_LIMITS__WATCH_STREAMS_PER_PRINCIPAL", "5000"),
            // Opening 1,000 streams at once is over a care provider's default rate.
            (
                "ETK_LIMITS__CARE_PROVIDER__REQUESTS_PER_SECOND",
                "1000000000",
            ),
            ("ETK_LIMITS__CARE_PROVIDER__BURST", "1000000000"),
        ],
    );
    let channel = gw.channel(dir.path(), "provider-a").await;
    let id = create(
        &channel,
        &etjanstekort_gateway::devcerts::unit_a(),
        "8400001",
    )
    .await;
    let start = gw.rss_kib();
    println!("watchers     start: RSS {start} KiB");
    for round in 1..=3 {
        let mut streams = Vec::with_capacity(STREAMS);
        let mut channels = Vec::new();
        for i in 0..STREAMS {
            if i % PER_CONNECTION == 0 {
                channels.push(gw.channel(dir.path(), "provider-a").await);
            }
            let mut c = DeregistrationServiceClient::new(channels.last().unwrap().clone());
            let mut s = c
                .watch_deregistration(pb::WatchDeregistrationRequest { id: id.clone() })
                .await
                .unwrap()
                .into_inner();
            // The past event: the server holds the stream now.
            s.message().await.unwrap().unwrap();
            streams.push(s);
        }
        let open = gw.metric("etk_watch_streams_open").await;
        let rss_open = gw.rss_kib();
        // Half reset one by one, half lost with their connections.
        let half = streams.split_off(STREAMS / 2);
        drop(streams);
        drop(half);
        drop(channels);
        let deadline = Instant::now() + Duration::from_secs(30);
        while gw.metric("etk_watch_streams_open").await != 0.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the allocator settle a moment before reading RSS.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = gw.metric("etk_watch_streams_open").await;
        println!(
            "watchers     round {round}: {open} open: RSS {rss_open} KiB; dropped: {after} open, RSS {} KiB",
            gw.rss_kib()
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// provider-b's latencies: `n` GetDeregistration calls, 50 a second, on a thread and runtime of
/// their own (with a connection of their own), so that the flooding client's tasks do not queue
/// ahead of them in this process: the figure is the server's.
async fn probe(addr: &str, dir: &Path, id: &str, n: usize) -> (Duration, Duration) {
    let (addr, dir, id) = (addr.to_owned(), dir.to_owned(), id.to_owned());
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let channel = connect(&addr, &dir, "provider-b").await;
            let mut c = DeregistrationServiceClient::new(channel);
            let mut samples = Vec::with_capacity(n);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for _ in 0..n {
                tick.tick().await;
                let t = Instant::now();
                c.get_deregistration(pb::GetDeregistrationRequest { id: id.clone() })
                    .await
                    .unwrap();
                samples.push(t.elapsed());
            }
            samples.sort();
            (percentile(&samples, 0.5), percentile(&samples, 0.99))
        })
    })
    .await
    .unwrap()
}

async fn flood_run(label: &str, env: &[(&str, &str)]) {
    let samples: usize = std::env::var("ETK_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    const FLOODERS: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), env);
    let b = gw.channel(dir.path(), "provider-b").await;
    let a_channel = gw.channel(dir.path(), "provider-a").await;
    let b_id = create(&b, &etjanstekort_gateway::devcerts::unit_b(), "8400002").await;
    let a_id = create(
        &a_channel,
        &etjanstekort_gateway::devcerts::unit_a(),
        "8400003",
    )
    .await;
    let (p50, p99) = probe(&gw.addr, dir.path(), &b_id, samples).await;
    println!(
        "flood        {label}: provider-b alone:          p50 {:.2} ms, p99 {:.2} ms",
        ms(p50),
        ms(p99)
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..FLOODERS {
        // Eight connections, eight callers each.
        let channel = if i % 8 == 0 {
            gw.channel(dir.path(), "provider-a").await
        } else {
            a_channel.clone()
        };
        let (stop, ok, limited, id) = (stop.clone(), ok.clone(), limited.clone(), a_id.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = DeregistrationServiceClient::new(channel);
            while !stop.load(Ordering::Relaxed) {
                match c
                    .get_deregistration(pb::GetDeregistrationRequest { id: id.clone() })
                    .await
                {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        limited.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(s) => panic!("flood: {s:?}"),
                };
            }
        }));
    }
    // The flood at full speed first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    let (ok0, lim0) = (ok.load(Ordering::Relaxed), limited.load(Ordering::Relaxed));
    let (p50, p99) = probe(&gw.addr, dir.path(), &b_id, samples).await;
    let secs = t.elapsed().as_secs_f64();
    let (ok1, lim1) = (ok.load(Ordering::Relaxed), limited.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "flood        {label}: provider-b under a flood:  p50 {:.2} ms, p99 {:.2} ms \
         (provider-a: {:.0} served/s, {:.0} refused/s)",
        ms(p50),
        ms(p99),
        (ok1 - ok0) as f64 / secs,
        (lim1 - lim0) as f64 / secs
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn flood() {
    // The dev defaults: care providers 100 calls/s, burst 200.
    flood_run("limit 100/s", &[]).await;
    flood_run(
        "no limit   ",
        &[
            (
                "ETK_LIMITS__CARE_PROVIDER__REQUESTS_PER_SECOND",
                "1000000000",
            ),
            ("ETK_LIMITS__CARE_PROVIDER__BURST", "1000000000"),
        ],
    )
    .await;
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let only = std::env::args()
        .skip(1)
        .find(|a| a == "watchers" || a == "flood");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if only.as_deref() != Some("flood") {
            watchers().await;
        }
        if only.as_deref() != Some("watchers") {
            flood().await;
        }
    });
}
