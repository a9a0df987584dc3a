//! `tessera backup FILE` and `tessera restore FILE`, for the SQLite backend, and the data
//! directory lock that keeps a restore away from a running server.
//!
//! - A backup is `VACUUM INTO` a new file (mode 0600, never over an existing one): one read
//!   transaction of the live database, so it is consistent while `serve` keeps writing (WAL).
//! - A restore checks the file before anything is touched (`PRAGMA integrity_check`, the schema
//!   version against this binary's migrations, every sealed TOTP secret against the configured
//!   master key), then writes it beside the database, fsyncs it and renames it into place.
//! - `serve` holds a shared lock on `<database>.lock` for as long as it runs (several servers may
//!   share a database file); a restore takes it exclusively, so it refuses while any server runs
//!   and a server refuses to start while a restore runs.
//!
//! This module reads and writes files and SQLite connections of its own; it never goes through
//! the [`crate::store::Store`] (whose pool would migrate and keep the database open).

use crate::config::Config;
use crate::domain::sealing::MasterKey;
use crate::server;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Row, SqliteConnection};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Why a backup or a restore was refused or failed; each is one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "the database is PostgreSQL: back it up with `pg_dump --format=custom` and restore it with `pg_restore` \
(tessera backup/restore copy SQLite databases only)"
    )]
    Postgres,
    #[error("unsupported database URL: use sqlite:PATH or postgres://USER@HOST/DATABASE")]
    UnsupportedDatabase,
    #[error("the database is in memory: there is no file to back up or restore")]
    InMemory,
    #[error("no database at {0}; check --data-dir or --database-url")]
    NoDatabase(PathBuf),
    #[error("{0} already exists; a backup never overwrites a file")]
    TargetExists(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a readable SQLite database: {message}")]
    NotADatabase { path: PathBuf, message: String },
    #[error("{path} is damaged: integrity check reported {problem}")]
    Damaged { path: PathBuf, problem: String },
    #[error("{0} is not a Tessera database (it has no migrations table)")]
    NotTessera(PathBuf),
    #[error(
        "{path} has schema version {found}, newer than this tessera knows ({known}); restore it with the newer tessera that made it"
    )]
    NewerSchema { path: PathBuf, found: i64, known: i64 },
    #[error(
        "{path} holds {sealed} sealed TOTP secrets but no master key is configured: set TESSERA_SECRET_KEY or copy the backed-up installation's key file to {key_file}"
    )]
    NoKey {
        path: PathBuf,
        sealed: u64,
        key_file: PathBuf,
    },
    #[error(
        "{failed} of {sealed} sealed TOTP secrets in {path} do not open under the configured master key; configure the backed-up installation's key (TESSERA_SECRET_KEY or its key file)"
    )]
    WrongKey { path: PathBuf, sealed: u64, failed: u64 },
    #[error("a tessera serve is running on {database} (it holds {lock}); stop it before restoring")]
    ServerRunning { database: PathBuf, lock: PathBuf },
    #[error("a restore into {database} is in progress (it holds {lock}); start the server when it has finished")]
    RestoreRunning { database: PathBuf, lock: PathBuf },
    #[error(
        "{path} already holds {users} users and {events} security events; add --force to replace it (the current file is kept as {kept})"
    )]
    TargetHoldsData {
        path: PathBuf,
        users: i64,
        events: i64,
        kept: PathBuf,
    },
    #[error("{0} exists from an earlier restore; move it away before restoring with --force again")]
    EarlierRestoreKept(PathBuf),
    #[error("{0} has a write-ahead log that could not be checkpointed; start and stop tessera serve once, then retry")]
    PendingWal(PathBuf),
    #[error("key: {0}")]
    Key(#[from] server::StartupError),
    #[error("database {path}: {source}")]
    Sqlite { path: PathBuf, source: sqlx::Error },
}

type Result<T> = std::result::Result<T, BackupError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

fn sqlite(path: &Path) -> impl FnOnce(sqlx::Error) -> BackupError + '_ {
    move |source| unreadable(path, source)
}

/// SQLite's own verdicts on a file (SQLITE_CORRUPT 11, SQLITE_NOTADB 26) named as such; any
/// other error as it is.
fn unreadable(path: &Path, source: sqlx::Error) -> BackupError {
    let code = match &source {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    };
    match code.as_deref() {
        Some("11") => BackupError::Damaged {
            path: path.to_owned(),
            problem: "the database disk image is malformed".into(),
        },
        Some("26") => BackupError::NotADatabase {
            path: path.to_owned(),
            message: "file is not a database".into(),
        },
        _ => BackupError::Sqlite {
            path: path.to_owned(),
            source,
        },
    }
}

/// The SQLite database file the configuration names: `DATA_DIR/tessera.db`, or the path of a
/// `sqlite:` URL. PostgreSQL has no file to copy.
pub fn database_file(config: &Config) -> Result<PathBuf> {
    match config.database_url.as_deref() {
        None => Ok(config.data_dir.join(server::DATABASE_FILE)),
        Some(url) if url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory")) => {
            Err(BackupError::InMemory)
        }
        Some(url) if url.starts_with("sqlite:") => {
            let options = SqliteConnectOptions::from_str(url).map_err(|_| BackupError::UnsupportedDatabase)?;
            Ok(options.get_filename().to_owned())
        }
        Some(url) if url.starts_with("postgres:") || url.starts_with("postgresql:") => Err(BackupError::Postgres),
        Some(_) => Err(BackupError::UnsupportedDatabase),
    }
}

fn lock_file(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn open_lock_file(database: &Path) -> Result<(std::fs::File, PathBuf)> {
    let path = lock_file(database);
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&path).map_err(io(&path))?;
    Ok((file, path))
}

/// The lock `serve` holds on its SQLite database for as long as it runs (released by the
/// kernel when the process ends, however it ends).
#[derive(Debug)]
pub struct ServingLock {
    _file: std::fs::File,
}

/// Takes the shared lock of a server on the configured SQLite database; `None` on PostgreSQL.
/// Refused while a restore holds the lock exclusively.
pub fn lock_for_serving(config: &Config) -> Result<Option<ServingLock>> {
    let database = match database_file(config) {
        Ok(database) => database,
        Err(BackupError::Postgres | BackupError::UnsupportedDatabase | BackupError::InMemory) => return Ok(None),
        Err(err) => return Err(err),
    };
    if let Some(parent) = database.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(parent).map_err(io(parent))?;
    }
    let (file, lock) = open_lock_file(&database)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(Some(ServingLock { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Err(BackupError::RestoreRunning { database, lock }),
        Err(std::fs::TryLockError::Error(source)) => Err(BackupError::Io { path: lock, source }),
    }
}

/// A one-line progress indicator on stderr, drawn only when stderr is a terminal.
struct Progress {
    terminal: bool,
    drawn: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            drawn: false,
            last: None,
        }
    }

    fn show(&mut self, line: impl FnOnce() -> String) {
        if !self.terminal
            || self
                .last
                .is_some_and(|last| last.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(Instant::now());
        self.drawn = true;
        eprint!("\r\x1b[2K{}", line());
        let _ = std::io::stderr().flush();
    }

    fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[2K");
            self.drawn = false;
        }
    }
}

/// Runs `work`, redrawing "`what`... Ns" on a terminal while it runs.
async fn with_elapsed<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    let mut progress = Progress::new();
    let started = Instant::now();
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = tick.tick() => progress.show(|| format!("{what}... {}s", started.elapsed().as_secs())),
        }
    };
    progress.clear();
    result
}

/// What a database file holds, for the summaries.
#[derive(Debug, Clone, Copy)]
pub struct Contents {
    pub users: i64,
    pub users_with_mfa: i64,
    pub events: i64,
    pub schema_version: i64,
    pub bytes: u64,
}

impl std::fmt::Display for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} users ({} with MFA), {} security events, schema version {}, {}",
            self.users,
            self.users_with_mfa,
            self.events,
            self.schema_version,
            human_bytes(self.bytes)
        )
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

async fn open_read_only(path: &Path) -> Result<SqliteConnection> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false);
    SqliteConnection::connect_with(&options)
        .await
        .map_err(|err| unreadable(path, err))
}

async fn schema_version(connection: &mut SqliteConnection, path: &Path) -> Result<i64> {
    let has_table: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
            .fetch_optional(&mut *connection)
            .await
            .map_err(|err| unreadable(path, err))?;
    if has_table.is_none() {
        return Err(BackupError::NotTessera(path.to_owned()));
    }
    let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut *connection)
        .await
        .map_err(sqlite(path))?;
    Ok(version.unwrap_or(0))
}

async fn contents(connection: &mut SqliteConnection, path: &Path) -> Result<Contents> {
    let schema_version = schema_version(connection, path).await?;
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM users) AS users, \
         (SELECT COUNT(*) FROM users WHERE mfa_enabled_at IS NOT NULL) AS users_with_mfa, \
         (SELECT COUNT(*) FROM security_events) AS events",
    )
    .fetch_one(&mut *connection)
    .await
    .map_err(sqlite(path))?;
    let bytes = std::fs::metadata(path).map_err(io(path))?.len();
    Ok(Contents {
        users: row.try_get("users").map_err(sqlite(path))?,
        users_with_mfa: row.try_get("users_with_mfa").map_err(sqlite(path))?,
        events: row.try_get("events").map_err(sqlite(path))?,
        schema_version,
        bytes,
    })
}

/// The newest migration this binary carries.
fn known_schema_version() -> i64 {
    crate::store::sqlite::MIGRATOR
        .iter()
        .map(|migration| migration.version)
        .max()
        .unwrap_or(0)
}

fn sync_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// `tessera backup FILE`: a consistent copy of the live database in a new 0600 file.
pub async fn backup(config: &Config, file: &Path) -> Result<Contents> {
    let database = database_file(config)?;
    if !database.exists() {
        return Err(BackupError::NoDatabase(database));
    }
    if std::fs::symlink_metadata(file).is_ok() {
        return Err(BackupError::TargetExists(file.to_owned()));
    }
    // SQLite writes into an existing empty file with the mode it has: 0600, since it holds
    // password hashes and sealed secrets.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(file).map_err(|err| match err.kind() {
        std::io::ErrorKind::AlreadyExists => BackupError::TargetExists(file.to_owned()),
        _ => BackupError::Io {
            path: file.to_owned(),
            source: err,
        },
    })?;
    let result = copy_live(&database, file).await;
    if result.is_err() {
        // A half-written backup must not be mistaken for a good one.
        let _ = std::fs::remove_file(file);
    }
    result
}

async fn copy_live(database: &Path, file: &Path) -> Result<Contents> {
    // A plain connection (not read-only: a WAL database needs its -shm), with the busy timeout
    // a live server's writers make necessary; `VACUUM INTO` reads one snapshot.
    let options = SqliteConnectOptions::new()
        .filename(database)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(30));
    let mut connection = SqliteConnection::connect_with(&options)
        .await
        .map_err(sqlite(database))?;
    schema_version(&mut connection, database).await?;
    let target = file.to_str().ok_or_else(|| BackupError::Io {
        path: file.to_owned(),
        source: std::io::Error::other("the backup path is not UTF-8"),
    })?;
    with_elapsed(
        "backing up",
        sqlx::query("VACUUM INTO ?").bind(target).execute(&mut connection),
    )
    .await
    .map_err(sqlite(database))?;
    connection.close().await.map_err(sqlite(database))?;
    std::fs::File::open(file)
        .and_then(|copy| copy.sync_all())
        .map_err(io(file))?;
    sync_dir(file)?;
    let mut copy = open_read_only(file).await?;
    let contents = contents(&mut copy, file).await;
    let _ = copy.close().await;
    contents
}

/// What a restore checked and put in place.
#[derive(Debug)]
pub struct Restored {
    pub database: PathBuf,
    pub contents: Contents,
    /// Sealed TOTP secrets (enabled and pending) that were opened with the configured key.
    pub sealed_checked: u64,
    /// Where the replaced database was kept (`--force` over a database holding data).
    pub kept: Option<PathBuf>,
}

/// Checks `file` as a restore would: integrity, schema version, sealed secrets under `key`.
async fn check_backup(file: &Path, config: &Config) -> Result<(Contents, u64)> {
    std::fs::File::open(file).map_err(io(file))?;
    let mut connection = open_read_only(file).await?;
    let problems: Vec<String> = with_elapsed(
        "checking integrity",
        sqlx::query_scalar("PRAGMA integrity_check").fetch_all(&mut connection),
    )
    .await
    .map_err(|err| unreadable(file, err))?;
    if problems.len() != 1 || problems[0] != "ok" {
        let problem = problems.into_iter().take(3).collect::<Vec<_>>().join("; ");
        return Err(BackupError::Damaged {
            path: file.to_owned(),
            problem,
        });
    }
    let contents = contents(&mut connection, file).await?;
    let known = known_schema_version();
    if contents.schema_version > known {
        return Err(BackupError::NewerSchema {
            path: file.to_owned(),
            found: contents.schema_version,
            known,
        });
    }
    let sealed = sealed_secrets(&mut connection, file).await?;
    let count = sealed.len() as u64;
    if count > 0 {
        let key = server::load_key(config)?.ok_or_else(|| BackupError::NoKey {
            path: file.to_owned(),
            sealed: count,
            key_file: server::key_file(config),
        })?;
        let failed = count_unopened(&key, &sealed);
        if failed > 0 {
            return Err(BackupError::WrongKey {
                path: file.to_owned(),
                sealed: count,
                failed,
            });
        }
    }
    let _ = connection.close().await;
    Ok((contents, count))
}

/// Every sealed TOTP secret of the file with its user id: enabled ones and pending setups.
async fn sealed_secrets(connection: &mut SqliteConnection, path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let rows = sqlx::query(
        "SELECT id, mfa_secret AS secret FROM users WHERE mfa_secret IS NOT NULL \
         UNION ALL SELECT user_id, secret FROM mfa_pending",
    )
    .fetch_all(&mut *connection)
    .await
    .map_err(sqlite(path))?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(sqlite(path))
}

fn count_unopened(key: &MasterKey, sealed: &[(String, Vec<u8>)]) -> u64 {
    let mut progress = Progress::new();
    let mut failed = 0;
    for (done, (user_id, secret)) in sealed.iter().enumerate() {
        progress.show(|| format!("checking sealed secrets... {done}/{}", sealed.len()));
        if key.open(secret, user_id.as_bytes()).is_err() {
            failed += 1;
        }
    }
    progress.clear();
    failed
}

/// Counts of users and events in an existing target database (after checkpointing its WAL into
/// the main file, so the file alone is the whole database).
async fn existing_data(database: &Path) -> Result<(i64, i64)> {
    let options = SqliteConnectOptions::new()
        .filename(database)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10));
    let mut connection = SqliteConnection::connect_with(&options)
        .await
        .map_err(sqlite(database))?;
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('users', 'security_events')",
    )
    .fetch_one(&mut connection)
    .await
    .map_err(sqlite(database))?;
    let counts = if tables == 2 {
        let row = sqlx::query("SELECT (SELECT COUNT(*) FROM users), (SELECT COUNT(*) FROM security_events)")
            .fetch_one(&mut connection)
            .await
            .map_err(sqlite(database))?;
        (
            row.try_get(0).map_err(sqlite(database))?,
            row.try_get(1).map_err(sqlite(database))?,
        )
    } else {
        (0, 0)
    };
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut connection)
        .await
        .map_err(sqlite(database))?;
    connection.close().await.map_err(sqlite(database))?;
    Ok(counts)
}

fn sibling(database: &Path, suffix: &str) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `tessera restore FILE [--force]`: checks FILE, then puts it in place of the configured
/// SQLite database while no server runs on it.
pub async fn restore(config: &Config, file: &Path, force: bool) -> Result<Restored> {
    let database = database_file(config)?;
    let (contents, sealed_checked) = check_backup(file, config).await?;
    if let Some(dir) = database.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(io(dir))?;
    }
    let (lock, lock_path) = open_lock_file(&database)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(BackupError::ServerRunning {
                database,
                lock: lock_path,
            });
        }
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(BackupError::Io {
                path: lock_path,
                source,
            });
        }
    }
    let wal = sibling(&database, "-wal");
    let shm = sibling(&database, "-shm");
    let mut kept = None;
    if database.exists() {
        let (users, events) = existing_data(&database).await?;
        if std::fs::metadata(&wal).is_ok_and(|wal| wal.len() > 0) {
            return Err(BackupError::PendingWal(database));
        }
        if users > 0 || events > 0 {
            let keep = sibling(&database, ".before-restore");
            if !force {
                return Err(BackupError::TargetHoldsData {
                    path: database,
                    users,
                    events,
                    kept: keep,
                });
            }
            if std::fs::symlink_metadata(&keep).is_ok() {
                return Err(BackupError::EarlierRestoreKept(keep));
            }
            kept = Some(keep);
        }
    }
    let restoring = sibling(&database, ".restoring");
    let _ = std::fs::remove_file(&restoring);
    let copied = copy_file(file, &restoring, contents.bytes);
    if let Err(err) = copied {
        let _ = std::fs::remove_file(&restoring);
        return Err(err);
    }
    if let Some(keep) = &kept {
        std::fs::rename(&database, keep).map_err(io(&database))?;
    }
    // An empty WAL and the shared-memory index of the old file must not be read with the new one.
    for stale in [&wal, &shm] {
        match std::fs::remove_file(stale) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(BackupError::Io {
                    path: stale.clone(),
                    source: err,
                });
            }
        }
    }
    std::fs::rename(&restoring, &database).map_err(io(&database))?;
    sync_dir(&database)?;
    drop(lock);
    Ok(Restored {
        database,
        contents,
        sealed_checked,
        kept,
    })
}

/// Copies `from` into a new 0600 file `to` with a byte-count progress line, then fsyncs it.
fn copy_file(from: &Path, to: &Path, total: u64) -> Result<()> {
    let mut source = std::fs::File::open(from).map_err(io(from))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut target = options.open(to).map_err(io(to))?;
    let mut progress = Progress::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let read = source.read(&mut buffer).map_err(io(from))?;
        if read == 0 {
            break;
        }
        target.write_all(&buffer[..read]).map_err(io(to))?;
        done += read as u64;
        progress.show(|| format!("copying... {} of {}", human_bytes(done), human_bytes(total)));
    }
    progress.clear();
    target.sync_all().map_err(io(to))
}
