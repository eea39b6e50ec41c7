//! The retry policy for retryable step failures: exponential backoff with jitter, and a limit
//! on attempts after which the case needs attention. The engine's only random numbers.

use std::time::Duration;

use ring::rand::SecureRandom;
use serde::Deserialize;

/// `[engine.retry]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The delay after the first failure; it doubles with every further one.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// The delay never grows beyond this.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.backoff_base.is_zero() || self.backoff_base > self.backoff_max {
            return Err("backoff_base must be more than 0s and at most backoff_max".into());
        }
        Ok(())
    }

    /// After a failed attempt that had `attempts_before` attempts before it: how long to wait
    /// before the next one, or `None` when the attempts are used up.
    pub fn after_failure(&self, attempts_before: u32) -> Option<Duration> {
        (attempts_before.saturating_add(1) < self.max_attempts).then(|| self.delay(attempts_before))
    }

    /// `backoff_base · 2^n`, capped at `backoff_max`, then scaled by a random factor in
    /// [1/2, 1]: cases that failed together do not all retry at the same instant.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self.backoff_base.saturating_mul(1u32 << n.min(20));
        exp.min(self.backoff_max).mul_f64(0.5 + jitter_unit() / 2.0)
    }
}

/// A uniform number in [0, 1).
fn jitter_unit() -> f64 {
    let mut b = [0u8; 8];
    // A failed fill leaves zeros: the shortest delay, still a valid one.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        }
    }

    #[test]
    fn delays_double_within_the_jitter_band_and_stop_at_the_cap() {
        let p = policy();
        for _ in 0..200 {
            for (n, full) in [
                (0, 100),
                (1, 200),
                (2, 400),
                (3, 800),
                (4, 1000),
                (30, 1000),
            ] {
                let d = p.delay(n);
                let full = Duration::from_millis(full);
                assert!(
                    d >= full / 2 && d <= full,
                    "delay {n}: {d:?} outside [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn attempts_are_limited() {
        let p = policy();
        assert!(p.after_failure(0).is_some());
        assert!(p.after_failure(1).is_some());
        // The third attempt was the last one.
        assert_eq!(p.after_failure(2), None);
        assert_eq!(p.after_failure(u32::MAX), None);
        let once = RetryPolicy {
            max_attempts: 1,
            ..p
        };
        assert_eq!(once.after_failure(0), None);
        assert!(
            RetryPolicy {
                max_attempts: 0,
                ..p
            }
            .validate()
            .is_err()
        );
    }
}
