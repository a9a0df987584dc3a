//! Abuse resistance: the second-factor throttle, races on every single-use thing, hostile
//! input, slow and idle clients, timing of failed logins, and the signed event webhook.

mod common;

use axum::extract::State;
use axum::http::HeaderMap;
use common::*;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn mfa_user(app: &TestApp, email: &str) -> (String, String, Vec<String>) {
    let token = app.user_with_session(email).await;
    let (secret, codes) = app.enable_mfa(&token).await;
    app.next_step();
    (token, secret, codes)
}

async fn failures_recorded(app: &TestApp) -> i64 {
    app.count("SELECT COUNT(*) FROM security_events WHERE kind = 'second_factor_failed'")
        .await
}

// ---------------------------------------------------------------- throttle

#[tokio::test]
async fn a_burst_of_30_parallel_wrong_guesses_evaluates_at_most_5() {
    let app = spawn_app().await;
    let (_, secret, _) = mfa_user(&app, "burst@example.com").await;
    let mfa_token = app.mfa_token("burst@example.com").await;
    let wrong = wrong_code(&secret, app.now());
    let requests: Vec<_> = (0..30)
        .map(|_| {
            app.client
                .post(app.url("/api/auth/login/mfa"))
                .json(&json!({"mfa_token": mfa_token, "code": wrong}))
                .send()
        })
        .map(tokio::spawn)
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap().unwrap().status().as_u16());
    }
    let evaluated = statuses.iter().filter(|s| **s == 401).count();
    assert!(evaluated <= 5, "{evaluated} guesses were evaluated: {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        30 - evaluated,
        "{statuses:?}"
    );
    assert!(failures_recorded(&app).await <= 5);
    // Even the right code is refused while locked.
    let right = app.login_mfa(&mfa_token, &totp_code(&secret, app.now())).await;
    right.assert_problem(429, "/problems/too-many-attempts");
}

#[tokio::test]
async fn lock_delays_double_from_30_seconds_to_at_most_15_minutes() {
    let app = spawn_app().await;
    let (_, secret, _) = mfa_user(&app, "delay@example.com").await;
    let mut mfa_token = app.mfa_token("delay@example.com").await;
    for _ in 0..4 {
        let wrong = wrong_code(&secret, app.now());
        assert_eq!(app.login_mfa(&mfa_token, &wrong).await.status, 401);
    }
    let mut observed = Vec::new();
    for _ in 0..7 {
        let wrong = wrong_code(&secret, app.now());
        assert_eq!(app.login_mfa(&mfa_token, &wrong).await.status, 401);
        let locked = app.login_mfa(&mfa_token, &wrong).await;
        locked.assert_problem(429, "/problems/too-many-attempts");
        let retry: i64 = locked.header("retry-after").unwrap().parse().unwrap();
        assert_eq!(locked.body["retry_after"], retry);
        observed.push(retry);
        app.clock.advance(time::Duration::seconds(retry));
        // The mfa_token expires after 5 minutes; a fresh login does not reset the count.
        mfa_token = app.mfa_token("delay@example.com").await;
    }
    assert_eq!(observed, vec![30, 60, 120, 240, 480, 900, 900]);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM security_events WHERE kind = 'mfa_lockout'")
            .await,
        7
    );
}

#[tokio::test]
async fn every_code_endpoint_shares_one_budget_and_a_new_login_does_not_reset_it() {
    let app = spawn_app().await;
    let (token, secret, _) = mfa_user(&app, "shared@example.com").await;
    let wrong = || wrong_code(&secret, app.now());
    let first = app.mfa_token("shared@example.com").await;
    assert_eq!(app.login_mfa(&first, &wrong()).await.status, 401);
    let second = app.mfa_token("shared@example.com").await;
    assert_eq!(app.login_mfa(&second, &wrong()).await.status, 401);
    let body = json!({"password": PASSWORD, "code": wrong()});
    assert_eq!(
        app.post("/api/user/profile/mfa/backup-codes", Some(&token), body.clone())
            .await
            .status,
        400
    );
    assert_eq!(
        app.post("/api/user/profile/mfa/disable", Some(&token), body)
            .await
            .status,
        400
    );
    let change = json!({"current_password": PASSWORD, "new_password": "another long passphrase", "code": wrong()});
    assert_eq!(
        app.post("/api/user/profile/password", Some(&token), change)
            .await
            .status,
        400
    );
    // Five failures across four endpoints: the account is locked everywhere.
    let fresh = app.mfa_token("shared@example.com").await;
    app.login_mfa(&fresh, &totp_code(&secret, app.now()))
        .await
        .assert_problem(429, "/problems/too-many-attempts");
    let right = json!({"password": PASSWORD, "code": totp_code(&secret, app.now())});
    app.post("/api/user/profile/mfa/disable", Some(&token), right)
        .await
        .assert_problem(429, "/problems/too-many-attempts");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM users WHERE mfa_enabled_at IS NOT NULL")
            .await,
        1
    );
}

#[tokio::test]
async fn enabling_mfa_is_throttled_too() {
    let app = spawn_app().await;
    let token = app.user_with_session("enable@example.com").await;
    let setup = app
        .post(
            "/api/user/profile/mfa/setup",
            Some(&token),
            json!({"password": PASSWORD}),
        )
        .await;
    let secret = setup.body["secret"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        let reply = app
            .post(
                "/api/user/profile/mfa/verify",
                Some(&token),
                json!({"code": wrong_code(&secret, app.now())}),
            )
            .await;
        reply.assert_problem(400, "/problems/invalid-mfa-code");
    }
    let right = json!({"code": totp_code(&secret, app.now())});
    app.post("/api/user/profile/mfa/verify", Some(&token), right)
        .await
        .assert_problem(429, "/problems/too-many-attempts");
}

#[tokio::test]
async fn the_throttle_is_kept_in_the_database_across_a_restart() {
    let app = spawn_app().await;
    let (_, secret, _) = mfa_user(&app, "restart@example.com").await;
    let mfa_token = app.mfa_token("restart@example.com").await;
    for _ in 0..5 {
        assert_eq!(
            app.login_mfa(&mfa_token, &wrong_code(&secret, app.now())).await.status,
            401
        );
    }
    let app = app.restart().await;
    app.login_mfa(&mfa_token, &totp_code(&secret, app.now()))
        .await
        .assert_problem(429, "/problems/too-many-attempts");
}

// ---------------------------------------------------------------- races

#[tokio::test]
async fn one_mfa_token_opens_one_session_however_many_valid_codes_race() {
    let app = spawn_app().await;
    let (_, secret, codes) = mfa_user(&app, "token-race@example.com").await;
    let mfa_token = app.mfa_token("token-race@example.com").await;
    let sessions_before = app.count("SELECT COUNT(*) FROM sessions").await;
    let step_before = app.count("SELECT mfa_last_step FROM users").await;
    let totp = totp_code(&secret, app.now());
    // Ten distinct valid backup codes and ten copies of the valid TOTP code, all at once.
    let statuses = concurrently(20, |i| {
        let code = if i < 10 { codes[i].clone() } else { totp.clone() };
        app.client
            .post(app.url("/api/auth/login/mfa"))
            .json(&json!({"mfa_token": mfa_token, "code": code}))
    })
    .await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(app.count("SELECT COUNT(*) FROM sessions").await, sessions_before + 1);
    let step_consumed = i64::from(app.count("SELECT mfa_last_step FROM users").await > step_before);
    let codes_consumed = 10 - app.count("SELECT COUNT(*) FROM backup_codes").await;
    assert_eq!(
        step_consumed + codes_consumed,
        1,
        "exactly the winner's proof was consumed"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM mfa_challenges").await, 0);
}

#[tokio::test]
async fn fifty_concurrent_regenerations_with_one_code_replace_the_set_once() {
    let app = spawn_app().await;
    let (token, secret, old_codes) = mfa_user(&app, "regen-race@example.com").await;
    let code = totp_code(&secret, app.now());
    let statuses = concurrently(50, |_| {
        app.client
            .post(app.url("/api/user/profile/mfa/backup-codes"))
            .bearer_auth(&token)
            .json(&json!({"password": PASSWORD, "code": code}))
    })
    .await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| [200, 400, 429].contains(s)), "{statuses:?}");
    assert_eq!(app.count("SELECT COUNT(*) FROM backup_codes").await, 10);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM security_events WHERE kind = 'backup_codes_regenerated'")
            .await,
        1
    );
    let mfa_token = app.mfa_token("regen-race@example.com").await;
    app.login_mfa(&mfa_token, &old_codes[0])
        .await
        .assert_problem(401, "/problems/invalid-second-factor");
}

#[tokio::test]
async fn twenty_concurrent_setups_leave_exactly_one_pending_secret() {
    let app = spawn_app().await;
    let token = app.user_with_session("setup-race@example.com").await;
    let statuses = concurrently(20, |_| {
        app.client
            .post(app.url("/api/user/profile/mfa/setup"))
            .bearer_auth(&token)
            .json(&json!({"password": PASSWORD}))
    })
    .await;
    // Each re-authentication is a counted attempt until it succeeds, so part of a burst may be
    // throttled; whatever gets through, one pending secret remains.
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.iter().all(|s| [200, 429].contains(s)), "{statuses:?}");
    assert_eq!(app.count("SELECT COUNT(*) FROM mfa_pending").await, 1);
}

// ---------------------------------------------------------------- hostile input

fn assert_handled(reply: &Reply, what: &str) {
    assert!(reply.status < 500, "{what}: {} {}", reply.status, reply.text);
    if reply.status >= 400 {
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json"),
            "{what}: {}",
            reply.text
        );
        assert_eq!(reply.body["status"], reply.status, "{what}");
    }
}

const BODY_ROUTES: [(&str, &[&str]); 8] = [
    ("/api/auth/register", &["email", "password"]),
    ("/api/auth/login", &["email", "password"]),
    ("/api/auth/login/mfa", &["mfa_token", "code"]),
    (
        "/api/user/profile/password",
        &["current_password", "new_password", "code"],
    ),
    ("/api/user/profile/mfa/setup", &["password"]),
    ("/api/user/profile/mfa/verify", &["code"]),
    ("/api/user/profile/mfa/backup-codes", &["password", "code"]),
    ("/api/user/profile/mfa/disable", &["password", "code"]),
];

fn valid_body(members: &[&str]) -> serde_json::Map<String, Value> {
    members
        .iter()
        .map(|m| {
            let value = match *m {
                "email" => "hostile@example.com".to_owned(),
                "code" => "123456".to_owned(),
                "mfa_token" => format!("tsm_{}", "A".repeat(43)),
                _ => PASSWORD.to_owned(),
            };
            (m.to_string(), Value::String(value))
        })
        .collect()
}

#[tokio::test]
async fn wrong_types_unicode_and_control_characters_in_every_member_are_handled() {
    let app = spawn_app().await;
    let token = app.user_with_session("owner@example.com").await;
    let strange = [
        json!(null),
        json!(12),
        json!(true),
        json!([]),
        json!({"nested": "object"}),
        json!(""),
        json!("\u{0000}\u{0001}\u{001b}[31m"),
        json!("\u{202e}\u{200b}ﬀ𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🙂"),
        json!("x".repeat(5000)),
        json!("１２３４５６"),
    ];
    for (path, members) in BODY_ROUTES {
        for member in members {
            for value in &strange {
                let mut body = valid_body(members);
                body.insert(member.to_string(), value.clone());
                let reply = app.post(path, Some(&token), Value::Object(body)).await;
                assert_handled(&reply, &format!("{path} {member}={value}"));
                if !value.is_string() && *member != "code" {
                    assert_eq!(reply.status, 400, "{path} {member}={value}: {}", reply.text);
                    assert!(
                        reply.body["details"][*member].is_string(),
                        "{path} {member}: {}",
                        reply.text
                    );
                }
            }
        }
    }
    assert_eq!(
        app.get("/api/auth/session", Some(&token)).await.status,
        200,
        "the owner's session survived"
    );
}

#[tokio::test]
async fn deeply_nested_invalid_utf8_and_trailing_garbage_bodies_are_400() {
    let app = spawn_app().await;
    let raw = |body: Vec<u8>| {
        app.client
            .post(app.url("/api/auth/login"))
            .header("content-type", "application/json")
            .body(body)
    };
    // Deep nesting where a string is expected is refused at once; under an unknown member the
    // parser skips it without recursing, and the request goes on as a plain failed login.
    let nested = format!("{{\"email\": {}{}}}", "{\"a\":".repeat(2500), "}".repeat(2500));
    app.send(raw(nested.into_bytes()))
        .await
        .assert_problem(400, "/problems/validation-error");
    let ignored = format!(
        "{{\"email\": \"a@b.org\", \"password\": \"12345678\", \"x\": {}{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    app.send(raw(ignored.into_bytes()))
        .await
        .assert_problem(401, "/problems/invalid-credentials");
    let mut invalid = b"{\"email\": \"a@b.org\", \"password\": \"".to_vec();
    invalid.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    invalid.extend_from_slice(b"\"}");
    app.send(raw(invalid))
        .await
        .assert_problem(400, "/problems/malformed-request");
    app.send(raw(
        b"{\"email\": \"a@b.org\", \"password\": \"12345678\"} trailing".to_vec()
    ))
    .await
    .assert_problem(400, "/problems/malformed-request");
    let duplicated = b"{\"code\": \"123456\", \"otp\": \"654321\", \"mfa_token\": \"x\"}".to_vec();
    let reply = app
        .send(
            app.client
                .post(app.url("/api/auth/login/mfa"))
                .header("content-type", "application/json")
                .body(duplicated),
        )
        .await;
    reply.assert_problem(400, "/problems/validation-error");
    assert!(reply.body["details"]["code"].is_string());
}

#[tokio::test]
async fn huge_headers_and_odd_paths_get_problems() {
    let app = spawn_app().await;
    let huge = "h".repeat(64 * 1024);
    let reply = app
        .send(app.client.get(app.url("/healthz")).header("x-padding", huge.as_str()))
        .await;
    reply.assert_problem(431, "about:blank");
    let encoded = app.get("/api/%ff%fe", None).await;
    encoded.assert_problem(404, "about:blank");
    let token = app.user_with_session("odd@example.com").await;
    let query = app
        .get("/api/user/profile/security-events?limit=%ff", Some(&token))
        .await;
    query.assert_problem(400, "/problems/validation-error");
    let bad_auth = app
        .send(app.client.get(app.url("/api/auth/session")).header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        ))
        .await;
    bad_auth.assert_problem(401, "/problems/unauthenticated");
    let declared = app
        .send(
            app.client
                .post(app.url("/api/auth/login"))
                .header("content-type", "application/json")
                .body(vec![b' '; 20 * 1024]),
        )
        .await;
    declared.assert_problem(413, "about:blank");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = spawn_with(Options {
        configure: Box::new(|c| c.connections.header_read_timeout = Duration::from_millis(300)),
        ..Options::default()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(app.get("/healthz", None).await.status, 200);
}

#[tokio::test]
async fn thousands_of_idle_connections_do_not_lock_out_a_real_client() {
    let app = spawn_with(Options {
        configure: Box::new(|c| {
            c.connections.max_connections = 64;
            c.connections.header_read_timeout = Duration::from_millis(200);
        }),
        ..Options::default()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(tokio::net::TcpStream::connect(app.addr).await.unwrap());
    }
    let reply = tokio::time::timeout(Duration::from_secs(30), app.get("/healthz", None))
        .await
        .expect("served once idle connections timed out");
    assert_eq!(reply.status, 200);
    drop(idle);
}

// ---------------------------------------------------------------- webhook

type Delivery = (HeaderMap, Vec<u8>);

#[derive(Clone, Default)]
struct Received {
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    attempts: Arc<Mutex<u32>>,
    arrived: Arc<tokio::sync::Notify>,
}

async fn receiver(
    State(received): State<Received>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let attempt = {
        let mut attempts = received.attempts.lock().unwrap();
        *attempts += 1;
        *attempts
    };
    if attempt == 1 {
        // The first delivery fails: the sender must retry.
        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    received.deliveries.lock().unwrap().push((headers, body.to_vec()));
    received.arrived.notify_one();
    axum::http::StatusCode::NO_CONTENT
}

fn hmac_sha256_base64(key: &[u8], message: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(message);
    data_encoding::BASE64.encode(&mac.finalize().into_bytes())
}

#[tokio::test]
async fn security_events_reach_the_webhook_signed_and_retried_without_blocking_requests() {
    let received = Received::default();
    let hook = axum::Router::new()
        .route("/hook", axum::routing::post(receiver))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, hook).await });
    // A Standard Webhooks secret: "whsec_" and the base64 of the HMAC key.
    let key = [0x5au8; 32];
    let secret = format!("whsec_{}", data_encoding::BASE64.encode(&key));
    let app = spawn_with(Options {
        configure: Box::new(move |c| {
            let mut webhook =
                tessera::webhook::WebhookConfig::new(&format!("http://{hook_addr}/hook"), Some(secret)).unwrap();
            webhook.poll_interval = Duration::from_millis(20);
            c.webhook = Some(webhook);
        }),
        ..Options::default()
    })
    .await;
    let registered = app
        .send(
            app.client
                .post(app.url("/api/auth/register"))
                .header("x-request-id", "hook-req-1")
                .json(&json!({"email": "hooked@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(registered.status, 201, "the request does not wait for delivery");
    // The retry is due once the service's clock has passed the backoff (10 s after the first
    // attempt): move it until the event arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.deliveries.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "event not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
        app.clock.advance(time::Duration::seconds(5));
    }
    let (headers, body) = received.deliveries.lock().unwrap()[0].clone();
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["type"], "user_registered");
    assert_eq!(event["request_id"], "hook-req-1");
    assert_eq!(event["user_id"], registered.body["user"]["id"]);
    assert_eq!(event["ip"], "127.0.0.1");
    let id = headers["webhook-id"].to_str().unwrap();
    assert_eq!(id, event["id"].to_string());
    let timestamp = headers["webhook-timestamp"].to_str().unwrap();
    // The retry waited for the service's clock to move 10 s or more ahead of the real time: the
    // timestamp of the accepted attempt is that clock's, not the system's.
    let timestamp_secs = timestamp.parse::<i64>().unwrap();
    let system_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        timestamp_secs >= system_now + 5 && timestamp_secs <= app.now(),
        "webhook-timestamp {timestamp_secs}: system {system_now}, service clock {}",
        app.now()
    );
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(&body);
    assert_eq!(
        headers["webhook-signature"].to_str().unwrap(),
        format!("v1,{}", hmac_sha256_base64(&key, &signed))
    );
    assert!(headers.get("x-tessera-signature").is_none(), "the old headers are gone");
    assert!(
        *received.attempts.lock().unwrap() >= 2,
        "the refused first delivery was retried"
    );
    assert!(!String::from_utf8_lossy(&body).contains(PASSWORD));
}

#[tokio::test]
async fn the_per_ip_limit_covers_every_unauthenticated_route_but_the_health_checks() {
    let app = spawn_with(Options {
        configure: Box::new(|c| c.ip_rate_limit_per_minute = 1),
        ..Options::default()
    })
    .await;
    let doc: Value = serde_json::from_str(&tessera::http::openapi::DOCUMENT_JSON).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if operation.get("security").is_some() || path == "/healthz" || path == "/readyz" {
                continue;
            }
            let url = app.url(&path.replace("{slug}", "validation-error"));
            let request = || match method.as_str() {
                "get" => app.client.get(&url),
                _ => app.client.post(&url).json(&json!({})),
            };
            // Buckets are per address, shared by all these routes: the first call of the run may
            // pass, every later one is refused.
            let _ = app.send(request()).await;
            let reply = app.send(request()).await;
            reply.assert_problem(429, "/problems/rate-limited");
            checked += 1;
        }
    }
    assert!(checked >= 5, "register, login, login/mfa, openapi.json, problems pages");
    for _ in 0..5 {
        assert_eq!(app.get("/healthz", None).await.status, 200);
        assert_eq!(app.get("/readyz", None).await.status, 200);
    }
}

#[tokio::test]
async fn password_re_authentication_through_a_session_is_throttled_too() {
    let app = spawn_app().await;
    let token = app.user_with_session("oracle@example.com").await;
    for _ in 0..5 {
        app.post(
            "/api/user/profile/mfa/setup",
            Some(&token),
            json!({"password": "guess password"}),
        )
        .await
        .assert_problem(400, "/problems/invalid-password-or-code");
    }
    let change = json!({"current_password": PASSWORD, "new_password": "another long passphrase"});
    app.post("/api/user/profile/password", Some(&token), change)
        .await
        .assert_problem(429, "/problems/too-many-attempts");
    app.post(
        "/api/user/profile/mfa/setup",
        Some(&token),
        json!({"password": PASSWORD}),
    )
    .await
    .assert_problem(429, "/problems/too-many-attempts");
    app.clock.advance(time::Duration::seconds(30));
    let setup = app
        .post(
            "/api/user/profile/mfa/setup",
            Some(&token),
            json!({"password": PASSWORD}),
        )
        .await;
    assert_eq!(setup.status, 200, "{}", setup.text);
    assert_eq!(
        app.count("SELECT mfa_failures FROM users").await,
        0,
        "a success resets the count"
    );
}
