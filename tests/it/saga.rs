//! The routine end to end over mTLS with simulated registries: revocation first, then KIV.

use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::connectors::Recipient;
use etjanstekort_gateway::domain::{HsaId, Personnummer};
use pb::deregistration_service_client::DeregistrationServiceClient;
use pb::health_care_office_service_client::HealthCareOfficeServiceClient;
use pb::operations_service_client::OperationsServiceClient;
use pb::revocation_service_client::RevocationServiceClient;
use tonic::Code;

use crate::helpers::{Options, TestApp, TestDb, reason, report, spawn_app_opts, unit_a};

fn holder() -> Personnummer {
    Personnummer::parse(
        "19121212-1212",
        etjanstekort_gateway::clock::now().utc_date(),
    )
    .expect("pnr")
}

fn unit() -> HsaId {
    HsaId::parse(&unit_a()).expect("unit")
}

async fn create_case(app: &TestApp, route: pb::KivRemovalRoute, card: &str) -> String {
    let mut d = report(&unit_a(), "19121212-1212", card);
    d.kiv_removal_route = route as i32;
    app.create_case(&format!("req-{card}"), d).await
}

async fn confirm(app: &TestApp, id: &str) -> Result<pb::Deregistration, tonic::Status> {
    RevocationServiceClient::new(app.channel("tjansteid").await)
        .confirm_revocation(pb::ConfirmRevocationRequest {
            deregistration_id: id.to_owned(),
            revocation_reference: "TJID-2026-0042".into(),
            revoke_time: None,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().deregistration.expect("case"))
}

async fn event_kinds(app: &TestApp, id: &str) -> Vec<(String, i32)> {
    let mut client = app.provider("provider-a").await;
    let mut stream = client
        .watch_deregistration(pb::WatchDeregistrationRequest { id: id.to_owned() })
        .await
        .expect("watch")
        .into_inner();
    let mut out = Vec::new();
    // The stream ends at a terminal state; for a live case take what is there so far.
    while let Ok(Ok(Some(m))) =
        tokio::time::timeout(std::time::Duration::from_millis(300), stream.message()).await
    {
        let e = m.event.expect("event");
        out.push((e.kind, e.state));
    }
    out
}

#[tokio::test]
async fn nothing_reaches_kiv_before_the_confirmation_on_the_care_provider_route() {
    let app = spawn_app_opts(Options::default()).await;
    let id = create_case(&app, pb::KivRemovalRoute::CareProvider, "5100001").await;
    app.wait_for(&id, pb::State::RevocationRequested).await;
    // Give the engine every chance to do something wrong, watching the case meanwhile.
    let kinds = app
        .events_within(&id, std::time::Duration::from_millis(500))
        .await;
    assert!(
        kinds.iter().all(
            |k| ["accepted", "kiv_snapshot_taken", "revocation_requested"].contains(&k.as_str())
        ),
        "{kinds:?}"
    );
    assert!(
        app.kiv.contains(&holder(), &unit()),
        "employment touched before confirmation"
    );
    assert!(app.kiv.removal_keys().is_empty());
    assert_eq!(
        app.tjansteid.deliveries().get(&format!("{id}:report")),
        Some(&1)
    );

    // TjänsteID-service sees the report with the full personnummer it needs.
    let pending = RevocationServiceClient::new(app.channel("tjansteid").await)
        .list_pending_revocations(pb::ListPendingRevocationsRequest::default())
        .await
        .expect("pending")
        .into_inner()
        .revocations;
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0]
            .card_holder
            .as_ref()
            .expect("holder")
            .personal_identity_number,
        "191212121212"
    );

    let confirmed = confirm(&app, &id).await.expect("confirm");
    assert_eq!(confirmed.revocation_reference, "TJID-2026-0042");
    let done = app.wait_for(&id, pb::State::Completed).await;
    assert_eq!(done.revocation_reference, "TJID-2026-0042");
    assert!(!app.kiv.contains(&holder(), &unit()));
    assert_eq!(
        app.kiv.removal_keys().into_iter().collect::<Vec<_>>(),
        vec![format!("{id}:remove_kiv")]
    );
    // Confirming again is harmless.
    assert_eq!(
        confirm(&app, &id).await.expect("idempotent").state,
        pb::State::Completed as i32
    );

    // Both people are told, and neither notice carries the full personnummer.
    let sent = app.notifier.sent();
    let recipients: Vec<_> = sent.iter().map(|(_, n)| n.recipient).collect();
    assert_eq!(
        recipients,
        vec![Recipient::HeadOfOperations, Recipient::CardHolder]
    );
    for (_, n) in &sent {
        assert_eq!(n.holder_masked, "19121212-****");
        assert!(!format!("{n:?}").contains("1212121212"));
    }

    let kinds: Vec<String> = event_kinds(&app, &id)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    // The snapshot and the report go out side by side; the rest is strictly in order.
    let mut head: Vec<&str> = kinds[1..3].iter().map(String::as_str).collect();
    head.sort();
    assert_eq!(kinds[0], "accepted");
    assert_eq!(
        head,
        ["kiv_snapshot_taken", "revocation_requested"],
        "{kinds:?}"
    );
    assert_eq!(
        kinds[3..],
        [
            "revocation_confirmed",
            "head_notified",
            "notified",
            "kiv_removed"
        ]
    );
}

#[tokio::test]
async fn the_office_route_opens_the_task_only_after_confirmation() {
    let app = spawn_app_opts(Options::default()).await;
    let id = create_case(&app, pb::KivRemovalRoute::HealthCareOffice, "5200001").await;
    app.wait_for(&id, pb::State::RevocationRequested).await;
    let mut office = HealthCareOfficeServiceClient::new(app.channel("office").await);
    let tasks = office
        .list_kiv_removal_tasks(pb::ListKivRemovalTasksRequest::default())
        .await
        .expect("tasks")
        .into_inner()
        .tasks;
    assert!(
        tasks.is_empty(),
        "a task is visible before the revocation is confirmed"
    );
    let early = office
        .complete_kiv_removal_task(pb::CompleteKivRemovalTaskRequest {
            deregistration_id: id.clone(),
            comment: String::new(),
        })
        .await
        .expect_err("too early");
    assert_eq!(early.code(), Code::FailedPrecondition);
    assert_eq!(reason(&early), "REVOCATION_NOT_CONFIRMED");
    let kinds = event_kinds(&app, &id).await;
    assert!(
        kinds.iter().any(|(k, _)| k == "early_kiv_removal_refused"),
        "{kinds:?}"
    );

    confirm(&app, &id).await.expect("confirm");
    app.wait_for(&id, pb::State::KivRemovalPending).await;
    let tasks = office
        .list_kiv_removal_tasks(pb::ListKivRemovalTasksRequest::default())
        .await
        .expect("tasks")
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].deregistration_id, id);
    assert_eq!(
        tasks[0]
            .card_holder
            .as_ref()
            .expect("holder")
            .personal_identity_number,
        "191212121212"
    );
    let done = office
        .complete_kiv_removal_task(pb::CompleteKivRemovalTaskRequest {
            deregistration_id: id.clone(),
            comment: "removed in the KIV admin tool".into(),
        })
        .await
        .expect("complete")
        .into_inner()
        .deregistration
        .expect("case");
    assert_eq!(done.state, pb::State::Completed as i32);
    // The gateway itself never removed anything on this route.
    assert!(app.kiv.removal_keys().is_empty());
}

#[tokio::test]
async fn a_rejection_is_terminal_and_kiv_is_never_touched() {
    let app = spawn_app_opts(Options::default()).await;
    let id = create_case(&app, pb::KivRemovalRoute::CareProvider, "5300001").await;
    app.wait_for(&id, pb::State::RevocationRequested).await;
    let mut cancel = DeregistrationServiceClient::new(app.channel("provider-a").await);
    let late = cancel
        .cancel_deregistration(pb::CancelDeregistrationRequest {
            id: id.clone(),
            reason: String::new(),
        })
        .await
        .expect_err("late cancel");
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(reason(&late), "CANCEL_TOO_LATE");

    let mut r = RevocationServiceClient::new(app.channel("tjansteid").await);
    let rejected = r
        .reject_revocation(pb::RejectRevocationRequest {
            deregistration_id: id.clone(),
            reason: "card number does not match the holder".into(),
        })
        .await
        .expect("reject")
        .into_inner()
        .deregistration
        .expect("case");
    assert_eq!(rejected.state, pb::State::Rejected as i32);
    assert_eq!(
        rejected.state_reason,
        "card number does not match the holder"
    );
    assert_eq!(
        confirm(&app, &id).await.expect_err("settled").code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        reason(&confirm(&app, &id).await.expect_err("settled")),
        "OUTCOME_SETTLED"
    );
    // The stream ends at the terminal state; nothing may follow the rejection.
    let kinds = app
        .events_within(&id, std::time::Duration::from_millis(500))
        .await;
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("revocation_rejected"),
        "{kinds:?}"
    );
    assert!(app.kiv.contains(&holder(), &unit()));
    assert!(app.kiv.removal_keys().is_empty());
    assert!(app.notifier.sent().is_empty());
}

#[tokio::test]
async fn the_simulated_service_confirms_by_itself_and_watchers_see_every_state() {
    let app = spawn_app_opts(Options {
        confirm_after: Some(0.2),
        ..Options::default()
    })
    .await;
    let id = create_case(&app, pb::KivRemovalRoute::CareProvider, "5400001").await;
    // Two watchers from the start: both see the whole story, in order, and both streams end.
    let mut watchers = Vec::new();
    for _ in 0..2 {
        let mut c = app.provider("provider-a").await;
        let id = id.clone();
        watchers.push(tokio::spawn(async move {
            let mut s = c
                .watch_deregistration(pb::WatchDeregistrationRequest { id })
                .await
                .expect("watch")
                .into_inner();
            let mut states = Vec::new();
            while let Some(m) = s.message().await.expect("stream") {
                states.push(m.event.expect("event").state);
            }
            states
        }));
    }
    for w in watchers {
        let states = tokio::time::timeout(std::time::Duration::from_secs(10), w)
            .await
            .expect("stream ended")
            .expect("join");
        let mut distinct = states.clone();
        distinct.dedup();
        assert_eq!(
            distinct,
            [
                pb::State::Accepted as i32,
                pb::State::RevocationRequested as i32,
                pb::State::Revoked as i32,
                pb::State::KivRemovalPending as i32,
                pb::State::Completed as i32,
            ]
        );
    }
}

#[tokio::test]
async fn an_employment_removed_too_early_is_restored_then_removed_properly() {
    let app = spawn_app_opts(Options {
        reconcile_interval: 0.1,
        auto_employ: false,
        ..Options::default()
    })
    .await;
    app.kiv.employ(&holder(), &unit());
    let id = create_case(&app, pb::KivRemovalRoute::CareProvider, "5500001").await;
    app.wait_for(&id, pb::State::RevocationRequested).await;
    assert!(app.kiv.remove_out_of_band(&holder(), &unit()));
    let mut restored = false;
    for _ in 0..200 {
        if app.kiv.contains(&holder(), &unit()) {
            restored = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(restored, "the gateway did not restore the employment");
    crate::admin::wait_metric(&app, "etk_reconciliation_restores_total", |v| v >= 1.0).await;
    let kinds: Vec<String> = event_kinds(&app, &id)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        kinds.contains(&"kiv_removed_too_early".to_owned()),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"kiv_employment_restored".to_owned()),
        "{kinds:?}"
    );
    confirm(&app, &id).await.expect("confirm");
    app.wait_for(&id, pb::State::Completed).await;
    assert!(!app.kiv.contains(&holder(), &unit()));
}

#[tokio::test]
async fn flaky_registries_delay_but_lose_nothing() {
    let app = spawn_app_opts(Options {
        confirm_after: Some(0.0),
        failure_rate: 0.4,
        max_attempts: 50,
        ..Options::default()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            create_case(
                &app,
                pb::KivRemovalRoute::CareProvider,
                &format!("560000{i}"),
            )
            .await,
        );
    }
    for id in &ids {
        app.wait_for(id, pb::State::Completed).await;
        // Retries reuse the step's key: one report key per case, however many attempts.
        let d = app.tjansteid.deliveries();
        assert!(
            d.keys()
                .filter(|k| k.starts_with(id.as_str()))
                .all(|k| k == &format!("{id}:report"))
        );
        // Each person is told once: a failure to reach one never repeats the other's notice.
        let sent: Vec<String> = app
            .notifier
            .sent()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(id.as_str()))
            .collect();
        assert_eq!(
            sent,
            vec![format!("{id}:notify_head"), format!("{id}:notify_holder")]
        );
    }
}

#[tokio::test]
async fn a_permanent_refusal_needs_attention_and_an_operator_can_resume() {
    let app = spawn_app_opts(Options::default()).await;
    app.tjansteid.set_refusing(true);
    let id = create_case(&app, pb::KivRemovalRoute::CareProvider, "5700001").await;
    let parked = app.wait_for(&id, pb::State::NeedsAttention).await;
    assert!(
        parked.state_reason.contains("refused"),
        "{}",
        parked.state_reason
    );
    let mut ops = OperationsServiceClient::new(app.channel("operator").await);
    let listed = ops
        .list_attention_cases(pb::ListAttentionCasesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .deregistrations;
    assert_eq!(
        listed.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
        vec![id.clone()]
    );
    // Operators see no names (docs/operations.md).
    let masked = |d: &pb::Deregistration| {
        let h = d.card_holder.clone().unwrap_or_default();
        let r = d.reported_by.clone().unwrap_or_default();
        (
            h.full_name,
            h.personal_identity_number,
            r.full_name,
            r.email,
        )
    };
    let expected = (
        "***".to_owned(),
        "19121212-****".to_owned(),
        "***".to_owned(),
        "***".to_owned(),
    );
    assert_eq!(masked(&listed[0]), expected);

    app.tjansteid.set_refusing(false);
    let retried = ops
        .retry_deregistration(pb::RetryDeregistrationRequest { id: id.clone() })
        .await
        .expect("retry")
        .into_inner()
        .deregistration
        .expect("case");
    assert_eq!(masked(&retried), expected);
    app.wait_for(&id, pb::State::RevocationRequested).await;
    // The retried report carries the same key as the refused one.
    assert_eq!(
        app.tjansteid.deliveries().get(&format!("{id}:report")),
        Some(&1)
    );

    let err = ops
        .resolve_deregistration(pb::ResolveDeregistrationRequest {
            id: id.clone(),
            resolution: pb::Resolution::Cancelled as i32,
            justification: String::new(),
        })
        .await
        .expect_err("needs justification and attention");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "VALIDATION_FAILED");
}

#[tokio::test]
async fn no_outcome_in_time_escalates_with_reminders_and_a_late_confirmation_still_counts() {
    let app = spawn_app_opts(Options {
        remind_after: 0.2,
        escalate_after: 0.7,
        ..Options::default()
    })
    .await;
    let id = create_case(&app, pb::KivRemovalRoute::CareProvider, "5800001").await;
    let parked = app.wait_for(&id, pb::State::NeedsAttention).await;
    assert!(
        parked.state_reason.contains("no outcome"),
        "{}",
        parked.state_reason
    );
    // TjänsteID-service still sees the overdue case among those awaiting its answer.
    let pending = RevocationServiceClient::new(app.channel("tjansteid").await)
        .list_pending_revocations(pb::ListPendingRevocationsRequest::default())
        .await
        .expect("pending")
        .into_inner()
        .revocations;
    assert_eq!(
        pending
            .iter()
            .map(|p| p.deregistration_id.clone())
            .collect::<Vec<_>>(),
        vec![id.clone()]
    );
    let reminder = format!("{id}:remind:1:");
    assert!(
        app.tjansteid
            .deliveries()
            .keys()
            .any(|k| k.starts_with(&reminder)),
        "no reminder was sent"
    );
    assert!(app.kiv.contains(&holder(), &unit()));
    confirm(&app, &id).await.expect("late confirmation");
    app.wait_for(&id, pb::State::Completed).await;
    // The same confirmation again is fine; a different reference is not.
    confirm(&app, &id).await.expect("repeat");
    let other = RevocationServiceClient::new(app.channel("tjansteid").await)
        .confirm_revocation(pb::ConfirmRevocationRequest {
            deregistration_id: id.clone(),
            revocation_reference: "TJID-OTHER".into(),
            revoke_time: None,
            ..Default::default()
        })
        .await
        .expect_err("conflicting reference");
    assert_eq!(other.code(), Code::FailedPrecondition);
    assert_eq!(reason(&other), "CONFLICTING_REVOCATION_REFERENCE");
}

#[tokio::test]
async fn an_operator_retry_of_an_escalated_case_starts_reminding_again() {
    let app = spawn_app_opts(Options {
        remind_after: 0.2,
        escalate_after: 1.0,
        ..Options::default()
    })
    .await;
    let id = create_case(&app, pb::KivRemovalRoute::CareProvider, "5900001").await;
    app.wait_for(&id, pb::State::NeedsAttention).await;
    let reminders = |app: &TestApp| {
        app.tjansteid
            .deliveries()
            .keys()
            .filter(|k| k.starts_with(&format!("{id}:remind:")))
            .count()
    };
    let before = reminders(&app);
    let mut ops = OperationsServiceClient::new(app.channel("operator").await);
    ops.retry_deregistration(pb::RetryDeregistrationRequest { id: id.clone() })
        .await
        .expect("retry");
    app.wait_for(&id, pb::State::NeedsAttention).await;
    assert!(reminders(&app) > before, "no reminder in the new round");
    // A case an operator closed without a confirmation cannot take one afterwards.
    let resolved = ops
        .resolve_deregistration(pb::ResolveDeregistrationRequest {
            id: id.clone(),
            resolution: pb::Resolution::Completed as i32,
            justification: "revoked by phone, reference lost".into(),
        })
        .await
        .expect("resolve")
        .into_inner()
        .deregistration
        .expect("case");
    // Operators see no names.
    let holder = resolved.card_holder.expect("holder");
    assert_eq!(
        (
            holder.full_name.as_str(),
            holder.personal_identity_number.as_str()
        ),
        ("***", "19121212-****")
    );
    assert_eq!(
        confirm(&app, &id).await.expect_err("closed").code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        reason(&confirm(&app, &id).await.expect_err("closed")),
        "OUTCOME_SETTLED"
    );
}

#[tokio::test]
async fn of_two_conflicting_confirmations_one_wins() {
    let app = spawn_app_opts(Options::default()).await;
    let id = create_case(&app, pb::KivRemovalRoute::HealthCareOffice, "6100001").await;
    app.wait_for(&id, pb::State::RevocationRequested).await;
    let mut tasks = Vec::new();
    for reference in ["TJID-A", "TJID-B"] {
        let mut r = RevocationServiceClient::new(app.channel("tjansteid").await);
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            r.confirm_revocation(pb::ConfirmRevocationRequest {
                deregistration_id: id,
                revocation_reference: reference.into(),
                revoke_time: None,
                ..Default::default()
            })
            .await
            .map(|_| reference)
            .map_err(|e| e.code())
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        match t.await.expect("join") {
            Ok(r) => won.push(r),
            Err(code) => assert_eq!(code, Code::FailedPrecondition),
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(app.get(&id).await.revocation_reference, won[0]);
}

#[tokio::test]
async fn references_carrying_an_identity_number_are_refused() {
    let app = spawn_app_opts(Options::default()).await;
    let id = create_case(&app, pb::KivRemovalRoute::CareProvider, "6200001").await;
    app.wait_for(&id, pb::State::RevocationRequested).await;
    let mut r = RevocationServiceClient::new(app.channel("tjansteid").await);
    for reference in [
        "TJ-1912-1212-1212",
        "R-19121212.1212",
        "R_121212_1212",
        "19121212/1212",
        "R-1912-12-12-1212",
    ] {
        let err = r
            .confirm_revocation(pb::ConfirmRevocationRequest {
                deregistration_id: id.clone(),
                revocation_reference: reference.into(),
                revoke_time: None,
                ..Default::default()
            })
            .await
            .expect_err(reference);
        assert_eq!(err.code(), Code::InvalidArgument, "{reference}");
        assert_eq!(reason(&err), "VALIDATION_FAILED");
    }
    // Long ticket numbers that are not identity numbers are fine.
    confirm(&app, &id).await.expect("a plain reference");
    r.confirm_revocation(pb::ConfirmRevocationRequest {
        deregistration_id: id.clone(),
        revocation_reference: "TJID-2026-0042".into(),
        revoke_time: None,
        ..Default::default()
    })
    .await
    .expect("same reference again");
    let other = create_case(&app, pb::KivRemovalRoute::CareProvider, "6200002").await;
    app.wait_for(&other, pb::State::RevocationRequested).await;
    r.confirm_revocation(pb::ConfirmRevocationRequest {
        deregistration_id: other,
        revocation_reference: "INC0012345678".into(),
        revoke_time: None,
        ..Default::default()
    })
    .await
    .expect("a long ticket number");
}

/// The engine's own check (`saga::step_applies`), behind the saga and the store: a KIV removal
/// planted in the outbox for a case that is not confirmed (a bug, a hand edit) is retired
/// without touching KIV.
#[tokio::test]
async fn a_planted_kiv_removal_for_an_unconfirmed_case_is_skipped() {
    use sea_orm::{ConnectionTrait, Database};
    let app = spawn_app_opts(Options::default()).await;
    let id = create_case(&app, pb::KivRemovalRoute::CareProvider, "5900001").await;
    app.wait_for(&id, pb::State::RevocationRequested).await;
    let db = Database::connect(TestDb::sqlite(app.dir.path()).url)
        .await
        .expect("raw");
    let now = etjanstekort_gateway::clock::now().0;
    let key = format!("{id}:remove_kiv");
    db.execute_unprepared(&format!(
        "INSERT INTO effects (key, case_id, step, n, due_at, status, attempts, created_at, \
         updated_at) VALUES ('{key}', '{id}', 'remove_kiv', 0, {now}, 'pending', 0, {now}, {now})"
    ))
    .await
    .expect("plant a removal");
    // Watch the planted effect until the engine has dealt with it (bounded).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("SELECT status FROM effects WHERE key = '{key}'"),
            ))
            .await
            .expect("query")
            .expect("row");
        let status: String = row.try_get("", "status").expect("status");
        if status != "pending" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the engine never took up the planted removal"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(app.kiv.contains(&holder(), &unit()), "KIV touched");
    assert!(app.kiv.removal_keys().is_empty());
}

/// Behind the saga: a row that claims `KIV_REMOVAL_PENDING` on the office route without a
/// recorded confirmation (a bug, a hand edit) is neither listed as the office's task nor
/// completable.
#[tokio::test]
async fn the_office_gets_no_task_without_a_recorded_confirmation() {
    use sea_orm::{ConnectionTrait, Database};
    let app = spawn_app_opts(Options {
        engine: false,
        ..Options::default()
    })
    .await;
    let id = create_case(&app, pb::KivRemovalRoute::HealthCareOffice, "5900002").await;
    let db = Database::connect(TestDb::sqlite(app.dir.path()).url)
        .await
        .expect("raw");
    db.execute_unprepared(&format!(
        "UPDATE cases SET state = 'kiv_removal_pending', head_notified_at = 1 WHERE id = '{id}'"
    ))
    .await
    .expect("a row that skipped the confirmation");
    let mut office = HealthCareOfficeServiceClient::new(app.channel("office").await);
    let tasks = office
        .list_kiv_removal_tasks(pb::ListKivRemovalTasksRequest::default())
        .await
        .expect("tasks")
        .into_inner()
        .tasks;
    assert!(tasks.is_empty(), "{tasks:?}");
    let early = office
        .complete_kiv_removal_task(pb::CompleteKivRemovalTaskRequest {
            deregistration_id: id.clone(),
            comment: String::new(),
        })
        .await
        .expect_err("not confirmed");
    assert_eq!(early.code(), Code::FailedPrecondition);
    assert_eq!(reason(&early), "REVOCATION_NOT_CONFIRMED");
}

/// A TjänsteID-service whose `report` never returns: the step hangs mid-call until its task is
/// cut off. Its future, when dropped, takes a while to let go (as a connection being torn
/// down would) and then records that it is gone.
#[derive(Debug, Default)]
struct HangingDesk {
    called: tokio::sync::Notify,
    dropped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Dropped with the hanging call's future.
struct CallGone(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for CallGone {
    fn drop(&mut self) {
        std::thread::sleep(std::time::Duration::from_millis(500));
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl etjanstekort_gateway::connectors::TjansteId for HangingDesk {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn report(
        &self,
        _key: &str,
        _report: &etjanstekort_gateway::connectors::CutCardReport,
    ) -> Result<(), etjanstekort_gateway::connectors::ConnectorError> {
        let _gone = CallGone(self.dropped.clone());
        self.called.notify_one();
        std::future::pending().await
    }

    async fn remind(
        &self,
        _key: &str,
        _report: &etjanstekort_gateway::connectors::CutCardReport,
        _n: u32,
    ) -> Result<(), etjanstekort_gateway::connectors::ConnectorError> {
        Ok(())
    }

    fn polls(&self) -> bool {
        false
    }

    async fn fetch_outcome(
        &self,
        _case_id: &etjanstekort_gateway::domain::CaseId,
        _reported_at: etjanstekort_gateway::domain::Timestamp,
    ) -> Result<
        etjanstekort_gateway::connectors::RevocationOutcome,
        etjanstekort_gateway::connectors::ConnectorError,
    > {
        Ok(etjanstekort_gateway::connectors::RevocationOutcome::Pending)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_shutdown_a_cut_off_step_lets_go_before_its_lease_is_released() {
    use etjanstekort_gateway::connectors::Connectors;
    use etjanstekort_gateway::connectors::simulated::{Faults, LogNotifier, SimulatedKiv};
    use sea_orm::{ConnectionTrait, Database};
    use std::sync::Arc;
    let desk = Arc::new(HangingDesk::default());
    let connectors = Connectors {
        tjansteid: desk.clone(),
        kiv: Arc::new(SimulatedKiv::new(true, Faults::default(), None)),
        notifier: Arc::new(LogNotifier::new(Faults::default(), None)),
        gateway_removes_kiv: true,
        revocation: None,
    };
    let mut app = spawn_app_opts(Options {
        connectors: Some(connectors),
        settings: vec![
            ("server.shutdown_grace", "200ms".into()),
            ("engine.lease", "10m".into()),
        ],
        ..Options::default()
    })
    .await;
    let called = desk.called.notified();
    let _id = create_case(&app, pb::KivRemovalRoute::CareProvider, "5900001").await;
    called.await;

    let db = Database::connect(format!(
        "sqlite://{}",
        app.dir.path().join("test.sqlite").display()
    ))
    .await
    .expect("open the test database");
    let held = async || {
        db.query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT count(*) AS n FROM effects WHERE lease_owner IS NOT NULL",
        ))
        .await
        .expect("query")
        .expect("row")
        .try_get::<i64>("", "n")
        .expect("n")
    };
    assert!(held().await > 0, "the hanging report step holds its lease");

    // The grace runs out with the step still mid-call: it is cut off, and its lease given up —
    // but only once the call is gone, never while it may still act.
    app.shutdown();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while held().await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease was never released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        desk.dropped.load(std::sync::atomic::Ordering::SeqCst),
        "the lease was released while the cut-off step's call still existed"
    );
}
