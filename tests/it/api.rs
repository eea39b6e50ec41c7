//! DeregistrationService behaviour as a care-provider system sees it.

use std::collections::HashSet;

use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::domain::Personnummer;
use tonic::Code;

use crate::helpers::{
    TestDb, create, reason, reasons, report, spawn_app, spawn_app_with, unit_a, unit_b, violations,
};

const PNR_FIELD: &str = "deregistration.card_holder.personal_identity_number";

#[tokio::test]
async fn a_valid_report_is_stored_and_shown_masked() {
    let app = spawn_app().await;
    let mut client = app.provider("provider-a").await;
    let created = client
        .create_deregistration(create(
            "r-1",
            report(&unit_a(), "19121212-1212", "1234 5678-9012"),
        ))
        .await
        .expect("created")
        .into_inner()
        .deregistration
        .expect("case");
    assert_eq!(created.state, pb::State::Accepted as i32);
    assert_eq!(created.card_number, "123456789012");
    assert_eq!(created.care_provider_hsa_id, "SE1655999991-E000000000001");
    let holder = created.card_holder.clone().expect("holder");
    assert_eq!(holder.personal_identity_number, "19121212-****");
    assert!(created.create_time.is_some() && !created.id.is_empty());

    let got = client
        .get_deregistration(pb::GetDeregistrationRequest {
            id: created.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .deregistration
        .expect("case");
    assert_eq!(got, created);
}

#[tokio::test]
async fn every_accepted_identity_form_is_stored_canonically() {
    let app = spawn_app().await;
    let mut client = app.provider("provider-a").await;
    let samordning = Personnummer::synthetic(1985, 3, 14 + 60, 271)
        .expect("valid")
        .expose_digits();
    let old = Personnummer::synthetic(1920, 6, 1, 383)
        .expect("valid")
        .expose_digits();
    let forms = [
        ("19121212-1212", "19121212-****"),
        ("191212121212", "19121212-****"),
        ("121212-1212", "20121212-****"),
        ("1212121212", "20121212-****"),
        (samordning.as_str(), "19850374-****"),
        (&format!("{}+{}", &old[2..8], &old[8..]), "19200601-****"),
    ];
    for (i, (input, masked)) in forms.iter().enumerate() {
        let case = client
            .create_deregistration(create(
                &format!("form-{i}"),
                report(&unit_a(), input, &format!("90000{i}")),
            ))
            .await
            .unwrap_or_else(|e| panic!("form {i} refused: {e:?}"))
            .into_inner()
            .deregistration
            .expect("case");
        assert_eq!(
            case.card_holder.expect("holder").personal_identity_number,
            *masked
        );
    }
}

#[tokio::test]
async fn invalid_identities_are_refused_with_the_rule_and_nothing_is_stored() {
    let app = spawn_app().await;
    let mut client = app.provider("provider-a").await;
    let zero = "121212-0008"; // birth number 000, check digit valid
    let cases = [
        ("19121212-1213", "check digit", "CHECK_DIGIT"),
        ("19810829M071", "reserve numbers", "RESERVE_NUMBER"),
        ("810829-M071", "reserve numbers", "RESERVE_NUMBER"),
        ("19121312-1212", "does not exist", "INVALID_DATE"),
        ("19121292-1212", "does not exist", "INVALID_DATE"),
        ("20991212-1212", "future", "FUTURE_DATE"),
        ("17991212-1212", "1880", "IMPLAUSIBLE_YEAR"),
        ("19121212+1212", "must be", "FORMAT"),
        ("12121212", "must be", "FORMAT"),
        ("", "is required", "REQUIRED"),
        (zero, "000", "BIRTH_NUMBER_ZERO"),
    ];
    for (input, rule, code) in cases {
        let err = client
            .create_deregistration(create("", report(&unit_a(), input, "11112222")))
            .await
            .expect_err(input);
        assert_eq!(err.code(), Code::InvalidArgument, "{input}");
        assert_eq!(reason(&err), "VALIDATION_FAILED");
        let v = violations(&err);
        let description = v.get(PNR_FIELD).unwrap_or_else(|| panic!("{input}: {v:?}"));
        assert!(description.contains(rule), "{input}: {description}");
        assert_eq!(
            reasons(&err).get(PNR_FIELD).map(String::as_str),
            Some(code),
            "{input}"
        );
        let digits: String = input.chars().filter(char::is_ascii_digit).collect();
        if digits.len() >= 6 {
            assert!(
                !err.message().contains(&digits) && !err.message().contains(input),
                "{input} echoed"
            );
            assert!(!description.contains(&digits), "{input} echoed in details");
        }
    }
    let listed = client
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.deregistrations.is_empty());
}

#[tokio::test]
async fn all_violations_are_reported_in_one_answer() {
    let app = spawn_app().await;
    let mut client = app.provider("provider-a").await;
    let mut d = report("SE2321000132-S1", "19121212-1212", "12ab");
    d.card_cut_across_chip = false;
    d.reason = pb::Reason::Unspecified as i32;
    d.kiv_removal_route = 7;
    d.card_received_time = Some(prost_types::Timestamp {
        seconds: 4_000_000_000,
        nanos: 0,
    });
    d.reported_by = Some(pb::Reporter {
        hsa_id: "SE2321000131-Ä1".into(),
        full_name: String::new(),
        email: "not-an-address".into(),
    });
    let err = client
        .create_deregistration(create("bad id!", d))
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "VALIDATION_FAILED");
    let v = violations(&err);
    for (field, rule) in [
        ("request_id", "1 to 64"),
        ("deregistration.care_unit_hsa_id", "check digit"),
        ("deregistration.card_number", "only digits"),
        ("deregistration.card_cut_across_chip", "must be true"),
        ("deregistration.reason", "is required"),
        ("deregistration.kiv_removal_route", "is required"),
        ("deregistration.card_received_time", "future"),
        ("deregistration.reported_by.hsa_id", "A-Z"),
        ("deregistration.reported_by.full_name", "is required"),
        ("deregistration.reported_by.email", "address"),
    ] {
        let got = v
            .get(field)
            .unwrap_or_else(|| panic!("no violation for {field}: {v:?}"));
        assert!(got.contains(rule), "{field}: {got}");
    }
    // Identity numbers typed into the wrong field are refused there too.
    let mut d = report(&unit_a(), "19121212-1212", "191212121212");
    d.card_holder.as_mut().expect("holder").full_name = "Kalle 19121212-1212".into();
    d.card_holder.as_mut().expect("holder").email = "191212121212@example.se".into();
    let err = client
        .create_deregistration(create("19121212-1212", d))
        .await
        .expect_err("misplaced");
    let r = reasons(&err);
    for field in [
        "request_id",
        "deregistration.card_number",
        "deregistration.card_holder.full_name",
        "deregistration.card_holder.email",
    ] {
        assert_eq!(
            r.get(field).map(String::as_str),
            Some("CONTAINS_IDENTITY_NUMBER"),
            "{field}: {r:?}"
        );
    }
    assert!(!err.message().contains("1212-1212") && !err.message().contains("191212121212"));

    let missing = client
        .create_deregistration(pb::CreateDeregistrationRequest::default())
        .await
        .expect_err("missing");
    assert!(violations(&missing).contains_key("deregistration"));
}

#[tokio::test]
async fn retries_replay_and_reused_request_ids_conflict() {
    let app = spawn_app().await;
    let mut client = app.provider("provider-a").await;
    let req = create("retry-1", report(&unit_a(), "19121212-1212", "55556666"));
    let first = client
        .create_deregistration(req.clone())
        .await
        .expect("first")
        .into_inner();
    let again = client
        .create_deregistration(req.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first, again);

    let mut other = req.clone();
    other.deregistration.as_mut().expect("d").card_number = "55556667".into();
    let err = client
        .create_deregistration(other)
        .await
        .expect_err("reused id");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(reason(&err), "DUPLICATE_REQUEST_ID");
    assert!(err.message().contains("request_id"));

    // Another request for the same card while the first case is active.
    let err = client
        .create_deregistration(create(
            "retry-2",
            report(&unit_a(), "19121212-1212", "5555-6666"),
        ))
        .await
        .expect_err("active card");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(reason(&err), "CARD_HAS_ACTIVE_CASE");
    assert!(err.message().contains("card_number"));

    // Another provider's request_id namespace is its own, but the card is still taken.
    let mut b = app.provider("provider-b").await;
    let err = b
        .create_deregistration(create(
            "retry-1",
            report(&unit_b(), "19121212-1212", "55556666"),
        ))
        .await
        .expect_err("card taken");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(reason(&err), "CARD_HAS_ACTIVE_CASE");
}

async fn concurrent_creates_are_decided_by_the_database(app: crate::helpers::TestApp) {
    // Same request_id, many at once: one case, every caller sees it.
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let mut c = app.provider("provider-a").await;
        tasks.push(tokio::spawn(async move {
            c.create_deregistration(create(
                "same",
                report(&unit_a(), "19121212-1212", "777000111"),
            ))
            .await
            .map(|r| r.into_inner().deregistration.expect("case").id)
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.expect("join").expect("created or replayed"));
    }
    assert_eq!(ids.len(), 1, "{ids:?}");

    // Different request_ids for one card, many at once: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut c = app.provider("provider-a").await;
        tasks.push(tokio::spawn(async move {
            c.create_deregistration(create(
                &format!("race-{i}"),
                report(&unit_a(), "19121212-1212", "888000111"),
            ))
            .await
            .map_err(|e| e.code())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => ok += 1,
            Err(code) => assert_eq!(code, Code::AlreadyExists),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn concurrent_creates_on_sqlite() {
    concurrent_creates_are_decided_by_the_database(spawn_app().await).await;
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn concurrent_creates_on_postgres() {
    let db = TestDb::postgres().await;
    concurrent_creates_are_decided_by_the_database(spawn_app_with(Some(db)).await).await;
}

#[tokio::test]
async fn listing_pages_through_own_cases_with_filters() {
    let app = spawn_app().await;
    let mut a = app.provider("provider-a").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let c = a
            .create_deregistration(create(
                &format!("p-{i}"),
                report(&unit_a(), "19121212-1212", &format!("10000{i}")),
            ))
            .await
            .expect("create")
            .into_inner()
            .deregistration
            .expect("case");
        ids.push(c.id);
    }
    a.cancel_deregistration(pb::CancelDeregistrationRequest {
        id: ids[1].clone(),
        reason: String::new(),
    })
    .await
    .expect("cancel");
    let mut b = app.provider("provider-b").await;
    b.create_deregistration(create("b-1", report(&unit_b(), "19121212-1212", "2000001")))
        .await
        .expect("b create");

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = a
            .list_deregistrations(pb::ListDeregistrationsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        assert!(page.deregistrations.len() <= 2);
        seen.extend(page.deregistrations.into_iter().map(|d| d.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids, "own cases, in creation order, none twice");
    assert_eq!(pages, 3);

    let accepted = a
        .list_deregistrations(pb::ListDeregistrationsRequest {
            state: pb::State::Accepted as i32,
            care_unit_hsa_id: unit_a(),
            ..Default::default()
        })
        .await
        .expect("filtered")
        .into_inner();
    assert_eq!(accepted.deregistrations.len(), 4);

    let huge = a
        .list_deregistrations(pb::ListDeregistrationsRequest {
            page_size: 100_000,
            ..Default::default()
        })
        .await
        .expect("capped")
        .into_inner();
    assert_eq!(huge.deregistrations.len(), 5);

    for (token, filters_state) in [("garbage!", 0), ("cDF8eHx5", 0)] {
        let err = a
            .list_deregistrations(pb::ListDeregistrationsRequest {
                page_token: token.into(),
                state: filters_state,
                ..Default::default()
            })
            .await
            .expect_err("bad token");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(reason(&err), "VALIDATION_FAILED");
        assert!(violations(&err).contains_key("page_token"));
    }
    // A real token used with other filters.
    let first = a
        .list_deregistrations(pb::ListDeregistrationsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("first")
        .into_inner();
    let err = a
        .list_deregistrations(pb::ListDeregistrationsRequest {
            page_size: 1,
            page_token: first.next_page_token,
            state: pb::State::Cancelled as i32,
            ..Default::default()
        })
        .await
        .expect_err("mismatched filters");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "VALIDATION_FAILED");

    let err = a
        .list_deregistrations(pb::ListDeregistrationsRequest {
            care_unit_hsa_id: unit_b(),
            ..Default::default()
        })
        .await
        .expect_err("foreign unit");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(reason(&err), "UNIT_NOT_GRANTED");
    let err = a
        .list_deregistrations(pb::ListDeregistrationsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .expect_err("negative size");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(&err), "VALIDATION_FAILED");
}

#[tokio::test]
async fn cancel_frees_the_card_and_is_idempotent() {
    let app = spawn_app().await;
    let mut a = app.provider("provider-a").await;
    let case = a
        .create_deregistration(create(
            "c-1",
            report(&unit_a(), "19121212-1212", "31313131"),
        ))
        .await
        .expect("create")
        .into_inner()
        .deregistration
        .expect("case");
    let cancel = pb::CancelDeregistrationRequest {
        id: case.id.clone(),
        reason: "reported by mistake".into(),
    };
    let mut b = app.provider("provider-b").await;
    assert_eq!(
        b.cancel_deregistration(cancel.clone())
            .await
            .expect_err("foreign")
            .code(),
        Code::NotFound
    );
    for _ in 0..2 {
        let c = a
            .cancel_deregistration(cancel.clone())
            .await
            .expect("cancel")
            .into_inner();
        let c = c.deregistration.expect("case");
        assert_eq!(c.state, pb::State::Cancelled as i32);
        assert_eq!(c.state_reason, "reported by mistake");
    }
    // The card can be reported again.
    a.create_deregistration(create(
        "c-2",
        report(&unit_a(), "19121212-1212", "31313131"),
    ))
    .await
    .expect("new case for the freed card");

    let leak = a
        .cancel_deregistration(pb::CancelDeregistrationRequest {
            id: case.id.clone(),
            reason: "holder 19121212-1212 asked".into(),
        })
        .await
        .expect_err("personnummer in free text");
    assert_eq!(leak.code(), Code::InvalidArgument);
    assert_eq!(reason(&leak), "VALIDATION_FAILED");
    assert!(!leak.message().contains("1212-1212"));
    let missing = a
        .cancel_deregistration(pb::CancelDeregistrationRequest {
            id: "0190c5a0-0000-7000-8000-000000000000".into(),
            reason: String::new(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(reason(&missing), "CASE_NOT_FOUND");
    let malformed = a
        .get_deregistration(pb::GetDeregistrationRequest { id: "nope".into() })
        .await
        .expect_err("malformed id");
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert_eq!(reason(&malformed), "VALIDATION_FAILED");
}

#[cfg_attr(
    not(etk_postgres),
    ignore = "needs PostgreSQL: set ETK_TEST_POSTGRES_URL (see README)"
)]
#[tokio::test]
async fn a_store_outage_is_unavailable_and_a_retry_stores_once() {
    let db = TestDb::postgres().await;
    use sea_orm::{ConnectionTrait, Database};
    let admin_url = std::env::var("ETK_TEST_POSTGRES_URL").expect("set");
    let name = db.name.clone();
    let app = spawn_app_with(Some(db)).await;
    let mut a = app.provider("provider-a").await;
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
    let req = create("outage-1", report(&unit_a(), "19121212-1212", "66600066"));
    let err = a
        .create_deregistration(req.clone())
        .await
        .expect_err("store down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(reason(&err), "STORE_UNAVAILABLE");
    let retry = tonic_types::StatusExt::get_details_retry_info(&err).expect("RetryInfo");
    assert!(retry.retry_delay.is_some_and(|d| !d.is_zero()), "{retry:?}");
    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .expect("unblock");
    let mut stored = None;
    for _ in 0..50 {
        match a.create_deregistration(req.clone()).await {
            Ok(r) => {
                stored = r.into_inner().deregistration;
                break;
            }
            Err(e) if e.code() == Code::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(stored.is_some(), "the store came back");
    let again = a
        .create_deregistration(req)
        .await
        .expect("replay")
        .into_inner()
        .deregistration;
    // The engine may have moved the case on meanwhile; it is the same case.
    assert_eq!(again.map(|d| d.id), stored.map(|d| d.id));
    let all = a
        .list_deregistrations(pb::ListDeregistrationsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.deregistrations.len(), 1);
}

fn at(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

#[tokio::test]
async fn impossible_card_received_times_are_refused_with_the_rule() {
    let app = spawn_app().await;
    let mut client = app.provider("provider-a").await;
    let now = etjanstekort_gateway::clock::now().unix_seconds();
    // Born 2010-06-15.
    let young = Personnummer::synthetic(2010, 6, 15, 123)
        .expect("valid")
        .expose_digits();
    let field = "deregistration.card_received_time";
    for (pnr, time, code) in [
        ("19121212-1212", at(now + 3600, 0), "IN_FUTURE"),
        ("19121212-1212", at(946_684_799, 0), "BEFORE_2000"),
        (young.as_str(), at(1_276_559_999, 0), "BEFORE_BIRTH"),
        ("19121212-1212", at(253_402_300_800, 0), "INVALID_TIMESTAMP"),
        ("19121212-1212", at(-62_135_596_801, 0), "INVALID_TIMESTAMP"),
        ("19121212-1212", at(1_790_000_000, -1), "INVALID_TIMESTAMP"),
        (
            "19121212-1212",
            at(1_790_000_000, 1_000_000_000),
            "INVALID_TIMESTAMP",
        ),
    ] {
        let mut d = report(&unit_a(), pnr, "424242");
        d.card_received_time = time;
        let err = client
            .create_deregistration(create("", d))
            .await
            .expect_err(code);
        assert_eq!(err.code(), Code::InvalidArgument, "{code}");
        assert_eq!(reason(&err), "VALIDATION_FAILED");
        assert_eq!(reasons(&err).get(field).map(String::as_str), Some(code));
    }
    // The boundaries themselves are fine: received on the birthday, and at 2000-01-01.
    for (pnr, seconds, card) in [
        (young.as_str(), 1_276_560_000, "434343"),
        ("19121212-1212", 946_684_800, "444444"),
    ] {
        let mut d = report(&unit_a(), pnr, card);
        d.card_received_time = at(seconds, 999_999_999);
        client
            .create_deregistration(create("", d))
            .await
            .expect("boundary accepted");
    }
}

#[tokio::test]
async fn free_text_fields_refuse_identity_numbers_however_written() {
    use pb::revocation_service_client::RevocationServiceClient;
    let app = spawn_app().await;
    let mut client = app.provider("provider-a").await;

    // Names: identity numbers, invisible and reordering characters, stacked marks.
    let name_field = "deregistration.card_holder.full_name";
    for (name, code) in [
        ("Tolvan 1912x12x12x1212", "CONTAINS_IDENTITY_NUMBER"),
        ("Tolvan\u{202E}nosslovloT", "INVISIBLE_CHARACTER"),
        ("Tol\u{200B}van", "INVISIBLE_CHARACTER"),
        ("\u{FEFF}Tolvan", "INVISIBLE_CHARACTER"),
        ("Tolvan\u{2028}Tolvansson", "INVISIBLE_CHARACTER"),
        ("Tolvan q\u{0300}\u{0301}\u{0302}", "COMBINING_MARKS"),
    ] {
        let mut d = report(&unit_a(), "19121212-1212", "454545");
        d.card_holder.as_mut().expect("holder").full_name = name.into();
        let err = client
            .create_deregistration(create("", d))
            .await
            .expect_err(code);
        assert_eq!(
            reasons(&err).get(name_field).map(String::as_str),
            Some(code),
            "{name:?}"
        );
    }
    // Names are stored in NFC.
    let mut d = report(&unit_a(), "19121212-1212", "464646");
    d.card_holder.as_mut().expect("holder").full_name = "A\u{030A}sa O\u{0308}berg".into();
    let case = client
        .create_deregistration(create("0198a6f2-7c3e-7d41-9f0e-3b2d5c6a8e10", d))
        .await
        .expect("a UUID request id and a decomposed name")
        .into_inner()
        .deregistration
        .expect("case");
    assert_eq!(case.card_holder.expect("holder").full_name, "Åsa Öberg");

    for sep in ["=", ":", ",", ".", "_", "x", " ", "--"] {
        let hidden = format!("191212{sep}12{sep}1212.0");
        let err = client
            .cancel_deregistration(pb::CancelDeregistrationRequest {
                id: case.id.clone(),
                reason: format!("see {hidden}"),
            })
            .await
            .expect_err("reason");
        assert_eq!(
            reasons(&err).get("reason").map(String::as_str),
            Some("CONTAINS_IDENTITY_NUMBER"),
            "{hidden}"
        );
        assert!(!err.message().contains("1212"), "echoed: {}", err.message());
    }

    let mut tjansteid = RevocationServiceClient::new(app.channel("tjansteid").await);
    let err = tjansteid
        .confirm_revocation(pb::ConfirmRevocationRequest {
            deregistration_id: case.id.clone(),
            revocation_reference: "TJID-1191212121212".into(),
            revoke_time: None,
            ..Default::default()
        })
        .await
        .expect_err("reference");
    assert_eq!(
        reasons(&err)
            .get("revocation_reference")
            .map(String::as_str),
        Some("CONTAINS_IDENTITY_NUMBER")
    );
}

#[tokio::test]
async fn a_revoke_time_must_lie_between_the_report_and_now() {
    use pb::revocation_service_client::RevocationServiceClient;
    let app = spawn_app().await;
    let id = app
        .create_case("rt-1", report(&unit_a(), "19121212-1212", "474747"))
        .await;
    let created = app.get(&id).await.create_time.expect("created");
    let now = etjanstekort_gateway::clock::now().unix_seconds();
    let mut tjansteid = RevocationServiceClient::new(app.channel("tjansteid").await);
    for (time, code) in [
        (at(created.seconds - 1, created.nanos), "BEFORE_REPORTED"),
        (at(now + 3600, 0), "IN_FUTURE"),
        (at(0, -5), "INVALID_TIMESTAMP"),
    ] {
        let err = tjansteid
            .confirm_revocation(pb::ConfirmRevocationRequest {
                deregistration_id: id.clone(),
                revocation_reference: "TJID-2026-0042".into(),
                revoke_time: time,
                ..Default::default()
            })
            .await
            .expect_err(code);
        assert_eq!(err.code(), Code::InvalidArgument, "{code}");
        assert_eq!(reason(&err), "VALIDATION_FAILED");
        assert_eq!(
            reasons(&err).get("revoke_time").map(String::as_str),
            Some(code)
        );
    }
    // Nothing was recorded by the refused calls.
    assert_eq!(app.get(&id).await.revocation_reference, "");
}
