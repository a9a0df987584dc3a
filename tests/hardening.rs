//! The guards one level around the second factor: password guessing bounded per account (and
//! the same for unknown emails), a hard cap on failed codes, no check-then-act race between a
//! request's checks and its commit (driven deterministically with the service's checkpoint),
//! a re-authentication budget, and stored times from the future distrusted.

mod common;

use common::*;
use serde_json::json;

fn retry_after(reply: &Reply) -> i64 {
    reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After")
}

// ---------------------------------------------------------------- password throttle

#[tokio::test]
async fn ten_wrong_passwords_lock_the_password_step_even_for_the_right_one() {
    let app = spawn_app().await;
    assert_eq!(app.register("pat@example.com").await.status, 201);
    for _ in 0..10 {
        app.login("pat@example.com", "wrong password!")
            .await
            .assert_problem(401, "/problems/invalid-credentials");
    }
    let locked = app.login("pat@example.com", PASSWORD).await;
    locked.assert_problem(429, "/problems/too-many-attempts");
    assert_eq!(retry_after(&locked), 30);
    assert_eq!(locked.body["retry_after"], 30);
    app.clock.advance(time::Duration::seconds(30));
    // The 11th failure doubles the lock; a right password after it resets everything.
    app.login("pat@example.com", "wrong password!")
        .await
        .assert_problem(401, "/problems/invalid-credentials");
    assert_eq!(retry_after(&app.login("pat@example.com", PASSWORD).await), 60);
    app.clock.advance(time::Duration::seconds(60));
    assert_eq!(app.login("pat@example.com", PASSWORD).await.status, 200);
    assert_eq!(
        app.count("SELECT password_failures FROM users").await,
        0,
        "a success resets the count"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM security_events WHERE kind = 'password_lockout'")
            .await,
        2
    );
}

/// The statuses, problem types, texts and delays an attacker sees, email by email.
async fn lock_sequence(app: &TestApp, email: &str) -> Vec<(u16, String, String, Option<String>)> {
    let mut seen = Vec::new();
    for _ in 0..12 {
        let reply = app.login(email, "wrong password!").await;
        seen.push((
            reply.status,
            reply.body["type"].to_string(),
            reply.body["detail"].to_string(),
            reply.header("retry-after").map(str::to_owned),
        ));
    }
    seen
}

#[tokio::test]
async fn an_unknown_email_locks_exactly_like_a_known_one() {
    let app = spawn_app().await;
    assert_eq!(app.register("known@example.com").await.status, 201);
    let known = lock_sequence(&app, "known@example.com").await;
    let unknown = lock_sequence(&app, "nobody-here@example.com").await;
    assert_eq!(known, unknown);
    assert_eq!(known.iter().filter(|s| s.0 == 401).count(), 10, "{known:?}");
    assert_eq!(known.iter().filter(|s| s.0 == 429).count(), 2);
}

#[tokio::test]
async fn a_stranger_elsewhere_cannot_lock_the_owner_out_of_their_own_network() {
    let app = spawn_with(Options {
        configure: Box::new(|config| config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()]),
        ..Options::default()
    })
    .await;
    assert_eq!(app.register("owner@example.com").await.status, 201);
    let from = |ip: &str| {
        app.client
            .post(app.url("/api/auth/login"))
            .header("x-forwarded-for", ip)
    };
    // The owner signs in from home once; the network is remembered.
    let home = app
        .send(from("198.51.100.7").json(&json!({"email": "owner@example.com", "password": PASSWORD})))
        .await;
    assert_eq!(home.status, 200, "{}", home.text);
    for _ in 0..10 {
        let guess = app
            .send(from("203.0.113.9").json(&json!({"email": "owner@example.com", "password": "guess guess"})))
            .await;
        assert_eq!(guess.status, 401);
    }
    let stranger = app
        .send(from("203.0.113.9").json(&json!({"email": "owner@example.com", "password": PASSWORD})))
        .await;
    stranger.assert_problem(429, "/problems/too-many-attempts");
    // Another address of the owner's /24 gets through, and its success ends the lock.
    let owner = app
        .send(from("198.51.100.200").json(&json!({"email": "owner@example.com", "password": PASSWORD})))
        .await;
    assert_eq!(owner.status, 200, "{}", owner.text);
    let after = app
        .send(from("203.0.113.9").json(&json!({"email": "owner@example.com", "password": PASSWORD})))
        .await;
    assert_eq!(after.status, 200);
}

// ---------------------------------------------------------------- hard cap on codes

#[tokio::test]
async fn fifty_failed_codes_suspend_totp_until_a_backup_code_login() {
    let app = spawn_app().await;
    let token = app.user_with_session("sus@example.com").await;
    let (secret, codes) = app.enable_mfa(&token).await;
    for attempt in 1..=50 {
        if attempt > 5 {
            app.clock.advance(time::Duration::seconds(900));
        }
        let challenge = app.mfa_token("sus@example.com").await;
        let wrong = wrong_code(&secret, app.now());
        app.login_mfa(&challenge, &wrong)
            .await
            .assert_problem(401, "/problems/invalid-second-factor");
    }
    assert_eq!(
        app.count("SELECT COUNT(*) FROM security_events WHERE kind = 'mfa_totp_suspended'")
            .await,
        1
    );
    app.clock.advance(time::Duration::seconds(900));
    let challenge = app.mfa_token("sus@example.com").await;
    let right = totp_code(&secret, app.now());
    app.login_mfa(&challenge, &right)
        .await
        .assert_problem(403, "/problems/totp-suspended");
    // Refused before counting: the lock did not grow, and a backup code still works.
    assert_eq!(app.count("SELECT mfa_failures FROM users").await, 50);
    assert_eq!(app.login_mfa(&challenge, &codes[0]).await.status, 200);
    app.next_step();
    let challenge = app.mfa_token("sus@example.com").await;
    assert_eq!(
        app.login_mfa(&challenge, &totp_code(&secret, app.now())).await.status,
        200,
        "the backup-code login lifted the suspension"
    );
}

// ---------------------------------------------------------------- check-then-act races

#[tokio::test]
async fn a_login_checked_before_a_password_change_gets_no_session() {
    let app = spawn_app().await;
    let owner = app.user_with_session("race@example.com").await;
    let held = app.hold_at("login");
    let login = tokio::spawn({
        let request = app
            .client
            .post(app.url("/api/auth/login"))
            .json(&json!({"email": "race@example.com", "password": PASSWORD}));
        async move { reply_to(request).await }
    });
    held.reached.await.unwrap();
    // The old password was verified; now the owner changes it.
    let changed = app
        .post(
            "/api/user/profile/password",
            Some(&owner),
            json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"}),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    held.release.send(()).unwrap();
    login
        .await
        .unwrap()
        .assert_problem(401, "/problems/invalid-credentials");
    assert_eq!(app.count("SELECT COUNT(*) FROM sessions").await, 1, "only the owner's");
}

#[tokio::test]
async fn a_login_checked_before_mfa_is_enabled_gets_no_one_factor_session() {
    let app = spawn_app().await;
    let owner = app.user_with_session("race2@example.com").await;
    let held = app.hold_at("login");
    let login = tokio::spawn({
        let request = app
            .client
            .post(app.url("/api/auth/login"))
            .json(&json!({"email": "race2@example.com", "password": PASSWORD}));
        async move { reply_to(request).await }
    });
    held.reached.await.unwrap();
    app.service.set_checkpoint(None);
    app.enable_mfa(&owner).await;
    held.release.send(()).unwrap();
    login
        .await
        .unwrap()
        .assert_problem(401, "/problems/invalid-credentials");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM sessions WHERE NOT mfa").await,
        1,
        "only the owner's"
    );
}

#[tokio::test]
async fn a_right_code_checked_before_a_lock_is_refused_and_consumes_nothing() {
    let app = spawn_app().await;
    let token = app.user_with_session("late@example.com").await;
    let (secret, _) = app.enable_mfa(&token).await;
    app.next_step();
    let challenge = app.mfa_token("late@example.com").await;
    let step_before = app.count("SELECT mfa_last_step FROM users").await;
    let sessions_before = app.count("SELECT COUNT(*) FROM sessions").await;
    let held = app.hold_at("second_factor");
    let right = tokio::spawn({
        let request = app
            .client
            .post(app.url("/api/auth/login/mfa"))
            .json(&json!({"mfa_token": challenge, "code": totp_code(&secret, app.now())}));
        async move { reply_to(request).await }
    });
    held.reached.await.unwrap();
    // The code was found right; before it commits, five wrong guesses lock the account.
    let other = app.mfa_token("late@example.com").await;
    for _ in 0..5 {
        app.login_mfa(&other, &wrong_code(&secret, app.now()))
            .await
            .assert_problem(401, "/problems/invalid-second-factor");
    }
    held.release.send(()).unwrap();
    let locked = right.await.unwrap();
    locked.assert_problem(429, "/problems/too-many-attempts");
    assert_eq!(locked.header("retry-after"), Some("30"));
    assert_eq!(app.count("SELECT COUNT(*) FROM sessions").await, sessions_before);
    assert_eq!(app.count("SELECT mfa_last_step FROM users").await, step_before);
    assert_eq!(
        app.count("SELECT mfa_failures FROM users").await,
        5,
        "the refusal is not counted"
    );
    // Its mfa_token was not used: after the lock, a right code still completes the login.
    app.clock.advance(time::Duration::seconds(30));
    let code = totp_code(&secret, app.now());
    assert_eq!(app.login_mfa(&challenge, &code).await.status, 200);
    assert_eq!(app.count("SELECT mfa_failures FROM users").await, 0);
}

#[tokio::test]
async fn a_password_change_through_a_session_ended_meanwhile_changes_nothing() {
    let app = spawn_app().await;
    let token = app.user_with_session("gone@example.com").await;
    let held = app.hold_at("change_password");
    let change = tokio::spawn({
        let request = app
            .client
            .post(app.url("/api/user/profile/password"))
            .bearer_auth(&token)
            .json(&json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"}));
        async move { reply_to(request).await }
    });
    held.reached.await.unwrap();
    assert_eq!(app.post("/api/auth/logout", Some(&token), json!({})).await.status, 204);
    held.release.send(()).unwrap();
    change.await.unwrap().assert_problem(401, "/problems/unauthenticated");
    assert_eq!(
        app.login("gone@example.com", PASSWORD).await.status,
        200,
        "the old password stands"
    );
}

#[tokio::test]
async fn a_regeneration_through_a_session_ended_meanwhile_keeps_the_old_codes() {
    let app = spawn_app().await;
    let token = app.user_with_session("regen@example.com").await;
    let (secret, codes) = app.enable_mfa(&token).await;
    app.next_step();
    let held = app.hold_at("regenerate_backup_codes");
    let regenerate = tokio::spawn({
        let request = app
            .client
            .post(app.url("/api/user/profile/mfa/backup-codes"))
            .bearer_auth(&token)
            .json(&json!({"password": PASSWORD, "code": totp_code(&secret, app.now())}));
        async move { reply_to(request).await }
    });
    held.reached.await.unwrap();
    assert_eq!(app.post("/api/auth/logout", Some(&token), json!({})).await.status, 204);
    held.release.send(()).unwrap();
    regenerate
        .await
        .unwrap()
        .assert_problem(401, "/problems/unauthenticated");
    let challenge = app.mfa_token("regen@example.com").await;
    assert_eq!(
        app.login_mfa(&challenge, &codes[0]).await.status,
        200,
        "old codes still work"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM backup_codes").await, 9);
}

#[tokio::test]
async fn a_disable_through_a_session_ended_meanwhile_keeps_mfa_on() {
    let app = spawn_app().await;
    let token = app.user_with_session("keepmfa@example.com").await;
    let (_, codes) = app.enable_mfa(&token).await;
    let held = app.hold_at("mfa_disable");
    let disable = tokio::spawn({
        let request = app
            .client
            .post(app.url("/api/user/profile/mfa/disable"))
            .bearer_auth(&token)
            .json(&json!({"password": PASSWORD, "code": codes[0]}));
        async move { reply_to(request).await }
    });
    held.reached.await.unwrap();
    assert_eq!(app.post("/api/auth/logout", Some(&token), json!({})).await.status, 204);
    held.release.send(()).unwrap();
    disable.await.unwrap().assert_problem(401, "/problems/unauthenticated");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM users WHERE mfa_enabled_at IS NOT NULL")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM backup_codes").await,
        10,
        "the code was not used"
    );
}

// ---------------------------------------------------------------- re-authentication budget

#[tokio::test]
async fn re_authentication_is_limited_per_account_and_success_does_not_refill_it() {
    let app = spawn_app().await;
    let token = app.user_with_session("busy@example.com").await;
    let setup = || {
        app.post(
            "/api/user/profile/mfa/setup",
            Some(&token),
            json!({"password": PASSWORD}),
        )
    };
    for _ in 0..10 {
        assert_eq!(setup().await.status, 200);
    }
    let refused = setup().await;
    refused.assert_problem(429, "/problems/too-many-attempts");
    assert_eq!(retry_after(&refused), 60);
    // The same budget covers the password change.
    let change = app
        .post(
            "/api/user/profile/password",
            Some(&token),
            json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"}),
        )
        .await;
    assert_eq!(change.status, 429);
    app.clock.advance(time::Duration::seconds(60));
    assert_eq!(setup().await.status, 200);
}

// ---------------------------------------------------------------- time that jumps

#[tokio::test]
async fn a_session_seen_later_than_now_is_refused_after_the_clock_goes_back() {
    let app = spawn_app().await;
    let token = app.user_with_session("clock@example.com").await;
    app.clock.advance(time::Duration::minutes(10));
    assert_eq!(app.get("/api/auth/session", Some(&token)).await.status, 200);
    // Back by an hour: the session was last seen 70 minutes "in the future".
    app.clock.advance(time::Duration::minutes(-70));
    app.get("/api/auth/session", Some(&token))
        .await
        .assert_problem(401, "/problems/unauthenticated");
    // Within the tolerated skew between instances (two minutes) nothing changes.
    let fresh = app.session_for("clock@example.com").await;
    app.clock.advance(time::Duration::seconds(-90));
    assert_eq!(app.get("/api/auth/session", Some(&fresh)).await.status, 200);
}

#[tokio::test]
async fn a_lock_longer_than_the_maximum_is_not_honoured() {
    let app = spawn_app().await;
    let token = app.user_with_session("jump@example.com").await;
    let (secret, _) = app.enable_mfa(&token).await;
    let challenge = app.mfa_token("jump@example.com").await;
    for _ in 0..5 {
        app.login_mfa(&challenge, &wrong_code(&secret, app.now())).await;
    }
    assert_eq!(
        app.login_mfa(&challenge, &wrong_code(&secret, app.now())).await.status,
        429
    );
    // The clock goes back two hours: the stored lock now ends 2 h 30 s away, longer than any
    // lock can be. It is not trusted: the attempt is evaluated (and counted).
    app.clock.advance(time::Duration::hours(-2));
    let challenge = app.mfa_token("jump@example.com").await;
    app.login_mfa(&challenge, &wrong_code(&secret, app.now()))
        .await
        .assert_problem(401, "/problems/invalid-second-factor");
    assert_eq!(app.count("SELECT mfa_failures FROM users").await, 6);
}
