//! The service foundation over a real socket: accounts, sessions, the error envelope on every
//! failure, request ids, operations endpoints, the per-IP limit, cookies, shutdown, restart.

mod common;

use axum::routing::{get, post};
use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn register_creates_a_normalised_account_and_stores_only_a_hash() {
    let app = spawn_app().await;
    let reply = app.register("  Alice@Example.COM ").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let user = &reply.body["user"];
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["mfa_enabled"], false);
    assert!(user["id"].as_str().unwrap().len() == 36);
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));
    let db = app.db().await;
    let hash = db
        .text("SELECT password_hash FROM users WHERE email = 'alice@example.com'")
        .await;
    db.close().await;
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    assert!(!hash.contains(PASSWORD));
}

#[tokio::test]
async fn a_taken_email_is_409_whatever_its_case() {
    let app = spawn_app().await;
    assert_eq!(app.register("bob@example.com").await.status, 201);
    app.register("BOB@example.com")
        .await
        .assert_problem(409, "/problems/email-taken");
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 1);
}

#[tokio::test]
async fn invalid_registration_names_each_member_and_changes_nothing() {
    let app = spawn_app().await;
    let reply = app
        .post(
            "/api/auth/register",
            None,
            json!({"email": "not-an-email", "password": "short"}),
        )
        .await;
    reply.assert_problem(400, "/problems/validation-error");
    assert!(reply.body["details"]["email"].is_string());
    assert!(reply.body["details"]["password"].is_string());
    let long = app
        .post(
            "/api/auth/register",
            None,
            json!({"email": "a@b.org", "password": "x".repeat(257)}),
        )
        .await;
    long.assert_problem(400, "/problems/validation-error");
    assert!(long.body["details"]["password"].as_str().unwrap().contains("256"));
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn closed_registration_is_403() {
    let app = spawn_with(Options {
        configure: Box::new(|c| c.service.registration_open = false),
        ..Options::default()
    })
    .await;
    app.register("carol@example.com")
        .await
        .assert_problem(403, "/problems/registration-closed");
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn login_returns_a_bearer_session_and_the_cookie_for_the_web_page() {
    let app = spawn_app().await;
    app.register("dave@example.com").await;
    let reply = app.login("DAVE@example.com", PASSWORD).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let token = reply.body["token"].as_str().unwrap();
    assert!(token.starts_with("tsr_") && token.len() == 47);
    assert_eq!(reply.body["token_type"], "Bearer");
    assert_eq!(reply.body["user"]["email"], "dave@example.com");
    let expires = time::OffsetDateTime::parse(
        reply.body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires.unix_timestamp() - app.now(), 12 * 3600);
    let cookie = reply.header("set-cookie").unwrap();
    assert!(cookie.starts_with(&format!("__Host-tessera_session={token};")));
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
}

#[tokio::test]
async fn session_tokens_are_stored_only_as_sha256() {
    let app = spawn_app().await;
    let token = app.user_with_session("erin@example.com").await;
    let db = app.db().await;
    let stored = db.bytes("SELECT token_hash FROM sessions").await;
    assert_eq!(stored, vec![Sha256::digest(token.as_bytes()).to_vec()]);
    db.close().await;
    let Some(raw) = app.stop_and_read_database_files().await else {
        return;
    };
    let needle = &token.as_bytes()[4..];
    assert!(
        !raw.windows(needle.len()).any(|w| w == needle),
        "token found in database files"
    );
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_401() {
    let app = spawn_app().await;
    app.register("frank@example.com").await;
    let wrong = app.login("frank@example.com", "wrong password!").await;
    let unknown = app.login("nobody@example.com", PASSWORD).await;
    wrong.assert_problem(401, "/problems/invalid-credentials");
    unknown.assert_problem(401, "/problems/invalid-credentials");
    for member in ["type", "title", "status", "detail", "error", "details", "instance"] {
        assert_eq!(wrong.body[member], unknown.body[member], "{member} differs");
    }
    assert_eq!(
        app.count("SELECT COUNT(*) FROM security_events WHERE kind = 'login_failed'")
            .await,
        1
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM sessions").await, 0);
}

#[tokio::test]
async fn session_introspection_and_profile_describe_the_token_owner() {
    let app = spawn_app().await;
    let token = app.user_with_session("gina@example.com").await;
    let session = app.get("/api/auth/session", Some(&token)).await;
    assert_eq!(session.status, 200, "{}", session.text);
    assert_eq!(session.body["user"]["email"], "gina@example.com");
    assert_eq!(session.body["session"]["mfa"], false);
    for member in ["created_at", "expires_at", "last_seen_at", "idle_expires_at"] {
        assert!(session.body["session"][member].is_string(), "{member}");
    }
    let profile = app.get("/api/user/profile", Some(&token)).await;
    assert_eq!(profile.status, 200);
    assert_eq!(profile.body["email"], "gina@example.com");
    assert_eq!(profile.body["mfa_enabled"], false);
    assert_eq!(profile.body["id"], session.body["user"]["id"]);
    assert!(profile.body["created_at"].is_string());
}

#[tokio::test]
async fn missing_malformed_and_unknown_tokens_are_401() {
    let app = spawn_app().await;
    app.get("/api/auth/session", None)
        .await
        .assert_problem(401, "/problems/unauthenticated");
    app.get("/api/user/profile", Some("garbage"))
        .await
        .assert_problem(401, "/problems/unauthenticated");
    let unknown = format!("tsr_{}", "A".repeat(43));
    app.get("/api/user/profile", Some(&unknown))
        .await
        .assert_problem(401, "/problems/unauthenticated");
    let basic = app
        .send(
            app.client
                .get(app.url("/api/user/profile"))
                .header("authorization", "Basic Zm9vOmJhcg=="),
        )
        .await;
    basic.assert_problem(401, "/problems/unauthenticated");
}

#[tokio::test]
async fn logout_revokes_the_session_server_side() {
    let app = spawn_app().await;
    let token = app.user_with_session("hank@example.com").await;
    let other = app.session_for("hank@example.com").await;
    let reply = app.post("/api/auth/logout", Some(&token), json!({})).await;
    assert_eq!(reply.status, 204);
    assert!(reply.header("set-cookie").unwrap().contains("Max-Age=0"));
    app.get("/api/auth/session", Some(&token))
        .await
        .assert_problem(401, "/problems/unauthenticated");
    assert_eq!(app.get("/api/auth/session", Some(&other)).await.status, 200);
    assert_eq!(app.count("SELECT COUNT(*) FROM sessions").await, 1);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM security_events WHERE kind = 'logout'")
            .await,
        1
    );
}

#[tokio::test]
async fn password_change_revokes_other_sessions_and_keeps_this_one() {
    let app = spawn_app().await;
    let token = app.user_with_session("ivy@example.com").await;
    let other = app.session_for("ivy@example.com").await;
    let body = json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"});
    let reply = app.post("/api/user/profile/password", Some(&token), body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["success"], true);
    assert_eq!(app.get("/api/auth/session", Some(&token)).await.status, 200);
    app.get("/api/auth/session", Some(&other))
        .await
        .assert_problem(401, "/problems/unauthenticated");
    app.login("ivy@example.com", PASSWORD)
        .await
        .assert_problem(401, "/problems/invalid-credentials");
    assert_eq!(app.login("ivy@example.com", "a brand new passphrase").await.status, 200);
}

#[tokio::test]
async fn a_wrong_current_password_is_400_and_changes_nothing() {
    let app = spawn_app().await;
    let token = app.user_with_session("jack@example.com").await;
    let other = app.session_for("jack@example.com").await;
    let body = json!({"current_password": "not my password", "new_password": "a brand new passphrase"});
    app.post("/api/user/profile/password", Some(&token), body)
        .await
        .assert_problem(400, "/problems/invalid-password-or-code");
    let weak = json!({"current_password": PASSWORD, "new_password": "short"});
    let reply = app.post("/api/user/profile/password", Some(&token), weak).await;
    reply.assert_problem(400, "/problems/validation-error");
    assert!(reply.body["details"]["new_password"].is_string());
    assert_eq!(app.get("/api/auth/session", Some(&other)).await.status, 200);
    assert_eq!(app.login("jack@example.com", PASSWORD).await.status, 200);
}

#[tokio::test]
async fn an_idle_session_expires_after_30_minutes_without_use() {
    let app = spawn_app().await;
    let token = app.user_with_session("kim@example.com").await;
    app.clock.advance(time::Duration::minutes(29));
    assert_eq!(app.get("/api/auth/session", Some(&token)).await.status, 200);
    app.clock.advance(time::Duration::minutes(29));
    assert_eq!(
        app.get("/api/auth/session", Some(&token)).await.status,
        200,
        "use refreshes the idle timer"
    );
    app.clock.advance(time::Duration::minutes(31));
    app.get("/api/auth/session", Some(&token))
        .await
        .assert_problem(401, "/problems/unauthenticated");
}

#[tokio::test]
async fn a_session_ends_after_12_hours_however_often_it_is_used() {
    let app = spawn_app().await;
    let token = app.user_with_session("lee@example.com").await;
    for _ in 0..35 {
        app.clock.advance(time::Duration::minutes(20));
        assert_eq!(app.get("/api/auth/session", Some(&token)).await.status, 200);
    }
    app.clock.advance(time::Duration::minutes(20));
    app.get("/api/auth/session", Some(&token))
        .await
        .assert_problem(401, "/problems/unauthenticated");
}

#[tokio::test]
async fn session_lifetimes_are_configurable() {
    let app = spawn_with(Options {
        configure: Box::new(|c| {
            c.service.session_idle_secs = 60;
            c.service.session_lifetime_secs = 600;
        }),
        ..Options::default()
    })
    .await;
    let token = app.user_with_session("max@example.com").await;
    app.clock.advance(time::Duration::seconds(61));
    app.get("/api/auth/session", Some(&token))
        .await
        .assert_problem(401, "/problems/unauthenticated");
}

#[tokio::test]
async fn malformed_json_and_missing_or_mistyped_members_are_400_problems() {
    let app = spawn_app().await;
    let send_raw = |body: &'static str| {
        app.client
            .post(app.url("/api/auth/register"))
            .header("content-type", "application/json")
            .body(body)
    };
    app.send(send_raw("{\"email\": "))
        .await
        .assert_problem(400, "/problems/malformed-request");
    app.send(send_raw(""))
        .await
        .assert_problem(400, "/problems/malformed-request");
    let missing = app.send(send_raw("{\"email\": \"a@b.org\"}")).await;
    missing.assert_problem(400, "/problems/validation-error");
    assert_eq!(missing.body["details"]["password"], "is required");
    let typed = app
        .send(send_raw("{\"email\": \"a@b.org\", \"password\": 12345678}"))
        .await;
    typed.assert_problem(400, "/problems/validation-error");
    assert!(
        typed.body["details"]["password"]
            .as_str()
            .unwrap()
            .contains("wrong type")
    );
    assert!(
        !typed.text.contains("12345678"),
        "the submitted value must not be echoed"
    );
    let array = app.send(send_raw("[1, 2]")).await;
    array.assert_problem(400, "/problems/validation-error");
    assert!(array.body["details"]["body"].is_string(), "{}", array.text);
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let app = spawn_app().await;
    let text = app
        .send(
            app.client
                .post(app.url("/api/auth/login"))
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    text.assert_problem(415, "about:blank");
    assert_eq!(text.body["title"], "Unsupported Media Type");
    let none = app.send(app.client.post(app.url("/api/auth/login")).body("{}")).await;
    none.assert_problem(415, "about:blank");
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_problems() {
    let app = spawn_app().await;
    let missing = app.get("/api/nothing-here", None).await;
    missing.assert_problem(404, "about:blank");
    assert_eq!(missing.body["instance"], "/api/nothing-here");
    let method = app.send(app.client.delete(app.url("/api/auth/login"))).await;
    method.assert_problem(405, "about:blank");
    assert!(method.header("allow").unwrap().contains("POST"));
}

#[tokio::test]
async fn a_body_over_16_kib_is_413() {
    let app = spawn_app().await;
    let big = json!({"email": "a@b.org", "password": "x".repeat(17 * 1024)});
    let reply = app.post("/api/auth/register", None, big).await;
    reply.assert_problem(413, "about:blank");
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn a_request_past_the_timeout_is_503_and_the_timeout_is_configurable() {
    let app = spawn_with(Options {
        configure: Box::new(|c| c.request_timeout = Duration::from_millis(300)),
        ..Options::default()
    })
    .await;
    // A client that sends the headers and then stalls: the body never completes.
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /api/auth/register HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"email\":")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("}") {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("application/problem+json"));
    assert!(text.contains("/problems/request-timeout"));
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_problem_without_internals() {
    let extra = axum::Router::new().route(
        "/test/panic",
        get(|| async {
            if std::hint::black_box(true) {
                panic!("internal invariant xyzzy broken");
            }
            "unreachable"
        }),
    );
    let app = spawn_with(Options {
        extra_routes: extra,
        ..Options::default()
    })
    .await;
    let reply = app.get("/test/panic", None).await;
    reply.assert_problem(500, "/problems/internal-error");
    assert!(!reply.text.contains("xyzzy"));
    assert_eq!(app.get("/healthz", None).await.status, 200, "the server survives");
}

#[tokio::test]
async fn the_edge_counts_requests_in_flight_for_the_hashing_pool() {
    // The hashing pool gives way while requests that do not hash are in flight; the edge is
    // what counts them. A handler sees itself counted; nothing stays counted afterwards, also
    // when the handler panicked.
    let extra = axum::Router::new()
        .route(
            "/test/in-flight",
            get(
                |axum::extract::State(state): axum::extract::State<tessera::http::AppState>| async move {
                    state.service.traffic().in_flight().to_string()
                },
            ),
        )
        .route(
            "/test/panic",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("boom");
                }
                "unreachable"
            }),
        );
    let app = spawn_with(Options {
        extra_routes: extra,
        ..Options::default()
    })
    .await;
    assert_eq!(app.service.traffic().in_flight(), 0);
    let reply = app.get("/test/in-flight", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text, "1");
    assert_eq!(app.get("/test/panic", None).await.status, 500);
    app.get("/nope", None).await.assert_problem(404, "about:blank");
    assert_eq!(app.service.traffic().in_flight(), 0);
}

#[tokio::test]
async fn an_unreachable_database_is_503_on_readyz_and_on_requests() {
    let app = spawn_app().await;
    assert_eq!(app.get("/readyz", None).await.status, 200);
    app.store.close().await;
    app.get("/readyz", None)
        .await
        .assert_problem(503, "/problems/service-unavailable");
    app.login("a@b.org", PASSWORD)
        .await
        .assert_problem(503, "/problems/service-unavailable");
    assert_eq!(
        app.get("/healthz", None).await.status,
        200,
        "liveness does not depend on the database"
    );
}

#[tokio::test]
async fn request_ids_are_kept_when_valid_and_generated_otherwise() {
    let app = spawn_app().await;
    let kept = app
        .send(app.client.get(app.url("/nope")).header("x-request-id", "client-id-42"))
        .await;
    assert_eq!(kept.header("x-request-id"), Some("client-id-42"));
    assert_eq!(kept.body["requestId"], "client-id-42");
    let generated = app.get("/healthz", None).await;
    let id = generated.header("x-request-id").unwrap();
    let uuid = uuid::Uuid::parse_str(id).unwrap();
    assert_eq!(uuid.get_version_num(), 7);
    for bad in ["x".repeat(129), "x".repeat(10_000), "has space".to_owned()] {
        let reply = app
            .send(app.client.get(app.url("/nope")).header("x-request-id", bad.as_str()))
            .await;
        let id = reply.header("x-request-id").unwrap();
        assert_ne!(id, bad);
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
        assert_eq!(reply.body["requestId"], id);
    }
    let max = "y".repeat(128);
    let reply = app
        .send(app.client.get(app.url("/healthz")).header("x-request-id", max.as_str()))
        .await;
    assert_eq!(reply.header("x-request-id"), Some(max.as_str()));
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let app = spawn_app().await;
    let health = app.get("/healthz", None).await;
    assert_eq!((health.status, health.body["status"].as_str()), (200, Some("ok")));
    assert_eq!(app.get("/readyz", None).await.status, 200);
    let spec = app.get("/api/openapi.json", None).await;
    assert_eq!(spec.status, 200);
    assert_eq!(spec.header("content-type"), Some("application/json"));
    assert_eq!(spec.body["openapi"], "3.1.0");
    let page = app.get("/problems/validation-error", None).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("Request validation failed"));
    app.get("/problems/no-such-thing", None)
        .await
        .assert_problem(404, "about:blank");
}

#[tokio::test]
async fn the_per_ip_limit_answers_429_with_retry_after_and_refills() {
    let app = spawn_with(Options {
        configure: Box::new(|c| c.ip_rate_limit_per_minute = 3),
        ..Options::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(app.login("nobody@example.com", PASSWORD).await.status, 401);
    }
    let limited = app.login("nobody@example.com", PASSWORD).await;
    limited.assert_problem(429, "/problems/rate-limited");
    let retry = limited.header("retry-after").unwrap().parse::<i64>().unwrap();
    assert_eq!(limited.body["retry_after"], retry);
    assert_eq!(retry, 20);
    // X-Forwarded-For is not believed from an untrusted peer.
    let spoofed = app
        .send(
            app.client
                .post(app.url("/api/auth/register"))
                .header("x-forwarded-for", "203.0.113.7")
                .json(&json!({"email": "x@example.com", "password": PASSWORD})),
        )
        .await;
    spoofed.assert_problem(429, "/problems/rate-limited");
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
    // Authenticated endpoints are not behind this limit.
    assert_eq!(app.get("/healthz", None).await.status, 200);
    app.clock.advance(time::Duration::seconds(retry));
    assert_eq!(app.login("nobody@example.com", PASSWORD).await.status, 401);
}

#[tokio::test]
async fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
    let app = spawn_with(Options {
        configure: Box::new(|c| {
            c.ip_rate_limit_per_minute = 1;
            c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        }),
        ..Options::default()
    })
    .await;
    let login_from = |ip: &'static str| {
        app.client
            .post(app.url("/api/auth/login"))
            .header("x-forwarded-for", ip)
            .json(&json!({"email": "n@example.com", "password": PASSWORD}))
    };
    assert_eq!(app.send(login_from("203.0.113.1")).await.status, 401);
    assert_eq!(app.send(login_from("203.0.113.1")).await.status, 429);
    assert_eq!(app.send(login_from("203.0.113.2")).await.status, 401);
}

#[tokio::test]
async fn cookie_sessions_work_and_cross_site_state_changes_are_refused() {
    let app = spawn_app().await;
    let token = app.user_with_session("nora@example.com").await;
    let cookie = format!("__Host-tessera_session={token}");
    let read = app
        .send(
            app.client
                .get(app.url("/api/auth/session"))
                .header("cookie", cookie.as_str()),
        )
        .await;
    assert_eq!(read.status, 200, "{}", read.text);
    let cross = app
        .send(
            app.client
                .post(app.url("/api/auth/logout"))
                .header("cookie", cookie.as_str())
                .header("origin", "https://evil.example"),
        )
        .await;
    cross.assert_problem(403, "/problems/cross-site-request");
    let no_origin = app
        .send(
            app.client
                .post(app.url("/api/auth/logout"))
                .header("cookie", cookie.as_str()),
        )
        .await;
    no_origin.assert_problem(403, "/problems/cross-site-request");
    assert_eq!(
        app.get("/api/auth/session", Some(&token)).await.status,
        200,
        "nothing was revoked"
    );
    let same = app
        .send(
            app.client
                .post(app.url("/api/auth/logout"))
                .header("cookie", cookie.as_str())
                .header("sec-fetch-site", "same-origin"),
        )
        .await;
    assert_eq!(same.status, 204);
    app.get("/api/auth/session", Some(&token))
        .await
        .assert_problem(401, "/problems/unauthenticated");
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let entered = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (e, r) = (entered.clone(), release.clone());
    let extra = axum::Router::new().route(
        "/test/slow",
        post(move || {
            let (e, r) = (e.clone(), r.clone());
            async move {
                e.notify_one();
                r.notified().await;
                "finished"
            }
        }),
    );
    let mut app = spawn_with(Options {
        extra_routes: extra,
        ..Options::default()
    })
    .await;
    let url = app.url("/test/slow");
    let client = app.client.clone();
    let in_flight = tokio::spawn(async move { client.post(url).send().await.unwrap().text().await.unwrap() });
    entered.notified().await;
    let (shutdown, server) = app.shutdown_handle();
    shutdown.send(()).unwrap();
    tokio::task::yield_now().await;
    assert!(!server.is_finished(), "the server waits for the in-flight request");
    release.notify_one();
    assert_eq!(in_flight.await.unwrap(), "finished");
    server.await.unwrap().unwrap();
    assert!(
        app.client.get(app.url("/healthz")).send().await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn a_restart_keeps_users_and_sessions() {
    let app = spawn_app().await;
    let token = app.user_with_session("olga@example.com").await;
    let app = app.restart().await;
    assert_eq!(app.get("/api/auth/session", Some(&token)).await.status, 200);
    assert_eq!(app.login("olga@example.com", PASSWORD).await.status, 200);
}

#[tokio::test]
async fn security_events_record_address_user_agent_and_request_id() {
    let app = spawn_app().await;
    app.register("pat@example.com").await;
    let login = app
        .send(
            app.client
                .post(app.url("/api/auth/login"))
                .header("user-agent", "tessera-test/1.0")
                .header("x-request-id", "login-req-1")
                .json(&json!({"email": "pat@example.com", "password": PASSWORD})),
        )
        .await;
    let token = login.body["token"].as_str().unwrap();
    let events = app.get("/api/user/profile/security-events", Some(token)).await;
    assert_eq!(events.status, 200, "{}", events.text);
    let newest = &events.body["events"][0];
    assert_eq!(newest["type"], "login_succeeded");
    assert_eq!(newest["ip"], "127.0.0.1");
    assert_eq!(newest["user_agent"], "tessera-test/1.0");
    assert_eq!(newest["request_id"], "login-req-1");
    assert!(newest["at"].is_string());
    assert_eq!(events.body["events"][1]["type"], "user_registered");
    let bad = app.get("/api/user/profile/security-events?limit=0", Some(token)).await;
    bad.assert_problem(400, "/problems/validation-error");
    assert!(bad.body["details"]["limit"].is_string());
    let word = app
        .get("/api/user/profile/security-events?limit=many", Some(token))
        .await;
    word.assert_problem(400, "/problems/validation-error");
    let one = app.get("/api/user/profile/security-events?limit=1", Some(token)).await;
    assert_eq!(one.body["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_missing_or_different_master_key_stops_the_start_once_secrets_are_sealed() {
    let app = spawn_app().await;
    let token = app.user_with_session("keys@example.com").await;
    app.post(
        "/api/user/profile/mfa/setup",
        Some(&token),
        json!({"password": PASSWORD}),
    )
    .await;
    let stopped = app.stop().await;
    let dir = stopped.data_dir.clone();
    let original = std::fs::read_to_string(dir.join("secret.key")).unwrap();
    std::fs::remove_file(dir.join("secret.key")).unwrap();
    let config = stopped.config();
    let clock: Arc<dyn tessera::clock::Clock> = Arc::new(stopped.clock.clone());
    let missing = tessera::server::open(&config, clock.clone())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(missing, tessera::server::StartupError::MissingKey { .. }),
        "{missing}"
    );
    assert!(!dir.join("secret.key").exists(), "no replacement key was written");
    let other = tessera::config::Config {
        secret_key: Some(tessera::domain::sealing::MasterKey::generate()),
        ..config.clone()
    };
    let wrong = tessera::server::open(&other, clock.clone())
        .await
        .err()
        .expect("refused");
    assert!(matches!(wrong, tessera::server::StartupError::WrongKey), "{wrong}");
    std::fs::write(dir.join("secret.key"), original).unwrap();
    // Restored privately: a key file others may read is refused.
    let private = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
    std::fs::set_permissions(dir.join("secret.key"), private).unwrap();
    assert!(tessera::server::open(&config, clock).await.is_ok());
    drop(stopped);
}

#[tokio::test]
async fn a_disabled_account_cannot_log_in_and_loses_its_sessions() {
    let app = spawn_app().await;
    let token = app.user_with_session("quit@example.com").await;
    let config = app.config();
    let operator = tessera::server::open_existing(&config, Arc::new(app.clock.clone()))
        .await
        .unwrap();
    operator
        .service
        .operator_set_disabled("quit@example.com", true)
        .await
        .unwrap();
    app.get("/api/auth/session", Some(&token))
        .await
        .assert_problem(401, "/problems/unauthenticated");
    app.login("quit@example.com", PASSWORD)
        .await
        .assert_problem(403, "/problems/account-disabled");
    // A wrong password still gets the generic 401: disabling reveals nothing without the password.
    app.login("quit@example.com", "wrong password!")
        .await
        .assert_problem(401, "/problems/invalid-credentials");
    operator
        .service
        .operator_set_disabled("quit@example.com", false)
        .await
        .unwrap();
    assert_eq!(app.login("quit@example.com", PASSWORD).await.status, 200);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM security_events WHERE kind LIKE 'account_%_by_operator'")
            .await,
        2
    );
}
