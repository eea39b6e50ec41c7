//! Swedish personal identity numbers (personnummer and samordningsnummer).
//!
//! The type is the privacy boundary: once parsed, the full number can only be read through
//! [`Personnummer::expose_digits`]; `Debug` and `Display` print the masked form, so the
//! number cannot leak into a log line, a span field, an error or a panic message by accident.

use std::fmt;

use super::date::{Date, luhn_check_digit, luhn_valid};

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
    #[error("birth number 000 is not valid")]
    BirthNumberZero,
    #[error("check digit does not match (Luhn mod 10 over the first nine digits of the ten-digit form)")]
    CheckDigit,
}

/// Whether the number is a personnummer or a samordningsnummer (day + 60).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityKind {
    Personnummer,
    Samordningsnummer,
}

impl Personnummer {
    /// Parses any accepted form relative to today's UTC date (for the century of short forms).
    pub fn parse(input: &str) -> Result<Self, PersonnummerError> {
        Self::parse_at(input, Date::today_utc())
    }

    /// Parses relative to `today`, which decides the century of the ten-digit forms:
    /// `-` or no separator means younger than 100, `+` means 100 or older.
    pub fn parse_at(input: &str, today: Date) -> Result<Self, PersonnummerError> {
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
            return Err(if tail[0].is_ascii_alphabetic()
                && tail[1..].iter().all(|b| b.is_ascii_alphanumeric())
            {
                PersonnummerError::ReserveNumber
            } else {
                PersonnummerError::Format
            });
        }
        let d: Vec<u8> = bytes.iter().map(|b| b - b'0').collect();

        let (year, rest) = if d.len() == 12 {
            (
                i32::from(d[0]) * 1000 + i32::from(d[1]) * 100 + i32::from(d[2]) * 10 + i32::from(d[3]),
                &d[4..],
            )
        } else {
            let yy = i32::from(d[0]) * 10 + i32::from(d[1]);
            (century_for(yy, &d[2..6], sep == Some(b'+'), today), &d[2..])
        };
        let month = rest[0] * 10 + rest[1];
        let raw_day = rest[2] * 10 + rest[3];
        let day = if raw_day > 60 { raw_day - 60 } else { raw_day };
        let birth = Date::new(year, month, day).ok_or(PersonnummerError::InvalidDate)?;
        if birth > today {
            return Err(PersonnummerError::FutureDate);
        }
        if rest[4] == 0 && rest[5] == 0 && rest[6] == 0 {
            return Err(PersonnummerError::BirthNumberZero);
        }
        let ten = &d[d.len() - 10..];
        if !luhn_valid(ten) {
            return Err(PersonnummerError::CheckDigit);
        }
        let mut digits = [0u8; 12];
        digits[0] = (year / 1000) as u8;
        digits[1] = (year / 100 % 10) as u8;
        digits[2..].copy_from_slice(ten);
        Ok(Self { digits })
    }

    /// The canonical 12-digit form. Named so that every use is visible in review:
    /// call it only where the full number must leave the process (encryption, the
    /// report to TjänsteID-service, the office's task).
    pub fn expose_digits(&self) -> String {
        self.digits.iter().map(|d| char::from(b'0' + d)).collect()
    }

    /// `YYYYMMDD-****`: the birth date (as written in the number) and a mask.
    pub fn masked(&self) -> String {
        let mut s: String = self.digits[..8].iter().map(|d| char::from(b'0' + d)).collect();
        s.push_str("-****");
        s
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
        let check = luhn_check_digit(&d[2..11]);
        Self::parse_at(&format!("{s}{check}"), Date::today_utc()).ok()
    }
}

fn century_for(yy: i32, mmdd: &[u8], plus: bool, today: Date) -> i32 {
    let base = today.year() - today.year().rem_euclid(100);
    let mut year = base + yy;
    let month = mmdd[0] * 10 + mmdd[1];
    let day = (mmdd[2] * 10 + mmdd[3]) % 60;
    // Compare (month, day) without building a date: an invalid one is rejected later anyway.
    let after_today = (year, month, day) > (today.year(), today.month(), today.day());
    if after_today {
        year -= 100;
    }
    if plus {
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
