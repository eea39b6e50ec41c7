//! The clock port: the one place the gateway reads the time. The domain never does; use
//! cases and validation take "now" from a `Clock`, so tests can run at any date.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::{CaseId, Date, Timestamp};

pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Timestamp;

    /// Today's date in UTC.
    fn today(&self) -> Date {
        self.now().utc_date()
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system(std::time::SystemTime::now())
    }
}

/// The system clock's reading, for code that has no `Clock` handed to it yet.
pub fn now() -> Timestamp {
    SystemClock.now()
}

/// A new case id: a UUIDv7, whose leading bits are the system clock's milliseconds (and a
/// counter within one), so id order is creation order.
pub fn new_case_id() -> CaseId {
    CaseId::from_uuid(uuid::Uuid::now_v7())
}

/// A clock that stands still until told otherwise. For tests.
#[derive(Debug, Default)]
pub struct FakeClock(AtomicI64);

impl FakeClock {
    pub fn at(t: Timestamp) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(t.0)))
    }

    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }

    pub fn advance(&self, micros: i64) {
        self.0.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_told() {
        let c = FakeClock::at(Timestamp(1_790_000_000_000_000));
        assert_eq!(c.today(), time::macros::date!(2026 - 09 - 21));
        c.advance(86_400_000_000);
        assert_eq!(c.today(), time::macros::date!(2026 - 09 - 22));
        c.set(Timestamp(0));
        assert_eq!(c.now(), Timestamp(0));
    }

    #[test]
    fn system_clock_is_after_2026() {
        assert!(SystemClock.now() > Timestamp(1_767_225_600_000_000));
    }
}
