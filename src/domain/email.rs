//! E-mail addresses, checked only as far as delivery needs: one `@`, a dotted domain,
//! no whitespace, at most 254 characters.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Email(String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("is required")]
    Empty,
    #[error(
        "must be an address like name@example.se (one @, a dotted domain, no spaces, at most 254 characters)"
    )]
    Format,
    #[error("must not contain a personal identity number")]
    ContainsIdentityNumber,
}

impl super::Rule for EmailError {
    fn code(&self) -> &'static str {
        match self {
            EmailError::Empty => "REQUIRED",
            EmailError::Format => "FORMAT",
            EmailError::ContainsIdentityNumber => "CONTAINS_IDENTITY_NUMBER",
        }
    }
}

impl Email {
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        let ok = s.len() <= 254
            && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            && match s.split_once('@') {
                // The dot-atom form every mail system delivers to; quoted local parts and
                // address literals are refused because notices could not reach them.
                Some((local, domain)) => {
                    let atext =
                        |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
                    !local.is_empty()
                        && local.len() <= 64
                        && local
                            .split('.')
                            .all(|part| !part.is_empty() && part.chars().all(atext))
                        && domain.contains('.')
                        && domain.split('.').all(|label| {
                            !label.is_empty()
                                && !label.starts_with('-')
                                && !label.ends_with('-')
                                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
                        })
                }
                None => false,
            };
        if !ok {
            return Err(EmailError::Format);
        }
        // The whole address, not only the local part: a domain label can carry digits too.
        if super::identity_scan::contains(s) {
            return Err(EmailError::ContainsIdentityNumber);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An address read back from storage (validated when stored; see `PersonName::from_stored`).
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Addresses are personal data too; keep them out of debug output.
        f.write_str("Email(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_deliverable_addresses() {
        for ok in [
            "vera@example.se",
            "a.b+c@mail.example.se",
            "o'neil@example.se",
            "x@bäck.se",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a,b@example.se",
            "t<x@example.se",
            "t\"x\"@example.se",
            "t;x@example.se",
            "t:x@example.se",
            "t(x)@example.se",
            ".a@example.se",
            "a..b@example.se",
            "a@-example.se",
            "a@example",
            "a@b@example.se",
        ] {
            assert_eq!(Email::parse(bad), Err(EmailError::Format), "{bad}");
        }
        for bad in [
            "19121212-1212@example.se",
            "p.19121212.1212@example.se",
            "a1212121212@x.se",
        ] {
            assert_eq!(
                Email::parse(bad),
                Err(EmailError::ContainsIdentityNumber),
                "{bad}"
            );
        }
    }
}
