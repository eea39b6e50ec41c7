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
    /// How long a claim holds a step without a heartbeat: a running batch renews its leases
    /// every third of it, so a crashed worker's steps are claimed again within about a lease.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// The longest a step may run (from its claim); then it is cut off and retried.
    #[serde(with = "humantime_serde")]
    pub step_timeout: Duration,
    /// This process's stable name among the workers on its database (`storage::NodeLock`):
    /// held for the process's life, so a restart releases at once the leases its previous
    /// incarnation held. Unset: the host name (a pod's name), suffixed `-2`, `-3`, … while
    /// taken. Two live processes never share one: a configured id that is taken is refused.
    pub node_id: Option<String>,
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
            lease: Duration::from_secs(6),
            step_timeout: Duration::from_secs(24),
            node_id: None,
            idle_poll: Duration::from_secs(1),
            reconcile_interval: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            timers: Timing::default(),
        }
    }
}

impl EngineSettings {
    /// The configured node id (an empty one counts as none).
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref().filter(|id| !id.is_empty())
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.batch_size == 0 {
            problems.push("batch_size must be at least 1".to_owned());
        }
        if self.lease < Duration::from_secs(1) {
            problems.push("lease must be at least 1s".to_owned());
        }
        if self.step_timeout.is_zero() {
            problems.push("step_timeout must be more than 0s".to_owned());
        }
        if let Some(id) = self.node_id()
            && !crate::storage::valid_node_id(id)
        {
            problems.push(
                "node_id must be 1 to 63 of a-z, 0-9, '.' and '-' (or left out: the host name)"
                    .to_owned(),
            );
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
        // A revocation check's deadline shorter than a CA's publication would park every case.
        if t.verify_within < Duration::from_secs(1) {
            problems.push("timers.verify_within must be at least 1s".to_owned());
        }
        if t.poll_max < t.poll_interval {
            problems.push("timers.poll_max must be at least timers.poll_interval".to_owned());
        }
        if t.escalate_after <= t.remind_after {
            problems
                .push("timers.escalate_after must be longer than timers.remind_after".to_owned());
        }
        for (name, d) in [
            ("lease", self.lease),
            ("step_timeout", self.step_timeout),
            ("reconcile_interval", self.reconcile_interval),
            ("retry.backoff_max", self.retry.backoff_max),
            ("timers.poll_interval", t.poll_interval),
            ("timers.poll_max", t.poll_max),
            ("timers.remind_after", t.remind_after),
            ("timers.escalate_after", t.escalate_after),
            ("timers.verify_within", t.verify_within),
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
