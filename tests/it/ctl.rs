//! `etkctl` end to end: the real binary against a running gateway over mTLS, its output and
//! its exit codes as a script sees them.

use std::process::Output;

use etjanstekort_gateway::api::pb;
use serde_json::Value;

use crate::helpers::{Options, TestApp, report, spawn_app_opts, unit_a};

/// Runs `etkctl` with `args` as `identity` (a dev identity's certificate) against `app`.
async fn etkctl_as(app: &TestApp, identity: &str, args: &[&str]) -> Output {
    let (cert, key) = app.identity_paths(identity);
    etkctl_env(
        app,
        args,
        &[
            ("ETKCTL_CERT", cert.display().to_string()),
            ("ETKCTL_KEY", key.display().to_string()),
        ],
    )
    .await
}

async fn etkctl(app: &TestApp, args: &[&str]) -> Output {
    etkctl_as(app, "operator", args).await
}

/// Runs `etkctl` with only the address and TLS name set, the rest from `env` and the dev
/// data directory (the app's, laid out as `serve --dev` lays it out).
async fn etkctl_env(app: &TestApp, args: &[&str], env: &[(&str, String)]) -> Output {
    etkctl_at(app, &format!("https://{}", app.addr), args, env).await
}

async fn etkctl_at(app: &TestApp, address: &str, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_etkctl"));
    cmd.args(["--address", address])
        .args(["--tls-name", "localhost", "--dev-data-dir"])
        .arg(app.dir.path())
        .args(args)
        // No profile of the machine's user may leak in.
        .env("HOME", app.dir.path())
        .env_remove("XDG_CONFIG_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("run etkctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(o), stderr(o)))
}

/// A case parked in NEEDS_ATTENTION (TjänsteID-service refuses the report).
async fn stuck_case(app: &TestApp, card: &str) -> String {
    app.tjansteid.set_refusing(true);
    let id = app
        .create_case(
            &format!("ctl-{card}"),
            report(&unit_a(), "191212121212", card),
        )
        .await;
    app.wait_for(&id, pb::State::NeedsAttention).await;
    id
}

fn engine_app() -> Options {
    Options::default()
}

#[tokio::test]
async fn an_operator_finds_a_stuck_case_retries_it_and_resolves_another() {
    let app = spawn_app_opts(engine_app()).await;
    let stuck = stuck_case(&app, "8800001").await;

    let listed = etkctl(&app, &["cases", "list", "--needs-attention"]).await;
    assert_exit(&listed, 0);
    let text = stdout(&listed);
    assert!(text.starts_with("ID "), "a table with a header: {text}");
    let line = text
        .lines()
        .find(|l| l.starts_with(&stuck))
        .unwrap_or_else(|| panic!("the stuck case is listed: {text}"));
    assert!(line.contains("NEEDS_ATTENTION"), "{line}");
    assert!(line.contains("refused"), "its reason is shown: {line}");
    assert!(!text.contains("191212121212") && !text.contains("Tolvan"));

    let listed = etkctl(&app, &["cases", "list", "--needs-attention", "-o", "json"]).await;
    assert_exit(&listed, 0);
    let cases = json(&listed);
    let cases = cases.as_array().expect("an array");
    assert_eq!(cases.len(), 1, "{cases:?}");
    assert_eq!(cases[0]["id"], stuck.as_str());
    assert_eq!(cases[0]["state"], "NEEDS_ATTENTION");

    // Retried once the registry takes reports again: the case moves on.
    app.tjansteid.set_refusing(false);
    let retried = etkctl(&app, &["cases", "retry", &stuck, "--output", "json"]).await;
    assert_exit(&retried, 0);
    assert_eq!(json(&retried)["id"], stuck.as_str());
    app.wait_for(&stuck, pb::State::RevocationRequested).await;

    // Resolving needs a justification (clap: usage, exit 2) ...
    let other = stuck_case(&app, "8800002").await;
    let no_reason = etkctl(&app, &["cases", "resolve", &other]).await;
    assert_exit(&no_reason, 2);
    // ... and ends the case with it.
    let resolved = etkctl(
        &app,
        &[
            "cases",
            "resolve",
            &other,
            "--justification",
            "revoked by phone with the service desk",
            "--output",
            "json",
        ],
    )
    .await;
    assert_exit(&resolved, 0);
    assert_eq!(json(&resolved)["state"], "COMPLETED");
    // A case that no longer needs attention cannot be resolved again: refused, exit 5.
    let again = etkctl(
        &app,
        &["cases", "resolve", &other, "--justification", "twice"],
    )
    .await;
    assert_exit(&again, 5);
    assert!(
        stderr(&again).contains("FAILED_PRECONDITION") || stderr(&again).contains("precondition"),
        "{}",
        stderr(&again)
    );
}

#[tokio::test]
async fn exit_codes_tell_not_found_bad_input_and_a_wrong_certificate_apart() {
    let app = spawn_app_opts(Options {
        engine: false,
        ..Options::default()
    })
    .await;
    let missing = uuid::Uuid::now_v7().to_string();
    assert_exit(&etkctl(&app, &["cases", "retry", &missing]).await, 4);
    let bad = etkctl(&app, &["cases", "retry", "not-a-case-id"]).await;
    assert_exit(&bad, 2);
    assert!(
        stderr(&bad).starts_with("etkctl: error:"),
        "{}",
        stderr(&bad)
    );
    // A care provider's certificate is not an operator's.
    let denied = etkctl_as(&app, "provider-a", &["cases", "retry", &missing]).await;
    assert_exit(&denied, 6);
    // Unknown subcommands and flags are usage errors.
    assert_exit(&etkctl(&app, &["cases", "frobnicate"]).await, 2);
    // A gateway that is not there: an error, not a finding.
    let gone = etkctl_at(
        &app,
        "https://127.0.0.1:9",
        &["cases", "retry", &missing],
        &[],
    )
    .await;
    assert_exit(&gone, 1);
}

#[tokio::test]
async fn connection_settings_come_from_flags_env_a_profile_or_the_dev_data_dir() {
    let app = spawn_app_opts(Options {
        engine: false,
        ..Options::default()
    })
    .await;
    let missing = uuid::Uuid::now_v7().to_string();
    // Nothing but the address: the operator identity and CA of the dev data directory.
    assert_exit(
        &etkctl_env(&app, &["cases", "retry", &missing], &[]).await,
        4,
    );

    // A profile naming provider-a's certificate: used (so refused as no operator) ...
    let profile = app.dir.path().join("profile.toml");
    std::fs::write(
        &profile,
        "cert = \"certs/provider-a.pem\"\nkey = \"certs/provider-a.key\"\n",
    )
    .unwrap();
    let p = profile.display().to_string();
    let by_profile = etkctl_env(&app, &["--profile", &p, "cases", "retry", &missing], &[]).await;
    assert_exit(&by_profile, 6);
    // ... unless a flag or variable says otherwise.
    let (cert, key) = app.identity_paths("operator");
    let by_env = etkctl_env(
        &app,
        &["cases", "retry", &missing],
        &[
            ("ETKCTL_PROFILE", p.clone()),
            ("ETKCTL_CERT", cert.display().to_string()),
            ("ETKCTL_KEY", key.display().to_string()),
        ],
    )
    .await;
    assert_exit(&by_env, 4);
    // The default profile place ($HOME/.config/etkctl/profile.toml) is read too.
    let default = app.dir.path().join(".config/etkctl");
    std::fs::create_dir_all(&default).unwrap();
    std::fs::write(
        default.join("profile.toml"),
        format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            app.identity_paths("provider-a").0.display(),
            app.identity_paths("provider-a").1.display()
        ),
    )
    .unwrap();
    assert_exit(
        &etkctl_env(&app, &["cases", "retry", &missing], &[]).await,
        6,
    );
}

/// Rewrites the detail of a case's first audit event straight in the test's SQLite database,
/// as someone with write access to the database could (dropping the append-only trigger first).
async fn rewrite_first_event(app: &TestApp, id: &str) {
    use sea_orm::{ConnectionTrait, Database};
    let url = crate::helpers::TestDb::sqlite(app.dir.path()).url;
    let conn = Database::connect(&url).await.expect("raw connection");
    conn.execute_unprepared("DROP TRIGGER case_events_no_update")
        .await
        .expect("drop trigger");
    conn.execute_unprepared(&format!(
        "UPDATE case_events SET detail = 'rewritten' WHERE case_id = '{id}' AND seq = 1"
    ))
    .await
    .expect("rewrite");
}

#[tokio::test]
async fn an_operator_reads_a_timeline_lists_cancels_verifies_and_exports() {
    let app = spawn_app_opts(Options {
        engine: false,
        ..Options::default()
    })
    .await;
    let a = app
        .create_case("ctl-a", report(&unit_a(), "191212121212", "8800011"))
        .await;
    let b = app
        .create_case("ctl-b", report(&unit_a(), "200001012384", "8800012"))
        .await;

    // show: the case, its events and its steps, as a table and as JSON.
    let shown = etkctl(&app, &["cases", "show", &a]).await;
    assert_exit(&shown, 0);
    let text = stdout(&shown);
    assert!(
        text.contains("TIMELINE") && text.contains("STEPS"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("1 ") && l.contains("accepted")),
        "{text}"
    );
    assert!(
        !text.contains("191212121212") && !text.contains("Tolvan"),
        "{text}"
    );
    let shown = json(&etkctl(&app, &["cases", "show", &a, "-o", "json"]).await);
    assert_eq!(shown["case"]["id"], a.as_str());
    assert_eq!(shown["case"]["state"], "ACCEPTED");
    assert_eq!(shown["events"][0]["kind"], "accepted");
    assert!(
        shown["chain_head"]["sequence"].as_i64() >= Some(1),
        "{shown}"
    );
    assert!(
        !shown["steps"].as_array().expect("steps").is_empty(),
        "{shown}"
    );
    let missing = uuid::Uuid::now_v7().to_string();
    assert_exit(&etkctl(&app, &["cases", "show", &missing]).await, 4);

    // list with filters.
    let listed = json(
        &etkctl(
            &app,
            &["cases", "list", "--state", "accepted", "-o", "json"],
        )
        .await,
    );
    let ids: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, vec![a.as_str(), b.as_str()]);
    let other_unit = crate::helpers::unit_b();
    let none = json(
        &etkctl(
            &app,
            &["cases", "list", "--care-unit", &other_unit, "-o", "json"],
        )
        .await,
    );
    assert_eq!(none.as_array().map(Vec::len), Some(0), "{none}");
    let limited = json(&etkctl(&app, &["cases", "list", "--limit", "1", "-o", "json"]).await);
    assert_eq!(limited.as_array().map(Vec::len), Some(1), "{limited}");

    // An untouched database verifies.
    let verified = etkctl(&app, &["audit", "verify", "-o", "json"]).await;
    assert_exit(&verified, 0);
    // No progress bar into a pipe: stderr is not a terminal here.
    assert!(
        !stderr(&verified).contains('\r') && !stderr(&verified).contains("cases verified"),
        "{}",
        stderr(&verified)
    );
    let v = json(&verified);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["cases_checked"].as_i64() >= Some(2), "{v}");

    // export: JSON of the events with their hashes and the chain head; no personal data.
    let exported = etkctl(&app, &["audit", "export", &a]).await;
    assert_exit(&exported, 0);
    let record = json(&exported);
    assert!(record.is_object(), "{record}");
    let raw = stdout(&exported);
    assert!(raw.contains(&a), "{raw}");
    assert!(
        !raw.contains("191212121212") && !raw.contains("Tolvan"),
        "{raw}"
    );
    // The record keeper's export needs a justification (usage, exit 2).
    assert_exit(
        &etkctl(&app, &["audit", "export", &a, "--for-record-keeper"]).await,
        2,
    );

    // cancel: before the report went out, with a justification.
    let cancelled = etkctl(
        &app,
        &[
            "cases",
            "cancel",
            &a,
            "--justification",
            "reported twice",
            "-o",
            "json",
        ],
    )
    .await;
    assert_exit(&cancelled, 0);
    assert_eq!(json(&cancelled)["state"], "CANCELLED");
    let gone = etkctl(&app, &["cases", "cancel", &missing, "--justification", "x"]).await;
    assert_exit(&gone, 4);

    // A rewritten event: verify names the case and exits 4; the other case still verifies.
    rewrite_first_event(&app, &b).await;
    let broken = etkctl(&app, &["audit", "verify"]).await;
    assert_exit(&broken, 3);
    assert!(
        stdout(&broken).lines().any(|l| l.starts_with(&b)),
        "{}",
        stdout(&broken)
    );
    assert!(
        !stdout(&broken).lines().any(|l| l.starts_with(&a)),
        "{}",
        stdout(&broken)
    );
    assert!(stderr(&broken).contains("broken"), "{}", stderr(&broken));
    assert_exit(&etkctl(&app, &["audit", "verify", "--case", &a]).await, 0);
    let one = etkctl(&app, &["audit", "verify", "--case", &b, "-o", "json"]).await;
    assert_exit(&one, 3);
    let one = json(&one);
    assert_eq!(one["ok"], false);
    assert_eq!(one["broken"][0]["id"], b.as_str(), "{one}");
    assert_eq!(one["broken"][0]["sequence"], 1, "{one}");
}

/// Next to `serve --dev` (the real binary, its data in `./dev-data`), `etkctl` needs only the
/// address (the dev listen address is taken when the default port is free; tests use port 0):
/// certificate, key and CA come from `./dev-data`, and the server's IP address is verified
/// against its certificate without a TLS name.
#[tokio::test]
async fn next_to_a_dev_gateway_only_the_address_is_needed() {
    crate::helpers::install_crypto();
    let cwd = tempfile::tempdir().expect("dir");
    let server = crate::launcher::Server::start(&cwd.path().join("dev-data"), &[]);
    let server_addr = server.addr.clone();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_etkctl"))
        .args(["--address", &server.addr, "cases", "list", "-o", "json"])
        .current_dir(cwd.path())
        .env("HOME", cwd.path())
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .await
        .expect("run etkctl");
    assert_exit(&out, 0);
    assert_eq!(json(&out), serde_json::json!([]));
    // The gateway tells the developer where the console is and how to call etkctl.
    let printed = server.terminate();
    assert!(
        printed.contains(&format!(
            "operator console on https://{}/console",
            server_addr
        )),
        "{printed}"
    );
    assert!(
        printed.contains("operators: etkctl --dev-data-dir "),
        "{printed}"
    );
}
