//! The audit trail's keyed chain: how an event's hash is computed, how the chain head on the case
//! row is sealed, and how one case's trail is verified. Owns only the arithmetic; writing events
//! (in the transaction of their change) is `changes.rs`'s job, and refusing UPDATE, DELETE,
//! REPLACE and TRUNCATE on `case_events` is the migrations' triggers'.
//!
//! An event's hash is HMAC-SHA256, under the audit chain key derived from the master key
//! (`Vault::audit_chain_key`), over the previous event's hash, the event's fields and the key id;
//! the key id is stored with the event, so events stay verifiable after a key rotation (the
//! verifier is given every key it may need, `ChainKeys`). Without the key, a rewritten event
//! cannot be re-hashed so that it verifies.
//!
//! Legacy links: events written before m0005 carry a plain SHA-256 hash and no key id. They are
//! accepted only as a prefix of a chain that a keyed link follows (the gateway appends an
//! `audit_chain_keyed` event at start to each such chain that m0008 found, and to no other,
//! `SeaStore::anchor_legacy_chains`); that link's MAC covers the legacy head, so a rewritten
//! legacy prefix breaks it. A legacy link after a keyed one, and a chain ending in a legacy
//! link, are reported broken — also after a restart: a trail re-hashed without the key is not on
//! m0008's list, so it is never anchored.

use std::collections::HashMap;

use ring::{digest, hmac};

use super::EventMeta;
use crate::domain::CaseEvent;
use crate::privacy::Vault;
use hex::encode as hex;

/// The "previous hash" of a case's first event.
pub(crate) const GENESIS_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// The fields an event's hash covers, in order.
fn parts<'a>(
    prev: &'a str,
    case_id: &'a str,
    seq: &'a str,
    kind: &'a str,
    state: &'a str,
    meta: &'a EventMeta,
    at: &'a str,
) -> [&'a str; 9] {
    [
        prev,
        case_id,
        seq,
        kind,
        state,
        &meta.actor,
        at,
        &meta.trace_id,
        &meta.detail,
    ]
}

/// Length-prefixed, so no two different field splits hash alike.
fn feed<'a>(parts: impl IntoIterator<Item = &'a str>, mut update: impl FnMut(&[u8])) {
    for part in parts {
        update(&(part.len() as u64).to_be_bytes());
        update(part.as_bytes());
    }
}

/// The pre-m0005 hash: plain SHA-256 over the previous hash and the event's fields. Only
/// verified, never written.
pub(crate) fn legacy_hash(
    prev: &str,
    case_id: &str,
    seq: i64,
    kind: &str,
    state: &str,
    meta: &EventMeta,
) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let (seq, at) = (seq.to_string(), meta.at.0.to_string());
    feed(parts(prev, case_id, &seq, kind, state, meta, &at), |b| {
        ctx.update(b)
    });
    hex(ctx.finish().as_ref())
}

/// The keyed hash of an event: HMAC-SHA256 under the chain key named `key_id`, over a domain
/// label, the key id, the previous hash and the event's fields.
#[allow(clippy::too_many_arguments)]
pub(crate) fn keyed_hash(
    key: &hmac::Key,
    key_id: &str,
    prev: &str,
    case_id: &str,
    seq: i64,
    kind: &str,
    state: &str,
    meta: &EventMeta,
) -> String {
    let mut ctx = hmac::Context::with_key(key);
    let (seq, at) = (seq.to_string(), meta.at.0.to_string());
    feed(["etk audit event v1", key_id], |b| ctx.update(b));
    feed(parts(prev, case_id, &seq, kind, state, meta, &at), |b| {
        ctx.update(b)
    });
    hex(ctx.sign().as_ref())
}

/// The seal of the chain head on the case row: `<key id>:<HMAC>`. The HMAC covers the case id,
/// the last sequence number and hash, and (seal v2, written since m0008) the row's state,
/// `updated_at` and `version` as that change left them: rolling the head back to an earlier event
/// (to hide a deleted tail), or restoring an old head from a backup onto a row that has moved on,
/// needs the key. `row: None` is the v1 seal of m0005 (the head only), still read from exported
/// records made before m0008 and re-sealed as v2 in the database once (see `SeaStore::reseal_v1_heads`).
pub(crate) fn head_seal(
    key: &hmac::Key,
    key_id: &str,
    case_id: &str,
    seq: i64,
    hash: &str,
    row: Option<&HeadRow>,
) -> String {
    let mut ctx = hmac::Context::with_key(key);
    let seq = seq.to_string();
    match row {
        None => feed(["etk audit head v1", key_id, case_id, &seq, hash], |b| {
            ctx.update(b)
        }),
        Some(r) => {
            let (at, version) = (r.updated_at.to_string(), r.version.to_string());
            feed(
                [
                    "etk audit head v2",
                    key_id,
                    case_id,
                    &seq,
                    hash,
                    &r.state,
                    &at,
                    &version,
                ],
                |b| ctx.update(b),
            )
        }
    }
    format!("{key_id}:{}", hex(ctx.sign().as_ref()))
}

/// The chain keys a verifier may need, by key id: those of every master key the vault holds, so
/// events chained under a key that is no longer current still verify after a rotation, and
/// those of retired master keys exported with `keys export-audit-key`, so they still verify
/// after the master key itself is destroyed.
#[derive(Clone)]
pub struct ChainKeys {
    keys: HashMap<String, hmac::Key>,
}

impl std::fmt::Debug for ChainKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainKeys")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ChainKeys {
    pub fn new(vault: &Vault) -> Self {
        Self {
            keys: HashMap::new(),
        }
        .with(vault)
    }

    /// Also accepts what any of `vault`'s master keys, or the retired keys whose chain keys it
    /// was given (`privacy.audit_chain_key_files`), made.
    pub fn with(mut self, vault: &Vault) -> Self {
        for id in vault.audit_chain_key_ids() {
            if let Some(key) = vault.audit_chain_key_for(&id) {
                self.keys.insert(id, key.clone());
            }
        }
        self
    }

    pub(crate) fn get(&self, key_id: &str) -> Option<&hmac::Key> {
        self.keys.get(key_id)
    }
}

/// The head of a case's chain as recorded on its row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainHead {
    pub sequence: i64,
    pub hash: String,
    /// `head_seal`; `None` on rows not written since m0005.
    pub seal: Option<String>,
    /// The row's fields the v2 seal covers; always read from the database. `None` only for an
    /// exported record made before m0008, whose seal is v1.
    pub row: Option<HeadRow>,
}

/// The case row's fields a v2 head seal covers besides the head.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeadRow {
    /// `State::as_str`, as stored.
    pub state: String,
    /// Unix microseconds.
    pub updated_at: i64,
    pub version: i64,
}

impl ChainHead {
    /// The key id of the head's seal (empty when unsealed).
    pub fn key_id(&self) -> &str {
        self.seal
            .as_deref()
            .and_then(|s| s.split_once(':'))
            .map_or("", |(id, _)| id)
    }
}

/// Why a link does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum ChainProblem {
    /// The hash does not match the event's fields and its predecessor's hash.
    HashMismatch,
    /// Sequence numbers are not 1, 2, 3, …
    SequenceGap,
    /// The event (or the head's seal) names a key the verifier does not hold.
    UnknownKey,
    /// An unkeyed link after a keyed one.
    LegacyAfterKeyed,
    /// The chain does not end at the sealed head on the case row.
    HeadMismatch,
    /// The chain ends in an unkeyed link: nothing keyed covers it.
    UnanchoredLegacy,
}

impl ChainProblem {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The first broken link of a case's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenLink {
    /// The first event that does not verify (for a head problem: the head's sequence).
    pub sequence: i64,
    pub problem: ChainProblem,
    /// Readable; no personal data (names only sequence numbers and key ids).
    pub detail: String,
}

/// What verifying one case's chain found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainReport {
    pub events: u64,
    /// Events verified as legacy (unkeyed) links.
    pub legacy: u64,
    pub broken: Option<BrokenLink>,
}

fn broken(sequence: i64, problem: ChainProblem, detail: String) -> Option<BrokenLink> {
    Some(BrokenLink {
        sequence,
        problem,
        detail,
    })
}

/// The report on events whose case has no row: the head (and the case) are gone.
pub fn orphan_report(events: u64) -> ChainReport {
    ChainReport {
        events: 0,
        legacy: 0,
        broken: broken(
            0,
            ChainProblem::HeadMismatch,
            format!("{events} audit event(s) but no case row"),
        ),
    }
}

/// Like `verify_case`, for a trail whose event `unreadable` could not be decoded (`events` are
/// the readable ones before it): a broken link in that prefix is reported as usual, else the
/// unreadable event is the first broken link.
pub fn verify_case_unreadable(
    events: &[CaseEvent],
    unreadable: i64,
    head: &ChainHead,
    keys: &ChainKeys,
) -> ChainReport {
    let mut report = verify_case(events, head, keys);
    let in_prefix = report.broken.take().filter(|b| {
        b.sequence < unreadable
            && !matches!(
                b.problem,
                ChainProblem::HeadMismatch | ChainProblem::UnanchoredLegacy
            )
    });
    report.broken = in_prefix.or_else(|| {
        broken(
            unreadable,
            ChainProblem::HashMismatch,
            format!("event {unreadable} cannot be read"),
        )
    });
    report
}

/// Verifies a case's trail (in sequence order) against the head on its row and reports the
/// first broken link: each event's hash must cover its predecessor's hash and its own fields,
/// starting from the genesis hash, under a key in `keys`; unkeyed links only before the first
/// keyed one; the last event must be keyed and equal the sealed head.
pub fn verify_case(events: &[CaseEvent], head: &ChainHead, keys: &ChainKeys) -> ChainReport {
    let mut report = ChainReport::default();
    report.broken = first_broken(events, head, keys, &mut report);
    report
}

fn first_broken(
    events: &[CaseEvent],
    head: &ChainHead,
    keys: &ChainKeys,
    report: &mut ChainReport,
) -> Option<BrokenLink> {
    let mut prev = GENESIS_HASH.to_owned();
    let mut keyed_seen = false;
    for (i, e) in events.iter().enumerate() {
        let expected_seq = i as i64 + 1;
        if e.sequence != expected_seq {
            return broken(
                e.sequence.min(expected_seq),
                ChainProblem::SequenceGap,
                format!("event {expected_seq} expected, found {}", e.sequence),
            );
        }
        let meta = EventMeta {
            actor: e.actor.clone(),
            trace_id: e.trace_id.clone(),
            at: e.at,
            detail: e.detail.clone(),
        };
        let (case_id, state) = (e.case_id.to_string(), e.state.as_str());
        let computed = match e.key_id.as_deref() {
            None if keyed_seen => {
                return broken(
                    e.sequence,
                    ChainProblem::LegacyAfterKeyed,
                    format!("event {} is unkeyed after a keyed event", e.sequence),
                );
            }
            None => {
                report.legacy += 1;
                legacy_hash(&prev, &case_id, e.sequence, &e.kind, state, &meta)
            }
            Some(id) => {
                keyed_seen = true;
                let Some(key) = keys.get(id) else {
                    return broken(
                        e.sequence,
                        ChainProblem::UnknownKey,
                        format!("event {} was hashed with unknown key {id}", e.sequence),
                    );
                };
                keyed_hash(key, id, &prev, &case_id, e.sequence, &e.kind, state, &meta)
            }
        };
        if computed != e.hash {
            return broken(
                e.sequence,
                ChainProblem::HashMismatch,
                format!("event {}'s hash does not match its content", e.sequence),
            );
        }
        report.events += 1;
        prev = computed;
    }
    // Every case is created with its first event: a case without any has lost its trail.
    let Some(last) = events.last() else {
        return broken(
            head.sequence,
            ChainProblem::HeadMismatch,
            format!(
                "the case has no audit events (its head names event {})",
                head.sequence
            ),
        );
    };
    if last.key_id.is_none() {
        return broken(
            last.sequence,
            ChainProblem::UnanchoredLegacy,
            format!(
                "the trail ends in unkeyed event {} (start the gateway once to anchor it)",
                last.sequence
            ),
        );
    }
    if head.sequence != last.sequence || head.hash != last.hash {
        return broken(
            head.sequence,
            ChainProblem::HeadMismatch,
            format!(
                "the case's head names event {} but the trail ends at event {}",
                head.sequence, last.sequence
            ),
        );
    }
    if let Some(row) = &head.row
        && row.state != last.state.as_str()
    {
        return broken(
            head.sequence,
            ChainProblem::HeadMismatch,
            format!(
                "the case's state is not the one its last event {} recorded",
                last.sequence
            ),
        );
    }
    let Some(seal) = head.seal.as_deref() else {
        return broken(
            head.sequence,
            ChainProblem::HeadMismatch,
            "the case's head is not sealed".into(),
        );
    };
    let key_id = head.key_id();
    let Some(key) = keys.get(key_id) else {
        return broken(
            head.sequence,
            ChainProblem::UnknownKey,
            format!("the case's head was sealed with unknown key {key_id}"),
        );
    };
    let case_id = last.case_id.to_string();
    if head_seal(
        key,
        key_id,
        &case_id,
        head.sequence,
        &head.hash,
        head.row.as_ref(),
    ) != seal
    {
        return broken(
            head.sequence,
            ChainProblem::HeadMismatch,
            "the case's head seal does not match".into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{State, Timestamp};

    fn vault(byte: u8) -> Vault {
        Vault::from_master_key(&[byte; 32]).unwrap()
    }

    fn meta_of(e: &CaseEvent) -> EventMeta {
        EventMeta {
            actor: e.actor.clone(),
            trace_id: e.trace_id.clone(),
            at: e.at,
            detail: e.detail.clone(),
        }
    }

    /// Recomputes `e`'s hash over `prev` as the store writes it (keyed when `key` is given,
    /// else the legacy hash).
    fn rehash(e: &mut CaseEvent, prev: &str, key: Option<&Vault>) {
        let (case_id, state) = (e.case_id.to_string(), e.state.as_str());
        let meta = meta_of(e);
        e.key_id = key.map(Vault::key_id);
        e.hash = match key {
            Some(v) => keyed_hash(
                v.audit_chain_key(),
                &v.key_id(),
                prev,
                &case_id,
                e.sequence,
                &e.kind,
                state,
                &meta,
            ),
            None => legacy_hash(prev, &case_id, e.sequence, &e.kind, state, &meta),
        };
    }

    /// Re-chains every event from `from` (0-based) on, each keyed by `keys[i]` (None: legacy).
    fn rechain(events: &mut [CaseEvent], from: usize, key: impl Fn(usize) -> Option<Vault>) {
        for i in from..events.len() {
            let prev = if i == 0 {
                GENESIS_HASH.to_owned()
            } else {
                events[i - 1].hash.clone()
            };
            let k = key(i);
            rehash(&mut events[i], &prev, k.as_ref());
        }
    }

    /// The row as the store leaves it after `events`' last change.
    fn row_of(events: &[CaseEvent]) -> HeadRow {
        let last = events.last().unwrap();
        HeadRow {
            state: last.state.as_str().to_owned(),
            updated_at: last.at.0,
            version: last.sequence,
        }
    }

    fn sealed(v: &Vault, last: &CaseEvent, row: Option<HeadRow>) -> ChainHead {
        ChainHead {
            sequence: last.sequence,
            hash: last.hash.clone(),
            seal: Some(head_seal(
                v.audit_chain_key(),
                &v.key_id(),
                &last.case_id.to_string(),
                last.sequence,
                &last.hash,
                row.as_ref(),
            )),
            row,
        }
    }

    fn head_of(events: &[CaseEvent], v: &Vault) -> ChainHead {
        sealed(v, events.last().unwrap(), Some(row_of(events)))
    }

    /// A well-formed keyed trail of `n` events, chained as the store writes them.
    fn trail(n: i64) -> Vec<CaseEvent> {
        let case_id = crate::clock::new_case_id();
        let mut events: Vec<CaseEvent> = (1..=n)
            .map(|sequence| CaseEvent {
                case_id: case_id.clone(),
                sequence,
                kind: format!("kind_{sequence}"),
                state: State::Accepted,
                actor: format!("SE1655999991-E{sequence}"),
                at: Timestamp(1_700_000_000_000_000 + sequence),
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                detail: format!("step {sequence}"),
                hash: String::new(),
                key_id: None,
            })
            .collect();
        rechain(&mut events, 0, |_| Some(vault(1)));
        events
    }

    fn check(events: &[CaseEvent], head: &ChainHead) -> Option<BrokenLink> {
        verify_case(events, head, &ChainKeys::new(&vault(1))).broken
    }

    fn problem(events: &[CaseEvent]) -> Option<(i64, ChainProblem)> {
        let head = head_of(events, &vault(1));
        check(events, &head).map(|b| (b.sequence, b.problem))
    }

    #[test]
    fn an_intact_trail_verifies() {
        let events = trail(4);
        let report = verify_case(
            &events,
            &head_of(&events, &vault(1)),
            &ChainKeys::new(&vault(1)),
        );
        assert_eq!(report.broken, None);
        assert_eq!((report.events, report.legacy), (4, 0));
    }

    #[test]
    fn changing_any_recorded_field_breaks_the_chain_at_that_event() {
        let tamperings: [fn(&mut CaseEvent); 8] = [
            |e| e.actor.push('x'),
            |e| e.kind.push('x'),
            |e| e.state = State::Cancelled,
            |e| e.at = Timestamp(e.at.0 + 1),
            |e| e.trace_id.push('0'),
            |e| e.detail.push('!'),
            // Another first digit, whatever the random key made it (a fixed "f" left the
            // hash unchanged one run in sixteen).
            |e| {
                let other = if e.hash.starts_with('f') { "0" } else { "f" };
                e.hash.replace_range(0..1, other);
            },
            |e| e.case_id = crate::clock::new_case_id(),
        ];
        for (i, tamper) in tamperings.iter().enumerate() {
            let mut events = trail(3);
            tamper(&mut events[1]);
            assert_eq!(
                problem(&events),
                Some((2, ChainProblem::HashMismatch)),
                "tampering {i}"
            );
        }
    }

    #[test]
    fn rehashing_without_the_key_is_detected() {
        // Re-hashed with another key (the attacker's), head re-sealed with it too.
        let mut events = trail(3);
        events[1].detail = "rewritten".into();
        rechain(&mut events, 1, |_| Some(vault(2)));
        let head = head_of(&events, &vault(2));
        let found = check(&events, &head).unwrap();
        assert_eq!(
            (found.sequence, found.problem),
            (2, ChainProblem::UnknownKey)
        );
        // …claiming the real key id.
        let mut events = trail(3);
        events[1].detail = "rewritten".into();
        rechain(&mut events, 1, |_| Some(vault(2)));
        for e in &mut events[1..] {
            e.key_id = Some(vault(1).key_id());
        }
        assert_eq!(problem(&events), Some((2, ChainProblem::HashMismatch)));
        // …or as legacy (plain SHA-256) links from the tampered event on.
        let mut events = trail(3);
        events[1].detail = "rewritten".into();
        rechain(&mut events, 1, |_| None);
        assert_eq!(problem(&events), Some((2, ChainProblem::LegacyAfterKeyed)));
        // …or the whole trail as legacy links.
        let mut events = trail(3);
        events[1].detail = "rewritten".into();
        rechain(&mut events, 0, |_| None);
        assert_eq!(problem(&events), Some((3, ChainProblem::UnanchoredLegacy)));
    }

    #[test]
    fn removed_reordered_or_inserted_events_break_the_chain() {
        let events = trail(3);
        let mut removed = events.clone();
        removed.remove(1);
        assert_eq!(problem(&removed), Some((2, ChainProblem::SequenceGap)));
        let mut renumbered = removed.clone();
        renumbered[1].sequence = 2;
        assert_eq!(problem(&renumbered), Some((2, ChainProblem::HashMismatch)));
        let mut first_removed = events.clone();
        first_removed.remove(0);
        assert_eq!(
            problem(&first_removed),
            Some((1, ChainProblem::SequenceGap))
        );
        let mut swapped = events.clone();
        swapped.swap(1, 2);
        assert_eq!(problem(&swapped), Some((2, ChainProblem::SequenceGap)));
    }

    #[test]
    fn a_deleted_tail_is_detected_by_the_sealed_head() {
        let events = trail(3);
        let head = head_of(&events, &vault(1));
        // Tail deleted, head left as it was.
        assert_eq!(
            check(&events[..2], &head).map(|b| b.problem),
            Some(ChainProblem::HeadMismatch)
        );
        // Head rolled back to the new last event, but the seal could not be remade.
        let rolled = ChainHead {
            sequence: 2,
            hash: events[1].hash.clone(),
            seal: head.seal.clone(),
            row: Some(row_of(&events[..2])),
        };
        assert_eq!(
            check(&events[..2], &rolled).map(|b| (b.sequence, b.problem)),
            Some((2, ChainProblem::HeadMismatch))
        );
        let unsealed = ChainHead {
            seal: None,
            ..rolled
        };
        assert_eq!(
            check(&events[..2], &unsealed).map(|b| b.problem),
            Some(ChainProblem::HeadMismatch)
        );
        // Every event deleted, with the head left or reset to nothing.
        assert_eq!(
            check(&[], &head).map(|b| b.problem),
            Some(ChainProblem::HeadMismatch)
        );
        assert_eq!(
            check(&[], &ChainHead::default()).map(|b| (b.sequence, b.problem)),
            Some((0, ChainProblem::HeadMismatch))
        );
    }

    #[test]
    fn an_old_head_replayed_onto_a_row_that_moved_on_is_detected() {
        let events = trail(3);
        let v = vault(1);
        // The head as a backup holds it after event 2, restored with the tail deleted, while
        // the row's state, time or version is that of event 3 (or made up).
        let old = head_of(&events[..2], &v);
        let now = row_of(&events);
        for row in [
            HeadRow {
                state: State::Cancelled.as_str().into(),
                ..old.row.clone().unwrap()
            },
            HeadRow {
                updated_at: now.updated_at,
                ..old.row.clone().unwrap()
            },
            HeadRow {
                version: now.version,
                ..old.row.clone().unwrap()
            },
        ] {
            let replayed = ChainHead {
                row: Some(row),
                ..old.clone()
            };
            assert_eq!(
                check(&events[..2], &replayed).map(|b| (b.sequence, b.problem)),
                Some((2, ChainProblem::HeadMismatch))
            );
        }
        assert_eq!(check(&events[..2], &old), None);
        // A v1 seal (head only) is not accepted from a row.
        let v1 = ChainHead {
            row: Some(row_of(&events)),
            ..sealed(&v, &events[2], None)
        };
        assert_eq!(
            check(&events, &v1).map(|b| b.problem),
            Some(ChainProblem::HeadMismatch)
        );
        // …only where no row is given (a record exported before m0008).
        assert_eq!(check(&events, &sealed(&v, &events[2], None)), None);
    }

    #[test]
    fn an_unreadable_event_is_the_broken_link_unless_one_before_it_is() {
        let events = trail(3);
        let head = head_of(&events, &vault(1));
        let keys = ChainKeys::new(&vault(1));
        let found = verify_case_unreadable(&events[..1], 2, &head, &keys);
        assert_eq!(
            found.broken.map(|b| (b.sequence, b.problem)),
            Some((2, ChainProblem::HashMismatch))
        );
        let mut tampered = events.clone();
        tampered[0].detail.push('!');
        let found = verify_case_unreadable(&tampered[..1], 2, &head, &keys);
        assert_eq!(
            found.broken.map(|b| (b.sequence, b.problem)),
            Some((1, ChainProblem::HashMismatch))
        );
    }

    #[test]
    fn legacy_links_verify_only_as_an_anchored_prefix() {
        // Two pre-m0005 events, then the keyed anchor.
        let mut events = trail(3);
        rechain(&mut events, 0, |i| (i == 2).then(|| vault(1)));
        let report = verify_case(
            &events,
            &head_of(&events, &vault(1)),
            &ChainKeys::new(&vault(1)),
        );
        assert_eq!(report.broken, None);
        assert_eq!(report.legacy, 2);
        // A rewritten legacy event, re-hashed as legacy: the anchor no longer covers it.
        let mut rewritten = events.clone();
        rewritten[0].detail = "rewritten".into();
        rechain(&mut rewritten[..2], 0, |_| None);
        assert_eq!(problem(&rewritten), Some((3, ChainProblem::HashMismatch)));
        // Not yet anchored: reported, never silently accepted.
        let mut unanchored = events.clone();
        unanchored.pop();
        let head = ChainHead {
            sequence: 2,
            hash: unanchored[1].hash.clone(),
            seal: None,
            row: Some(row_of(&unanchored)),
        };
        assert_eq!(
            check(&unanchored, &head).map(|b| (b.sequence, b.problem)),
            Some((2, ChainProblem::UnanchoredLegacy))
        );
    }

    #[test]
    fn events_of_a_rotated_key_verify_with_that_key_given() {
        // Events 1–2 under the old key, 3 under the new one.
        let mut events = trail(3);
        rechain(&mut events, 0, |i| {
            Some(if i < 2 { vault(1) } else { vault(2) })
        });
        let head = head_of(&events, &vault(2));
        let both = ChainKeys::new(&vault(2)).with(&vault(1));
        assert_eq!(verify_case(&events, &head, &both).broken, None);
        let only_new = ChainKeys::new(&vault(2));
        assert_eq!(
            verify_case(&events, &head, &only_new)
                .broken
                .map(|b| (b.sequence, b.problem)),
            Some((1, ChainProblem::UnknownKey))
        );
    }

    #[test]
    fn field_boundaries_and_the_key_id_are_part_of_the_hash() {
        let meta = |actor: &str| EventMeta {
            actor: actor.into(),
            trace_id: String::new(),
            at: Timestamp(0),
            detail: String::new(),
        };
        let k = vault(1);
        let h = |id: &str, kind: &str, state: &str| {
            keyed_hash(
                k.audit_chain_key(),
                id,
                GENESIS_HASH,
                "c",
                1,
                kind,
                state,
                &meta("a"),
            )
        };
        assert_ne!(h("x", "ab", "c"), h("x", "a", "bc"));
        assert_ne!(h("x", "a", "b"), h("y", "a", "b"));
        assert_ne!(
            legacy_hash(GENESIS_HASH, "c", 1, "ab", "c", &meta("a")),
            legacy_hash(GENESIS_HASH, "c", 1, "a", "bc", &meta("a")),
        );
    }
}
