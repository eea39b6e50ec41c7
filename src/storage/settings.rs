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
    /// How often a polling TjänsteID connector is asked for the outcome.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
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

impl Default for Timing {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            remind_after: Duration::from_secs(3 * 86_400),
            escalate_after: Duration::from_secs(10 * 86_400),
            poll_outcome: true,
            verify_within: Duration::from_secs(2 * 86_400),
            check_revocation: false,
        }
    }
}
