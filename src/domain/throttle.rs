//! The second-factor throttle policy: how long an account waits after how many failures.
//!
//! Five consecutive failed codes are free; from the fifth on, every failure locks further
//! attempts for 30 s, doubling with each further failure, capped at 15 minutes. A success resets
//! the count. Pure arithmetic: the service stores the count and the lock end in the database.

/// Failures allowed before the first lock.
pub const FREE_FAILURES: u32 = 5;
/// First lock, in seconds.
pub const BASE_DELAY_SECS: i64 = 30;
/// Longest lock, in seconds (15 minutes).
pub const MAX_DELAY_SECS: i64 = 15 * 60;

/// The lock that follows the `failures`-th consecutive failure, in seconds (0 = no lock).
pub fn lock_after(failures: u32) -> i64 {
    if failures < FREE_FAILURES {
        return 0;
    }
    let doublings = failures - FREE_FAILURES;
    if doublings >= 5 {
        // 30 * 2^5 = 960 s already exceeds the cap; stop before the shift can overflow.
        return MAX_DELAY_SECS;
    }
    (BASE_DELAY_SECS << doublings).min(MAX_DELAY_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_four_failures_are_free_then_delay_doubles_up_to_the_cap() {
        let delays: Vec<i64> = (1..=12).map(lock_after).collect();
        assert_eq!(delays, vec![0, 0, 0, 0, 30, 60, 120, 240, 480, 900, 900, 900]);
        assert_eq!(lock_after(u32::MAX), MAX_DELAY_SECS);
    }
}
