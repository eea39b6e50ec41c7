//! Proto ↔ domain, in exactly one module. Parsing collects every field violation, so a
//! caller learns all its mistakes in one round trip.

use base64::Engine;
use prost_types::Timestamp as PbTimestamp;
use tonic_types::FieldViolation;

use super::error::{ApiError, violation};
use super::pb;
use crate::app::NamedCertificate;
use crate::domain::saga::Verification;
use crate::domain::{
    CardCertificate, CardHolder, CardNumber, CaseEvent, CaseId, CertificateSource, Deregistration,
    Email, FreeText, HsaId, InstantError, KivRemovalRoute, NewDeregistration, PersonName,
    Personnummer, Reason, Reporter, RequestId, RevocationReference, Rule, State, TextError,
    Timestamp, same_issuer, timestamp,
};
use crate::privacy::Vault;

struct Violations(Vec<FieldViolation>);

impl Violations {
    fn take<T, E: Rule>(&mut self, field: &str, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(violation(field, e.code(), &e));
                None
            }
        }
    }

    fn push(&mut self, field: &str, code: &str, rule: &str) {
        self.0.push(violation(field, code, rule));
    }
}

/// A report, checked against `now` (the gateway's clock): the personnummer's century and
/// date of birth, and the instant the card was received.
pub fn new_deregistration(
    req: &pb::CreateDeregistrationRequest,
    now: Timestamp,
) -> Result<(Option<RequestId>, NewDeregistration), ApiError> {
    let mut v = Violations(Vec::new());
    // The request_id is optional: empty means none.
    let rid = match RequestId::parse(&req.request_id) {
        Err(TextError::Empty) => None,
        r => v.take("request_id", r),
    };
    let Some(d) = &req.deregistration else {
        v.push("deregistration", "REQUIRED", "is required");
        return Err(ApiError::InvalidArgument(v.0));
    };
    let p = "deregistration";
    let care_unit = v.take(
        &format!("{p}.care_unit_hsa_id"),
        HsaId::parse(&d.care_unit_hsa_id),
    );

    // The holder's date of birth bounds card_received_time, even if another holder field fails.
    let mut holder_pnr = None;
    let holder = match &d.card_holder {
        None => {
            v.push(&format!("{p}.card_holder"), "REQUIRED", "is required");
            None
        }
        Some(h) => {
            let pnr = v.take(
                &format!("{p}.card_holder.personal_identity_number"),
                Personnummer::parse(&h.personal_identity_number, now.utc_date()),
            );
            holder_pnr.clone_from(&pnr);
            let name = v.take(
                &format!("{p}.card_holder.full_name"),
                PersonName::parse(&h.full_name),
            );
            let email = if h.email.trim().is_empty() {
                Some(None)
            } else {
                v.take(&format!("{p}.card_holder.email"), Email::parse(&h.email))
                    .map(Some)
            };
            match (pnr, name, email) {
                (Some(personnummer), Some(full_name), Some(email)) => Some(CardHolder {
                    personnummer,
                    full_name,
                    email,
                }),
                _ => None,
            }
        }
    };
    let card_number = v.take(
        &format!("{p}.card_number"),
        CardNumber::parse(&d.card_number),
    );
    let reason = match pb::Reason::try_from(d.reason) {
        Ok(pb::Reason::EmploymentEnded) => Some(Reason::EmploymentEnded),
        Ok(pb::Reason::AgreementEnded) => Some(Reason::AgreementEnded),
        _ => {
            v.push(
                &format!("{p}.reason"),
                "REQUIRED",
                "is required: REASON_EMPLOYMENT_ENDED or REASON_AGREEMENT_ENDED",
            );
            None
        }
    };
    let route = match pb::KivRemovalRoute::try_from(d.kiv_removal_route) {
        Ok(pb::KivRemovalRoute::CareProvider) => Some(KivRemovalRoute::CareProvider),
        Ok(pb::KivRemovalRoute::HealthCareOffice) => Some(KivRemovalRoute::HealthCareOffice),
        _ => {
            v.push(
                &format!("{p}.kiv_removal_route"), "REQUIRED", "is required: KIV_REMOVAL_ROUTE_CARE_PROVIDER or KIV_REMOVAL_ROUTE_HEALTH_CARE_OFFICE",
            );
            None
        }
    };
    let received = match &d.card_received_time {
        None => {
            v.push(
                &format!("{p}.card_received_time"),
                "REQUIRED",
                "is required",
            );
            None
        }
        Some(t) => v.take(
            &format!("{p}.card_received_time"),
            timestamp_in(t)
                .and_then(|at| timestamp::card_received_at(at, holder_pnr.as_ref(), now)),
        ),
    };
    if !d.card_cut_across_chip {
        v.push(
            &format!("{p}.card_cut_across_chip"),
            "MUST_BE_TRUE",
            "must be true: the card must be cut straight across the chip before it is reported",
        );
    }
    let reporter = match &d.reported_by {
        None => {
            v.push(&format!("{p}.reported_by"), "REQUIRED", "is required");
            None
        }
        Some(r) => {
            let hsa_id = v.take(&format!("{p}.reported_by.hsa_id"), HsaId::parse(&r.hsa_id));
            let full_name = v.take(
                &format!("{p}.reported_by.full_name"),
                PersonName::parse(&r.full_name),
            );
            let email = v.take(&format!("{p}.reported_by.email"), Email::parse(&r.email));
            match (hsa_id, full_name, email) {
                (Some(hsa_id), Some(full_name), Some(email)) => Some(Reporter {
                    hsa_id,
                    full_name,
                    email,
                }),
                _ => None,
            }
        }
    };
    match (
        care_unit,
        holder,
        card_number,
        reason,
        received,
        reporter,
        route,
    ) {
        (
            Some(care_unit),
            Some(card_holder),
            Some(card_number),
            Some(reason),
            Some(card_received_at),
            Some(reported_by),
            Some(route),
        ) if v.0.is_empty() => Ok((
            rid,
            NewDeregistration {
                care_unit,
                card_holder,
                card_number,
                reason,
                card_received_at,
                reported_by,
                route,
            },
        )),
        _ => Err(ApiError::InvalidArgument(v.0)),
    }
}

pub fn case_id(field: &str, raw: &str) -> Result<CaseId, ApiError> {
    if raw.trim().is_empty() {
        return Err(ApiError::invalid(field, "REQUIRED", "is required"));
    }
    CaseId::parse(raw)
        .ok_or_else(|| ApiError::invalid(field, "FORMAT", "must be a deregistration id (a UUID)"))
}

pub fn optional_hsa_id(field: &str, raw: &str) -> Result<Option<HsaId>, ApiError> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    HsaId::parse(raw)
        .map(Some)
        .map_err(|e| ApiError::invalid(field, e.code(), e))
}

pub fn optional_state(field: &str, raw: i32) -> Result<Option<State>, ApiError> {
    match pb::State::try_from(raw) {
        Ok(pb::State::Unspecified) => Ok(None),
        Ok(s) => Ok(Some(state_in(s))),
        Err(_) => Err(ApiError::invalid(
            field,
            "UNKNOWN_ENUM",
            "is not a known State value",
        )),
    }
}

pub fn page_size(field: &str, raw: i32, default: u32, max: u32) -> Result<u32, ApiError> {
    match raw {
        0 => Ok(default),
        n if n < 0 => Err(ApiError::invalid(field, "NEGATIVE", "must not be negative")),
        n => Ok((n as u32).min(max)),
    }
}

/// Page tokens are opaque to callers: base64url of a version tag, the last id served and a
/// keyed MAC over the caller, the filters and the id — so a token cannot be forged, edited, or
/// replayed by another caller or against a different query.
pub fn encode_page_token(vault: &Vault, scope: &str, last: &CaseId, filters: &str) -> String {
    let raw = format!(
        "p1|{last}|{}",
        token_mac(vault, scope, filters, &last.to_string())
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

pub fn decode_page_token(
    vault: &Vault,
    scope: &str,
    field: &str,
    token: &str,
    filters: &str,
) -> Result<Option<CaseId>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        ApiError::invalid(
            field,
            "PAGE_TOKEN",
            "is not a page token returned by this list call",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = raw.split('|');
    let (Some("p1"), Some(id), Some(mac), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if mac != token_mac(vault, scope, filters, id) {
        return Err(ApiError::invalid(
            field,
            "PAGE_TOKEN_MISMATCH",
            "was not issued for this caller and these filters; repeat the list call with the filters it was issued for",
        ));
    }
    CaseId::parse(id).map(Some).ok_or_else(bad)
}

fn token_mac(vault: &Vault, scope: &str, filters: &str, id: &str) -> String {
    let mut d = vault.digest(&[
        b"page-token",
        scope.as_bytes(),
        filters.as_bytes(),
        id.as_bytes(),
    ]);
    d.truncate(24);
    d
}

/// A protobuf timestamp within its documented range. What the instant may be is the
/// domain's rule (`domain::timestamp`), applied by the caller.
fn timestamp_in(t: &PbTimestamp) -> Result<Timestamp, InstantError> {
    Timestamp::from_unix(t.seconds, t.nanos).ok_or(InstantError::Invalid)
}

/// An optional instant; `app` checks it against the case (e.g. `revoke_time`).
pub fn optional_time(field: &str, t: Option<&PbTimestamp>) -> Result<Option<Timestamp>, ApiError> {
    t.map(timestamp_in)
        .transpose()
        .map_err(|e| ApiError::invalid(field, e.code(), e))
}

pub fn timestamp_out(t: Timestamp) -> PbTimestamp {
    PbTimestamp {
        seconds: t.unix_seconds(),
        nanos: t.subsec_nanos(),
    }
}

fn state_in(s: pb::State) -> State {
    match s {
        pb::State::Unspecified | pb::State::Accepted => State::Accepted,
        pb::State::RevocationRequested => State::RevocationRequested,
        pb::State::Revoked => State::Revoked,
        pb::State::KivRemovalPending => State::KivRemovalPending,
        pb::State::Completed => State::Completed,
        pb::State::Rejected => State::Rejected,
        pb::State::Cancelled => State::Cancelled,
        pb::State::NeedsAttention => State::NeedsAttention,
    }
}

pub fn state_out(s: State) -> pb::State {
    match s {
        State::Accepted => pb::State::Accepted,
        State::RevocationRequested => pb::State::RevocationRequested,
        State::Revoked => pb::State::Revoked,
        State::KivRemovalPending => pb::State::KivRemovalPending,
        State::Completed => pb::State::Completed,
        State::Rejected => pb::State::Rejected,
        State::Cancelled => pb::State::Cancelled,
        State::NeedsAttention => pb::State::NeedsAttention,
    }
}

/// The case as a care provider sees it: the personnummer masked.
pub fn deregistration_out(c: &Deregistration) -> pb::Deregistration {
    let r = &c.report;
    pb::Deregistration {
        id: c.id.to_string(),
        care_unit_hsa_id: r.care_unit.to_string(),
        care_provider_hsa_id: c.care_provider.to_string(),
        card_holder: Some(pb::CardHolder {
            personal_identity_number: r.card_holder.personnummer.masked(),
            full_name: r.card_holder.full_name.as_str().to_owned(),
            email: r
                .card_holder
                .email
                .as_ref()
                .map(|e| e.as_str().to_owned())
                .unwrap_or_default(),
        }),
        card_number: r.card_number.to_string(),
        reason: match r.reason {
            Reason::EmploymentEnded => pb::Reason::EmploymentEnded,
            Reason::AgreementEnded => pb::Reason::AgreementEnded,
        } as i32,
        card_received_time: Some(timestamp_out(r.card_received_at)),
        card_cut_across_chip: true,
        reported_by: Some(pb::Reporter {
            hsa_id: r.reported_by.hsa_id.to_string(),
            full_name: r.reported_by.full_name.as_str().to_owned(),
            email: r.reported_by.email.as_str().to_owned(),
        }),
        kiv_removal_route: match r.route {
            KivRemovalRoute::CareProvider => pb::KivRemovalRoute::CareProvider,
            KivRemovalRoute::HealthCareOffice => pb::KivRemovalRoute::HealthCareOffice,
        } as i32,
        state: state_out(c.state) as i32,
        create_time: Some(timestamp_out(c.created_at)),
        update_time: Some(timestamp_out(c.updated_at)),
        revocation_reference: c.revocation_reference.clone().unwrap_or_default(),
        state_reason: c.state_reason.clone().unwrap_or_default(),
        revocation_check: revocation_check_out(c.verification) as i32,
    }
}

pub fn event_out(e: &CaseEvent) -> pb::DeregistrationEvent {
    pb::DeregistrationEvent {
        sequence: e.sequence,
        deregistration_id: e.case_id.to_string(),
        kind: e.kind.clone(),
        state: state_out(e.state) as i32,
        actor: e.actor.clone(),
        event_time: Some(timestamp_out(e.at)),
        trace_id: e.trace_id.clone(),
        detail: e.detail.clone(),
        hash: e.hash.clone(),
        key_id: e.key_id.clone().unwrap_or_default(),
    }
}

/// What operators see in place of a name or an e-mail address.
pub const MASK: &str = "***";

/// A case as operators see it: the personal identity number masked (`YYYYMMDD-****`), the
/// card number, names and e-mail addresses replaced by `MASK` (an absent e-mail address stays
/// empty). The card is identified by the case id (and, across cases, the holder's pseudonym).
pub fn deregistration_masked(c: &Deregistration) -> pb::Deregistration {
    let mut d = deregistration_out(c);
    let mask = |s: &mut String| {
        if !s.is_empty() {
            *s = MASK.to_owned();
        }
    };
    mask(&mut d.card_number);
    if let Some(h) = d.card_holder.as_mut() {
        mask(&mut h.full_name);
        mask(&mut h.email);
    }
    if let Some(r) = d.reported_by.as_mut() {
        mask(&mut r.full_name);
        mask(&mut r.email);
    }
    d
}

pub fn chain_head_out(h: &crate::storage::ChainHead) -> pb::AuditChainHead {
    pb::AuditChainHead {
        sequence: h.sequence,
        hash: h.hash.clone(),
        key_id: h.key_id().to_owned(),
    }
}

pub fn step_out(s: &crate::storage::StepView) -> pb::OutboxStep {
    let (status, class) = match s.status.as_str() {
        "pending" => (pb::StepStatus::Pending, pb::ErrorClass::Retryable),
        "done" => (pb::StepStatus::Done, pb::ErrorClass::Unspecified),
        "failed" => (pb::StepStatus::Failed, pb::ErrorClass::Terminal),
        "cancelled" => (pb::StepStatus::Cancelled, pb::ErrorClass::Unspecified),
        _ => (pb::StepStatus::Unspecified, pb::ErrorClass::Unspecified),
    };
    let class = if s.last_error.is_some() {
        class
    } else {
        pb::ErrorClass::Unspecified
    };
    pb::OutboxStep {
        step: s.step.clone(),
        key: s.key.clone(),
        status: status as i32,
        attempts: i32::try_from(s.attempts).unwrap_or(i32::MAX),
        last_error_class: class as i32,
        last_error: s.last_error.clone().unwrap_or_default(),
        next_due_time: (status == pb::StepStatus::Pending).then(|| timestamp_out(s.due_at)),
        leased: s.leased,
        create_time: Some(timestamp_out(s.created_at)),
        update_time: Some(timestamp_out(s.updated_at)),
    }
}

pub fn broken_out(id: &CaseId, b: &crate::storage::BrokenLink) -> pb::BrokenAuditChain {
    use crate::storage::ChainProblem as P;
    let problem = match b.problem {
        P::HashMismatch => pb::AuditChainProblem::HashMismatch,
        P::SequenceGap => pb::AuditChainProblem::SequenceGap,
        P::UnknownKey => pb::AuditChainProblem::UnknownKey,
        P::LegacyAfterKeyed => pb::AuditChainProblem::LegacyAfterKeyed,
        P::UnanchoredLegacy => pb::AuditChainProblem::UnanchoredLegacy,
        P::HeadMismatch => pb::AuditChainProblem::HeadMismatch,
    };
    pb::BrokenAuditChain {
        deregistration_id: id.to_string(),
        sequence: b.sequence,
        problem: problem as i32,
        detail: b.detail.clone(),
    }
}

/// The states of a filter; UNSPECIFIED and unknown values are invalid.
pub fn states(field: &str, raw: &[i32]) -> Result<Vec<State>, ApiError> {
    raw.iter()
        .map(|&s| match optional_state(field, s)? {
            Some(s) => Ok(s),
            None => Err(ApiError::invalid(
                field,
                "UNSPECIFIED",
                "must not contain STATE_UNSPECIFIED",
            )),
        })
        .collect()
}

/// `now` minus an age; `None` when the age is unset. Negative ages are invalid.
pub fn age_bound(
    field: &str,
    age: Option<&prost_types::Duration>,
    now: Timestamp,
) -> Result<Option<Timestamp>, ApiError> {
    let Some(d) = age else {
        return Ok(None);
    };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ApiError::invalid(field, "NEGATIVE", "must not be negative"));
    }
    let micros = d
        .seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(d.nanos / 1000));
    Ok(Some(Timestamp(now.0.saturating_sub(micros))))
}

/// The card holder with the full personnummer: only for roles that must act on it
/// (TjänsteID-service revokes by it, the health-care office finds the KIV entry by it).
fn holder_full(c: &Deregistration) -> pb::CardHolder {
    let h = &c.report.card_holder;
    pb::CardHolder {
        personal_identity_number: h.personnummer.expose_digits(),
        full_name: h.full_name.as_str().to_owned(),
        email: h
            .email
            .as_ref()
            .map(|e| e.as_str().to_owned())
            .unwrap_or_default(),
    }
}

pub fn office_task_out(c: &Deregistration) -> pb::KivRemovalTask {
    pb::KivRemovalTask {
        deregistration_id: c.id.to_string(),
        care_unit_hsa_id: c.report.care_unit.to_string(),
        care_provider_hsa_id: c.care_provider.to_string(),
        card_holder: Some(holder_full(c)),
        revocation_reference: c.revocation_reference.clone().unwrap_or_default(),
        revoke_time: c.revocation_confirmed_at.map(timestamp_out),
    }
}

pub fn pending_revocation_out(c: &Deregistration) -> pb::PendingRevocation {
    pb::PendingRevocation {
        deregistration_id: c.id.to_string(),
        card_number: c.report.card_number.to_string(),
        card_holder: Some(holder_full(c)),
        care_unit_hsa_id: c.report.care_unit.to_string(),
        request_time: c.reported_at.map(timestamp_out),
    }
}

/// A reference from TjänsteID-service: required, printable, bounded.
pub fn reference(field: &str, raw: &str) -> Result<RevocationReference, ApiError> {
    RevocationReference::parse(raw).map_err(|e| ApiError::invalid(field, e.code(), e))
}

fn revocation_check_out(v: Verification) -> pb::RevocationCheck {
    match v {
        Verification::Off => pb::RevocationCheck::Off,
        Verification::Required => pb::RevocationCheck::Pending,
        Verification::Verified => pb::RevocationCheck::Verified,
    }
}

/// At most this many certificates per confirmation (a card carries two or three).
const MAX_REVOKED_CERTIFICATES: usize = 16;
/// A certificate is a few KiB; anything much larger is not one.
const MAX_CERTIFICATE_DER: usize = 16 * 1024;

/// The certificates a confirmation names: each as DER, or as serial number and issuer (both
/// given, and matching the DER when that is given too). Every violation is reported, by path.
pub fn revoked_certificates(
    field: &str,
    raw: &[pb::RevokedCertificate],
) -> Result<Vec<NamedCertificate>, ApiError> {
    if raw.len() > MAX_REVOKED_CERTIFICATES {
        return Err(ApiError::invalid(
            field,
            "TOO_MANY_CERTIFICATES",
            format!("at most {MAX_REVOKED_CERTIFICATES} certificates"),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut violations = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let at = |name: &str| format!("{field}[{i}].{name}");
        let named = match (c.serial_number.trim(), c.issuer.trim()) {
            ("", "") => None,
            (serial, issuer) => {
                // Client text kept in the audit trail: no identity number in it, by the rule
                // that guards every free text.
                let mut scanned = false;
                for (name, text) in [("serial_number", serial), ("issuer", issuer)] {
                    if !crate::domain::identity_scan::find(text).is_empty() {
                        violations.push(violation(
                            &at(name),
                            "CONTAINS_IDENTITY_NUMBER",
                            "must not contain a personal identity number",
                        ));
                        scanned = true;
                    }
                }
                if scanned {
                    continue;
                }
                let s = CardCertificate::new(serial, "CN=x", CertificateSource::Confirmation);
                let n = CardCertificate::new("1", issuer, CertificateSource::Confirmation);
                if let Err(e) = &s {
                    violations.push(violation(&at("serial_number"), e.code(), e));
                }
                if let Err(e) = &n {
                    violations.push(violation(&at("issuer"), e.code(), e));
                }
                match (s, n) {
                    (Ok(s), Ok(n)) => Some(CardCertificate {
                        issuer: n.issuer,
                        ..s
                    }),
                    _ => continue,
                }
            }
        };
        let from_der: Option<crate::connectors::card_certs::CardFacts> =
            if c.certificate_der.is_empty() {
                None
            } else if c.certificate_der.len() > MAX_CERTIFICATE_DER {
                violations.push(violation(
                    &at("certificate_der"),
                    "CERTIFICATE_FORMAT",
                    format!("a DER X.509 certificate of at most {MAX_CERTIFICATE_DER} bytes"),
                ));
                continue;
            } else {
                match crate::connectors::card_certs::read(
                    &c.certificate_der,
                    CertificateSource::Confirmation,
                ) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        violations.push(violation(&at("certificate_der"), "CERTIFICATE_FORMAT", e));
                        continue;
                    }
                }
            };
        match (named, from_der) {
            (None, None) => violations.push(violation(
                &at("certificate_der"),
                "CERTIFICATE_REQUIRED",
                "give the certificate (DER), or its serial_number and issuer",
            )),
            (Some(n), Some(d))
                if n.serial != d.certificate.serial
                    || !same_issuer(&n.issuer, &d.certificate.issuer) =>
            {
                violations.push(violation(
                    &at("serial_number"),
                    "CERTIFICATE_MISMATCH",
                    "serial_number and issuer must name the certificate given in certificate_der",
                ))
            }
            (_, Some(d)) => out.push(NamedCertificate {
                field: at("certificate_der"),
                holder: d.holder,
                not_after: Some(d.not_after),
                certificate: d.certificate,
            }),
            (Some(n), None) => out.push(NamedCertificate {
                field: at("serial_number"),
                holder: None,
                not_after: None,
                certificate: n,
            }),
        }
    }
    if !violations.is_empty() {
        return Err(ApiError::InvalidArgument(violations));
    }
    let mut unique: Vec<NamedCertificate> = Vec::with_capacity(out.len());
    for c in out {
        if !unique.iter().any(|u| {
            u.certificate.serial == c.certificate.serial
                && same_issuer(&u.certificate.issuer, &c.certificate.issuer)
        }) {
            unique.push(c);
        }
    }
    Ok(unique)
}

/// A reason or justification that must be given.
pub fn required_text(field: &str, raw: &str) -> Result<FreeText, ApiError> {
    FreeText::parse_required(raw).map_err(|e| ApiError::invalid(field, e.code(), e))
}

/// A reason or comment that may be empty.
pub fn free_text(field: &str, raw: &str) -> Result<FreeText, ApiError> {
    FreeText::parse(raw).map_err(|e| ApiError::invalid(field, e.code(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StepView;

    fn step(status: &str, last_error: Option<&str>) -> StepView {
        StepView {
            key: "k".into(),
            step: "report".into(),
            status: status.into(),
            attempts: 2,
            last_error: last_error.map(str::to_owned),
            due_at: Timestamp(1_700_000_000_000_000),
            leased: false,
            created_at: Timestamp(1_699_000_000_000_000),
            updated_at: Timestamp(1_700_000_000_000_000),
        }
    }

    #[test]
    fn a_step_shows_its_error_class_and_a_due_time_only_while_pending() {
        let retrying = step_out(&step("pending", Some("connection refused")));
        assert_eq!(retrying.status, pb::StepStatus::Pending as i32);
        assert_eq!(retrying.last_error_class, pb::ErrorClass::Retryable as i32);
        assert_eq!(retrying.last_error, "connection refused");
        assert!(retrying.next_due_time.is_some());
        let failed = step_out(&step("failed", Some("550 no such user")));
        assert_eq!(failed.status, pb::StepStatus::Failed as i32);
        assert_eq!(failed.last_error_class, pb::ErrorClass::Terminal as i32);
        assert!(failed.next_due_time.is_none());
        let fresh = step_out(&step("pending", None));
        assert_eq!(fresh.last_error_class, pb::ErrorClass::Unspecified as i32);
        assert_eq!(fresh.attempts, 2);
        let done = step_out(&step("done", None));
        assert_eq!(done.status, pb::StepStatus::Done as i32);
        assert!(done.next_due_time.is_none());
        assert_eq!(
            step_out(&step("cancelled", None)).status,
            pb::StepStatus::Cancelled as i32
        );
    }

    #[test]
    fn an_age_is_taken_from_now_and_never_negative() {
        let now = Timestamp(10_000_000);
        let age = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(age_bound("a", None, now).unwrap(), None);
        assert_eq!(
            age_bound("a", Some(&age(3, 500_000_000)), now).unwrap(),
            Some(Timestamp(6_500_000))
        );
        assert!(age_bound("a", Some(&age(-1, 0)), now).is_err());
        assert!(age_bound("a", Some(&age(0, -1)), now).is_err());
    }
}
