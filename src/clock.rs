//! The current time, behind a trait so tests can move it explicitly instead of sleeping.
//!
//! Nothing else in the crate reads the system clock: the domain takes time as a parameter and
//! the service asks its [`Clock`].

use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};

/// Source of "now" for the service layer.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;

    /// Now as whole seconds since the Unix epoch (what the service stores and compares).
    fn now_unix(&self) -> i64 {
        self.now().unix_timestamp()
    }
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// Without the calendar conversion `now` makes (read on every request).
    fn now_unix(&self) -> i64 {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            // Before the epoch (a badly set clock): the floor, as `unix_timestamp` gives it.
            Err(before) => {
                let before = before.duration();
                let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
                if before.subsec_nanos() == 0 { -secs } else { -secs - 1 }
            }
        }
    }
}

/// A clock that only moves when told to; shared by clones. Used by tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Starts at the real current time, truncated to whole seconds.
    pub fn starting_now() -> Self {
        let now = OffsetDateTime::now_utc();
        Self::new(now.replace_nanosecond(0).unwrap_or(now))
    }

    pub fn advance(&self, by: Duration) {
        let mut guard = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Formats a unix timestamp (seconds) as RFC 3339 in UTC, the form every API timestamp takes.
///
/// Years 0 to 9999 are written digit by digit (`YYYY-MM-DDTHH:MM:SSZ`, what `time`'s RFC 3339
/// formatter writes for them, at a fraction of its cost: four of these per introspection); other
/// times go through `time`, and a time it cannot write is answered as the number of seconds.
pub fn rfc3339(unix_seconds: i64) -> String {
    match rfc3339_four_digit_year(unix_seconds) {
        Some(bytes) => bytes.iter().map(|&byte| char::from(byte)).collect(),
        None => rfc3339_slow(unix_seconds),
    }
}

/// Appends [`rfc3339`] of `unix_seconds` to `out` without allocating (for years 0 to 9999): the
/// introspection body is written this way (see `http::routes::auth::introspection_body`).
pub fn write_rfc3339(unix_seconds: i64, out: &mut Vec<u8>) {
    match rfc3339_four_digit_year(unix_seconds) {
        Some(bytes) => out.extend_from_slice(&bytes),
        None => out.extend_from_slice(rfc3339_slow(unix_seconds).as_bytes()),
    }
}

/// Times outside the four-digit years, through `time`; a time it cannot write is answered as
/// the number of seconds.
fn rfc3339_slow(unix_seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix_seconds.to_string())
}

/// `YYYY-MM-DDTHH:MM:SSZ` (ASCII) for years 0 to 9999, `None` outside them.
fn rfc3339_four_digit_year(unix_seconds: i64) -> Option<[u8; 20]> {
    /// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the four-digit years.
    const FIRST: i64 = -62_167_219_200;
    const LAST: i64 = 253_402_300_799;
    if !(FIRST..=LAST).contains(&unix_seconds) {
        return None;
    }
    let days = unix_seconds.div_euclid(86_400);
    let second_of_day = unix_seconds.rem_euclid(86_400);
    let mut out = *b"0000-00-00T00:00:00Z";
    // The date of the last few days written, per thread: an introspection writes five times
    // that fall on two or three days, and the calendar arithmetic is most of the work.
    thread_local! {
        static DATES: [std::cell::Cell<(i64, [u8; 10])>; 4] =
            const { [const { std::cell::Cell::new((i64::MIN, [0; 10])) }; 4] };
    }
    let slot = usize::try_from(days.rem_euclid(4)).unwrap_or(0);
    DATES.with(|dates| {
        let (known, date) = dates[slot].get();
        if known == days {
            out[..10].copy_from_slice(&date);
        } else {
            date_of_day(days, &mut out);
            let mut date = [0; 10];
            date.copy_from_slice(&out[..10]);
            dates[slot].set((days, date));
        }
    });
    pair(second_of_day / 3_600, &mut out[11..]);
    pair(second_of_day / 60 % 60, &mut out[14..]);
    pair(second_of_day % 60, &mut out[17..]);
    Some(out)
}

/// Writes `YYYY-MM-DD` of the day `days` after 1970-01-01 (years 0 to 9999) into `out[..10]`.
fn date_of_day(days: i64, out: &mut [u8; 20]) {
    // The proleptic Gregorian date of a day number by whole 400-year eras (Howard Hinnant's
    // `civil_from_days`): a few integer operations, where the calendar types cost ~600
    // instructions a call, five calls an introspection (BENCHMARKS.md).
    let z = days + 719_468; // days since 0000-03-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Two digits at a time (every part is below 10,000).
    pair(year / 100, &mut out[0..]);
    pair(year, &mut out[2..]);
    pair(month, &mut out[5..]);
    pair(day, &mut out[8..]);
}

/// Two decimal digits of `value % 100` into `out[..2]`, from a table.
fn pair(value: i64, out: &mut [u8]) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let at = usize::try_from(value % 100).unwrap_or(0) * 2;
    out[..2].copy_from_slice(&PAIRS[at..at + 2]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `time`'s own RFC 3339 formatter, the reference the fast path must match.
    fn reference(unix_seconds: i64) -> String {
        OffsetDateTime::from_unix_timestamp(unix_seconds)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    }

    #[test]
    fn rfc3339_matches_the_time_crate_from_year_0_to_9999() {
        let first = -62_167_219_200; // 0000-01-01T00:00:00Z
        let last = 253_402_300_799; // 9999-12-31T23:59:59Z
        for t in [first, first + 86_399, -1, 0, 59, 951_782_400, 1_800_000_000, last] {
            assert_eq!(rfc3339(t), reference(t), "{t}");
        }
        // A walk over the range with a step prime to every calendar period.
        let mut t = first;
        while t <= last {
            assert_eq!(rfc3339(t), reference(t), "{t}");
            t += 7_919_993;
        }
        assert_eq!(rfc3339(1_800_000_000), "2027-01-15T08:00:00Z");
    }

    #[test]
    fn rfc3339_of_days_that_share_a_remembered_slot() {
        // Days four apart share a slot of the per-thread memo of dates: each must be written
        // with its own date, in any order, and again after the other.
        let base = 1_800_000_000;
        for t in [
            base,
            base + 4 * 86_400,
            base,
            base + 86_400,
            base + 8 * 86_400 + 59,
            base + 3_599,
            -86_400,
            -4 * 86_400 - 1,
        ] {
            assert_eq!(rfc3339(t), reference(t), "{t}");
        }
    }

    #[test]
    fn rfc3339_outside_four_digit_years_falls_back() {
        assert_eq!(rfc3339(253_402_300_800), "253402300800");
        assert_eq!(rfc3339(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn the_system_clock_in_seconds_agrees_with_its_calendar_time() {
        let clock = SystemClock;
        let before = clock.now().unix_timestamp();
        let seconds = clock.now_unix();
        let after = clock.now().unix_timestamp();
        assert!(before <= seconds && seconds <= after, "{before} {seconds} {after}");
    }

    #[test]
    fn write_rfc3339_appends_what_rfc3339_returns() {
        for t in [
            -62_167_219_200,
            -1,
            0,
            1_800_000_000,
            253_402_300_799,
            253_402_300_800,
            i64::MIN,
        ] {
            let mut out = b"x".to_vec();
            write_rfc3339(t, &mut out);
            assert_eq!(out, format!("x{}", rfc3339(t)).into_bytes(), "{t}");
        }
    }
}
