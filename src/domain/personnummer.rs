//! Swedish personal identity numbers (personnummer and samordningsnummer).
//!
//! The type is the privacy boundary: once parsed, the full number can only be read through
//! [`Personnummer::expose_digits`]; `Debug` and `Display` print the masked form, so the
//! number cannot leak into a log line, a span field, an error or a panic message by accident.

use std::fmt;

use time::{Date, Month};

use super::luhn;

/// A validated personnummer or samordningsnummer, held canonically as 12 digits.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Personnummer {
    digits: [u8; 12],
}

/// Why a string is not an acceptable personal identity number. Never carries the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PersonnummerError {
    #[error("is required")]
    Empty,
    #[error(
        "must be YYMMDD-NNNC, YYMMDD+NNNC, YYMMDDNNNC, YYYYMMDDNNNC or YYYYMMDD-NNNC (digits only, one optional separator)"
    )]
    Format,
    #[error("reserve numbers are local identities, not e-ID identities, and are not accepted")]
    ReserveNumber,
    #[error("the date of birth does not exist (samordningsnummer add 60 to the day)")]
    InvalidDate,
    #[error("the date of birth is in the future")]
    FutureDate,
    #[error("the year of birth must be 1880 or later")]
    ImplausibleYear,
    #[error("birth number 000 is not valid")]
    BirthNumberZero,
    #[error(
        "check digit does not match (Luhn mod 10 over the first nine digits of the ten-digit form)"
    )]
    CheckDigit,
}

impl super::Rule for PersonnummerError {
    fn code(&self) -> &'static str {
        match self {
            PersonnummerError::Empty => "REQUIRED",
            PersonnummerError::Format => "FORMAT",
            PersonnummerError::ReserveNumber => "RESERVE_NUMBER",
            PersonnummerError::InvalidDate => "INVALID_DATE",
            PersonnummerError::FutureDate => "FUTURE_DATE",
            PersonnummerError::ImplausibleYear => "IMPLAUSIBLE_YEAR",
            PersonnummerError::BirthNumberZero => "BIRTH_NUMBER_ZERO",
            PersonnummerError::CheckDigit => "CHECK_DIGIT",
        }
    }
}

/// Whether the number is a personnummer or a samordningsnummer (day + 60).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityKind {
    Personnummer,
    Samordningsnummer,
}

impl Personnummer {
    /// Parses any accepted form relative to `today` (the caller's clock), which decides the
    /// century of the ten-digit forms and what is a future date of birth. As the Swedish Tax
    /// Agency writes them, `-` (or no separator) is used until the calendar year the holder
    /// turns 100, and `+` from that year on.
    pub fn parse(input: &str, today: Date) -> Result<Self, PersonnummerError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(PersonnummerError::Empty);
        }
        if !s.is_ascii() {
            return Err(PersonnummerError::Format);
        }
        let (body, sep) = match s.find(['-', '+']) {
            Some(i) => {
                let sep = s.as_bytes()[i];
                let (a, b) = (&s[..i], &s[i + 1..]);
                if b.len() != 4 || !(a.len() == 6 || a.len() == 8) {
                    return Err(PersonnummerError::Format);
                }
                // `+` marks age 100+ and only makes sense where the century is implied.
                if sep == b'+' && a.len() == 8 {
                    return Err(PersonnummerError::Format);
                }
                (format!("{a}{b}"), Some(sep))
            }
            None => (s.to_owned(), None),
        };
        if body.len() != 10 && body.len() != 12 {
            return Err(PersonnummerError::Format);
        }
        let bytes = body.as_bytes();
        let date_len = body.len() - 4;
        if !bytes[..date_len].iter().all(u8::is_ascii_digit) {
            return Err(PersonnummerError::Format);
        }
        // Reserve numbers put a letter in the birth number, e.g. 19810829M071.
        let tail = &bytes[date_len..];
        if !tail.iter().all(u8::is_ascii_digit) {
            return Err(
                if tail[0].is_ascii_alphabetic()
                    && tail[1..].iter().all(|b| b.is_ascii_alphanumeric())
                {
                    PersonnummerError::ReserveNumber
                } else {
                    PersonnummerError::Format
                },
            );
        }
        let d: Vec<u8> = bytes.iter().map(|b| b - b'0').collect();

        let (year, rest) = if d.len() == 12 {
            (
                i32::from(d[0]) * 1000
                    + i32::from(d[1]) * 100
                    + i32::from(d[2]) * 10
                    + i32::from(d[3]),
                &d[4..],
            )
        } else {
            let yy = i32::from(d[0]) * 10 + i32::from(d[1]);
            (century_for(yy, sep == Some(b'+'), today), &d[2..])
        };
        let month = rest[0] * 10 + rest[1];
        let raw_day = rest[2] * 10 + rest[3];
        let day = if raw_day > 60 { raw_day - 60 } else { raw_day };
        if year < 1880 {
            return Err(PersonnummerError::ImplausibleYear);
        }
        let birth = Month::try_from(month)
            .ok()
            .and_then(|m| Date::from_calendar_date(year, m, day).ok())
            .ok_or(PersonnummerError::InvalidDate)?;
        if birth > today {
            return Err(PersonnummerError::FutureDate);
        }
        if rest[4] == 0 && rest[5] == 0 && rest[6] == 0 {
            return Err(PersonnummerError::BirthNumberZero);
        }
        let ten = &d[d.len() - 10..];
        if !luhn::valid(ten) {
            return Err(PersonnummerError::CheckDigit);
        }
        let mut digits = [0u8; 12];
        digits[0] = (year / 1000) as u8;
        digits[1] = (year / 100 % 10) as u8;
        digits[2..].copy_from_slice(ten);
        Ok(Self { digits })
    }

    /// A number read back from storage in its canonical 12-digit form. Only the shape is
    /// checked: it passed every rule when it was stored.
    pub fn from_stored(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 12 || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut digits = [0u8; 12];
        for (d, c) in digits.iter_mut().zip(b) {
            *d = c - b'0';
        }
        Some(Self { digits })
    }

    /// The canonical 12-digit form. Named so that every use is visible in review:
    /// call it only where the full number must leave the process (encryption, the
    /// report to TjänsteID-service, the office's task).
    pub fn expose_digits(&self) -> String {
        self.digits.iter().map(|d| char::from(b'0' + d)).collect()
    }

    /// `YYYYMMDD-****`: the birth date (as written in the number) and a mask.
    pub fn masked(&self) -> String {
        let mut s: String = self.digits[..8]
            .iter()
            .map(|d| char::from(b'0' + d))
            .collect();
        s.push_str("-****");
        s
    }

    /// The date of birth (for a samordningsnummer, the day with 60 taken off).
    pub fn birth_date(&self) -> Date {
        let n = |r: std::ops::Range<usize>| {
            self.digits[r]
                .iter()
                .fold(0i32, |acc, &d| acc * 10 + i32::from(d))
        };
        let day = n(6..8) as u8;
        let day = if day > 60 { day - 60 } else { day };
        // Every constructor checked the date; the fallback is never reached.
        Month::try_from(n(4..6) as u8)
            .ok()
            .and_then(|m| Date::from_calendar_date(n(0..4), m, day).ok())
            .unwrap_or(Date::MIN)
    }

    pub fn kind(&self) -> IdentityKind {
        if self.digits[6] >= 6 {
            IdentityKind::Samordningsnummer
        } else {
            IdentityKind::Personnummer
        }
    }

    /// Builds a valid number for a date and birth number, computing the check digit.
    /// For tests and synthetic data only.
    pub fn synthetic(year: i32, month: u8, day: u8, birth_number: u16) -> Option<Self> {
        let s = format!("{:04}{:02}{:02}{:03}", year, month, day, birth_number);
        let d: Vec<u8> = s.bytes().map(|b| b - b'0').collect();
        let check = luhn::check_digit(&d[2..11]);
        // Twelve digits need no century; any date of birth is fine for synthetic data.
        Self::parse(&format!("{s}{check}"), Date::MAX).ok()
    }
}

/// The birth year of a ten-digit form by calendar year: without `+` the latest year not after
/// this one, with `+` the latest year at least 100 years back.
fn century_for(yy: i32, plus: bool, today: Date) -> i32 {
    let latest = if plus {
        today.year() - 100
    } else {
        today.year()
    };
    let mut year = latest - latest.rem_euclid(100) + yy;
    if year > latest {
        year -= 100;
    }
    year
}

impl fmt::Display for Personnummer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for Personnummer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Personnummer({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn today() -> Date {
        time::macros::date!(2026 - 11 - 29)
    }

    fn parse(s: &str) -> Result<Personnummer, PersonnummerError> {
        Personnummer::parse(s, today())
    }

    #[test]
    fn accepts_every_published_form_of_the_test_number() {
        for s in ["19121212-1212", "191212121212", " 19121212-1212 "] {
            assert_eq!(parse(s).unwrap().expose_digits(), "191212121212", "{s}");
        }
        // Short forms imply the century: `-` or none means younger than 100 (born 2012 in
        // 2026), `+` means 100 or older (born 1912).
        for s in ["121212-1212", "1212121212"] {
            assert_eq!(parse(s).unwrap().expose_digits(), "201212121212", "{s}");
        }
        assert_eq!(
            parse("121212+1212").unwrap().expose_digits(),
            "191212121212"
        );
    }

    #[test]
    fn short_forms_pick_the_century_by_age() {
        // Born 2010 (16 years old) versus 1910 (116, written with +).
        let young = Personnummer::synthetic(2010, 1, 1, 123)
            .unwrap()
            .expose_digits();
        let short = &young[2..];
        assert_eq!(parse(short).unwrap().expose_digits(), young);
        assert_eq!(
            parse(&format!("{}+{}", &short[..6], &short[6..]))
                .unwrap()
                .expose_digits(),
            format!("19{short}")
        );
        // A date later this century than today is last century's.
        let p = Personnummer::synthetic(1999, 12, 31, 42)
            .unwrap()
            .expose_digits();
        assert_eq!(parse(&p[2..]).unwrap().expose_digits(), p);
    }

    #[test]
    fn accepts_samordningsnummer() {
        let s = Personnummer::synthetic(1990, 5, 72 - 60 + 60, 123).unwrap();
        assert_eq!(s.kind(), IdentityKind::Samordningsnummer);
        assert_eq!(parse(&s.expose_digits()).unwrap(), s);
        assert!(s.masked().starts_with("199005"));
        assert_eq!(s.birth_date(), time::macros::date!(1990 - 05 - 12));
    }

    #[test]
    fn rejects_with_the_rule_that_failed() {
        assert_eq!(parse(""), Err(PersonnummerError::Empty));
        assert_eq!(parse("19121212-1213"), Err(PersonnummerError::CheckDigit));
        assert_eq!(parse("19810829M071"), Err(PersonnummerError::ReserveNumber));
        assert_eq!(parse("810829-M071"), Err(PersonnummerError::ReserveNumber));
        assert_eq!(parse("19121312-1212"), Err(PersonnummerError::InvalidDate));
        assert_eq!(parse("19230229-0000"), Err(PersonnummerError::InvalidDate));
        assert_eq!(parse("19121292-1212"), Err(PersonnummerError::InvalidDate));
        assert_eq!(parse("20301212-1212"), Err(PersonnummerError::FutureDate));
        assert_eq!(parse("19121212+1212"), Err(PersonnummerError::Format));
        assert_eq!(parse("1212-121212"), Err(PersonnummerError::Format));
        assert_eq!(parse("12121212121"), Err(PersonnummerError::Format));
        assert_eq!(
            parse("18001212-1216"),
            Err(PersonnummerError::ImplausibleYear)
        );
        // By calendar year: someone born in 1926 writes `+` all through 2026.
        assert_eq!(
            parse("261212+1216").map(|p| p.expose_digits()),
            Ok("192612121216".into())
        );
        assert_eq!(parse("261130-1215"), Err(PersonnummerError::FutureDate));
        assert_eq!(parse("121212–1212"), Err(PersonnummerError::Format));
        // Birth number 000 with a matching check digit is still invalid.
        let zero = format!(
            "121212000{}",
            luhn::check_digit(&[1, 2, 1, 2, 1, 2, 0, 0, 0])
        );
        assert_eq!(parse(&zero), Err(PersonnummerError::BirthNumberZero));
    }

    #[test]
    fn debug_and_display_never_show_the_number() {
        let p = parse("19121212-1212").unwrap();
        for out in [format!("{p}"), format!("{p:?}"), format!("{:#?}", Some(&p))] {
            assert!(
                !out.contains("1212121212") && !out.contains("-1212"),
                "{out}"
            );
            assert!(out.contains("19121212-****"), "{out}");
        }
    }

    prop_compose! {
        fn valid_number()(year in 1900i32..=2025, month in 1u8..=12, day in 1u8..=31,
                          birth in 1u16..=999, samordning in any::<bool>()) -> Option<Personnummer> {
            let day = day.min(Month::try_from(month).expect("month").length(year));
            Personnummer::synthetic(year, month, if samordning { day + 60 } else { day }, birth)
        }
    }

    proptest! {
        #[test]
        fn generated_numbers_round_trip_through_every_form(p in valid_number()) {
            let p = p.expect("synthetic numbers are valid");
            let d = p.expose_digits();
            let age_100 = d[..4].parse::<i32>().unwrap() <= today().year() - 100; // by calendar year
            let sep = if age_100 { '+' } else { '-' };
            let mut forms = vec![d.clone(), format!("{}-{}", &d[..8], &d[8..]),
                                 format!("{}{sep}{}", &d[2..8], &d[8..])];
            // The bare ten-digit form implies "younger than 100"; only test it where that holds
            // and no later century would also fit.
            if !age_100 { forms.push(d[2..].to_owned()); }
            for f in forms {
                prop_assert_eq!(parse(&f).map(|x| x.expose_digits()), Ok(d.clone()), "form {}", f);
            }
        }

        #[test]
        fn any_single_digit_change_is_refused(p in valid_number(), pos in 2usize..12, delta in 1u8..=9) {
            let mut d: Vec<u8> = p.expect("valid").expose_digits().into_bytes();
            d[pos] = b'0' + (d[pos] - b'0' + delta) % 10;
            let changed = String::from_utf8(d).unwrap();
            prop_assert!(parse(&changed).is_err(), "{} was accepted", changed);
        }
    }
}
