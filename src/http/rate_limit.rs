//! Per-client-address token buckets for the unauthenticated endpoints (register, login, the
//! second login step): `per_minute` requests per minute with bursts of the same size.
//!
//! In memory and per instance by design: it blunts floods from one address cheaply; the
//! account-level second-factor throttle, which must hold across instances, lives in the
//! database. Time comes from the service clock so tests can refill buckets without sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Buckets kept before full ones are swept, bounding memory under address-spraying floods.
const SWEEP_THRESHOLD: usize = 10_000;

#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: f64,
}

impl RateLimiter {
    /// `per_minute == 0` switches the limiter off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip` at time `now` (seconds, fractional). `Err(seconds)` says how
    /// long until the next token.
    pub fn check(&self, ip: IpAddr, now: f64) -> Result<(), i64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let refill_per_sec = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= SWEEP_THRESHOLD {
            buckets.retain(|_, b| b.tokens + (now - b.updated) * refill_per_sec < capacity);
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = (now - bucket.updated).max(0.0);
        bucket.tokens = (bucket.tokens + elapsed * refill_per_sec).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - bucket.tokens) / refill_per_sec).ceil();
            Err((wait as i64).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_a_burst_then_refills_over_time() {
        let limiter = RateLimiter::new(30);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..30 {
            assert!(limiter.check(ip, 100.0).is_ok());
        }
        assert_eq!(limiter.check(ip, 100.0), Err(2));
        assert!(limiter.check("192.0.2.2".parse().unwrap(), 100.0).is_ok());
        assert!(limiter.check(ip, 102.0).is_ok());
        assert!(limiter.check(ip, 102.0).is_err());
    }

    #[test]
    fn zero_switches_it_off() {
        let limiter = RateLimiter::new(0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..1000).all(|_| limiter.check(ip, 0.0).is_ok()));
    }
}
