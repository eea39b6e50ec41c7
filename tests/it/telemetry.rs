//! Traces and logs of the real binary: spans exported over OTLP (gRPC and http/protobuf) to
//! receivers started here, continuing the caller's W3C trace, flushed on shutdown, and free of
//! personal data; nothing sent and no noise without an endpoint; JSON log lines.

use etjanstekort_gateway::api::pb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use pb::deregistration_service_client::DeregistrationServiceClient;
use prost::Message as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tonic::Code;

use crate::helpers::{create, report, unit_a};
use crate::launcher::Server;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// The personal data the calls carry, in every form the privacy test looks for.
const PERSONAL: [&str; 13] = [
    "197906268235",
    "7906268235",
    "790626-8235",
    "790626+8235",
    "19790626-8235",
    "-8235",
    "Tolvan",
    "Tolvansson",
    "tolvan@example.se",
    "Verksamhetschef",
    "vera@example.se",
    "Vera ",
    "\"Vera",
];

#[derive(Debug)]
struct Sink(UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        r: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(r.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/gRPC receiver on a free port: its URL and what it receives.
async fn grpc_receiver() -> (String, UnboundedReceiver<ExportTraceServiceRequest>) {
    let (tx, rx) = unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Sink(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), rx)
}

/// An OTLP/HTTP receiver (protobuf bodies) on a free port: a minimal HTTP/1.1 server.
async fn http_receiver() -> (
    String,
    UnboundedReceiver<(String, ExportTraceServiceRequest)>,
) {
    let (tx, rx) = unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                loop {
                    let mut request_line = String::new();
                    if conn.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        if conn.read_line(&mut header).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let header = header.trim();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = header.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if conn.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if let Ok(r) = ExportTraceServiceRequest::decode(body.as_slice()) {
                        let _ = tx.send((path, r));
                    }
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if conn.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), rx)
}

fn with_traceparent<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN}-01")
            .parse()
            .expect("metadata"),
    );
    r
}

/// A report with personal data, then a look-up that fails; returns the case id.
async fn traffic(server: &Server, dir: &std::path::Path) -> String {
    let mut client = DeregistrationServiceClient::new(server.channel(dir, "provider-a").await);
    let case = client
        .create_deregistration(with_traceparent(create(
            "otel-1",
            report(&unit_a(), "19790626-8235", "7100001"),
        )))
        .await
        .expect("create")
        .into_inner()
        .deregistration
        .expect("case");
    let err = client
        .get_deregistration(with_traceparent(pb::GetDeregistrationRequest {
            id: uuid::Uuid::new_v4().to_string(),
        }))
        .await
        .expect_err("unknown case");
    assert_eq!(err.code(), Code::NotFound);
    // A trace id that hides an identity number is not continued.
    let mut sneaky = tonic::Request::new(pb::GetDeregistrationRequest {
        id: uuid::Uuid::new_v4().to_string(),
    });
    sneaky.metadata_mut().insert(
        "traceparent",
        format!("00-{SNEAKY_TRACE_ID}-{PARENT_SPAN}-01")
            .parse()
            .expect("metadata"),
    );
    let _ = client.get_deregistration(sneaky).await;
    // Nor a span id that hides one; and the caller's free-text tracestate is dropped.
    let mut sneaky = tonic::Request::new(pb::GetDeregistrationRequest {
        id: uuid::Uuid::new_v4().to_string(),
    });
    sneaky.metadata_mut().insert(
        "traceparent",
        format!("00-{SNEAKY_TRACE_ID_2}-{SNEAKY_SPAN_ID}-01")
            .parse()
            .expect("metadata"),
    );
    sneaky
        .metadata_mut()
        .insert("tracestate", "x=19121212-1212".parse().expect("metadata"));
    let _ = client.get_deregistration(sneaky).await;
    let mut stateful = tonic::Request::new(pb::GetDeregistrationRequest {
        id: uuid::Uuid::new_v4().to_string(),
    });
    stateful.metadata_mut().insert(
        "traceparent",
        format!("00-{SNEAKY_TRACE_ID_2}-{PARENT_SPAN}-01")
            .parse()
            .expect("metadata"),
    );
    stateful
        .metadata_mut()
        .insert("tracestate", "x=19121212-1212".parse().expect("metadata"));
    let _ = client.get_deregistration(stateful).await;
    case.id
}

/// A clean trace id, sent with a span id carrying 191212121212.
const SNEAKY_TRACE_ID_2: &str = "5bf92f3577b34da6a3ce929d0e0e4736";
const SNEAKY_SPAN_ID: &str = "0019121212121200";

/// A caller's trace id carrying 191212121212 (a valid personnummer).
const SNEAKY_TRACE_ID: &str = "00000000000000000000191212121212";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string(s: &str) -> AnyValue {
    AnyValue::StringValue(s.to_owned())
}

fn spans(requests: &[ExportTraceServiceRequest]) -> Vec<&Span> {
    requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect()
}

/// The RPC spans continue the caller's trace and follow the OTel RPC conventions; nothing
/// exported carries personal data.
fn check_exported(requests: &[ExportTraceServiceRequest]) {
    let all = spans(requests);
    let rpc = |method: &str| {
        all.iter()
            .copied()
            .find(|s| s.name == format!("etjanstekort.v1.DeregistrationService/{method}"))
            .unwrap_or_else(|| {
                panic!(
                    "no {method} span in {:?}",
                    all.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
    };
    let created = rpc("CreateDeregistration");
    assert_eq!(hex(&created.trace_id), TRACE_ID, "the caller's trace");
    assert_eq!(
        hex(&created.parent_span_id),
        PARENT_SPAN,
        "the caller's span is the parent"
    );
    assert_eq!(created.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(attribute(created, "rpc.system"), Some(&string("grpc")));
    assert_eq!(
        attribute(created, "rpc.service"),
        Some(&string("etjanstekort.v1.DeregistrationService"))
    );
    assert_eq!(
        attribute(created, "rpc.method"),
        Some(&string("CreateDeregistration"))
    );
    assert_eq!(
        attribute(created, "rpc.grpc.status_code"),
        Some(&AnyValue::IntValue(0))
    );
    let missing = rpc("GetDeregistration");
    assert_eq!(
        attribute(missing, "rpc.grpc.status_code"),
        Some(&AnyValue::IntValue(Code::NotFound as i64))
    );
    assert_ne!(
        missing.status.as_ref().map_or(0, |s| s.code),
        2,
        "NOT_FOUND is the caller's doing, not a server error"
    );
    let service_names: Vec<_> = requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .filter_map(|r| r.resource.as_ref())
        .flat_map(|r| &r.attributes)
        .filter(|kv| kv.key == "service.name")
        .filter_map(|kv| kv.value.as_ref().and_then(|v| v.value.clone()))
        .collect();
    assert!(
        service_names.contains(&string("etjanstekort-gateway")),
        "{service_names:?}"
    );
    assert!(
        all.iter().all(|s| hex(&s.trace_id) != SNEAKY_TRACE_ID),
        "a trace id hiding an identity number was continued"
    );
    assert!(
        all.iter()
            .all(|s| hex(&s.parent_span_id) != SNEAKY_SPAN_ID && !s.trace_state.contains("1912")),
        "a span id hiding an identity number, or the caller's tracestate, was exported"
    );
    // Every name, attribute, event and status message of everything received.
    let everything = format!("{requests:?}");
    for needle in PERSONAL {
        assert!(
            !everything.contains(needle),
            "{needle} was exported: {everything}"
        );
    }
}

fn drain<T>(rx: &mut UnboundedReceiver<T>) -> Vec<T> {
    let mut out = Vec::new();
    while let Ok(r) = rx.try_recv() {
        out.push(r);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_grpc_receiver_on_shutdown() {
    let (endpoint, mut rx) = grpc_receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            // Long enough that only the flush on shutdown can have sent them.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000".to_owned()),
        ],
    );
    let id = traffic(&server, dir.path()).await;
    // The engine reports the card: the report step has run once the case shows it.
    let mut client =
        DeregistrationServiceClient::new(server.channel(dir.path(), "provider-a").await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let state = client
            .get_deregistration(pb::GetDeregistrationRequest { id: id.clone() })
            .await
            .expect("get")
            .into_inner()
            .deregistration
            .expect("case")
            .state;
        if state != pb::State::Accepted as i32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the card was never reported"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(client);
    let (_, log) = tokio::task::spawn_blocking(move || server.terminate_split())
        .await
        .expect("terminate");
    // Exports are answered before the process exits, so all of them are here now.
    let received = drain(&mut rx);
    assert!(!received.is_empty(), "nothing exported; log:\n{log}");
    check_exported(&received);
    // The saga's steps join the creating request's trace, tagged with the case id.
    let all = spans(&received);
    let report = all
        .iter()
        .find(|s| s.name == "saga.step report")
        .unwrap_or_else(|| {
            panic!(
                "no report step in {:?}",
                all.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        hex(&report.trace_id),
        TRACE_ID,
        "the step is in the caller's trace"
    );
    assert_eq!(attribute(report, "case_id"), Some(&string(&id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_receiver_configured_in_the_file() {
    let (endpoint, mut rx) = http_receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(
        dir.path(),
        &[
            ("ETK_TELEMETRY__OTLP_ENDPOINT", endpoint),
            ("ETK_TELEMETRY__OTLP_PROTOCOL", "http/protobuf".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000".to_owned()),
        ],
    );
    traffic(&server, dir.path()).await;
    let (_, log) = tokio::task::spawn_blocking(move || server.terminate_split())
        .await
        .expect("terminate");
    let received = drain(&mut rx);
    assert!(!received.is_empty(), "nothing exported; log:\n{log}");
    assert!(
        received.iter().all(|(path, _)| path == "/v1/traces"),
        "the HTTP path is added to a configured base URL"
    );
    let requests: Vec<_> = received.into_iter().map(|(_, r)| r).collect();
    check_exported(&requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_sent_and_nothing_complains() {
    // Disabled export, though an endpoint is set: nothing reaches the receiver.
    let (endpoint, mut rx) = grpc_receiver().await;
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
            ("OTEL_SDK_DISABLED", "true".to_owned()),
        ],
    );
    traffic(&server, dir.path()).await;
    tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("terminate");
    assert!(drain(&mut rx).is_empty(), "exported while disabled");

    // No endpoint at all: no exporter, so no export errors in the log (at debug level, too).
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &[("RUST_LOG", "debug".to_owned())]);
    traffic(&server, dir.path()).await;
    let (_, log) = tokio::task::spawn_blocking(move || server.terminate_split())
        .await
        .expect("terminate");
    assert!(log.contains("request finished"), "the log was captured");
    for line in log.lines() {
        let lower = line.to_ascii_lowercase();
        assert!(
            !lower.contains("opentelemetry") && !lower.contains("otlp"),
            "telemetry noise: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_callers_trace_id() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(
        dir.path(),
        &[("ETK_TELEMETRY__LOG_FORMAT", "json".to_owned())],
    );
    let case_id = traffic(&server, dir.path()).await;
    let (_, log) = tokio::task::spawn_blocking(move || server.terminate_split())
        .await
        .expect("terminate");
    assert!(!log.contains('\u{1b}'), "no ANSI escapes");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        for key in ["time", "level", "target", "message"] {
            assert!(l.get(key).is_some(), "{key} missing: {l}");
        }
    }
    let finished: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "request finished" && l["trace_id"] == TRACE_ID)
        .collect();
    assert_eq!(finished.len(), 2, "one line per call: {log}");
    assert!(
        finished
            .iter()
            .all(|l| l["span_id"].as_str().is_some_and(|s| s.len() == 16)),
        "{finished:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "deregistration accepted"
                && l["case_id"] == case_id.as_str()
                && l["trace_id"] == TRACE_ID),
        "{log}"
    );
}
