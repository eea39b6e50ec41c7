//! Connection limits tried from outside, over real sockets: a client that completes mutual
//! TLS and then sends nothing is disconnected within the idle timeout; one that never finishes
//! its TLS handshake is cut at the handshake deadline; a live client with a watch stream that
//! has nothing to say is kept (it answers the keepalive pings).

use std::io::Read as _;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::config::Config;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{Options, TestApp, report, spawn_app_opts, unit_a};

async fn app_with(configure: fn(&mut Config)) -> TestApp {
    spawn_app_opts(Options {
        engine: false,
        configure: Some(configure),
        ..Options::default()
    })
    .await
}

/// Idle timeout 1 s, keepalive pings every 300 ms, but a ping unanswered only after 60 s: within
/// the tests' windows only the idle timeout can close a connection.
fn short_idle(c: &mut Config) {
    c.server.idle_timeout = Duration::from_secs(1);
    c.server.http2_keepalive_interval = Duration::from_millis(300);
    c.server.http2_keepalive_timeout = Duration::from_secs(60);
}

/// Completes mutual TLS as provider-a over a blocking socket, then only reads: returns how long
/// after the handshake the server closed the connection (`None`: still open after `window`).
fn handshake_then_silence(app: &TestApp, window: Duration) -> Option<Duration> {
    let issued = app.issued("provider-a");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(app.ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA");
    }
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key PEM");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut tcp = TcpStream::connect(app.addr).expect("connect");
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp)
            .expect("the mutual TLS handshake completes");
    }
    let done = Instant::now();
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    let mut buf = [0u8; 4096];
    while done.elapsed() < window {
        match stream.read(&mut buf) {
            // The server's HTTP/2 preface (SETTINGS) and pings: read on.
            Ok(n) if n > 0 => {}
            Ok(_) => return Some(done.elapsed()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // Reset or closed without close_notify: closed all the same.
            Err(_) => return Some(done.elapsed()),
        }
    }
    None
}

#[tokio::test]
async fn a_client_silent_after_the_tls_handshake_is_disconnected_within_the_idle_timeout() {
    let app = app_with(short_idle).await;
    let app = Arc::new(app);
    let probe = app.clone();
    let closed_after = tokio::task::spawn_blocking(move || {
        handshake_then_silence(&probe, Duration::from_secs(15))
    })
    .await
    .expect("join")
    .expect("the silent connection was closed");
    // 1 s idle timeout; the bound leaves room for a loaded machine, and is far below the 60 s
    // after which an unanswered ping would have closed it instead.
    assert!(
        closed_after < Duration::from_secs(10),
        "closed only after {closed_after:?}"
    );
}

#[tokio::test]
async fn a_live_client_with_a_quiet_watch_stream_outlasts_the_idle_timeout() {
    let app = app_with(short_idle).await;
    let id = app
        .create_case("quiet", report(&unit_a(), "19121212-1212", "8300001"))
        .await;
    let mut client = app.provider("provider-a").await;
    let mut stream = client
        .watch_deregistration(pb::WatchDeregistrationRequest { id: id.clone() })
        .await
        .expect("watch")
        .into_inner();
    let first = stream.message().await.expect("stream").expect("event");
    assert_eq!(first.event.expect("event").kind, "accepted");
    // Four idle timeouts without an event: the stream must neither end nor fail.
    let quiet = tokio::time::timeout(Duration::from_secs(4), stream.message()).await;
    assert!(quiet.is_err(), "the stream ended or failed: {quiet:?}");
    // Then an event arrives on the same stream.
    client
        .cancel_deregistration(pb::CancelDeregistrationRequest {
            id: id.clone(),
            reason: "reported by mistake".into(),
        })
        .await
        .expect("cancel on the same connection");
    let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the event arrives")
        .expect("stream")
        .expect("event");
    assert_eq!(
        next.event.expect("event").state,
        pb::State::Cancelled as i32
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_the_tls_handshake_is_cut_at_the_deadline() {
    let app = app_with(|c| {
        c.server.tls_handshake_timeout = Duration::from_secs(1);
        // Far away: a trickling client is never idle, only the handshake deadline cuts it.
        c.server.idle_timeout = Duration::from_secs(120);
    })
    .await;
    let mut tcp = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    // A TLS handshake record announcing 16 000 bytes, then one byte at a time.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x3e, 0x80])
        .await
        .expect("record header");
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let closed_after = loop {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still open after 15 s of trickling"
        );
        tokio::select! {
            read = tcp.read(&mut buf) => match read {
                Ok(n) if n > 0 => continue,
                _ => break start.elapsed(),
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if tcp.write_all(&[0]).await.is_err() {
                    break start.elapsed();
                }
            }
        }
    };
    assert!(
        closed_after < Duration::from_secs(10),
        "cut only after {closed_after:?}"
    );
}

/// Whether the server closed `tcp` (end of stream or reset) within a few seconds; `false` when
/// it is still open then.
async fn closed_by_the_server(tcp: &mut tokio::net::TcpStream) -> bool {
    match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut [0u8; 64])).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

async fn connect(app: &TestApp) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect")
}

async fn list_ok(channel: &tonic::transport::Channel) -> bool {
    pb::deregistration_service_client::DeregistrationServiceClient::new(channel.clone())
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .is_ok()
}

#[tokio::test]
async fn connections_over_the_open_or_handshake_cap_are_closed_at_once() {
    let app = app_with(|c| {
        c.server.max_connections = 3;
        c.server.max_handshakes = 1;
    })
    .await;
    let a = app.channel("provider-a").await;
    assert!(list_ok(&a).await);
    // A client that has not finished its handshake holds the one handshake place.
    let slow = connect(&app).await;
    let mut over = connect(&app).await;
    assert!(
        closed_by_the_server(&mut over).await,
        "a second handshake at once"
    );
    crate::admin::wait_metric(
        &app,
        "etk_connections_refused_total{reason=\"max_handshakes\"}",
        |v| v >= 1.0,
    )
    .await;
    drop(slow);
    // Two more complete connections: three open, the cap.
    let mut held = Vec::new();
    for _ in 0..200 {
        if held.len() == 2 {
            break;
        }
        match app.channel_with(Some(&app.issued("provider-b"))).await {
            Ok(ch) if list_ok(&ch).await => held.push(ch),
            // The slow client's place is given back once the server sees it gone.
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(held.len(), 2, "two more connections are served");
    let mut fourth = connect(&app).await;
    assert!(
        closed_by_the_server(&mut fourth).await,
        "a fourth open connection"
    );
    crate::admin::wait_metric(
        &app,
        "etk_connections_refused_total{reason=\"max_connections\"}",
        |v| v >= 1.0,
    )
    .await;
    assert!(list_ok(&a).await, "the open connections are still served");
}

#[tokio::test]
async fn a_principal_over_its_connection_cap_is_closed_after_the_handshake() {
    let app = app_with(|c| c.limits.connections_per_principal = 2).await;
    let a1 = app.channel("provider-a").await;
    let a2 = app.channel("provider-a").await;
    assert!(list_ok(&a1).await && list_ok(&a2).await);
    let a = app.issued("provider-a");
    assert!(
        !crate::revocation::served(&app, &a).await,
        "a third connection of provider-a"
    );
    crate::admin::wait_metric(
        &app,
        "etk_connections_refused_total{reason=\"per_principal\"}",
        |v| v >= 1.0,
    )
    .await;
    // Another principal is not affected, nor provider-a's open connections.
    assert!(crate::revocation::served(&app, &app.issued("provider-b")).await);
    assert!(list_ok(&a1).await);
    // A closed connection gives its place back.
    drop(a2);
    crate::revocation::eventually_served(&app, &a, true).await;
}
