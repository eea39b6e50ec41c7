//! The operator console over real mTLS: who may open it, what its pages show (and never
//! show), its security headers; and, with `ETK_REQUIRE_REAL_SERVERS=1`, the pages rendered by
//! a real headless Chromium presenting an operator's certificate, with screenshots under
//! `target/tmp/console-screenshots/`.

use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::devcerts::IssuedCert;
use http_body_util::BodyExt as _;
use pb::operations_service_client::OperationsServiceClient;

use crate::helpers::{Options, TestApp, report, spawn_app_opts, unit_a};

/// A GET of `path` over the gateway's own mTLS listener as `client`.
async fn get(
    app: &TestApp,
    client: &IssuedCert,
    path: &str,
) -> (http::StatusCode, http::HeaderMap, String) {
    let mut channel = app.channel_with(Some(client)).await.expect("connect");
    let req = http::Request::get(format!("https://localhost{path}"))
        .body(tonic::body::Body::empty())
        .expect("request");
    std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut channel, cx))
        .await
        .expect("ready");
    let resp = tower_service::Service::call(&mut channel, req)
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// A case parked in NEEDS_ATTENTION; returns its id.
async fn stuck_case(app: &TestApp, card: &str) -> String {
    app.tjansteid.set_refusing(true);
    let id = app
        .create_case(
            &format!("console-{card}"),
            report(&unit_a(), "191212121212", card),
        )
        .await;
    app.wait_for(&id, pb::State::NeedsAttention).await;
    id
}

const PERSONAL: [&str; 6] = [
    "191212121212",
    "121212-1212",
    "Tolvan",
    "tolvan@example.se",
    "Vera",
    "vera@example.se",
];

#[track_caller]
fn assert_no_personal_data(page: &str) {
    for p in PERSONAL {
        assert!(!page.contains(p), "the page shows {p}");
    }
}

#[track_caller]
fn assert_secure_headers(h: &http::HeaderMap) {
    let get = |n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let csp = get("content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(get("x-content-type-options"), "nosniff");
    assert_eq!(get("x-frame-options"), "DENY");
    assert_eq!(get("cache-control"), "no-store");
    assert_eq!(get("content-type"), "text/html; charset=utf-8");
}

#[tokio::test]
async fn operators_see_counts_the_attention_list_and_a_timeline_without_personal_data() {
    let app = spawn_app_opts(Options::default()).await;
    let id = stuck_case(&app, "7700001").await;
    let operator = app.issued("operator");

    let (status, headers, page) = get(&app, &operator, "/console").await;
    assert_eq!(status, 200, "{page}");
    assert_secure_headers(&headers);
    assert!(page.contains("<h2>Needs attention (1)</h2>"), "{page}");
    assert!(
        page.contains(&format!("href=\"/console/cases/{id}\"")),
        "the stuck case links to its page: {page}"
    );
    assert!(page.contains("refused"), "its reason is shown: {page}");
    assert!(
        page.contains("<td>needs_attention</td><td class=\"n\">1</td>"),
        "{page}"
    );
    assert_no_personal_data(&page);

    // An operator's justification with markup in it is shown as text, not markup.
    OperationsServiceClient::new(app.channel("operator").await)
        .resolve_deregistration(pb::ResolveDeregistrationRequest {
            id: id.clone(),
            resolution: pb::Resolution::Completed as i32,
            justification: "<script>alert(1)</script> done by phone & mail".into(),
        })
        .await
        .expect("resolved");
    let (status, headers, page) = get(&app, &operator, &format!("/console/cases/{id}")).await;
    assert_eq!(status, 200, "{page}");
    assert_secure_headers(&headers);
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt; done by phone &amp; mail"),
        "{page}"
    );
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("<td>completed</td>"), "{page}");
    assert!(
        page.contains("<td>accepted</td><td>accepted</td>"),
        "the first event: {page}"
    );
    assert!(
        page.contains(
            "<td>operator_resolved</td><td>completed</td><td>SE1655999991-O000000000001</td>"
        ),
        "the operator's event: {page}"
    );
    // Each event links to its trace in the configured viewer.
    let events = page.matches("<tr><td class=\"n\">").count();
    assert!(events >= 4, "{page}");
    assert_eq!(
        page.matches("href=\"https://jaeger.test/trace/").count(),
        // The case's own trace, and one per event.
        events + 1,
        "trace links: {page}"
    );
    assert_no_personal_data(&page);

    // The outbox steps: the refused report failed for good.
    assert!(page.contains("<table id=\"steps\">"), "{page}");
    assert!(
        page.contains("<tr class=\"attention\"><td>"),
        "the failed step stands out: {page}"
    );
    assert!(page.contains("<td>failed</td>"), "{page}");
    let (status, _, page) = get(&app, &operator, "/console/cases/not-a-case").await;
    assert_eq!(status, 404, "{page}");
    let (status, h, _) = get(&app, &operator, "/console/nothing/here").await;
    assert_eq!(status, 404);
    assert_secure_headers(&h);
    // Pages are counted by their HTTP outcome under one bounded name.
    let series = |code: &str| {
        format!("etk_rpc_requests_total{{service=\"console\",method=\"page\",code=\"{code}\"}}")
    };
    crate::admin::wait_metric(&app, &series("OK"), |v| v >= 2.0).await;
    crate::admin::wait_metric(&app, &series("NotFound"), |v| v >= 2.0).await;
}

#[tokio::test]
async fn a_care_providers_or_any_other_non_operator_certificate_is_refused() {
    let app = spawn_app_opts(Options::default()).await;
    let id = stuck_case(&app, "7700002").await;
    for who in ["provider-a", "office", "tjansteid"] {
        for path in ["/console", "/console/", &format!("/console/cases/{id}")] {
            let (status, headers, page) = get(&app, &app.issued(who), path).await;
            assert_eq!(status, 403, "{who} {path}: {page}");
            assert_secure_headers(&headers);
            assert!(!page.contains(&id), "{who} {path}: {page}");
            assert!(!page.contains("needs_attention"), "{page}");
        }
    }
    // A certificate of the right CA without a principal behind it, too.
    let stranger = app.issue_from_server_ca(Some("SE1655999991-O000000000999"));
    let (status, _, _) = get(&app, &stranger, "/console").await;
    assert_eq!(status, 403);
    crate::admin::wait_metric(
        &app,
        "etk_rpc_requests_total{service=\"console\",method=\"page\",code=\"PermissionDenied\"}",
        |v| v >= 10.0,
    )
    .await;
}

#[tokio::test]
async fn a_disabled_console_serves_no_pages() {
    let app = spawn_app_opts(Options {
        engine: false,
        console: false,
        ..Options::default()
    })
    .await;
    let (status, _, page) = get(&app, &app.issued("operator"), "/console").await;
    assert!(!page.contains("<html") && status != 403, "{status}: {page}");
}

/// Headless Chromium with a client certificate: its own HOME with an NSS database holding the
/// gateway's CA (trusted) and one identity, and the managed policy that makes Chromium present
/// that certificate to `https://127.0.0.1:*` without asking (Chromium reads policies only from
/// `/etc/chromium/policies/managed/`, so the test needs root, as CI has).
struct Browser {
    home: tempfile::TempDir,
}

const CHROMIUM: &str = "/usr/bin/chromium";
const POLICY_FILE: &str = "/etc/chromium/policies/managed/etjanstekort-gateway-tests.json";
const POLICY: &str =
    r#"{"AutoSelectCertificateForUrls":["{\"pattern\":\"https://127.0.0.1:*\",\"filter\":{}}"]}"#;

fn run(cmd: &mut std::process::Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} cannot run ({e}); `bash .ci/run` installs it"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Browser {
    fn new(app: &TestApp, identity: &str) -> Self {
        assert!(
            std::path::Path::new(CHROMIUM).exists(),
            "chromium is not installed (`bash .ci/run` installs it)"
        );
        if std::fs::read_to_string(POLICY_FILE).ok().as_deref() != Some(POLICY) {
            std::fs::create_dir_all("/etc/chromium/policies/managed")
                .and_then(|()| std::fs::write(POLICY_FILE, POLICY))
                .unwrap_or_else(|e| panic!("cannot write {POLICY_FILE} (needs root): {e}"));
        }
        let home = tempfile::tempdir().expect("home");
        let nss = home.path().join(".pki/nssdb");
        std::fs::create_dir_all(&nss).expect("nssdb dir");
        let db = format!("sql:{}", nss.display());
        let certs = app.dir.path().join("certs");
        let (cert, key) = app.identity_paths(identity);
        let p12 = home.path().join("client.p12");
        run(std::process::Command::new("certutil").args(["-N", "-d", &db, "--empty-password"]));
        run(std::process::Command::new("certutil")
            .args(["-A", "-d", &db, "-n", "etk-test-ca", "-t", "C,,", "-i"])
            .arg(certs.join("ca.pem")));
        run(std::process::Command::new("openssl")
            .args([
                "pkcs12", "-export", "-passout", "pass:", "-name", identity, "-in",
            ])
            .arg(&cert)
            .arg("-inkey")
            .arg(&key)
            .arg("-out")
            .arg(&p12));
        run(std::process::Command::new("pk12util")
            .args(["-d", &db, "-W", "", "-i"])
            .arg(&p12));
        Self { home }
    }

    /// Runs headless Chromium on `url` with `args`; returns stdout.
    async fn chromium(&self, args: &[&str], url: &str) -> String {
        let profile = self.home.path().join("profile");
        let run = tokio::process::Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url)
            .env("HOME", self.home.path())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(std::time::Duration::from_secs(90), run)
            .await
            .expect("chromium finished in time")
            .expect("chromium runs");
        assert!(
            out.status.success(),
            "chromium {args:?} {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The page's DOM after rendering.
    async fn dom(&self, url: &str) -> String {
        self.chromium(&["--dump-dom"], url).await
    }

    /// A PNG screenshot of the page at `to`.
    async fn screenshot(&self, url: &str, to: &std::path::Path) {
        let _ = std::fs::remove_file(to);
        self.chromium(
            &[
                &format!("--screenshot={}", to.display()),
                "--window-size=1280,900",
                "--hide-scrollbars",
            ],
            url,
        )
        .await;
        let png = std::fs::read(to).expect("screenshot written");
        assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", to.display());
    }
}

#[tokio::test]
#[cfg_attr(
    not(etk_real_servers),
    ignore = "needs chromium, certutil and root (ETK_REQUIRE_REAL_SERVERS=1; .ci/run installs them)"
)]
async fn a_real_headless_browser_renders_the_pages_for_an_operator_and_refuses_a_care_provider() {
    let app = spawn_app_opts(Options::default()).await;
    let id = stuck_case(&app, "7700004").await;
    let base = format!("https://127.0.0.1:{}", app.addr.port());
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");

    let operator = Browser::new(&app, "operator");
    let overview = operator.dom(&format!("{base}/console")).await;
    assert!(overview.contains("Needs attention (1)"), "{overview}");
    assert!(
        overview.contains(&format!("href=\"/console/cases/{id}\"")),
        "the stuck case is listed with a link: {overview}"
    );
    assert_no_personal_data(&overview);
    operator
        .screenshot(&format!("{base}/console"), &shots.join("overview.png"))
        .await;

    let case_url = format!("{base}/console/cases/{id}");
    let case = operator.dom(&case_url).await;
    assert!(case.contains("step_failed"), "{case}");
    assert!(case.contains("https://jaeger.test/trace/"), "{case}");
    assert_no_personal_data(&case);
    operator
        .screenshot(&case_url, &shots.join("case.png"))
        .await;

    let provider = Browser::new(&app, "provider-a");
    let refused = provider.dom(&format!("{base}/console")).await;
    assert!(refused.contains("Forbidden"), "{refused}");
    assert!(!refused.contains(&id), "{refused}");
    provider
        .screenshot(&format!("{base}/console"), &shots.join("refused.png"))
        .await;
}
