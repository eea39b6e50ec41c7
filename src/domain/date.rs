//! Minimal civil-date arithmetic for identifier validation.
//!
//! The domain needs only "does this date exist" and "what is today's date (UTC)",
//! so it carries its own small proleptic-Gregorian helpers instead of a date crate.

/// A calendar date, validated on construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    year: i32,
    month: u8,
    day: u8,
}

impl Date {
    /// Returns `None` unless the date exists in the Gregorian calendar.
    pub fn new(year: i32, month: u8, day: u8) -> Option<Self> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        Some(Self { year, month, day })
    }

    pub fn year(self) -> i32 {
        self.year
    }

    pub fn month(self) -> u8 {
        self.month
    }

    pub fn day(self) -> u8 {
        self.day
    }

    /// The UTC calendar date of a Unix timestamp in seconds.
    pub fn from_unix_seconds(secs: i64) -> Self {
        // Howard Hinnant's days-to-civil algorithm.
        let z = secs.div_euclid(86_400) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Self { year, month, day }
    }

    /// Today's date in UTC from the system clock.
    pub fn today_utc() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Self::from_unix_seconds(secs)
    }
}

pub fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

pub fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Luhn (mod 10) check with weights 2,1,2,… from the left over `digits`,
/// whose last element is the check digit.
pub fn luhn_valid(digits: &[u8]) -> bool {
    match digits.split_last() {
        Some((&check, body)) => luhn_check_digit(body) == check,
        None => false,
    }
}

/// The Luhn check digit for `body` (weights 2,1,2,… from the left).
pub fn luhn_check_digit(body: &[u8]) -> u8 {
    let sum: u32 = body
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let p = u32::from(d) * if i % 2 == 0 { 2 } else { 1 };
            p / 10 + p % 10
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_epoch_and_leap_days() {
        assert_eq!(Date::from_unix_seconds(0), Date::new(1970, 1, 1).unwrap());
        // 2024-02-29T12:00:00Z
        assert_eq!(
            Date::from_unix_seconds(1_709_208_000),
            Date::new(2024, 2, 29).unwrap()
        );
        assert!(Date::new(2023, 2, 29).is_none());
        assert!(Date::new(2000, 2, 29).is_some());
        assert!(Date::new(1900, 2, 29).is_none());
    }

    #[test]
    fn luhn_known_values() {
        // 121212-1212 is the well-known test personnummer.
        assert!(luhn_valid(&[1, 2, 1, 2, 1, 2, 1, 2, 1, 2]));
        assert!(!luhn_valid(&[1, 2, 1, 2, 1, 2, 1, 2, 1, 3]));
        // VGR's organisation number.
        assert!(luhn_valid(&[2, 3, 2, 1, 0, 0, 0, 1, 3, 1]));
    }
}
