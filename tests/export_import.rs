//! `tessera export` / `tessera import`: an installation built through the HTTP API moves to the
//! other backend (SQLite -> PostgreSQL and back) and a server started on the copy proves nothing
//! was lost: passwords, TOTP factors with their replay step, used and unused backup codes,
//! pending setups, sessions, throttle counters and security events. An export beside a busy
//! writer reads one snapshot. The refusals (non-empty target, another master key, truncated or
//! damaged file) change nothing, and the real binary streams through `-` (stdout into stdin).
//!
//! The PostgreSQL halves need `TESSERA_TEST_DATABASE_URL`; without it they are skipped with a
//! note, unless `TESSERA_REQUIRE_POSTGRES=1` (CI), which makes them fail.

mod common;

use common::{Options, PASSWORD, TestApp, TestDatabase, spawn_with, totp_code};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use tessera::clock::ManualClock;
use tessera::config::Config;
use tessera::domain::sealing::MasterKey;
use tessera::server;
use tessera::transfer::{self, Counts, ExportFile, TransferError};

// ---- backends ----

/// A new PostgreSQL database, or `None` (with a note) when no server is configured; panics when
/// `TESSERA_REQUIRE_POSTGRES` is set but the URL is not.
async fn postgres_database() -> Option<Arc<TestDatabase>> {
    if common::postgres_url().is_some() {
        return Some(Arc::new(TestDatabase::create().await));
    }
    assert!(
        std::env::var("TESSERA_REQUIRE_POSTGRES").is_err(),
        "TESSERA_REQUIRE_POSTGRES is set but TESSERA_TEST_DATABASE_URL is not"
    );
    eprintln!("note: TESSERA_TEST_DATABASE_URL is not set; the PostgreSQL half of this test is skipped");
    None
}

/// Where an installation lives: a data directory (key file, and the SQLite database unless
/// `database` names a PostgreSQL one).
struct Place {
    dir: Arc<tempfile::TempDir>,
    database: Option<Arc<TestDatabase>>,
}

impl Place {
    fn new(database: Option<Arc<TestDatabase>>) -> Self {
        Self {
            dir: Arc::new(tempfile::tempdir().expect("temp dir")),
            database,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn config(&self) -> Config {
        Config {
            data_dir: self.data_dir(),
            database_url: self.database.as_ref().map(|database| database.url.clone()),
            ..Config::default()
        }
    }

    async fn serve(&self, clock: ManualClock) -> TestApp {
        spawn_with(Options {
            data_dir: Some((self.data_dir(), Some(self.dir.clone()))),
            database: self.database.clone(),
            clock: Some(clock),
            ..Options::default()
        })
        .await
    }

    /// Copies the master key file of `from`, as an operator moving an installation would.
    fn copy_key_from(&self, from: &Place) {
        // Private, as `serve` makes its own (an open data directory is warned about).
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(self.data_dir())
            .expect("data dir");
        std::fs::copy(
            from.data_dir().join(server::KEY_FILE),
            self.data_dir().join(server::KEY_FILE),
        )
        .expect("key file copied");
    }

    fn key(&self) -> MasterKey {
        server::load_key(&self.config())
            .expect("key loads")
            .expect("a key file")
    }

    fn database_flags(&self) -> Vec<String> {
        let mut flags = vec!["--data-dir".to_owned(), text(&self.data_dir()).to_owned()];
        if let Some(database) = &self.database {
            flags.extend(["--database-url".to_owned(), database.url.clone()]);
        }
        flags
    }
}

fn text(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

// ---- the installation to move ----

/// What the source installation holds, as its users would know it.
struct Installation {
    /// MFA on; used one backup code and logged in by TOTP; several sessions.
    alice_secret: String,
    alice_session: String,
    alice_codes: Vec<String>,
    /// The TOTP code alice last logged in with (its step is the stored last step).
    alice_last_code: String,
    /// No MFA, one session.
    bob_session: String,
    /// A pending (not verified) setup and one failed password re-authentication.
    carol_session: String,
    carol_pending_secret: String,
}

async fn build_installation(app: &TestApp) -> Installation {
    let alice_session = app.user_with_session("alice@example.com").await;
    let (alice_secret, alice_codes) = app.enable_mfa(&alice_session).await;
    // A backup-code login uses up codes[0].
    let challenge = app.mfa_token("alice@example.com").await;
    let with_code = app.login_mfa(&challenge, &alice_codes[0]).await;
    assert_eq!(with_code.status, 200, "{}", with_code.text);
    // A TOTP login in a later step advances the stored last step.
    app.next_step();
    let alice_last_code = totp_code(&alice_secret, app.now());
    let challenge = app.mfa_token("alice@example.com").await;
    let with_totp = app.login_mfa(&challenge, &alice_last_code).await;
    assert_eq!(with_totp.status, 200, "{}", with_totp.text);

    let bob_session = app.user_with_session("bob@example.com").await;

    let carol_session = app.user_with_session("carol@example.com").await;
    let setup = app
        .post(
            "/api/user/profile/mfa/setup",
            Some(&carol_session),
            json!({"password": PASSWORD}),
        )
        .await;
    assert_eq!(setup.status, 200, "{}", setup.text);
    let carol_pending_secret = setup.body["secret"].as_str().expect("secret").to_owned();
    let wrong = app
        .post(
            "/api/user/profile/mfa/setup",
            Some(&carol_session),
            json!({"password": "not the password at all"}),
        )
        .await;
    assert_eq!(wrong.status, 400, "{}", wrong.text);

    // An anonymous event (unknown account) rides along too.
    assert_eq!(app.login("nobody@example.com", PASSWORD).await.status, 401);

    Installation {
        alice_secret,
        alice_session,
        alice_codes,
        alice_last_code,
        bob_session,
        carol_session,
        carol_pending_secret,
    }
}

async fn export_of(app: &TestApp, key: &MasterKey) -> (Vec<u8>, Counts) {
    let mut out = Vec::new();
    let counts = transfer::export(app.store.as_ref(), key, app.now(), &mut out, &mut |_| {})
        .await
        .expect("export");
    (out, counts)
}

async fn import_into(place: &Place, file: &[u8]) -> Result<Counts, TransferError> {
    let key = place.key();
    let store = server::open_store(&place.config()).await.expect("target opens");
    let result = async {
        ExportFile::open(file)?
            .import_into(store.as_ref(), &key, &mut |_| {})
            .await
    }
    .await;
    store.close().await;
    result
}

/// Record lines of an export: events in file order, everything else sorted (the row order of
/// keyset paging depends on the backend's collation, the content must not).
fn records(file: &[u8]) -> (Vec<String>, Vec<String>) {
    let text = std::str::from_utf8(file).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.first().is_some_and(|line| line.contains("\"header\"")), "{text}");
    let body = &lines[1..lines.len() - 1];
    let mut rows: Vec<String> = body
        .iter()
        .filter(|line| !line.starts_with("{\"type\":\"event\""))
        .map(|line| (*line).to_owned())
        .collect();
    rows.sort();
    let events = body
        .iter()
        .filter(|line| line.starts_with("{\"type\":\"event\""))
        .map(|line| (*line).to_owned())
        .collect();
    (rows, events)
}

/// What users see of their account: session introspection (the user's facts on the session
/// row), MFA status and security events.
async fn visible_state(app: &TestApp, sessions: &[&str]) -> Vec<(Value, Value, Value)> {
    let mut state = Vec::new();
    for session in sessions {
        let introspection = app.get("/api/auth/session", Some(session)).await;
        assert_eq!(introspection.status, 200, "{}", introspection.text);
        let mfa = app.get("/api/user/profile/mfa", Some(session)).await;
        assert_eq!(mfa.status, 200, "{}", mfa.text);
        let events = app
            .get("/api/user/profile/security-events?limit=200", Some(session))
            .await;
        assert_eq!(events.status, 200, "{}", events.text);
        state.push((introspection.body, mfa.body, events.body));
    }
    state
}

/// Builds an installation on `source`, exports it, imports it into `target` (another backend)
/// and proves on a server over the copy that nothing was lost.
async fn moves_without_loss(source: Place, target: Place) {
    let clock = ManualClock::starting_now();
    let app = source.serve(clock.clone()).await;
    let installation = build_installation(&app).await;
    let sessions = [
        installation.alice_session.as_str(),
        installation.bob_session.as_str(),
        installation.carol_session.as_str(),
    ];
    let before = visible_state(&app, &sessions).await;
    let (file, counts) = export_of(&app, &source.key()).await;
    assert_eq!(counts.users, 3, "{counts}");
    assert_eq!(counts.factors, 1, "{counts}");
    assert_eq!(counts.backup_codes, 9, "{counts}");
    assert_eq!(counts.pending_setups, 1, "{counts}");
    assert!(counts.sessions >= 5, "{counts}");
    assert!(counts.events >= 10, "{counts}");
    let header = String::from_utf8_lossy(&file)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        header.contains(&format!("\"source_backend\":\"{}\"", app.store.backend())),
        "{header}"
    );
    // Nothing in the clear: no TOTP secret (base32 as users see it), no backup code, no token.
    let file_text = String::from_utf8_lossy(&file).into_owned();
    for secret in [&installation.alice_secret, &installation.carol_pending_secret] {
        assert!(!file_text.contains(secret.as_str()), "a TOTP secret is in the clear");
    }
    for code in &installation.alice_codes {
        assert!(!file_text.contains(code.as_str()), "a backup code is in the clear");
    }
    for session in sessions {
        assert!(!file_text.contains(session), "a session token is in the clear");
    }

    target.copy_key_from(&source);
    // A webhook cursor already in the target (its webhook ran once, on the empty database)...
    let store = server::open_store(&target.config()).await.expect("target opens");
    assert_eq!(store.webhook_cursor().await.expect("cursor").id, 0);
    store.close().await;
    let imported = import_into(&target, &file).await.expect("import");
    assert_eq!(imported, counts);
    // Importing again is refused: the target is no longer empty.
    match import_into(&target, &file).await {
        Err(TransferError::NotEmpty { users: 3, .. }) => {}
        other => panic!("second import: {other:?}"),
    }

    let copy = target.serve(clock.clone()).await;
    assert_ne!(copy.store.backend(), app.store.backend());
    // Every row, column for column: the copy exports to the same records.
    let (copy_file, copy_counts) = export_of(&copy, &target.key()).await;
    assert_eq!(copy_counts, counts);
    assert_eq!(records(&copy_file), records(&file));
    // ...is moved past the imported events: they are history, not news to deliver again.
    let cursor = copy.store.webhook_cursor().await.expect("cursor");
    assert!(cursor.id > 0);
    let undelivered = copy.store.events_after(cursor, 10).await.expect("outbox");
    assert!(undelivered.is_empty(), "{undelivered:?}");
    // What users see, through their old sessions (which therefore still work).
    assert_eq!(visible_state(&copy, &sessions).await, before);
    let carol_failures = copy
        .count("SELECT mfa_failures FROM users WHERE email = 'carol@example.com'")
        .await;
    assert_eq!(carol_failures, 1);

    // The TOTP step alice last used is still spent (same time, fresh mfa_token).
    let challenge = copy.mfa_token("alice@example.com").await;
    copy.login_mfa(&challenge, &installation.alice_last_code)
        .await
        .assert_problem(401, "/problems/invalid-second-factor");
    // The backup code she used is still used; an unused one works, once.
    copy.login_mfa(&challenge, &installation.alice_codes[0])
        .await
        .assert_problem(401, "/problems/invalid-second-factor");
    let with_code = copy.login_mfa(&challenge, &installation.alice_codes[1]).await;
    assert_eq!(with_code.status, 200, "{}", with_code.text);
    let again = copy.mfa_token("alice@example.com").await;
    copy.login_mfa(&again, &installation.alice_codes[1])
        .await
        .assert_problem(401, "/problems/invalid-second-factor");
    // Password + a fresh TOTP code (the secret opens under the same key).
    copy.next_step();
    let with_totp = copy
        .login_mfa(&again, &totp_code(&installation.alice_secret, copy.now()))
        .await;
    assert_eq!(with_totp.status, 200, "{}", with_totp.text);
    let status = copy
        .get("/api/user/profile/mfa", Some(&installation.alice_session))
        .await;
    assert_eq!(status.body["backup_codes_remaining"], 8, "{}", status.text);
    // Bob logs in with his password alone.
    let bob = copy.login("bob@example.com", PASSWORD).await;
    assert_eq!(bob.status, 200, "{}", bob.text);
    assert!(bob.body["token"].is_string(), "{}", bob.text);
    // Carol finishes the setup she started before the move.
    let verified = copy
        .post(
            "/api/user/profile/mfa/verify",
            Some(&installation.carol_session),
            json!({"code": totp_code(&installation.carol_pending_secret, copy.now())}),
        )
        .await;
    assert_eq!(verified.status, 200, "{}", verified.text);

    copy.stop().await;
    app.stop().await;
}

// ---- both directions ----

#[tokio::test]
async fn sqlite_to_postgres_loses_no_user_factor_code_session_or_event() {
    let Some(database) = postgres_database().await else {
        return;
    };
    moves_without_loss(Place::new(None), Place::new(Some(database))).await;
}

#[tokio::test]
async fn postgres_to_sqlite_loses_no_user_factor_code_session_or_event() {
    let Some(database) = postgres_database().await else {
        return;
    };
    moves_without_loss(Place::new(Some(database)), Place::new(None)).await;
}

// ---- a snapshot while writers go on ----

/// One account and its `user_registered` event, written in one transaction as registration does.
async fn register_directly(store: &dyn tessera::store::Store, n: usize, at: i64) {
    let id = uuid::Uuid::now_v7().to_string();
    let user = tessera::store::NewUser {
        id: id.clone(),
        email: format!("user{n}@example.com"),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
        created_at: at,
    };
    let event = tessera::store::NewEvent {
        user_id: Some(id),
        kind: "user_registered",
        at,
        ip: None,
        user_agent: None,
        request_id: None,
    };
    store.insert_user(&user, &event).await.expect("user inserted");
}

/// Export runs beside a writer that keeps registering accounts. Users are read first and events
/// last, many pages apart: only if every page reads the same snapshot does the file hold exactly
/// one event per user and no event of a user it lacks (which import would refuse).
async fn export_reads_one_snapshot_while_writers_go_on(database: Option<Arc<TestDatabase>>) {
    let place = Place::new(database);
    let store = server::open_store(&place.config()).await.expect("opens");
    let now = 1_764_500_000;
    for n in 0..1_200 {
        register_directly(store.as_ref(), n, now).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let store = store.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 1_200;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                register_directly(store.as_ref(), n, now).await;
                n += 1;
            }
            n
        })
    };
    let key = MasterKey::generate();
    let mut file = Vec::new();
    let counts = transfer::export(store.as_ref(), &key, now, &mut file, &mut |_| {})
        .await
        .expect("export");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.expect("writer");
    store.close().await;

    assert!(counts.users >= 1_200, "{counts}");
    assert!(
        (written as u64) > counts.users,
        "the writer wrote nothing after the snapshot"
    );
    assert_eq!(counts.events, counts.users, "{counts}");
    let target = Place::new(None);
    let target_store = server::open_store(&target.config()).await.expect("target opens");
    let imported = ExportFile::open(&file[..])
        .expect("header")
        .import_into(target_store.as_ref(), &key, &mut |_| {})
        .await
        .expect("the snapshot is consistent");
    target_store.close().await;
    assert_eq!(imported, counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_export_reads_one_snapshot_while_writers_go_on() {
    export_reads_one_snapshot_while_writers_go_on(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_export_reads_one_snapshot_while_writers_go_on() {
    let Some(database) = postgres_database().await else {
        return;
    };
    export_reads_one_snapshot_while_writers_go_on(Some(database)).await;
}

// ---- refusals ----

/// A small installation on SQLite, stopped, with its export.
async fn exported_installation() -> (Place, Vec<u8>) {
    let source = Place::new(None);
    let app = source.serve(ManualClock::starting_now()).await;
    let session = app.user_with_session("alice@example.com").await;
    app.enable_mfa(&session).await;
    app.user_with_session("bob@example.com").await;
    let (file, _) = export_of(&app, &source.key()).await;
    app.stop().await;
    (source, file)
}

async fn users_in(place: &Place) -> i64 {
    let store = server::open_store(&place.config()).await.expect("opens");
    let users = store.list_users().await.expect("users").len();
    store.close().await;
    i64::try_from(users).expect("small")
}

#[tokio::test]
async fn truncated_or_damaged_exports_are_refused_and_leave_the_database_empty() {
    let (source, file) = exported_installation().await;
    let text = String::from_utf8(file).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    let without_end = lines[..lines.len() - 1].join("\n") + "\n";
    let cut_mid_line = &text[..text.len() - 20];
    let backup_line = lines
        .iter()
        .position(|line| line.contains("\"backup_code\""))
        .expect("a backup code line");
    let mut one_code_less = lines.clone();
    one_code_less.remove(backup_line);
    let one_code_less = one_code_less.join("\n") + "\n";
    let mut damaged = lines.clone();
    let broken = damaged[backup_line].replace("\"code_hash\":\"", "\"code_hash\":\"!");
    damaged[backup_line] = &broken;
    let damaged = damaged.join("\n") + "\n";

    for database in [None, postgres_database().await] {
        let target = Place::new(database);
        target.copy_key_from(&source);
        match import_into(&target, without_end.as_bytes()).await {
            Err(error @ TransferError::Truncated { .. }) => {
                assert!(error.to_string().contains("truncated"), "{error}")
            }
            other => panic!("without end line: {other:?}"),
        }
        match import_into(&target, cut_mid_line.as_bytes()).await {
            Err(TransferError::CutOff { line }) => assert_eq!(line as usize, lines.len()),
            other => panic!("cut mid-line: {other:?}"),
        }
        match import_into(&target, one_code_less.as_bytes()).await {
            Err(error @ TransferError::CountMismatch { .. }) => {
                assert!(error.to_string().contains("9 backup codes"), "{error}")
            }
            other => panic!("a line missing: {other:?}"),
        }
        match import_into(&target, damaged.as_bytes()).await {
            Err(error @ TransferError::BadLine { .. }) => {
                assert!(
                    error.to_string().starts_with(&format!("line {}: ", backup_line + 1)),
                    "{error}"
                )
            }
            other => panic!("damaged line: {other:?}"),
        }
        assert_eq!(users_in(&target).await, 0, "a refused import left rows behind");
        // The complete file still imports afterwards: nothing half-done was left.
        let counts = import_into(&target, text.as_bytes()).await.expect("complete file");
        assert_eq!(counts.users, 2);
    }
}

#[tokio::test]
async fn a_sealed_secret_moved_to_another_user_is_refused_with_its_line_number() {
    let (source, file) = exported_installation().await;
    let text = String::from_utf8(file).expect("UTF-8");
    let mut lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    let alice = lines
        .iter()
        .position(|line| line["email"] == "alice@example.com")
        .expect("alice");
    let bob = lines
        .iter()
        .position(|line| line["email"] == "bob@example.com")
        .expect("bob");
    for column in ["mfa_secret", "mfa_enabled_at", "mfa_last_step", "backup_salt"] {
        let value = lines[alice][column].clone();
        lines[bob][column] = value;
    }
    let tampered: String = lines.iter().map(|line| format!("{line}\n")).collect();
    let target = Place::new(None);
    target.copy_key_from(&source);
    match import_into(&target, tampered.as_bytes()).await {
        Err(error @ TransferError::BadLine { .. }) => {
            let message = error.to_string();
            assert!(message.starts_with(&format!("line {}: ", bob + 1)), "{message}");
            assert!(message.contains("does not open"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(users_in(&target).await, 0);
}

// ---- the real binary ----

/// `tessera ARGS` without the developer's `TESSERA_*` variables (see tests/cli.rs).
fn tessera(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TESSERA_") {
            command.env_remove(name);
        }
    }
    // The summary or error must be the last line, not a backtrace.
    command
        .env("TESSERA_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    command
}

fn with_flags(mut command: Command, place: &Place) -> Command {
    command.args(place.database_flags());
    command
}

struct Finished {
    success: bool,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs a command to its end with `input` on stdin.
fn run(mut command: Command, input: &[u8]) -> Finished {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tessera starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().expect("tessera finishes");
    writer.join().expect("stdin writer");
    Finished {
        success: output.status.success(),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The last non-empty line of stderr: what the operator reads.
fn last_line(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or_default()
}

/// A failure is one line on stderr (no "Caused by" chain, no backtrace, no log noise).
fn assert_one_clear_line(failed: &Finished, needle: &str) {
    assert!(!failed.success, "{}", failed.stderr);
    let lines: Vec<&str> = failed.stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", failed.stderr);
    assert!(lines[0].starts_with("Error: "), "{}", failed.stderr);
    assert!(lines[0].contains(needle), "{needle:?} not in {}", failed.stderr);
}

#[tokio::test]
async fn the_binary_streams_an_export_from_stdout_into_an_import_on_stdin() {
    let (source, _) = exported_installation().await;
    let target = Place::new(postgres_database().await);
    target.copy_key_from(&source);

    // tessera export - | tessera import -
    let mut export = with_flags(tessera(&["export", "-"]), &source)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("export starts");
    let pipe = export.stdout.take().expect("stdout");
    let import = with_flags(tessera(&["import", "-"]), &target)
        .stdin(Stdio::from(pipe))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("import starts");
    let exported = export.wait_with_output().expect("export finishes");
    let imported = import.wait_with_output().expect("import finishes");
    let export_log = String::from_utf8_lossy(&exported.stderr);
    let import_log = String::from_utf8_lossy(&imported.stderr);
    assert!(exported.status.success(), "{export_log}");
    assert!(imported.status.success(), "{import_log}");
    assert!(
        last_line(&export_log).starts_with("exported 2 users (1 with MFA), 10 backup codes"),
        "{export_log}"
    );
    assert!(
        last_line(&import_log).starts_with("imported 2 users (1 with MFA), 10 backup codes"),
        "{import_log}"
    );
    assert!(imported.stdout.is_empty());
    assert_eq!(users_in(&target).await, 2);

    // The copy serves: alice still needs her second factor.
    let copy = target.serve(ManualClock::starting_now()).await;
    let login = copy.login("alice@example.com", PASSWORD).await;
    assert_eq!(login.body["mfa_required"], true, "{}", login.text);
    copy.stop().await;

    // A file export: created 0600, never over an existing file.
    let file = source.dir.path().join("export.jsonl");
    let written = run(with_flags(tessera(&["export", text(&file)]), &source), b"");
    assert!(written.success, "{}", written.stderr);
    assert!(written.stdout.is_empty());
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).expect("file").permissions());
    assert_eq!(mode & 0o777, 0o600);
    let again = run(with_flags(tessera(&["export", text(&file)]), &source), b"");
    assert_one_clear_line(&again, "never overwrites");
    // And that file imports like the stream did.
    let from_file = Place::new(None);
    from_file.copy_key_from(&source);
    let imported = run(with_flags(tessera(&["import", text(&file)]), &from_file), b"");
    assert!(imported.success, "{}", imported.stderr);
    assert_eq!(users_in(&from_file).await, 2);
}

#[tokio::test]
async fn the_binary_refuses_a_non_empty_target_another_key_and_a_truncated_file() {
    let (source, file) = exported_installation().await;

    // A target that already has a user: refused, one clear line, nothing changed.
    let occupied = Place::new(None);
    occupied.copy_key_from(&source);
    let app = occupied.serve(ManualClock::starting_now()).await;
    app.user_with_session("someone@example.com").await;
    app.stop().await;
    let refused = run(with_flags(tessera(&["import", "-"]), &occupied), &file);
    assert_one_clear_line(&refused, "target database is not empty (1 users");
    assert_eq!(users_in(&occupied).await, 1);

    // Another master key: refused before anything is created.
    let elsewhere = Place::new(None);
    let other_key = MasterKey::generate().to_base64();
    let mut command = with_flags(tessera(&["import", "-"]), &elsewhere);
    command.env("TESSERA_SECRET_KEY", other_key.as_str());
    let refused = run(command, &file);
    assert_one_clear_line(&refused, "the export names master key");
    assert!(
        !elsewhere.data_dir().exists(),
        "a refused import created the data directory"
    );

    // No key at all: refused the same way, pointing at the key file.
    let refused = run(with_flags(tessera(&["import", "-"]), &elsewhere), &file);
    assert_one_clear_line(&refused, "secret.key");
    assert!(!elsewhere.data_dir().exists());

    // The right key, but the file lost its end: refused, the new database stays empty.
    let target = Place::new(None);
    target.copy_key_from(&source);
    let text = String::from_utf8(file).expect("UTF-8");
    let cut = text.lines().take(3).collect::<Vec<_>>().join("\n") + "\n";
    let refused = run(with_flags(tessera(&["import", "-"]), &target), cut.as_bytes());
    assert_one_clear_line(&refused, "truncated: it ends after line 3");
    assert_eq!(users_in(&target).await, 0);
    assert!(refused.stdout.is_empty());
}
