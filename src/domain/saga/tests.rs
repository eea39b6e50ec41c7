use proptest::prelude::*;

use super::*;

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::Cancel),
        any::<bool>().prop_map(|found| Event::SnapshotTaken { found }),
        Just(Event::ReportSent),
        Just(Event::OutcomePending),
        Just(Event::RevocationConfirmed {
            reference: "R-1".into(),
            certificates: Vec::new()
        }),
        Just(Event::RevocationRejected {
            reason: "no".into()
        }),
        (1u32..4).prop_map(|n| Event::ReminderSent { n }),
        Just(Event::EscalationDue),
        Just(Event::HeadNotified),
        Just(Event::NotificationsSent),
        Just(Event::KivRemoved),
        Just(Event::OfficeCompleted),
        Just(Event::EmploymentMissing),
        Just(Event::EmploymentRestored),
        Just(Event::StepFailed {
            step: Step::Report,
            reason: "x".into()
        }),
        Just(Event::StepFailed {
            step: Step::NotifyHead,
            reason: "x".into()
        }),
        Just(Event::HeadNotified),
        // Checked at 10, on lists holding until 5, 10 or 20: the first is never believed.
        prop_oneof![Just(5i64), Just(10), Just(20)].prop_map(|until| Event::RevocationVerified {
            at: Timestamp(10),
            valid_until: Timestamp(until)
        }),
        Just(Event::RevocationNotYetListed {
            recheck_at: Timestamp(30)
        }),
        Just(Event::RevocationDiscrepancy),
        Just(Event::RevocationUnverifiable),
        Just(Event::VerificationOverdue),
        Just(Event::StepFailed {
            step: Step::VerifyRevocation,
            reason: "x".into()
        }),
        Just(Event::OperatorRetry),
        any::<bool>().prop_map(|completed| Event::OperatorResolve { completed }),
    ]
}

fn any_route() -> impl Strategy<Value = KivRemovalRoute> {
    prop_oneof![
        Just(KivRemovalRoute::CareProvider),
        Just(KivRemovalRoute::HealthCareOffice)
    ]
}

/// The result an engine would feed back after running `step` successfully.
fn result_of(step: Step, confirm: bool) -> Event {
    match step {
        Step::Snapshot => Event::SnapshotTaken { found: true },
        Step::Report => Event::ReportSent,
        Step::PollOutcome if confirm => Event::RevocationConfirmed {
            reference: "R".into(),
            certificates: Vec::new(),
        },
        Step::PollOutcome => Event::OutcomePending,
        Step::Remind(n) => Event::ReminderSent { n },
        Step::Escalate => Event::EscalationDue,
        Step::NotifyHead => Event::HeadNotified,
        Step::NotifyHolder => Event::NotificationsSent,
        Step::RemoveKiv => Event::KivRemoved,
        Step::RestoreKiv => Event::EmploymentRestored,
        Step::VerifyRevocation if confirm => Event::RevocationVerified {
            at: Timestamp(10),
            valid_until: Timestamp(20),
        },
        Step::VerifyRevocation => Event::RevocationNotYetListed {
            recheck_at: Timestamp(30),
        },
        Step::VerifyDeadline => Event::VerificationOverdue,
    }
}

/// Whether `event` is a verification the saga may believe: read from a list still current.
fn believable(event: &Event) -> bool {
    matches!(event, Event::RevocationVerified { at, valid_until } if at <= valid_until)
}

/// Checks every invariant across one step. `verified` tells whether a believable verification
/// was applied before or by this event.
fn check(
    before: &Saga,
    event: &Event,
    outcome: &Outcome,
    resolved_by_operator: bool,
    verified: bool,
) -> Result<(), TestCaseError> {
    let after = &outcome.saga;
    // The check's mode never changes, except Required -> Verified on a believable verdict.
    match (before.verification, after.verification) {
        (a, b) if a == b => {}
        (Verification::Required, Verification::Verified) => {
            prop_assert!(believable(event), "verified by {:?}", event);
        }
        (a, b) => prop_assert!(false, "check went from {:?} to {:?}", a, b),
    }
    let checked = before.verification != Verification::Off;
    // Anything that leads to KIV — its removal, the office's task, the notices that precede
    // them — needs the confirmation and, with the check on, a verification that was believed.
    let towards_kiv = outcome.effects.iter().any(|e| {
        matches!(
            e.step,
            Step::RemoveKiv | Step::NotifyHead | Step::NotifyHolder
        )
    }) || after.office_task_open()
        || (after.state == State::KivRemovalPending && before.state != State::KivRemovalPending)
        || (after.state == State::Completed
            && before.state != State::Completed
            && !matches!(event, Event::OperatorResolve { .. }));
    if towards_kiv {
        prop_assert!(
            after.revocation_confirmed,
            "towards KIV without confirmation after {:?} from {:?}",
            event,
            before
        );
        prop_assert!(
            !checked || verified,
            "towards KIV without verification after {:?} from {:?}",
            event,
            before
        );
    }
    for e in &outcome.effects {
        if e.step == Step::RemoveKiv {
            prop_assert_eq!(after.route, KivRemovalRoute::CareProvider);
        }
    }
    prop_assert!(!after.office_task_open() || after.revocation_confirmed);
    prop_assert!(
        !before.revocation_confirmed || after.revocation_confirmed,
        "confirmation lost"
    );
    if before.state.is_terminal() {
        prop_assert_eq!(before.state, after.state, "left a terminal state");
        prop_assert!(outcome.effects.is_empty(), "effects from a terminal state");
    }
    if after.state == State::Completed && !resolved_by_operator {
        prop_assert!(after.revocation_confirmed, "completed without revocation");
    }
    if after.state == State::Rejected {
        prop_assert!(!after.revocation_confirmed);
    }
    prop_assert!(
        !before.head_notified || after.head_notified,
        "head notice forgotten"
    );
    for e in &outcome.effects {
        // Once the head of operations is told, nothing asks to tell them again.
        prop_assert!(
            !(after.head_notified && e.step == Step::NotifyHead),
            "head told twice after {:?}",
            event
        );
    }
    prop_assert_eq!(
        after.state == State::NeedsAttention,
        after.attention_from.is_some()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any events in any order, duplicated or out of place: invariants hold after every step,
    /// and refused events change nothing.
    #[test]
    fn arbitrary_event_sequences_keep_every_invariant(
        route in any_route(),
        on in any::<bool>(),
        events in proptest::collection::vec(any_event(), 0..40),
    ) {
        let mut saga = Saga::new(route).with_check(on);
        let mut resolved = false;
        let mut verified = false;
        for e in &events {
            // A refused event must leave the case as it was; the loop simply keeps `saga`.
            if let Ok(o) = transition(saga, e) {
                if matches!(e, Event::OperatorResolve { .. }) && o.audit.is_some() {
                    resolved = true;
                }
                verified |= believable(e) && o.audit.is_some();
                check(&saga, e, &o, resolved, verified)?;
                if o.audit.is_none() {
                    prop_assert_eq!(o.saga, saga, "a no-op changed the case");
                }
                saga = o.saga;
            }
        }
    }

    /// An engine-like world: pending effects complete, fail, are delivered twice (a crash after
    /// the side effect but before the commit, then a retry), while outside events interleave.
    #[test]
    fn a_simulated_engine_never_breaks_an_invariant(
        route in any_route(),
        on in any::<bool>(),
        script in proptest::collection::vec((0u8..10, any::<prop::sample::Index>(), any_event()), 0..60),
    ) {
        let mut saga = Saga::new(route).with_check(on);
        let mut pending: Vec<Step> = initial_effects(&saga).iter().map(|e| e.step).collect();
        let mut resolved = false;
        let mut verified = false;
        for (kind, pick, outside) in script {
            let event = match kind {
                // Run a pending effect to success (maybe the poll says confirmed).
                0..=4 if !pending.is_empty() => {
                    let i = pick.index(pending.len());
                    result_of(pending.remove(i), kind % 2 == 0)
                }
                // Redeliver a result without removing the effect: a restart re-runs it.
                5 if !pending.is_empty() => result_of(pending[pick.index(pending.len())], false),
                6 if !pending.is_empty() => {
                    let i = pick.index(pending.len());
                    Event::StepFailed { step: pending.remove(i), reason: "exhausted".into() }
                }
                _ => outside,
            };
            if let Ok(o) = transition(saga, &event) {
                if matches!(event, Event::OperatorResolve { .. }) && o.audit.is_some() {
                    resolved = true;
                }
                verified |= believable(&event) && o.audit.is_some();
                check(&saga, &event, &o, resolved, verified)?;
                pending.extend(o.effects.iter().map(|e| e.step));
                saga = o.saga;
            }
        }
    }
}

#[test]
fn the_routine_runs_in_order_on_both_routes() {
    for route in [
        KivRemovalRoute::CareProvider,
        KivRemovalRoute::HealthCareOffice,
    ] {
        let mut s = Saga::new(route);
        assert_eq!(
            initial_effects(&s),
            vec![now(Step::Snapshot), now(Step::Report)]
        );
        let step = |s: &mut Saga, e: Event| {
            let o = transition(*s, &e).expect("applies");
            *s = o.saga;
            o.effects
        };
        assert_eq!(step(&mut s, Event::SnapshotTaken { found: true }), vec![]);
        assert!(
            transition(s, &Event::OfficeCompleted).is_err(),
            "office completion before confirmation"
        );
        let fx = step(&mut s, Event::ReportSent);
        assert_eq!(s.state, State::RevocationRequested);
        assert!(fx.iter().all(|e| e.step != Step::RemoveKiv));
        assert_eq!(
            transition(s, &Event::Cancel).err(),
            Some(TransitionError::CancelTooLate {
                state: State::RevocationRequested
            })
        );
        assert_eq!(
            step(
                &mut s,
                Event::RevocationConfirmed {
                    reference: "R".into(),
                    certificates: Vec::new()
                }
            ),
            vec![now(Step::NotifyHead)]
        );
        assert_eq!(s.state, State::Revoked);
        assert_eq!(
            step(&mut s, Event::HeadNotified),
            vec![now(Step::NotifyHolder)]
        );
        assert_eq!(s.state, State::Revoked);
        let fx = step(&mut s, Event::NotificationsSent);
        assert_eq!(s.state, State::KivRemovalPending);
        match route {
            KivRemovalRoute::CareProvider => {
                assert_eq!(fx, vec![now(Step::RemoveKiv)]);
                assert_eq!(
                    transition(s, &Event::OfficeCompleted).err(),
                    Some(TransitionError::WrongRoute)
                );
                step(&mut s, Event::KivRemoved);
            }
            KivRemovalRoute::HealthCareOffice => {
                assert!(fx.is_empty());
                assert!(s.office_task_open());
                step(&mut s, Event::OfficeCompleted);
            }
        }
        assert_eq!(s.state, State::Completed);
    }
}

#[test]
fn early_removal_is_refused_and_compensated() {
    let mut s = Saga::new(KivRemovalRoute::HealthCareOffice);
    s = transition(s, &Event::SnapshotTaken { found: true })
        .expect("ok")
        .saga;
    s = transition(s, &Event::ReportSent).expect("ok").saga;
    assert_eq!(
        transition(s, &Event::OfficeCompleted).err(),
        Some(TransitionError::RevocationNotConfirmed)
    );
    let o = transition(s, &Event::EmploymentMissing).expect("ok");
    assert_eq!(o.effects, vec![now(Step::RestoreKiv)]);
    assert_eq!(o.audit, Some("kiv_removed_too_early"));
    // Without a snapshot there is nothing to restore from: an operator must act.
    let mut p = Saga::new(KivRemovalRoute::CareProvider);
    p.state = State::Accepted;
    let o = transition(p, &Event::EmploymentMissing).expect("ok");
    assert_eq!(o.saga.state, State::NeedsAttention);
    // After confirmation a missing employment is expected and ignored.
    let c = transition(
        s,
        &Event::RevocationConfirmed {
            reference: "R".into(),
            certificates: Vec::new(),
        },
    )
    .expect("ok")
    .saga;
    assert_eq!(
        transition(c, &Event::EmploymentMissing).expect("ok").audit,
        None
    );
}

#[test]
fn outcomes_are_idempotent_and_settled() {
    let mut s = Saga::new(KivRemovalRoute::CareProvider);
    s = transition(s, &Event::SnapshotTaken { found: false })
        .expect("ok")
        .saga;
    assert_eq!(
        transition(
            s,
            &Event::RevocationConfirmed {
                reference: "R".into(),
                certificates: Vec::new()
            }
        )
        .err(),
        Some(TransitionError::NotReported)
    );
    s = transition(s, &Event::ReportSent).expect("ok").saga;
    let r = transition(s, &Event::RevocationRejected { reason: "x".into() })
        .expect("ok")
        .saga;
    assert_eq!(r.state, State::Rejected);
    assert_eq!(
        transition(r, &Event::RevocationRejected { reason: "x".into() })
            .expect("ok")
            .audit,
        None
    );
    assert!(
        transition(
            r,
            &Event::RevocationConfirmed {
                reference: "R".into(),
                certificates: Vec::new()
            }
        )
        .is_err()
    );
    let c = transition(
        s,
        &Event::RevocationConfirmed {
            reference: "R".into(),
            certificates: Vec::new(),
        },
    )
    .expect("ok")
    .saga;
    assert_eq!(
        transition(
            c,
            &Event::RevocationConfirmed {
                reference: "R".into(),
                certificates: Vec::new()
            }
        )
        .expect("ok")
        .audit,
        None
    );
    assert!(transition(c, &Event::RevocationRejected { reason: "x".into() }).is_err());
}

#[test]
fn attention_remembers_where_work_resumes() {
    let mut s = Saga::new(KivRemovalRoute::CareProvider);
    s = transition(s, &Event::SnapshotTaken { found: true })
        .expect("ok")
        .saga;
    s = transition(s, &Event::ReportSent).expect("ok").saga;
    let a = transition(s, &Event::EscalationDue).expect("ok").saga;
    assert_eq!(
        (a.state, a.attention_from),
        (State::NeedsAttention, Some(State::RevocationRequested))
    );
    // A late confirmation still moves the case on.
    let c = transition(
        a,
        &Event::RevocationConfirmed {
            reference: "R".into(),
            certificates: Vec::new(),
        },
    )
    .expect("ok");
    assert_eq!(c.saga.state, State::Revoked);
    let r = transition(a, &Event::OperatorRetry).expect("ok");
    assert_eq!(r.saga.state, State::RevocationRequested);
    assert!(r.effects.iter().any(|e| e.step == Step::Escalate));
}

#[test]
fn a_retry_never_tells_the_head_of_operations_twice() {
    let mut s = Saga::new(KivRemovalRoute::CareProvider);
    for e in [
        Event::ReportSent,
        Event::RevocationConfirmed {
            reference: "R".into(),
            certificates: Vec::new(),
        },
        Event::HeadNotified,
    ] {
        s = transition(s, &e).expect("applies").saga;
    }
    // The holder's notice fails for good: the routine goes on to KIV and the head is not
    // told again.
    let o = transition(
        s,
        &Event::StepFailed {
            step: Step::NotifyHolder,
            reason: "550".into(),
        },
    )
    .expect("applies");
    assert_eq!(o.saga.state, State::KivRemovalPending);
    assert_eq!(o.effects, vec![now(Step::RemoveKiv)]);
    // A failure of the head's notice parks the case; resuming it does not repeat a notice
    // already given.
    let mut p = s;
    p.head_notified = true;
    let parked = transition(
        p,
        &Event::StepFailed {
            step: Step::NotifyHead,
            reason: "x".into(),
        },
    )
    .expect("applies")
    .saga;
    let resumed = transition(parked, &Event::OperatorRetry).expect("applies");
    assert_eq!(resumed.effects, vec![now(Step::NotifyHolder)]);
    assert!(!step_applies(&resumed.saga, Step::NotifyHead));
}

#[test]
fn an_operator_closed_case_takes_no_late_office_completion() {
    let mut s = Saga::new(KivRemovalRoute::HealthCareOffice);
    s = transition(s, &Event::ReportSent).expect("ok").saga;
    s = transition(s, &Event::EscalationDue).expect("ok").saga;
    s = transition(s, &Event::OperatorResolve { completed: true })
        .expect("ok")
        .saga;
    assert_eq!(s.state, State::Completed);
    assert_eq!(
        transition(s, &Event::OfficeCompleted).err(),
        Some(TransitionError::RevocationNotConfirmed)
    );
}

#[test]
fn kiv_trouble_never_holds_back_the_report() {
    let s = Saga::new(KivRemovalRoute::CareProvider);
    assert!(initial_effects(&s).contains(&now(Step::Report)));
    let o = transition(
        s,
        &Event::StepFailed {
            step: Step::Snapshot,
            reason: "down".into(),
        },
    )
    .expect("applies");
    assert_eq!(o.saga.state, State::Accepted);
    assert_eq!(o.saga.snapshot, SnapshotState::Absent);
    // A snapshot arriving after the report went out is still kept.
    let r = transition(s, &Event::ReportSent).expect("applies").saga;
    let t = transition(r, &Event::SnapshotTaken { found: true })
        .expect("applies")
        .saga;
    assert_eq!(
        (t.state, t.snapshot),
        (State::RevocationRequested, SnapshotState::Taken)
    );
}

/// Stored effects and idempotency keys hold these exact names.
#[test]
fn step_and_snapshot_names_never_change() {
    let steps = [
        (Step::Snapshot, "snapshot"),
        (Step::Report, "report"),
        (Step::PollOutcome, "poll_outcome"),
        (Step::Remind(3), "remind"),
        (Step::Escalate, "escalate"),
        (Step::NotifyHead, "notify_head"),
        (Step::NotifyHolder, "notify_holder"),
        (Step::RemoveKiv, "remove_kiv"),
        (Step::RestoreKiv, "restore_kiv"),
        (Step::VerifyRevocation, "verify_revocation"),
        (Step::VerifyDeadline, "verify_deadline"),
    ];
    for (step, name) in steps {
        assert_eq!(step.name(), name);
        assert_eq!(Step::from_stored(name, 3), Some(step));
    }
    assert_eq!(Step::from_stored("notify", 0), Some(Step::NotifyHead));
    assert_eq!(Step::from_stored("remind", -1), None);
    assert_eq!(Step::from_stored("Report", 0), None);
    for (s, name) in [
        (SnapshotState::Pending, "pending"),
        (SnapshotState::Taken, "taken"),
        (SnapshotState::Absent, "absent"),
    ] {
        assert_eq!(s.as_str(), name);
        assert_eq!(SnapshotState::from_str_opt(name), Some(s));
    }
}

/// With the check on, a confirmed case waits for its certificates on the CA's list: nobody is
/// told and nothing leaves KIV until a current list shows them revoked.
#[test]
fn with_the_check_on_kiv_waits_for_a_current_list() {
    for route in [
        KivRemovalRoute::CareProvider,
        KivRemovalRoute::HealthCareOffice,
    ] {
        let mut s = Saga::new(route).with_check(true);
        s = transition(s, &Event::ReportSent).expect("ok").saga;
        let o = transition(
            s,
            &Event::RevocationConfirmed {
                reference: "R".into(),
                certificates: Vec::new(),
            },
        )
        .expect("ok");
        assert_eq!(o.saga.state, State::Revoked);
        assert_eq!(
            o.effects,
            vec![
                now(Step::VerifyRevocation),
                Effect {
                    step: Step::VerifyDeadline,
                    delay: Delay::VerifyWithin
                }
            ]
        );
        s = o.saga;
        for step in [Step::NotifyHead, Step::NotifyHolder, Step::RemoveKiv] {
            assert!(!step_applies(&s, step), "{step:?}");
        }
        // The notices' results cannot move the case either.
        assert_eq!(transition(s, &Event::HeadNotified).expect("ok").audit, None);
        assert_eq!(
            transition(s, &Event::NotificationsSent).expect("ok").audit,
            None
        );
        assert_eq!(
            transition(
                s,
                &Event::StepFailed {
                    step: Step::NotifyHolder,
                    reason: "x".into()
                }
            )
            .expect("ok")
            .saga
            .state,
            State::NeedsAttention
        );
        // Not yet on the list: a timer at the list's nextUpdate.
        let o = transition(
            s,
            &Event::RevocationNotYetListed {
                recheck_at: Timestamp(99),
            },
        )
        .expect("ok");
        assert_eq!(o.audit, Some("revocation_not_yet_listed"));
        assert_eq!(
            o.effects,
            vec![Effect {
                step: Step::VerifyRevocation,
                delay: Delay::At(Timestamp(99))
            }]
        );
        // A verdict from a list past its nextUpdate is not believed.
        let stale = transition(
            s,
            &Event::RevocationVerified {
                at: Timestamp(11),
                valid_until: Timestamp(10),
            },
        )
        .expect("ok");
        assert_eq!((stale.saga, stale.audit), (s, None));
        // A discrepancy parks the case; a retry verifies again.
        let d = transition(s, &Event::RevocationDiscrepancy).expect("ok");
        assert_eq!(d.audit, Some("revocation_discrepancy"));
        assert_eq!(d.saga.state, State::NeedsAttention);
        let r = transition(d.saga, &Event::OperatorRetry).expect("ok");
        assert_eq!(r.effects[0], now(Step::VerifyRevocation));
        let v = transition(
            s,
            &Event::RevocationVerified {
                at: Timestamp(10),
                valid_until: Timestamp(10),
            },
        )
        .expect("ok");
        assert_eq!(v.audit, Some("revocation_verified"));
        assert_eq!(v.saga.verification, Verification::Verified);
        assert_eq!(v.effects, vec![now(Step::NotifyHead)]);
        s = v.saga;
        assert!(!step_applies(&s, Step::VerifyRevocation));
        assert!(!step_applies(&s, Step::VerifyDeadline));
        s = transition(s, &Event::HeadNotified).expect("ok").saga;
        s = transition(s, &Event::NotificationsSent).expect("ok").saga;
        assert_eq!(s.state, State::KivRemovalPending);
    }
    // The office cannot complete an unverified case.
    let mut s = Saga::new(KivRemovalRoute::HealthCareOffice).with_check(true);
    s.state = State::KivRemovalPending;
    s.revocation_confirmed = true;
    assert_eq!(
        transition(s, &Event::OfficeCompleted).err(),
        Some(TransitionError::RevocationNotVerified)
    );
    assert!(!s.office_task_open());
}

/// With the check off the routine is as it was: confirmation, then the notices.
#[test]
fn with_the_check_off_verdicts_change_nothing() {
    let mut s = Saga::new(KivRemovalRoute::CareProvider);
    s = transition(s, &Event::ReportSent).expect("ok").saga;
    let o = transition(
        s,
        &Event::RevocationConfirmed {
            reference: "R".into(),
            certificates: Vec::new(),
        },
    )
    .expect("ok");
    assert_eq!(o.effects, vec![now(Step::NotifyHead)]);
    for e in [
        Event::RevocationDiscrepancy,
        Event::VerificationOverdue,
        Event::RevocationUnverifiable,
    ] {
        assert_eq!(transition(o.saga, &e).expect("ok").audit, None);
    }
    for v in [
        Verification::Off,
        Verification::Required,
        Verification::Verified,
    ] {
        assert_eq!(Verification::from_str_opt(v.as_str()), Some(v));
    }
}

/// The engine's own guard: with the check on, an unverified case's removal, notices and
/// verification timers apply only where they should, whatever else holds.
#[test]
fn steps_of_an_unverified_case_do_not_apply() {
    let mut s = Saga::new(KivRemovalRoute::CareProvider).with_check(true);
    s.revocation_confirmed = true;
    s.state = State::KivRemovalPending;
    assert!(!step_applies(&s, Step::RemoveKiv));
    assert!(!step_applies(&s, Step::VerifyRevocation));
    s.state = State::Revoked;
    assert!(!step_applies(&s, Step::NotifyHead));
    assert!(step_applies(&s, Step::VerifyRevocation));
    assert!(step_applies(&s, Step::VerifyDeadline));
    // Still guarded: removed from KIV now, the employment is put back.
    s.snapshot = SnapshotState::Taken;
    assert!(s.guards_kiv());
    assert!(step_applies(&s, Step::RestoreKiv));
    s.verification = Verification::Verified;
    assert!(!s.guards_kiv());
    assert!(step_applies(&s, Step::NotifyHead));
    s.state = State::KivRemovalPending;
    assert!(step_applies(&s, Step::RemoveKiv));
    // With the check off, a "not yet listed" verdict schedules nothing.
    let mut off = Saga::new(KivRemovalRoute::CareProvider);
    off.revocation_confirmed = true;
    off.state = State::Revoked;
    let o = transition(
        off,
        &Event::RevocationNotYetListed {
            recheck_at: Timestamp(5),
        },
    )
    .expect("ok");
    assert_eq!((o.audit, o.effects.len()), (None, 0));
}
