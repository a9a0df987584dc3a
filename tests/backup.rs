//! `tessera backup` and `tessera restore` through the real binary: a backup of a server under
//! writes restores into a fresh data directory where TOTP and backup-code logins work, and every
//! refusal (damaged file, wrong or missing key, newer schema, running server, data in the way,
//! PostgreSQL) is one line, a non-zero exit, and leaves the target as it was.

mod common;

use common::process::*;
use common::totp_code;
use data_encoding::BASE64;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

fn text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn serve(data: &Path) -> Server {
    Server::start(tessera(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        text(data),
        "--ip-rate-limit-per-minute",
        "0",
    ]))
}

fn backup(data: &Path, file: &Path) -> Finished {
    run(tessera(&["backup", text(file), "--data-dir", text(data)]))
}

fn restore(data: &Path, file: &Path, extra: &[&str]) -> Finished {
    let mut args = vec!["restore", text(file), "--data-dir", text(data)];
    args.extend_from_slice(extra);
    run(tessera(&args))
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

/// A refusal: non-zero exit and one line on stderr containing `needle`.
fn refused(finished: &Finished, needle: &str) {
    assert!(!finished.status.success(), "{}", finished.stdout);
    let lines: Vec<&str> = finished.stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", finished.stderr);
    assert!(lines[0].contains(needle), "{needle:?} not in {:?}", lines[0]);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A fresh data directory holding a copy of `from`'s key file.
fn fresh_with_key_of(from: &Path, dir: &tempfile::TempDir, name: &str) -> PathBuf {
    let data = dir.path().join(name);
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = data.join("secret.key");
    std::fs::copy(from.join("secret.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    data
}

/// Registers `email` with MFA on over HTTP; returns (TOTP secret, backup codes).
async fn user_with_mfa(server: &Server, email: &str) -> (String, Vec<String>) {
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
    (secret, codes)
}

/// The number in "N users" of a summary line.
fn users_in(summary: &str) -> usize {
    let words: Vec<&str> = summary.split_whitespace().collect();
    let at = words
        .iter()
        .position(|word| *word == "users")
        .unwrap_or_else(|| panic!("no user count in {summary:?}"));
    words[at - 1].parse().expect("a count")
}

async fn user_count(database: &Path) -> usize {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(database)
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    usize::try_from(count).unwrap()
}

/// An installation with one MFA user, stopped, and a backup of it: (data dir, backup file).
async fn stopped_installation_with_backup(dir: &tempfile::TempDir) -> (PathBuf, PathBuf) {
    let data = dir.path().join("origin");
    let server = serve(&data);
    user_with_mfa(&server, "mia@example.com").await;
    server.stop("-TERM");
    let file = dir.path().join("origin.backup");
    succeeded(&backup(&data, &file));
    (data, file)
}

// ---- tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_writes_restores_into_a_fresh_directory_where_totp_and_backup_codes_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("origin");
    let server = serve(&origin);
    let (secret, codes) = user_with_mfa(&server, "mfa@example.com").await;

    // Registrations and logins keep coming while the backup runs (from a task of their own,
    // with a client of their own).
    let stop = Arc::new(AtomicBool::new(false));
    let registered = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (base, stop, registered) = (server.base.clone(), stop.clone(), registered.clone());
        tokio::spawn(async move {
            let client = common::http_client();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let body = json!({"email": format!("writer{n}@example.com"), "password": common::PASSWORD});
                let created = client
                    .post(format!("{base}/api/auth/register"))
                    .json(&body)
                    .send()
                    .await
                    .expect("register answers");
                assert_eq!(created.status(), 201);
                registered.fetch_add(1, Ordering::SeqCst);
                let login = client
                    .post(format!("{base}/api/auth/login"))
                    .json(&body)
                    .send()
                    .await
                    .expect("login answers");
                assert_eq!(login.status(), 200);
                n += 1;
            }
        })
    };
    while registered.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let file = dir.path().join("tessera.backup");
    let users_before = 1 + registered.load(Ordering::SeqCst);
    let taken = {
        let (origin, file) = (origin.clone(), file.clone());
        tokio::task::spawn_blocking(move || backup(&origin, &file))
            .await
            .unwrap()
    };
    let users_after = 1 + registered.load(Ordering::SeqCst);
    while registered.load(Ordering::SeqCst) + 1 < users_after + 2 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("every write during the backup succeeded");
    let summary = succeeded(&taken).to_owned();
    assert!(summary.starts_with("backed up to"), "{summary}");
    let backed_up = users_in(&summary);
    assert!(
        (users_before..=users_after).contains(&backed_up),
        "{backed_up} users: one consistent moment between {users_before} and {users_after}"
    );
    assert_eq!(mode(&file), 0o600, "the backup is private");
    assert_eq!(
        user_count(&file).await,
        backed_up,
        "the summary tells what the file holds"
    );
    server.stop("-TERM");

    let restored_dir = fresh_with_key_of(&origin, &dir, "restored");
    let restored = restore(&restored_dir, &file, &[]);
    let summary = succeeded(&restored);
    assert!(summary.contains("1 sealed TOTP secrets open"), "{summary}");
    assert_eq!(users_in(summary), backed_up);
    let database = restored_dir.join("tessera.db");
    assert_eq!(mode(&database), 0o600);
    assert_eq!(user_count(&database).await, backed_up);

    let server = serve(&restored_dir);
    let step = server.login("mfa@example.com").await;
    assert_eq!(step.status, 200, "{}", step.text);
    let with_totp = server
        .post(
            "/api/auth/login/mfa",
            None,
            json!({"mfa_token": step.body["mfa_token"], "code": totp_code(&secret, unix_now() + 30)}),
        )
        .await;
    assert_eq!(with_totp.status, 200, "{}", with_totp.text);
    let step = server.login("mfa@example.com").await;
    let with_backup_code = server
        .post(
            "/api/auth/login/mfa",
            None,
            json!({"mfa_token": step.body["mfa_token"], "code": codes[3]}),
        )
        .await;
    assert_eq!(with_backup_code.status, 200, "{}", with_backup_code.text);
    let writer = server.login("writer0@example.com").await;
    assert_eq!(writer.status, 200, "{}", writer.text);
    server.stop("-TERM");
}

#[tokio::test]
async fn restore_refuses_damaged_files_and_the_wrong_key_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, file) = stopped_installation_with_backup(&dir).await;

    let garbage = dir.path().join("garbage.backup");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let target = fresh_with_key_of(&origin, &dir, "target");
    refused(&restore(&target, &garbage, &[]), "is not a readable SQLite database");

    // A real backup with pages overwritten in the middle.
    let damaged = dir.path().join("damaged.backup");
    let mut bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > 5 * 4096, "{} bytes", bytes.len());
    for byte in &mut bytes[2 * 4096..5 * 4096] {
        *byte = 0xa5;
    }
    std::fs::write(&damaged, bytes).unwrap();
    refused(&restore(&target, &damaged, &[]), "damaged.backup is damaged");
    assert!(!target.join("tessera.db").exists(), "nothing restored");

    // Another master key: the sealed secret does not open.
    let other_key = BASE64.encode(&[9u8; 32]);
    let elsewhere = dir.path().join("elsewhere");
    let mut command = tessera(&["restore", text(&file), "--data-dir", text(&elsewhere)]);
    command.env("TESSERA_SECRET_KEY", &other_key);
    refused(&run(command), "1 of 1 sealed TOTP secrets");
    assert!(!elsewhere.join("tessera.db").exists());
    // No key at all.
    refused(&restore(&elsewhere, &file, &[]), "no master key is configured");
    assert!(!elsewhere.join("tessera.db").exists());
    // The right key through the variable works.
    let key = std::fs::read_to_string(origin.join("secret.key")).unwrap();
    let mut command = tessera(&["restore", text(&file), "--data-dir", text(&elsewhere)]);
    command.env("TESSERA_SECRET_KEY", key.trim());
    succeeded(&run(command));

    // A file from a newer tessera (a migration this binary does not know).
    let newer = dir.path().join("newer.backup");
    std::fs::copy(&file, &newer).unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&newer);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, X'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let other_target = fresh_with_key_of(&origin, &dir, "other-target");
    refused(&restore(&other_target, &newer, &[]), "schema version 9999, newer");
    assert!(!other_target.join("tessera.db").exists());
}

#[tokio::test]
async fn restore_refuses_a_running_server_and_data_in_the_way_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, file) = stopped_installation_with_backup(&dir).await;

    // The target is an installation of its own with an account.
    let target = fresh_with_key_of(&origin, &dir, "target");
    let server = serve(&target);
    server.user_with_session("local@example.com").await;
    refused(&restore(&target, &file, &["--force"]), "a tessera serve is running");
    assert_eq!(server.login("local@example.com").await.status, 200, "nothing changed");
    server.stop("-TERM");

    let database = target.join("tessera.db");
    let before = std::fs::read(&database).unwrap();
    refused(&restore(&target, &file, &[]), "add --force");
    assert_eq!(std::fs::read(&database).unwrap(), before, "nothing changed");

    let forced = restore(&target, &file, &["--force"]);
    assert!(succeeded(&forced).contains("kept as"), "{}", forced.stdout);
    assert_eq!(std::fs::read(target.join("tessera.db.before-restore")).unwrap(), before);
    // A second forced restore would overwrite the kept file: refused.
    refused(&restore(&target, &file, &["--force"]), "move it away");

    let server = serve(&target);
    assert_eq!(
        server.login("local@example.com").await.status,
        401,
        "the old data is gone"
    );
    let step = server.login("mia@example.com").await;
    assert_eq!(step.status, 200, "{}", step.text);
    assert!(step.body["mfa_token"].is_string(), "{}", step.text);
    // Servers share the lock: a second one on the same data directory still starts.
    let second = Server::start(tessera(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        text(&target),
    ]));
    second.stop("-TERM");
    server.stop("-TERM");
}

#[tokio::test]
async fn backup_refuses_an_existing_file_a_missing_database_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, file) = stopped_installation_with_backup(&dir).await;
    let before = std::fs::read(&file).unwrap();
    refused(&backup(&origin, &file), "already exists");
    assert_eq!(std::fs::read(&file).unwrap(), before, "never overwritten");

    let missing = dir.path().join("typo");
    let nowhere = dir.path().join("nowhere.backup");
    refused(&backup(&missing, &nowhere), "no database at");
    assert!(!nowhere.exists() && !missing.exists());

    for command in ["backup", "restore"] {
        let finished = run(tessera(&[
            command,
            text(&nowhere),
            "--database-url",
            "postgres://tessera@127.0.0.1/tessera",
        ]));
        refused(&finished, "pg_dump");
        assert!(finished.stderr.contains("pg_restore"), "{}", finished.stderr);
    }
    assert!(!nowhere.exists());
}
