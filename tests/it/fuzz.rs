//! Property-based fuzzing of every parser of outside input (stable toolchain: proptest, no
//! sanitizers): personnummer, HSA-id, card number, e-mail, names and free text, page tokens, the
//! principals file, the configuration, and request decoding + validation (prost decode of
//! arbitrary and mutated bytes, then `api::convert`). Each asserts: no panic, no identity
//! number echoed in an error, a Debug or a gRPC status, and round trips where they apply.
//!
//! CI runs `DEFAULT_CASES` per property; `ETK_FUZZ_CASES=100000 cargo test --test it fuzz::`
//! runs more (docs/supply-chain.md).

use etjanstekort_gateway::api::convert;
use etjanstekort_gateway::api::pb;
use etjanstekort_gateway::auth::Authorizer;
use etjanstekort_gateway::config::Layers;
use etjanstekort_gateway::domain::{
    CardNumber, CaseId, Email, FreeText, HsaId, PersonName, Personnummer, RequestId,
    RevocationReference, Timestamp, identity_scan,
};
use etjanstekort_gateway::privacy::Vault;
use proptest::prelude::*;
use prost::Message;
use time::macros::date;
use tonic::Status;

use crate::helpers::{create, report, unit_a};

const DEFAULT_CASES: u32 = 256;

fn cases() -> ProptestConfig {
    let cases = std::env::var("ETK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        // A failure prints its minimal input; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const TODAY: time::Date = date!(2026 - 11 - 29);

/// A valid personnummer (or samordningsnummer: day + 60) and the forms a caller may write it in.
fn any_pnr() -> impl Strategy<Value = (Personnummer, Vec<String>)> {
    (1900i32..2026, 1u8..13, 1u8..29, 0u16..1000, any::<bool>()).prop_filter_map(
        "a valid date",
        |(y, m, d, n, coordination)| {
            let day = if coordination { d + 60 } else { d };
            let p = Personnummer::synthetic(y, m, day, n)?;
            let twelve = p.expose_digits();
            let ten = twelve[2..].to_owned();
            let forms = vec![
                twelve.clone(),
                format!("{}-{}", &twelve[..8], &twelve[8..]),
                ten.clone(),
                format!("{}-{}", &ten[..6], &ten[6..]),
            ];
            Some((p, forms))
        },
    )
}

/// Text that must not be in `said` once `p` went in: its 12 and 10 digits, with or without
/// the separator.
fn assert_not_echoed(said: &str, p: &Personnummer) {
    let twelve = p.expose_digits();
    for needle in [
        twelve.clone(),
        twelve[2..].to_owned(),
        format!("{}-{}", &twelve[2..8], &twelve[8..]),
        twelve[2..8].to_owned() + &twelve[8..],
    ] {
        assert!(!said.contains(&needle), "identity number echoed: {said}");
    }
}

fn status_text(s: &Status) -> String {
    format!(
        "{} {} {:?}",
        s.message(),
        String::from_utf8_lossy(s.details()),
        s
    )
}

/// Strings near the parsers' formats: digits, separators, letters, the HSA-id prefix, `@`,
/// control and invisible characters, and arbitrary Unicode.
fn near_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9 +\\-]{0,20}",
        "SE[0-9]{10}-[A-Za-z0-9]{0,12}",
        "[a-zA-Z0-9._%+\\-]{0,12}@[a-zA-Z0-9.\\-]{0,12}",
        "[\\PC\u{200B}\u{00AD}\u{FEFF}\u{202E}\t\n\r\0]{0,40}",
    ]
}

/// `text` with `pnr` written into it at `at` (a char boundary).
fn embed(text: &str, at: usize, pnr: &str) -> String {
    let cut = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .nth(at % (text.chars().count() + 1))
        .unwrap_or(text.len());
    format!("{}{pnr}{}", &text[..cut], &text[cut..])
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn personnummer_parse_never_panics_nor_echoes(s in near_text()) {
        match Personnummer::parse(&s, TODAY) {
            Ok(p) => {
                // The canonical form reads back as the same number, by both routes.
                let again = Personnummer::parse(&p.expose_digits(), TODAY).expect("canonical");
                prop_assert_eq!(again.expose_digits(), p.expose_digits());
                let stored = Personnummer::from_stored(&p.expose_digits()).expect("stored");
                prop_assert_eq!(stored.expose_digits(), p.expose_digits());
                assert_not_echoed(&format!("{p:?} {}", p.masked()), &p);
            }
            Err(e) => {
                let said = format!("{e} {e:?}");
                prop_assert!(!identity_scan::contains(&said), "{}", said);
            }
        }
    }

    #[test]
    fn every_written_form_of_a_personnummer_is_the_same_number((p, forms) in any_pnr()) {
        for form in forms {
            let parsed = Personnummer::parse(&form, TODAY);
            // A ten-digit form names the latest century that fits; a holder aged 100 or more
            // writes `+`, so only the twelve-digit forms must give the very same number.
            if form.len() >= 12 {
                prop_assert_eq!(parsed.expect("valid").expose_digits(), p.expose_digits());
            } else if let Ok(q) = parsed {
                prop_assert_eq!(&q.expose_digits()[2..], &p.expose_digits()[2..]);
            }
        }
        assert_not_echoed(&format!("{p:?}"), &p);
    }

    #[test]
    fn identifiers_and_text_parse_without_panic_and_read_back(s in near_text()) {
        if let Ok(h) = HsaId::parse(&s) {
            prop_assert_eq!(HsaId::parse(h.as_str()).expect("reads back"), h.clone());
            prop_assert!(!identity_scan::contains_in_id(h.as_str()));
        }
        if let Ok(c) = CardNumber::parse(&s) {
            let again = CardNumber::parse(c.as_str()).expect("reads back");
            prop_assert_eq!(again.as_str(), c.as_str());
        }
        if let Ok(e) = Email::parse(&s) {
            let again = Email::parse(e.as_str()).expect("reads back");
            prop_assert_eq!(again.as_str(), e.as_str());
        }
        if let Ok(n) = PersonName::parse(&s) {
            let again = PersonName::parse(n.as_str()).expect("reads back");
            prop_assert_eq!(again.as_str(), n.as_str());
            prop_assert!(!identity_scan::contains(n.as_str()));
        }
        if let Ok(t) = FreeText::parse(&s) {
            let again = FreeText::parse(t.as_str()).expect("reads back");
            prop_assert_eq!(again.as_str(), t.as_str());
            prop_assert!(!identity_scan::contains(t.as_str()));
        }
        if let Ok(r) = RequestId::parse(&s) {
            let again = RequestId::parse(r.as_str()).expect("reads back");
            prop_assert_eq!(again.as_str(), r.as_str());
            prop_assert!(!identity_scan::contains_in_id(r.as_str()));
        }
        if let Ok(r) = RevocationReference::parse(&s) {
            let again = RevocationReference::parse(r.as_str()).expect("reads back");
            prop_assert_eq!(again.as_str(), r.as_str());
        }
        let _ = CaseId::parse(&s);
    }

    #[test]
    fn a_personnummer_in_the_wrong_field_is_never_echoed(
        (p, forms) in any_pnr(),
        which in 0usize..4,
        text in near_text(),
        at in any::<usize>(),
    ) {
        let s = embed(&text, at, &forms[which]);
        let mut said: Vec<String> = Vec::new();
        let errors = [
            HsaId::parse(&s).err().map(|e| format!("{e} {e:?}")),
            CardNumber::parse(&s).err().map(|e| format!("{e} {e:?}")),
            Email::parse(&s).err().map(|e| format!("{e} {e:?}")),
            PersonName::parse(&s).err().map(|e| format!("{e} {e:?}")),
            FreeText::parse(&s).err().map(|e| format!("{e} {e:?}")),
            RequestId::parse(&s).err().map(|e| format!("{e} {e:?}")),
            RevocationReference::parse(&s).err().map(|e| format!("{e} {e:?}")),
            // Names and free text refuse a personnummer; what they accept holds none.
            FreeText::parse(&s).ok().map(|t| format!("{t:?}")),
            PersonName::parse(&s).ok().map(|n| format!("{n:?}")),
        ];
        said.extend(errors.into_iter().flatten());
        let said = said.join(" ");
        assert_not_echoed(&said, &p);
    }

    #[test]
    fn page_tokens_cannot_be_forged_and_read_back(
        token in prop_oneof![any::<String>(), "[A-Za-z0-9_\\-]{0,120}"],
        scope in "[a-z\\-]{1,12}",
        other_scope in "[a-z\\-]{1,12}",
        filters in any::<String>(),
        raw_id in any::<u128>(),
    ) {
        let vault = Vault::from_master_key(&[7u8; 32]).expect("vault");
        // Arbitrary text is never a token (or it is the empty "first page").
        match convert::decode_page_token(&vault, &scope, "page_token", &token, &filters) {
            Ok(None) => prop_assert!(token.is_empty()),
            Ok(Some(_)) => prop_assert!(false, "a forged token was accepted: {}", token),
            Err(e) => {
                let s = Status::from(e);
                prop_assert_eq!(s.code(), tonic::Code::InvalidArgument);
            }
        }
        let id = CaseId::parse(&uuid::Uuid::from_u128(raw_id).to_string()).expect("a UUID");
        let t = convert::encode_page_token(&vault, &scope, &id, &filters);
        let back = convert::decode_page_token(&vault, &scope, "page_token", &t, &filters);
        prop_assert_eq!(back.ok().flatten(), Some(id.clone()));
        if other_scope != scope {
            prop_assert!(convert::decode_page_token(&vault, &other_scope, "page_token", &t, &filters).is_err());
        }
        prop_assert!(
            convert::decode_page_token(&vault, &scope, "page_token", &t, &(filters.clone() + "x")).is_err()
        );
    }

    #[test]
    fn create_requests_from_arbitrary_bytes_are_refused_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(req) = pb::CreateDeregistrationRequest::decode(bytes.as_slice())
            && let Err(e) = convert::new_deregistration(&req, now())
        {
            let s = Status::from(e);
            prop_assert_eq!(s.code(), tonic::Code::InvalidArgument);
            prop_assert!(!identity_scan::contains(s.message()), "{}", s.message());
        }
        if let Ok(req) = pb::ListDeregistrationsRequest::decode(bytes.as_slice()) {
            let _ = convert::optional_state("state", req.state);
            let _ = convert::page_size("page_size", req.page_size, 20, 100);
        }
    }

    #[test]
    fn a_mutated_valid_request_never_echoes_its_personnummer(
        (p, forms) in any_pnr(),
        which in 0usize..4,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        misplaced in 0usize..8,
    ) {
        let mut d = report(&unit_a(), &forms[which], "8100001");
        // The number also where it does not belong.
        let pnr = forms[which].clone();
        match misplaced {
            0 => d.care_unit_hsa_id = pnr,
            1 => d.card_number = pnr,
            2 => if let Some(h) = d.card_holder.as_mut() { h.full_name = pnr },
            3 => if let Some(h) = d.card_holder.as_mut() { h.email = format!("{pnr}@x") },
            4 => if let Some(r) = d.reported_by.as_mut() { r.hsa_id = pnr },
            _ => {}
        }
        let request_id = if misplaced == 5 { forms[which].as_str() } else { "fuzz-1" };
        // Untouched, in a twelve-digit form and nowhere else: a valid report (so the accepted
        // branch below is exercised too).
        let valid = flips.is_empty() && misplaced >= 6 && which < 2;
        let mut bytes = create(request_id, d).encode_to_vec();
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] ^= b;
        }
        if let Ok(req) = pb::CreateDeregistrationRequest::decode(bytes.as_slice()) {
            let result = convert::new_deregistration(&req, now());
            prop_assert!(!valid || result.is_ok(), "a valid report was refused");
            match result {
                Err(e) => assert_not_echoed(&status_text(&Status::from(e)), &p),
                Ok((rid, new)) => {
                    // Accepted: the request id holds no identity number; the report is
                    // Debug-printable without the number.
                    prop_assert!(rid.is_none_or(|r| !identity_scan::contains_in_id(r.as_str())));
                    assert_not_echoed(&format!("{new:?}"), &p);
                }
            }
        }
    }

    #[test]
    fn the_principals_file_parses_or_is_refused(text in prop_oneof![
        any::<String>(),
        principals_toml(),
        principals_toml().prop_map(|t| format!("{t}\n{t}")),
    ]) {
        let _ = Authorizer::from_toml(&text);
    }

    #[test]
    fn generated_principals_read_back((text, ids) in principals_file()) {
        let a = Authorizer::from_toml(&text).expect("a valid file");
        let printed = format!("{a:?}");
        for id in &ids {
            prop_assert!(printed.contains(id.as_str()), "{} missing", id);
        }
        // The same principal twice is refused, by its HSA-id.
        if let Some(first) = text.split("\n\n").next() {
            let e = Authorizer::from_toml(&format!("{text}\n\n{first}")).expect_err("listed twice");
            prop_assert!(e.contains(&ids[0]), "{}", e);
        }
    }

    #[test]
    fn the_configuration_parses_or_names_its_problems_without_secrets(
        text in prop_oneof![any::<String>(), config_toml()],
    ) {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, &text).expect("write");
        match Layers::new(Some(&file)).and_then(|l| l.config()) {
            Ok(c) => prop_assert!(!format!("{c:?}").contains(SECRET), "Debug prints a secret"),
            Err(e) => {
                let said = format!("{e} {e:?}");
                prop_assert!(!said.contains(SECRET), "a secret in the error: {}", said);
            }
        }
    }
}

/// A Luhn-valid organisation number whose third digit is at least 2, as HSA-ids need.
fn organisation_number() -> impl Strategy<Value = String> {
    (proptest::collection::vec(0u8..10, 9), 2u8..10).prop_map(|(mut body, third)| {
        body[2] = third;
        let sum: u32 = body
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let d = u32::from(d) * if i % 2 == 0 { 2 } else { 1 };
                if d > 9 { d - 9 } else { d }
            })
            .sum();
        let check = ((10 - sum % 10) % 10) as u8;
        body.iter()
            .chain(std::iter::once(&check))
            .map(|d| char::from(b'0' + d))
            .collect()
    })
}

/// One `[[principals]]` entry and its HSA-id.
fn principal_entry() -> impl Strategy<Value = (String, String)> {
    (
        organisation_number(),
        "[A-Z]",
        "[0-9A-Za-z]{1,10}",
        prop::sample::select(vec![
            "care_provider",
            "health_care_office",
            "tjansteid_service",
            "operator",
        ]),
        proptest::collection::vec("[0-9A-Za-z]{1,10}", 0..3),
    )
        .prop_map(|(org, kind, tail, role, units)| {
            let id = format!("SE{org}-{kind}{tail}");
            let units: Vec<String> = units
                .iter()
                .map(|u| format!("\"SE{org}-S{u}\""))
                .collect();
            let text = format!(
                "[[principals]]\nname = \"n\"\nhsa_id = \"{id}\"\nrole = \"{role}\"\ncare_units = [{}]",
                units.join(", ")
            );
            (text, id)
        })
}

fn principals_file() -> impl Strategy<Value = (String, Vec<String>)> {
    proptest::collection::vec(principal_entry(), 1..5).prop_filter_map("distinct", |entries| {
        let mut ids: Vec<String> = entries.iter().map(|(_, id)| id.clone()).collect();
        let texts: Vec<String> = entries.into_iter().map(|(t, _)| t).collect();
        // Valid HSA-ids only (the generator can make a check character fail).
        if ids.iter().any(|id| HsaId::parse(id).is_err()) {
            return None;
        }
        let n = ids.len();
        ids.sort();
        ids.dedup();
        (ids.len() == n).then(|| {
            let first = texts[0].clone();
            let id0 = first
                .split("hsa_id = \"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_owned();
            let mut ordered = vec![id0.clone()];
            ordered.extend(ids.into_iter().filter(|i| *i != id0));
            (texts.join("\n\n"), ordered)
        })
    })
}

fn principals_toml() -> impl Strategy<Value = String> {
    principals_file().prop_map(|(t, _)| t)
}

/// The value every secret of a generated configuration holds.
const SECRET: &str = "s3cret-Pw-0xC0FFEE";

/// A configuration of known sections and keys with values of random types, secrets among them.
fn config_toml() -> impl Strategy<Value = String> {
    let keys: Vec<(&str, &str)> = vec![
        ("server", "listen"),
        ("server", "request_timeout"),
        ("server", "shutdown_grace"),
        ("tls", "cert"),
        ("tls", "key"),
        ("tls", "client_ca"),
        ("auth", "principals_file"),
        ("database", "max_connections"),
        ("api", "default_page_size"),
        ("api", "max_page_size"),
        ("engine", "workers"),
        ("engine", "lease"),
        ("engine.retry", "max_attempts"),
        ("engine.timers", "remind_after"),
        ("tjansteid", "kind"),
        ("kiv", "kind"),
        ("kiv", "url"),
        ("kiv", "base_dn"),
        ("kiv.bind", "dn"),
        ("notifier", "kind"),
        ("smtp", "host"),
        ("smtp", "from"),
        ("smtp.login", "username"),
        ("simulated", "failure_rate"),
        ("admin", "listen"),
        ("telemetry", "log_format"),
        ("nope", "nope"),
    ];
    let secrets: Vec<(&str, &str)> = vec![
        ("database", "url"),
        ("privacy", "master_key"),
        ("kiv.bind", "password"),
        ("smtp.login", "password"),
    ];
    let value = prop_oneof![
        Just("\"ldap\"".to_owned()),
        Just("\"smtp\"".to_owned()),
        Just("\"simulated\"".to_owned()),
        Just("\"30s\"".to_owned()),
        Just("\"0.0.0.0:1\"".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z0-9 :/.@]{0,12}".prop_map(|s| format!("{s:?}")),
        Just("[1, 2]".to_owned()),
        Just("{ a = 1 }".to_owned()),
    ];
    let secret = prop_oneof![
        Just(format!("\"{SECRET}\"")),
        Just(format!("[\"{SECRET}\"]")),
        Just(format!("{{ x = \"{SECRET}\" }}")),
        Just(format!("\"postgres://u:{SECRET}@h/db\"")),
    ];
    (
        proptest::collection::vec((prop::sample::select(keys), value), 0..14),
        proptest::collection::vec((prop::sample::select(secrets), secret), 0..4),
    )
        .prop_map(|(plain, secret)| {
            let mut tables: std::collections::BTreeMap<
                &str,
                std::collections::BTreeMap<&str, String>,
            > = Default::default();
            for ((table, key), v) in plain.into_iter().chain(secret) {
                tables.entry(table).or_default().insert(key, v);
            }
            let mut out = String::new();
            for (table, entries) in tables {
                out += &format!("[{table}]\n");
                for (k, v) in entries {
                    out += &format!("{k} = {v}\n");
                }
            }
            out
        })
}

fn now() -> Timestamp {
    Timestamp::from_system(std::time::SystemTime::now())
}

#[test]
fn the_echo_check_finds_every_written_form() {
    let p = Personnummer::synthetic(1990, 6, 15, 123).expect("valid");
    let twelve = p.expose_digits();
    for form in [
        twelve.clone(),
        format!("{}-{}", &twelve[..8], &twelve[8..]),
        twelve[2..].to_owned(),
        format!("{}-{}", &twelve[2..8], &twelve[8..]),
    ] {
        let said = format!("invalid request: field: {form} is wrong");
        let found = std::panic::catch_unwind(|| assert_not_echoed(&said, &p)).is_err();
        assert!(found, "{form} not found");
    }
}
