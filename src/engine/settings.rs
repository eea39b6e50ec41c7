//! The engine's settings (`[engine]`), the one type for its workers, its retry policy and the
//! saga's timers.

use std::time::Duration;

use serde::Deserialize;

use super::RetryPolicy;
use crate::storage::Timing;

/// Durations beyond this are surely a typo (and would overflow timestamps far in the future).
const LONGEST: Duration = Duration::from_secs(1_000_000_000);

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// Worker tasks claiming due steps; 0 makes an API-only replica.
    pub workers: usize,
    /// Steps one worker claims and runs at once.
    pub batch_size: u32,
    /// A claimed step not finished within the lease is claimed again (crashed worker).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Longest sleep of an idle worker (work enqueued by other replicas, timers).
    #[serde(with = "humantime_serde")]
    pub idle_poll: Duration,
    /// How often KIV is checked for employments removed too early; zero turns it off.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    pub retry: RetryPolicy,
    /// The saga's timers; the store schedules them.
    pub timers: Timing,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            workers: 4,
            batch_size: 128,
            lease: Duration::from_secs(30),
            idle_poll: Duration::from_secs(1),
            reconcile_interval: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            timers: Timing::default(),
        }
    }
}

impl EngineSettings {
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.batch_size == 0 {
            problems.push("batch_size must be at least 1".to_owned());
        }
        if self.lease < Duration::from_secs(1) {
            problems.push("lease must be at least 1s".to_owned());
        }
        if self.idle_poll.is_zero() {
            problems.push("idle_poll must be more than 0s".to_owned());
        }
        if let Err(e) = self.retry.validate() {
            problems.push(format!("retry.{e}"));
        }
        let t = &self.timers;
        // Zero would poll in a hot loop; reminders after the escalation would never be sent.
        if t.poll_interval.is_zero() {
            problems.push("timers.poll_interval must be more than 0s".to_owned());
        }
        if t.poll_max < t.poll_interval {
            problems.push("timers.poll_max must be at least timers.poll_interval".to_owned());
        }
        if t.escalate_after <= t.remind_after {
            problems
                .push("timers.escalate_after must be longer than timers.remind_after".to_owned());
        }
        for (name, d) in [
            ("reconcile_interval", self.reconcile_interval),
            ("retry.backoff_max", self.retry.backoff_max),
            ("timers.poll_interval", t.poll_interval),
            ("timers.poll_max", t.poll_max),
            ("timers.remind_after", t.remind_after),
            ("timers.escalate_after", t.escalate_after),
        ] {
            if d > LONGEST {
                problems.push(format!("{name} must be at most {}s", LONGEST.as_secs()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}
