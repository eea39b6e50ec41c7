//! Personnummer never reach the server's output: run the real binary at `debug` level,
//! send known numbers in every form (valid and invalid), and scan everything it printed.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use etjanstekort_gateway::api::pb;
use pb::deregistration_service_client::DeregistrationServiceClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::helpers::{create, install_crypto, report, unit_a};

/// Kills the server if the test fails half-way.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn no_personnummer_in_debug_output() {
    install_crypto();
    let dir = tempfile::tempdir().expect("dir");
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_etjanstekort-gateway"))
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server"),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().expect("stdout"));
    let mut stderr = child.0.stderr.take().expect("stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut printed = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).expect("read") > 0,
            "server exited early"
        );
        printed.push_str(&line);
        if let Some(a) = line
            .trim()
            .strip_prefix("etjanstekort-gateway listening on ")
        {
            break a.to_owned();
        }
    };

    let certs = dir.path().join("certs");
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).expect("cert file");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(
            read("provider-a.pem"),
            read("provider-a.key"),
        ))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let mut client = DeregistrationServiceClient::new(channel);

    // A distinctive valid number (and its short forms), plus invalid ones of every kind.
    let valid = "19790626-8234";
    let sent = [
        valid,
        "790626-8234",
        "197906268234",
        "19790626-8235", // wrong check digit
        "19790699-8234", // impossible date
        "19790626M234",  // reserve number
    ];
    for (i, pnr) in sent.iter().enumerate() {
        let _ = client
            .create_deregistration(create(
                &format!("leak-{i}"),
                report(&unit_a(), pnr, &format!("7000{i}00")),
            ))
            .await;
    }
    let list = client
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(
        !list.deregistrations.is_empty(),
        "the valid number was accepted"
    );
    let id = list.deregistrations[0].id.clone();
    let _ = client
        .cancel_deregistration(pb::CancelDeregistrationRequest {
            id,
            reason: String::new(),
        })
        .await;

    // Stop the server and collect everything it wrote.
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    for _ in 0..100 {
        if child.0.try_wait().ok().flatten().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    printed.push_str(&rest);
    printed.push_str(&stderr_reader.join().expect("stderr"));

    assert!(
        printed.contains("debug") || printed.contains("DEBUG"),
        "debug output was captured"
    );
    assert!(printed.contains("deregistration accepted"));
    for needle in [
        "197906268234",
        "7906268234",
        "790626-8234",
        "790626+8234",
        "19790626-8234",
        "-8234",
        "19790626-8235",
        "19790699-8234",
        "19790626M234",
        "7906268235",
    ] {
        assert!(
            !printed.contains(needle),
            "{needle} appeared in the server output"
        );
    }
}
