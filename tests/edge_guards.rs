//! Hardening over a real socket: what clients and intermediaries may keep (cache and content
//! headers), where events may go (no webhook redirects), the files of the data directory, the
//! passwords a user may choose, client addresses behind proxies, per-address budgets and
//! connection limits.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

// ---------------------------------------------------------------- headers

const CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

#[tokio::test]
async fn api_responses_are_never_cached_or_sniffed() {
    let app = spawn_app().await;
    let token = app.user_with_session("cache@example.com").await;
    let replies = [
        app.login("cache@example.com", PASSWORD).await,
        app.get("/api/auth/session", Some(&token)).await,
        app.get("/api/auth/session", None).await,
        app.get("/api/no-such-route", None).await,
        app.get("/api/openapi.json", None).await,
        app.post(
            "/api/user/profile/mfa/setup",
            Some(&token),
            json!({"password": PASSWORD}),
        )
        .await,
    ];
    for reply in &replies {
        assert_eq!(reply.header("cache-control"), Some("no-store"), "{}", reply.text);
        assert_eq!(
            reply.header("x-content-type-options"),
            Some("nosniff"),
            "{}",
            reply.text
        );
    }
    assert_eq!(replies[5].status, 200, "the setup answer carries the TOTP secret");
    assert_eq!(
        app.get("/healthz", None).await.header("x-content-type-options"),
        Some("nosniff")
    );
}

#[tokio::test]
async fn problems_and_the_spec_may_load_nothing_and_be_framed_by_no_one() {
    let app = spawn_app().await;
    let problem = app.get("/api/auth/session", None).await;
    problem.assert_problem(401, "/problems/unauthenticated");
    let outside_api = app.get("/nowhere", None).await;
    outside_api.assert_problem(404, "about:blank");
    for reply in [
        problem,
        outside_api,
        app.get("/problems/rate-limited", None).await,
        app.get("/api/openapi.json", None).await,
    ] {
        assert_eq!(reply.header("content-security-policy"), Some(CSP), "{}", reply.text);
    }
    assert_eq!(app.get("/healthz", None).await.header("content-security-policy"), None);
}

// ---------------------------------------------------------------- webhook

#[tokio::test]
async fn the_webhook_follows_no_redirect() {
    let redirected = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicUsize::new(0));
    let hook = {
        let attempts = attempts.clone();
        let redirected = redirected.clone();
        axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(move || async move {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    (StatusCode::TEMPORARY_REDIRECT, [("location", "/elsewhere")])
                }),
            )
            .route(
                "/elsewhere",
                axum::routing::post(move || async move {
                    redirected.fetch_add(1, Ordering::SeqCst);
                    StatusCode::NO_CONTENT
                }),
            )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, hook).await });
    let app = spawn_with(Options {
        configure: Box::new(move |c| {
            let mut webhook = tessera::webhook::WebhookConfig::new(
                &format!("http://{hook_addr}/hook"),
                Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()),
            )
            .unwrap();
            webhook.base_backoff = Duration::from_millis(20);
            webhook.max_backoff = Duration::from_millis(20);
            webhook.poll_interval = Duration::from_millis(20);
            c.webhook = Some(webhook);
        }),
        ..Options::default()
    })
    .await;
    assert_eq!(app.register("redirect@example.com").await.status, 201);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while attempts.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Retries are timed by the service's clock.
        app.clock.advance(time::Duration::seconds(1));
    }
    assert!(
        attempts.load(Ordering::SeqCst) >= 3,
        "a redirect is a failed delivery, retried at the configured URL"
    );
    assert_eq!(redirected.load(Ordering::SeqCst), 0, "the redirect was never followed");
}

// ---------------------------------------------------------------- per-address budgets

#[tokio::test]
async fn authenticated_writes_count_against_the_per_address_budget() {
    let app = spawn_with(Options {
        configure: Box::new(|c| c.ip_rate_limit_per_minute = 3),
        ..Options::default()
    })
    .await;
    // Two tokens: registration and login.
    let token = app.user_with_session("writer@example.com").await;
    let setup = app
        .post(
            "/api/user/profile/mfa/setup",
            Some(&token),
            json!({"password": PASSWORD}),
        )
        .await;
    assert_eq!(setup.status, 200, "{}", setup.text);
    let logout = app.post("/api/auth/logout", Some(&token), json!({})).await;
    logout.assert_problem(429, "/problems/rate-limited");
    assert!(logout.header("retry-after").is_some());
    for _ in 0..5 {
        assert_eq!(
            app.get("/api/auth/session", Some(&token)).await.status,
            200,
            "reads stay free"
        );
    }
    app.clock.advance(time::Duration::seconds(20));
    assert_eq!(app.post("/api/auth/logout", Some(&token), json!({})).await.status, 204);
}

/// A login attempt that claims to come through a proxy from `forwarded_for`.
async fn login_via_proxy(app: &TestApp, forwarded_for: &str) -> Reply {
    app.send(
        app.client
            .post(app.url("/api/auth/login"))
            .header("x-forwarded-for", forwarded_for)
            .json(&json!({"email": "nobody@example.com", "password": "wrong password"})),
    )
    .await
}

#[tokio::test]
async fn clients_behind_a_trusted_proxy_range_are_counted_per_address_and_ipv6_64() {
    let app = spawn_with(Options {
        configure: Box::new(|c| {
            c.ip_rate_limit_per_minute = 1;
            c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        }),
        ..Options::default()
    })
    .await;
    assert_eq!(login_via_proxy(&app, "2001:db8:1:2::1").await.status, 401);
    login_via_proxy(&app, "2001:db8:1:2:ffff::9")
        .await
        .assert_problem(429, "/problems/rate-limited");
    assert_eq!(
        login_via_proxy(&app, "2001:db8:1:3::1").await.status,
        401,
        "another /64"
    );
    // Garbage a client put in front of its address does not hide the address.
    assert_eq!(login_via_proxy(&app, "garbage, 203.0.113.5").await.status, 401);
    login_via_proxy(&app, "203.0.113.5")
        .await
        .assert_problem(429, "/problems/rate-limited");
    login_via_proxy(&app, "::ffff:203.0.113.5")
        .await
        .assert_problem(429, "/problems/rate-limited");
    let db = app.db().await;
    let ips = db
        .texts("SELECT ip FROM security_events WHERE kind = 'login_failed_unknown_account' ORDER BY id")
        .await;
    db.close().await;
    assert_eq!(ips, ["2001:db8:1:2::1", "2001:db8:1:3::1", "203.0.113.5"]);
}

// ---------------------------------------------------------------- connections

/// A connection from `source` (any address of 127.0.0.0/8) to the app.
async fn connect_from(source: &str, app: &TestApp) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(app.addr).await.unwrap()
}

/// Sends one `GET /healthz` and returns the first bytes of the answer ("" when closed unanswered).
async fn health_over(mut stream: tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let mut buf = vec![0u8; 64];
    match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Ok(Err(_)) => String::new(),
        Err(_) => panic!("neither answered nor closed"),
    }
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let app = spawn_with(Options {
        configure: Box::new(|c| c.connections.max_connections_per_ip = 3),
        ..Options::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect_from("127.0.0.1", &app).await);
    }
    let refused = health_over(connect_from("127.0.0.1", &app).await).await;
    assert_eq!(refused, "", "the fourth connection of one address is closed unanswered");
    let other = health_over(connect_from("127.0.0.2", &app).await).await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    idle.pop();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let again = health_over(connect_from("127.0.0.1", &app).await).await;
        if again.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed connection frees its slot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_after_the_body_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_with(Options {
        configure: Box::new(|c| c.body_read_timeout = Duration::from_millis(300)),
        ..Options::default()
    })
    .await;
    let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            b"POST /api/auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..99 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if writer.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(4), reader.read_to_end(&mut answer)).await;
    trickle.abort();
    assert!(read.is_ok(), "answered and closed well before the 30 s request timeout");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("/problems/body-read-timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

// ---------------------------------------------------------------- passwords and emails

#[tokio::test]
async fn known_bad_passwords_are_refused_wherever_a_password_is_chosen() {
    let app = spawn_app().await;
    let register = |email: &'static str, password: &'static str| {
        app.post(
            "/api/auth/register",
            None,
            json!({"email": email, "password": password}),
        )
    };
    let common = register("carla@example.com", "IloveYou").await;
    common.assert_problem(400, "/problems/validation-error");
    assert!(
        common.body["details"]["password"]
            .as_str()
            .unwrap()
            .contains("too common"),
        "{}",
        common.text
    );
    let named = register("carla@example.com", "Carla-from-accounting").await;
    named.assert_problem(400, "/problems/validation-error");
    assert!(
        named.body["details"]["password"].as_str().unwrap().contains("email"),
        "{}",
        named.text
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);

    let token = app.user_with_session("carla@example.com").await;
    for (new_password, reason) in [("baseball1", "too common"), ("my carla password", "email")] {
        let change = app
            .post(
                "/api/user/profile/password",
                Some(&token),
                json!({"current_password": PASSWORD, "new_password": new_password}),
            )
            .await;
        change.assert_problem(400, "/problems/validation-error");
        let detail = change.body["details"]["new_password"].as_str().unwrap_or_default();
        assert!(detail.contains(reason), "{}", change.text);
    }
    assert_eq!(app.login("carla@example.com", PASSWORD).await.status, 200, "unchanged");
}

#[tokio::test]
async fn emails_are_nfc_normalised_before_they_are_compared() {
    let app = spawn_app().await;
    let decomposed = "Jose\u{301}@Example.com";
    let precomposed = "jos\u{e9}@example.com";
    let registered = app.register(decomposed).await;
    assert_eq!(registered.status, 201, "{}", registered.text);
    assert_eq!(registered.body["user"]["email"], precomposed);
    assert_eq!(app.login(precomposed, PASSWORD).await.status, 200);
    app.register(precomposed)
        .await
        .assert_problem(409, "/problems/email-taken");
}
