//! The audit trail's hash chain: how an event's hash is computed and how a trail is verified.
//! Owns only the arithmetic; writing events (in the transaction of their change) is
//! `changes.rs`'s job, and refusing UPDATE/DELETE on `case_events` is the migrations' triggers'.

use ring::digest;

use super::EventMeta;
use crate::domain::CaseEvent;
use hex::encode as hex;

/// The "previous hash" of a case's first event.
pub(crate) const GENESIS_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 over the previous hash and the event's fields, each length-prefixed (so no two
/// different field splits hash alike).
pub(crate) fn event_hash(
    prev: &str,
    case_id: &str,
    seq: i64,
    kind: &str,
    state: &str,
    meta: &EventMeta,
) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let seq = seq.to_string();
    let at = meta.at.0.to_string();
    for part in [
        prev,
        case_id,
        &seq,
        kind,
        state,
        &meta.actor,
        &at,
        &meta.trace_id,
        &meta.detail,
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    hex(ctx.finish().as_ref())
}

/// True if every event's hash covers its predecessor's hash and its own fields, starting from
/// the genesis hash: a changed, removed, inserted or reordered event breaks the chain.
pub fn verify_chain(events: &[CaseEvent]) -> bool {
    let mut prev = GENESIS_HASH.to_owned();
    for e in events {
        let meta = EventMeta {
            actor: e.actor.clone(),
            trace_id: e.trace_id.clone(),
            at: e.at,
            detail: e.detail.clone(),
        };
        let h = event_hash(
            &prev,
            &e.case_id.to_string(),
            e.sequence,
            &e.kind,
            e.state.as_str(),
            &meta,
        );
        if h != e.hash {
            return false;
        }
        prev = h;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{State, Timestamp};

    /// A well-formed trail of `n` events, chained as the store writes them.
    fn trail(n: i64) -> Vec<CaseEvent> {
        let case_id = crate::clock::new_case_id();
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|sequence| {
                let meta = EventMeta {
                    actor: format!("SE1655999991-E{sequence}"),
                    trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                    at: Timestamp(1_700_000_000_000_000 + sequence),
                    detail: format!("step {sequence}"),
                };
                let kind = format!("kind_{sequence}");
                let hash = event_hash(
                    &prev,
                    &case_id.to_string(),
                    sequence,
                    &kind,
                    State::Accepted.as_str(),
                    &meta,
                );
                prev = hash.clone();
                CaseEvent {
                    case_id: case_id.clone(),
                    sequence,
                    kind,
                    state: State::Accepted,
                    actor: meta.actor,
                    at: meta.at,
                    trace_id: meta.trace_id,
                    detail: meta.detail,
                    hash,
                }
            })
            .collect()
    }

    #[test]
    fn an_intact_trail_verifies() {
        assert!(verify_chain(&[]));
        assert!(verify_chain(&trail(4)));
    }

    #[test]
    fn changing_any_recorded_field_breaks_the_chain() {
        let tamperings: [fn(&mut CaseEvent); 8] = [
            |e| e.actor.push('x'),
            |e| e.kind.push('x'),
            |e| e.state = State::Cancelled,
            |e| e.at = Timestamp(e.at.0 + 1),
            |e| e.trace_id.push('0'),
            |e| e.detail.push('!'),
            |e| e.sequence += 10,
            |e| e.case_id = crate::clock::new_case_id(),
        ];
        for (i, tamper) in tamperings.iter().enumerate() {
            // Tampering with an earlier event breaks it even if later hashes are left as they are.
            let mut events = trail(3);
            tamper(&mut events[1]);
            assert!(!verify_chain(&events), "tampering {i} went unnoticed");
        }
    }

    #[test]
    fn removed_reordered_or_rehashed_events_break_the_chain() {
        let events = trail(3);
        let mut removed = events.clone();
        removed.remove(1);
        assert!(!verify_chain(&removed));
        let mut first_removed = events.clone();
        first_removed.remove(0);
        assert!(!verify_chain(&first_removed), "the chain starts at genesis");
        let mut swapped = events.clone();
        swapped.swap(1, 2);
        assert!(!verify_chain(&swapped));
        // Recomputing one event's hash over a change does not help: its successor covers it.
        let mut rehashed = events;
        rehashed[1].detail = "rewritten".into();
        let meta = EventMeta {
            actor: rehashed[1].actor.clone(),
            trace_id: rehashed[1].trace_id.clone(),
            at: rehashed[1].at,
            detail: rehashed[1].detail.clone(),
        };
        rehashed[1].hash = event_hash(
            &rehashed[0].hash,
            &rehashed[1].case_id.to_string(),
            rehashed[1].sequence,
            &rehashed[1].kind,
            rehashed[1].state.as_str(),
            &meta,
        );
        assert!(!verify_chain(&rehashed));
    }

    #[test]
    fn field_boundaries_are_part_of_the_hash() {
        let meta = |actor: &str, detail: &str| EventMeta {
            actor: actor.into(),
            trace_id: String::new(),
            at: Timestamp(0),
            detail: detail.into(),
        };
        assert_ne!(
            event_hash(GENESIS_HASH, "c", 1, "ab", "c", &meta("a", "")),
            event_hash(GENESIS_HASH, "c", 1, "a", "bc", &meta("a", "")),
        );
    }
}
