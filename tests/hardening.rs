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
        app.post("/api/user/profile/mfa/setup", Some(&token), json!({"password": PASSWORD}))
            .await,
    ];
    for reply in &replies {
        assert_eq!(reply.header("cache-control"), Some("no-store"), "{}", reply.text);
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"), "{}", reply.text);
    }
    assert_eq!(replies[5].status, 200, "the setup answer carries the TOTP secret");
    assert_eq!(app.get("/healthz", None).await.header("x-content-type-options"), Some("nosniff"));
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
                Some("webhook-secret-0123456789".to_owned()),
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
    }
    assert!(
        attempts.load(Ordering::SeqCst) >= 3,
        "a redirect is a failed delivery, retried at the configured URL"
    );
    assert_eq!(redirected.load(Ordering::SeqCst), 0, "the redirect was never followed");
}
