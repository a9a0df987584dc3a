//! Log lines as an operator reads them: with the access log on, every finished request is logged
//! with its request id; with it off (the default) none is; and no log line ever carries a password, a session or MFA token, a TOTP secret or a backup
//! code. A test binary of its own, because it installs the process-wide tracing subscriber; the
//! harness runs the server in this process, so its log lines land in the captured buffer.

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// Everything the subscriber wrote, shared by all tests of this binary.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

/// Installs, once, the subscriber an operator would run with `TESSERA_LOG=tessera=debug`.
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("tessera=debug"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
}

/// Asserts that no captured line contains `secret`.
fn assert_never_logged(logs: &str, what: &str, secret: &str) {
    assert!(!secret.is_empty());
    if let Some(line) = logs.lines().find(|line| line.contains(secret)) {
        panic!("the {what} was logged: {line}");
    }
}

/// An app with the access log on, as an operator enables it (`TESSERA_ACCESS_LOG=true`).
async fn spawn_logging_app() -> TestApp {
    spawn_with(Options {
        configure: Box::new(|config| config.access_log = true),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn every_finished_request_is_logged_with_its_request_id() {
    let logs = logs();
    let app = spawn_logging_app().await;
    app.register("rita@example.com").await;
    let failing = app
        .send(
            app.client
                .post(app.url("/api/auth/login"))
                .header("x-request-id", "trace-me-123")
                .json(&json!({"email": "rita@example.com", "password": "not rita's password"})),
        )
        .await;
    failing.assert_problem(401, "/problems/invalid-credentials");
    let succeeding = app
        .send(
            app.client
                .get(app.url("/healthz"))
                .header("x-request-id", "trace-me-456"),
        )
        .await;
    assert_eq!(succeeding.status, 200);

    // The access line is written before the response leaves the edge, so it is already here.
    let text = logs.text();
    let finished: Vec<&str> = text.lines().filter(|line| line.contains("request finished")).collect();
    assert!(finished.len() >= 3, "{text}");
    for line in &finished {
        assert!(line.contains("request_id="), "no request id in: {line}");
    }
    let traced = finished
        .iter()
        .find(|line| line.contains("trace-me-123"))
        .unwrap_or_else(|| panic!("no finished line for trace-me-123 in:\n{text}"));
    assert!(traced.contains("status=401"), "{traced}");
    assert!(traced.contains("/api/auth/login"), "{traced}");
    let healthy = finished
        .iter()
        .find(|line| line.contains("trace-me-456"))
        .unwrap_or_else(|| panic!("no finished line for trace-me-456 in:\n{text}"));
    assert!(healthy.contains("status=200"), "{healthy}");
    assert_eq!(failing.header("x-request-id"), Some("trace-me-123"));
}

#[tokio::test]
async fn logs_never_contain_passwords_session_tokens_or_mfa_secrets() {
    let logs = logs();
    let app = spawn_logging_app().await;
    let wrong_password = "wrong horse battery staple";
    let new_password = "an entirely new passphrase";
    let token = app.user_with_session("sam@example.com").await;
    app.login("sam@example.com", wrong_password)
        .await
        .assert_problem(401, "/problems/invalid-credentials");
    let (secret, backup_codes) = app.enable_mfa(&token).await;

    // A second login through both factors: the mfa_token, a backup code, a new session.
    let first = app.login("sam@example.com", PASSWORD).await;
    assert_eq!(first.body["mfa_required"], true, "{}", first.text);
    let mfa_token = first.body["mfa_token"].as_str().expect("mfa_token").to_owned();
    let second = app
        .post(
            "/api/auth/login/mfa",
            None,
            json!({"mfa_token": mfa_token, "code": backup_codes[0]}),
        )
        .await;
    assert_eq!(second.status, 200, "{}", second.text);
    let second_token = second.body["token"].as_str().expect("token").to_owned();

    // A wrong second factor and a password change (with a TOTP code) are logged too.
    let third = app.login("sam@example.com", PASSWORD).await;
    let third_mfa_token = third.body["mfa_token"].as_str().expect("mfa_token").to_owned();
    let wrong_code = wrong_code(&secret, app.now());
    let rejected = app
        .post(
            "/api/auth/login/mfa",
            None,
            json!({"mfa_token": third_mfa_token, "code": wrong_code}),
        )
        .await;
    assert_eq!(rejected.status, 401, "{}", rejected.text);
    app.next_step();
    let change = app
        .post(
            "/api/user/profile/password",
            Some(&second_token),
            json!({
                "current_password": PASSWORD,
                "new_password": new_password,
                "code": totp_code(&secret, app.now()),
            }),
        )
        .await;
    assert_eq!(change.status, 200, "{}", change.text);

    let text = logs.text();
    assert!(
        text.lines()
            .any(|line| line.contains("request finished") && line.contains("/api/auth/login/mfa")),
        "the journey was logged at all:\n{text}"
    );
    assert_never_logged(&text, "password", PASSWORD);
    assert_never_logged(&text, "wrong password", wrong_password);
    assert_never_logged(&text, "new password", new_password);
    assert_never_logged(&text, "session token", &token);
    assert_never_logged(&text, "session token body", &token["tsr_".len()..]);
    assert_never_logged(&text, "second session token", &second_token);
    assert_never_logged(&text, "mfa token", &mfa_token);
    assert_never_logged(&text, "mfa token", &third_mfa_token);
    assert_never_logged(&text, "TOTP secret", &secret);
    for code in &backup_codes {
        assert_never_logged(&text, "backup code", code);
    }
}

#[tokio::test]
async fn without_the_access_log_no_request_line_is_written_but_the_request_id_is_answered() {
    let logs = logs();
    // The default configuration: the access log is off.
    let app = spawn_app().await;
    let failing = app
        .send(
            app.client
                .post(app.url("/api/auth/login"))
                .header("x-request-id", "quiet-please-789")
                .json(&json!({"email": "nobody@example.com", "password": "not a known password"})),
        )
        .await;
    failing.assert_problem(401, "/problems/invalid-credentials");
    assert_eq!(failing.header("x-request-id"), Some("quiet-please-789"));
    let ok = app
        .send(
            app.client
                .get(app.url("/healthz"))
                .header("x-request-id", "quiet-please-790"),
        )
        .await;
    assert_eq!(ok.status, 200);
    let text = logs.text();
    for id in ["quiet-please-789", "quiet-please-790"] {
        assert!(
            !text
                .lines()
                .any(|line| line.contains(id) && line.contains("request finished")),
            "an access line was written for {id} with the access log off:\n{text}"
        );
    }
}

#[tokio::test]
async fn warnings_and_errors_during_a_request_carry_its_request_id_with_the_access_log_off() {
    let logs = logs();
    let app = spawn_app().await;
    app.register("lena@example.com").await;
    // Repeated wrong passwords: the lockout warning is logged inside the request that locks.
    for n in 0..12 {
        let reply = app
            .send(
                app.client
                    .post(app.url("/api/auth/login"))
                    .header("x-request-id", format!("lock-me-{n}"))
                    .json(&json!({"email": "lena@example.com", "password": "not lena's password"})),
            )
            .await;
        assert!(matches!(reply.status, 401 | 429), "{}", reply.text);
    }
    // The database gone: the error is logged inside the request that met it.
    app.store.close().await;
    app.send(
        app.client
            .post(app.url("/api/auth/login"))
            .header("x-request-id", "db-gone-42")
            .json(&json!({"email": "lena@example.com", "password": "not lena's password"})),
    )
    .await
    .assert_problem(503, "/problems/service-unavailable");
    let text = logs.text();
    let locked = text
        .lines()
        .find(|line| line.contains("password step locked") && line.contains("lock-me-"))
        .unwrap_or_else(|| panic!("no lockout warning with its request id in:\n{text}"));
    assert!(locked.contains("request_id=lock-me-"), "{locked}");
    let unavailable = text
        .lines()
        .find(|line| line.contains("database unavailable") && line.contains("db-gone-42"))
        .unwrap_or_else(|| panic!("no database error with its request id in:\n{text}"));
    assert!(unavailable.contains("request{request_id=db-gone-42}"), "{unavailable}");
}
