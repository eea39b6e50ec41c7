//! The one launcher for tests that run the real binary as a child process: `serve --dev` on
//! port 0, everything it prints captured, SIGTERM or SIGKILL to stop it; and `run` for a
//! command that ends by itself (`migrate`, a `serve` that refuses to start).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::helpers::install_crypto;

/// A running server; killed (SIGKILL) on drop.
pub struct Server {
    child: Child,
    pub addr: String,
    /// Everything written to stdout and stderr so far.
    output: Arc<Mutex<String>>,
    /// What was written to stderr alone (the log).
    errors: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn capture(mut from: impl Read + Send + 'static, sinks: Vec<Arc<Mutex<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            for sink in &sinks {
                if let Ok(mut o) = sink.lock() {
                    o.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        }
    })
}

impl Server {
    /// Starts `serve --dev` with its data in `dir` and the extra environment `env`; returns once
    /// the server has printed its address.
    pub fn start(dir: &Path, env: &[(&str, String)]) -> Self {
        Self::start_with(dir, &[], env)
    }

    /// As `start`, with more arguments to `serve` (e.g. `--no-migrate`).
    pub fn start_with(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_etjanstekort-gateway"));
        cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(args)
            .env("NO_COLOR", "1")
            // Dev mode's fixed admin port would collide between parallel tests.
            .env("ETK_ADMIN__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn server");
        let output = Arc::new(Mutex::new(String::new()));
        let errors = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let mut readers = vec![capture(stderr, vec![output.clone(), errors.clone()])];
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let addr = loop {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).expect("read") > 0,
                "server exited early: {}",
                output.lock().map(|o| o.clone()).unwrap_or_default()
            );
            if let Ok(mut o) = output.lock() {
                o.push_str(&line);
            }
            if let Some(a) = line
                .trim()
                .strip_prefix("etjanstekort-gateway listening on ")
            {
                break a.to_owned();
            }
        };
        readers.push(capture(stdout, vec![output.clone()]));
        Self {
            child,
            addr,
            output,
            errors,
            readers,
        }
    }

    /// Everything the server printed so far.
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// The admin listener's address, as the server announced it.
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.output.lock().map(|o| o.clone()).unwrap_or_default();
            if let Some(a) = out.lines().find_map(|l| {
                l.strip_prefix("admin listener on http://")
                    .and_then(|r| r.split(' ').next())
                    .and_then(|a| a.parse().ok())
            }) {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "no admin address announced: {out}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and returns at once (the drain runs; `terminate` waits for the end).
    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// SIGKILL: no shutdown, no drain.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit (SIGKILL after 15 s) and returns everything
    /// it printed.
    pub fn terminate(self) -> String {
        self.terminate_split().0
    }

    /// As `terminate`, returning everything printed and, second, stderr alone.
    pub fn terminate_split(mut self) -> (String, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The pipes close with the process, so the readers end having read everything.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let read = |s: &Arc<Mutex<String>>| s.lock().map(|o| o.clone()).unwrap_or_default();
        (read(&self.output), read(&self.errors))
    }

    /// An mTLS channel as the dev identity `who`.
    pub async fn channel(&self, dir: &Path, who: &str) -> Channel {
        install_crypto();
        let certs = dir.join("certs");
        let read = |f: String| std::fs::read_to_string(certs.join(f)).expect("cert file");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem".into())))
            .identity(Identity::from_pem(
                read(format!("{who}.pem")),
                read(format!("{who}.key")),
            ))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://{}", self.addr))
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect")
    }
}

/// Runs `etjanstekort-gateway <args> --dev --data-dir <dir>` to its end (at most 60 s) with
/// the extra environment `env`; returns whether it succeeded and everything it printed.
pub fn run(dir: &Path, args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etjanstekort-gateway"));
    cmd.args(args)
        .args(["--dev", "--data-dir"])
        .arg(dir)
        .env("NO_COLOR", "1")
        .env("ETK_ADMIN__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let output = Arc::new(Mutex::new(String::new()));
    let readers = [
        capture(child.stdout.take().expect("stdout"), vec![output.clone()]),
        capture(child.stderr.take().expect("stderr"), vec![output.clone()]),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for r in readers {
        let _ = r.join();
    }
    let out = output.lock().map(|o| o.clone()).unwrap_or_default();
    (status.success(), out)
}

/// Runs a one-shot command of the real binary (`migrate`, `retention …`, `keys …`) to its end;
/// returns whether it succeeded, its stdout and its stderr.
pub fn run_once(args: &[&str], env: &[(&str, String)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etjanstekort-gateway"));
    cmd.args(args).env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
