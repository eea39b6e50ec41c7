//! Secrets in the components' settings (passwords, keys, URLs with credentials): held as
//! `secrecy::SecretString` — zeroized on drop, `Debug` redacted — and read so that the value
//! never appears in an error message.

use std::fmt;

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// For `#[serde(deserialize_with = "crate::secret::required")]`.
pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    Ok(Text::deserialize(d)?.0)
}

/// For `#[serde(default, deserialize_with = "crate::secret::optional")]`.
pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Ok(Option::<Text>::deserialize(d)?.map(|t| t.0))
}

/// For `#[serde(default, deserialize_with = "crate::secret::list")]`: several secrets.
pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    Ok(Vec::<Text>::deserialize(d)?
        .into_iter()
        .map(|t| t.0)
        .collect())
}

/// A secret read only from a string. The environment layer reads an all-digit value as a
/// number, which would lose leading zeros and, through serde's default errors, print the
/// value: numbers are refused with a hint instead.
struct Text(SecretString);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `any`, not `str`: buffered input (an internally tagged section) would otherwise
        // report a number with serde's own error, which prints it.
        d.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

const NOT_TEXT: &str = "a secret must be a string (quote a value that looks like a number, e.g. ETK_SMTP__LOGIN__PASSWORD='\"0123\"')";

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
        Ok(Text(SecretString::from(v)))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
        Ok(Text(SecretString::from(v)))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Text, E> {
        Err(E::custom(NOT_TEXT))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Text, E> {
        Err(E::custom(NOT_TEXT))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Text, E> {
        Err(E::custom(NOT_TEXT))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Text, E> {
        Err(E::custom(NOT_TEXT))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Text, E> {
        Err(E::custom(NOT_TEXT))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Text, E> {
        Err(E::custom(NOT_TEXT))
    }
}
