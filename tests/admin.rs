//! The operator's account commands through the real binary: `tessera user create`,
//! `set-password`, `revoke-sessions`, `unlock`, `delete`, and `list` / `show --json`. Each test
//! checks what the command prints and its exit code, then what the running service does over
//! HTTP and what the database holds.

mod common;

use common::process::*;
use common::{PASSWORD, TestDatabase, postgres_or_skip, totp_code, wrong_code};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

fn text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// A migrated, empty data directory in `dir`.
fn migrated(dir: &tempfile::TempDir) -> PathBuf {
    let data = dir.path().join("data");
    run_ok(tessera(&["migrate", "--data-dir", text(&data)]));
    data
}

/// `tessera serve` on `data` with the per-IP budget off (the tests make many logins from one
/// address), the loopback trusted as a proxy (so a test can log in "from elsewhere") and
/// registration as given.
fn serve(data: &Path, registration_open: bool) -> Server {
    Server::start(tessera(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        text(data),
        "--ip-rate-limit-per-minute",
        "0",
        "--trusted-proxies",
        "127.0.0.1",
        "--registration-open",
        if registration_open { "true" } else { "false" },
    ]))
}

/// `tessera user ARGS --data-dir DATA` with `input` on its standard input.
fn user_command(data: &Path, args: &[&str], input: &str) -> Finished {
    user_command_on(&["--data-dir", text(data)], args, input)
}

/// `tessera user ARGS STORAGE...` with `input` on its standard input.
fn user_command_on(storage: &[&str], args: &[&str], input: &str) -> Finished {
    let mut all = vec!["user"];
    all.extend_from_slice(args);
    all.extend_from_slice(storage);
    let mut command = tessera(&all);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(command.spawn().expect("tessera starts"));
    let mut stdin = child.0.stdin.take().expect("stdin piped");
    // A command that refuses early may close its end first: that is not this test's concern.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    let stdout = read_to_end_in_background(child.0.stdout.take().expect("stdout piped"));
    let stderr = read_to_end_in_background(child.0.stderr.take().expect("stderr piped"));
    let stdout = stdout.recv_timeout(PATIENCE).expect("the command finishes");
    let stderr = stderr.recv_timeout(PATIENCE).expect("the command finishes");
    let status = child.0.wait().expect("wait for tessera");
    Finished { status, stdout, stderr }
}

fn succeeded(finished: &Finished) -> &str {
    assert!(
        finished.status.success(),
        "{}\nstdout: {}\nstderr: {}",
        finished.status,
        finished.stdout,
        finished.stderr
    );
    &finished.stdout
}

/// A refusal: non-zero exit, and one line on stderr that contains `needle`.
fn refused(finished: &Finished, needle: &str) {
    assert!(!finished.status.success(), "{}", finished.stdout);
    let lines: Vec<&str> = finished.stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", finished.stderr);
    assert!(lines[0].contains(needle), "{needle:?} not in {:?}", lines[0]);
}

fn list_json(data: &Path) -> Vec<Value> {
    let listed = user_command(data, &["list", "--json"], "");
    let value: Value = serde_json::from_str(succeeded(&listed)).expect("list --json prints JSON");
    value.as_array().expect("an array").clone()
}

fn show_json(data: &Path, email: &str) -> Value {
    let shown = user_command(data, &["show", email, "--json"], "");
    serde_json::from_str(succeeded(&shown)).expect("show --json prints JSON")
}

async fn login(server: &Server, email: &str, password: &str) -> common::Reply {
    server
        .post("/api/auth/login", None, json!({"email": email, "password": password}))
        .await
}

/// A password login from `ip` (through the trusted loopback proxy).
async fn login_from(server: &Server, ip: &str, email: &str, password: &str) -> common::Reply {
    let request = common::http_client()
        .post(format!("{}/api/auth/login", server.base))
        .header("x-forwarded-for", ip)
        .json(&json!({"email": email, "password": password}));
    server.send(request).await
}

/// The event kinds the account sees about itself, newest first.
async fn event_kinds(server: &Server, token: &str) -> Vec<String> {
    let events = server.get("/api/user/profile/security-events", Some(token)).await;
    assert_eq!(events.status, 200, "{}", events.text);
    events.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|event| event["type"].as_str().map(str::to_owned))
        .collect()
}

/// Registers `email` with MFA on; returns (session token, TOTP secret, backup codes).
async fn user_with_mfa(server: &Server, email: &str) -> (String, String, Vec<String>) {
    let token = server.user_with_session(email).await;
    let setup = server.mfa_setup(&token).await;
    let secret = setup.body["secret"].as_str().expect("secret").to_owned();
    let verify = server
        .post(
            "/api/user/profile/mfa/verify",
            Some(&token),
            json!({"code": totp_code(&secret, unix_now())}),
        )
        .await;
    assert_eq!(verify.status, 200, "{}", verify.text);
    let codes = verify.body["backup_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|code| code.as_str().expect("code").to_owned())
        .collect();
    (token, secret, codes)
}

// ---- tests ----

#[tokio::test]
async fn create_makes_the_first_account_of_a_closed_installation() {
    let dir = tempfile::tempdir().unwrap();
    let data = migrated(&dir);

    let created = user_command(&data, &["create", "Boss@Example.com"], &format!("{PASSWORD}\n"));
    assert_eq!(succeeded(&created), "", "a given password is never printed");
    assert!(
        created.stderr.contains("created boss@example.com"),
        "{}",
        created.stderr
    );

    // The same email again, in any case: refused, nothing written.
    let again = user_command(&data, &["create", "boss@example.com"], "another good passphrase\n");
    refused(&again, "already exists");
    // The policy of registration applies.
    let weak = user_command(&data, &["create", "weak@example.com"], "short\n");
    refused(&weak, "password: must be at least 8 characters");
    let common_password = user_command(&data, &["create", "weak@example.com"], "password123\n");
    refused(&common_password, "too common");
    let bad_email = user_command(&data, &["create", "not-an-email"], &format!("{PASSWORD}\n"));
    refused(&bad_email, "email");
    // --password-stdin insists on a line.
    let nothing = user_command(&data, &["create", "weak@example.com", "--password-stdin"], "");
    refused(&nothing, "no password on standard input");
    let emails: Vec<Value> = list_json(&data).iter().map(|user| user["email"].clone()).collect();
    assert_eq!(emails, [json!("boss@example.com")]);

    // Nothing on stdin: a password is generated and printed once, on stdout.
    let generated = user_command(&data, &["create", "second@example.com"], "");
    let password = succeeded(&generated).trim().to_owned();
    assert!(password.len() >= 20, "{password:?}");
    assert!(generated.stderr.contains("shown only once"), "{}", generated.stderr);

    let server = serve(&data, false);
    server
        .register("late@example.com")
        .await
        .assert_problem(403, "/problems/registration-closed");
    let boss = login(&server, "boss@example.com", PASSWORD).await;
    assert_eq!(boss.status, 200, "{}", boss.text);
    let second = login(&server, "second@example.com", &password).await;
    assert_eq!(second.status, 200, "{}", second.text);
    let token = boss.body["token"].as_str().expect("token");
    let kinds = event_kinds(&server, token).await;
    assert!(kinds.contains(&"user_created_by_operator".to_owned()), "{kinds:?}");
    assert!(!kinds.contains(&"user_registered".to_owned()), "{kinds:?}");
    let log = server.stop("-TERM");
    assert!(!log.contains(PASSWORD) && !log.contains(&password), "{log}");
}

#[tokio::test]
async fn set_password_revokes_every_session_and_the_new_password_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    let data = migrated(&dir);
    let server = serve(&data, true);
    let old_session = server.user_with_session("pat@example.com").await;
    let other_session = login(&server, "pat@example.com", PASSWORD).await.body["token"]
        .as_str()
        .expect("token")
        .to_owned();

    // A policy failure changes nothing.
    let weak = user_command(&data, &["set-password", "pat@example.com"], "pat\n");
    refused(&weak, "password:");
    assert_eq!(server.get("/api/auth/session", Some(&old_session)).await.status, 200);
    let unknown = user_command(
        &data,
        &["set-password", "nobody@example.com"],
        "a new long passphrase\n",
    );
    refused(&unknown, "no account with email nobody@example.com");

    let new_password = "a brand new passphrase 42";
    let set = user_command(
        &data,
        &["set-password", "pat@example.com"],
        &format!("{new_password}\n"),
    );
    succeeded(&set);
    assert!(
        set.stderr.contains("all sessions and pending logins revoked"),
        "{}",
        set.stderr
    );
    for token in [&old_session, &other_session] {
        server
            .get("/api/auth/session", Some(token))
            .await
            .assert_problem(401, "/problems/unauthenticated");
    }
    assert_eq!(login(&server, "pat@example.com", PASSWORD).await.status, 401);
    let fresh = login(&server, "pat@example.com", new_password).await;
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    let kinds = event_kinds(&server, fresh.body["token"].as_str().expect("token")).await;
    assert!(kinds.contains(&"password_set_by_operator".to_owned()), "{kinds:?}");

    // --generate: the new password is printed once and works.
    let generated = user_command(&data, &["set-password", "pat@example.com", "--generate"], "");
    let password = succeeded(&generated).trim().to_owned();
    assert_eq!(login(&server, "pat@example.com", new_password).await.status, 401);
    assert_eq!(login(&server, "pat@example.com", &password).await.status, 200);
    server.stop("-TERM");
}

#[tokio::test]
async fn revoke_sessions_ends_sessions_and_pending_logins_and_says_how_many() {
    let dir = tempfile::tempdir().unwrap();
    let data = migrated(&dir);
    let server = serve(&data, true);
    let (first, secret, codes) = user_with_mfa(&server, "rex@example.com").await;
    // A second session through the whole second step, and a pending second step.
    let step = login(&server, "rex@example.com", PASSWORD).await;
    let mfa_token = step.body["mfa_token"].as_str().expect("mfa_token").to_owned();
    let second = server
        .post(
            "/api/auth/login/mfa",
            None,
            json!({"mfa_token": mfa_token, "code": totp_code(&secret, unix_now() + 30)}),
        )
        .await;
    assert_eq!(second.status, 200, "{}", second.text);
    let second = second.body["token"].as_str().expect("token").to_owned();
    let pending = login(&server, "rex@example.com", PASSWORD).await.body["mfa_token"]
        .as_str()
        .expect("mfa_token")
        .to_owned();
    let bystander = server.user_with_session("bystander@example.com").await;

    let revoked = user_command(&data, &["revoke-sessions", "rex@example.com"], "");
    assert_eq!(
        succeeded(&revoked).trim(),
        "revoked 2 sessions and 1 pending logins of rex@example.com"
    );
    for token in [&first, &second] {
        server
            .get("/api/auth/session", Some(token))
            .await
            .assert_problem(401, "/problems/unauthenticated");
    }
    // A right backup code no longer completes the revoked second step.
    let late = server
        .post(
            "/api/auth/login/mfa",
            None,
            json!({"mfa_token": pending, "code": codes[0]}),
        )
        .await;
    assert_eq!(late.status, 401, "{}", late.text);
    assert_eq!(server.get("/api/auth/session", Some(&bystander)).await.status, 200);

    let unknown = user_command(&data, &["revoke-sessions", "nobody@example.com"], "");
    refused(&unknown, "no account with email nobody@example.com");
    server.stop("-TERM");
}

#[tokio::test]
async fn unlock_lets_an_account_locked_by_both_throttles_log_in_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = migrated(&dir);
    let server = serve(&data, true);
    let (_, secret, _) = user_with_mfa(&server, "uma@example.com").await;

    // Ten wrong passwords from elsewhere lock the password step there (the network of the last
    // login, the loopback, is spared): even the right password is refused.
    let elsewhere = "203.0.113.7";
    for _ in 0..10 {
        let wrong = login_from(&server, elsewhere, "uma@example.com", "not the password").await;
        assert_eq!(wrong.status, 401, "{}", wrong.text);
    }
    assert_eq!(
        login_from(&server, elsewhere, "uma@example.com", PASSWORD).await.status,
        429
    );
    let locked = show_json(&data, "uma@example.com");
    assert_eq!(locked["password_failures"], 10, "{locked}");
    assert!(locked["password_locked_until"].is_string(), "{locked}");

    let unlocked = user_command(&data, &["unlock", "uma@example.com"], "");
    assert!(
        succeeded(&unlocked).contains("cleared 10 failed passwords and 0 failed codes"),
        "{}",
        unlocked.stdout
    );
    let step = login_from(&server, elsewhere, "uma@example.com", PASSWORD).await;
    assert_eq!(step.status, 200, "{}", step.text);
    let mfa_token = step.body["mfa_token"].as_str().expect("mfa_token").to_owned();

    // Five wrong codes lock the second factor: even the right code is refused.
    let now = unix_now();
    for _ in 0..5 {
        let wrong = server
            .post(
                "/api/auth/login/mfa",
                None,
                json!({"mfa_token": mfa_token, "code": wrong_code(&secret, now)}),
            )
            .await;
        assert_eq!(wrong.status, 401, "{}", wrong.text);
    }
    let right = json!({"mfa_token": mfa_token, "code": totp_code(&secret, unix_now() + 30)});
    assert_eq!(
        server.post("/api/auth/login/mfa", None, right.clone()).await.status,
        429
    );
    succeeded(&user_command(&data, &["unlock", "uma@example.com"], ""));
    let shown = show_json(&data, "uma@example.com");
    assert_eq!(shown["second_factor_failures"], 0, "{shown}");
    assert_eq!(shown["password_failures"], 0, "{shown}");
    let session = server.post("/api/auth/login/mfa", None, right).await;
    assert_eq!(session.status, 200, "{}", session.text);
    let kinds = event_kinds(&server, session.body["token"].as_str().expect("token")).await;
    assert_eq!(
        kinds
            .iter()
            .filter(|kind| *kind == "account_unlocked_by_operator")
            .count(),
        2,
        "{kinds:?}"
    );
    server.stop("-TERM");
}

#[tokio::test]
async fn delete_removes_the_account_and_its_rows_and_keeps_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = migrated(&dir);
    let server = serve(&data, true);
    let (token, _, codes) = user_with_mfa(&server, "dan@example.com").await;
    let keep = server.user_with_session("keep@example.com").await;
    let id = show_json(&data, "dan@example.com")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // Without a terminal and without --yes nothing happens.
    let unconfirmed = user_command(&data, &["delete", "dan@example.com"], "dan@example.com\n");
    refused(&unconfirmed, "add --yes");
    assert_eq!(server.get("/api/auth/session", Some(&token)).await.status, 200);

    let deleted = user_command(&data, &["delete", "dan@example.com", "--yes"], "");
    assert!(succeeded(&deleted).contains(&format!("deleted dan@example.com (id {id})")));
    server
        .get("/api/auth/session", Some(&token))
        .await
        .assert_problem(401, "/problems/unauthenticated");
    assert_eq!(login(&server, "dan@example.com", PASSWORD).await.status, 401);
    assert_eq!(server.get("/api/auth/session", Some(&keep)).await.status, 200);
    let again = user_command(&data, &["delete", "dan@example.com", "--yes"], "");
    refused(&again, "no account with email dan@example.com");
    server.stop("-TERM");

    // What the database holds now.
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data.join("tessera.db"))
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    for sql in [
        "SELECT COUNT(*) FROM users WHERE id = ?",
        "SELECT COUNT(*) FROM sessions WHERE user_id = ?",
        "SELECT COUNT(*) FROM backup_codes WHERE user_id = ?",
        "SELECT COUNT(*) FROM mfa_challenges WHERE user_id = ?",
        "SELECT COUNT(*) FROM mfa_pending WHERE user_id = ?",
    ] {
        let count: i64 = sqlx::query_scalar(sql).bind(&id).fetch_one(&pool).await.unwrap();
        assert_eq!(count, 0, "{sql}");
    }
    let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM security_events WHERE user_id = ? ORDER BY id")
        .bind(&id)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(kinds.first().map(String::as_str), Some("user_registered"), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("user_deleted"), "{kinds:?}");
    assert!(kinds.contains(&"mfa_enabled".to_owned()), "{kinds:?}");
    let others: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(others, 1, "keep@example.com stays");
    pool.close().await;
    assert_eq!(codes.len(), 10);
}

#[tokio::test]
async fn list_and_show_json_have_stable_fields_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let data = migrated(&dir);
    assert_eq!(list_json(&data), Vec::<Value>::new(), "an empty installation");
    let server = serve(&data, true);
    user_with_mfa(&server, "jo@example.com").await;
    server.user_with_session("kim@example.com").await;
    server.stop("-TERM");

    let users = list_json(&data);
    assert_eq!(users.len(), 2);
    let jo = users.iter().find(|user| user["email"] == "jo@example.com").expect("jo");
    let mut keys: Vec<&str> = jo.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["created_at", "disabled_at", "email", "id", "mfa_enabled"]);
    assert_eq!(jo["mfa_enabled"], true);
    assert_eq!(jo["disabled_at"], Value::Null);

    let shown = show_json(&data, "jo@example.com");
    let mut keys: Vec<&str> = shown.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "backup_codes_remaining",
            "created_at",
            "disabled_at",
            "email",
            "id",
            "mfa_enabled",
            "mfa_enabled_at",
            "mfa_setup_pending",
            "password_failures",
            "password_locked_until",
            "second_factor_failures",
            "second_factor_locked_until",
            "totp_suspended_at",
        ]
    );
    assert_eq!(shown["backup_codes_remaining"], 10);
    assert!(shown["mfa_enabled_at"].is_string());
    assert_eq!(shown["id"], jo["id"]);
    assert!(!shown.to_string().contains("argon2"), "no hash: {shown}");
}

#[tokio::test]
async fn every_command_refuses_a_data_directory_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("typo");
    for (args, input) in [
        (vec!["create", "a@example.com"], format!("{PASSWORD}\n")),
        (vec!["set-password", "a@example.com"], format!("{PASSWORD}\n")),
        (vec!["revoke-sessions", "a@example.com"], String::new()),
        (vec!["unlock", "a@example.com"], String::new()),
        (vec!["delete", "a@example.com", "--yes"], String::new()),
        (vec!["list", "--json"], String::new()),
        (vec!["show", "a@example.com", "--json"], String::new()),
    ] {
        let finished = user_command(&data, &args, &input);
        refused(&finished, "no database at");
        assert!(!data.exists(), "{args:?} created {}", data.display());
    }
}

#[tokio::test]
async fn the_commands_work_on_postgresql_too() {
    if postgres_or_skip().is_none() {
        return;
    }
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let storage = ["--data-dir", text(&data), "--database-url", database.url.as_str()];
    let mut migrate = vec!["migrate"];
    migrate.extend_from_slice(&storage);
    run_ok(tessera(&migrate));

    succeeded(&user_command_on(
        &storage,
        &["create", "pg@example.com"],
        &format!("{PASSWORD}\n"),
    ));
    refused(
        &user_command_on(&storage, &["create", "pg@example.com"], &format!("{PASSWORD}\n")),
        "already exists",
    );
    let listed: Value = serde_json::from_str(succeeded(&user_command_on(&storage, &["list", "--json"], ""))).unwrap();
    let id = listed[0]["id"].as_str().expect("id").to_owned();
    succeeded(&user_command_on(
        &storage,
        &["set-password", "pg@example.com"],
        "another long passphrase\n",
    ));
    let revoked = user_command_on(&storage, &["revoke-sessions", "pg@example.com"], "");
    assert_eq!(
        succeeded(&revoked).trim(),
        "revoked 0 sessions and 0 pending logins of pg@example.com"
    );
    succeeded(&user_command_on(&storage, &["unlock", "pg@example.com"], ""));
    succeeded(&user_command_on(&storage, &["delete", "pg@example.com", "--yes"], ""));
    let listed = user_command_on(&storage, &["list", "--json"], "");
    assert_eq!(succeeded(&listed).trim(), "[]");

    let pool = database.pool().await;
    let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM security_events WHERE user_id = $1 ORDER BY id")
        .bind(&id)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        kinds,
        [
            "user_created_by_operator",
            "password_set_by_operator",
            "sessions_revoked_by_operator",
            "account_unlocked_by_operator",
            "user_deleted"
        ]
    );
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, 0);
    pool.close().await;
}
