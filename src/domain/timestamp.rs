//! Instants and the rules for instants a caller reports (when a card was received, when it
//! was revoked). Pure: "now" is always an argument, read by the caller from a `Clock`.

use time::{Date, Month, OffsetDateTime};

use super::Personnummer;

/// Microseconds since the Unix epoch, UTC. Stored as a 64-bit integer on every backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

/// How far ahead of our clock a reported instant may be before it counts as the future
/// (the caller's clock may run a little fast).
pub const CLOCK_SKEW_MICROS: i64 = 5 * 60 * 1_000_000;

/// The range of `google.protobuf.Timestamp`: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
const MIN_UNIX_SECONDS: i64 = -62_135_596_800;
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

impl Timestamp {
    /// An instant from seconds and nanoseconds, or `None` outside 0001-01-01..=9999-12-31
    /// or with nanoseconds outside `0..1e9`. Sub-microsecond precision is dropped.
    pub fn from_unix(seconds: i64, nanos: i32) -> Option<Self> {
        if !(MIN_UNIX_SECONDS..=MAX_UNIX_SECONDS).contains(&seconds)
            || !(0..1_000_000_000).contains(&nanos)
        {
            return None;
        }
        Some(Self(seconds * 1_000_000 + i64::from(nanos) / 1_000))
    }

    /// Midnight UTC at the start of `date`.
    pub fn start_of(date: Date) -> Self {
        let secs = date.midnight().assume_utc().unix_timestamp();
        Self(secs * 1_000_000)
    }

    /// From a system-clock reading.
    pub fn from_system(t: std::time::SystemTime) -> Self {
        let us = OffsetDateTime::from(t).unix_timestamp_nanos() / 1_000;
        Self(i64::try_from(us).unwrap_or(i64::MAX))
    }

    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    pub fn subsec_nanos(self) -> i32 {
        (self.0.rem_euclid(1_000_000) * 1_000) as i32
    }

    /// The instant in UTC, or `None` beyond the calendar range `time` supports (±9999 years).
    pub fn to_utc(self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000).ok()
    }

    /// The UTC calendar date of the instant (clamped to the supported range).
    pub fn utc_date(self) -> Date {
        match self.to_utc() {
            Some(t) => t.date(),
            None if self.0 < 0 => Date::MIN,
            None => Date::MAX,
        }
    }
}

/// Why a reported instant is refused. Never carries the instant or the personnummer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InstantError {
    #[error("is not a valid timestamp (0001-01-01 to 9999-12-31 UTC, nanos from 0 to 999,999,999)")]
    Invalid,
    #[error("must not be in the future")]
    InFuture,
    #[error("must not be before 2000-01-01")]
    BeforeEarliest,
    #[error("must not be before the card holder's date of birth")]
    BeforeBirth,
    #[error("must not be before the deregistration was reported")]
    BeforeReported,
}

impl super::Rule for InstantError {
    fn code(&self) -> &'static str {
        match self {
            InstantError::Invalid => "INVALID_TIMESTAMP",
            InstantError::InFuture => "IN_FUTURE",
            InstantError::BeforeEarliest => "BEFORE_2000",
            InstantError::BeforeBirth => "BEFORE_BIRTH",
            InstantError::BeforeReported => "BEFORE_REPORTED",
        }
    }
}

/// eTjänstekort did not exist before 2000: an earlier receipt is a typing or clock error.
fn earliest() -> Timestamp {
    Timestamp::start_of(Date::from_calendar_date(2000, Month::January, 1).unwrap_or(Date::MIN))
}

fn not_future(at: Timestamp, now: Timestamp) -> Result<(), InstantError> {
    if at.0 > now.0.saturating_add(CLOCK_SKEW_MICROS) {
        return Err(InstantError::InFuture);
    }
    Ok(())
}

/// When the head of operations received the cut card: a real instant between the holder's
/// birth (and 2000-01-01) and now (with [`CLOCK_SKEW_MICROS`]). Without a valid holder
/// number (refused on its own field) the birth bound is left out.
pub fn card_received_at(
    at: Timestamp,
    holder: Option<&Personnummer>,
    now: Timestamp,
) -> Result<Timestamp, InstantError> {
    not_future(at, now)?;
    if at < earliest() {
        return Err(InstantError::BeforeEarliest);
    }
    if holder.is_some_and(|h| at < Timestamp::start_of(h.birth_date())) {
        return Err(InstantError::BeforeBirth);
    }
    Ok(at)
}

/// When TjänsteID-service revoked the card: not before the case was reported to the gateway
/// (`reported`), and not in the future.
pub fn revoked_at(
    at: Timestamp,
    reported: Timestamp,
    now: Timestamp,
) -> Result<Timestamp, InstantError> {
    not_future(at, now)?;
    if at < reported {
        return Err(InstantError::BeforeReported);
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    const NOW: Timestamp = Timestamp(1_790_000_000_000_000); // 2026-09-21T14:13:20Z

    fn pnr(year: i32) -> Personnummer {
        Personnummer::synthetic(year, 6, 15, 123).expect("valid")
    }

    #[test]
    fn protobuf_range_and_nanos() {
        assert_eq!(Timestamp::from_unix(0, 0), Some(Timestamp(0)));
        assert_eq!(
            Timestamp::from_unix(1, 999_999_999),
            Some(Timestamp(1_999_999))
        );
        assert_eq!(
            Timestamp::from_unix(-62_135_596_800, 0).map(Timestamp::utc_date),
            Some(date!(0001 - 01 - 01))
        );
        assert_eq!(
            Timestamp::from_unix(253_402_300_799, 0).map(Timestamp::utc_date),
            Some(date!(9999 - 12 - 31))
        );
        for (s, n) in [
            (-62_135_596_801, 0),
            (253_402_300_800, 0),
            (0, -1),
            (0, 1_000_000_000),
            (i64::MAX, 0),
        ] {
            assert_eq!(Timestamp::from_unix(s, n), None, "{s} {n}");
        }
        assert_eq!(Timestamp(-1).subsec_nanos(), 999_999_000);
        assert_eq!(Timestamp(-1).unix_seconds(), -1);
        assert_eq!(NOW.utc_date(), date!(2026 - 09 - 21));
        assert_eq!(Timestamp(i64::MIN).utc_date(), Date::MIN);
    }

    #[test]
    fn card_received_must_be_a_plausible_past_instant() {
        let p = pnr(1990);
        assert_eq!(card_received_at(NOW, Some(&p), NOW), Ok(NOW));
        let skewed = Timestamp(NOW.0 + CLOCK_SKEW_MICROS);
        assert_eq!(card_received_at(skewed, Some(&p), NOW), Ok(skewed));
        assert_eq!(
            card_received_at(Timestamp(skewed.0 + 1), Some(&p), NOW),
            Err(InstantError::InFuture)
        );
        let y2k = Timestamp::start_of(date!(2000 - 01 - 01));
        assert_eq!(card_received_at(y2k, None, NOW), Ok(y2k));
        assert_eq!(
            card_received_at(Timestamp(y2k.0 - 1), None, NOW),
            Err(InstantError::BeforeEarliest)
        );
        // Born 2010-06-15: a card received the day before is impossible.
        let young = pnr(2010);
        let birth = Timestamp::start_of(date!(2010 - 06 - 15));
        assert_eq!(card_received_at(birth, Some(&young), NOW), Ok(birth));
        assert_eq!(
            card_received_at(Timestamp(birth.0 - 1), Some(&young), NOW),
            Err(InstantError::BeforeBirth)
        );
    }

    #[test]
    fn revocation_lies_between_the_report_and_now() {
        let reported = Timestamp(NOW.0 - 3_600_000_000);
        assert_eq!(revoked_at(reported, reported, NOW), Ok(reported));
        assert_eq!(
            revoked_at(Timestamp(reported.0 - 1), reported, NOW),
            Err(InstantError::BeforeReported)
        );
        assert_eq!(
            revoked_at(Timestamp(NOW.0 + CLOCK_SKEW_MICROS + 1), reported, NOW),
            Err(InstantError::InFuture)
        );
    }
}
