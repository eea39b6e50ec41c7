//! The final status of an RPC as the outcome hook sees it: from the headers (trailers-only),
//! from the trailers, CANCELLED when the response or its body is dropped first, and
//! DEADLINE_EXCEEDED from the layer's own timeout.

use std::sync::Mutex;

use http_body::Frame;
use prost::bytes::Bytes;
use tokio_stream::StreamExt as _;
use tower_layer::Layer as _;
use tower_service::Service as _;

use super::*;

type Respond = Arc<dyn Fn() -> Option<http::Response<Body>> + Send + Sync>;

/// Answers with what `respond` gives, or never when it gives nothing.
#[derive(Clone)]
struct Answer(Respond);

impl tower_service::Service<http::Request<Body>> for Answer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        let respond = self.0.clone();
        Box::pin(async move {
            match respond() {
                Some(r) => Ok(r),
                None => std::future::pending().await,
            }
        })
    }
}

fn outcomes() -> (RpcHook, Arc<Mutex<Vec<RpcOutcome>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let hook: RpcHook = Arc::new(move |o: &RpcOutcome| sink.lock().expect("lock").push(o.clone()));
    (hook, seen)
}

fn request() -> http::Request<Body> {
    http::Request::builder()
        .uri("/etjanstekort.v1.DeregistrationService/GetDeregistration")
        .body(Body::empty())
        .expect("request")
}

fn trailers(code: Code) -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", http::HeaderValue::from(code as i32));
    t
}

/// A streamed body: one message, then the trailers (or nothing more, ever).
fn streamed(end: Option<Code>) -> Body {
    let data = Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\0")));
    let frames = tokio_stream::iter(vec![data]);
    match end {
        Some(code) => Body::new(http_body_util::StreamBody::new(frames.chain(
            tokio_stream::iter(vec![Ok(Frame::trailers(trailers(code)))]),
        ))),
        None => Body::new(http_body_util::StreamBody::new(
            frames.chain(tokio_stream::pending()),
        )),
    }
}

async fn run(respond: Respond, timeout: Duration, read_all: bool) -> Vec<RpcOutcome> {
    let (hook, seen) = outcomes();
    let mut svc = RpcLayer::new(timeout, hook).layer(Answer(respond));
    let response = svc.call(request()).await.expect("infallible");
    let mut body = response.into_body();
    if read_all {
        let _ = body.collect().await;
    } else {
        let _ = body.frame().await;
        drop(body);
    }
    seen.lock().expect("lock").clone()
}

#[tokio::test]
async fn an_error_status_in_the_headers_is_final() {
    let seen = run(
        Arc::new(|| Some(tonic::Status::not_found("no such case").into_http())),
        Duration::from_secs(5),
        true,
    )
    .await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].code, Code::NotFound);
    assert_eq!(seen[0].service, "etjanstekort.v1.DeregistrationService");
    assert_eq!(seen[0].method, "GetDeregistration");
}

#[tokio::test]
async fn the_status_in_the_trailers_ends_a_streamed_response() {
    for code in [Code::Ok, Code::Internal] {
        let seen = run(
            Arc::new(move || Some(http::Response::new(streamed(Some(code))))),
            Duration::from_secs(5),
            true,
        )
        .await;
        assert_eq!(seen.iter().map(|o| o.code).collect::<Vec<_>>(), [code]);
    }
}

#[tokio::test]
async fn a_body_dropped_before_its_status_is_cancelled() {
    let (hook, seen) = outcomes();
    let mut svc = RpcLayer::new(Duration::from_secs(5), hook).layer(Answer(Arc::new(|| {
        Some(http::Response::new(streamed(None)))
    })));
    let mut body = svc.call(request()).await.expect("infallible").into_body();
    let _ = body.frame().await;
    assert!(
        seen.lock().expect("lock").is_empty(),
        "not over while streaming"
    );
    drop(body);
    let codes: Vec<Code> = seen.lock().expect("lock").iter().map(|o| o.code).collect();
    assert_eq!(codes, [Code::Cancelled]);
}

#[tokio::test]
async fn a_call_dropped_before_its_response_is_cancelled() {
    let (hook, seen) = outcomes();
    let mut svc = RpcLayer::new(Duration::from_secs(60), hook).layer(Answer(Arc::new(|| None)));
    let call = svc.call(request());
    drop(call);
    let codes: Vec<Code> = seen.lock().expect("lock").iter().map(|o| o.code).collect();
    assert_eq!(codes, [Code::Cancelled]);
}

#[tokio::test]
async fn the_timeout_is_answered_with_deadline_exceeded() {
    let (hook, seen) = outcomes();
    let mut svc = RpcLayer::new(Duration::from_millis(50), hook).layer(Answer(Arc::new(|| None)));
    let response = svc.call(request()).await.expect("infallible");
    assert_eq!(
        grpc_status(response.headers()),
        Some(Code::DeadlineExceeded),
        "answered, not dropped"
    );
    let status = tonic::Status::from_header_map(response.headers()).expect("a status");
    let info = tonic_types::StatusExt::get_details_error_info(&status).expect("ErrorInfo");
    assert_eq!(info.reason, "REQUEST_TIMEOUT");
    assert_eq!(info.domain, crate::api::error::ERROR_DOMAIN);
    drop(response);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].code, Code::DeadlineExceeded);
    assert!(seen[0].elapsed >= Duration::from_millis(50));
}

#[test]
fn the_callers_grpc_timeout_is_read() {
    let t = |v: &str| {
        let mut h = http::HeaderMap::new();
        h.insert(
            "grpc-timeout",
            http::HeaderValue::from_str(v).expect("value"),
        );
        grpc_timeout(&h)
    };
    assert_eq!(t("250m"), Some(Duration::from_millis(250)));
    assert_eq!(t("2S"), Some(Duration::from_secs(2)));
    assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(t("100u"), Some(Duration::from_micros(100)));
    for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
        assert_eq!(t(bad), None, "{bad}");
    }
    assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
}

/// The levels of the "request finished" lines logged while it is the default subscriber.
#[derive(Clone, Default)]
struct Finished(Arc<Mutex<Vec<tracing::Level>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Finished {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}") == "request finished";
                }
            }
        }
        let mut m = Message(false);
        event.record(&mut m);
        if m.0 {
            self.0.lock().expect("lock").push(*event.metadata().level());
        }
    }
}

#[tokio::test]
async fn refusals_of_the_limits_finish_at_debug_others_at_info() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let finished = Finished::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(finished.clone()));
    for status in [
        crate::api::error::rate_limited(Duration::from_secs(1)),
        tonic::Status::not_found("no such case"),
    ] {
        let seen = run(
            Arc::new(move || Some(status.clone().into_http())),
            Duration::from_secs(5),
            true,
        )
        .await;
        assert_eq!(seen.len(), 1, "still counted: {seen:?}");
    }
    assert_eq!(
        *finished.0.lock().expect("lock"),
        [tracing::Level::DEBUG, tracing::Level::INFO]
    );
}
