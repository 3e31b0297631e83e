//! Proleptic Gregorian calendar dates, as Redis keys spell them and Postgres stores them.

/// Days from 1970-01-01 to 2000-01-01, the epoch of Postgres's `date` and `timestamptz`.
pub const PG_EPOCH_UNIX_DAYS: i64 = 10_957;

/// Smallest year a key or timestamp may name: year 0 does not exist in ISO 8601 as written
/// by applications, and Python's `datetime.date` starts at year 1.
pub const MIN_YEAR: u16 = 1;

/// Largest year that four digits can spell, and the end of Python's `datetime.date`.
pub const MAX_YEAR: u16 = 9999;

/// A valid calendar date between [`MIN_YEAR`] and [`MAX_YEAR`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Date {
    year: u16,
    month: u8,
    day: u8,
}

impl Date {
    /// Returns the date, or `None` when it is not a real calendar date within the year range.
    pub fn new(year: u16, month: u8, day: u8) -> Option<Self> {
        let valid_year = (MIN_YEAR..=MAX_YEAR).contains(&year);
        let valid_month = (1..=12).contains(&month);
        if !valid_year || !valid_month || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        Some(Date { year, month, day })
    }

    /// Parses exactly `YYYY-MM-DD`: four, two and two ASCII digits, nothing around them.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let [y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1] = *text else {
            return None;
        };
        let year = digits(&[y0, y1, y2, y3])?;
        let month = digits(&[m0, m1])?;
        let day = digits(&[d0, d1])?;
        Date::new(year, u8::try_from(month).ok()?, u8::try_from(day).ok()?)
    }

    /// The year, 1 to 9999.
    pub fn year(self) -> u16 {
        self.year
    }

    /// The month, 1 to 12.
    pub fn month(self) -> u8 {
        self.month
    }

    /// The day of the month, from 1.
    pub fn day(self) -> u8 {
        self.day
    }

    /// Days since 1970-01-01 (negative before it).
    pub fn unix_days(self) -> i64 {
        // Count from 0000-03-01 so that the leap day ends each 4/100/400-year cycle; then
        // every month length but February's is fixed and a linear formula covers them.
        let (year, month) = if self.month > 2 {
            (i64::from(self.year), i64::from(self.month) - 3)
        } else {
            (i64::from(self.year) - 1, i64::from(self.month) + 9)
        };
        let era = year.div_euclid(400);
        let year_of_era = year.rem_euclid(400);
        let day_of_year = (153 * month + 2) / 5 + i64::from(self.day) - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        era * 146_097 + day_of_era - 719_468
    }

    /// Days since 2000-01-01, the value of a binary Postgres `date`.
    pub fn pg_days(self) -> i32 {
        let days = self.unix_days() - PG_EPOCH_UNIX_DAYS;
        i32::try_from(days).expect("years 1 to 9999 lie within 3.7 million days of 2000")
    }

    /// Writes the date as `YYYY-MM-DD`.
    pub fn write_iso(self, out: &mut Vec<u8>) {
        let text = format!("{:04}-{:02}-{:02}", self.year, self.month, self.day);
        out.extend_from_slice(text.as_bytes());
    }
}

/// Whether `year` has a 29 February.
pub fn is_leap_year(year: u16) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

/// Number of days in `month` (1 to 12) of `year`.
pub fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Reads a run of ASCII digits as a number; `None` if any byte is not a digit.
pub fn digits(text: &[u8]) -> Option<u16> {
    text.iter().try_fold(0u16, |acc, &byte| {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u16::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_dates() {
        let date = Date::parse(b"2026-03-05").unwrap();
        assert_eq!((date.year(), date.month(), date.day()), (2026, 3, 5));
        assert!(Date::parse(b"2024-02-29").is_some());
        assert!(Date::parse(b"2000-02-29").is_some());
        assert!(Date::parse(b"0001-01-01").is_some());
        assert!(Date::parse(b"9999-12-31").is_some());
    }

    #[test]
    fn rejects_dates_that_do_not_exist() {
        for text in [
            &b"2026-02-30"[..],
            b"2025-02-29",
            b"1900-02-29",
            b"2026-04-31",
            b"2026-13-01",
            b"2026-00-10",
            b"2026-01-00",
            b"0000-01-01",
        ] {
            assert_eq!(Date::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn rejects_anything_but_the_exact_layout() {
        for text in [
            &b"2026-3-05"[..],
            b"2026-03-5",
            b"26-03-05",
            b"2026-03-05 ",
            b" 2026-03-05",
            b"2026/03/05",
            b"20260305",
            b"2026-03-0a",
            b"+202-03-05",
            b"",
        ] {
            assert_eq!(Date::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn counts_days_from_the_epochs() {
        assert_eq!(Date::new(1970, 1, 1).unwrap().unix_days(), 0);
        assert_eq!(Date::new(2000, 1, 1).unwrap().pg_days(), 0);
        assert_eq!(Date::new(2000, 3, 1).unwrap().pg_days(), 60);
        assert_eq!(Date::new(1999, 12, 31).unwrap().pg_days(), -1);
        assert_eq!(Date::new(2026, 3, 5).unwrap().unix_days(), 20_517);
        assert_eq!(Date::new(1, 1, 1).unwrap().unix_days(), -719_162);
        assert_eq!(Date::new(9999, 12, 31).unwrap().unix_days(), 2_932_896);
    }

    #[test]
    fn day_numbers_are_consecutive_across_years() {
        let mut previous = Date::new(1899, 12, 31).unwrap().unix_days();
        for year in 1900..=2100 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    let days = Date::new(year, month, day).unwrap().unix_days();
                    assert_eq!(days, previous + 1, "{year}-{month}-{day}");
                    previous = days;
                }
            }
        }
    }

    #[test]
    fn writes_iso_text() {
        let mut out = Vec::new();
        Date::new(7, 2, 3).unwrap().write_iso(&mut out);
        assert_eq!(out, b"0007-02-03");
    }
}
