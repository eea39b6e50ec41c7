//! The store's settings: the database to open, and how the saga's symbolic delays
//! (`domain::saga::Delay`) map to time when the store schedules timers.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://PATH?mode=rwc` or `postgres://user@host/db`; may carry a password.
    #[serde(deserialize_with = "crate::secret::required")]
    pub url: SecretString,
    /// PostgreSQL pool size; SQLite always uses one connection.
    pub max_connections: u32,
    /// How long a request waits for a connection before it fails with UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Whether `serve` applies pending migrations at start (under the migration lock). Off
    /// (`serve --no-migrate`): the schema must already be current — a separate `migrate` run
    /// (a deployment's migration job) applies it, and the runtime user needs no DDL rights.
    pub migrate: bool,
    /// How often the connection listening for other replicas' commits (PostgreSQL) is checked
    /// with `SELECT 1`, which must answer within the same time: a connection that died
    /// silently (a dropped NAT entry, a failed-over server) is then replaced and the watchers
    /// resync, rather than the relay waiting forever for news that cannot arrive.
    #[serde(with = "humantime_serde")]
    pub listen_check: Duration,
}

impl DatabaseSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.listen_check.is_zero() {
            return Err("listen_check must be more than 0s".to_owned());
        }
        Ok(())
    }
}

/// How the symbolic delays of `domain::saga::Delay` map to time (`[engine.timers]`).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// How soon a polling TjänsteID connector is first asked for the outcome. Later polls wait
    /// as long as the case has waited since its report (so each wait about doubles), at most
    /// `poll_max`: a case waiting for days is polled a few times an hour, not every second.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The longest wait between two polls of one case.
    #[serde(with = "humantime_serde", default = "default_poll_max")]
    pub poll_max: Duration,
    /// Remind TjänsteID-service after this long without an outcome (and again after as long).
    #[serde(with = "humantime_serde")]
    pub remind_after: Duration,
    /// Give up waiting for an outcome after this long: the case needs attention.
    #[serde(with = "humantime_serde")]
    pub escalate_after: Duration,
    /// False when the TjänsteID connector cannot poll: no `PollOutcome` effects are stored.
    /// Not a setting: start-up sets it from the chosen connector.
    #[serde(skip, default = "polls")]
    pub poll_outcome: bool,
    /// Give up waiting for a confirmed revocation to show on the CA's lists after this long:
    /// the case needs attention (only with the revocation check on).
    #[serde(with = "humantime_serde")]
    pub verify_within: Duration,
    /// Whether new cases are created with the revocation check on. Not a setting here:
    /// start-up sets it from `[revocation_check]`.
    #[serde(skip)]
    pub check_revocation: bool,
}

fn polls() -> bool {
    true
}

fn default_poll_max() -> Duration {
    Duration::from_secs(600)
}

impl Timing {
    /// The wait before the next poll of a case that has waited `waited` since its report went
    /// out: as long again (the waits double: 1 s, 1 s, 2 s, 4 s, …), at least `poll_interval`
    /// and at most `poll_max`.
    pub fn poll_delay(&self, waited: Duration) -> Duration {
        waited.min(self.poll_max).max(self.poll_interval)
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            poll_max: default_poll_max(),
            remind_after: Duration::from_secs(3 * 86_400),
            escalate_after: Duration::from_secs(10 * 86_400),
            poll_outcome: true,
            verify_within: Duration::from_secs(2 * 86_400),
            check_revocation: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_poll_waits_longer_than_the_one_before_up_to_poll_max() {
        let t = Timing {
            poll_interval: Duration::from_secs(1),
            poll_max: Duration::from_secs(600),
            ..Timing::default()
        };
        // Replays the schedule: each poll is planned when the one before ran.
        let mut waited = Duration::ZERO;
        let mut delays = Vec::new();
        for _ in 0..16 {
            let d = t.poll_delay(waited);
            delays.push(d.as_secs());
            waited += d;
        }
        assert_eq!(
            delays,
            [
                1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600, 600, 600, 600
            ]
        );
        for pair in delays.windows(2) {
            assert!(pair[1] >= pair[0], "{delays:?}");
        }
        // A case that waited for days is polled every `poll_max`, never less often.
        assert_eq!(t.poll_delay(Duration::from_secs(86_400)), t.poll_max);
    }
}
