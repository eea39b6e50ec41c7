//! The Luhn (mod 10) check digit shared by identity numbers and organisation numbers.

/// Luhn check with weights 2,1,2,… from the left over `digits`, whose last element is the
/// check digit.
pub fn valid(digits: &[u8]) -> bool {
    match digits.split_last() {
        Some((&check, body)) => check_digit(body) == check,
        None => false,
    }
}

/// The Luhn check digit for `body` (weights 2,1,2,… from the left).
pub fn check_digit(body: &[u8]) -> u8 {
    let sum: u32 = body
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let p = u32::from(d) * if i % 2 == 0 { 2 } else { 1 };
            p / 10 + p % 10
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // 121212-1212 is the well-known test personnummer.
        assert!(valid(&[1, 2, 1, 2, 1, 2, 1, 2, 1, 2]));
        assert!(!valid(&[1, 2, 1, 2, 1, 2, 1, 2, 1, 3]));
        // VGR's organisation number.
        assert!(valid(&[2, 3, 2, 1, 0, 0, 0, 1, 3, 1]));
        assert!(!valid(&[]));
    }
}
