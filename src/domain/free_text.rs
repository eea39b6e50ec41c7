//! Free-text inputs that end up in clear text (the audit trail, `state_reason`, idempotency
//! keys): request ids, revocation references, and reasons/comments/justifications. Each type
//! applies [`identity_scan`](super::identity_scan), so no identity number enters the record
//! through them.

use std::fmt;

use unicode_normalization::UnicodeNormalization;

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
        "must not contain invisible or text-direction characters (bidi controls, zero-width characters, BOM, line or paragraph separators)"
    )]
    InvisibleCharacter,
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
            TextError::InvisibleCharacter => "INVISIBLE_CHARACTER",
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
        if identity_scan::contains_in_id(s) {
            return Err(TextError::ContainsIdentityNumber);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A W3C trace id as kept on audit events: 32 lowercase hex digits, not all zero. The caller
/// chooses it (`traceparent`), and it is stored in the append-only trail, so it must hold no
/// identity number either (`00000000000000000000191212121212`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(String);

impl TraceId {
    /// `None` when `input` is not a usable trace id; the caller then starts a fresh trace.
    pub fn parse(input: &str) -> Option<Self> {
        let id = input.to_ascii_lowercase();
        let ok = id.len() == 32
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && id.bytes().any(|b| b != b'0')
            && !identity_scan::contains(&id);
        ok.then_some(Self(id))
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
        let s: String = input.trim().nfc().collect();
        if s.chars().count() > Self::MAX_CHARS {
            return Err(TextError::TooLong);
        }
        if s.chars().any(|c| c.is_control() && c != '\n') {
            return Err(TextError::ControlCharacter);
        }
        // What is shown must be what is checked: no reordering or invisible characters.
        if s.chars().any(identity_scan::invisible) {
            return Err(TextError::InvisibleCharacter);
        }
        no_identity_number(&s)?;
        Ok(Self(s))
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
    fn trace_ids() {
        let ok = "4BF92F3577B34DA6A3CE929D0E0E4736";
        assert_eq!(
            TraceId::parse(ok).map(TraceId::into_string),
            Some(ok.to_ascii_lowercase())
        );
        for bad in [
            "",
            "00000000000000000000000000000000",
            "4bf92f3577b34da6a3ce929d0e0e473",
            "4bf92f3577b34da6a3ce929d0e0e473g",
            "00000000000000000000191212121212",
            "000000000000000000001212121212ff",
        ] {
            assert_eq!(TraceId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn free_text_shows_what_it_holds() {
        assert_eq!(
            FreeText::parse("\u{202E}2121-21212191"),
            Err(TextError::InvisibleCharacter)
        );
        assert_eq!(
            FreeText::parse("a\u{200B}b"),
            Err(TextError::InvisibleCharacter)
        );
        assert_eq!(
            FreeText::parse("１９１２１２１２ｘ１２１２"),
            Err(TextError::ContainsIdentityNumber)
        );
        assert_eq!(
            FreeText::parse("19121212\u{0445}1212"),
            Err(TextError::ContainsIdentityNumber)
        );
        // Stored in NFC: "é" as e + combining acute becomes one character.
        assert_eq!(
            FreeText::parse("Caf\u{0065}\u{0301}").map(FreeText::into_string),
            Ok("Caf\u{00E9}".to_owned())
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

/// The promise of `identity_scan`, checked on every free-text input type at once.
#[cfg(test)]
mod every_field {
    use super::*;
    use crate::domain::{Email, EmailError, HsaId, HsaIdError, PersonName, PersonNameError};
    use crate::domain::{Personnummer, Rule};
    use proptest::prelude::*;

    /// A field's parser, reduced to its verdict: accepted, or the rule code that refused.
    type Field = (&'static str, fn(&str) -> Result<(), &'static str>);

    fn fields() -> Vec<Field> {
        fn code<E: Rule>(r: Result<impl Sized, E>) -> Result<(), &'static str> {
            r.map(|_| ()).map_err(|e| e.code())
        }
        vec![
            ("request_id", |s| code(RequestId::parse(s))),
            ("revocation_reference", |s| {
                code(RevocationReference::parse(s))
            }),
            ("free_text", |s| code(FreeText::parse(s))),
            ("person_name", |s| code(PersonName::parse(s))),
            ("email", |s| code(Email::parse(&format!("{s}@example.se")))),
            ("hsa_id", |s| {
                code(HsaId::parse(&format!("SE2321000131-{s}")))
            }),
        ]
    }

    /// Between digit groups.
    const SEPARATORS: &str = "(|-|\\+|=|:|,|\\.|_|x|X| |--| - |/)";
    /// After the number, also a trailing ".0".
    const TRAILERS: &str = "(|-|\\+|=|:|,|\\.|_|x|X| |--| - |/|\\.0)";

    prop_compose! {
        /// A valid number, in its 10- or 12-digit form, with separators cut in anywhere and
        /// random letters around it.
        fn embedded()(year in 1880i32..=2099, month in 1u8..=12, day in 1u8..=28,
                      birth in 1u16..=999, samordning in any::<bool>(), ten in any::<bool>(),
                      cuts in proptest::collection::vec((1usize..12, SEPARATORS), 0..4),
                      before in "[A-Za-z]{0,6}", glue_before in SEPARATORS,
                      after in "[A-Za-z]{0,6}", glue_after in TRAILERS) -> (String, String) {
            let digits = Personnummer::synthetic(year, month, if samordning { day + 60 } else { day }, birth)
                .expect("valid").expose_digits();
            let mut n = if ten { digits[2..].to_owned() } else { digits };
            let mut cuts = cuts;
            cuts.sort_by_key(|c| std::cmp::Reverse(c.0));
            cuts.dedup_by_key(|c| c.0);
            for (at, sep) in cuts {
                if at < n.len() {
                    n.insert_str(at, &sep);
                }
            }
            let text = format!("{before}{glue_before}{n}{glue_after}{after}");
            // The same text with the number's digits zeroed: no identity number (month 00).
            let zeroed = text.replace(|c: char| c.is_ascii_digit(), "0");
            (text, zeroed)
        }
    }

    proptest! {
        #[test]
        fn every_field_refuses_an_embedded_identity_number((text, zeroed) in embedded()) {
            for (field, parse) in fields() {
                match parse(&text) {
                    Err("CONTAINS_IDENTITY_NUMBER") => {}
                    // Refused for its shape: then the shape alone must be refused too, so the
                    // identity check was not what was missing.
                    Err(_) => prop_assert!(parse(&zeroed).is_err(), "{}: {:?} hid the number", field, text),
                    Ok(()) => prop_assert!(false, "{}: {:?} accepted", field, text),
                }
            }
        }

        #[test]
        fn a_trace_id_hiding_a_number_is_not_kept(
            (text, _) in embedded(), fill in "[0-9a-f]{32}", at in 0usize..22,
        ) {
            // The number's digits, as they would sit in a hex trace id.
            let digits: String = text.chars().filter(char::is_ascii_digit).collect();
            let id = format!("{}{}", &fill[..at.min(32 - digits.len())], digits);
            let id = format!("{id}{}", &fill[id.len()..]);
            prop_assert_eq!(id.len(), 32);
            prop_assert!(TraceId::parse(&id).is_none(), "{}", id);
        }

        #[test]
        fn ordinary_references_pass_every_field(year in 2000u32..2100, n in 1u32..10_000, prefix in "[A-Z]{2,5}") {
            let reference = format!("{prefix}-{year}-{n:04}");
            for (field, parse) in fields() {
                // (An HSA-id suffix refuses the dashes: FORMAT, which is fine here.)
                prop_assert_ne!(parse(&reference), Err("CONTAINS_IDENTITY_NUMBER"), "{}: {}", field, reference);
            }
            prop_assert!(RequestId::parse(&reference).is_ok());
            prop_assert!(RevocationReference::parse(&reference).is_ok());
            prop_assert!(FreeText::parse(&reference).is_ok());
        }
    }

    #[test]
    fn the_rule_codes_are_shared() {
        let id = "19121212x1212";
        assert_eq!(
            RequestId::parse(id).map(|_| ()),
            Err(TextError::ContainsIdentityNumber)
        );
        assert_eq!(
            Email::parse(&format!("{id}@x.se")),
            Err(EmailError::ContainsIdentityNumber)
        );
        assert_eq!(
            HsaId::parse(&format!("SE2321000131-{id}")),
            Err(HsaIdError::ContainsIdentityNumber)
        );
        assert_eq!(
            PersonName::parse(id).map(|_| ()),
            Err(PersonNameError::ContainsIdentityNumber)
        );
    }
}
