//! Per-client token buckets: `per_minute` requests per minute with bursts of the same size, for
//! the unauthenticated endpoints (register, login, the second login step, the spec and problem
//! pages) and for every authenticated write (POST/DELETE with a session). A client is counted
//! under [`budget_key`]: one IPv4 address or one IPv6 /64.
//!
//! In memory and per instance by design: it blunts floods from one address cheaply; the
//! account-level second-factor throttle, which must hold across instances, lives in the
//! database. Time comes from the service clock so tests can refill buckets without sleeping.
//!
//! Memory is bounded and each request costs O(1) even under address spraying: buckets live in two
//! generations of at most `max_buckets / 2` each. A bucket used in the current generation is
//! kept; when the current generation is full it becomes the previous one and the old previous
//! generation is dropped whole (one deallocation: the entries need no destructor). So the
//! buckets that disappear are those unused for a whole generation, least recently used first.

use super::AppState;
use super::client_addr::{budget_key, client_ip};
use super::extract::peer_ip;
use super::problem::{Problem, ProblemKind};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Buckets kept at most (two generations of half as many): about 5 MiB.
pub const DEFAULT_MAX_BUCKETS: usize = 100_000;

#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    generation_size: usize,
    buckets: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    current: HashMap<IpAddr, Bucket>,
    previous: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: f64,
}

impl RateLimiter {
    /// `per_minute == 0` switches the limiter off.
    pub fn new(per_minute: u32) -> Self {
        Self::with_max_buckets(per_minute, DEFAULT_MAX_BUCKETS)
    }

    /// A limiter that keeps at most `max_buckets` buckets.
    pub fn with_max_buckets(per_minute: u32, max_buckets: usize) -> Self {
        Self {
            per_minute,
            generation_size: (max_buckets / 2).max(1),
            buckets: Mutex::new(Generations::default()),
        }
    }

    /// Takes one token for the client at `ip` at time `now` (seconds, fractional).
    /// `Err(seconds)` says how long until the next token.
    pub fn check(&self, ip: IpAddr, now: f64) -> Result<(), i64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let key = budget_key(ip);
        let capacity = f64::from(self.per_minute);
        let refill_per_sec = capacity / 60.0;
        let mut generations = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let known = match generations.current.get(&key) {
            Some(bucket) => Some(*bucket),
            None => generations.previous.remove(&key),
        };
        let mut bucket = known.unwrap_or(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = (now - bucket.updated).max(0.0);
        bucket.tokens = (bucket.tokens + elapsed * refill_per_sec).min(capacity);
        bucket.updated = now;
        let outcome = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - bucket.tokens) / refill_per_sec).ceil();
            Err((wait as i64).max(1))
        };
        if !generations.current.contains_key(&key) && generations.current.len() >= self.generation_size {
            let fresh = HashMap::with_capacity(self.generation_size);
            generations.previous = std::mem::replace(&mut generations.current, fresh);
        }
        generations.current.insert(key, bucket);
        outcome
    }
}

/// One token of the client's bucket, or a 429 problem with `Retry-After`.
pub fn take_token(parts: &Parts, state: &AppState) -> Result<(), Problem> {
    let Some(ip) = client_ip(&parts.headers, peer_ip(parts), &state.http.trusted_proxies) else {
        return Ok(());
    };
    let now = state.service.clock().now().unix_timestamp_nanos() as f64 / 1e9;
    state.limiter.check(ip, now).map_err(|retry_after| Problem {
        retry_after: Some(retry_after),
        ..Problem::new(
            ProblemKind::RateLimited,
            format!("Too many requests from this address; try again in {retry_after} seconds."),
        )
    })
}

/// Guard of the unauthenticated endpoints: one token of the client's bucket, or 429. Declared
/// first among a handler's extractors, so a refused request costs no body parsing.
/// (Authenticated writes are charged by the `Auth` extractor.)
pub struct IpRateLimit;

impl FromRequestParts<AppState> for IpRateLimit {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        take_token(parts, state).map(|()| IpRateLimit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_full_bucket_allows_a_burst_then_refills_over_time() {
        let limiter = RateLimiter::new(30);
        let client = ip("192.0.2.1");
        for _ in 0..30 {
            assert!(limiter.check(client, 100.0).is_ok());
        }
        assert_eq!(limiter.check(client, 100.0), Err(2));
        assert!(limiter.check(ip("192.0.2.2"), 100.0).is_ok());
        assert!(limiter.check(client, 102.0).is_ok());
        assert!(limiter.check(client, 102.0).is_err());
    }

    #[test]
    fn zero_switches_it_off() {
        let limiter = RateLimiter::new(0);
        assert!((0..1000).all(|_| limiter.check(ip("192.0.2.1"), 0.0).is_ok()));
    }

    #[test]
    fn one_ipv6_64_and_an_ipv4_mapped_address_are_one_client_each() {
        let limiter = RateLimiter::new(1);
        assert!(limiter.check(ip("2001:db8:0:1::1"), 0.0).is_ok());
        assert!(limiter.check(ip("2001:db8:0:1:ffff::2"), 0.0).is_err());
        assert!(limiter.check(ip("2001:db8:0:2::1"), 0.0).is_ok());
        assert!(limiter.check(ip("192.0.2.1"), 0.0).is_ok());
        assert!(limiter.check(ip("::ffff:192.0.2.1"), 0.0).is_err());
    }

    #[test]
    fn address_spraying_keeps_memory_bounded_and_active_clients_counted() {
        let limiter = RateLimiter::with_max_buckets(2, 1_000);
        let busy = ip("198.51.100.1");
        assert!(limiter.check(busy, 0.0).is_ok());
        assert!(limiter.check(busy, 0.0).is_ok());
        for n in 0..100_000u32 {
            let sprayed = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            let _ = limiter.check(sprayed, 0.0);
            if n % 100 == 0 {
                // A client that keeps asking keeps its (empty) bucket through every eviction.
                assert!(limiter.check(busy, 0.0).is_err(), "after {n} sprayed addresses");
            }
            let generations = limiter.buckets.lock().unwrap();
            assert!(generations.current.len() + generations.previous.len() <= 1_000);
        }
    }
}
