//! The card number printed on an eTjänstekort. Its format is not published, so it is kept
//! opaque: a bounded digit string after stripping the spaces and dashes people type.

use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CardNumber(String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CardNumberError {
    #[error("is required")]
    Empty,
    #[error("must contain only digits (spaces and dashes are ignored)")]
    NotDigits,
    #[error("must be 6 to 32 digits long")]
    Length,
    #[error("is a valid personal identity number, not a card number")]
    IdentityNumber,
}

impl super::Rule for CardNumberError {
    fn code(&self) -> &'static str {
        match self {
            CardNumberError::Empty => "REQUIRED",
            CardNumberError::NotDigits => "NOT_DIGITS",
            CardNumberError::Length => "LENGTH",
            CardNumberError::IdentityNumber => "CONTAINS_IDENTITY_NUMBER",
        }
    }
}

impl CardNumber {
    pub const MIN_DIGITS: usize = 6;
    pub const MAX_DIGITS: usize = 32;

    pub fn parse(input: &str) -> Result<Self, CardNumberError> {
        let digits: String = input.chars().filter(|c| *c != ' ' && *c != '-').collect();
        if digits.is_empty() {
            return Err(CardNumberError::Empty);
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CardNumberError::NotDigits);
        }
        if !(Self::MIN_DIGITS..=Self::MAX_DIGITS).contains(&digits.len()) {
            return Err(CardNumberError::Length);
        }
        // A personnummer typed into the card-number field would be stored and shown in clear.
        // Only the whole number is tested: a long card number holds many ten-digit windows, and
        // one of them being a valid identity number by chance says nothing.
        let values: Vec<u8> = digits.bytes().map(|b| b - b'0').collect();
        if super::identity_scan::is_identity_number(&values) {
            return Err(CardNumberError::IdentityNumber);
        }
        Ok(Self(digits))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A card number read back from storage (validated when stored).
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Display for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardNumber({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn separators_never_change_the_number(digits in "[0-9]{13,32}", cuts in proptest::collection::vec(0usize..13, 0..4)) {
            // 13+ digits can never be read as a personnummer, so only the separators matter.
            let mut typed = digits.clone();
            for (i, c) in cuts.iter().enumerate() {
                typed.insert(*c + i, if i % 2 == 0 { ' ' } else { '-' });
            }
            prop_assert_eq!(CardNumber::parse(&typed).map(|c| c.to_string()), Ok(digits));
        }
    }

    #[test]
    fn strips_separators_and_bounds_length() {
        assert_eq!(
            CardNumber::parse("9752 2700-0012 3456").unwrap().as_str(),
            "9752270000123456"
        );
        assert_eq!(CardNumber::parse(" - "), Err(CardNumberError::Empty));
        assert_eq!(CardNumber::parse("12345a"), Err(CardNumberError::NotDigits));
        assert_eq!(CardNumber::parse("12345"), Err(CardNumberError::Length));
        for pnr in ["1912 1212-1212", "121212-1212"] {
            assert_eq!(
                CardNumber::parse(pnr),
                Err(CardNumberError::IdentityNumber),
                "{pnr}"
            );
        }
        assert_eq!(
            CardNumber::parse(&"1".repeat(33)),
            Err(CardNumberError::Length)
        );
    }
}
