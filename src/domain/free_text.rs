//! Free-text inputs that end up in clear text (the audit trail, `state_reason`, idempotency
//! keys): request ids, revocation references, and reasons/comments/justifications. Each type
//! applies [`identity_scan`](super::identity_scan), so no identity number enters the record
//! through them.

use std::fmt;

use super::identity_scan;

/// Why a free-text input is refused. Never carries the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("is required")]
    Empty,
    #[error("must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'")]
    RequestIdFormat,
    #[error("must be 1 to 64 printable ASCII characters without spaces")]
    ReferenceFormat,
    #[error("must be at most {} characters", FreeText::MAX_CHARS)]
    TooLong,
    #[error("must not contain control characters other than line breaks")]
    ControlCharacter,
    #[error(
        "must not contain a personal identity number, however its digits are separated (no personal identity numbers in the audit trail)"
    )]
    ContainsIdentityNumber,
}

impl super::Rule for TextError {
    fn code(&self) -> &'static str {
        match self {
            TextError::Empty => "REQUIRED",
            TextError::RequestIdFormat | TextError::ReferenceFormat => "FORMAT",
            TextError::TooLong => "TOO_LONG",
            TextError::ControlCharacter => "FORMAT",
            TextError::ContainsIdentityNumber => "CONTAINS_IDENTITY_NUMBER",
        }
    }
}

fn no_identity_number(s: &str) -> Result<(), TextError> {
    if identity_scan::contains(s) {
        return Err(TextError::ContainsIdentityNumber);
    }
    Ok(())
}

/// A caller's idempotency key: 1–64 of `A-Z a-z 0-9 . _ -` (a UUID fits).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(input: &str) -> Result<Self, TextError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(TextError::Empty);
        }
        if s.len() > Self::MAX_LEN
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(TextError::RequestIdFormat);
        }
        no_identity_number(s)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// TjänsteID-service's reference for a revocation: 1–64 printable ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RevocationReference(String);

impl RevocationReference {
    pub const MAX_LEN: usize = 64;

    pub fn parse(input: &str) -> Result<Self, TextError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(TextError::Empty);
        }
        if s.len() > Self::MAX_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TextError::ReferenceFormat);
        }
        no_identity_number(s)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for RevocationReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reason, comment or justification: at most 500 characters, line breaks allowed.
/// May be empty; [`FreeText::parse_required`] refuses that.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FreeText(String);

impl FreeText {
    pub const MAX_CHARS: usize = 500;

    pub fn parse(input: &str) -> Result<Self, TextError> {
        let s = input.trim();
        if s.chars().count() > Self::MAX_CHARS {
            return Err(TextError::TooLong);
        }
        if s.chars().any(|c| c.is_control() && c != '\n') {
            return Err(TextError::ControlCharacter);
        }
        no_identity_number(s)?;
        Ok(Self(s.to_owned()))
    }

    pub fn parse_required(input: &str) -> Result<Self, TextError> {
        let t = Self::parse(input)?;
        if t.0.is_empty() {
            return Err(TextError::Empty);
        }
        Ok(t)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        for ok in ["r-1", "0198a6f2-7c3e-7d41-9f0e-3b2d5c6a8e10", "a.b_c-D"] {
            assert_eq!(
                RequestId::parse(ok).map(RequestId::into_string),
                Ok(ok.into())
            );
        }
        assert_eq!(RequestId::parse(" "), Err(TextError::Empty));
        assert_eq!(RequestId::parse("bad id!"), Err(TextError::RequestIdFormat));
        assert_eq!(
            RequestId::parse(&"a".repeat(65)),
            Err(TextError::RequestIdFormat)
        );
        assert_eq!(
            RequestId::parse("19121212-1212"),
            Err(TextError::ContainsIdentityNumber)
        );
    }

    #[test]
    fn references() {
        for ok in ["TJID-2026-0042", "INC0012345", "ref#42"] {
            assert!(RevocationReference::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(RevocationReference::parse(""), Err(TextError::Empty));
        assert_eq!(
            RevocationReference::parse("a b"),
            Err(TextError::ReferenceFormat)
        );
        assert_eq!(
            RevocationReference::parse("Ä1"),
            Err(TextError::ReferenceFormat)
        );
        assert_eq!(
            RevocationReference::parse("TJID_19121212x1212"),
            Err(TextError::ContainsIdentityNumber)
        );
    }

    #[test]
    fn free_text() {
        assert_eq!(
            FreeText::parse("  ").map(FreeText::into_string),
            Ok(String::new())
        );
        assert_eq!(FreeText::parse_required(" "), Err(TextError::Empty));
        assert!(FreeText::parse("line one\nline two, case 2026-0042").is_ok());
        assert_eq!(FreeText::parse(&"å".repeat(501)), Err(TextError::TooLong));
        assert!(FreeText::parse(&"å".repeat(500)).is_ok());
        assert_eq!(FreeText::parse("a\u{7}b"), Err(TextError::ControlCharacter));
        assert_eq!(
            FreeText::parse("född 1912-12-12 / 1212"),
            Err(TextError::ContainsIdentityNumber)
        );
    }
}
