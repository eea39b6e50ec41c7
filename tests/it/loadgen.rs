//! The load generator (`src/bin/loadgen.rs`), run for a moment against a dev gateway it starts
//! itself: a row for every target, call and concurrency level, no failed request, every case of
//! the completions figure completed. No timing is asserted (figures are for benchmarks).

use std::process::Command;

use serde_json::Value;

fn loadgen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run loadgen")
}

#[test]
fn measures_the_gateway_beside_the_echo() {
    let out = loadgen(&[
        "--gateway-bin",
        env!("CARGO_BIN_EXE_etjanstekort-gateway"),
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--concurrency",
        "1,4",
        "--completions",
        "5",
        "--settle-timeout",
        "10s",
        "--output",
        "json",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "loadgen failed ({}): {stderr}\n{stdout}",
        out.status
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 8, "{runs:#?}");
    for conc in [1, 4] {
        for (target, op) in [
            ("echo", "check"),
            ("gateway", "create"),
            ("gateway", "get"),
            ("gateway", "list"),
        ] {
            let row = runs
                .iter()
                .find(|r| r["target"] == target && r["op"] == op && r["concurrency"] == conc)
                .unwrap_or_else(|| panic!("no row {target} {op} at {conc}: {runs:#?}"));
            assert!(row["requests"].as_u64().expect("requests") > 0, "{row}");
            assert_eq!(row["errors"], serde_json::json!({}), "{row}");
            for field in ["req_per_s", "p50_ms", "p90_ms", "p99_ms"] {
                assert!(row[field].as_f64().is_some(), "{field} missing: {row}");
            }
            // The gateway's and the echo's CPU time is read from /proc for every run.
            assert!(row["server_cpu_us_per_req"].as_f64().is_some(), "{row}");
            if target == "gateway" {
                assert!(row["ratio_to_echo"].as_f64().is_some(), "{row}");
            }
        }
    }
    let completions = &report["completions"];
    assert_eq!(completions["created"], 5, "{completions}");
    assert_eq!(completions["completed"], 5, "{completions}");
    assert_eq!(completions["create_errors"], serde_json::json!({}));
}

#[test]
fn a_gateway_that_does_not_start_is_a_setup_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = loadgen(&[
        "--gateway-bin",
        &dir.path().join("no-such-gateway").display().to_string(),
        "--completions",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("setup failed"),
        "{out:?}"
    );
}
