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

// ---- one source of configuration: check-config, healthcheck, secrets, logging ----

/// Every setting: TOML key (the flag is `--` and it with `-`), variable, the value as a flag or
/// variable, as a TOML value, and as `check-config` must print it.
const SETTINGS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "database_url",
        "TESSERA_DATABASE_URL",
        "postgres://tessera:pa55word@db.invalid/tessera",
        "\"postgres://tessera:pa55word@db.invalid/tessera\"",
        "postgres://tessera:hidden@db.invalid/tessera",
    ),
    ("database_pool_size", "TESSERA_DATABASE_POOL_SIZE", "7", "7", "7"),
    (
        "database_statement_timeout_ms",
        "TESSERA_DATABASE_STATEMENT_TIMEOUT_MS",
        "1234",
        "1234",
        "1234",
    ),
    (
        "log",
        "TESSERA_LOG",
        "warn,tessera=info",
        "\"warn,tessera=info\"",
        "warn,tessera=info",
    ),
    ("log_format", "TESSERA_LOG_FORMAT", "json", "\"json\"", "json"),
    (
        "listen",
        "TESSERA_LISTEN",
        "127.0.0.1:9999",
        "\"127.0.0.1:9999\"",
        "127.0.0.1:9999",
    ),
    ("request_timeout_secs", "TESSERA_REQUEST_TIMEOUT_SECS", "31", "31", "31"),
    (
        "session_idle_timeout_secs",
        "TESSERA_SESSION_IDLE_TIMEOUT_SECS",
        "61",
        "61",
        "61",
    ),
    (
        "session_lifetime_secs",
        "TESSERA_SESSION_LIFETIME_SECS",
        "3601",
        "3601",
        "3601",
    ),
    (
        "ip_rate_limit_per_minute",
        "TESSERA_IP_RATE_LIMIT_PER_MINUTE",
        "5",
        "5",
        "5",
    ),
    (
        "trusted_proxies",
        "TESSERA_TRUSTED_PROXIES",
        "10.0.0.0/8,192.0.2.1",
        "[\"10.0.0.0/8\", \"192.0.2.1\"]",
        "10.0.0.0/8,192.0.2.1/32",
    ),
    (
        "registration_open",
        "TESSERA_REGISTRATION_OPEN",
        "false",
        "false",
        "false",
    ),
    ("mfa_issuer", "TESSERA_MFA_ISSUER", "Acme", "\"Acme\"", "Acme"),
    ("totp_skew_steps", "TESSERA_TOTP_SKEW_STEPS", "2", "2", "2"),
    ("reauth_per_minute", "TESSERA_REAUTH_PER_MINUTE", "3", "3", "3"),
    ("max_connections", "TESSERA_MAX_CONNECTIONS", "100", "100", "100"),
    (
        "header_read_timeout_secs",
        "TESSERA_HEADER_READ_TIMEOUT_SECS",
        "11",
        "11",
        "11",
    ),
    (
        "max_connections_per_ip",
        "TESSERA_MAX_CONNECTIONS_PER_IP",
        "9",
        "9",
        "9",
    ),
    (
        "body_read_timeout_secs",
        "TESSERA_BODY_READ_TIMEOUT_SECS",
        "12",
        "12",
        "12",
    ),
    (
        "events_webhook_url",
        "TESSERA_EVENTS_WEBHOOK_URL",
        "https://hooks.example/events",
        "\"https://hooks.example/events\"",
        "https://hooks.example/events",
    ),
    (
        "events_webhook_lease_secs",
        "TESSERA_EVENTS_WEBHOOK_LEASE_SECS",
        "45",
        "45",
        "45",
    ),
    (
        "metrics_listen",
        "TESSERA_METRICS_LISTEN",
        "127.0.0.1:9464",
        "\"127.0.0.1:9464\"",
        "127.0.0.1:9464",
    ),
    ("event_retention_days", "TESSERA_EVENT_RETENTION_DAYS", "30", "30", "30"),
    (
        "housekeeping_interval_secs",
        "TESSERA_HOUSEKEEPING_INTERVAL_SECS",
        "60",
        "60",
        "60",
    ),
    ("access_log", "TESSERA_ACCESS_LOG", "false", "false", "false"),
];

const WEBHOOK_SECRET: &str = "whsec_ZG8tbm90LXByaW50LTAxMjM0NTY3ODktYWJjZGVm";

fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// The lines of `check-config` that must be there, with `source` for every table setting.
fn assert_every_setting(output: &str, source: &str, data: &Path, key_file: &Path) {
    for (key, _, _, _, shown) in SETTINGS {
        let line = format!("{key} = {shown} ({source})");
        assert!(output.lines().any(|l| l == line), "{line:?} missing from:\n{output}");
    }
    let data_line = format!("data_dir = {} ({source})", data.display());
    assert!(
        output.lines().any(|l| l == data_line),
        "{data_line:?} missing from:\n{output}"
    );
    let key_line = format!("secret_key_file = {} ({source})", key_file.display());
    assert!(
        output.lines().any(|l| l == key_line),
        "{key_line:?} missing from:\n{output}"
    );
    assert!(
        output
            .lines()
            .any(|l| l == "events_webhook_secret = set (hidden) (env TESSERA_EVENTS_WEBHOOK_SECRET)"),
        "{output}"
    );
    assert!(
        !output.contains(WEBHOOK_SECRET),
        "the secret is never printed:\n{output}"
    );
    assert!(!output.contains("pa55word"), "nor a database password:\n{output}");
}

#[tokio::test]
async fn every_setting_is_reachable_by_flag_by_variable_and_by_file_and_check_config_names_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_in(&dir);
    let key_file = dir.path().join("keys").join("tessera.key");

    let mut by_flag = tessera(&[
        "check-config",
        "--data-dir",
        text(&data),
        "--secret-key-file",
        text(&key_file),
    ]);
    for (key, _, value, _, _) in SETTINGS {
        by_flag.arg(flag(key)).arg(value);
    }
    by_flag.env("TESSERA_EVENTS_WEBHOOK_SECRET", WEBHOOK_SECRET);
    let output = run_ok(by_flag);
    assert_every_setting(&output, "flag", &data, &key_file);
    assert!(output.contains("config = none (default)"), "{output}");

    let mut by_env = tessera(&["check-config"]);
    for (_, env, value, _, _) in SETTINGS {
        by_env.env(env, value);
    }
    by_env
        .env("TESSERA_DATA_DIR", &data)
        .env("TESSERA_SECRET_KEY_FILE", &key_file)
        .env("TESSERA_EVENTS_WEBHOOK_SECRET", WEBHOOK_SECRET);
    assert_every_setting(&run_ok(by_env), "env", &data, &key_file);

    let config = dir.path().join("tessera.toml");
    let mut toml = format!(
        "data_dir = \"{}\"\nsecret_key_file = \"{}\"\n",
        text(&data),
        text(&key_file)
    );
    for (key, _, _, value, _) in SETTINGS {
        toml.push_str(&format!("{key} = {value}\n"));
    }
    std::fs::write(&config, toml).unwrap();
    // The file's path from TESSERA_CONFIG, and a flag still wins over the file.
    let mut by_file = tessera(&["check-config", "--mfa-issuer", "Flagged"]);
    by_file
        .env("TESSERA_CONFIG", &config)
        .env("TESSERA_EVENTS_WEBHOOK_SECRET", WEBHOOK_SECRET);
    let output = run_ok(by_file);
    let output_without_issuer = output.replace("mfa_issuer = Flagged (flag)", "mfa_issuer = Acme (file)");
    assert_every_setting(&output_without_issuer, "file", &data, &key_file);
    assert!(output.contains("mfa_issuer = Flagged (flag)"), "{output}");
    assert!(
        output.contains(&format!("config = {} (env)", config.display())),
        "{output}"
    );
    assert!(!data.exists(), "check-config creates nothing");
}

#[tokio::test]
async fn check_config_refuses_an_invalid_configuration_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "listen = \"127.0.0.1:0\"\nsesion_lifetime_secs = 60\n").unwrap();
    for (command, needle) in [
        (
            tessera(&["check-config", "--config", text(&typo)]),
            "unknown field `sesion_lifetime_secs`",
        ),
        (
            tessera(&["check-config", "--totp-skew-steps", "7"]),
            "invalid setting totp_skew_steps",
        ),
        (tessera(&["check-config", "--log", "info,[["]), "invalid setting log"),
        (
            tessera(&["check-config", "--events-webhook-url", "https://hooks.example/x"]),
            "TESSERA_EVENTS_WEBHOOK_SECRET",
        ),
    ] {
        let failed = run(command);
        assert!(!failed.status.success(), "{needle}: {}", failed.stdout);
        let lines: Vec<&str> = failed.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{}", failed.stderr);
        assert!(
            lines[0].starts_with("Error: ") && lines[0].contains(needle),
            "{needle:?}: {}",
            failed.stderr
        );
        assert!(failed.stdout.is_empty(), "{}", failed.stdout);
    }
}

#[tokio::test]
async fn serve_help_lists_every_setting_and_never_shows_a_secret() {
    let secret_key = BASE64.encode(&[0x42; 32]);
    let mut command = tessera(&["serve", "--help"]);
    command
        .env("TESSERA_SECRET_KEY", &secret_key)
        .env("TESSERA_EVENTS_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("TESSERA_DATABASE_URL", "postgres://tessera:pa55word@db.invalid/tessera")
        .env(
            "TESSERA_EVENTS_WEBHOOK_URL",
            "https://hooks.example/events?token=hook-token-77",
        )
        .env("TESSERA_LISTEN", "127.0.0.1:7777");
    let help = run_ok(command);
    for (key, env, _, _, _) in SETTINGS {
        assert!(help.contains(&flag(key)), "{} missing from:\n{help}", flag(key));
        assert!(help.contains(env), "{env} missing from:\n{help}");
    }
    for name in [
        "--config",
        "TESSERA_CONFIG",
        "--data-dir",
        "TESSERA_DATA_DIR",
        "--secret-key-file",
        "TESSERA_SECRET_KEY_FILE",
        "TESSERA_SECRET_KEY:",
        "TESSERA_EVENTS_WEBHOOK_SECRET /",
        "TESSERA_EVENTS_WEBHOOK_SECRET_FILE",
        "[default: info,sqlx=warn]",
        "[default: 400]",
    ] {
        assert!(help.contains(name), "{name} missing from:\n{help}");
    }
    assert!(!help.contains("--secret-key "), "the key is never a flag:\n{help}");
    assert!(
        !help.contains("--events-webhook-secret"),
        "nor the webhook secret:\n{help}"
    );
    for secret in [secret_key.as_str(), WEBHOOK_SECRET, "pa55word", "hook-token-77"] {
        assert!(!help.contains(secret), "{secret} shown in:\n{help}");
    }
    // An ordinary variable's value is shown (so the test above can fail).
    assert!(help.contains("TESSERA_LISTEN=127.0.0.1:7777"), "{help}");
}

#[tokio::test]
async fn the_webhook_secret_may_come_from_a_file_but_not_from_both_places() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{WEBHOOK_SECRET}\n")).unwrap();
    let mut command = tessera(&["check-config", "--events-webhook-url", "https://hooks.example/x"]);
    command.env("TESSERA_EVENTS_WEBHOOK_SECRET_FILE", &secret_file);
    let output = run_ok(command);
    assert!(
        output.contains("events_webhook_secret = set (hidden) (env TESSERA_EVENTS_WEBHOOK_SECRET_FILE)"),
        "{output}"
    );
    assert!(!output.contains(WEBHOOK_SECRET), "{output}");

    let mut both = tessera(&["check-config", "--events-webhook-url", "https://hooks.example/x"]);
    both.env("TESSERA_EVENTS_WEBHOOK_SECRET_FILE", &secret_file)
        .env("TESSERA_EVENTS_WEBHOOK_SECRET", WEBHOOK_SECRET);
    let failed = run(both);
    assert!(!failed.status.success());
    assert_eq!(failed.stderr.trim().lines().count(), 1, "{}", failed.stderr);
    assert!(failed.stderr.contains("not both"), "{}", failed.stderr);
    assert!(!failed.stderr.contains(WEBHOOK_SECRET), "{}", failed.stderr);

    let mut missing = tessera(&["serve", "--events-webhook-url", "https://hooks.example/x"]);
    missing.env("TESSERA_EVENTS_WEBHOOK_SECRET_FILE", dir.path().join("absent"));
    let failed = run(missing);
    assert!(!failed.status.success());
    assert!(
        failed.stderr.contains("TESSERA_EVENTS_WEBHOOK_SECRET_FILE"),
        "{}",
        failed.stderr
    );
}

#[tokio::test]
async fn a_mounted_key_file_holding_the_base64_key_is_the_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_in(&dir);
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    // What `docker secret` / a Kubernetes secret with mode 0400 would mount.
    let key = BASE64.encode(&[0x11; 32]);
    let key_file = secrets.join("tessera_secret_key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o400)).unwrap();

    let mut check = tessera(&["check-config", "--data-dir", text(&data)]);
    check.env("TESSERA_SECRET_KEY_FILE", &key_file);
    let output = run_ok(check);
    assert!(
        output.contains(&format!(
            "master_key = key file {} (present, private)",
            key_file.display()
        )),
        "{output}"
    );
    assert!(!output.contains(&key), "{output}");

    let mut command = serve_on(&data);
    command.env("TESSERA_SECRET_KEY_FILE", &key_file);
    let server = Server::start(command);
    let token = server.user_with_session("mounted@example.com").await;
    let setup = server.mfa_setup(&token).await;
    let secret = setup.body["secret"].as_str().expect("secret");
    let verify = server
        .post(
            "/api/user/profile/mfa/verify",
            Some(&token),
            json!({"code": totp_code(secret, unix_now())}),
        )
        .await;
    assert_eq!(verify.status, 200, "{}", verify.text);
    let log = server.stop("-TERM");
    assert!(!log.contains("created a new master key file"), "{log}");
    assert!(!data.join("secret.key").exists(), "no key file in the data directory");

    // The TOTP secret was sealed with the mounted key: the same key as a variable opens the
    // database, another key is refused.
    let mut same = serve_on(&data);
    same.env("TESSERA_SECRET_KEY", &key);
    Server::start(same).stop("-TERM");
    let mut other = serve_on(&data);
    other.env("TESSERA_SECRET_KEY", BASE64.encode(&[0x22; 32]));
    let refused = run(other);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("another master key"), "{}", refused.stderr);

    // Both at once is an error, whichever wins would surprise someone.
    let mut both = serve_on(&data);
    both.env("TESSERA_SECRET_KEY", &key)
        .env("TESSERA_SECRET_KEY_FILE", &key_file);
    let refused = run(both);
    assert!(!refused.status.success());
    assert_eq!(refused.stderr.trim().lines().count(), 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("not both"), "{}", refused.stderr);
    assert!(!refused.stderr.contains(&key), "{}", refused.stderr);
}

/// Starts `command` (a `serve`), returns its first log line that mentions `listening`.
fn first_listening_line(mut command: Command) -> (KillOnDrop, String) {
    use std::io::BufRead;
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = KillOnDrop(command.spawn().expect("tessera starts"));
    let stderr = child.0.stderr.take().expect("stderr piped");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening") {
                let _ = sender.send(line);
                break;
            }
        }
    });
    let line = receiver
        .recv_timeout(PATIENCE)
        .expect("a listening line within the patience");
    (child, line)
}

#[tokio::test]
async fn json_logs_are_chosen_by_flag_by_variable_or_by_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_in(&dir);
    let config = dir.path().join("tessera.toml");
    std::fs::write(&config, "log_format = \"json\"\nlog = \"info\"\n").unwrap();
    let mut by_env = serve_on(&data);
    by_env.env("TESSERA_LOG_FORMAT", "json");
    let mut by_file = serve_on(&data);
    by_file.args(["--config", text(&config)]);
    for command in [
        {
            let mut by_flag = serve_on(&data);
            by_flag.args(["--log-format", "json"]);
            by_flag
        },
        by_env,
        by_file,
    ] {
        let (_child, line) = first_listening_line(command);
        let parsed: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        assert_eq!(parsed["fields"]["message"], "listening", "{line}");
        assert_eq!(parsed["level"], "INFO", "{line}");
    }
    let (_child, line) = first_listening_line(serve_on(&data));
    assert!(
        serde_json::from_str::<serde_json::Value>(&line).is_err(),
        "text by default: {line}"
    );
}

/// A one-connection HTTP server on loopback answering `status`; the request head it received
/// arrives on the returned channel.
fn fake_server(status: &str) -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else { return };
        let mut head = Vec::new();
        let mut buffer = [0u8; 256];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => head.extend_from_slice(&buffer[..read]),
            }
        }
        let _ = stream.write_all(answer.as_bytes());
        let _ = sender.send(String::from_utf8_lossy(&head).into_owned());
    });
    (port, receiver)
}

#[tokio::test]
async fn healthcheck_exits_zero_only_when_the_configured_server_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_in(&dir);
    let server = Server::start(serve_on(&data));
    let address = server.base.trim_start_matches("http://").to_owned();
    let config = dir.path().join("tessera.toml");
    std::fs::write(&config, format!("listen = \"{address}\"\n")).unwrap();

    let by_flag = run_ok(tessera(&["healthcheck", "--listen", &address]));
    assert!(
        by_flag.contains(&format!("ready: http://{address}/readyz answered 200")),
        "{by_flag}"
    );
    let mut by_file = tessera(&["healthcheck"]);
    by_file.env("TESSERA_CONFIG", &config);
    run_ok(by_file);
    server.stop("-TERM");

    let mut stopped = tessera(&["healthcheck"]);
    stopped.env("TESSERA_LISTEN", &address);
    let failed = run(stopped);
    assert!(!failed.status.success());
    assert_eq!(failed.stderr.trim().lines().count(), 1, "{}", failed.stderr);
    assert!(
        failed.stderr.contains(&format!("not ready: http://{address}/readyz")),
        "{}",
        failed.stderr
    );

    let (port, request) = fake_server("503 Service Unavailable");
    let failed = run(tessera(&["healthcheck", "--listen", &format!("127.0.0.1:{port}")]));
    assert!(!failed.status.success());
    assert!(failed.stderr.contains("answered 503"), "{}", failed.stderr);
    let head = request.recv_timeout(PATIENCE).unwrap();
    assert!(head.starts_with("GET /readyz HTTP/1.1\r\n"), "{head}");

    // A server listening on every address is checked over loopback.
    let (port, request) = fake_server("200 OK");
    let ok = run_ok(tessera(&["healthcheck", "--listen", &format!("0.0.0.0:{port}")]));
    assert!(
        ok.contains(&format!("http://127.0.0.1:{port}/readyz answered 200")),
        "{ok}"
    );
    assert!(request.recv_timeout(PATIENCE).unwrap().starts_with("GET /readyz "));
}
