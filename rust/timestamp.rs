//! Event times as applications write them: epoch milliseconds, or ISO 8601 / RFC 3339 text
//! with a UTC offset. Both become Postgres `timestamptz` microseconds since 2000-01-01 UTC.

use crate::calendar::{digits, Date, PG_EPOCH_UNIX_DAYS};

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_MILLI: i64 = 1_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// Most fractional-second digits kept: Postgres stores microseconds, and rounding more digits
/// away would silently change the stored time.
const MAX_FRACTION_DIGITS: usize = 6;

/// Why an event time was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampError {
    /// Neither epoch milliseconds nor ISO 8601 with an offset.
    Unrecognised,
    /// Epoch milliseconds outside the years 0001 to 9999 (UTC).
    OutOfRange,
}

/// Parses an event time into microseconds since 2000-01-01T00:00:00Z.
///
/// Accepts epoch milliseconds (ASCII digits with an optional leading `-`) for instants in the
/// years 0001 to 9999 UTC, or `YYYY-MM-DD`, `T` or a space, `HH:MM:SS`, an optional fraction
/// of up to six digits, and `Z` or `±HH:MM`. Text without an offset is refused, since it does
/// not say which instant it means.
pub fn parse_event_time(text: &str) -> Result<i64, TimestampError> {
    let bytes = text.as_bytes();
    let unsigned = bytes.strip_prefix(b"-").unwrap_or(bytes);
    if !unsigned.is_empty() && unsigned.iter().all(u8::is_ascii_digit) {
        return parse_epoch_millis(text);
    }
    parse_rfc3339(bytes).ok_or(TimestampError::Unrecognised)
}

fn parse_epoch_millis(text: &str) -> Result<i64, TimestampError> {
    let first = Date::new(1, 1, 1)
        .expect("0001-01-01 is a date")
        .unix_days();
    let last = Date::new(9999, 12, 31)
        .expect("9999-12-31 is a date")
        .unix_days()
        + 1;
    let min_millis = first * SECONDS_PER_DAY * 1_000;
    let max_millis = last * SECONDS_PER_DAY * 1_000 - 1;

    let millis: i64 = text.parse().map_err(|_| TimestampError::OutOfRange)?;
    if !(min_millis..=max_millis).contains(&millis) {
        return Err(TimestampError::OutOfRange);
    }
    Ok(millis * MICROS_PER_MILLI - PG_EPOCH_UNIX_DAYS * SECONDS_PER_DAY * MICROS_PER_SECOND)
}

fn parse_rfc3339(text: &[u8]) -> Option<i64> {
    let (date, rest) = text.split_at_checked(10)?;
    let date = Date::parse(date)?;
    let (&separator, rest) = rest.split_first()?;
    if !matches!(separator, b'T' | b't' | b' ') {
        return None;
    }

    let (clock, mut rest) = rest.split_at_checked(8)?;
    let [h0, h1, b':', m0, m1, b':', s0, s1] = *clock else {
        return None;
    };
    let hour = i64::from(digits(&[h0, h1])?);
    let minute = i64::from(digits(&[m0, m1])?);
    let second = i64::from(digits(&[s0, s1])?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }

    let mut micros = 0;
    if let Some(after_dot) = rest.strip_prefix(b".") {
        let count = after_dot
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        if count == 0 || count > MAX_FRACTION_DIGITS {
            return None;
        }
        let (fraction, tail) = after_dot.split_at(count);
        let scale = 10i64.pow(u32::try_from(MAX_FRACTION_DIGITS - count).ok()?);
        micros = i64::from(digits_u32(fraction)?) * scale;
        rest = tail;
    }

    let offset_seconds = parse_offset(rest)?;
    let day_seconds = hour * 3_600 + minute * 60 + second;
    let pg_days = date.unix_days() - PG_EPOCH_UNIX_DAYS;
    let seconds = pg_days * SECONDS_PER_DAY + day_seconds - offset_seconds;
    Some(seconds * MICROS_PER_SECOND + micros)
}

/// Reads `Z` or `±HH:MM` and nothing after it, as seconds east of UTC.
fn parse_offset(text: &[u8]) -> Option<i64> {
    match *text {
        [b'Z' | b'z'] => Some(0),
        [sign @ (b'+' | b'-'), h0, h1, b':', m0, m1] => {
            let hours = i64::from(digits(&[h0, h1])?);
            let minutes = i64::from(digits(&[m0, m1])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = hours * 3_600 + minutes * 60;
            Some(if sign == b'-' { -seconds } else { seconds })
        }
        _ => None,
    }
}

fn digits_u32(text: &[u8]) -> Option<u32> {
    text.iter().try_fold(0u32, |acc, &byte| {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u32::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MICROS_PER_DAY: i64 = SECONDS_PER_DAY * MICROS_PER_SECOND;

    #[test]
    fn reads_rfc3339_with_offsets() {
        assert_eq!(parse_event_time("2000-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_event_time("2000-01-01t00:00:00z"), Ok(0));
        assert_eq!(parse_event_time("2000-01-01 00:00:01Z"), Ok(1_000_000));
        assert_eq!(
            parse_event_time("2000-01-02T00:00:00+00:00"),
            Ok(MICROS_PER_DAY)
        );
        assert_eq!(parse_event_time("2000-01-01T01:30:00+01:30"), Ok(0));
        assert_eq!(parse_event_time("1999-12-31T19:00:00-05:00"), Ok(0));
        assert_eq!(parse_event_time("2000-01-01T00:00:00.5Z"), Ok(500_000));
        assert_eq!(parse_event_time("2000-01-01T00:00:00.000007Z"), Ok(7));
        assert_eq!(parse_event_time("1999-12-31T23:59:59.999999Z"), Ok(-1));
        assert_eq!(
            parse_event_time("2026-03-05T12:34:56.789Z"),
            Ok(826_029_296_789_000)
        );
    }

    #[test]
    fn reads_epoch_milliseconds() {
        assert_eq!(parse_event_time("946684800000"), Ok(0));
        assert_eq!(parse_event_time("946684800001"), Ok(1_000));
        assert_eq!(parse_event_time("0"), Ok(-946_684_800_000_000));
        assert_eq!(parse_event_time("-1"), Ok(-946_684_800_001_000));
        assert_eq!(
            parse_event_time("253402300799999"),
            Ok(252_455_615_999_999_000)
        );
        assert_eq!(
            parse_event_time("-62135596800000"),
            Ok(-63_082_281_600_000_000)
        );
    }

    #[test]
    fn refuses_epoch_milliseconds_out_of_range() {
        for text in [
            "253402300800000",
            "-62135596800001",
            "99999999999999999999999",
        ] {
            assert_eq!(
                parse_event_time(text),
                Err(TimestampError::OutOfRange),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_ambiguous_or_malformed_text() {
        for text in [
            "",
            "-",
            "2026-03-05",
            "2026-03-05T12:34:56",
            "2026-03-05T12:34Z",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "2026-03-05T24:00:00Z",
            "2026-03-05T12:60:00Z",
            "2026-03-05T12:00:60Z",
            "2026-03-05T12:00:00.Z",
            "2026-03-05T12:00:00.1234567Z",
            "2026-03-05T12:00:00+0100",
            "2026-03-05T12:00:00+01",
            "2026-03-05T12:00:00+24:00",
            "2026-03-05T12:00:00Z ",
            "2026-03-05X12:00:00Z",
            "1.5",
            "+1000",
            " 1000",
            "12ab",
        ] {
            assert_eq!(
                parse_event_time(text),
                Err(TimestampError::Unrecognised),
                "{text}"
            );
        }
    }
}
