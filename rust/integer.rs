//! Redis's integer rules, as `INCRBY` and `GET` apply them to a string value.

/// Parses `text` the way Redis's `string2ll` does: an optional `-`, then ASCII digits with no
/// leading zero (a lone `0` is fine, `-0` is not), no `+`, no spaces, within `i64`.
///
/// Returns `None` for anything else, the empty string included.
pub fn parse_strict(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some(_) => (false, text),
        None => return None,
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }

    // Accumulate the magnitude in u64 so that i64::MIN, whose magnitude i64 cannot hold,
    // parses like any other value.
    let mut magnitude: u64 = 0;
    for &byte in digits {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        magnitude = magnitude.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Parses a counter as read by `MGET`: a missing key (`None`) and an empty string count as 0,
/// everything else follows [`parse_strict`].
pub fn parse_counter(value: Option<&[u8]>) -> Option<i64> {
    match value {
        None | Some(b"") => Some(0),
        Some(text) => parse_strict(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_integers() {
        assert_eq!(parse_strict(b"0"), Some(0));
        assert_eq!(parse_strict(b"7"), Some(7));
        assert_eq!(parse_strict(b"-7"), Some(-7));
        assert_eq!(parse_strict(b"1234567890"), Some(1_234_567_890));
    }

    #[test]
    fn accepts_the_i64_bounds_and_nothing_beyond() {
        assert_eq!(parse_strict(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_strict(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_strict(b"9223372036854775808"), None);
        assert_eq!(parse_strict(b"-9223372036854775809"), None);
        assert_eq!(parse_strict(b"99999999999999999999"), None);
        assert_eq!(parse_strict(b"18446744073709551616"), None);
    }

    #[test]
    fn rejects_what_redis_rejects() {
        for text in [
            &b""[..],
            b"-",
            b"-0",
            b"007",
            b"00",
            b"-01",
            b" 1",
            b"1 ",
            b"+1",
            b"1.0",
            b"1e3",
            b"0x10",
            b"12x",
            b"\x001",
            "\u{661}".as_bytes(),
        ] {
            assert_eq!(parse_strict(text), None, "{text:?}");
        }
    }

    #[test]
    fn counts_missing_and_empty_as_zero() {
        assert_eq!(parse_counter(None), Some(0));
        assert_eq!(parse_counter(Some(b"")), Some(0));
        assert_eq!(parse_counter(Some(b"42")), Some(42));
        assert_eq!(parse_counter(Some(b"-0")), None);
    }
}
