//! What one caller may hold and spend, tried as a hostile but authenticated client would:
//! watch streams that are dropped free everything at once, without an event on their case;
//! a principal's open watch streams are capped; a flooding principal is rate limited while
//! another is served; an oversized request is refused before it is decoded.

use std::time::Duration;

use etjanstekort_gateway::api::pb;
use pb::deregistration_service_client::DeregistrationServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use crate::admin::wait_metric;
use crate::helpers::{Options, TestApp, create, reason, report, spawn_app_opts, unit_a, unit_b};

const OPEN: &str = "etk_watch_streams_open";

async fn app_with(configure: fn(&mut etjanstekort_gateway::config::Config)) -> TestApp {
    spawn_app_opts(Options {
        engine: false,
        configure: Some(configure),
        ..Options::default()
    })
    .await
}

/// Opens a watch stream on `id` and reads its first (past) event, so the server holds it.
async fn watch(
    client: &mut DeregistrationServiceClient<Channel>,
    id: &str,
) -> Result<tonic::Streaming<pb::WatchDeregistrationResponse>, tonic::Status> {
    let mut stream = client
        .watch_deregistration(pb::WatchDeregistrationRequest { id: id.to_owned() })
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the past events come at once")
        .expect("stream")
        .expect("an event");
    assert_eq!(first.event.expect("event").kind, "accepted");
    Ok(stream)
}

#[tokio::test]
async fn dropped_watch_streams_free_everything_without_an_event_on_their_case() {
    let app = app_with(|c| c.limits.watch_streams_per_principal = 1000).await;
    // No engine: the case stays ACCEPTED, so nothing ever wakes a watcher but its client.
    let id = app
        .create_case("watch-drop", report(&unit_a(), "19121212-1212", "8200001"))
        .await;

    // Cancelled streams (RST_STREAM) on a connection that stays open.
    let channel = app.channel("provider-a").await;
    let mut client = DeregistrationServiceClient::new(channel.clone());
    let mut streams = Vec::new();
    for _ in 0..50 {
        streams.push(watch(&mut client, &id).await.expect("watch"));
    }
    wait_metric(&app, OPEN, |v| v == 50.0).await;
    drop(streams);
    wait_metric(&app, OPEN, |v| v == 0.0).await;
    // The connection is still good for more.
    let again = watch(&mut client, &id).await.expect("watch again");
    wait_metric(&app, OPEN, |v| v == 1.0).await;
    drop(again);
    wait_metric(&app, OPEN, |v| v == 0.0).await;

    // Streams whose whole connection goes away.
    let lost = app.channel("provider-a").await;
    let mut lost_client = DeregistrationServiceClient::new(lost.clone());
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(watch(&mut lost_client, &id).await.expect("watch"));
    }
    wait_metric(&app, OPEN, |v| v == 20.0).await;
    drop((streams, lost_client, lost));
    wait_metric(&app, OPEN, |v| v == 0.0).await;

    // And through all of it the case had no event after its first.
    let detail = app.get(&id).await;
    assert_eq!(detail.state, pb::State::Accepted as i32);
}

#[tokio::test]
async fn a_principal_may_hold_only_so_many_watch_streams() {
    let app = app_with(|c| c.limits.watch_streams_per_principal = 3).await;
    let id = app
        .create_case("watch-cap", report(&unit_a(), "19121212-1212", "8200002"))
        .await;
    let mut a = app.provider("provider-a").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(watch(&mut a, &id).await.expect("within the cap"));
    }
    let refused = watch(&mut a, &id).await.expect_err("over the cap");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "TOO_MANY_WATCH_STREAMS");

    // Another principal is not held back by provider-a's streams.
    let mut b = app.provider("provider-b").await;
    let b_id = b
        .create_deregistration(create(
            "watch-cap-b",
            report(&unit_b(), "19121212-1212", "8200003"),
        ))
        .await
        .expect("provider-b reports")
        .into_inner()
        .deregistration
        .expect("case")
        .id;
    let _b_stream = watch(&mut b, &b_id).await.expect("provider-b watches");

    // Closing one frees its place (the server sees the reset a moment later).
    drop(held.pop());
    let mut admitted = None;
    for _ in 0..100 {
        match watch(&mut a, &id).await {
            Ok(s) => {
                admitted = Some(s);
                break;
            }
            Err(e) => {
                assert_eq!(reason(&e), "TOO_MANY_WATCH_STREAMS");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(admitted.is_some(), "a freed place is given again");
}

#[tokio::test]
async fn a_flooding_principal_is_rate_limited_while_another_is_served() {
    let app = app_with(|c| {
        // Five calls at once, then one per 100 s: the sixth call is over the limit.
        c.limits.care_provider.requests_per_second = 0.01;
        c.limits.care_provider.burst = 5;
        c.limits.refusal_delay = Duration::from_millis(700);
    })
    .await;
    let list = || pb::ListDeregistrationsRequest::default();
    let mut a = app.provider("provider-a").await;
    for _ in 0..5 {
        a.list_deregistrations(list())
            .await
            .expect("within the burst");
    }
    let refused_at = std::time::Instant::now();
    let limited = a
        .list_deregistrations(list())
        .await
        .expect_err("over the limit");
    // The refusal is held back (a lower bound: a sleep never ends early).
    assert!(
        refused_at.elapsed() >= Duration::from_millis(700),
        "refused after {:?}",
        refused_at.elapsed()
    );
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert_eq!(reason(&limited), "RATE_LIMITED");
    let wait = limited
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo with a delay");
    assert!(
        wait > Duration::from_secs(50) && wait <= Duration::from_secs(100),
        "the next token is about 100 s away: {wait:?}"
    );
    // provider-b has its own bucket.
    let mut b = app.provider("provider-b").await;
    for _ in 0..5 {
        b.list_deregistrations(list())
            .await
            .expect("provider-b is served");
    }
    // Health checks carry no principal: they spend the certificate's own bucket instead.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(app.channel("provider-a").await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health has its own bucket");
    wait_metric(
        &app,
        "etk_rate_limited_total{role=\"care_provider\"}",
        |v| v >= 1.0,
    )
    .await;
}

#[tokio::test]
async fn an_oversized_request_is_refused_with_resource_exhausted() {
    let app = app_with(|_| {}).await;
    let mut a = app.provider("provider-a").await;
    let with_name = |n: usize| {
        let mut d = report(&unit_a(), "19121212-1212", "8200004");
        d.reported_by.as_mut().expect("reporter").full_name = "x".repeat(n);
        create("too-large", d)
    };
    let refused = a
        .create_deregistration(with_name(70 * 1024))
        .await
        .expect_err("over 64 KiB");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "REQUEST_TOO_LARGE");
    assert!(refused.message().contains("65536"), "{}", refused.message());
    // Just under the limit the message is decoded and judged by its fields instead.
    let judged = a
        .create_deregistration(with_name(60 * 1024))
        .await
        .expect_err("a 60 KiB name is no name");
    assert_eq!(reason(&judged), "VALIDATION_FAILED");
}

fn list() -> pb::ListDeregistrationsRequest {
    pb::ListDeregistrationsRequest::default()
}

fn health_check() -> tonic_health::pb::HealthCheckRequest {
    tonic_health::pb::HealthCheckRequest::default()
}

#[tokio::test]
async fn health_reflection_and_denied_calls_spend_a_bucket_per_certificate() {
    let app = app_with(|c| {
        c.limits.refusal_delay = Duration::ZERO;
        c.limits.certificate.requests_per_second = 0.01;
        c.limits.certificate.burst = 3;
    })
    .await;
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(app.channel("provider-a").await);
    for _ in 0..3 {
        health
            .check(health_check())
            .await
            .expect("within the burst");
    }
    let limited = health.check(health_check()).await.expect_err("over it");
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert_eq!(reason(&limited), "RATE_LIMITED");
    assert!(limited.get_details_retry_info().is_some());
    // Reflection spends the same certificate's bucket.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_request};
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let refused = ServerReflectionClient::new(app.channel("provider-a").await)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect_err("the certificate's bucket is empty");
    assert_eq!(reason(&refused), "RATE_LIMITED");
    // The principal's own calls are not touched, nor another certificate's health checks.
    app.provider("provider-a")
        .await
        .list_deregistrations(list())
        .await
        .expect("provider-a's principal bucket is its own");
    tonic_health::pb::health_client::HealthClient::new(app.channel("provider-b").await)
        .check(health_check())
        .await
        .expect("provider-b's certificate has its own bucket");

    // A CA-signed certificate that is no principal: its denials are limited too.
    let stranger = app.issue_from_server_ca(Some("SE1655999991-E000000000777"));
    let mut s =
        DeregistrationServiceClient::new(app.channel_with(Some(&stranger)).await.expect("tls"));
    for _ in 0..3 {
        let e = s.list_deregistrations(list()).await.expect_err("denied");
        assert_eq!(reason(&e), "UNKNOWN_PRINCIPAL");
    }
    let e = s.list_deregistrations(list()).await.expect_err("limited");
    assert_eq!(reason(&e), "RATE_LIMITED");
    wait_metric(&app, "etk_rate_limited_total{role=\"certificate\"}", |v| {
        v >= 3.0
    })
    .await;
}
