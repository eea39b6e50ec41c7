//! The one rule for identity numbers hidden in free text. Every free-text input type
//! (`RequestId`, `RevocationReference`, `FreeText`, `PersonName`, `Email`, the suffix of an
//! `HsaId`) refuses what [`contains`] finds, and `connectors::redact` replaces what [`find`]
//! finds in outside servers' messages.
//!
//! The rule: split the text into *digit runs*: digits (of any common script) whose groups are
//! separated only by characters that are not letters or digits — any number of them, so `-`,
//! `+`, `=`, `:`, `,`, `.`, `_`, `/`, spaces, doubled dashes all join — or by the letter `x`.
//! Any other letter ends a run. Then every window of 10 or 12 consecutive digits of a run is
//! tested as a personnummer or samordningsnummer: the date exists (day + 60 for
//! samordningsnummer; a ten-digit window counts if the date exists in the 1900s or the 2000s,
//! a twelve-digit window needs a year from 1880 to 2099), the birth number is not 000 and the
//! Luhn check digit matches. Windows need not start or end at a group boundary, so a leading
//! extra digit (`1191212121212`) or a trailing `.0` does not hide a number.
//!
//! The trade-off: the rule is independent of today's date and of the field, and it refuses
//! only digit sequences that *are* valid identity numbers, so ordinary references
//! (`TJID-2026-0042`), ticket numbers and request ids pass. The price is that roughly one
//! random ten-digit window in 140 happens to be a valid number: a long digit-only reference
//! or a random UUID whose hex groups line up as digits is refused now and then (about once in
//! a thousand as free text; identifiers that are canonical UUIDs are read by their layout, see
//! [`contains_in_id`], and trip the rule about once in 10,000), and so is a date written
//! next to a four-digit time
//! (`2024-01-15 10:30` is the shape of `20240115-1030`). The caller then picks another id
//! or writes the text differently; the alternative — a threshold on digit count — refused
//! ordinary references far more often and still missed numbers split by letters like `x`.

use std::ops::Range;

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};

use time::{Date, Month};

/// Whether `text` holds a personnummer or samordningsnummer, however its groups are separated.
pub fn contains(text: &str) -> bool {
    let mut found = false;
    scan(text, |_| {
        found = true;
        false
    });
    // Compatibility forms (full-width `ｘ`, `ⅹ`, superscript digits) are read as what they stand for.
    found
        || (!is_nfkc_quick(text.chars()).eq(&IsNormalized::Yes) && {
            let folded: String = text.nfkc().collect();
            folded != text && contains(&folded)
        })
}

/// The byte ranges of every identity number in `text` (overlapping finds merged), from the
/// first to the last digit of each.
pub fn find(text: &str) -> Vec<Range<usize>> {
    let mut spans: Vec<Range<usize>> = Vec::new();
    scan(text, |r| {
        match spans.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => spans.push(r),
        }
        true
    });
    spans
}

/// [`contains`] for identifiers: a canonical UUID (`8-4-4-4-12` hex digits) is read by its own
/// layout, anything else as free text. In a UUID an identity number can be *written* only in
/// its layout's places: `YYYYMMDD-NNNC` as groups one and two, `YYMMDD-NNNC` as the end of group
/// one and group two, `YYYY-MMDD-NNNC` as groups two to four, `YYYYMMDDNNNC` or `YYMMDDNNNC`
/// anywhere in group five; those are refused. Other windows of hex digits that happen to
/// be decimal are not a written number; random UUIDs trip them about once in a thousand, read by
/// the layout about once in 10,000.
///
/// A UUID with a prefix or suffix (`ts-<uuid>`, `<uuid>.2`) is read the same way when letters
/// set it apart (a letter ends a digit run): the text around it is read as free text on its own.
/// A UUID whose neighbour ends or starts in a digit (or the separator `x`) could hide a number
/// across the join, so the whole identifier is then read as free text.
pub fn contains_in_id(text: &str) -> bool {
    let Some(at) = find_uuid(text) else {
        return contains(text);
    };
    let (before, uuid, after) = (&text[..at], &text[at..at + 36], &text[at + 36..]);
    // A neighbour's last (or first) letter or digit, which a digit run would cross into the UUID.
    let last_before = before.chars().rev().find(|c| c.is_alphanumeric());
    let first_after = after.chars().find(|c| c.is_alphanumeric());
    let joins = |c: Option<char>| c.is_some_and(|c| digit_value(c).is_some() || is_separator(c));
    if joins(last_before) || joins(first_after) {
        return contains(text);
    }
    let groups: Vec<&str> = uuid.split('-').collect();
    contains(before) || contains(after) || uuid_written(&groups)
}

/// The byte offset of the first canonical UUID in `text`: `8-4-4-4-12` hex digits, not part of a
/// longer run of hex digits.
fn find_uuid(text: &str) -> Option<usize> {
    const LAYOUT: &[u8; 36] = b"hhhhhhhh-hhhh-hhhh-hhhh-hhhhhhhhhhhh";
    let bytes = text.as_bytes();
    let hex = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_hexdigit);
    (0..=bytes.len().checked_sub(36)?).find(|&i| {
        (i == 0 || !hex(i - 1))
            && !hex(i + 36)
            && LAYOUT.iter().zip(&bytes[i..i + 36]).all(|(&l, b)| {
                if l == b'-' {
                    *b == b'-'
                } else {
                    b.is_ascii_hexdigit()
                }
            })
    })
}

/// Whether a UUID's groups write an identity number in one of its layout's places.
fn uuid_written(groups: &[&str]) -> bool {
    let digits = |s: &str| -> Option<Vec<u8>> {
        s.bytes()
            .map(|b| b.is_ascii_digit().then(|| b - b'0'))
            .collect()
    };
    // Groups one and two (`YYYYMMDD-NNNC`, `YYMMDD-NNNC`), two to four (`YYYY-MMDD-NNNC`); and
    // anywhere in group five, the one group long enough to hold a number by itself (whole, or
    // ten digits at any offset, read as free text: its letters end a run).
    let written = [
        format!("{}{}", groups[0], groups[1]),
        format!("{}{}", &groups[0][2..], groups[1]),
        format!("{}{}{}", groups[1], groups[2], groups[3]),
    ];
    written
        .iter()
        .any(|w| digits(w).is_some_and(|d| is_identity_number(&d)))
        || contains(groups[4])
}

/// Whether exactly these digits (10 or 12 of them) form a valid identity number by the rule
/// above. For fields that hold only digits, such as the card number.
pub fn is_identity_number(d: &[u8]) -> bool {
    let (years, rest): (&[i32], &[u8]) = match d.len() {
        10 => {
            let yy = i32::from(d[0]) * 10 + i32::from(d[1]);
            (&[1900 + yy, 2000 + yy], &d[2..])
        }
        12 => {
            let year = d[..4].iter().fold(0i32, |y, &x| y * 10 + i32::from(x));
            if !(1880..=2099).contains(&year) {
                return false;
            }
            (&[year][..], &d[4..])
        }
        _ => return false,
    };
    let Ok(month) = Month::try_from(rest[0] * 10 + rest[1]) else {
        return false;
    };
    let raw_day = rest[2] * 10 + rest[3];
    let day = if raw_day > 60 { raw_day - 60 } else { raw_day };
    years
        .iter()
        .any(|&y| Date::from_calendar_date(y, month, day).is_ok())
        && rest[4..7] != [0, 0, 0]
        && super::luhn::valid(&d[d.len() - 10..])
}

/// Calls `hit` with the byte range of each identity number found, in order of its start,
/// until `hit` returns false.
fn scan(text: &str, mut hit: impl FnMut(Range<usize>) -> bool) {
    // The current run: each digit's value and byte range.
    let mut run: Vec<(u8, Range<usize>)> = Vec::new();
    let mut go_on = true;
    let mut flush = |run: &mut Vec<(u8, Range<usize>)>, go_on: &mut bool| {
        let digits: Vec<u8> = run.iter().map(|(d, _)| *d).collect();
        'starts: for start in 0..digits.len() {
            for len in [10, 12] {
                if !*go_on {
                    break 'starts;
                }
                if let Some(w) = digits.get(start..start + len)
                    && is_identity_number(w)
                {
                    *go_on = hit(run[start].1.start..run[start + len - 1].1.end);
                }
            }
        }
        run.clear();
    };
    for (i, c) in text.char_indices() {
        if !go_on {
            return;
        }
        if let Some(d) = digit_value(c) {
            run.push((d, i..i + c.len_utf8()));
        } else if !is_separator(c) {
            flush(&mut run, &mut go_on);
        }
    }
    flush(&mut run, &mut go_on);
}

/// Characters that render as nothing or reorder the text around them: text carrying them can
/// *show* a number the scan does not read (`\u{202E}2121-21212191` displays as `19121212-1212`).
pub fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'                      // soft hyphen
        | '\u{034F}'                    // combining grapheme joiner
        | '\u{061C}'                    // Arabic letter mark
        | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' // Hangul fillers
        | '\u{180E}'                    // Mongolian vowel separator
        | '\u{200B}'..='\u{200F}'       // zero-width space/joiners, LRM, RLM
        | '\u{2028}' | '\u{2029}'       // line and paragraph separators
        | '\u{202A}'..='\u{202E}'       // bidi embeddings and overrides
        | '\u{2060}'..='\u{206F}'       // word joiner, invisible operators, isolates
        | '\u{FE00}'..='\u{FE0F}'       // variation selectors
        | '\u{FEFF}'                    // BOM / zero-width no-break space
        | '\u{FFF9}'..='\u{FFFB}'       // interlinear annotation
        | '\u{E0000}'..='\u{E007F}'     // tags
        | '\u{E0100}'..='\u{E01EF}' // variation selectors supplement
    )
}

/// Joins digit groups: anything that is neither a letter nor a digit, and the letter `x` and its
/// look-alikes (`19121212x1212`).
fn is_separator(c: char) -> bool {
    // Cyrillic х/Х look like x; compatibility forms of x are folded by `contains`.
    !c.is_alphanumeric() || matches!(c, 'x' | 'X' | '\u{0445}' | '\u{0425}')
}

/// Decimal digits of the scripts a number is plausibly typed in: ASCII, full-width, and the
/// contiguous digit blocks of the common scripts (a block is ten code points from its zero).
fn digit_value(c: char) -> Option<u8> {
    const ZEROS: &[u32] = &[
        0x0030, 0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66,
        0x0CE6, 0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0xFF10,
        0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6,
    ];
    let cp = u32::from(c);
    ZEROS
        .iter()
        .find(|&&zero| (zero..zero + 10).contains(&cp))
        .map(|zero| (cp - zero) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Personnummer;
    use proptest::prelude::*;

    #[test]
    fn finds_the_test_number_however_it_is_written() {
        for s in [
            "19121212-1212",
            "191212121212",
            "121212-1212",
            "121212+1212",
            "1212121212",
            "1912=12=12=1212",
            "19121212:1212",
            "1912,1212,1212",
            "1912.12.12.1212",
            "19121212_1212",
            "19121212x1212",
            "19121212X1212",
            "19121212 1212",
            "19121212--1212",
            "1912 - 12 - 12 -- 1212",
            "191212121212.0",
            "1191212121212",
            "ref:19121212-1212.",
            "cn=P191212121212,ou=Personal",
            "１９１２１２１２－１２１２",
            "١٩١٢١٢١٢١٢١٢",
        ] {
            assert!(contains(s), "{s}");
        }
    }

    #[test]
    fn leaves_ordinary_references_and_ids_alone() {
        for s in [
            "",
            "TJID-2026-0042",
            "INC-000123",
            "550 5.1.1",
            "2026-11-29",
            "19121212-1213",
            "12121A1212",
            "0198a6f2-7c3e-7d41-9f0e-3b2d5c6a8e10",
            "7d444840-9dc0-11d1-b245-5ffdce74fad2",
            "case 17, 23 and 42",
        ] {
            assert!(!contains(s), "{s}");
        }
    }

    #[test]
    fn find_returns_the_digits_span() {
        let s = "id 19121212-1212 and 121212 1212.";
        let spans = find(s);
        let found: Vec<&str> = spans.iter().map(|r| &s[r.clone()]).collect();
        assert_eq!(found, ["19121212-1212", "121212 1212"]);
        // A twelve-digit number holds its ten-digit form: one merged span.
        assert_eq!(find("x191212121212").len(), 1);
    }

    #[test]
    fn a_number_in_a_uuids_layout_is_found() {
        for id in [
            "19121212-1212-4000-8000-000000000000",
            "ab121212-1212-4000-8000-000000000000",
            "00000000-0000-4000-8000-191212121212",
            "00000000-1912-1212-1212-000000000000",
            "00000000-0000-4000-8000-ab1212121212",
            "00000000-0000-4000-8000-121212121200",
            "00000000-0000-4000-8000-a1212121212b",
            "ts-00000000-0000-4000-8000-a1212121212b",
            "19121212-1212",
            "r-19121212-1212",
            // With a prefix or suffix, the layout's places and the text around it.
            "ts-19121212-1212-4000-8000-000000000000",
            "ts-00000000-0000-4000-8000-191212121212.v2",
            "19121212-1212-ab-00000000-0000-4000-8000-000000000000",
            "00000000-0000-4000-8000-000000000000-r19121212-1212",
            // A neighbour's digits that join group one: `19` + `12121212` + `12`.
            "19-12121212-12ab-4000-8000-000000000000",
            "19x-12121212-12ab-4000-8000-000000000000",
            "00000000-0000-4000-8000-ab1912121212-12",
        ] {
            assert!(contains_in_id(id), "{id}");
        }
        for id in [
            "0198a6f2-7c3e-7d41-9f0e-3b2d5c6a8e10",
            // Digits that only line up across the later hyphens are not a written number...
            "abcdef12-3412-1212-1212-abcdefabcdef",
            // ...nor with letters around the UUID, though free text would read one there.
            "ts-abcdef12-3412-1212-1212-abcdefabcdef",
            "abcdef12-3412-1212-1212-abcdefabcdef.retry-2",
        ] {
            assert!(!contains_in_id(id), "{id}");
        }
        assert!(contains("ts-abcdef12-3412-1212-1212-abcdefabcdef"));
    }

    #[test]
    fn few_random_uuids_are_refused() {
        // A fixed sequence (SplitMix64), so the count is the same on every run.
        let mut state = 0x5eed_u64;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let (mut as_text, mut as_id, mut prefixed) = (0, 0, 0);
        for _ in 0..20_000 {
            let id = uuid::Builder::from_random_bytes(
                (u128::from(next()) << 64 | u128::from(next())).to_le_bytes(),
            )
            .into_uuid()
            .hyphenated()
            .to_string();
            as_text += usize::from(contains(&id));
            as_id += usize::from(contains_in_id(&id));
            prefixed += usize::from(contains_in_id(&format!("ts-{id}")));
        }
        // As free text about one in a thousand trips the rule (23 with this seed; see the module
        // doc); read as a UUID, about one in 10,000 (at most 2 with this seed).
        assert!(as_text < 40, "{as_text} of 20000 UUIDs refused as text");
        assert!(as_id <= 2, "{as_id} of 20000 UUIDs refused as ids");
        assert!(
            prefixed <= 2,
            "{prefixed} of 20000 prefixed UUIDs refused as ids"
        );
    }

    prop_compose! {
        fn any_number()(year in 1880i32..=2099, month in 1u8..=12, day in 1u8..=28,
                        birth in 1u16..=999, samordning in any::<bool>()) -> String {
            Personnummer::synthetic(year, month, if samordning { day + 60 } else { day }, birth)
                .expect("valid").expose_digits()
        }
    }

    proptest! {
        #[test]
        fn any_number_with_any_separators_is_found(
            digits in any_number(),
            ten in any::<bool>(),
            cuts in proptest::collection::vec((1usize..12, "(-|\\+|=|:|,|\\.|_|x|X| |--| - |/)"), 0..4),
            before in "[a-zA-Z ]{0,8}[ ,.:=(]",
            after in "[ ,.:)=][a-zA-Z0-9 ]{0,8}",
        ) {
            let mut d = if ten { digits[2..].to_owned() } else { digits };
            let mut cuts = cuts;
            cuts.sort_by_key(|c| std::cmp::Reverse(c.0));
            cuts.dedup_by_key(|c| c.0);
            for (at, sep) in cuts {
                if at < d.len() {
                    d.insert_str(at, &sep);
                }
            }
            let text = format!("{before}{d}{after}");
            prop_assert!(contains(&text), "{}", text);
            prop_assert!(!find(&text).is_empty());
        }
    }
}
