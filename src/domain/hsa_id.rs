//! HSA-ids: `SE` + the catalogue owner's organisation number + `-` + an opaque suffix.

use std::fmt;

use super::{identity_scan, luhn};

/// A syntactically valid HSA-id. The suffix is opaque; only the form is checked.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HsaId(String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HsaIdError {
    #[error("is required")]
    Empty,
    #[error("must be at most 31 characters")]
    TooLong,
    #[error("must start with \"SE\", a 10-digit organisation number and \"-\"")]
    Prefix,
    #[error("the organisation number's check digit does not match (Luhn mod 10)")]
    OrganisationCheckDigit,
    #[error("the organisation number's third digit must be 2 or more")]
    OrganisationThirdDigit,
    #[error("the part after \"-\" must be one or more of A-Z, a-z, 0-9")]
    Suffix,
    #[error("must not contain a personal identity number")]
    ContainsIdentityNumber,
}

impl super::Rule for HsaIdError {
    fn code(&self) -> &'static str {
        match self {
            HsaIdError::Empty => "REQUIRED",
            HsaIdError::TooLong => "TOO_LONG",
            HsaIdError::Prefix => "FORMAT",
            HsaIdError::OrganisationCheckDigit => "ORGANISATION_CHECK_DIGIT",
            HsaIdError::OrganisationThirdDigit => "ORGANISATION_THIRD_DIGIT",
            HsaIdError::Suffix => "FORMAT",
            HsaIdError::ContainsIdentityNumber => "CONTAINS_IDENTITY_NUMBER",
        }
    }
}

impl HsaId {
    pub const MAX_LEN: usize = 31;

    pub fn parse(input: &str) -> Result<Self, HsaIdError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(HsaIdError::Empty);
        }
        if s.chars().count() > Self::MAX_LEN {
            return Err(HsaIdError::TooLong);
        }
        let b = s.as_bytes();
        if b.len() < 13
            || &b[..2] != b"SE"
            || b[12] != b'-'
            || !b[2..12].iter().all(u8::is_ascii_digit)
        {
            return Err(HsaIdError::Prefix);
        }
        let org: Vec<u8> = b[2..12].iter().map(|c| c - b'0').collect();
        if org[2] < 2 {
            return Err(HsaIdError::OrganisationThirdDigit);
        }
        if !luhn::valid(&org) {
            return Err(HsaIdError::OrganisationCheckDigit);
        }
        let suffix = &b[13..];
        if suffix.is_empty() || !suffix.iter().all(u8::is_ascii_alphanumeric) {
            return Err(HsaIdError::Suffix);
        }
        // The suffix is free-form and stored in clear: it must not carry an identity number.
        if identity_scan::contains(&s[13..]) {
            return Err(HsaIdError::ContainsIdentityNumber);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HsaId {
    type Error = HsaIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<HsaId> for String {
    fn from(value: HsaId) -> Self {
        value.0
    }
}

impl fmt::Display for HsaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HsaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HsaId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::luhn::check_digit as luhn_check_digit;
    use proptest::prelude::*;

    prop_compose! {
        /// A Luhn-valid organisation number with third digit ≥ 2, and an alphanumeric suffix.
        fn valid_hsa()(head in proptest::collection::vec(0u8..10, 9), third in 2u8..10,
                       suffix in "[A-Z][A-Za-z0-9]{0,17}") -> (String, String) {
            let mut body = head;
            body[2] = third;
            let check = luhn_check_digit(&body);
            let org: String = body.iter().chain(std::iter::once(&check)).map(|d| char::from(b'0' + d)).collect();
            (org, suffix)
        }
    }

    proptest! {
        #[test]
        fn generated_hsa_ids_round_trip((org, suffix) in valid_hsa()) {
            let s = format!("SE{org}-{suffix}");
            prop_assert_eq!(HsaId::parse(&s).map(|h| h.to_string()), Ok(s.clone()));
        }

        #[test]
        fn any_single_digit_change_in_the_organisation_number_is_refused(
            (org, suffix) in valid_hsa(), pos in 0usize..10, delta in 1u8..=9,
        ) {
            let mut d = org.into_bytes();
            d[pos] = b'0' + (d[pos] - b'0' + delta) % 10;
            let s = format!("SE{}-{suffix}", String::from_utf8(d).unwrap());
            prop_assert!(HsaId::parse(&s).is_err(), "{} accepted", s);
        }
    }

    #[test]
    fn accepts_the_brief_examples() {
        for s in [
            "SE2321000131-E000000000001",
            "SE2321000131-S000000010252",
            "SE2321000131-P000000101458",
        ] {
            assert_eq!(HsaId::parse(s).map(|h| h.to_string()), Ok(s.to_owned()));
        }
    }

    #[test]
    fn rejects_with_the_rule() {
        assert_eq!(HsaId::parse(""), Err(HsaIdError::Empty));
        assert_eq!(HsaId::parse("SE2321000131-"), Err(HsaIdError::Suffix));
        assert_eq!(HsaId::parse("SE2321000131-Ö1"), Err(HsaIdError::Suffix));
        assert_eq!(HsaId::parse("SE2321000131-a@b"), Err(HsaIdError::Suffix));
        assert_eq!(
            HsaId::parse("SE2321000132-E1"),
            Err(HsaIdError::OrganisationCheckDigit)
        );
        assert_eq!(
            HsaId::parse("SE2311000131-E1"),
            Err(HsaIdError::OrganisationThirdDigit)
        );
        assert_eq!(HsaId::parse("DK2321000131-E1"), Err(HsaIdError::Prefix));
        assert_eq!(
            HsaId::parse("SE2321000131-P191212121212"),
            Err(HsaIdError::ContainsIdentityNumber)
        );
        assert_eq!(
            HsaId::parse("SE2321000131-P19121212x1212"),
            Err(HsaIdError::ContainsIdentityNumber)
        );
        assert_eq!(HsaId::parse("SE232100013-E1"), Err(HsaIdError::Prefix));
        assert_eq!(
            HsaId::parse("SE2321000131-E0000000000000000001"),
            Err(HsaIdError::TooLong)
        );
    }
}
