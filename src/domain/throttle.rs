//! The throttle policies: how long an account waits after how many consecutive failures.
//!
//! Second factor: the first four consecutive failed codes cost nothing; the fifth locks further
//! attempts for 30 s from that failure, and every further failure locks again for twice the
//! previous lock (60 s, 120 s, ...), capped at 15 minutes. The 50th consecutive failure also
//! suspends TOTP codes (backup codes keep working; NIST SP 800-63B allows at most 100 failures).
//! Password: the same doubling from the tenth consecutive wrong password on (nine are free).
//! A success resets a count. Pure arithmetic: the service counts (before checking) and stores
//! counts and lock ends in the database.

/// The consecutive failed code that causes the first lock (the four before it are free).
pub const FREE_FAILURES: u32 = 5;
/// The consecutive wrong password that causes the first lock of the password step (the nine
/// before it are free).
pub const FREE_PASSWORD_FAILURES: u32 = 10;
/// The consecutive failed code that suspends TOTP codes.
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
