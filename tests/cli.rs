//! The `tessera` binary as an operator runs it: `serve` from flags, environment variables or a
//! config file, the data directory and its key file, shutdown on SIGTERM and SIGINT, the help
//! text, `migrate`, and the `user` commands. Every test drives the real executable in its own
//! temporary directory; a child process is killed if the test fails.

mod common;

use common::process::*;
use common::totp_code;
use data_encoding::BASE64;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `tessera serve --listen 127.0.0.1:0 --data-dir DATA`.
fn serve_on(data: &Path) -> Command {
    tessera(&["serve", "--listen", "127.0.0.1:0", "--data-dir", text(data)])
}

fn text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn data_dir_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data")
}

// ---- tests ----

#[tokio::test]
async fn serve_creates_the_data_dir_key_file_0600_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_in(&dir);
    let server = Server::start(serve_on(&data));
    let health = server.get("/healthz", None).await;
    assert_eq!(health.status, 200, "{}", health.text);

    let key_file = data.join("secret.key");
    assert_eq!(mode(&data), 0o700, "the data directory is private");
    assert_eq!(mode(&key_file), 0o600, "the key file is private");
    assert!(data.join("tessera.db").is_file());
    let key = std::fs::read(&key_file).unwrap();
    assert_eq!(server.register("quinn@example.com").await.status, 201);

    let log = server.stop("-TERM");
    assert!(log.contains("created a new master key file"), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");

    let server = Server::start(serve_on(&data));
    let login = server.login("quinn@example.com").await;
    assert_eq!(login.status, 200, "the account survives a restart: {}", login.text);
    assert_eq!(
        std::fs::read(&key_file).unwrap(),
        key,
        "the key file is reused as it is"
    );
    let log = server.stop("-TERM");
    assert!(!log.contains("created a new master key file"), "{log}");
}

#[tokio::test]
async fn env_vars_configure_serve() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_in(&dir);
    let mut command = tessera(&["serve"]);
    command
        .env("TESSERA_LISTEN", "127.0.0.1:0")
        .env("TESSERA_DATA_DIR", &data);
    let server = Server::start(command);
    assert_eq!(server.get("/healthz", None).await.status, 200);
    assert!(data.join("tessera.db").is_file());
    assert!(data.join("secret.key").is_file());
    let log = server.stop("-INT");
    assert!(log.contains("SIGINT received"), "{log}");
}

#[tokio::test]
async fn a_secret_key_of_the_wrong_size_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_in(&dir);
    let short_key = BASE64.encode(&[0x5a; 16]);
    let mut command = serve_on(&data);
    command.env("TESSERA_SECRET_KEY", &short_key);
    let refused = run(command);
    assert!(!refused.status.success(), "{}", refused.stderr);
    assert!(refused.stderr.contains("TESSERA_SECRET_KEY"), "{}", refused.stderr);
    assert!(refused.stderr.contains("32 bytes"), "{}", refused.stderr);
    assert!(!refused.stderr.contains(&short_key), "the key is not echoed");
    assert!(!refused.stderr.contains("listening"), "{}", refused.stderr);

    std::fs::create_dir_all(&data).unwrap();
    let key_file = data.join("secret.key");
    let file_key = format!("{}\n", BASE64.encode(&[0xa5; 20]));
    std::fs::write(&key_file, &file_key).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let refused = run(serve_on(&data));
    assert!(!refused.status.success(), "{}", refused.stderr);
    assert!(refused.stderr.contains(text(&key_file)), "{}", refused.stderr);
    assert!(refused.stderr.contains("32 bytes"), "{}", refused.stderr);
    assert!(!refused.stderr.contains(file_key.trim()), "the key is not echoed");
    assert!(!refused.stderr.contains("listening"), "{}", refused.stderr);
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        file_key,
        "a bad key file is never replaced"
    );
}

#[tokio::test]
async fn help_explains_every_option() {
    let top = run_ok(tessera(&["--help"]));
    for command in ["serve", "migrate", "user"] {
        assert!(top.contains(command), "{command} missing from:\n{top}");
    }
    assert!(top.contains("TESSERA_SECRET_KEY"), "{top}");

    let serve = run_ok(tessera(&["serve", "--help"]));
    for option in [
        "--listen",
        "--data-dir",
        "--database-url",
        "--config",
        "TESSERA_LISTEN",
        "TESSERA_DATA_DIR",
        "TESSERA_DATABASE_URL",
        "--request-timeout-secs",
        "--ip-rate-limit-per-minute",
        "--trusted-proxies",
        "--max-connections-per-ip",
        "--body-read-timeout-secs",
        "--secret-key-file",
        "TESSERA_SECRET_KEY_FILE",
    ] {
        assert!(serve.contains(option), "{option} missing from:\n{serve}");
    }

    let user = run_ok(tessera(&["user", "--help"]));
    for command in ["list", "show", "reset-mfa"] {
        assert!(user.contains(command), "{command} missing from:\n{user}");
    }
}

#[tokio::test]
async fn migrate_applies_migrations_and_user_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_in(&dir);
    let d = text(&data);
    let migrated = run_ok(tessera(&["migrate", "--data-dir", d]));
    assert!(data.join("tessera.db").is_file());
    assert!(migrated.contains("migrations applied"), "{migrated}");

    // Create a user with MFA on, over HTTP.
    let server = Server::start(serve_on(&data));
    let old_token = server.user_with_session("ops@example.com").await;
    let setup = server.mfa_setup(&old_token).await;
    let secret = setup.body["secret"].as_str().expect("secret");
    let verify = server
        .post(
            "/api/user/profile/mfa/verify",
            Some(&old_token),
            json!({"code": totp_code(secret, unix_now())}),
        )
        .await;
    assert_eq!(verify.status, 200, "{}", verify.text);
    server.stop("-TERM");

    let list = run_ok(tessera(&["user", "list", "--data-dir", d]));
    let row = list
        .lines()
        .find(|line| line.contains("ops@example.com"))
        .unwrap_or_else(|| panic!("ops@example.com not listed:\n{list}"));
    assert!(row.split_whitespace().any(|column| column == "on"), "{row}");

    let show = run_ok(tessera(&["user", "show", "ops@example.com", "--data-dir", d]));
    assert!(show.contains("mfa_enabled:            true"), "{show}");
    assert!(show.contains("backup_codes_remaining: 10"), "{show}");

    let reset = run_ok(tessera(&["user", "reset-mfa", "ops@example.com", "--data-dir", d]));
    assert!(reset.contains("ops@example.com"), "{reset}");
    let show = run_ok(tessera(&["user", "show", "ops@example.com", "--data-dir", d]));
    assert!(show.contains("mfa_enabled:            false"), "{show}");
    assert!(!show.contains("backup_codes_remaining"), "{show}");

    let server = Server::start(serve_on(&data));
    server
        .get("/api/auth/session", Some(&old_token))
        .await
        .assert_problem(401, "/problems/unauthenticated");
    let login = server.login("ops@example.com").await;
    assert_eq!(login.status, 200, "{}", login.text);
    assert!(login.body.get("mfa_required").is_none(), "{}", login.text);
    let token = login.body["token"].as_str().expect("a session right away");
    let events = server.get("/api/user/profile/security-events", Some(token)).await;
    assert_eq!(events.status, 200, "{}", events.text);
    let kinds: Vec<&str> = events.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|event| event["type"].as_str())
        .collect();
    assert!(kinds.contains(&"mfa_reset_by_operator"), "{kinds:?}");
    server.stop("-TERM");

    let missing = run(tessera(&["user", "show", "nobody@example.com", "--data-dir", d]));
    assert!(!missing.status.success(), "{}", missing.stdout);
    assert!(missing.stderr.contains("nobody@example.com"), "{}", missing.stderr);
}

#[tokio::test]
async fn a_config_file_is_read_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_in(&dir);
    let config = dir.path().join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nmfa_issuer = \"Acme Corp\"\nregistration_open = false\n",
            text(&data)
        ),
    )
    .unwrap();
    let server = Server::start(tessera(&[
        "serve",
        "--config",
        text(&config),
        "--registration-open",
        "true",
    ]));
    assert!(data.join("tessera.db").is_file(), "data_dir comes from the file");
    // The file closes registration; the flag opens it again.
    let token = server.user_with_session("acme@example.com").await;
    let setup = server.mfa_setup(&token).await;
    assert_eq!(setup.body["issuer"], "Acme Corp");
    let url = setup.body["otpauth_url"].as_str().expect("otpauth_url");
    assert!(url.starts_with("otpauth://totp/Acme%20Corp:"), "{url}");
    server.stop("-TERM");

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "lisen = \"127.0.0.1:0\"\n").unwrap();
    let mut command = tessera(&["serve", "--config", text(&typo)]);
    // Were the file accepted, the default ./tessera-data would land in the temporary directory.
    command.current_dir(dir.path());
    let refused = run(command);
    assert!(!refused.status.success(), "{}", refused.stderr);
    assert!(refused.stderr.contains(text(&typo)), "{}", refused.stderr);
    assert!(refused.stderr.contains("lisen"), "{}", refused.stderr);
}

#[tokio::test]
async fn the_database_files_are_private_and_an_open_data_dir_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_in(&dir);
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let outside = dir.path().join("keys");
    std::fs::create_dir(&outside).unwrap();
    let key_file = outside.join("tessera.key");
    let mut command = serve_on(&data);
    command.args(["--secret-key-file", text(&key_file)]);
    let server = Server::start(command);
    let warning = server
        .log
        .lines()
        .find(|line| line.contains("data directory is accessible to group or others"))
        .unwrap_or_else(|| panic!("no warning in {}", server.log));
    assert!(
        warning.contains("chmod 700") && warning.contains("mode=\"755\""),
        "{warning}"
    );
    assert_eq!(server.register("private@example.com").await.status, 201);
    for file in ["tessera.db", "tessera.db-wal", "tessera.db-shm"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file} is private");
    }
    assert_eq!(mode(&key_file), 0o600, "the key file is created where it was asked for");
    assert!(!data.join("secret.key").exists(), "and not in the data directory");
    server.stop("-TERM");
}

#[tokio::test]
async fn a_key_file_readable_by_others_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_in(&dir);
    let server = Server::start(serve_on(&data));
    server.stop("-TERM");
    let key_file = data.join("secret.key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let finished = run(serve_on(&data));
    assert!(!finished.status.success());
    let line = format!(
        "key file {} is accessible to group or others (mode 640)",
        key_file.display()
    );
    assert!(finished.stderr.contains(&line), "{}", finished.stderr);
    assert!(
        finished.stderr.contains(&format!("chmod 600 {}", key_file.display())),
        "{}",
        finished.stderr
    );
}

#[tokio::test]
async fn a_plain_http_webhook_to_another_host_is_warned_about_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_in(&dir);
    // `.invalid` never resolves, and nothing is posted: no event exists before the first request.
    let mut command = serve_on(&data);
    command
        .env("TESSERA_EVENTS_WEBHOOK_URL", "http://hooks.invalid/events")
        .env(
            "TESSERA_EVENTS_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
    let server = Server::start(command);
    assert!(
        server.log.lines().any(|line| line.contains("WARN")
            && line.contains("plain http")
            && line.contains("host=\"hooks.invalid\"")),
        "{}",
        server.log
    );
    server.stop("-TERM");
    let mut command = serve_on(&data);
    command
        .env("TESSERA_EVENTS_WEBHOOK_URL", "http://127.0.0.1:9/events")
        .env(
            "TESSERA_EVENTS_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
    let server = Server::start(command);
    assert!(!server.log.contains("plain http"), "{}", server.log);
    server.stop("-TERM");
}
