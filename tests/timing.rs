//! Failures that must not tell their causes apart take the same time: a failed login whether
//! the email exists or not, and a refused code regeneration whether the password or the backup
//! code was wrong. Its own test binary, so no other test of the suite competes for the CPU
//! while it measures.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// The measurements take turns: two at once would compete for the two cores.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn unknown_email_and_wrong_password_take_the_same_time() {
    let _alone = ALONE.lock().await;
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
        // Past any password lock, so that every attempt is evaluated (and counted) like the
        // unknown email's.
        app.clock.advance(time::Duration::seconds(901));
        let started = Instant::now();
        let reply = app.login("timing@example.com", "wrong password!").await;
        wrong.push(started.elapsed());
        assert_eq!(reply.status, 401);
    }
    let (u, w) = (median(unknown), median(wrong));
    let ratio = u.max(w) / u.min(w);
    assert!(
        ratio <= 1.25,
        "medians differ too much: unknown {u:.4}s, wrong password {w:.4}s (ratio {ratio:.2})"
    );
}

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64()
}

/// A right password with a wrong backup code must not cost the ten hashes of a fresh set:
/// the code is checked before anything is generated.
#[tokio::test]
async fn a_wrong_password_and_a_wrong_backup_code_take_the_same_time_in_regeneration() {
    let _alone = ALONE.lock().await;
    let app = spawn_app().await;
    let token = app.user_with_session("regen-timing@example.com").await;
    app.enable_mfa(&token).await;
    let regenerate = |password: &'static str| {
        app.post(
            "/api/user/profile/mfa/backup-codes",
            Some(&token),
            serde_json::json!({"password": password, "code": "abcd-efgh-jkmnp"}),
        )
    };
    let mut wrong_password = Vec::new();
    let mut wrong_code = Vec::new();
    regenerate("warm up password").await;
    for _ in 0..15 {
        // Past the code throttle's lock and the re-authentication budget's minute.
        app.clock.advance(time::Duration::seconds(901));
        let started = Instant::now();
        let reply = regenerate("wrong password!").await;
        wrong_password.push(started.elapsed());
        assert_eq!(reply.status, 400, "{}", reply.text);
        app.clock.advance(time::Duration::seconds(901));
        let started = Instant::now();
        let reply = regenerate(PASSWORD).await;
        wrong_code.push(started.elapsed());
        assert_eq!(reply.status, 400, "{}", reply.text);
    }
    let (p, c) = (median(wrong_password), median(wrong_code));
    let ratio = p.max(c) / p.min(c);
    assert!(
        ratio <= 1.5,
        "medians differ too much: wrong password {p:.4}s, wrong code {c:.4}s (ratio {ratio:.2})"
    );
}
