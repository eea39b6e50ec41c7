//! The read-only operator console: server-rendered HTML pages on the gRPC listener, under
//! `/console`. Owns its settings (`[console]`), its routes and its pages (`pages.rs`).
//!
//! Who may see it is decided before a request gets here: `rpc::auth` requires the operator
//! role for `/console` paths, from the client certificate that mutual TLS verified (the same
//! certificate an operator's browser presents, as SITHS cards do). The pages read the store
//! directly and change nothing; they show identifiers, states, reasons, times and audit
//! events, never the card holder's or the reporter's personal data. Every response carries
//! the security headers of [`secure`]: a strict CSP (no scripts at all), no framing, no
//! caching, no MIME sniffing.

mod pages;

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::auth::Principal;
use crate::domain::{CaseId, State as CaseState};
use crate::storage::{CaseStore, ListQuery};

/// Where the console's pages live on the gRPC listener.
pub const PATH: &str = "/console";

/// `[console]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Serve the console (operators only) on the gRPC listener.
    pub enabled: bool,
    /// A link to a case event's trace, e.g. `https://jaeger.example/trace/{trace_id}`;
    /// empty: no links.
    #[serde(default)]
    pub trace_url_template: String,
    /// At most this many cases in the needs-attention list (oldest first).
    pub attention_limit: u32,
}

impl ConsoleSettings {
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.trace_url_template;
        if !t.is_empty() {
            if !(t.starts_with("https://") || t.starts_with("http://")) {
                return Err("trace_url_template must be an http(s) URL".into());
            }
            if !t.contains(TRACE_ID) {
                return Err(format!("trace_url_template must contain {TRACE_ID}"));
            }
        }
        if self.attention_limit == 0 || self.attention_limit > 1000 {
            return Err("attention_limit must be between 1 and 1000".into());
        }
        Ok(())
    }

    /// The trace link for `trace_id`, if a template is set and the id is a W3C trace id
    /// (32 lowercase hex digits, not all zero): nothing else ever goes into a URL.
    pub fn trace_url(&self, trace_id: &str) -> Option<String> {
        let valid = trace_id.len() == 32
            && trace_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && trace_id.bytes().any(|b| b != b'0');
        (!self.trace_url_template.is_empty() && valid)
            .then(|| self.trace_url_template.replace(TRACE_ID, trace_id))
    }
}

/// The placeholder in `trace_url_template`.
const TRACE_ID: &str = "{trace_id}";

#[derive(Clone, Debug)]
struct Console {
    store: Arc<dyn CaseStore>,
    settings: Arc<ConsoleSettings>,
}

/// The console's routes (all under [`PATH`]), over the store.
pub fn router(store: Arc<dyn CaseStore>, settings: ConsoleSettings) -> axum::Router {
    axum::Router::new()
        .route(PATH, axum::routing::get(overview))
        .route("/console/", axum::routing::get(overview))
        .route("/console/cases/{id}", axum::routing::get(case))
        // No fallback (the gRPC routes have it): unknown console paths are answered here.
        .route("/console/{*rest}", axum::routing::any(not_found))
        .with_state(Console {
            store,
            settings: Arc::new(settings),
        })
}

/// The overview: cases by state and the cases that need attention.
/// Every page view is logged with the operator's HSA-id (and the case id); no personal data.
/// The principal is the one the authentication layer put on the request: without it (the
/// layer not in front) the page is not served.
async fn overview(State(c): State<Console>, Extension(p): Extension<Principal>) -> Response {
    tracing::info!(principal = %p.hsa_id, "operator viewed the console overview");
    let now = crate::clock::now();
    let stats = match c.store.stats(now).await {
        Ok(s) => s,
        Err(e) => return unavailable(&e),
    };
    let attention = match c
        .store
        .list(&ListQuery {
            states: vec![CaseState::NeedsAttention],
            limit: c.settings.attention_limit,
            ..Default::default()
        })
        .await
    {
        Ok(cases) => cases,
        Err(e) => return unavailable(&e),
    };
    page(
        StatusCode::OK,
        pages::overview(&stats, &attention, c.settings.attention_limit, now),
    )
}

/// One case: its state and its audit timeline with links to the traces.
async fn case(
    State(c): State<Console>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let Some(id) = CaseId::parse(&id) else {
        return not_found().await;
    };
    tracing::info!(principal = %p.hsa_id, case_id = %id, "operator viewed a case in the console");
    let case = match c.store.get(&id).await {
        Ok(Some(case)) => case,
        Ok(None) => return not_found().await,
        Err(e) => return unavailable(&e),
    };
    let events = match c.store.events(&id).await {
        Ok(events) => events,
        Err(e) => return unavailable(&e),
    };
    let steps = match c.store.steps(&id).await {
        Ok(steps) => steps,
        Err(e) => return unavailable(&e),
    };
    page(
        StatusCode::OK,
        pages::case(&case, &events, &steps, &c.settings, crate::clock::now()),
    )
}

async fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        pages::message("Not found", "No such page or case."),
    )
}

fn unavailable(e: &crate::storage::StoreError) -> Response {
    // The store's errors name no personal data; the page says only that it failed.
    tracing::warn!(error = %e, "console page failed");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::message("Unavailable", "The case store did not answer. Try again."),
    )
}

/// The page the auth layer answers a caller without the operator role with.
pub fn forbidden() -> http::Response<tonic::body::Body> {
    let r = page(
        StatusCode::FORBIDDEN,
        pages::message(
            "Forbidden",
            "The console is for operators: present an operator's certificate.",
        ),
    );
    let (parts, body) = r.into_parts();
    http::Response::from_parts(parts, tonic::body::Body::new(body))
}

/// An HTML page with the security headers.
fn page(status: StatusCode, html: maud::Markup) -> Response {
    let mut r = (status, html.into_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(r.headers_mut());
    r
}

/// The console's security headers: no script or foreign content may run (CSP), the pages may
/// not be framed (clickjacking), nor cached anywhere (they show case data), nor sniffed as
/// another type; links to the trace viewer carry no referrer.
pub fn secure(headers: &mut http::HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, csp().clone());
    for (name, value) in [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        (header::PRAGMA, "no-cache"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// Nothing may load or run but the pages' one inline style sheet, allowed by its SHA-256.
fn csp() -> &'static HeaderValue {
    static CSP: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine as _;
        let digest = ring::digest::digest(&ring::digest::SHA256, pages::STYLE.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        let policy = format!(
            "default-src 'none'; style-src 'sha256-{hash}'; img-src 'none'; \
             form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
        );
        HeaderValue::from_str(&policy)
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Page views are logged with the operator's HSA-id and the case id; without the
    /// authentication layer's principal no page is served.
    #[tokio::test(flavor = "current_thread")]
    async fn page_views_are_logged_with_the_operator_and_the_case() {
        use tower_service::Service as _;
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
        let vault = Arc::new(crate::privacy::Vault::from_master_key(&[7; 32]).expect("vault"));
        let store =
            crate::storage::SeaStore::connect(&url, 1, std::time::Duration::from_secs(5), vault)
                .await
                .expect("connect");
        store.migrate().await.expect("migrate");
        let store: Arc<dyn CaseStore> = Arc::new(store);
        let mut router = router(store, settings(""));
        let operator = Principal {
            hsa_id: crate::domain::HsaId::parse("SE1655999991-O000000000001").expect("hsa"),
            role: crate::auth::Role::Operator,
            care_provider: crate::domain::HsaId::parse("SE1655999991-O000000000001").expect("hsa"),
            care_units: Default::default(),
        };
        let case_id = crate::clock::new_case_id();
        let buf = Buffer::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        for (path, principal) in [
            ("/console".to_owned(), true),
            (format!("/console/cases/{case_id}"), true),
            ("/console".to_owned(), false),
        ] {
            let mut req = axum::http::Request::builder()
                .uri(&path)
                .body(axum::body::Body::empty())
                .expect("request");
            if principal {
                req.extensions_mut().insert(operator.clone());
            }
            let response = router.call(req).await.expect("response");
            if !principal {
                assert!(
                    response.status().is_server_error(),
                    "{path}: served without a principal"
                );
            }
        }
        let logs = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf-8");
        assert!(
            logs.contains("operator viewed the console overview")
                && logs.contains("principal=SE1655999991-O000000000001"),
            "{logs}"
        );
        assert!(
            logs.contains("operator viewed a case in the console")
                && logs.contains(&format!("case_id={case_id}")),
            "{logs}"
        );
    }

    fn settings(template: &str) -> ConsoleSettings {
        ConsoleSettings {
            enabled: true,
            trace_url_template: template.into(),
            attention_limit: 100,
        }
    }

    #[test]
    fn trace_links_only_for_trace_ids_and_only_with_a_template() {
        let s = settings("https://jaeger.example/trace/{trace_id}?uiFind=x");
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            s.trace_url(id).as_deref(),
            Some("https://jaeger.example/trace/4bf92f3577b34da6a3ce929d0e0e4736?uiFind=x")
        );
        for bad in [
            "",
            "00000000000000000000000000000000",
            "4BF92F3577B34DA6A3CE929D0E0E4736",
            "4bf92f3577b34da6a3ce929d0e0e473\"",
            "javascript:alert(1)",
        ] {
            assert_eq!(s.trace_url(bad), None, "{bad}");
        }
        assert_eq!(settings("").trace_url(id), None);
    }

    #[test]
    fn templates_and_limits_are_checked() {
        assert!(settings("").validate().is_ok());
        assert!(settings("https://j/{trace_id}").validate().is_ok());
        assert!(settings("https://j/trace").validate().is_err());
        assert!(settings("javascript:{trace_id}").validate().is_err());
        let mut s = settings("");
        s.attention_limit = 0;
        assert!(s.validate().is_err());
    }
}
