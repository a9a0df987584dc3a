//! The throttle policies: how long an account waits after how many consecutive failures.
//!
//! Second factor: from the fifth consecutive failed code on, every failure locks further
//! attempts for 30 s, doubling with each further failure, capped at 15 minutes; after the 50th
//! TOTP codes are suspended (NIST SP 800-63B allows at most 100). Password: the same from the
//! tenth consecutive wrong password on. A success resets a count. Pure arithmetic: the service
//! stores counts and lock ends in the database.

/// Failed codes allowed before the first lock.
pub const FREE_FAILURES: u32 = 5;
/// Wrong passwords allowed before the password step locks.
pub const FREE_PASSWORD_FAILURES: u32 = 10;
/// Consecutive failed codes after which TOTP codes are suspended.
pub const TOTP_SUSPEND_AFTER: u32 = 50;
/// First lock, in seconds.
pub const BASE_DELAY_SECS: i64 = 30;
/// Longest lock, in seconds (15 minutes).
pub const MAX_DELAY_SECS: i64 = 15 * 60;

/// The lock that follows the `failures`-th consecutive failed code, in seconds (0 = no lock).
pub fn lock_after(failures: u32) -> i64 {
    lock_after_free(failures, FREE_FAILURES)
}

/// The lock that follows the `failures`-th consecutive wrong password, in seconds.
pub fn password_lock_after(failures: u32) -> i64 {
    lock_after_free(failures, FREE_PASSWORD_FAILURES)
}

fn lock_after_free(failures: u32, free: u32) -> i64 {
    if failures < free {
        return 0;
    }
    let doublings = failures - free;
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

    #[test]
    fn nine_wrong_passwords_are_free_then_the_same_doubling() {
        let delays: Vec<i64> = (8..=16).map(password_lock_after).collect();
        assert_eq!(delays, vec![0, 0, 30, 60, 120, 240, 480, 900, 900]);
    }
}
