//! A person's name as written, normalised to NFC and free of characters that would make
//! what is shown differ from what is stored.

use std::fmt;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use super::identity_scan;

/// A person's name. Personal data: `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct PersonName(String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PersonNameError {
    #[error("is required")]
    Empty,
    #[error(
        "must be at most {} characters without control characters",
        PersonName::MAX_CHARS
    )]
    Format,
    #[error(
        "must not contain invisible or text-direction characters (zero-width, bidi controls, BOM, line or paragraph separators)"
    )]
    InvisibleCharacter,
    #[error(
        "must not stack more than {} combining marks on one letter",
        PersonName::MAX_COMBINING_RUN
    )]
    CombiningMarks,
    #[error("must not contain a personal identity number")]
    ContainsIdentityNumber,
}

impl super::Rule for PersonNameError {
    fn code(&self) -> &'static str {
        match self {
            PersonNameError::Empty => "REQUIRED",
            PersonNameError::Format => "FORMAT",
            PersonNameError::InvisibleCharacter => "INVISIBLE_CHARACTER",
            PersonNameError::CombiningMarks => "COMBINING_MARKS",
            PersonNameError::ContainsIdentityNumber => "CONTAINS_IDENTITY_NUMBER",
        }
    }
}

impl PersonName {
    pub const MAX_CHARS: usize = 200;
    /// After NFC, real names in the scripts we meet carry at most two marks on a letter;
    /// longer runs are decoration ("Zalgo") that overflows every display.
    pub const MAX_COMBINING_RUN: usize = 2;

    pub fn parse(input: &str) -> Result<Self, PersonNameError> {
        // NFC first: the same name typed on two systems must compare equal, and every check
        // below sees what will be stored.
        let s: String = input.trim().nfc().collect();
        if s.is_empty() {
            return Err(PersonNameError::Empty);
        }
        if s.chars().count() > Self::MAX_CHARS || s.chars().any(char::is_control) {
            return Err(PersonNameError::Format);
        }
        if s.chars().any(identity_scan::invisible) {
            return Err(PersonNameError::InvisibleCharacter);
        }
        let mut run = 0;
        for c in s.chars() {
            run = if is_combining_mark(c) { run + 1 } else { 0 };
            if run > Self::MAX_COMBINING_RUN {
                return Err(PersonNameError::CombiningMarks);
            }
        }
        if identity_scan::contains(&s) {
            return Err(PersonNameError::ContainsIdentityNumber);
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name read back from storage: it passed the rules in force when it was stored, and
    /// rules tightened since must not make an old case unreadable.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonName(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_in_many_scripts() {
        for ok in [
            "Vera Varg",
            "Åsa Öberg-Ähnlund",
            "O'Neil Jr.",
            "Nguyễn Thị Ánh",
            "Zoë Ødegård",
            "محمد علي",
            "Karl XII",
            "Anna 2",
        ] {
            assert!(PersonName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn stores_the_nfc_form() {
        let decomposed = "A\u{030A}sa"; // A + combining ring
        assert_eq!(
            PersonName::parse(decomposed).map(|n| n.0),
            Ok("Åsa".to_owned())
        );
        // Two marks that have no precomposed form together are still fine.
        assert!(PersonName::parse("q\u{0301}\u{0323}").is_ok());
    }

    #[test]
    fn refuses_invisible_and_reordering_characters() {
        for c in [
            '\u{202E}', '\u{200B}', '\u{200D}', '\u{FEFF}', '\u{2028}', '\u{2029}', '\u{2066}',
            '\u{00AD}',
        ] {
            let s = format!("Vera{c}Varg");
            assert_eq!(
                PersonName::parse(&s),
                Err(PersonNameError::InvisibleCharacter),
                "{:?}",
                c
            );
        }
        assert_eq!(PersonName::parse("Vera\u{7}"), Err(PersonNameError::Format));
    }

    #[test]
    fn refuses_stacked_combining_marks() {
        assert_eq!(
            PersonName::parse("Vq\u{0301}\u{0302}\u{0303}ra"),
            Err(PersonNameError::CombiningMarks)
        );
    }

    #[test]
    fn refuses_identity_numbers_but_not_digits() {
        assert_eq!(
            PersonName::parse("Kalle 1912 12 12 1212"),
            Err(PersonNameError::ContainsIdentityNumber)
        );
        assert_eq!(PersonName::parse(" "), Err(PersonNameError::Empty));
        assert_eq!(
            PersonName::parse(&"a".repeat(201)),
            Err(PersonNameError::Format)
        );
    }
}
