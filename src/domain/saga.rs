//! The case's state machine: pure, closed, and the only place that decides which state may
//! follow which and which side effects a change causes. Storage applies its verdicts in one
//! transaction with the effects (the outbox); the engine executes the effects and feeds their
//! results back as events. Nothing here does I/O.
//!
//! The central rule — revocation before KIV — is structural: `Effect::RemoveKiv` is produced
//! only from `Revoked`, which is reachable only through `Event::RevocationConfirmed`, and the
//! office's completion is refused unless the confirmation is recorded. With the revocation
//! check on (`Verification::Required`), `Revoked` also waits for the card's certificates to be
//! found revoked on their CA's list (`Event::RevocationVerified`, believed only while that list
//! is current) before anyone is told and before anything is removed from KIV.

use super::{KivRemovalRoute, State, Timestamp};

/// A side effect to run later, at most once per idempotency key. Its name (`name`) is
/// stored and part of idempotency keys: it never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum Step {
    /// Look up the employment in KIV and keep a snapshot (for compensation).
    Snapshot,
    /// Report the cut card to TjänsteID-service.
    Report,
    /// Ask TjänsteID-service for the outcome (only where the connector can).
    PollOutcome,
    /// Remind TjänsteID-service of a report without outcome (the n-th reminder).
    Remind(u32),
    /// Give up waiting for an outcome: the case needs attention.
    Escalate,
    /// Tell the head of operations that the card is deregistered. ("notify" is the combined
    /// step of earlier releases: resumed as the first notice.)
    #[strum(to_string = "notify_head", serialize = "notify")]
    NotifyHead,
    /// Then the card holder (a no-op when no address is known). Separate steps, so a failure
    /// to reach one person never makes the other get the notice twice.
    NotifyHolder,
    /// Remove the employment from KIV (care-provider route only).
    RemoveKiv,
    /// Put back an employment removed from KIV too early, from the snapshot.
    RestoreKiv,
    /// Look the card's certificates up on their CA's revocation list (check on).
    VerifyRevocation,
    /// Give up waiting for the list to show them revoked: the case needs attention.
    VerifyDeadline,
}

impl Step {
    /// Stable name for storage, keys and metrics.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// A step read back from storage: its name, and for a reminder its number `n`.
    pub fn from_stored(name: &str, n: i64) -> Option<Self> {
        match name.parse().ok()? {
            Step::Remind(_) => Some(Step::Remind(u32::try_from(n).ok()?)),
            step => Some(step),
        }
    }

    /// Steps that may legitimately run more than once per case get a distinguishing suffix in
    /// their idempotency key (the audit sequence number of the event that scheduled them).
    /// Reminders count too: an operator's retry starts a new round of them.
    pub fn repeatable(self) -> bool {
        matches!(
            self,
            Step::PollOutcome
                | Step::RestoreKiv
                | Step::Remind(_)
                | Step::VerifyRevocation
                | Step::VerifyDeadline
        )
    }
}

/// When an effect becomes due, symbolically; the engine maps these to configured durations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delay {
    Now,
    PollInterval,
    RemindAfter,
    EscalateAfter,
    /// The configured limit for a revocation to show on its CA's list.
    VerifyWithin,
    /// At this instant (a list's `nextUpdate`).
    At(Timestamp),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effect {
    pub step: Step,
    pub delay: Delay,
}

const fn now(step: Step) -> Effect {
    Effect {
        step,
        delay: Delay::Now,
    }
}

/// What the state machine knows of a case besides its state. Stored by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum SnapshotState {
    /// Not taken yet.
    Pending,
    /// Taken: the employment existed at acceptance and can be restored.
    Taken,
    /// Looked up at acceptance and not found: nothing to guard or restore.
    Absent,
}

impl SnapshotState {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn from_str_opt(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// The revocation check of a case: fixed when the case is created (the configuration in force
/// then), recorded on it, and `Verified` once its certificates were found revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum Verification {
    /// Off: TjänsteID-service's confirmation alone lets the case go on (and every case from
    /// before the check existed).
    Off,
    /// On, and not yet verified.
    Required,
    /// On, and verified on a list that was current when checked.
    Verified,
}

impl Verification {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn from_str_opt(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// The part of a case the state machine reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saga {
    pub state: State,
    pub route: KivRemovalRoute,
    pub snapshot: SnapshotState,
    /// The state a case in `NeedsAttention` came from.
    pub attention_from: Option<State>,
    /// True once a revocation confirmation is durably recorded. Never reset.
    pub revocation_confirmed: bool,
    /// True once the head of operations has been told. Never reset: a retry must not tell
    /// them twice.
    pub head_notified: bool,
    pub verification: Verification,
}

impl Saga {
    pub fn new(route: KivRemovalRoute) -> Self {
        Self {
            state: State::Accepted,
            route,
            snapshot: SnapshotState::Pending,
            attention_from: None,
            revocation_confirmed: false,
            head_notified: false,
            verification: Verification::Off,
        }
    }

    /// A new case whose revocation is to be verified on the CA's lists.
    pub fn with_check(mut self, on: bool) -> Self {
        self.verification = if on {
            Verification::Required
        } else {
            Verification::Off
        };
        self
    }

    /// Whether the revocation may be taken as done: confirmed, and — with the check on —
    /// verified.
    pub fn revocation_settled(&self) -> bool {
        self.revocation_confirmed && self.verification != Verification::Required
    }

    /// The state that decides behaviour: a case needing attention behaves like where it stopped.
    fn effective(&self) -> State {
        match (self.state, self.attention_from) {
            (State::NeedsAttention, Some(from)) => from,
            (s, _) => s,
        }
    }

    /// Whether the employment must still be guarded against early removal: until the
    /// revocation is confirmed and — with the check on — verified.
    pub fn guards_kiv(&self) -> bool {
        let unconfirmed = !self.revocation_confirmed
            && matches!(
                self.effective(),
                State::Accepted | State::RevocationRequested
            );
        let unverified =
            self.verification == Verification::Required && self.effective() == State::Revoked;
        (unconfirmed || unverified) && !self.state.is_terminal()
    }

    /// Whether the health-care office may see and complete the removal task.
    pub fn office_task_open(&self) -> bool {
        self.revocation_settled()
            && self.route == KivRemovalRoute::HealthCareOffice
            && self.effective() == State::KivRemovalPending
    }
}

/// Something that happened to a case: a caller's command or a step's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The care provider withdraws the report.
    Cancel,
    SnapshotTaken {
        found: bool,
    },
    ReportSent,
    OutcomePending,
    RevocationConfirmed {
        reference: String,
        /// The card's certificates the confirmation names (kept for the revocation check).
        certificates: Vec<super::CardCertificate>,
    },
    RevocationRejected {
        reason: String,
    },
    /// Every certificate of the card is revoked on its CA's list, checked `at`; the lists hold
    /// until `valid_until` (the earliest `nextUpdate`). Believed only if `at <= valid_until`.
    RevocationVerified {
        at: Timestamp,
        valid_until: Timestamp,
    },
    /// A certificate is not on a list issued before the confirmation: look again then.
    RevocationNotYetListed {
        recheck_at: Timestamp,
    },
    /// A list issued after the confirmation shows a certificate as not revoked.
    RevocationDiscrepancy,
    /// No certificate of the card is known: nothing can be verified.
    RevocationUnverifiable,
    /// The limit for the revocation to show on the lists has passed.
    VerificationOverdue,
    ReminderSent {
        n: u32,
    },
    EscalationDue,
    /// The head of operations has been told.
    HeadNotified,
    /// Everyone has been told (the card holder last).
    NotificationsSent,
    /// The gateway removed the employment through the KIV connector.
    KivRemoved,
    /// The health-care office reports it removed the employment.
    OfficeCompleted,
    /// Reconciliation found the employment gone from KIV.
    EmploymentMissing,
    EmploymentRestored,
    /// A step failed terminally or exhausted its retries.
    StepFailed {
        step: Step,
        reason: String,
    },
    OperatorRetry,
    OperatorResolve {
        completed: bool,
    },
}

/// Why an event does not apply to a case in its current state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error(
        "the case is {state} and can no longer be cancelled: the report has gone out to TjänsteID-service"
    )]
    CancelTooLate { state: State },
    #[error("the case has not been reported to TjänsteID-service yet")]
    NotReported,
    #[error("the case is {state}: its revocation outcome can no longer change")]
    OutcomeSettled { state: State },
    #[error("the card's revocation is not confirmed: the employment must stay in KIV until it is")]
    RevocationNotConfirmed,
    #[error(
        "the card's revocation is not yet verified on its CA's revocation list: the employment must stay in KIV until it is"
    )]
    RevocationNotVerified,
    #[error("the revocation is already confirmed with another revocation_reference")]
    ConflictingReference,
    #[error(
        "the case's employment is removed by the care provider route, not by the health-care office"
    )]
    WrongRoute,
    #[error("the case is {state}, not waiting for the removal from KIV")]
    NotAwaitingKivRemoval { state: State },
    #[error("the case is {state}; only cases needing attention can be retried or resolved")]
    NotNeedingAttention { state: State },
}

/// The verdict on one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The case after the event; equal to the input when nothing changed.
    pub saga: Saga,
    pub effects: Vec<Effect>,
    /// Audit event kind; `None` for a repeat or stale event that changes nothing.
    pub audit: Option<&'static str>,
}

impl Outcome {
    fn unchanged(saga: Saga) -> Self {
        Self {
            saga,
            effects: Vec::new(),
            audit: None,
        }
    }

    fn to(saga: Saga, state: State, audit: &'static str, effects: Vec<Effect>) -> Self {
        let mut next = saga;
        next.state = state;
        if state != State::NeedsAttention {
            next.attention_from = None;
        }
        Self {
            saga: next,
            effects,
            audit: Some(audit),
        }
    }

    fn attention(saga: Saga, audit: &'static str) -> Self {
        let from = saga.effective();
        let mut o = Self::to(saga, State::NeedsAttention, audit, Vec::new());
        o.saga.attention_from = Some(from);
        o
    }

    fn audit_only(saga: Saga, audit: &'static str, effects: Vec<Effect>) -> Self {
        Self {
            saga,
            effects,
            audit: Some(audit),
        }
    }
}

/// Effects that (re)start the work of a state, for the initial entry and operator retries.
fn work_of(saga: &Saga, state: State) -> Vec<Effect> {
    match state {
        // The snapshot and the report go out side by side: a KIV outage must not hold back
        // the revocation, which matters more.
        State::Accepted if saga.snapshot == SnapshotState::Pending => {
            vec![now(Step::Snapshot), now(Step::Report)]
        }
        State::Accepted => vec![now(Step::Report)],
        State::RevocationRequested => vec![
            Effect {
                step: Step::PollOutcome,
                delay: Delay::PollInterval,
            },
            Effect {
                step: Step::Remind(1),
                delay: Delay::RemindAfter,
            },
            Effect {
                step: Step::Escalate,
                delay: Delay::EscalateAfter,
            },
        ],
        State::Revoked if saga.verification == Verification::Required => vec![
            now(Step::VerifyRevocation),
            Effect {
                step: Step::VerifyDeadline,
                delay: Delay::VerifyWithin,
            },
        ],
        State::Revoked if saga.head_notified => vec![now(Step::NotifyHolder)],
        State::Revoked => vec![now(Step::NotifyHead)],
        State::KivRemovalPending if saga.route == KivRemovalRoute::CareProvider => {
            vec![now(Step::RemoveKiv)]
        }
        _ => Vec::new(),
    }
}

/// The effects a new case starts with.
pub fn initial_effects(saga: &Saga) -> Vec<Effect> {
    work_of(saga, State::Accepted)
}

pub fn transition(saga: Saga, event: &Event) -> Result<Outcome, TransitionError> {
    use State as S;
    let state = saga.state;
    let eff = saga.effective();
    if state.is_terminal() {
        return match event {
            Event::Cancel if state == S::Cancelled => Ok(Outcome::unchanged(saga)),
            Event::Cancel => Err(TransitionError::CancelTooLate { state }),
            // A repeat of a recorded confirmation is harmless; a case an operator closed without
            // one cannot take one afterwards.
            Event::RevocationConfirmed { .. } if saga.revocation_confirmed => {
                Ok(Outcome::unchanged(saga))
            }
            Event::RevocationRejected { .. } if state == S::Rejected => {
                Ok(Outcome::unchanged(saga))
            }
            Event::RevocationConfirmed { .. } | Event::RevocationRejected { .. } => {
                Err(TransitionError::OutcomeSettled { state })
            }
            Event::OfficeCompleted if state == S::Completed && saga.revocation_settled() => {
                Ok(Outcome::unchanged(saga))
            }
            Event::OfficeCompleted if !saga.revocation_confirmed => {
                Err(TransitionError::RevocationNotConfirmed)
            }
            Event::OfficeCompleted => Err(TransitionError::NotAwaitingKivRemoval { state }),
            Event::OperatorRetry | Event::OperatorResolve { .. } => {
                Err(TransitionError::NotNeedingAttention { state })
            }
            // Late results of steps are stale once a case has ended.
            _ => Ok(Outcome::unchanged(saga)),
        };
    }
    match event {
        Event::Cancel => match state {
            S::Accepted => Ok(Outcome::to(saga, S::Cancelled, "cancelled", Vec::new())),
            _ => Err(TransitionError::CancelTooLate { state }),
        },
        Event::SnapshotTaken { found } => {
            if saga.snapshot != SnapshotState::Pending
                || saga.revocation_confirmed
                || !matches!(eff, S::Accepted | S::RevocationRequested)
            {
                return Ok(Outcome::unchanged(saga));
            }
            let mut next = saga;
            next.snapshot = if *found {
                SnapshotState::Taken
            } else {
                SnapshotState::Absent
            };
            let audit = if *found {
                "kiv_snapshot_taken"
            } else {
                "kiv_employment_not_found"
            };
            Ok(Outcome::audit_only(next, audit, Vec::new()))
        }
        Event::ReportSent => match state {
            S::Accepted => {
                let effects = work_of(&saga, S::RevocationRequested);
                Ok(Outcome::to(
                    saga,
                    S::RevocationRequested,
                    "revocation_requested",
                    effects,
                ))
            }
            _ => Ok(Outcome::unchanged(saga)),
        },
        Event::OutcomePending => match state {
            S::RevocationRequested => Ok(Outcome {
                saga,
                effects: vec![Effect {
                    step: Step::PollOutcome,
                    delay: Delay::PollInterval,
                }],
                audit: None,
            }),
            _ => Ok(Outcome::unchanged(saga)),
        },
        Event::RevocationConfirmed { .. } => {
            if saga.revocation_confirmed {
                return Ok(Outcome::unchanged(saga));
            }
            match eff {
                S::Accepted => Err(TransitionError::NotReported),
                S::RevocationRequested => {
                    let mut next = saga;
                    next.revocation_confirmed = true;
                    let effects = work_of(&next, S::Revoked);
                    Ok(Outcome::to(
                        next,
                        S::Revoked,
                        "revocation_confirmed",
                        effects,
                    ))
                }
                _ => Ok(Outcome::unchanged(saga)),
            }
        }
        Event::RevocationRejected { .. } => {
            if saga.revocation_confirmed {
                return Err(TransitionError::OutcomeSettled { state: S::Revoked });
            }
            match eff {
                S::Accepted => Err(TransitionError::NotReported),
                S::RevocationRequested => Ok(Outcome::to(
                    saga,
                    S::Rejected,
                    "revocation_rejected",
                    Vec::new(),
                )),
                _ => Ok(Outcome::unchanged(saga)),
            }
        }
        Event::RevocationVerified { at, valid_until } => {
            // A verdict read from a list past its nextUpdate is not believed.
            if state != S::Revoked
                || saga.verification != Verification::Required
                || at > valid_until
            {
                return Ok(Outcome::unchanged(saga));
            }
            let mut next = saga;
            next.verification = Verification::Verified;
            let effects = work_of(&next, S::Revoked);
            Ok(Outcome::audit_only(next, "revocation_verified", effects))
        }
        Event::RevocationNotYetListed { recheck_at } => {
            if state != S::Revoked || saga.verification != Verification::Required {
                return Ok(Outcome::unchanged(saga));
            }
            Ok(Outcome::audit_only(
                saga,
                "revocation_not_yet_listed",
                vec![Effect {
                    step: Step::VerifyRevocation,
                    delay: Delay::At(*recheck_at),
                }],
            ))
        }
        Event::RevocationDiscrepancy
        | Event::RevocationUnverifiable
        | Event::VerificationOverdue => {
            if state != S::Revoked || saga.verification != Verification::Required {
                return Ok(Outcome::unchanged(saga));
            }
            let audit = match event {
                Event::RevocationDiscrepancy => "revocation_discrepancy",
                Event::RevocationUnverifiable => "revocation_unverifiable",
                _ => "revocation_not_verified_in_time",
            };
            Ok(Outcome::attention(saga, audit))
        }
        Event::ReminderSent { n } => match state {
            S::RevocationRequested => Ok(Outcome::audit_only(
                saga,
                "reminder_sent",
                vec![Effect {
                    step: Step::Remind(n + 1),
                    delay: Delay::RemindAfter,
                }],
            )),
            _ => Ok(Outcome::unchanged(saga)),
        },
        Event::EscalationDue => match state {
            S::RevocationRequested => Ok(Outcome::attention(saga, "no_outcome_in_time")),
            _ => Ok(Outcome::unchanged(saga)),
        },
        Event::HeadNotified => match state {
            S::Revoked if !saga.head_notified && saga.revocation_settled() => {
                let mut next = saga;
                next.head_notified = true;
                Ok(Outcome::audit_only(
                    next,
                    "head_notified",
                    vec![now(Step::NotifyHolder)],
                ))
            }
            _ => Ok(Outcome::unchanged(saga)),
        },
        Event::NotificationsSent => match state {
            S::Revoked if saga.revocation_settled() => {
                let mut next = saga;
                next.state = S::KivRemovalPending;
                let effects = work_of(&next, S::KivRemovalPending);
                Ok(Outcome::to(saga, S::KivRemovalPending, "notified", effects))
            }
            _ => Ok(Outcome::unchanged(saga)),
        },
        Event::KivRemoved => match state {
            S::KivRemovalPending if saga.revocation_settled() => {
                Ok(Outcome::to(saga, S::Completed, "kiv_removed", Vec::new()))
            }
            _ => Ok(Outcome::unchanged(saga)),
        },
        Event::OfficeCompleted => {
            if saga.route != KivRemovalRoute::HealthCareOffice {
                return Err(TransitionError::WrongRoute);
            }
            if !saga.revocation_confirmed {
                return Err(TransitionError::RevocationNotConfirmed);
            }
            if !saga.revocation_settled() {
                return Err(TransitionError::RevocationNotVerified);
            }
            match eff {
                S::KivRemovalPending => Ok(Outcome::to(
                    saga,
                    S::Completed,
                    "kiv_removed_by_office",
                    Vec::new(),
                )),
                _ => Err(TransitionError::NotAwaitingKivRemoval { state }),
            }
        }
        Event::EmploymentMissing => {
            if !saga.guards_kiv() {
                return Ok(Outcome::unchanged(saga));
            }
            match saga.snapshot {
                SnapshotState::Taken => Ok(Outcome::audit_only(
                    saga,
                    "kiv_removed_too_early",
                    vec![now(Step::RestoreKiv)],
                )),
                SnapshotState::Pending => Ok(Outcome::attention(
                    saga,
                    "kiv_removed_too_early_no_snapshot",
                )),
                SnapshotState::Absent => Ok(Outcome::unchanged(saga)),
            }
        }
        Event::EmploymentRestored => Ok(Outcome::audit_only(
            saga,
            "kiv_employment_restored",
            Vec::new(),
        )),
        Event::StepFailed { step, .. } => match (step, state) {
            (_, S::NeedsAttention) => Ok(Outcome::unchanged(saga)),
            // Without a snapshot the case goes on unguarded; the revocation must not wait on KIV.
            (Step::Snapshot, _) if saga.snapshot == SnapshotState::Pending => {
                let mut next = saga;
                next.snapshot = SnapshotState::Absent;
                Ok(Outcome::audit_only(next, "kiv_snapshot_failed", Vec::new()))
            }
            // An undeliverable notice to the card holder is recorded, not allowed to keep the
            // employment in KIV: the routine goes on.
            (Step::NotifyHolder, S::Revoked) if saga.revocation_settled() => {
                let mut next = saga;
                next.state = S::KivRemovalPending;
                let effects = work_of(&next, S::KivRemovalPending);
                Ok(Outcome::to(
                    saga,
                    S::KivRemovalPending,
                    "holder_not_notified",
                    effects,
                ))
            }
            // Anything else parks the case: an operator has to know.
            _ => Ok(Outcome::attention(saga, "step_failed")),
        },
        Event::OperatorRetry => match (state, saga.attention_from) {
            (S::NeedsAttention, Some(from)) => {
                let effects = work_of(&saga, from);
                Ok(Outcome::to(saga, from, "operator_retry", effects))
            }
            _ => Err(TransitionError::NotNeedingAttention { state }),
        },
        Event::OperatorResolve { completed } => match state {
            S::NeedsAttention => {
                let target = if *completed {
                    S::Completed
                } else {
                    S::Cancelled
                };
                Ok(Outcome::to(saga, target, "operator_resolved", Vec::new()))
            }
            _ => Err(TransitionError::NotNeedingAttention { state }),
        },
    }
}

#[cfg(test)]
mod tests;

/// Whether `step` is still the case's work. The engine skips (and retires) effects that a
/// later event made stale, such as a reminder for a case already confirmed.
pub fn step_applies(saga: &Saga, step: Step) -> bool {
    match step {
        Step::Snapshot => {
            matches!(saga.state, State::Accepted | State::RevocationRequested)
                && saga.snapshot == SnapshotState::Pending
                && !saga.revocation_confirmed
        }
        Step::Report => saga.state == State::Accepted,
        Step::PollOutcome | Step::Remind(_) | Step::Escalate => {
            saga.state == State::RevocationRequested
        }
        Step::NotifyHead => {
            saga.state == State::Revoked && !saga.head_notified && saga.revocation_settled()
        }
        Step::NotifyHolder => saga.state == State::Revoked && saga.revocation_settled(),
        Step::RemoveKiv => {
            saga.state == State::KivRemovalPending
                && saga.revocation_settled()
                && saga.route == KivRemovalRoute::CareProvider
        }
        Step::VerifyRevocation | Step::VerifyDeadline => {
            saga.state == State::Revoked && saga.verification == Verification::Required
        }
        Step::RestoreKiv => saga.guards_kiv() && saga.snapshot == SnapshotState::Taken,
    }
}
