//! The case's state machine: pure, closed, and the only place that decides which
//! state may follow which. Storage applies its verdicts; it never decides on its own.

use super::State;

/// Something that asks a case to move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The care provider withdraws the report.
    Cancel,
}

/// Why a command does not apply to a case in its current state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error(
        "the case is {state} and can no longer be cancelled: the report has gone out to TjänsteID-service"
    )]
    CancelTooLate { state: State },
}

/// What a command does to a case: the next state, and the audit event kind to record.
/// `None` for the state means the command is a repeat that changes nothing (idempotent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub next: Option<State>,
    pub event_kind: &'static str,
}

pub fn transition(state: State, command: &Command) -> Result<Transition, TransitionError> {
    match (state, command) {
        (State::Accepted, Command::Cancel) => Ok(Transition {
            next: Some(State::Cancelled),
            event_kind: "cancelled",
        }),
        (State::Cancelled, Command::Cancel) => Ok(Transition {
            next: None,
            event_kind: "cancelled",
        }),
        (state, Command::Cancel) => Err(TransitionError::CancelTooLate { state }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_only_before_the_report_goes_out() {
        assert_eq!(
            transition(State::Accepted, &Command::Cancel).unwrap().next,
            Some(State::Cancelled)
        );
        assert_eq!(
            transition(State::Cancelled, &Command::Cancel).unwrap().next,
            None
        );
        for s in State::ALL
            .iter()
            .copied()
            .filter(|s| !matches!(s, State::Accepted | State::Cancelled))
        {
            assert!(transition(s, &Command::Cancel).is_err(), "{s}");
        }
    }
}
