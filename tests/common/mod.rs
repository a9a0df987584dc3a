//! Test harness: the real router on port 0 with a fresh data directory (and, on PostgreSQL, a
//! freshly created database), a manual clock, typed request helpers, and a TOTP reference
//! implementation independent of the server's code.
//!
//! Backends: the suites run on SQLite. The same suite files are compiled a second time into the
//! `postgres_*` test binaries (`tests/postgres_journeys.rs`), which run every test on its own
//! new PostgreSQL database named by `TESSERA_TEST_DATABASE_URL` and dropped afterwards. Without
//! that variable those binaries run on SQLite again and say so once, unless
//! `TESSERA_REQUIRE_POSTGRES=1` (set by `.ci/run`), which makes them fail instead.
#![allow(dead_code)]

pub mod process;

use axum::Router;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tessera::clock::{Clock, ManualClock};
use tessera::config::Config;
use tessera::http::AppState;
use tessera::server;
use tessera::store::Store;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PASSWORD: &str = "correct horse battery staple";

/// Options for [`spawn_with`].
pub struct Options {
    pub configure: Box<dyn FnOnce(&mut Config) + Send>,
    pub extra_routes: Router<AppState>,
    pub data_dir: Option<(PathBuf, Option<Arc<tempfile::TempDir>>)>,
    /// The PostgreSQL database to reuse (a restart); a new one is created otherwise.
    pub database: Option<Arc<TestDatabase>>,
    pub clock: Option<ManualClock>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            configure: Box::new(|_| {}),
            extra_routes: Router::new(),
            data_dir: None,
            database: None,
            clock: None,
        }
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub clock: ManualClock,
    pub store: Arc<dyn Store>,
    pub service: Arc<tessera::service::Service>,
    pub data_dir: PathBuf,
    /// The PostgreSQL database of this app, `None` on SQLite.
    pub database: Option<Arc<TestDatabase>>,
    dir_guard: Option<Arc<tempfile::TempDir>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_with(Options::default()).await
}

pub async fn spawn_with(options: Options) -> TestApp {
    let (data_dir, dir_guard) = match options.data_dir {
        Some(existing) => existing,
        None => {
            let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
            (dir.path().join("data"), Some(dir))
        }
    };
    let clock = options.clock.unwrap_or_else(ManualClock::starting_now);
    let database = match options.database {
        Some(database) => Some(database),
        None if backend_is_postgres() => Some(Arc::new(TestDatabase::create().await)),
        None => None,
    };
    let mut config = Config {
        data_dir: data_dir.clone(),
        database_url: database.as_ref().map(|database| database.url.clone()),
        // Most journeys log in often from 127.0.0.1 under a frozen clock; the rate-limit
        // tests switch it back on explicitly.
        ip_rate_limit_per_minute: 0,
        ..Config::default()
    };
    (options.configure)(&mut config);
    let opened = server::open(&config, Arc::new(clock.clone()))
        .await
        .expect("service opens");
    let store = opened.store.clone();
    let service = opened.service.clone();
    let router = tessera::http::router_with(opened.state.clone(), options.extra_routes);
    let listener = server::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let webhook = config.webhook.clone().map(|webhook| {
        tessera::webhook::spawn(opened.service.store().clone(), webhook, opened.service.clock().clone())
    });
    let server = tokio::spawn(async move {
        let result = server::run(listener, router, config.connections, async move {
            let _ = rx.await;
        })
        .await;
        if let Some(task) = webhook {
            task.abort();
        }
        result
    });
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client: http_client(),
        clock,
        store,
        service,
        data_dir,
        database,
        dir_guard,
        shutdown: Some(tx),
        server: Some(server),
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the RFC 7807 envelope of the seeds, with its status, type and content type.
    pub fn assert_problem(&self, status: u16, problem_type: &str) {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "body: {}",
            self.text
        );
        let b = &self.body;
        assert_eq!(b["type"], problem_type, "body: {}", self.text);
        assert_eq!(b["status"], status);
        for member in ["title", "detail", "instance", "error", "requestId"] {
            assert!(b[member].is_string(), "member {member} missing in {}", self.text);
        }
        assert!(b["details"].is_object(), "details missing in {}", self.text);
        assert_eq!(b["error"], b["detail"]);
        assert_eq!(
            Some(b["requestId"].as_str().unwrap_or_default()),
            self.header("x-request-id")
        );
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        reply_to(request).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        let mut request = self.client.post(self.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    pub async fn register(&self, email: &str) -> Reply {
        self.post(
            "/api/auth/register",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.post("/api/auth/login", None, json!({"email": email, "password": password}))
            .await
    }

    /// Registers and logs in; returns the session token.
    pub async fn user_with_session(&self, email: &str) -> String {
        assert_eq!(self.register(email).await.status, 201);
        self.session_for(email).await
    }

    pub async fn session_for(&self, email: &str) -> String {
        let reply = self.login(email, PASSWORD).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.body["token"].as_str().expect("token").to_owned()
    }

    /// Logs in a user with MFA on and returns the `mfa_token` of the second step.
    pub async fn mfa_token(&self, email: &str) -> String {
        let reply = self.login(email, PASSWORD).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.body["mfa_required"], true, "{}", reply.text);
        reply.body["mfa_token"].as_str().expect("mfa_token").to_owned()
    }

    pub async fn login_mfa(&self, mfa_token: &str, code: &str) -> Reply {
        self.post(
            "/api/auth/login/mfa",
            None,
            json!({"mfa_token": mfa_token, "code": code}),
        )
        .await
    }

    pub fn now(&self) -> i64 {
        self.clock.now().unix_timestamp()
    }

    /// Starts setup and verifies it with a code computed here; returns (secret, backup codes).
    pub async fn enable_mfa(&self, token: &str) -> (String, Vec<String>) {
        let setup = self
            .post(
                "/api/user/profile/mfa/setup",
                Some(token),
                json!({"password": PASSWORD}),
            )
            .await;
        assert_eq!(setup.status, 200, "{}", setup.text);
        let secret = setup.body["secret"].as_str().expect("secret").to_owned();
        let code = totp_code(&secret, self.now());
        let verify = self
            .post("/api/user/profile/mfa/verify", Some(token), json!({"code": code}))
            .await;
        assert_eq!(verify.status, 200, "{}", verify.text);
        let codes = verify.body["backup_codes"]
            .as_array()
            .expect("codes")
            .iter()
            .map(|c| c.as_str().expect("code").to_owned())
            .collect();
        (secret, codes)
    }

    /// Moves the clock to the start of the next 30-second step, so a fresh code is due.
    pub fn next_step(&self) {
        let now = self.now();
        let next = (now / 30 + 1) * 30;
        self.clock.advance(time::Duration::seconds(next - now));
    }

    /// A connection of the test's own to the app's database, to check what it holds.
    pub async fn db(&self) -> TestDb {
        match &self.database {
            Some(database) => TestDb::Postgres(database.pool().await),
            None => {
                let path = self.data_dir.join(server::DATABASE_FILE);
                TestDb::Sqlite(
                    sqlx::sqlite::SqlitePoolOptions::new()
                        .max_connections(1)
                        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(path))
                        .await
                        .expect("db opens"),
                )
            }
        }
    }

    /// The single integer `sql` selects (a count, a column of one row).
    pub async fn count(&self, sql: &'static str) -> i64 {
        let db = self.db().await;
        let n = db.integer(sql).await;
        db.close().await;
        n
    }

    /// A configuration that opens this app's database (data directory and URL), for tests that
    /// open the service a second time, as an operator command would.
    pub fn config(&self) -> Config {
        Config {
            data_dir: self.data_dir.clone(),
            database_url: self.database.as_ref().map(|database| database.url.clone()),
            ..Config::default()
        }
    }

    /// On SQLite, stops the app and returns the bytes of its database file and WAL, for tests
    /// that check what never reaches the disk; `None` on PostgreSQL (no file to read).
    pub async fn stop_and_read_database_files(self) -> Option<Vec<u8>> {
        if self.database.is_some() {
            return None;
        }
        let stopped = self.stop().await;
        let mut raw = std::fs::read(data_file(&stopped.data_dir)).expect("database file");
        raw.extend(std::fs::read(stopped.data_dir.join("tessera.db-wal")).unwrap_or_default());
        Some(raw)
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) -> Stopped {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server ran");
        }
        self.store.close().await;
        Stopped {
            data_dir: self.data_dir.clone(),
            dir_guard: self.dir_guard.take(),
            database: self.database.take(),
            clock: self.clock.clone(),
        }
    }

    /// Stops this instance and starts a new one on the same data, database and clock.
    pub async fn restart(self) -> TestApp {
        self.stop().await.start_again().await
    }

    pub fn shutdown_handle(&mut self) -> (oneshot::Sender<()>, JoinHandle<std::io::Result<()>>) {
        (
            self.shutdown.take().expect("shutdown"),
            self.server.take().expect("server"),
        )
    }
}

/// A checkpoint that holds the request reaching `name` (see `tessera::service::Checkpoint`)
/// until the returned sender fires; `reached` fires when it gets there.
pub struct Held {
    pub reached: oneshot::Receiver<()>,
    pub release: oneshot::Sender<()>,
}

impl TestApp {
    /// Holds the next request that reaches the checkpoint `name` between its checks and its
    /// commit; other checkpoints pass.
    pub fn hold_at(&self, name: &'static str) -> Held {
        let (reached_tx, reached) = oneshot::channel();
        let (release, release_rx) = oneshot::channel::<()>();
        let slot = Arc::new(std::sync::Mutex::new(Some((reached_tx, release_rx))));
        self.service.set_checkpoint(Some(Arc::new(move |at| {
            let taken = if at == name { slot.lock().unwrap().take() } else { None };
            Box::pin(async move {
                if let Some((reached, release)) = taken {
                    let _ = reached.send(());
                    let _ = release.await;
                }
            })
        })));
        Held { reached, release }
    }
}

/// What is left of a stopped app: its data directory, database and clock.
pub struct Stopped {
    pub data_dir: PathBuf,
    pub dir_guard: Option<Arc<tempfile::TempDir>>,
    pub database: Option<Arc<TestDatabase>>,
    pub clock: ManualClock,
}

impl Stopped {
    pub async fn start_again(self) -> TestApp {
        spawn_with(Options {
            data_dir: Some((self.data_dir, self.dir_guard)),
            database: self.database,
            clock: Some(self.clock),
            ..Options::default()
        })
        .await
    }

    /// A configuration that opens the stopped app's database.
    pub fn config(&self) -> Config {
        Config {
            data_dir: self.data_dir.clone(),
            database_url: self.database.as_ref().map(|database| database.url.clone()),
            ..Config::default()
        }
    }
}

// ---- backends ----

/// True in the `postgres_*` test binaries (see the module documentation).
pub fn backend_is_postgres() -> bool {
    static POSTGRES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *POSTGRES.get_or_init(|| {
        let binary = std::env::current_exe().expect("test binary path");
        let name = binary.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !name.starts_with("postgres_") {
            return false;
        }
        if postgres_url().is_some() {
            return true;
        }
        assert!(
            std::env::var("TESSERA_REQUIRE_POSTGRES").is_err(),
            "TESSERA_REQUIRE_POSTGRES is set but TESSERA_TEST_DATABASE_URL is not"
        );
        eprintln!("note: TESSERA_TEST_DATABASE_URL is not set; this PostgreSQL suite runs on SQLite");
        false
    })
}

/// The PostgreSQL server for a PostgreSQL-only test; `None` (the test returns at once, with a
/// note) when none is configured, a panic instead when `TESSERA_REQUIRE_POSTGRES` is set.
pub fn postgres_or_skip() -> Option<String> {
    let url = postgres_url();
    if url.is_none() {
        assert!(
            std::env::var("TESSERA_REQUIRE_POSTGRES").is_err(),
            "TESSERA_REQUIRE_POSTGRES is set but TESSERA_TEST_DATABASE_URL is not"
        );
        eprintln!("note: TESSERA_TEST_DATABASE_URL is not set; this PostgreSQL test does nothing");
    }
    url
}

/// The server named by `TESSERA_TEST_DATABASE_URL` (any database on it; tests create their own).
pub fn postgres_url() -> Option<String> {
    std::env::var("TESSERA_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// A PostgreSQL database made for one test and dropped (with its connections) when the last
/// handle goes away.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let admin_url = postgres_url().expect("TESSERA_TEST_DATABASE_URL");
        let name = format!("tessera_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = admin_connection(&admin_url).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let _ = sqlx::Connection::close(admin).await;
        let url = with_database(&admin_url, &name);
        TestDatabase { name, url, admin_url }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .expect("test database opens")
    }
}

async fn admin_connection(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|err| panic!("cannot reach the PostgreSQL of TESSERA_TEST_DATABASE_URL: {err}"))
}

/// `url` with its database path replaced by `database` (query parameters kept).
pub fn with_database(url: &str, database: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).expect("TESSERA_TEST_DATABASE_URL is a URL");
    parsed.set_path(&format!("/{database}"));
    parsed.to_string()
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; a thread with its own runtime can block on it.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut admin = admin_connection(&admin_url).await;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(_))) {
            eprintln!("warning: test database {} was not dropped", self.name);
        }
    }
}

/// The test's own connection to an app's database, on either backend. The SQL the suites use
/// is plain enough to mean the same on both.
pub enum TestDb {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl TestDb {
    pub async fn integer(&self, sql: &'static str) -> i64 {
        match self {
            TestDb::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            TestDb::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
    }

    pub async fn text(&self, sql: &'static str) -> String {
        match self {
            TestDb::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            TestDb::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
    }

    pub async fn texts(&self, sql: &'static str) -> Vec<String> {
        match self {
            TestDb::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
            TestDb::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
        }
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
    }

    pub async fn bytes(&self, sql: &'static str) -> Vec<Vec<u8>> {
        match self {
            TestDb::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
            TestDb::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
        }
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
    }

    pub async fn execute(&self, sql: &'static str) -> u64 {
        match self {
            TestDb::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(|done| done.rows_affected()),
            TestDb::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(|done| done.rows_affected()),
        }
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
    }

    pub async fn close(self) {
        match self {
            TestDb::Sqlite(pool) => pool.close().await,
            TestDb::Postgres(pool) => pool.close().await,
        }
    }
}

/// An HTTP client for tests (the crate's reqwest has no built-in TLS provider; install ours).
pub fn http_client() -> reqwest::Client {
    tessera::webhook::install_crypto_provider();
    reqwest::Client::new()
}

/// Sends a request and keeps status, headers and body (parsed as JSON when it is JSON).
pub async fn reply_to(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// Sends `count` requests at once and returns their statuses.
pub async fn concurrently(count: usize, make: impl Fn(usize) -> reqwest::RequestBuilder) -> Vec<u16> {
    let requests: Vec<_> = (0..count).map(|i| tokio::spawn(make(i).send())).collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.expect("task").expect("response").status().as_u16());
    }
    statuses
}

pub fn data_file(dir: &Path) -> PathBuf {
    dir.join(server::DATABASE_FILE)
}

// ---- TOTP reference implementation (RFC 4226 / RFC 6238), independent of tessera::domain ----

fn base32_decode(input: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits: u64 = 0;
    let mut count = 0;
    let mut out = Vec::new();
    for c in input.bytes().filter(|c| *c != b'=') {
        let value = ALPHABET
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())
            .expect("base32 char") as u64;
        bits = (bits << 5) | value;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

/// HOTP-SHA1 with 6 digits.
pub fn hotp_sha1(key: &[u8], counter: u64) -> String {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = (digest[19] & 0x0f) as usize;
    let value = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    format!("{:06}", value % 1_000_000)
}

/// The 6-digit TOTP code of a base32 secret at unix time `at`.
pub fn totp_code(secret_base32: &str, at: i64) -> String {
    hotp_sha1(&base32_decode(secret_base32), (at / 30) as u64)
}

/// A code that is certainly wrong for `secret` at `at` (and its neighbours).
pub fn wrong_code(secret: &str, at: i64) -> String {
    let taken: Vec<String> = (-2..=2).map(|d| totp_code(secret, at + d * 30)).collect();
    (0..1_000_000u32)
        .map(|n| format!("{n:06}"))
        .find(|c| !taken.contains(c))
        .expect("a free code")
}

#[test]
fn reference_totp_matches_rfc_6238_vector() {
    // RFC 6238 Appendix B, SHA1, T = 59: 94287082 -> 6 digits 287082.
    let key = b"12345678901234567890";
    assert_eq!(hotp_sha1(key, 1), "287082");
    // RFC 4226 Appendix D, counter 0: 755224.
    assert_eq!(hotp_sha1(key, 0), "755224");
    assert_eq!(base32_decode("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"), key.to_vec());
}
