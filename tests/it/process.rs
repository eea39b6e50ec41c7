//! The real binary as a child process: dev mode, crash (SIGKILL) and restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use etjanstekort_gateway::api::pb;
use pb::deregistration_service_client::DeregistrationServiceClient;
use tonic::transport::Channel;

use crate::helpers::{create, report, unit_a};
use crate::launcher::Server;

async fn states(client: &mut DeregistrationServiceClient<Channel>) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_deregistrations(pb::ListDeregistrationsRequest {
                page_size: 100,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        for d in page.deregistrations {
            out.insert(d.id, d.state);
        }
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

fn journal(path: &PathBuf) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

#[tokio::test]
async fn dev_mode_completes_a_case_by_itself() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &[]);
    let mut client =
        DeregistrationServiceClient::new(server.channel(dir.path(), "provider-a").await);
    let id = client
        .create_deregistration(create(
            "dev-1",
            report(&unit_a(), "19121212-1212", "8100001"),
        ))
        .await
        .expect("create")
        .into_inner()
        .deregistration
        .expect("case")
        .id;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = states(&mut client).await;
        if s.get(&id) == Some(&(pb::State::Completed as i32)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dev mode did not complete the case: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Later starts reuse the generated identities.
    drop(client);
    let ca_before = std::fs::read_to_string(dir.path().join("certs/ca.pem")).expect("ca");
    let log = server.terminate();
    // Dev mode checks client certificates against the dev CA's CRL, as production does.
    assert!(
        log.contains("CRL loaded") && !log.contains("no CRLs configured"),
        "{log}"
    );
    let again = Server::start(dir.path(), &[]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("certs/ca.pem")).expect("ca"),
        ca_before
    );
    let ids: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("dev-identities.json")).expect("json"),
    )
    .expect("valid json");
    for who in [
        "provider-a",
        "provider-b",
        "office",
        "tjansteid",
        "operator",
    ] {
        let c = &ids["clients"][who];
        assert!(
            dir.path().join(c["cert"].as_str().expect("cert")).exists(),
            "{who}"
        );
        assert!(
            c["hsa_id"].as_str().is_some_and(|h| h.starts_with("SE")),
            "{who}"
        );
    }
    assert_eq!(ids["ca"], "certs/ca.pem");
    let mut client =
        DeregistrationServiceClient::new(again.channel(dir.path(), "provider-a").await);
    assert_eq!(
        states(&mut client).await.get(&id),
        Some(&(pb::State::Completed as i32))
    );
}

#[tokio::test]
async fn sigkill_under_load_loses_nothing_and_doubles_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let journal_path = dir.path().join("journal.log");
    let env = vec![
        ("ETK_TJANSTEID__CONFIRM_AFTER", "300ms".to_owned()),
        ("ETK_SIMULATED__LATENCY", "30ms".to_owned()),
        ("ETK_SIMULATED__JOURNAL", journal_path.display().to_string()),
        ("ETK_ENGINE__LEASE", "1s".to_owned()),
        ("ETK_ENGINE__IDLE_POLL", "50ms".to_owned()),
        ("ETK_ENGINE__TIMERS__POLL_INTERVAL", "100ms".to_owned()),
        ("ETK_ENGINE__BATCH_SIZE", "8".to_owned()),
    ];
    let server = Server::start(dir.path(), &env);
    let channel = server.channel(dir.path(), "provider-a").await;
    const CASES: usize = 60;
    let mut tasks = Vec::new();
    for i in 0..CASES {
        let mut c = DeregistrationServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            c.create_deregistration(create(
                &format!("crash-{i}"),
                report(&unit_a(), "19121212-1212", &format!("82{i:05}")),
            ))
            .await
            .map(|r| r.into_inner().deregistration.expect("case").id)
        }));
    }
    let mut ids = BTreeSet::new();
    for t in tasks {
        ids.insert(t.await.expect("join").expect("created before the crash"));
    }
    // Let the engine get some way — the first case completed — then pull the plug mid-flight.
    let mut client = DeregistrationServiceClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(30);
    let completed_before = loop {
        let done = states(&mut client)
            .await
            .values()
            .filter(|s| **s == pb::State::Completed as i32)
            .count();
        if done > 0 {
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "no case completed before the crash"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.kill9();
    assert!(
        completed_before < CASES,
        "the crash came too late to mean anything"
    );

    let server = Server::start(dir.path(), &env);
    let mut client =
        DeregistrationServiceClient::new(server.channel(dir.path(), "provider-a").await);
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let s = states(&mut client).await;
        if s.len() == CASES && s.values().all(|st| *st == pb::State::Completed as i32) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "not every case completed after the restart: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(after.keys().cloned().collect::<BTreeSet<_>>(), ids);

    // Every side effect ran under its stable key: retries after the crash reuse it.
    let entries = journal(&journal_path);
    for id in &ids {
        let keys = |kind: &str| -> BTreeSet<String> {
            entries
                .iter()
                .filter(|(k, v)| k == kind && v.starts_with(id.as_str()))
                .map(|(_, v)| v.clone())
                .collect()
        };
        assert_eq!(keys("report"), BTreeSet::from([format!("{id}:report")]));
        assert_eq!(
            keys("remove_kiv"),
            BTreeSet::from([format!("{id}:remove_kiv")])
        );
        assert_eq!(
            keys("notify"),
            BTreeSet::from([format!("{id}:notify_head"), format!("{id}:notify_holder")])
        );
    }
    // And the audit trail has each step exactly once, in order, without gaps.
    let id = ids.iter().next().expect("a case").clone();
    let mut stream = client
        .watch_deregistration(pb::WatchDeregistrationRequest { id })
        .await
        .expect("watch")
        .into_inner();
    let mut kinds = Vec::new();
    let mut seqs = Vec::new();
    // The stream of a completed case ends by itself; bounded all the same.
    let read = async {
        while let Some(m) = stream.message().await.expect("stream") {
            let e = m.event.expect("event");
            seqs.push(e.sequence);
            kinds.push(e.kind);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the watch of a completed case ends");
    assert_eq!(seqs, (1..=kinds.len() as i64).collect::<Vec<_>>());
    // The snapshot and the report run side by side; everything after the report is in order.
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("{k} missing: {kinds:?}"))
    };
    assert_eq!(kinds.len(), 7, "{kinds:?}");
    assert_eq!(pos("accepted"), 0);
    assert!(pos("kiv_snapshot_taken") < pos("revocation_confirmed"));
    let order = [
        "revocation_requested",
        "revocation_confirmed",
        "head_notified",
        "notified",
        "kiv_removed",
    ];
    assert!(order.windows(2).all(|w| pos(w[0]) < pos(w[1])), "{kinds:?}");
}

#[tokio::test]
async fn a_revoked_certificate_is_logged_by_serial_and_issuer_never_by_its_holder() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(
        dir.path(),
        &[("ETK_SERVER__RELOAD_INTERVAL", "100ms".into())],
    );
    let certs = dir.path().join("certs");
    let holder = std::fs::read_to_string(certs.join("provider-b.pem")).expect("cert");
    let serial = crate::helpers::serial_of(&holder);
    let now = std::time::SystemTime::now();
    let crl = crate::helpers::dev_ca(dir.path())
        .crl(
            std::slice::from_ref(&serial),
            now + Duration::from_secs(1),
            now + Duration::from_secs(3600),
        )
        .expect("crl");
    crate::helpers::replace_file(&certs.join("ca.crl.pem"), &crl);
    let mut refused = false;
    for _ in 0..200 {
        let mut c =
            DeregistrationServiceClient::new(server.channel(dir.path(), "provider-b").await);
        if c.list_deregistrations(pb::ListDeregistrationsRequest::default())
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the revoked certificate was still served");
    let (_, log) = server.terminate_split();
    let hex = serial
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let line = log
        .lines()
        // Refused at the handshake, or — when the connection was made before the new CRL was
        // in force — by the per-call check; both lines name serial and issuer.
        .find(|l| {
            l.contains("client certificate refused")
                || l.contains("request denied: the client certificate is revoked")
        })
        .unwrap_or_else(|| panic!("no refusal logged: {log}"));
    assert!(line.contains(&hex), "serial not logged: {line}");
    assert!(
        line.contains("etjanstekort-gateway TEST dev CA"),
        "issuer: {line}"
    );
    // The holder's identity (HSA-id, name) is in no line about the refusal (a call served
    // before the list changed names its principal, as every served call does).
    for l in log
        .lines()
        .filter(|l| l.contains("refused") || l.contains("revoked"))
    {
        assert!(!l.contains("E000000000002"), "{l}");
        assert!(!l.contains("provider-b (TEST)"), "{l}");
    }
}
