//! The admin listener as Prometheus and Kubernetes use it: `/metrics` parses as Prometheus text
//! and moves with the saga, `/livez` never depends on the database, `/readyz` follows the
//! database (reachable, schema current) and shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use etjanstekort_gateway::api::pb;
use pb::health_care_office_service_client::HealthCareOfficeServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::helpers::{Options, TestApp, TestDb, report, spawn_app_opts, unit_a};

/// One plain HTTP/1.1 GET: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the admin listener");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .expect("the admin listener answers")
        .expect("read");
    let raw = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// Parses the Prometheus text format strictly enough to catch a broken exposition: every line
/// is a `# HELP`/`# TYPE` comment or `name{label="value",…} number`, and every sample belongs to
/// a family declared with `# TYPE`. Returns the samples by series (name with labels).
pub fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut families: Vec<String> = Vec::new();
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next(), parts.next());
            assert!(
                matches!(kind, Some("HELP" | "TYPE")),
                "unknown comment: {line}"
            );
            if kind == Some("TYPE") {
                let t = parts.next().unwrap_or_default();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "{line}"
                );
                families.push(name.expect("family name").to_owned());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let name = series.split('{').next().unwrap_or_default();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name in {line}"
        );
        let labels = &series[name.len()..];
        if !labels.is_empty() {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("labels of {line}"));
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                assert!(!v.trim_end_matches('"').contains('"'), "{line}");
            }
        }
        assert!(
            families.iter().any(|f| name == f
                || ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.as_str()))),
            "sample without a # TYPE: {line}"
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// `/metrics` of the app, parsed.
pub async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let (status, content_type, body) = http_get(app.admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse_prometheus(&body)
}

/// Scrapes until `series` satisfies `ok` (bounded); returns its value.
pub async fn wait_metric(app: &TestApp, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let mut last = None;
    for _ in 0..200 {
        last = scrape(app).await.get(series).copied();
        if last.is_some_and(&ok) {
            return last.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{series} never satisfied the check; last {last:?}");
}

async fn wait_status(addr: SocketAddr, path: &str, want: u16) -> String {
    let mut last = None;
    for _ in 0..200 {
        let (status, _, body) = http_get(addr, path).await;
        if status == want {
            return body;
        }
        last = Some((status, body));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never answered {want}; last {last:?}");
}

async fn create_case(app: &TestApp, route: pb::KivRemovalRoute, card: &str) -> String {
    let mut d = report(&unit_a(), "19121212-1212", card);
    d.kiv_removal_route = route as i32;
    app.create_case(&format!("admin-{card}"), d).await
}

#[tokio::test]
async fn metrics_parse_and_move_with_the_saga() {
    let app = spawn_app_opts(Options {
        confirm_after: Some(0.0),
        ..Options::default()
    })
    .await;
    let id = create_case(&app, pb::KivRemovalRoute::CareProvider, "8100001").await;
    app.wait_for(&id, pb::State::Completed).await;
    // Counted in the database by the refresher, so it follows within its interval.
    wait_metric(&app, "etk_cases{state=\"completed\"}", |v| v == 1.0).await;
    let (_, _, body) = http_get(app.admin, "/metrics").await;
    for family in [
        "# TYPE etk_saga_steps_total counter",
        "# TYPE etk_saga_step_duration_seconds histogram",
        "# TYPE etk_cases gauge",
        "# TYPE etk_outbox_lag_seconds gauge",
    ] {
        assert!(body.contains(family), "{family} missing:\n{body}");
    }
    let s = scrape(&app).await;
    for state in [
        "accepted",
        "revocation_requested",
        "needs_attention",
        "cancelled",
    ] {
        assert_eq!(
            s.get(&format!("etk_cases{{state=\"{state}\"}}")),
            Some(&0.0),
            "{state}"
        );
    }
    for (series, at_least) in [
        (
            "etk_saga_steps_total{step=\"snapshot\",connector=\"kiv\",outcome=\"done\"}",
            1.0,
        ),
        (
            "etk_saga_steps_total{step=\"report\",connector=\"tjansteid\",outcome=\"done\"}",
            1.0,
        ),
        (
            "etk_saga_steps_total{step=\"remove_kiv\",connector=\"kiv\",outcome=\"done\"}",
            1.0,
        ),
        (
            "etk_saga_step_duration_seconds_count{step=\"report\",connector=\"tjansteid\"}",
            1.0,
        ),
        ("etk_connector_up{connector=\"kiv\"}", 1.0),
        ("etk_connector_up{connector=\"tjansteid\"}", 1.0),
        ("etk_connector_up{connector=\"notifier\"}", 1.0),
        ("etk_database_up", 1.0),
        ("etk_db_pool_connections{state=\"idle\"}", 0.0),
    ] {
        let v = s.get(series).copied();
        assert!(v.is_some_and(|v| v >= at_least), "{series} = {v:?}");
    }
    assert_eq!(s.get("etk_cases_needing_attention"), Some(&0.0));
    assert_eq!(
        s.get("etk_outbox_lag_seconds").map(|v| *v < 60.0),
        Some(true)
    );
    // No case id and no personal data in any series.
    let text = http_get(app.admin, "/metrics").await.2;
    for secret in [
        id.as_str(),
        "19121212",
        "121212-1212",
        "Tolvan",
        "tolvan@",
        "vera@",
    ] {
        assert!(!text.contains(secret), "{secret} in /metrics");
    }
}

#[tokio::test]
async fn the_needs_attention_gauge_rises_when_a_case_needs_attention() {
    let app = spawn_app_opts(Options::default()).await;
    wait_metric(&app, "etk_cases_needing_attention", |v| v == 0.0).await;
    app.tjansteid.set_refusing(true);
    let id = create_case(&app, pb::KivRemovalRoute::CareProvider, "8200001").await;
    app.wait_for(&id, pb::State::NeedsAttention).await;
    wait_metric(&app, "etk_cases_needing_attention", |v| v == 1.0).await;
    let s = scrape(&app).await;
    assert_eq!(s.get("etk_cases{state=\"needs_attention\"}"), Some(&1.0));
    assert_eq!(
        s.get("etk_saga_steps_total{step=\"report\",connector=\"tjansteid\",outcome=\"failed\"}"),
        Some(&1.0)
    );
    assert_eq!(
        s.get("etk_connector_errors_total{connector=\"tjansteid\",class=\"terminal\"}"),
        Some(&1.0)
    );
}

#[tokio::test]
async fn retries_and_retryable_errors_are_counted() {
    let app = spawn_app_opts(Options {
        failure_rate: 1.0,
        max_attempts: 3,
        ..Options::default()
    })
    .await;
    let id = create_case(&app, pb::KivRemovalRoute::CareProvider, "8300001").await;
    app.wait_for(&id, pb::State::NeedsAttention).await;
    // The report's third failure is what turns the case, so its counts are complete by now
    // (the snapshot beside it may be cut short when the case turns): two retries, then the
    // third attempt gives up.
    let s = scrape(&app).await;
    assert_eq!(
        s.get("etk_saga_step_retries_total{step=\"report\"}"),
        Some(&2.0)
    );
    assert_eq!(
        s.get("etk_connector_errors_total{connector=\"tjansteid\",class=\"retryable\"}"),
        Some(&3.0)
    );
    assert!(
        s.get("etk_connector_errors_total{connector=\"kiv\",class=\"retryable\"}")
            .is_some_and(|v| *v >= 1.0)
    );
}

#[tokio::test]
async fn an_early_kiv_removal_refused_is_counted() {
    let app = spawn_app_opts(Options::default()).await;
    let id = create_case(&app, pb::KivRemovalRoute::HealthCareOffice, "8400001").await;
    app.wait_for(&id, pb::State::RevocationRequested).await;
    let early = HealthCareOfficeServiceClient::new(app.channel("office").await)
        .complete_kiv_removal_task(pb::CompleteKivRemovalTaskRequest {
            deregistration_id: id,
            comment: String::new(),
        })
        .await
        .expect_err("too early");
    assert_eq!(early.code(), Code::FailedPrecondition);
    let s = scrape(&app).await;
    assert_eq!(s.get("etk_order_violations_refused_total"), Some(&1.0));
}

#[tokio::test]
async fn readiness_follows_the_schema_and_liveness_does_not() {
    use sea_orm::{ConnectionTrait, Database};
    let app = spawn_app_opts(Options {
        engine: false,
        ..Options::default()
    })
    .await;
    assert_eq!(wait_status(app.admin, "/readyz", 200).await, "ready\n");
    assert_eq!(http_get(app.admin, "/livez").await.0, 200);
    assert_eq!(http_get(app.admin, "/nope").await.0, 404);
    // Someone points the gateway at a database without this build's latest migration.
    let db = Database::connect(TestDb::sqlite(app.dir.path()).url)
        .await
        .expect("second connection");
    let latest = {
        use migration::MigratorTrait;
        migration::Migrator::migrations()
            .last()
            .map(|m| m.name().to_owned())
            .expect("migrations")
    };
    let rows = db
        .execute_unprepared(&format!(
            "UPDATE seaql_migrations SET version = 'x' WHERE version = '{latest}'"
        ))
        .await
        .expect("forget the migration")
        .rows_affected();
    assert_eq!(rows, 1, "{latest} is this build's latest migration");
    let why = wait_status(app.admin, "/readyz", 503).await;
    assert!(why.contains("schema"), "{why}");
    assert_eq!(
        http_get(app.admin, "/livez").await.0,
        200,
        "liveness never asks the database"
    );
    wait_metric(&app, "etk_database_up", |v| v == 0.0).await;
    db.execute_unprepared(&format!(
        "UPDATE seaql_migrations SET version = '{latest}' WHERE version = 'x'"
    ))
    .await
    .expect("restore");
    wait_status(app.admin, "/readyz", 200).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn readyz_is_503_while_the_database_is_gone_and_livez_stays_200() {
    use sea_orm::{ConnectionTrait, Database};
    let db = TestDb::postgres().await;
    let name = db.name.clone();
    let app = spawn_app_opts(Options {
        db: Some(db.url),
        ..Options::default()
    })
    .await;
    wait_status(app.admin, "/readyz", 200).await;
    let admin_url = std::env::var("ETK_TEST_POSTGRES_URL").expect("set");
    let admin = Database::connect(&admin_url).await.expect("admin");
    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .await
        .expect("block");
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await
        .expect("terminate");
    wait_status(app.admin, "/readyz", 503).await;
    assert_eq!(http_get(app.admin, "/livez").await.0, 200);
    // `/metrics` still answers; the gauges keep their last values and the database is down.
    wait_metric(&app, "etk_database_up", |v| v == 0.0).await;
    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .expect("unblock");
    wait_status(app.admin, "/readyz", 200).await;
}

#[tokio::test]
async fn readiness_turns_false_first_on_shutdown() {
    let mut app = spawn_app_opts(Options {
        engine: false,
        ..Options::default()
    })
    .await;
    wait_status(app.admin, "/readyz", 200).await;
    let id = create_case(&app, pb::KivRemovalRoute::CareProvider, "8500001").await;
    // An open watch stream keeps the server draining for the grace period.
    let mut stream = app
        .provider("provider-a")
        .await
        .watch_deregistration(pb::WatchDeregistrationRequest { id })
        .await
        .expect("watch")
        .into_inner();
    stream.message().await.expect("first event");
    app.shutdown();
    let why = wait_status(app.admin, "/readyz", 503).await;
    assert_eq!(why, "shutting down\n");
    assert_eq!(
        http_get(app.admin, "/livez").await.0,
        200,
        "alive while draining"
    );
}
