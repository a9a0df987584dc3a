//! The current time, behind a trait so tests can move it explicitly instead of sleeping.
//!
//! Nothing else in the crate reads the system clock: the domain takes time as a parameter and
//! the service asks its [`Clock`].

use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};

/// Source of "now" for the service layer.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
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
    let Ok(t) = OffsetDateTime::from_unix_timestamp(unix_seconds) else {
        return unix_seconds.to_string();
    };
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| unix_seconds.to_string());
    }
    let (hour, minute, second) = t.to_hms();
    // Every part is below 10,000, so each digit fits a byte.
    let digits = |value: u32, width: usize, out: &mut [u8]| {
        let mut value = value;
        for slot in out[..width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    let mut out = *b"0000-00-00T00:00:00Z";
    digits(year as u32, 4, &mut out[0..]);
    digits(u32::from(u8::from(t.month())), 2, &mut out[5..]);
    digits(u32::from(t.day()), 2, &mut out[8..]);
    digits(u32::from(hour), 2, &mut out[11..]);
    digits(u32::from(minute), 2, &mut out[14..]);
    digits(u32::from(second), 2, &mut out[17..]);
    out.iter().map(|&b| char::from(b)).collect()
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
    fn rfc3339_outside_four_digit_years_falls_back() {
        assert_eq!(rfc3339(253_402_300_800), "253402300800");
        assert_eq!(rfc3339(i64::MAX), i64::MAX.to_string());
    }
}
