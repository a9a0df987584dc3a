//! Failed logins take the same time whether the email exists or not. Its own test binary, so no
//! other test of the suite competes for the CPU while it measures.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[tokio::test]
async fn unknown_email_and_wrong_password_take_the_same_time() {
    let app = spawn_app().await;
    app.register("timing@example.com").await;
    let mut unknown = Vec::new();
    let mut wrong = Vec::new();
    // Warm-up, then interleaved samples so drift affects both alike.
    app.login("nobody@example.com", "warm up password").await;
    for i in 0..25 {
        let started = Instant::now();
        let reply = app.login(&format!("nobody{i}@example.com"), "wrong password!").await;
        unknown.push(started.elapsed());
        assert_eq!(reply.status, 401);
        let started = Instant::now();
        let reply = app.login("timing@example.com", "wrong password!").await;
        wrong.push(started.elapsed());
        assert_eq!(reply.status, 401);
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let (u, w) = (median(unknown), median(wrong));
    let ratio = u.max(w) / u.min(w);
    assert!(
        ratio <= 1.25,
        "medians differ too much: unknown {u:.4}s, wrong password {w:.4}s (ratio {ratio:.2})"
    );
}
