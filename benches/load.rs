//! The load harness: `cargo bench --bench load -- [options]` (see `--help` and BENCHMARKS.md).
//!
//! Starts the release `tessera serve` binary as a child process on a fresh data directory
//! (SQLite, or PostgreSQL with `--database-url`), seeds N users with MFA on through the
//! library's store (one import transaction: a password hash computed once, a sealed TOTP
//! secret and a session per user), drives the server from loopback with its own keep-alive
//! HTTP/1 client, and prints one table: requests/s, p50, p99, p99.9 and the server's peak RSS
//! for each workload, next to baselines measured in the same run by a bare axum server inside
//! this process (same JSON, a single-row primary-key read, a conditional single-row write, on
//! the same database with the same pool settings). Everything is bounded in requests and time
//! and only 127.0.0.1 is used. Speed is reported here, never asserted in tests.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tessera::domain::password::{self, Password};
use tessera::domain::sealing::MasterKey;
use tessera::domain::token::{PlainToken, TokenKind};
use tessera::store::{NewEvent, SessionRecord, SessionRow, Store, UserRow};

const PASSWORD: &str = "load-harness-password-7f3a";
/// Measured windows of introspection during the login flood (the isolation ratio is their median).
const ISOLATION_WINDOWS: usize = 3;
const USAGE: &str = "\
usage: cargo bench --bench load -- [options]
  --users N             users seeded with MFA on, 1000..=100000 [10000]
  --connections N       client connections per workload [64]
  --requests N          requests per read workload and round (introspection with the access
                        log off and on, bare read, bare JSON) [50000]
  --rounds N            interleaved rounds of the read workloads, 1..=20 [9]
  --mfa-requests N      second-factor requests (and bare writes), one per user, split over the
                        rounds (at most users/2) [20000]
  --login-requests N    password logins [400]
  --max-seconds S       upper bound of each workload's duration [20]
  --after-seconds S     wait S seconds after the password workloads and report the RSS [0]
  --binary PATH         the tessera binary [target/release/tessera]
  --database-url URL    postgres://... : seed and serve PostgreSQL instead of SQLite
  --log-file PATH       where the server's log goes [a file in the temporary data dir]";

#[derive(Debug, Clone)]
struct Options {
    users: usize,
    connections: usize,
    requests: usize,
    mfa_requests: usize,
    login_requests: usize,
    max_seconds: u64,
    after_seconds: u64,
    rounds: usize,
    binary: PathBuf,
    database_url: Option<String>,
    log_file: Option<PathBuf>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        users: 10_000,
        connections: 64,
        requests: 50_000,
        mfa_requests: 20_000,
        login_requests: 400,
        max_seconds: 20,
        after_seconds: 0,
        rounds: 9,
        binary: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/tessera"),
        database_url: None,
        log_file: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // `cargo bench` passes `--bench` to every bench binary.
        if arg == "--bench" {
            continue;
        }
        if arg == "--help" || arg == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        let number = |text: String| {
            text.parse::<u64>()
                .map_err(|_| format!("{arg} needs a whole number, not {text:?}"))
        };
        match arg.as_str() {
            "--users" => options.users = number(value()?)? as usize,
            "--connections" => options.connections = number(value()?)? as usize,
            "--requests" => options.requests = number(value()?)? as usize,
            "--mfa-requests" => options.mfa_requests = number(value()?)? as usize,
            "--login-requests" => options.login_requests = number(value()?)? as usize,
            "--max-seconds" => options.max_seconds = number(value()?)?,
            "--after-seconds" => options.after_seconds = number(value()?)?,
            "--rounds" => options.rounds = number(value()?)? as usize,
            "--binary" => options.binary = PathBuf::from(value()?),
            "--database-url" => options.database_url = Some(value()?),
            "--log-file" => options.log_file = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option {other:?} (see --help)")),
        }
    }
    if !(1_000..=100_000).contains(&options.users) {
        return Err("--users must be between 1000 and 100000".into());
    }
    if !(1..=1_000).contains(&options.connections) {
        return Err("--connections must be between 1 and 1000".into());
    }
    if !(1..=20).contains(&options.rounds) {
        return Err("--rounds must be between 1 and 20".into());
    }
    if options.requests == 0 || options.login_requests == 0 || options.mfa_requests == 0 {
        return Err("request counts must be positive".into());
    }
    if !(1..=600).contains(&options.max_seconds) || options.after_seconds > 600 {
        return Err("--max-seconds must be 1..=600 and --after-seconds at most 600".into());
    }
    options.mfa_requests = options.mfa_requests.min(options.users / 2);
    if let Some(url) = &options.database_url
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        return Err("--database-url must be a postgres:// URL (SQLite is the default)".into());
    }
    if !options.binary.is_file() {
        return Err(format!(
            "no tessera binary at {}; run `cargo build --release` first or pass --binary",
            options.binary.display()
        ));
    }
    Ok(options)
}

fn main() {
    // The baseline server runs as a child process of its own (like the server under test):
    // `load --serve-baseline DIR PORT`, see `start_bare`.
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|arg| arg == "--serve-baseline") {
        let (Some(dir), Some(port)) = (args.get(at + 1), args.get(at + 2)) else {
            eprintln!("load: --serve-baseline needs DIR PORT");
            std::process::exit(2);
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        if let Err(message) = runtime.block_on(serve_bare(PathBuf::from(dir), port.parse().unwrap_or(0))) {
            eprintln!("load: baseline server: {message}");
            std::process::exit(1);
        }
        return;
    }
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("load: {message}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(message) = runtime.block_on(run(options)) {
        eprintln!("load: {message}");
        std::process::exit(1);
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Progress on a terminal only: one line rewritten in place.
fn progress(line: &str) {
    let mut stderr = std::io::stderr();
    if stderr.is_terminal() {
        let _ = write!(stderr, "\r\x1b[2K{line}");
        let _ = stderr.flush();
    }
}

fn progress_done() {
    progress("");
}

// ---------------------------------------------------------------------------------------------
// RFC 6238, written here so the harness does not trust the code it measures.

fn totp(secret: &[u8], unix: i64) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let counter = (unix / 30) as u64;
    let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(secret).expect("any key length");
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let value = u32::from_be_bytes([
        digest[offset],
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]) & 0x7fff_ffff;
    format!("{:06}", value % 1_000_000)
}

/// The TOTP secret of user `index`: derived, so the harness needs to keep nothing.
fn secret_of(index: usize) -> [u8; 20] {
    let digest = Sha256::digest(format!("load-harness-secret-{index}").as_bytes());
    let mut secret = [0u8; 20];
    secret.copy_from_slice(&digest[..20]);
    secret
}

fn email_of(index: usize) -> String {
    format!("user{index}@load.example")
}

// ---------------------------------------------------------------------------------------------
// Seeding through the library's store.

struct Seeded {
    user_ids: Vec<String>,
    session_tokens: Vec<String>,
    password_hash: String,
    key: MasterKey,
}

async fn open_store(options: &Options, data_dir: &Path) -> Result<Arc<dyn Store>, String> {
    let store: Arc<dyn Store> = match &options.database_url {
        None => Arc::new(
            tessera::store::sqlite::SqliteStore::open_file(&data_dir.join(tessera::server::DATABASE_FILE))
                .await
                .map_err(|err| format!("cannot open the SQLite database: {err}"))?,
        ),
        Some(url) => Arc::new(
            tessera::store::postgres::PgStore::connect(url, Default::default())
                .await
                .map_err(|err| format!("cannot connect to PostgreSQL: {err}"))?,
        ),
    };
    store
        .migrate()
        .await
        .map_err(|err| format!("migrations failed: {err}"))?;
    Ok(store)
}

async fn seed(options: &Options, store: &dyn Store) -> Result<Seeded, String> {
    let started = Instant::now();
    let key = MasterKey::generate();
    let password_hash = tokio::task::spawn_blocking(|| password::hash(&Password::candidate(PASSWORD.into())))
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| format!("hashing failed: {err}"))?
        .0;
    let now = now_unix();
    let mut import = store
        .begin_import()
        .await
        .map_err(|err| format!("cannot start the seeding transaction: {err}"))?;
    let (users, _) = import.existing().await.map_err(|err| err.to_string())?;
    if users != 0 {
        return Err("the database already holds users; the harness seeds a fresh one".into());
    }
    let mut user_ids = Vec::with_capacity(options.users);
    let mut session_tokens = Vec::with_capacity(options.users);
    let chunk = 5_000;
    for start in (0..options.users).step_by(chunk) {
        let end = (start + chunk).min(options.users);
        let mut users = Vec::with_capacity(end - start);
        let mut sessions = Vec::with_capacity(end - start);
        for index in start..end {
            let id = uuid::Uuid::now_v7().to_string();
            users.push(UserRow {
                id: id.clone(),
                email: email_of(index),
                password_hash: password_hash.clone(),
                created_at: now - 3_600,
                disabled_at: None,
                mfa_secret: Some(key.seal(&secret_of(index), id.as_bytes())),
                mfa_enabled_at: Some(now - 3_600),
                mfa_last_step: None,
                backup_salt: Some(secret_of(index)[..16].to_vec()),
                mfa_failures: 0,
                mfa_locked_until: None,
                password_failures: 0,
                password_locked_until: None,
                last_login_network: None,
                mfa_totp_suspended_at: None,
            });
            let token = PlainToken::generate(TokenKind::Session);
            sessions.push(SessionRow {
                record: SessionRecord {
                    token_hash: token.hash(),
                    public_id: uuid::Uuid::now_v7().to_string(),
                    user_id: id.clone(),
                    created_at: now,
                    // Seen "two minutes from now" (the clock skew Tessera tolerates): it writes
                    // `last_seen_at` at most once a minute per session, so for three minutes
                    // no run pays that write and every run measures the same read-only hot
                    // path (BENCHMARKS.md); the harness says so when its reads run longer.
                    last_seen_at: now + tessera::service::accounts::CLOCK_SKEW_SECS,
                    expires_at: now + 12 * 3_600,
                    mfa: true,
                    ip: Some("127.0.0.1".into()),
                    user_agent: Some("load-harness".into()),
                },
                seq: 1,
            });
            session_tokens.push(token.expose().to_owned());
            user_ids.push(id);
        }
        import.insert_users(&users).await.map_err(|err| err.to_string())?;
        import.insert_sessions(&sessions).await.map_err(|err| err.to_string())?;
        progress(&format!("seeding users {end}/{}", options.users));
    }
    import.commit().await.map_err(|err| format!("seeding failed: {err}"))?;
    progress_done();
    eprintln!(
        "seeded {} users with MFA and a session each in {:.1} s",
        options.users,
        started.elapsed().as_secs_f64()
    );
    Ok(Seeded {
        user_ids,
        session_tokens,
        password_hash,
        key,
    })
}

/// One `mfa_token` per user of `users`, stored as the password step would store it.
async fn seed_challenges(
    store: &dyn Store,
    seeded: &Seeded,
    users: std::ops::Range<usize>,
) -> Result<Vec<String>, String> {
    let now = now_unix();
    let total = users.len();
    let mut tokens = Vec::with_capacity(total);
    for (done, index) in users.enumerate() {
        let token = PlainToken::generate(TokenKind::MfaChallenge);
        let user_id = &seeded.user_ids[index];
        let event = NewEvent {
            user_id: Some(user_id.clone()),
            kind: "login_password_ok_mfa_required",
            at: now,
            ip: Some("127.0.0.1".into()),
            user_agent: Some("load-harness".into()),
            request_id: None,
        };
        let stored = store
            .insert_challenge(
                &token.hash(),
                user_id,
                now,
                now + 300,
                &seeded.password_hash,
                None,
                &event,
            )
            .await
            .map_err(|err| format!("cannot seed a challenge: {err}"))?;
        if stored != tessera::store::Consumed::Yes {
            return Err(format!("seeding a challenge was refused: {stored:?}"));
        }
        tokens.push(token.expose().to_owned());
        if done % 500 == 0 {
            progress(&format!("seeding mfa_tokens {done}/{total}"));
        }
    }
    progress_done();
    Ok(tokens)
}

// ---------------------------------------------------------------------------------------------
// The server under test, as a child process.

struct Server {
    child: Child,
    address: SocketAddr,
    cold_start: Duration,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM for a graceful stop, then make sure it is gone.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|err| format!("no free port: {err}"))?;
    Ok(listener.local_addr().map_err(|err| err.to_string())?.port())
}

async fn start_server(
    options: &Options,
    data_dir: &Path,
    key: &MasterKey,
    access_log: bool,
    log: &Path,
) -> Result<Server, String> {
    let port = free_port()?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|err| format!("cannot open the log file {}: {err}", log.display()))?;
    let mut command = Command::new(&options.binary);
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TESSERA_DATA_DIR", data_dir)
        .env("TESSERA_LISTEN", address.to_string())
        .env("TESSERA_SECRET_KEY", key.to_base64().as_str())
        .env("TESSERA_IP_RATE_LIMIT_PER_MINUTE", "0")
        .env("TESSERA_MAX_CONNECTIONS_PER_IP", "4096")
        .env("TESSERA_MAX_CONNECTIONS", "4096")
        .env("TESSERA_ACCESS_LOG", if access_log { "true" } else { "false" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file));
    if let Some(url) = &options.database_url {
        command.env("TESSERA_DATABASE_URL", url);
    }
    let spawned = Instant::now();
    let child = command
        .spawn()
        .map_err(|err| format!("cannot start {}: {err}", options.binary.display()))?;
    let mut server = Server {
        child,
        address,
        cold_start: Duration::ZERO,
    };
    let deadline = spawned + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!(
                "the server exited at start ({status}); see its log {}",
                log.display()
            ));
        }
        if readyz(address).await {
            server.cold_start = spawned.elapsed();
            return Ok(server);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the server was not ready within 30 s; see its log {}",
                log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn readyz(address: SocketAddr) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect(address).await else {
        return false;
    };
    let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        return false;
    };
    tokio::spawn(connection);
    let request = Request::get("/readyz")
        .header(header::HOST, address.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    matches!(sender.send_request(request).await, Ok(response) if response.status() == StatusCode::OK)
}

/// (VmRSS, VmHWM) of a process in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

// ---------------------------------------------------------------------------------------------
// The bare baselines, served by this process on the same database with the same pool settings.

#[derive(Clone)]
enum BarePool {
    /// Tessera's two SQLite pools: readers, and the one writer connection.
    Sqlite {
        readers: sqlx::SqlitePool,
        writer: sqlx::SqlitePool,
    },
    Postgres(sqlx::PgPool),
}

#[derive(Clone)]
struct Bare {
    pool: BarePool,
    json: Arc<serde_json::Value>,
    write_users: Arc<Vec<String>>,
    step: Arc<AtomicI64>,
}

async fn bare_json(State(bare): State<Bare>) -> Response {
    axum::Json(bare.json.as_ref().clone()).into_response()
}

fn bearer_hash(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?;
    Some(Sha256::digest(token.as_bytes()).to_vec())
}

/// One primary-key read of the session row, answered as JSON.
async fn bare_read(State(bare): State<Bare>, headers: HeaderMap) -> Response {
    let Some(hash) = bearer_hash(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    type Row = (String, i64, i64, i64, bool);
    let row: Result<Option<Row>, sqlx::Error> = match &bare.pool {
        BarePool::Sqlite { readers: pool, .. } => {
            sqlx::query_as(
                "SELECT user_id, created_at, expires_at, last_seen_at, mfa FROM sessions WHERE token_hash = ?",
            )
            .bind(hash)
            .fetch_optional(pool)
            .await
        }
        BarePool::Postgres(pool) => {
            sqlx::query_as(
                "SELECT user_id, created_at, expires_at, last_seen_at, mfa FROM sessions WHERE token_hash = $1",
            )
            .bind(hash)
            .fetch_optional(pool)
            .await
        }
    };
    match row {
        Ok(Some((user_id, created_at, expires_at, last_seen_at, mfa))) => axum::Json(serde_json::json!({
            "user_id": user_id, "created_at": created_at, "expires_at": expires_at,
            "last_seen_at": last_seen_at, "mfa": mfa,
        }))
        .into_response(),
        Ok(None) => StatusCode::UNAUTHORIZED.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// The session joined with its user, every column of both (what introspection read before
/// migration 0009 copied the user's public facts onto the session row), answered with a small
/// JSON: a reference for what the join cost, and for a lookup that needs the whole user row.
async fn bare_join(State(bare): State<Bare>, headers: HeaderMap) -> Response {
    let Some(hash) = bearer_hash(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let found = match &bare.pool {
        BarePool::Sqlite { readers: pool, .. } => sqlx::query(
            "SELECT s.token_hash, s.public_id, s.user_id, s.created_at, s.last_seen_at, s.expires_at, \
             s.mfa, s.ip, s.user_agent, u.id, u.email, u.password_hash, u.created_at, u.disabled_at, u.mfa_secret, \
             u.mfa_enabled_at, u.mfa_last_step, u.backup_salt, u.mfa_failures, u.mfa_locked_until, \
             u.password_failures, u.password_locked_until, u.mfa_totp_suspended_at \
             FROM users u JOIN sessions s ON s.user_id = u.id WHERE s.token_hash = ?",
        )
        .bind(hash)
        .fetch_optional(pool)
        .await
        .map(|row| row.map(|row| sqlx::Row::get::<String, _>(&row, 10))),
        BarePool::Postgres(pool) => sqlx::query(
            "SELECT s.token_hash, s.public_id, s.user_id, s.created_at, s.last_seen_at, s.expires_at, \
             s.mfa, s.ip, s.user_agent, u.id, u.email, u.password_hash, u.created_at, u.disabled_at, u.mfa_secret, \
             u.mfa_enabled_at, u.mfa_last_step, u.backup_salt, u.mfa_failures, u.mfa_locked_until, \
             u.password_failures, u.password_locked_until, u.mfa_totp_suspended_at \
             FROM users u JOIN sessions s ON s.user_id = u.id WHERE s.token_hash = $1",
        )
        .bind(hash)
        .fetch_optional(pool)
        .await
        .map(|row| row.map(|row| sqlx::Row::get::<String, _>(&row, 10))),
    };
    match found {
        Ok(Some(email)) => axum::Json(serde_json::json!({"email": email})).into_response(),
        Ok(None) => StatusCode::UNAUTHORIZED.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// One conditional single-row update (the shape of the TOTP replay guard), committed alone.
async fn bare_write(State(bare): State<Bare>, UrlPath(index): UrlPath<usize>) -> Response {
    let user = &bare.write_users[index % bare.write_users.len()];
    let step = bare.step.fetch_add(1, Ordering::Relaxed);
    let result = match &bare.pool {
        BarePool::Sqlite { writer: pool, .. } => sqlx::query(
            "UPDATE users SET mfa_last_step = ?1 WHERE id = ?2 AND (mfa_last_step IS NULL OR mfa_last_step < ?1)",
        )
        .bind(step)
        .bind(user)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()),
        BarePool::Postgres(pool) => sqlx::query(
            "UPDATE users SET mfa_last_step = $1 WHERE id = $2 AND (mfa_last_step IS NULL OR mfa_last_step < $1)",
        )
        .bind(step)
        .bind(user)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()),
    };
    match result {
        Ok(1) => axum::Json(serde_json::json!({"updated": true})).into_response(),
        Ok(_) => StatusCode::CONFLICT.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// Serves the baselines in this (child) process until it is killed. `dir` holds
/// `baseline.json` (the body to return), `write-users.txt` (ids the write endpoint updates) and
/// optionally `database-url.txt`; the SQLite database is `dir/data/tessera.db`.
async fn serve_bare(dir: PathBuf, port: u16) -> Result<(), String> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    let json: serde_json::Value =
        serde_json::from_str(&read("baseline.json").map_err(|err| err.to_string())?).map_err(|err| err.to_string())?;
    let write_users: Vec<String> = read("write-users.txt")
        .map_err(|err| err.to_string())?
        .lines()
        .map(str::to_owned)
        .collect();
    let database_url = read("database-url.txt").ok();
    let pool = bare_pool(database_url.as_deref(), &dir.join("data")).await?;
    let bare = Bare {
        pool,
        json: Arc::new(json),
        write_users: Arc::new(write_users),
        step: Arc::new(AtomicI64::new(1 << 40)),
    };
    let app = Router::new()
        .route("/json", get(bare_json))
        .route("/read", get(bare_read))
        .route("/join", get(bare_join))
        .route("/write/{index}", post(bare_write))
        .with_state(bare);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .map_err(|err| format!("cannot bind the baseline server: {err}"))?;
    axum::serve(listener, app).await.map_err(|err| err.to_string())
}

/// Starts the baseline child process and waits until it answers.
async fn start_bare(dir: &Path, log: &Path) -> Result<Server, String> {
    let port = free_port()?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|err| format!("cannot open the log file {}: {err}", log.display()))?;
    let exe = std::env::current_exe().map_err(|err| err.to_string())?;
    let spawned = Instant::now();
    let child = Command::new(exe)
        .arg("--serve-baseline")
        .arg(dir)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .map_err(|err| format!("cannot start the baseline server: {err}"))?;
    let mut server = Server {
        child,
        address,
        cold_start: Duration::ZERO,
    };
    while spawned.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!("the baseline server exited ({status}); see {}", log.display()));
        }
        if let Some(mut sender) = connect(address).await
            && let Ok(response) = sender
                .send_request(request(Method::GET, address, "/json", None, None))
                .await
            && response.status() == StatusCode::OK
        {
            server.cold_start = spawned.elapsed();
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err("the baseline server did not answer within 30 s".into())
}

async fn bare_pool(database_url: Option<&str>, data_dir: &Path) -> Result<BarePool, String> {
    match database_url {
        None => {
            let path = data_dir.join(tessera::server::DATABASE_FILE);
            let (connect, readers, writer) = tessera::store::sqlite::SqliteStore::pool_settings(
                sqlx::sqlite::SqliteConnectOptions::new().filename(path),
            );
            let writer = writer
                .connect_with(connect.clone())
                .await
                .map_err(|err| err.to_string())?;
            let readers = readers.connect_with(connect).await.map_err(|err| err.to_string())?;
            Ok(BarePool::Sqlite { readers, writer })
        }
        Some(url) => {
            let settings = tessera::store::postgres::PgSettings::default();
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(settings.pool_size)
                .connect(url)
                .await
                .map_err(|err| format!("cannot connect to PostgreSQL: {err}"))?;
            Ok(BarePool::Postgres(pool))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator.

type MakeRequest = Arc<dyn Fn(usize) -> Request<Full<Bytes>> + Send + Sync>;

struct Load {
    label: String,
    address: SocketAddr,
    connections: usize,
    requests: usize,
    max: Duration,
    make: MakeRequest,
    /// Only this status counts as a success.
    expect: StatusCode,
    /// The server's pid, whose RSS is sampled during the run.
    pid: Option<u32>,
    /// Ends the run early when set (the isolation flood stops with the measured run).
    stop: Option<Arc<AtomicBool>>,
    quiet: bool,
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    sent: usize,
    ok: usize,
    failed: usize,
    first_failure: Option<String>,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    peak_rss_kib: Option<u64>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies_us.len()) - 1;
        f64::from(self.latencies_us[index]) / 1_000.0
    }
}

async fn drive(load: Load) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + load.max;
    let stop = load.stop.clone().unwrap_or_default();
    let finished = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = load.pid.map(|pid| {
        let (peak, finished) = (peak.clone(), finished.clone());
        tokio::spawn(async move {
            while !finished.load(Ordering::Relaxed) {
                if let Some((rss, _)) = rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let ticker = (!load.quiet).then(|| {
        let (done, finished, label, total) = (done.clone(), finished.clone(), load.label.clone(), load.requests);
        tokio::spawn(async move {
            while !finished.load(Ordering::Relaxed) {
                let count = done.load(Ordering::Relaxed);
                let rate = count as f64 / started.elapsed().as_secs_f64().max(1e-9);
                progress(&format!("{label}: {count}/{total} ({rate:.0}/s)"));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    let mut workers = Vec::new();
    for _ in 0..load.connections {
        let (next, done, stop, make) = (next.clone(), done.clone(), stop.clone(), load.make.clone());
        let (address, requests, expect) = (load.address, load.requests, load.expect);
        workers.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            let mut sender = None;
            loop {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= requests {
                    break;
                }
                if sender.is_none() {
                    sender = connect(address).await;
                }
                let Some(client) = sender.as_mut() else {
                    outcome.sent += 1;
                    outcome.failed += 1;
                    outcome.first_failure.get_or_insert_with(|| "cannot connect".into());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let request = make(index);
                let sent = Instant::now();
                outcome.sent += 1;
                let answer = match client.send_request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        match response.into_body().collect().await {
                            Ok(body) => Ok((status, body.to_bytes())),
                            Err(err) => Err(err.to_string()),
                        }
                    }
                    Err(err) => Err(err.to_string()),
                };
                let latency = sent.elapsed();
                done.fetch_add(1, Ordering::Relaxed);
                match answer {
                    Ok((status, _)) if status == expect => {
                        outcome.ok += 1;
                        outcome
                            .latencies_us
                            .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    Ok((status, body)) => {
                        outcome.failed += 1;
                        outcome.first_failure.get_or_insert_with(|| {
                            format!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]))
                        });
                    }
                    Err(err) => {
                        outcome.failed += 1;
                        outcome.first_failure.get_or_insert(err);
                        sender = None;
                    }
                }
            }
            outcome
        }));
    }
    let mut total = Outcome::default();
    for worker in workers {
        if let Ok(outcome) = worker.await {
            total.sent += outcome.sent;
            total.ok += outcome.ok;
            total.failed += outcome.failed;
            if total.first_failure.is_none() {
                total.first_failure = outcome.first_failure;
            }
            total.latencies_us.extend(outcome.latencies_us);
        }
    }
    total.elapsed = started.elapsed();
    finished.store(true, Ordering::Relaxed);
    if let Some(task) = sampler {
        let _ = task.await;
        total.peak_rss_kib = Some(peak.load(Ordering::Relaxed));
    }
    if let Some(task) = ticker {
        let _ = task.await;
        progress_done();
    }
    total.latencies_us.sort_unstable();
    total
}

/// The median of per-round values, and the values in round order as printed ("0.98, 1.04, ...").
fn median_and_list(mut values: Vec<f64>) -> (f64, String) {
    let listed = values.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", ");
    values.sort_by(|a, b| a.total_cmp(b));
    (values[values.len() / 2], listed)
}

/// Several runs of one workload as one: counts and durations added, latencies pooled.
fn merge(outcomes: impl Iterator<Item = Outcome>) -> Outcome {
    let mut total = Outcome::default();
    for outcome in outcomes {
        total.sent += outcome.sent;
        total.ok += outcome.ok;
        total.failed += outcome.failed;
        total.elapsed += outcome.elapsed;
        if total.first_failure.is_none() {
            total.first_failure = outcome.first_failure;
        }
        total.latencies_us.extend(outcome.latencies_us);
        total.peak_rss_kib = total.peak_rss_kib.max(outcome.peak_rss_kib);
    }
    total.latencies_us.sort_unstable();
    total
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(address: SocketAddr) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(connection);
    Some(sender)
}

fn request(
    method: Method,
    address: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    body: Option<String>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, address.to_string())
        .header(header::USER_AGENT, "tessera-load-harness");
    if let Some(token) = bearer {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(json) => {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(json)
        }
        None => Bytes::new(),
    };
    builder.body(Full::new(body)).expect("a valid request")
}

// ---------------------------------------------------------------------------------------------
// The run.

struct Row {
    workload: String,
    outcome: Outcome,
    /// (what it is compared with, ratio) for the rate and for p99.
    versus: String,
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |kib| format!("{:.1}", kib as f64 / 1024.0))
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

async fn run(options: Options) -> Result<(), String> {
    let temp = tempfile::Builder::new()
        .prefix("tessera-load-")
        .tempdir()
        .map_err(|err| format!("cannot create a temporary directory: {err}"))?;
    let data_dir = temp.path().join("data");
    std::fs::create_dir(&data_dir).map_err(|err| err.to_string())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)).map_err(|err| err.to_string())?;
    }
    let log = options
        .log_file
        .clone()
        .unwrap_or_else(|| temp.path().join("server.log"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // 1. Seed through the store; the database then belongs to the server.
    let store = open_store(&options, &data_dir).await?;
    let seeded = Arc::new(seed(&options, store.as_ref()).await?);

    // 2. Median time of one argon2 verification of the seeded hash, on this machine, now.
    let mut hash_times = Vec::new();
    for round in 0..7 {
        progress(&format!("timing argon2 {round}/7"));
        let stored = password::PasswordHashString(seeded.password_hash.clone());
        let elapsed = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let ok = password::verify(&Password::candidate(PASSWORD.into()), &stored);
            (started.elapsed(), ok)
        })
        .await
        .map_err(|err| err.to_string())?;
        if !elapsed.1 {
            return Err("the seeded password hash does not verify".into());
        }
        hash_times.push(elapsed.0);
    }
    progress_done();
    hash_times.sort();
    let argon2_median = hash_times[hash_times.len() / 2];

    let seeded_at = now_unix();
    // 3. Baselines on the same database, same pool settings (a child process; see serve_bare).
    let half = options.users / 2;
    let write_users = seeded.user_ids[half..].join("\n");
    std::fs::write(temp.path().join("write-users.txt"), write_users).map_err(|err| err.to_string())?;
    if let Some(url) = &options.database_url {
        std::fs::write(temp.path().join("database-url.txt"), url).map_err(|err| err.to_string())?;
    }
    let max = Duration::from_secs(options.max_seconds);
    let connections = options.connections;
    let mut rows: Vec<Row> = Vec::new();
    let introspect = |address: SocketAddr| -> MakeRequest {
        let seeded = seeded.clone();
        Arc::new(move |index| {
            let token = &seeded.session_tokens[index % seeded.session_tokens.len()];
            request(Method::GET, address, "/api/auth/session", Some(token), None)
        })
    };

    // 4. Both servers, access log on and off, up side by side (cold start each), then the read
    //    workloads in interleaved rounds, so that the load other processes put on the machine
    //    falls on all of them alike; each row merges its rounds, each ratio is the median of
    //    the per-round ratios.
    let server_on = start_server(&options, &data_dir, &seeded.key, true, &log).await?;
    let cold_start_log_on = server_on.cold_start;
    let server = start_server(&options, &data_dir, &seeded.key, false, &log).await?;
    let cold_start = server.cold_start;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss_kib(server.pid());
    // The introspection JSON the bare endpoint returns: the very body Tessera sends.
    let sample = sample_body(server.address, &seeded.session_tokens[0]).await?;
    std::fs::write(temp.path().join("baseline.json"), sample.to_string()).map_err(|err| err.to_string())?;
    let bare_server = start_bare(temp.path(), &temp.path().join("baseline.log")).await?;
    let bare_address = bare_server.address;
    let read_load = |label: &str, address: SocketAddr, make: MakeRequest, pid: u32| Load {
        label: label.into(),
        address,
        connections,
        requests: options.requests,
        max,
        make,
        expect: StatusCode::OK,
        pid: Some(pid),
        stop: None,
        quiet: false,
    };
    let bare_reads: MakeRequest = {
        let seeded = seeded.clone();
        Arc::new(move |index| {
            let token = &seeded.session_tokens[index % seeded.session_tokens.len()];
            request(Method::GET, bare_address, "/read", Some(token), None)
        })
    };
    let mut rounds: Vec<[Outcome; 5]> = Vec::new();
    for round in 1..=options.rounds {
        let tag = format!("round {round}/{}", options.rounds);
        let json = drive(read_load(
            &format!("{tag} bare axum JSON"),
            bare_address,
            Arc::new(move |_| request(Method::GET, bare_address, "/json", None, None)),
            bare_server.pid(),
        ))
        .await;
        let read = drive(read_load(
            &format!("{tag} bare single-row read"),
            bare_address,
            bare_reads.clone(),
            bare_server.pid(),
        ))
        .await;
        let off = drive(read_load(
            &format!("{tag} introspection, access log off"),
            server.address,
            introspect(server.address),
            server.pid(),
        ))
        .await;
        let on = drive(read_load(
            &format!("{tag} introspection, access log on"),
            server_on.address,
            introspect(server_on.address),
            server_on.pid(),
        ))
        .await;
        let join = drive(read_load(
            &format!("{tag} bare session+user join read"),
            bare_address,
            {
                let seeded = seeded.clone();
                Arc::new(move |index| {
                    let token = &seeded.session_tokens[index % seeded.session_tokens.len()];
                    request(Method::GET, bare_address, "/join", Some(token), None)
                })
            },
            bare_server.pid(),
        ))
        .await;
        rounds.push([json, read, off, on, join]);
    }
    drop(server_on);
    let touches_began = now_unix() - seeded_at >= tessera::service::accounts::CLOCK_SKEW_SECS + 60;
    let merged = |slot: usize| merge(rounds.iter().map(|round| round[slot].clone()));
    let per_round = |f: &dyn Fn(&[Outcome; 5]) -> f64| median_and_list(rounds.iter().map(f).collect());
    let (intro_vs_read, intro_vs_read_rounds) = per_round(&|r| ratio(r[2].rate(), r[1].rate()));
    let (intro_p99_vs_read, intro_p99_rounds) =
        per_round(&|r| ratio(r[2].percentile_ms(99.0), r[1].percentile_ms(99.0)));
    let (on_vs_off, on_vs_off_rounds) = per_round(&|r| ratio(r[3].rate(), r[2].rate()));
    let (on_vs_read, _) = per_round(&|r| ratio(r[3].rate(), r[1].rate()));
    let (intro_vs_join, intro_vs_join_rounds) = per_round(&|r| ratio(r[2].rate(), r[4].rate()));
    let (join_vs_read, _) = per_round(&|r| ratio(r[4].rate(), r[1].rate()));
    let bare_join_outcome = merged(4);
    let bare_json_outcome = merged(0);
    let bare_read_outcome = merged(1);
    let log_off = merged(2);
    let log_on = merged(3);

    // The bare write and the second factor in interleaved rounds too (each round its own users
    // for the second factor: one fresh mfa_token and one TOTP code per user, each used once).
    let mfa_tokens = Arc::new(seed_challenges(store.as_ref(), &seeded, 0..options.mfa_requests).await?);
    let write_rounds = options.rounds.min(options.mfa_requests);
    let per_write_round = options.mfa_requests / write_rounds;
    let mut writes: Vec<[Outcome; 2]> = Vec::new();
    for round in 0..write_rounds {
        let tag = format!("round {}/{write_rounds}", round + 1);
        let offset = round * per_write_round;
        let write = drive(Load {
            label: format!("{tag} bare conditional write"),
            address: bare_address,
            connections,
            requests: per_write_round,
            max,
            make: Arc::new(move |index| {
                request(
                    Method::POST,
                    bare_address,
                    &format!("/write/{}", offset + index),
                    None,
                    None,
                )
            }),
            expect: StatusCode::OK,
            pid: Some(bare_server.pid()),
            stop: None,
            quiet: false,
        })
        .await;
        let second = drive(Load {
            label: format!("{tag} second factor"),
            address: server.address,
            connections,
            requests: per_write_round,
            max,
            make: {
                let (tokens, address) = (mfa_tokens.clone(), server.address);
                Arc::new(move |index| {
                    let user = offset + index;
                    let code = totp(&secret_of(user), now_unix());
                    let body = serde_json::json!({"mfa_token": tokens[user], "code": code}).to_string();
                    request(Method::POST, address, "/api/auth/login/mfa", None, Some(body))
                })
            },
            expect: StatusCode::OK,
            pid: Some(server.pid()),
            stop: None,
            quiet: false,
        })
        .await;
        writes.push([write, second]);
    }
    let bare_write_outcome = merge(writes.iter().map(|round| round[0].clone()));
    let mfa = merge(writes.iter().map(|round| round[1].clone()));
    let (mfa_vs_write, mfa_vs_write_rounds) =
        median_and_list(writes.iter().map(|r| ratio(r[1].rate(), r[0].rate())).collect());

    // Password logins (argon2 bound), on users the other workloads do not write.
    let login = |address: SocketAddr| -> MakeRequest {
        let users = options.users;
        Arc::new(move |index| {
            let user = half + index % (users - half);
            let body = serde_json::json!({"email": email_of(user), "password": PASSWORD}).to_string();
            request(Method::POST, address, "/api/auth/login", None, Some(body))
        })
    };
    let logins = drive(Load {
        label: "password login".into(),
        address: server.address,
        connections,
        requests: options.login_requests,
        max,
        make: login(server.address),
        expect: StatusCode::OK,
        pid: Some(server.pid()),
        stop: None,
        quiet: false,
    })
    .await;

    // Isolation: introspection while logins keep the hashing pool busy.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = tokio::spawn(drive(Load {
        label: "login flood".into(),
        address: server.address,
        connections: (cores * 8).max(16),
        requests: usize::MAX,
        max: max + Duration::from_secs(5),
        make: login(server.address),
        expect: StatusCode::OK,
        pid: None,
        stop: Some(stop.clone()),
        quiet: true,
    }));
    // Measure the steady state of a flood: introspection first runs unmeasured until the logins
    // it holds back have waited long enough for the normal hashing threads to take them
    // (`STARVED`), then the measured run. Measured from the flood's start instead, the first
    // two seconds had only the yielding threads hashing, and the result depended on how long
    // the measured run lasted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _warm_up = drive(Load {
        label: "introspection during a login flood (warm-up, not measured)".into(),
        address: server.address,
        connections,
        requests: usize::MAX,
        max: tessera::service::hashing::STARVED + Duration::from_millis(500),
        make: introspect(server.address),
        expect: StatusCode::OK,
        pid: None,
        stop: None,
        quiet: true,
    })
    .await;
    // Three measured windows back to back, the flood going on: a p99 of one ~2 s window moved
    // with a single stall of the host; the ratio is the median of the three windows'.
    let mut windows = Vec::new();
    for window in 1..=ISOLATION_WINDOWS {
        windows.push(
            drive(Load {
                label: format!("window {window}/{ISOLATION_WINDOWS} introspection during a login flood"),
                address: server.address,
                connections,
                requests: options.requests,
                max,
                make: introspect(server.address),
                expect: StatusCode::OK,
                pid: Some(server.pid()),
                stop: None,
                quiet: false,
            })
            .await,
        );
    }
    stop.store(true, Ordering::Relaxed);
    let flood = flood.await.map_err(|err| err.to_string())?;
    let after_load = rss_kib(server.pid());
    let settled = if options.after_seconds > 0 {
        for left in (1..=options.after_seconds).rev() {
            progress(&format!("waiting {left} s before reading the RSS again"));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        progress_done();
        rss_kib(server.pid())
    } else {
        None
    };
    drop(server);
    drop(bare_server);
    store.close().await;
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // 6. The table.
    let single_hash_rate = cores as f64 / argon2_median.as_secs_f64();
    let intro_p99 = log_off.percentile_ms(99.0);
    rows.push(Row {
        workload: "baseline: bare axum, the same JSON".into(),
        outcome: bare_json_outcome,
        versus: String::new(),
    });
    rows.push(Row {
        workload: "baseline: bare single-row read (primary key)".into(),
        outcome: bare_read_outcome,
        versus: String::new(),
    });
    rows.push(Row {
        workload: "baseline: bare session+user join (introspection's read before migration 0009)".into(),
        outcome: bare_join_outcome,
        versus: format!("{join_vs_read:.2} x bare read"),
    });
    rows.push(Row {
        workload: "baseline: bare conditional write".into(),
        versus: String::new(),
        outcome: bare_write_outcome.clone(),
    });
    rows.push(Row {
        workload: "session introspection, access log off".into(),
        versus: format!(
            "{intro_vs_read:.2} x bare read (target >= 0.9; rounds {intro_vs_read_rounds}); \
             p99 {intro_p99_vs_read:.2} x (target <= 1.5; rounds {intro_p99_rounds}); \
             {intro_vs_join:.2} x the bare join (rounds {intro_vs_join_rounds})"
        ),
        outcome: log_off.clone(),
    });
    rows.push(Row {
        workload: "session introspection, access log on".into(),
        versus: format!("{on_vs_off:.2} x log off (rounds {on_vs_off_rounds}); {on_vs_read:.2} x bare read"),
        outcome: log_on,
    });
    rows.push(Row {
        workload: "second factor (TOTP), each code once".into(),
        versus: format!("{mfa_vs_write:.2} x bare write (target >= 0.5; rounds {mfa_vs_write_rounds})"),
        outcome: mfa,
    });
    rows.push(Row {
        workload: "password login (argon2)".into(),
        versus: format!(
            "{:.2} x cores/argon2 = {cores}/{:.1} ms = {:.1}/s (target >= 0.9)",
            ratio(logins.rate(), single_hash_rate),
            argon2_median.as_secs_f64() * 1e3,
            single_hash_rate
        ),
        outcome: logins,
    });
    let (isolation, isolation_windows) = median_and_list(
        windows
            .iter()
            .map(|window| ratio(window.percentile_ms(99.0), intro_p99))
            .collect(),
    );
    rows.push(Row {
        workload: "session introspection during a login flood".into(),
        versus: format!(
            "p99 {isolation:.2} x unloaded introspection (target <= 2; windows {isolation_windows}); flood {:.1} logins/s",
            flood.rate()
        ),
        outcome: merge(windows.into_iter()),
    });

    println!();
    println!(
        "Tessera load harness: {} users with MFA, {} connections, {} backend, {} cores, binary {}",
        options.users,
        connections,
        if options.database_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        cores,
        options.binary.display()
    );
    println!(
        "load average before {} / after {}",
        load_before.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        load_after.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!();
    println!("| workload | 200s / sent | requests/s | p50 ms | p99 ms | p99.9 ms | peak RSS MiB | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let o = &row.outcome;
        println!(
            "| {} | {}/{} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} |",
            row.workload,
            o.ok,
            o.sent,
            o.rate(),
            o.percentile_ms(50.0),
            o.percentile_ms(99.0),
            o.percentile_ms(99.9),
            mib(o.peak_rss_kib),
            row.versus
        );
    }
    println!();
    println!(
        "cold start to the first 200 from /readyz ({} users): {:.0} ms (access log off), {:.0} ms (on); target <= 150 ms",
        options.users,
        cold_start.as_secs_f64() * 1e3,
        cold_start_log_on.as_secs_f64() * 1e3
    );
    println!(
        "server RSS: idle {} MiB (peak so far {} MiB); after the login workloads {} MiB (peak {} MiB){}",
        mib(idle_rss.map(|r| r.0)),
        mib(idle_rss.map(|r| r.1)),
        mib(after_load.map(|r| r.0)),
        mib(after_load.map(|r| r.1)),
        match settled {
            Some((rss, _)) => format!("; {} s later {} MiB", options.after_seconds, mib(Some(rss))),
            None => String::new(),
        }
    );
    if touches_began {
        println!(
            "note: the read rounds ran past three minutes after seeding, so the last ones also \
             wrote last_seen_at once per session and minute (use fewer --requests or --rounds)"
        );
    }
    let failures: Vec<String> = rows
        .iter()
        .filter(|row| row.outcome.failed > 0)
        .map(|row| {
            format!(
                "{}: {} failed, first: {}",
                row.workload,
                row.outcome.failed,
                row.outcome.first_failure.clone().unwrap_or_default()
            )
        })
        .collect();
    for failure in &failures {
        println!("FAILED {failure}");
    }
    if !failures.is_empty() {
        return Err(format!(
            "{} workload(s) had failed requests (listed above)",
            failures.len()
        ));
    }
    Ok(())
}

async fn sample_body(address: SocketAddr, token: &str) -> Result<serde_json::Value, String> {
    let mut sender = connect(address).await.ok_or("cannot connect to the server")?;
    let response = sender
        .send_request(request(Method::GET, address, "/api/auth/session", Some(token), None))
        .await
        .map_err(|err| err.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| err.to_string())?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!("a seeded session was refused: {status}"));
    }
    serde_json::from_slice(&body).map_err(|err| format!("the introspection body is not JSON: {err}"))
}
