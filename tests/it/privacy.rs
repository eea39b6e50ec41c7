//! Personnummer never reach the server's output: run the real binary at `debug` level,
//! send known numbers in every form (valid and invalid), and scan everything it printed.

use etjanstekort_gateway::api::pb;
use pb::deregistration_service_client::DeregistrationServiceClient;

use crate::helpers::{create, report, unit_a};
use crate::launcher::Server;

#[tokio::test]
async fn no_personnummer_in_debug_output() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &[("RUST_LOG", "debug".to_owned())]);
    let mut client =
        DeregistrationServiceClient::new(server.channel(dir.path(), "provider-a").await);

    // A distinctive valid number (and its short forms), plus invalid ones of every kind.
    let valid = "19790626-8234";
    let sent = [
        valid,
        "790626-8234",
        "197906268234",
        "19790626-8235", // wrong check digit
        "19790699-8234", // impossible date
        "19790626M234",  // reserve number
    ];
    for (i, pnr) in sent.iter().enumerate() {
        let _ = client
            .create_deregistration(create(
                &format!("leak-{i}"),
                report(&unit_a(), pnr, &format!("7000{i}00")),
            ))
            .await;
    }
    let list = client
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(
        !list.deregistrations.is_empty(),
        "the valid number was accepted"
    );
    let id = list.deregistrations[0].id.clone();
    let _ = client
        .cancel_deregistration(pb::CancelDeregistrationRequest {
            id,
            reason: String::new(),
        })
        .await;

    // Stop the server and collect everything it wrote.
    drop(client);
    let printed = server.terminate();

    assert!(
        printed.contains("debug") || printed.contains("DEBUG"),
        "debug output was captured"
    );
    assert!(printed.contains("deregistration accepted"));
    for needle in [
        "197906268234",
        "7906268234",
        "790626-8234",
        "790626+8234",
        "19790626-8234",
        "-8234",
        "19790626-8235",
        "19790699-8234",
        "19790626M234",
        "7906268235",
    ] {
        assert!(
            !printed.contains(needle),
            "{needle} appeared in the server output"
        );
    }
}
