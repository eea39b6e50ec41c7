//! mTLS and authorization: who may call what.

use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::devcerts::DevCa;
use pb::deregistration_service_client::DeregistrationServiceClient;
use pb::revocation_service_client::RevocationServiceClient;
use tonic::Code;

use crate::helpers::{create, reason, report, spawn_app, unit_a, unit_b};

#[tokio::test]
async fn connections_without_a_trusted_client_certificate_are_refused() {
    let app = spawn_app().await;
    // No client certificate: the TLS handshake (or the first call) fails.
    let no_cert = match app.channel_with(None).await {
        Err(_) => true,
        Ok(ch) => DeregistrationServiceClient::new(ch)
            .list_deregistrations(pb::ListDeregistrationsRequest::default())
            .await
            .is_err_and(|s| s.code() == Code::Unavailable || s.code() == Code::Unknown),
    };
    assert!(no_cert, "a call without a client certificate got through");

    // A certificate from a CA the server does not trust, with a valid-looking HSA-id.
    let foreign = DevCa::generate("Foreign CA").expect("ca");
    let cert = foreign
        .issue_client("intruder", Some("SE1655999991-E000000000001"))
        .expect("cert");
    let refused = match app.channel_with(Some(&cert)).await {
        Err(_) => true,
        Ok(ch) => DeregistrationServiceClient::new(ch)
            .list_deregistrations(pb::ListDeregistrationsRequest::default())
            .await
            .is_err_and(|s| s.code() != Code::Ok && s.code() != Code::PermissionDenied),
    };
    assert!(refused, "a foreign client certificate got through");
}

#[tokio::test]
async fn principals_are_denied_outside_their_grant() {
    let app = spawn_app().await;
    // Trusted CA, but an HSA-id not in the principals file.
    let unknown = app.issue_from_server_ca(Some("SE1655999991-E000000000777"));
    let mut c =
        DeregistrationServiceClient::new(app.channel_with(Some(&unknown)).await.expect("tls"));
    let err = c
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect_err("unknown principal");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(reason(&err), "UNKNOWN_PRINCIPAL");

    // Trusted CA, no serialNumber at all.
    let anonymous = app.issue_from_server_ca(None);
    let mut c =
        DeregistrationServiceClient::new(app.channel_with(Some(&anonymous)).await.expect("tls"));
    let err = c
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect_err("no HSA-id");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(reason(&err), "NO_HSA_ID_IN_CERTIFICATE");

    // Role mix-ups: the office and TjänsteID-service cannot report cards.
    for who in ["office", "tjansteid", "operator"] {
        let mut c = app.provider(who).await;
        let err = c
            .create_deregistration(create("x", report(&unit_a(), "19121212-1212", "123123123")))
            .await
            .expect_err(who);
        assert_eq!(err.code(), Code::PermissionDenied, "{who}");
        assert_eq!(reason(&err), "ROLE_REQUIRED");
    }
    // A provider cannot confirm revocations, TjänsteID-service can reach the RPC.
    let mut r = RevocationServiceClient::new(app.channel("provider-a").await);
    let err = r
        .confirm_revocation(pb::ConfirmRevocationRequest::default())
        .await
        .expect_err("provider confirming");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(reason(&err), "ROLE_REQUIRED");
    let mut r = RevocationServiceClient::new(app.channel("tjansteid").await);
    let err = r
        .confirm_revocation(pb::ConfirmRevocationRequest::default())
        .await
        .expect_err("empty request");
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "TjänsteID-service reaches the RPC"
    );
    assert_eq!(reason(&err), "VALIDATION_FAILED");

    // A provider reporting for a care unit it does not hold.
    let mut a = app.provider("provider-a").await;
    let err = a
        .create_deregistration(create("x", report(&unit_b(), "19121212-1212", "123123123")))
        .await
        .expect_err("foreign unit");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(reason(&err), "UNIT_NOT_GRANTED");
}

#[tokio::test]
async fn another_providers_case_does_not_exist_for_you() {
    let app = spawn_app().await;
    let mut a = app.provider("provider-a").await;
    let case = a
        .create_deregistration(create("own", report(&unit_a(), "19121212-1212", "4444444")))
        .await
        .expect("create")
        .into_inner()
        .deregistration
        .expect("case");
    let mut b = app.provider("provider-b").await;
    let err = b
        .get_deregistration(pb::GetDeregistrationRequest {
            id: case.id.clone(),
        })
        .await
        .expect_err("foreign case");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(reason(&err), "CASE_NOT_FOUND");
    let listed = b
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.deregistrations.is_empty());
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let app = spawn_app().await;
    let ch = app.channel("provider-a").await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    // The prober sets SERVING right after start; allow it a moment.
    let mut status = 0;
    for _ in 0..50 {
        status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "etjanstekort.v1.DeregistrationService".into(),
            })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(0);
        if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let resp = stream
        .message()
        .await
        .expect("answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "etjanstekort.v1.DeregistrationService",
        "etjanstekort.v1.HealthCareOfficeService",
        "etjanstekort.v1.RevocationService",
        "etjanstekort.v1.OperationsService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
    }
}

/// grpcurl prints an error's details by name only if reflection serves the `google.rpc` types,
/// and the files they import.
#[tokio::test]
async fn reflection_serves_the_error_detail_types() {
    use prost::Message as _;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = spawn_app().await;
    let mut refl = ServerReflectionClient::new(app.channel("provider-a").await);
    let mut ask = async |request: MessageRequest| -> Vec<prost_types::FileDescriptorProto> {
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request.clone()),
        };
        let resp = refl
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .expect("reflection")
            .into_inner()
            .message()
            .await
            .expect("answer")
            .expect("one message");
        match resp.message_response {
            Some(MessageResponse::FileDescriptorResponse(f)) => f
                .file_descriptor_proto
                .iter()
                .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).expect("file"))
                .collect(),
            other => panic!("{request:?} answered {other:?}"),
        }
    };
    for symbol in [
        "google.rpc.BadRequest",
        "google.rpc.ErrorInfo",
        "google.rpc.RetryInfo",
        "google.rpc.Status",
    ] {
        let files = ask(MessageRequest::FileContainingSymbol(symbol.into())).await;
        let file = files.first().expect("a file");
        assert!(
            file.name().starts_with("google/rpc/"),
            "{symbol}: {}",
            file.name()
        );
        // A client resolves the imports by name next (google/protobuf/duration.proto, …).
        for dep in &file.dependency {
            let found = ask(MessageRequest::FileByFilename(dep.clone())).await;
            assert!(found.iter().any(|f| f.name() == dep), "{dep} not served");
        }
    }
}
