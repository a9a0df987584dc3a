//! The SQLite implementation of [`Store`]: the embedded default, one file in the data directory.
//!
//! WAL mode with `synchronous=NORMAL` (durable across process crashes, fast), a busy timeout so
//! concurrent writers queue instead of failing, foreign keys on. Every multi-statement change
//! runs in a `BEGIN IMMEDIATE` transaction: it takes the write lock up front, so two writers
//! never both read a state and then both write on it.

use super::*;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Migrations embedded at compile time and applied at start and by `tessera migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Reads (WAL readers never wait for the writer).
    pool: SqlitePool,
    /// Every write, through ONE connection: SQLite admits one writer at a time anyway, and
    /// writers of this process queue here, in order, on an async pool checkout. Several
    /// connections writing at once would instead collide on the file lock and wait in SQLite's
    /// busy handler, which sleeps (1, 2, 5, 10 ... 100 ms): a tenth of the throughput of
    /// queueing (BENCHMARKS.md). Other processes (the CLI next to a server) still meet the
    /// busy timeout.
    writer: SqlitePool,
    /// The queue of the group commit of second-factor logins ([`group_commit`]), started on
    /// first use, started again if its task ended (its runtime shut down).
    totp_jobs: Arc<std::sync::Mutex<Option<mpsc::UnboundedSender<TotpJob>>>>,
    /// The read connections of the two hottest point reads, session introspection and the
    /// second login step's `mfa_token` lookup ([`HotReaders`]); none for an in-memory database
    /// (whose one pool must do everything).
    hot_readers: Option<Arc<HotReaders>>,
}

/// The read connections of session introspection and of the second login step's lookup, kept
/// beside sqlx's pool (BENCHMARKS.md): a checkout is a
/// semaphore permit and a pop, a return is a push. sqlx 0.9 returns every pooled connection
/// through a spawned task that pings it first (one more round trip to the connection's worker
/// thread per query), to guard against a query abandoned half-way; here a connection goes back
/// to the idle list only after its query completed, and one whose query failed or was abandoned
/// (the request dropped mid-read) is dropped, which closes it. Opened on demand, at most
/// [`HOT_READERS`], with the readers' settings.
struct HotReaders {
    options: SqliteConnectOptions,
    idle: std::sync::Mutex<Vec<sqlx::SqliteConnection>>,
    permits: tokio::sync::Semaphore,
}

/// Connections of [`HotReaders`] (each with its own 512 KiB page cache and worker thread).
const HOT_READERS: usize = 2;

impl std::fmt::Debug for HotReaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotReaders")
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl HotReaders {
    fn new(options: SqliteConnectOptions) -> Self {
        Self {
            options,
            idle: std::sync::Mutex::new(Vec::with_capacity(HOT_READERS)),
            permits: tokio::sync::Semaphore::new(HOT_READERS),
        }
    }

    async fn fetch_optional<'q>(
        &self,
        query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> Result<Option<SqliteRow>, sqlx::Error> {
        let _permit = self.permits.acquire().await.map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&self.options).await?,
        };
        let row = query.fetch_optional(&mut connection).await?;
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(connection);
        Ok(row)
    }

    async fn close(&self) {
        self.permits.close();
        let idle: Vec<_> = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .drain(..)
            .collect();
        for connection in idle {
            let _ = sqlx::Connection::close(connection).await;
        }
    }
}

fn map_err(err: sqlx::Error) -> StoreError {
    match err {
        sqlx::Error::PoolClosed | sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => {
            StoreError::Unavailable(err.to_string())
        }
        sqlx::Error::Database(ref db) if db.is_unique_violation() => StoreError::Conflict,
        other => StoreError::Other(other.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database named by a `sqlite:` URL.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|err| StoreError::Other(format!("invalid SQLite URL: {err}")))?;
        Self::connect_with(options).await
    }

    /// Opens (creating if needed) the database file at `path`.
    pub async fn open_file(path: &Path) -> StoreResult<Self> {
        Self::connect_with(SqliteConnectOptions::new().filename(path)).await
    }

    async fn connect_with(options: SqliteConnectOptions) -> StoreResult<Self> {
        let in_memory = options
            .get_filename()
            .to_str()
            .is_some_and(|name| name.contains(":memory:"));
        let (options, readers, writer) = Self::pool_settings(options);
        // The writer first: it creates the file and switches it to WAL.
        // Room for a whole chunk of second steps' results (see `TOTP_CHUNKS`): the writer's
        // thread runs the chunk through without waiting for the group commit to drain them.
        let writer = writer
            .connect_with(options.clone().row_buffer_size(TOTP_CHUNKS[0] * TOTP_JOB_STATEMENTS))
            .await
            .map_err(map_err)?;
        // An in-memory database exists once per connection: one pool must do both jobs.
        let (pool, hot_readers) = if in_memory {
            (writer.clone(), None)
        } else {
            let hot_readers = Arc::new(HotReaders::new(options.clone()));
            (readers.connect_with(options).await.map_err(map_err)?, Some(hot_readers))
        };
        Ok(Self {
            pool,
            writer,
            hot_readers,
            totp_jobs: Arc::default(),
        })
    }

    /// The sender of the group commit's queue, its task started if none runs.
    fn totp_jobs(&self) -> mpsc::UnboundedSender<TotpJob> {
        let mut slot = self.totp_jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match slot.as_ref() {
            Some(sender) if !sender.is_closed() => sender.clone(),
            _ => {
                let (sender, jobs) = mpsc::unbounded_channel();
                tokio::spawn(group_commit(self.writer.clone(), jobs));
                *slot = Some(sender.clone());
                sender
            }
        }
    }

    /// The connection and pool settings of Tessera's SQLite pools (readers, then the one
    /// writer); public so the load harness (benches/load.rs) gives its bare baseline endpoints
    /// the very same pools.
    ///
    /// `test_before_acquire(false)`: sqlx's default pings every connection on each checkout, a
    /// round trip per query that a local file does not need (a broken SQLite connection fails
    /// its next statement just as well, and the pool replaces it).
    pub fn pool_settings(
        options: SqliteConnectOptions,
    ) -> (SqliteConnectOptions, SqlitePoolOptions, SqlitePoolOptions) {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            // 512 KiB of page cache per connection (SQLite's default is 2 MB): nine connections
            // (eight readers then) with the default held 18 MB of a loaded server's RSS over a
            // 100,000-user database, and a random read misses its leaf page either way
            // (BENCHMARKS.md, memory). The interior pages that every lookup walks fit.
            .pragma("cache_size", "-512")
            .foreign_keys(true);
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .after_connect(|connection, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *connection, sqlx::raw_sql(WRITER_SETUP)).await?;
                    Ok(())
                })
            });
        (options, readers, writer)
    }

    /// One point read on the [`HotReaders`] when there are, else on the pool.
    async fn fetch_hot<'q>(&self, query: SqliteQuery<'q>) -> Result<Option<SqliteRow>, sqlx::Error> {
        match &self.hot_readers {
            Some(hot_readers) => hot_readers.fetch_optional(query).await,
            None => query.fetch_optional(&self.pool).await,
        }
    }

    async fn immediate(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)
    }
}

/// Run on each new writer connection: `temp.expect_one`, the precondition check of one-round-trip
/// batches (the jobs of [`group_commit`]). `INSERT INTO temp.expect_one VALUES ('step',
/// changes())` right after a statement raises ABORT (that statement fails, the batch stops
/// there, the transaction stays open for the caller to roll back to its savepoint) unless that
/// statement changed exactly one row; the view stores nothing. Temporary objects live in the
/// connection, not in the database file.
///
/// And the writer checkpoints the write-ahead log only once it holds 8,000 pages (SQLite's
/// default is 1,000): `tessera serve` checkpoints every 100 ms on a reader
/// ([`Store::checkpoint`]), off the writer's path. A checkpoint copies pages and syncs the
/// files; on the one writer it stopped every write behind it (a second-factor login changes
/// about a dozen pages, so the default threshold came every ~80 logins). The writer's own
/// checkpoint remains the bound if the background one falls behind (32 MiB of log), and a
/// process without it (the CLI) still checkpoints, later.
const WRITER_SETUP: &str = "\
    PRAGMA wal_autocheckpoint = 8000; \
    CREATE TEMP VIEW IF NOT EXISTS expect_one (what, changed) AS SELECT NULL, NULL; \
    CREATE TEMP TRIGGER IF NOT EXISTS expect_one_row INSTEAD OF INSERT ON expect_one \
    WHEN NEW.changed IS NOT 1 BEGIN \
    SELECT CASE NEW.what \
    WHEN 'step' THEN RAISE(ABORT, 'tessera: expected one row: step') \
    ELSE RAISE(ABORT, 'tessera: expected one row: mfa_token') END; \
    END";

/// The messages `temp.expect_one` raises (see [`WRITER_SETUP`]).
const EXPECTED_ONE_STEP: &str = "tessera: expected one row: step";
const EXPECTED_ONE_MFA_TOKEN: &str = "tessera: expected one row: mfa_token";

/// Which precondition of a batch failed.
enum ExpectationFailed {
    Step,
    MfaToken,
}

// One SELECT shape for users, so every lookup decodes the same columns.
macro_rules! select_user {
    ($where:literal) => {
        select_user!("", $where)
    };
    ($extra:literal, $where:literal) => {
        concat!(
            "SELECT ",
            $extra,
            "u.id, u.email, u.password_hash, u.created_at, u.disabled_at, u.mfa_secret, ",
            "u.mfa_enabled_at, u.mfa_last_step, u.backup_salt, u.mfa_failures, u.mfa_locked_until, ",
            "u.password_failures, u.password_locked_until, u.mfa_totp_suspended_at ",
            "FROM users u ",
            $where
        )
    };
}

fn user_from_row(row: &SqliteRow) -> Result<UserRecord, sqlx::Error> {
    let enabled_at: Option<i64> = row.try_get("mfa_enabled_at")?;
    let secret: Option<Vec<u8>> = row.try_get("mfa_secret")?;
    let mfa = match (enabled_at, secret) {
        (Some(enabled_at), Some(sealed_secret)) => Some(MfaRecord {
            sealed_secret,
            enabled_at,
            last_step: row.try_get("mfa_last_step")?,
            backup_salt: row.try_get::<Option<Vec<u8>>, _>("backup_salt")?.unwrap_or_default(),
            totp_suspended_at: row.try_get("mfa_totp_suspended_at")?,
        }),
        _ => None,
    };
    let failures: i64 = row.try_get("mfa_failures")?;
    let password_failures: i64 = row.try_get("password_failures")?;
    Ok(UserRecord {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
        mfa,
        throttle: ThrottleRecord {
            failures: u32::try_from(failures).unwrap_or(u32::MAX),
            locked_until: row.try_get("mfa_locked_until")?,
        },
        password_throttle: ThrottleRecord {
            failures: u32::try_from(password_failures).unwrap_or(u32::MAX),
            locked_until: row.try_get("password_locked_until")?,
        },
    })
}

async fn insert_event_in(tx: &mut Transaction<'static, Sqlite>, event: &NewEvent) -> Result<(), sqlx::Error> {
    insert_event_kind_in(tx, event, event.kind).await
}

/// The insert of one security event, shared by `insert_event_kind_in` and the one-query second
/// step; its parameters are bound by [`bind_event`].
macro_rules! insert_event_sql {
    () => {
        "INSERT INTO security_events (user_id, kind, at, ip, user_agent, request_id) VALUES (?, ?, ?, ?, ?, ?)"
    };
}

/// The insert of one session (its `seq` the user's highest + 1, the public facts of its user
/// copied from the user row: migration 0009), shared by `insert_session_in` and the one-query
/// second step; its parameters are bound by [`bind_session`]. A missing user fails on
/// `user_email NOT NULL` (the left join keeps the row) as it would on the foreign key.
macro_rules! insert_session_sql {
    () => {
        "INSERT INTO sessions (token_hash, public_id, user_id, created_at, last_seen_at, expires_at, mfa, \
         ip, user_agent, seq, user_email, user_created_at, user_disabled_at, user_mfa) \
         SELECT ?, ?, k.id, ?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM sessions WHERE user_id = k.id), \
         u.email, u.created_at, u.disabled_at, (u.mfa_enabled_at IS NOT NULL AND u.mfa_secret IS NOT NULL) \
         FROM (SELECT ? AS id) AS k LEFT JOIN users AS u ON u.id = k.id"
    };
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

/// Binds the parameters of [`insert_event_sql`], in order.
fn bind_event<'q>(query: SqliteQuery<'q>, event: &'q NewEvent, kind: &'q str) -> SqliteQuery<'q> {
    query
        .bind(&event.user_id)
        .bind(kind)
        .bind(event.at)
        .bind(&event.ip)
        .bind(&event.user_agent)
        .bind(&event.request_id)
}

/// Binds the parameters of [`insert_session_sql`], in order.
fn bind_session<'q>(query: SqliteQuery<'q>, session: &'q SessionRecord) -> SqliteQuery<'q> {
    query
        .bind(session.token_hash.as_bytes())
        .bind(&session.public_id)
        .bind(session.created_at)
        .bind(session.last_seen_at)
        .bind(session.expires_at)
        .bind(i64::from(session.mfa))
        .bind(&session.ip)
        .bind(&session.user_agent)
        .bind(&session.user_id)
}

/// Second-factor logins committed together, at most this many per transaction.
const GROUP_COMMIT_MAX: usize = 64;

/// One second login step with a right TOTP code, waiting for [`group_commit`].
struct TotpJob {
    token_hash: TokenHash,
    step: i64,
    /// Locks ending later than this are not honoured (`policy.max_secs` from now).
    until: i64,
    session: SessionRecord,
    event: NewEvent,
    reply: oneshot::Sender<StoreResult<Option<ExpectationFailed>>>,
}

/// The group commit of second-factor logins (SQLite only): one task owns the queue; it takes
/// every job waiting (up to [`GROUP_COMMIT_MAX`]), runs them in ONE write transaction on the
/// writer connection, each inside a savepoint of its own, commits once and then answers each
/// job. A job whose precondition fails (`temp.expect_one` raises `ABORT`) is rolled back to its
/// savepoint alone; the others commit. So N logins waiting behind each other share one
/// `BEGIN IMMEDIATE`/`COMMIT`, one checkout of the writer and the pages they all touch (the
/// ends of `sessions` and `security_events` and their time index), and every answer is sent
/// only after its commit (BENCHMARKS.md, "group commit"). The jobs run in the order they came,
/// each seeing the ones before it, as separate transactions would.
///
/// A request abandoned while its job waits does not withdraw it: the job runs, and its answer
/// finds no one (the login happened; the client never saw its token). Nothing runs half.
async fn group_commit(writer: SqlitePool, mut jobs: mpsc::UnboundedReceiver<TotpJob>) {
    let mut batch: Vec<TotpJob> = Vec::with_capacity(GROUP_COMMIT_MAX);
    while let Some(job) = jobs.recv().await {
        batch.push(job);
        while batch.len() < GROUP_COMMIT_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcomes = commit_group(&writer, &batch).await;
        for (job, outcome) in batch.drain(..).zip(outcomes) {
            let _ = job.reply.send(outcome);
        }
    }
}

/// Runs `batch` in one transaction (see [`group_commit`]); one outcome per job, in order.
async fn commit_group(writer: &SqlitePool, batch: &[TotpJob]) -> Vec<StoreResult<Option<ExpectationFailed>>> {
    let failed_all = |err: sqlx::Error| {
        let err = map_err(err);
        batch.iter().map(|_| Err(err.clone())).collect()
    };
    // Dropped before its commit (the task aborted), the transaction rolls back.
    let mut tx = match writer.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(err) => return failed_all(err),
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut next = 0;
    while next < batch.len() {
        let left = batch.len() - next;
        let size = TOTP_CHUNKS.iter().copied().find(|&size| size <= left).unwrap_or(1);
        let chunk = &batch[next..next + size];
        let query = chunk.iter().fold(sqlx::query(totp_chunk_sql(size)), |query, job| {
            bind_totp_job(query, job)
        });
        // Count the statements' results: a failure after `done` of them is in job
        // `done / TOTP_JOB_STATEMENTS` of the chunk, whose savepoint is still open; the jobs
        // before it released theirs.
        let mut results = sqlx::Executor::fetch_many(&mut *tx, query);
        let mut done = 0;
        let mut failure = None;
        while let Some(result) = std::future::poll_fn(|cx| results.as_mut().poll_next(cx)).await {
            match result {
                Ok(sqlx::Either::Left(_)) => done += 1,
                Ok(sqlx::Either::Right(_)) => {}
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        drop(results);
        let completed = (done / TOTP_JOB_STATEMENTS).min(size);
        outcomes.extend((0..completed).map(|_| Ok(None)));
        next += completed;
        let Some(err) = failure else {
            if done != size * TOTP_JOB_STATEMENTS {
                // Not one result per statement: nothing tells which jobs ran.
                drop(tx);
                return failed_all(sqlx::Error::Protocol("a chunk of the group commit ended early".into()));
            }
            continue;
        };
        let failed = match &err {
            sqlx::Error::Database(db) if db.message() == EXPECTED_ONE_STEP => Some(ExpectationFailed::Step),
            sqlx::Error::Database(db) if db.message() == EXPECTED_ONE_MFA_TOKEN => Some(ExpectationFailed::MfaToken),
            _ => None,
        };
        // Undo this job alone; if even that fails, nothing of the group is kept.
        if let Err(undo) = sqlx::query("ROLLBACK TO totp_job; RELEASE totp_job")
            .execute(&mut *tx)
            .await
        {
            drop(tx);
            return failed_all(undo);
        }
        outcomes.push(match failed {
            Some(failed) => Ok(Some(failed)),
            None => Err(map_err(err)),
        });
        next += 1;
    }
    match tx.commit().await {
        Ok(()) => outcomes,
        Err(err) => failed_all(err),
    }
}

/// One job of the group: its preconditions, the change and the release of its savepoint
/// ([`TOTP_JOB_STATEMENTS`] statements). Plain `?` placeholders, bound in order of appearance by
/// [`bind_totp_job`]: sqlx numbers a batch's unnamed parameters on from one statement to the
/// next (a numbered one that skips a number would shift them), so jobs can follow each other in
/// one query ([`totp_chunk_sql`]).
///  - the lock check, the suspension, the replay guard and the throttle reset in one
///    conditional UPDATE, expected to change one row;
///  - the `mfa_token` consumed, expected once;
///  - a `session_evicted` event for each live session beyond the cap, then the clean-up
///    (expired and evicted sessions), as in `insert_session_in`;
///  - the new session and its event.
macro_rules! totp_job_sql {
    () => {
        concat!(
            "SAVEPOINT totp_job; \
             UPDATE users SET mfa_last_step = ?, mfa_failures = 0, mfa_locked_until = NULL \
             WHERE id = ? AND mfa_enabled_at IS NOT NULL AND mfa_totp_suspended_at IS NULL \
             AND (mfa_last_step IS NULL OR mfa_last_step < ?) \
             AND (mfa_locked_until IS NULL OR mfa_locked_until <= ? OR mfa_locked_until > ?); \
             INSERT INTO temp.expect_one (what, changed) VALUES ('step', changes()); \
             DELETE FROM mfa_challenges WHERE token_hash = ? AND user_id = ? AND expires_at > ?; \
             INSERT INTO temp.expect_one (what, changed) VALUES ('mfa_token', changes()); \
             INSERT INTO security_events (user_id, kind, at, ip, user_agent, request_id) \
             SELECT ?, 'session_evicted', ?, ?, ?, ? FROM sessions \
             WHERE user_id = ? AND expires_at > ? AND seq <= (SELECT seq FROM sessions \
             WHERE user_id = ? AND expires_at > ? ORDER BY seq DESC LIMIT 1 OFFSET ?); \
             DELETE FROM sessions WHERE user_id = ? AND (expires_at <= ? OR seq <= \
             (SELECT seq FROM sessions WHERE user_id = ? AND expires_at > ? ORDER BY seq DESC LIMIT 1 OFFSET ?)); ",
            insert_session_sql!(),
            "; ",
            insert_event_sql!(),
            "; RELEASE totp_job;\n"
        )
    };
}

/// The statements of one job in [`totp_job_sql`], each answering one result: a failure after
/// `n` results is in job `n / TOTP_JOB_STATEMENTS` of its chunk. A chunk that completes with
/// any other count than this per job fails the whole group, so a wrong count cannot pass the
/// store contract.
const TOTP_JOB_STATEMENTS: usize = 10;

/// How many jobs one query to the writer carries, largest first: a group of 23 goes as 16, 4,
/// 1, 1, 1, so the writer's thread runs a chunk's jobs one after the other without waiting for
/// the group commit's task between them (one round trip per chunk instead of one per job).
/// Each size is one cached statement of the writer (21 jobs' prepared statements in all).
const TOTP_CHUNKS: [usize; 3] = [16, 4, 1];

/// The SQL of `size` jobs in a row (`size` one of [`TOTP_CHUNKS`]).
fn totp_chunk_sql(size: usize) -> &'static str {
    static SQL: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| TOTP_CHUNKS.iter().map(|&size| totp_job_sql!().repeat(size)).collect());
    let index = TOTP_CHUNKS
        .iter()
        .position(|&chunk| chunk == size)
        .unwrap_or(TOTP_CHUNKS.len() - 1);
    SQL[index].as_str()
}

/// Binds the parameters of [`totp_job_sql`] for `job`, in order.
fn bind_totp_job<'q>(query: SqliteQuery<'q>, job: &'q TotpJob) -> SqliteQuery<'q> {
    let session = &job.session;
    let event = &job.event;
    let user = &session.user_id;
    let now = session.created_at;
    let cap = MAX_SESSIONS_PER_USER - 1;
    let query = query
        // the conditional UPDATE
        .bind(job.step)
        .bind(user)
        .bind(job.step)
        .bind(now)
        .bind(job.until)
        // the `mfa_token`
        .bind(job.token_hash.as_bytes())
        .bind(user)
        .bind(now)
        // the eviction events
        .bind(&event.user_id)
        .bind(event.at)
        .bind(&event.ip)
        .bind(&event.user_agent)
        .bind(&event.request_id)
        .bind(user)
        .bind(now)
        .bind(user)
        .bind(now)
        .bind(cap)
        // the clean-up
        .bind(user)
        .bind(now)
        .bind(user)
        .bind(now)
        .bind(cap);
    // the session and its event
    bind_event(bind_session(query, session), event, event.kind)
}

async fn insert_event_kind_in(
    tx: &mut Transaction<'static, Sqlite>,
    event: &NewEvent,
    kind: &str,
) -> Result<(), sqlx::Error> {
    bind_event(sqlx::query(insert_event_sql!()), event, kind)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Consumes a second-factor proof inside `tx`; false when it was already used.
async fn consume_proof(
    tx: &mut Transaction<'static, Sqlite>,
    user_id: &str,
    proof: SecondFactorProof,
    event: &NewEvent,
) -> Result<bool, sqlx::Error> {
    let consumed = match proof {
        SecondFactorProof::TotpStep(step) => {
            sqlx::query(
                "UPDATE users SET mfa_last_step = ? WHERE id = ? AND mfa_enabled_at IS NOT NULL \
                 AND (mfa_last_step IS NULL OR mfa_last_step < ?)",
            )
            .bind(step)
            .bind(user_id)
            .bind(step)
            .execute(&mut **tx)
            .await?
            .rows_affected()
                == 1
        }
        SecondFactorProof::BackupCode(hash) => {
            let deleted = sqlx::query("DELETE FROM backup_codes WHERE user_id = ? AND code_hash = ?")
                .bind(user_id)
                .bind(&hash[..])
                .execute(&mut **tx)
                .await?
                .rows_affected()
                == 1;
            if deleted {
                insert_event_kind_in(tx, event, "backup_code_used").await?;
            }
            deleted
        }
    };
    Ok(consumed)
}

async fn reset_throttle_in(tx: &mut Transaction<'static, Sqlite>, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET mfa_failures = 0, mfa_locked_until = NULL WHERE id = ?")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn revoke_other_sessions_in(
    tx: &mut Transaction<'static, Sqlite>,
    user_id: &str,
    keep: &TokenHash,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sessions WHERE user_id = ? AND token_hash <> ?")
        .bind(user_id)
        .bind(keep.as_bytes())
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM mfa_challenges WHERE user_id = ?")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_codes_in(
    tx: &mut Transaction<'static, Sqlite>,
    user_id: &str,
    codes: &BackupCodeHashes,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM backup_codes WHERE user_id = ?")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    for hash in &codes.hashes {
        sqlx::query("INSERT INTO backup_codes (user_id, code_hash) VALUES (?, ?)")
            .bind(user_id)
            .bind(&hash[..])
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("UPDATE users SET backup_salt = ? WHERE id = ?")
        .bind(&codes.salt)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn event_from_row(row: &SqliteRow) -> Result<EventRecord, sqlx::Error> {
    Ok(EventRecord {
        kind: row.try_get("kind")?,
        at: row.try_get("at")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
        request_id: row.try_get("request_id")?,
    })
}

fn session_from_row(row: &SqliteRow) -> Result<SessionRecord, sqlx::Error> {
    let hash: Vec<u8> = row.try_get("token_hash")?;
    Ok(SessionRecord {
        token_hash: TokenHash::from_slice(&hash)
            .ok_or_else(|| sqlx::Error::Decode("token hash is not 32 bytes".into()))?,
        public_id: row.try_get("public_id")?,
        user_id: row.try_get("user_id")?,
        created_at: row.try_get("s_created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        expires_at: row.try_get("expires_at")?,
        mfa: row.try_get::<i64, _>("mfa")? != 0,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR
            .run(&self.writer)
            .await
            .map_err(|err| StoreError::Other(format!("migration failed: {err}")))
    }

    async fn close(&self) {
        if let Some(hot_readers) = &self.hot_readers {
            hot_readers.close().await;
        }
        self.pool.close().await;
        self.writer.close().await;
    }

    async fn checkpoint(&self) -> StoreResult<(i64, i64)> {
        // On a reader: the checkpoint copies pages and syncs the files on that connection's
        // thread, in parallel with the writer, which only appends to the log.
        let (_busy, frames, done): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        Ok((frames, done))
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(map_err)?;
        Ok(())
    }

    fn pool_status(&self) -> PoolStatus {
        // The readers and the one writer together.
        let size = self.pool.size() + self.writer.size();
        // `num_idle` is a usize; a pool never holds more than u32::MAX connections.
        let idle = u32::try_from(self.pool.num_idle() + self.writer.num_idle()).unwrap_or(u32::MAX);
        PoolStatus {
            size,
            idle: idle.min(size),
        }
    }

    async fn any_sealed_secret(&self) -> StoreResult<Option<Vec<u8>>> {
        sqlx::query_scalar(
            "SELECT mfa_secret FROM users WHERE mfa_secret IS NOT NULL \
             UNION ALL SELECT secret FROM mfa_pending LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)
    }

    async fn insert_user(&self, user: &NewUser, event: &NewEvent) -> StoreResult<()> {
        let mut tx = self.immediate().await?;
        sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES (?, ?, ?, ?)")
            .bind(&user.id)
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(user.created_at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query(select_user!("WHERE u.email = ?"))
            .bind(email)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(user_from_row).transpose().map_err(map_err)
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query(select_user!("WHERE u.id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(user_from_row).transpose().map_err(map_err)
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        let rows = sqlx::query(select_user!("ORDER BY u.created_at, u.email"))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(user_from_row)
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn backup_codes_remaining(&self, user_id: &str) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM backup_codes WHERE user_id = ?")
            .bind(user_id)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn upgrade_password_hash(&self, user_id: &str, old_hash: &str, new_hash: &str) -> StoreResult<()> {
        sqlx::query("UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?")
            .bind(new_hash)
            .bind(user_id)
            .bind(old_hash)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn change_password(
        &self,
        user_id: &str,
        proof: Option<SecondFactorProof>,
        old_hash: &str,
        new_hash: &str,
        keep: &TokenHash,
        event: &NewEvent,
    ) -> StoreResult<Consumed> {
        let mut tx = self.immediate().await?;
        if !session_exists_in(&mut tx, keep).await.map_err(map_err)? {
            return Ok(Consumed::SessionGone);
        }
        if let Some(proof) = proof
            && !consume_proof(&mut tx, user_id, proof, event).await.map_err(map_err)?
        {
            return Ok(Consumed::Rejected);
        }
        let changed = sqlx::query(
            "UPDATE users SET password_hash = ?, mfa_failures = 0, mfa_locked_until = NULL \
             WHERE id = ? AND password_hash = ?",
        )
        .bind(new_hash)
        .bind(user_id)
        .bind(old_hash)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        if changed != 1 {
            return Ok(Consumed::Stale);
        }
        revoke_other_sessions_in(&mut tx, user_id, keep)
            .await
            .map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Consumed::Yes)
    }

    async fn login_session(
        &self,
        session: &SessionRecord,
        verified_hash: &str,
        network: Option<&str>,
        event: &NewEvent,
    ) -> StoreResult<Consumed> {
        let mut tx = self.immediate().await?;
        let current = password_login_succeeded_in(&mut tx, &session.user_id, verified_hash, network, false)
            .await
            .map_err(map_err)?;
        if !current {
            return Ok(Consumed::Stale);
        }
        insert_session_in(&mut tx, session, event).await.map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Consumed::Yes)
    }

    async fn insert_session(&self, session: &SessionRecord, event: &NewEvent) -> StoreResult<()> {
        let mut tx = self.immediate().await?;
        insert_session_in(&mut tx, session, event).await.map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn active_session(
        &self,
        token_hash: &TokenHash,
        now: i64,
        idle_secs: i64,
    ) -> StoreResult<Option<(SessionRecord, UserRecord)>> {
        let row = sqlx::query(select_user!(
            "s.token_hash, s.public_id, s.user_id, s.created_at AS s_created_at, s.last_seen_at, s.expires_at, s.mfa, \
             s.ip, s.user_agent, ",
            "JOIN sessions s ON s.user_id = u.id WHERE s.token_hash = ? AND s.expires_at > ? AND s.last_seen_at > ?"
        ))
        .bind(token_hash.as_bytes())
        .bind(now)
        .bind(now.saturating_sub(idle_secs))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else { return Ok(None) };
        let user = user_from_row(&row).map_err(map_err)?;
        let mut session = session_from_row(&row).map_err(map_err)?;
        if now - session.last_seen_at >= 60 {
            sqlx::query("UPDATE sessions SET last_seen_at = ? WHERE token_hash = ? AND last_seen_at < ?")
                .bind(now)
                .bind(token_hash.as_bytes())
                .bind(now)
                .execute(&self.writer)
                .await
                .map_err(map_err)?;
            session.last_seen_at = now;
        }
        Ok(Some((session, user)))
    }

    async fn active_session_summary(
        &self,
        token_hash: &TokenHash,
        now: i64,
        idle_secs: i64,
    ) -> StoreResult<Option<SessionSummary>> {
        // One primary-key read: the user's public facts are copied onto the session row
        // (migration 0009). Read by position, in this order; nothing secret is selected. Seven
        // columns, not nine: a disabled account's sessions are not found (the WHERE clause), and
        // the two flags travel as the bits of one integer; sqlx copies and frees every column of
        // a row (`sqlite3_value_dup`), ~750 instructions a column (BENCHMARKS.md).
        // The two limits are checked here on the times read anyway rather than in the WHERE
        // clause (two fewer parameters to bind and copy to the worker thread).
        let query = sqlx::query(
            "SELECT user_id, user_email, created_at, last_seen_at, expires_at, user_created_at, \
             (mfa <> 0) + 2 * (user_mfa <> 0) \
             FROM sessions WHERE token_hash = ? AND user_disabled_at IS NULL",
        )
        // Owned: a borrowed slice is copied once when bound and again for the worker thread.
        .bind(token_hash.as_bytes().to_vec());
        let row = self.fetch_hot(query).await.map_err(map_err)?;
        let Some(row) = row else { return Ok(None) };
        let decode = |row: &SqliteRow| -> Result<SessionSummary, sqlx::Error> {
            let flags: i64 = row.try_get(6)?;
            Ok(SessionSummary {
                user_id: row.try_get(0)?,
                email: row.try_get(1)?,
                created_at: row.try_get(2)?,
                last_seen_at: row.try_get(3)?,
                expires_at: row.try_get(4)?,
                user_created_at: row.try_get(5)?,
                mfa: flags & 1 != 0,
                user_mfa_enabled: flags & 2 != 0,
            })
        };
        let mut summary = decode(&row).map_err(map_err)?;
        if summary.expires_at <= now || summary.last_seen_at <= now.saturating_sub(idle_secs) {
            return Ok(None);
        }
        if now - summary.last_seen_at >= 60 {
            sqlx::query("UPDATE sessions SET last_seen_at = ? WHERE token_hash = ? AND last_seen_at < ?")
                .bind(now)
                .bind(token_hash.as_bytes())
                .bind(now)
                .execute(&self.writer)
                .await
                .map_err(map_err)?;
            summary.last_seen_at = now;
        }
        Ok(Some(summary))
    }

    async fn delete_session(&self, token_hash: &TokenHash, event: &NewEvent) -> StoreResult<bool> {
        let mut tx = self.immediate().await?;
        let deleted = sqlx::query("DELETE FROM sessions WHERE token_hash = ?")
            .bind(token_hash.as_bytes())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected()
            == 1;
        if deleted {
            insert_event_in(&mut tx, event).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(deleted)
    }

    async fn insert_event(&self, event: &NewEvent) -> StoreResult<()> {
        let mut tx = self.immediate().await?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn list_events(&self, user_id: &str, limit: u32) -> StoreResult<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT kind, at, ip, user_agent, request_id FROM security_events WHERE user_id = ? \
             ORDER BY id DESC LIMIT ?",
        )
        .bind(user_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(event_from_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(map_err)
    }

    async fn events_after(&self, after: OutboxPosition, limit: u32) -> StoreResult<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT id, user_id, kind, at, ip, user_agent, request_id FROM security_events \
             WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after.id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let id = row.try_get("id")?;
                Ok(StoredEvent {
                    id,
                    user_id: row.try_get("user_id")?,
                    record: event_from_row(row)?,
                    position: OutboxPosition { txid: 0, id },
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(map_err)
    }

    async fn webhook_cursor(&self) -> StoreResult<OutboxPosition> {
        sqlx::query(
            "INSERT INTO webhook_cursor (id, last_event_id) \
             SELECT 1, COALESCE(MAX(id), 0) FROM security_events WHERE true ON CONFLICT (id) DO NOTHING",
        )
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        let id = sqlx::query_scalar("SELECT last_event_id FROM webhook_cursor WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(OutboxPosition { txid: 0, id })
    }

    async fn acquire_webhook_lease(&self, holder: &str, now: i64, ttl_secs: i64) -> StoreResult<bool> {
        let taken = sqlx::query(
            "UPDATE webhook_cursor SET lease_holder = ?, lease_until = ? WHERE id = 1 \
             AND (lease_holder IS NULL OR lease_holder = ? OR lease_until <= ?)",
        )
        .bind(holder)
        .bind(now.saturating_add(ttl_secs))
        .bind(holder)
        .bind(now)
        .execute(&self.writer)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(taken == 1)
    }

    async fn set_webhook_cursor(&self, holder: &str, position: OutboxPosition) -> StoreResult<bool> {
        let moved = sqlx::query(
            "UPDATE webhook_cursor SET last_event_id = MAX(last_event_id, ?) WHERE id = 1 AND lease_holder = ?",
        )
        .bind(position.id)
        .bind(holder)
        .execute(&self.writer)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(moved == 1)
    }

    async fn reserve_attempt(
        &self,
        user_id: &str,
        kind: AttemptKind<'_>,
        now: i64,
        policy: LockPolicy,
    ) -> StoreResult<AttemptReservation> {
        let (counter, lock, network) = match kind {
            AttemptKind::SecondFactor => ("mfa_failures", "mfa_locked_until", None),
            AttemptKind::Password { network } => ("password_failures", "password_locked_until", network),
        };
        let mut tx = self.immediate().await?;
        // Not locked, or the lock is longer than any lock can be (the clock went backwards), or
        // the attempt comes from the network of the last successful login.
        let counted: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "UPDATE users SET {counter} = {counter} + 1 WHERE id = ?1 \
             AND ({lock} IS NULL OR {lock} <= ?2 OR {lock} > ?3 OR (?4 IS NOT NULL AND last_login_network = ?4)) \
             RETURNING {counter}"
        )))
        .bind(user_id)
        .bind(now)
        .bind(now.saturating_add(policy.max_secs))
        .bind(network)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let reservation = match counted {
            Some(failures) => {
                let failures = u32::try_from(failures).unwrap_or(u32::MAX);
                let secs = (policy.lock_secs)(failures);
                if secs > 0 {
                    sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE users SET {lock} = ? WHERE id = ?")))
                        .bind(now + secs)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                }
                AttemptReservation::Granted { failures }
            }
            None => {
                let until: Option<i64> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {lock} FROM users WHERE id = ?")))
                        .bind(user_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(map_err)?
                        .flatten();
                AttemptReservation::Locked {
                    until: until.unwrap_or(now),
                }
            }
        };
        tx.commit().await.map_err(map_err)?;
        Ok(reservation)
    }

    async fn suspend_totp(&self, user_id: &str, event: &NewEvent) -> StoreResult<bool> {
        let mut tx = self.immediate().await?;
        let suspended = sqlx::query(
            "UPDATE users SET mfa_totp_suspended_at = ? WHERE id = ? \
             AND mfa_enabled_at IS NOT NULL AND mfa_totp_suspended_at IS NULL",
        )
        .bind(event.at)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected()
            == 1;
        if suspended {
            insert_event_in(&mut tx, event).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(suspended)
    }

    async fn take_reauth(
        &self,
        user_id: &str,
        now: i64,
        window_secs: i64,
        limit: u32,
    ) -> StoreResult<AttemptReservation> {
        let mut tx = self.immediate().await?;
        // A window that started in the future (the clock went backwards) is not trusted.
        let taken: Option<i64> = sqlx::query_scalar(
            "UPDATE users SET \
             reauth_count = CASE WHEN reauth_window_start IS NULL OR reauth_window_start <= ?2 - ?3 \
               OR reauth_window_start > ?2 THEN 1 ELSE reauth_count + 1 END, \
             reauth_window_start = CASE WHEN reauth_window_start IS NULL OR reauth_window_start <= ?2 - ?3 \
               OR reauth_window_start > ?2 THEN ?2 ELSE reauth_window_start END \
             WHERE id = ?1 AND NOT (reauth_window_start IS NOT NULL AND reauth_window_start > ?2 - ?3 \
               AND reauth_window_start <= ?2 AND reauth_count >= ?4) \
             RETURNING reauth_count",
        )
        .bind(user_id)
        .bind(now)
        .bind(window_secs)
        .bind(i64::from(limit))
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let reservation = match taken {
            Some(count) => AttemptReservation::Granted {
                failures: u32::try_from(count).unwrap_or(u32::MAX),
            },
            None => {
                let start: Option<i64> = sqlx::query_scalar("SELECT reauth_window_start FROM users WHERE id = ?")
                    .bind(user_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?
                    .flatten();
                AttemptReservation::Locked {
                    until: start.map_or(now, |start| start + window_secs),
                }
            }
        };
        tx.commit().await.map_err(map_err)?;
        Ok(reservation)
    }

    async fn backup_code_exists(&self, user_id: &str, hash: &[u8; 32]) -> StoreResult<bool> {
        let found: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM backup_codes WHERE user_id = ? AND code_hash = ?")
            .bind(user_id)
            .bind(&hash[..])
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(found > 0)
    }

    async fn put_pending_setup(
        &self,
        user_id: &str,
        setup: &PendingSetupRecord,
        keep: &TokenHash,
        event: &NewEvent,
    ) -> StoreResult<Consumed> {
        let mut tx = self.immediate().await?;
        if !session_exists_in(&mut tx, keep).await.map_err(map_err)? {
            return Ok(Consumed::SessionGone);
        }
        // The password was right: the re-authentication attempt succeeded.
        let mfa_off = sqlx::query(
            "UPDATE users SET mfa_failures = 0, mfa_locked_until = NULL WHERE id = ? AND mfa_enabled_at IS NULL",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected()
            == 1;
        if !mfa_off {
            return Ok(Consumed::Stale);
        }
        sqlx::query(
            "INSERT INTO mfa_pending (user_id, secret, created_at, expires_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, \
             created_at = excluded.created_at, expires_at = excluded.expires_at",
        )
        .bind(user_id)
        .bind(&setup.sealed_secret)
        .bind(setup.created_at)
        .bind(setup.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Consumed::Yes)
    }

    async fn pending_setup(&self, user_id: &str, now: i64) -> StoreResult<Option<PendingSetupRecord>> {
        let row =
            sqlx::query("SELECT secret, created_at, expires_at FROM mfa_pending WHERE user_id = ? AND expires_at > ?")
                .bind(user_id)
                .bind(now)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
        row.map(|row| {
            Ok(PendingSetupRecord {
                sealed_secret: row.try_get("secret")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .transpose()
        .map_err(map_err)
    }

    async fn enable_mfa(&self, enable: &EnableMfa) -> StoreResult<Consumed> {
        let mut tx = self.immediate().await?;
        if !session_exists_in(&mut tx, &enable.keep_session)
            .await
            .map_err(map_err)?
        {
            return Ok(Consumed::SessionGone);
        }
        let consumed = sqlx::query("DELETE FROM mfa_pending WHERE user_id = ? AND secret = ? AND expires_at > ?")
            .bind(&enable.user_id)
            .bind(&enable.sealed_secret)
            .bind(enable.now)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected()
            == 1;
        if !consumed {
            return Ok(Consumed::Rejected);
        }
        let enabled = sqlx::query(
            "UPDATE users SET mfa_secret = ?, mfa_enabled_at = ?, mfa_last_step = ?, \
             mfa_failures = 0, mfa_locked_until = NULL WHERE id = ? AND mfa_enabled_at IS NULL",
        )
        .bind(&enable.sealed_secret)
        .bind(enable.now)
        .bind(enable.step)
        .bind(&enable.user_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected()
            == 1;
        if !enabled {
            return Ok(Consumed::Rejected);
        }
        insert_codes_in(&mut tx, &enable.user_id, &enable.codes)
            .await
            .map_err(map_err)?;
        revoke_other_sessions_in(&mut tx, &enable.user_id, &enable.keep_session)
            .await
            .map_err(map_err)?;
        insert_event_in(&mut tx, &enable.event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Consumed::Yes)
    }

    async fn replace_backup_codes(
        &self,
        user_id: &str,
        proof: SecondFactorProof,
        codes: &BackupCodeHashes,
        keep: &TokenHash,
        event: &NewEvent,
    ) -> StoreResult<Consumed> {
        let mut tx = self.immediate().await?;
        if !session_exists_in(&mut tx, keep).await.map_err(map_err)? {
            return Ok(Consumed::SessionGone);
        }
        if !consume_proof(&mut tx, user_id, proof, event).await.map_err(map_err)? {
            return Ok(Consumed::Rejected);
        }
        insert_codes_in(&mut tx, user_id, codes).await.map_err(map_err)?;
        reset_throttle_in(&mut tx, user_id).await.map_err(map_err)?;
        revoke_other_sessions_in(&mut tx, user_id, keep)
            .await
            .map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Consumed::Yes)
    }

    async fn disable_mfa(
        &self,
        user_id: &str,
        proof: SecondFactorProof,
        keep: &TokenHash,
        event: &NewEvent,
    ) -> StoreResult<Consumed> {
        let mut tx = self.immediate().await?;
        if !session_exists_in(&mut tx, keep).await.map_err(map_err)? {
            return Ok(Consumed::SessionGone);
        }
        if !consume_proof(&mut tx, user_id, proof, event).await.map_err(map_err)? {
            return Ok(Consumed::Rejected);
        }
        clear_mfa_in(&mut tx, user_id).await.map_err(map_err)?;
        revoke_other_sessions_in(&mut tx, user_id, keep)
            .await
            .map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Consumed::Yes)
    }

    async fn reset_mfa(&self, user_id: &str, event: &NewEvent) -> StoreResult<()> {
        let mut tx = self.immediate().await?;
        clear_mfa_in(&mut tx, user_id).await.map_err(map_err)?;
        revoke_all_sessions_in(&mut tx, user_id).await.map_err(map_err)?;
        sqlx::query("DELETE FROM mfa_pending WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn set_disabled(&self, user_id: &str, disabled_at: Option<i64>, event: &NewEvent) -> StoreResult<()> {
        let mut tx = self.immediate().await?;
        sqlx::query("UPDATE users SET disabled_at = ? WHERE id = ?")
            .bind(disabled_at)
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if disabled_at.is_some() {
            revoke_all_sessions_in(&mut tx, user_id).await.map_err(map_err)?;
        }
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn insert_challenge(
        &self,
        token_hash: &TokenHash,
        user_id: &str,
        created_at: i64,
        expires_at: i64,
        verified_hash: &str,
        network: Option<&str>,
        event: &NewEvent,
    ) -> StoreResult<Consumed> {
        let mut tx = self.immediate().await?;
        if !password_login_succeeded_in(&mut tx, user_id, verified_hash, network, true)
            .await
            .map_err(map_err)?
        {
            return Ok(Consumed::Stale);
        }
        // Expired challenges of this user are garbage; clearing them here keeps the table small.
        sqlx::query("DELETE FROM mfa_challenges WHERE user_id = ? AND expires_at <= ?")
            .bind(user_id)
            .bind(created_at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query("INSERT INTO mfa_challenges (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)")
            .bind(token_hash.as_bytes())
            .bind(user_id)
            .bind(created_at)
            .bind(expires_at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Consumed::Yes)
    }

    async fn challenge_user(&self, token_hash: &TokenHash, now: i64) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT user_id FROM mfa_challenges WHERE token_hash = ? AND expires_at > ?")
            .bind(token_hash.as_bytes())
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn complete_challenge(
        &self,
        token_hash: &TokenHash,
        proof: SecondFactorProof,
        session: &SessionRecord,
        event: &NewEvent,
    ) -> StoreResult<Consumed> {
        let mut tx = self.immediate().await?;
        let taken = sqlx::query("DELETE FROM mfa_challenges WHERE token_hash = ? AND user_id = ? AND expires_at > ?")
            .bind(token_hash.as_bytes())
            .bind(&session.user_id)
            .bind(session.created_at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected()
            == 1;
        if !taken
            || !consume_proof(&mut tx, &session.user_id, proof, event)
                .await
                .map_err(map_err)?
        {
            return Ok(Consumed::Rejected);
        }
        reset_throttle_in(&mut tx, &session.user_id).await.map_err(map_err)?;
        if matches!(proof, SecondFactorProof::BackupCode(_)) {
            lift_totp_suspension_in(&mut tx, &session.user_id)
                .await
                .map_err(map_err)?;
        }
        insert_session_in(&mut tx, session, event).await.map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Consumed::Yes)
    }

    async fn challenge_user_record(&self, token_hash: &TokenHash, now: i64) -> StoreResult<Option<UserRecord>> {
        let query = sqlx::query(select_user!(
            "JOIN mfa_challenges c ON c.user_id = u.id WHERE c.token_hash = ? AND c.expires_at > ?"
        ))
        .bind(token_hash.as_bytes())
        .bind(now);
        let row = self.fetch_hot(query).await.map_err(map_err)?;
        row.as_ref().map(user_from_row).transpose().map_err(map_err)
    }

    async fn complete_challenge_with_totp(
        &self,
        token_hash: &TokenHash,
        step: i64,
        policy: LockPolicy,
        session: &SessionRecord,
        event: &NewEvent,
    ) -> StoreResult<TotpCompletion> {
        let now = session.created_at;
        let user = &session.user_id;
        let until = now.saturating_add(policy.max_secs);
        // Handed to the group commit (see `group_commit`): one transaction for every second
        // step waiting at that moment, each in a savepoint, each answered after the commit.
        let (reply, answer) = oneshot::channel();
        let job = TotpJob {
            token_hash: *token_hash,
            step,
            until,
            session: session.clone(),
            event: event.clone(),
            reply,
        };
        self.totp_jobs()
            .send(job)
            .map_err(|_| StoreError::Unavailable("the group commit stopped".into()))?;
        let failed = match answer.await {
            Ok(Ok(None)) => return Ok(TotpCompletion::Completed),
            Ok(Ok(Some(failed))) => failed,
            Ok(Err(err)) => return Err(err),
            Err(_) => return Err(StoreError::Unavailable("the group commit stopped".into())),
        };
        Ok(match failed {
            // Why not: a lock is answered like a reservation the lock refuses.
            ExpectationFailed::Step => {
                let locked: Option<i64> = sqlx::query_scalar("SELECT mfa_locked_until FROM users WHERE id = ?")
                    .bind(user)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_err)?
                    .flatten();
                match locked {
                    Some(locked) if locked > now && locked <= until => TotpCompletion::Locked { until: locked },
                    _ => TotpCompletion::Rejected,
                }
            }
            ExpectationFailed::MfaToken => TotpCompletion::Rejected,
        })
    }

    async fn list_sessions(&self, user_id: &str, now: i64, idle_secs: i64) -> StoreResult<Vec<SessionRecord>> {
        let rows = sqlx::query(
            "SELECT token_hash, public_id, user_id, created_at AS s_created_at, last_seen_at, expires_at, mfa, \
             ip, user_agent FROM sessions \
             WHERE user_id = ? AND expires_at > ? AND last_seen_at > ? ORDER BY seq DESC",
        )
        .bind(user_id)
        .bind(now)
        .bind(now.saturating_sub(idle_secs))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(session_from_row)
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn delete_user_session(
        &self,
        user_id: &str,
        public_id: &str,
        now: i64,
        idle_secs: i64,
        event: &NewEvent,
    ) -> StoreResult<bool> {
        let mut tx = self.immediate().await?;
        let deleted = sqlx::query(
            "DELETE FROM sessions WHERE public_id = ? AND user_id = ? AND expires_at > ? AND last_seen_at > ?",
        )
        .bind(public_id)
        .bind(user_id)
        .bind(now)
        .bind(now.saturating_sub(idle_secs))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected()
            == 1;
        if !deleted {
            return Ok(false);
        }
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn revoke_other_sessions(
        &self,
        user_id: &str,
        keep: &TokenHash,
        now: i64,
        idle_secs: i64,
        event: &NewEvent,
    ) -> StoreResult<u64> {
        let mut tx = self.immediate().await?;
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions WHERE user_id = ? AND token_hash <> ? \
             AND expires_at > ? AND last_seen_at > ?",
        )
        .bind(user_id)
        .bind(keep.as_bytes())
        .bind(now)
        .bind(now.saturating_sub(idle_secs))
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        revoke_other_sessions_in(&mut tx, user_id, keep)
            .await
            .map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(u64::try_from(live).unwrap_or_default())
    }

    async fn begin_export(&self) -> StoreResult<Box<dyn ExportSnapshot>> {
        // A deferred transaction: its first read pins a WAL snapshot that every later page
        // reads too, while writers go on appending to the WAL.
        let tx = self.pool.begin().await.map_err(map_err)?;
        Ok(Box::new(SqliteExport { tx }))
    }

    async fn begin_import(&self) -> StoreResult<Box<dyn ImportTransaction>> {
        Ok(Box::new(SqliteImport {
            tx: self.immediate().await?,
        }))
    }

    // --- webhook dead events and housekeeping ---

    async fn bury_webhook_event(
        &self,
        holder: &str,
        event: &StoredEvent,
        attempts: u32,
        last_error: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.immediate().await?;
        let held: Option<i64> = sqlx::query_scalar("SELECT 1 FROM webhook_cursor WHERE id = 1 AND lease_holder = ?")
            .bind(holder)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if held.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO webhook_dead_events (event_id, attempts, last_error, dead_at, requeued_at) \
             VALUES (?, ?, ?, ?, NULL) ON CONFLICT (event_id) DO UPDATE SET attempts = excluded.attempts, \
             last_error = excluded.last_error, dead_at = excluded.dead_at, requeued_at = NULL",
        )
        .bind(event.id)
        .bind(i64::from(attempts))
        .bind(last_error)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("UPDATE webhook_cursor SET last_event_id = MAX(last_event_id, ?) WHERE id = 1")
            .bind(event.position.id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn settle_redelivery(&self, holder: &str, event_id: i64) -> StoreResult<bool> {
        let deleted = sqlx::query(
            "DELETE FROM webhook_dead_events WHERE event_id = ? AND requeued_at IS NOT NULL \
             AND EXISTS (SELECT 1 FROM webhook_cursor WHERE id = 1 AND lease_holder = ?)",
        )
        .bind(event_id)
        .bind(holder)
        .execute(&self.writer)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(deleted == 1)
    }

    async fn dead_webhook_events(&self, only_queued: bool, limit: u32) -> StoreResult<Vec<DeadEvent>> {
        let rows = sqlx::query(
            "SELECT e.id, e.user_id, e.kind, e.at, e.ip, e.user_agent, e.request_id, \
             d.attempts, d.last_error, d.dead_at, d.requeued_at \
             FROM webhook_dead_events d JOIN security_events e ON e.id = d.event_id \
             WHERE (? = 0 OR d.requeued_at IS NOT NULL) ORDER BY e.id LIMIT ?",
        )
        .bind(only_queued)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let id = row.try_get("id")?;
                let attempts: i64 = row.try_get("attempts")?;
                Ok(DeadEvent {
                    event: StoredEvent {
                        id,
                        user_id: row.try_get("user_id")?,
                        record: event_from_row(row)?,
                        position: OutboxPosition { txid: 0, id },
                    },
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    last_error: row.try_get("last_error")?,
                    dead_at: row.try_get("dead_at")?,
                    requeued_at: row.try_get("requeued_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(map_err)
    }

    async fn requeue_dead_event(&self, event_id: i64, now: i64) -> StoreResult<Redelivery> {
        let queued =
            sqlx::query("UPDATE webhook_dead_events SET requeued_at = ? WHERE event_id = ? AND requeued_at IS NULL")
                .bind(now)
                .bind(event_id)
                .execute(&self.writer)
                .await
                .map_err(map_err)?
                .rows_affected();
        if queued == 1 {
            return Ok(Redelivery::Queued);
        }
        // Nothing written: only the answer is left to find.
        let dead: Option<i64> = sqlx::query_scalar("SELECT 1 FROM webhook_dead_events WHERE event_id = ?")
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        if dead.is_some() {
            return Ok(Redelivery::AlreadyQueued);
        }
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM security_events WHERE id = ?")
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(if exists.is_some() {
            Redelivery::NotDead
        } else {
            Redelivery::Unknown
        })
    }

    async fn release_webhook_lease(&self, holder: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhook_cursor SET lease_holder = NULL, lease_until = NULL WHERE id = 1 AND lease_holder = ?",
        )
        .bind(holder)
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn webhook_backlog(&self) -> StoreResult<WebhookBacklog> {
        let row = sqlx::query(
            "SELECT \
             (SELECT COUNT(*) FROM security_events WHERE id > (SELECT last_event_id FROM webhook_cursor WHERE id = 1)) \
             + (SELECT COUNT(*) FROM webhook_dead_events WHERE requeued_at IS NOT NULL) AS pending, \
             (SELECT COUNT(*) FROM webhook_dead_events WHERE requeued_at IS NULL) AS dead",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(WebhookBacklog {
            pending: row.try_get("pending").map_err(map_err)?,
            dead: row.try_get("dead").map_err(map_err)?,
        })
    }

    async fn sweep(&self, kind: SweepKind, now: i64, batch: u32) -> StoreResult<u64> {
        // One autocommit DELETE per batch: the write lock is held for one batch only.
        let batch = i64::from(batch);
        let query = match kind {
            SweepKind::Sessions { idle_secs } => sqlx::query(
                "DELETE FROM sessions WHERE rowid IN (SELECT rowid FROM sessions \
                 WHERE expires_at <= ? OR last_seen_at <= ? LIMIT ?)",
            )
            .bind(now)
            .bind(now.saturating_sub(idle_secs))
            .bind(batch),
            SweepKind::Challenges => sqlx::query(
                "DELETE FROM mfa_challenges WHERE token_hash IN \
                 (SELECT token_hash FROM mfa_challenges WHERE expires_at <= ? LIMIT ?)",
            )
            .bind(now)
            .bind(batch),
            SweepKind::PendingSetups => sqlx::query(
                "DELETE FROM mfa_pending WHERE rowid IN (SELECT rowid FROM mfa_pending WHERE expires_at <= ? LIMIT ?)",
            )
            .bind(now)
            .bind(batch),
            SweepKind::Events {
                before,
                keep_undelivered,
            } => sqlx::query(
                "DELETE FROM security_events WHERE id IN (SELECT id FROM security_events WHERE at < ? \
                 AND (? = 0 OR (id <= (SELECT last_event_id FROM webhook_cursor WHERE id = 1) \
                 AND id NOT IN (SELECT event_id FROM webhook_dead_events))) ORDER BY at LIMIT ?)",
            )
            .bind(before)
            .bind(keep_undelivered)
            .bind(batch),
        };
        Ok(query.execute(&self.writer).await.map_err(map_err)?.rows_affected())
    }

    async fn operator_set_password(&self, user_id: &str, new_hash: &str, event: &NewEvent) -> StoreResult<bool> {
        let mut tx = self.immediate().await?;
        let changed = sqlx::query(
            "UPDATE users SET password_hash = ?, mfa_failures = 0, mfa_locked_until = NULL, \
             password_failures = 0, password_locked_until = NULL WHERE id = ?",
        )
        .bind(new_hash)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        if changed != 1 {
            return Ok(false);
        }
        revoke_all_sessions_in(&mut tx, user_id).await.map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn operator_revoke_sessions(&self, user_id: &str, event: &NewEvent) -> StoreResult<Option<RevokedSessions>> {
        let mut tx = self.immediate().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM users WHERE id = ?")
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if exists.is_none() {
            return Ok(None);
        }
        let sessions = sqlx::query("DELETE FROM sessions WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        let challenges = sqlx::query("DELETE FROM mfa_challenges WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(RevokedSessions { sessions, challenges }))
    }

    async fn operator_unlock(&self, user_id: &str, lift_totp_suspension: bool, event: &NewEvent) -> StoreResult<bool> {
        let mut tx = self.immediate().await?;
        let changed = sqlx::query(
            "UPDATE users SET mfa_failures = 0, mfa_locked_until = NULL, password_failures = 0, \
             password_locked_until = NULL, \
             mfa_totp_suspended_at = CASE WHEN ? THEN NULL ELSE mfa_totp_suspended_at END \
             WHERE id = ?",
        )
        .bind(lift_totp_suspension)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected();
        if changed != 1 {
            return Ok(false);
        }
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn operator_delete_user(&self, user_id: &str, event: &NewEvent) -> StoreResult<bool> {
        let mut tx = self.immediate().await?;
        // Children first (the foreign keys would cascade, but saying it keeps the list visible).
        for statement in [
            "DELETE FROM sessions WHERE user_id = ?",
            "DELETE FROM mfa_challenges WHERE user_id = ?",
            "DELETE FROM mfa_pending WHERE user_id = ?",
            "DELETE FROM backup_codes WHERE user_id = ?",
        ] {
            sqlx::query(statement)
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        let deleted = sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        if deleted != 1 {
            return Ok(false);
        }
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }
}

/// Inserts the session after dropping the user's expired sessions and evicting the oldest
/// beyond [`MAX_SESSIONS_PER_USER`] - 1 (one `session_evicted` event each, with the metadata of
/// `event`, the login that caused it). `seq` is the user's highest + 1: the transaction holds
/// the write lock, so no other insert can take the same number.
async fn insert_session_in(
    tx: &mut Transaction<'static, Sqlite>,
    session: &SessionRecord,
    event: &NewEvent,
) -> Result<(), sqlx::Error> {
    // One statement for both clean-ups; the cap counts the live sessions only, and each row
    // deleted says whether it was live (an eviction) or expired.
    let deleted: Vec<i64> = sqlx::query_scalar(
        "DELETE FROM sessions WHERE user_id = ?1 AND (expires_at <= ?2 OR seq <= \
         (SELECT seq FROM sessions WHERE user_id = ?1 AND expires_at > ?2 ORDER BY seq DESC LIMIT 1 OFFSET ?3)) \
         RETURNING expires_at > ?2",
    )
    .bind(&session.user_id)
    .bind(session.created_at)
    .bind(MAX_SESSIONS_PER_USER - 1)
    .fetch_all(&mut **tx)
    .await?;
    let evicted = deleted.into_iter().filter(|live| *live != 0).count();
    for _ in 0..evicted {
        insert_event_kind_in(tx, event, "session_evicted").await?;
    }
    bind_session(sqlx::query(insert_session_sql!()), session)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn session_exists_in(tx: &mut Transaction<'static, Sqlite>, token_hash: &TokenHash) -> Result<bool, sqlx::Error> {
    let found: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE token_hash = ?")
        .bind(token_hash.as_bytes())
        .fetch_one(&mut **tx)
        .await?;
    Ok(found == 1)
}

/// The account-side part of a successful password login, conditional on what was checked:
/// the verified hash is still the stored one, MFA is in the expected state and the account is
/// enabled. Resets the password throttle and remembers the network. False: nothing changed.
async fn password_login_succeeded_in(
    tx: &mut Transaction<'static, Sqlite>,
    user_id: &str,
    verified_hash: &str,
    network: Option<&str>,
    mfa_on: bool,
) -> Result<bool, sqlx::Error> {
    let mfa = if mfa_on { "IS NOT NULL" } else { "IS NULL" };
    let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET password_failures = 0, password_locked_until = NULL, \
         last_login_network = COALESCE(?, last_login_network) \
         WHERE id = ? AND password_hash = ? AND mfa_enabled_at {mfa} AND disabled_at IS NULL"
    )))
    .bind(network)
    .bind(user_id)
    .bind(verified_hash)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

async fn lift_totp_suspension_in(tx: &mut Transaction<'static, Sqlite>, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET mfa_totp_suspended_at = NULL WHERE id = ?")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Deletes every session and pending `mfa_token` of the user.
async fn revoke_all_sessions_in(tx: &mut Transaction<'static, Sqlite>, user_id: &str) -> Result<(), sqlx::Error> {
    for statement in [
        "DELETE FROM sessions WHERE user_id = ?",
        "DELETE FROM mfa_challenges WHERE user_id = ?",
    ] {
        sqlx::query(statement).bind(user_id).execute(&mut **tx).await?;
    }
    Ok(())
}

async fn clear_mfa_in(tx: &mut Transaction<'static, Sqlite>, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET mfa_secret = NULL, mfa_enabled_at = NULL, mfa_last_step = NULL, \
         backup_salt = NULL, mfa_failures = 0, mfa_locked_until = NULL, mfa_totp_suspended_at = NULL \
         WHERE id = ?",
    )
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM backup_codes WHERE user_id = ?")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// --- `tessera export` / `tessera import` ---

/// Rows per multi-row `INSERT` of an import: 500 x 11 columns stays well below SQLite's limit
/// of 32766 bind parameters.
const IMPORT_BATCH_ROWS: usize = 500;

const SELECT_USER_ROW: &str = "SELECT id, email, password_hash, created_at, disabled_at, mfa_secret, mfa_enabled_at, \
     mfa_last_step, backup_salt, mfa_failures, mfa_locked_until, password_failures, password_locked_until, \
     last_login_network, mfa_totp_suspended_at FROM users";

fn user_row_from(row: &SqliteRow) -> Result<UserRow, sqlx::Error> {
    Ok(UserRow {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        password_hash: row.try_get("password_hash")?,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
        mfa_secret: row.try_get("mfa_secret")?,
        mfa_enabled_at: row.try_get("mfa_enabled_at")?,
        mfa_last_step: row.try_get("mfa_last_step")?,
        backup_salt: row.try_get("backup_salt")?,
        mfa_failures: row.try_get("mfa_failures")?,
        mfa_locked_until: row.try_get("mfa_locked_until")?,
        password_failures: row.try_get("password_failures")?,
        password_locked_until: row.try_get("password_locked_until")?,
        last_login_network: row.try_get("last_login_network")?,
        mfa_totp_suspended_at: row.try_get("mfa_totp_suspended_at")?,
    })
}

fn decode_all<T>(rows: &[SqliteRow], decode: fn(&SqliteRow) -> Result<T, sqlx::Error>) -> StoreResult<Vec<T>> {
    rows.iter().map(decode).collect::<Result<_, _>>().map_err(map_err)
}

struct SqliteExport {
    tx: Transaction<'static, Sqlite>,
}

#[async_trait]
impl ExportSnapshot for SqliteExport {
    async fn users(&mut self, after: Option<&str>, limit: u32) -> StoreResult<Vec<UserRow>> {
        // Keyset paging from a key below every real one ('' sorts first), so each page is one
        // index range scan.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_USER_ROW} WHERE id > ? ORDER BY id LIMIT ?"
        )))
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        decode_all(&rows, user_row_from)
    }

    async fn backup_codes(&mut self, after: Option<&BackupCodeRow>, limit: u32) -> StoreResult<Vec<BackupCodeRow>> {
        let (user_id, code_hash) = after.map_or(("", &[][..]), |row| (row.user_id.as_str(), &row.code_hash[..]));
        let rows = sqlx::query(
            "SELECT user_id, code_hash FROM backup_codes WHERE (user_id, code_hash) > (?, ?) \
             ORDER BY user_id, code_hash LIMIT ?",
        )
        .bind(user_id)
        .bind(code_hash)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        decode_all(&rows, |row| {
            Ok(BackupCodeRow {
                user_id: row.try_get("user_id")?,
                code_hash: row.try_get("code_hash")?,
            })
        })
    }

    async fn pending_setups(&mut self, after: Option<&str>, now: i64, limit: u32) -> StoreResult<Vec<PendingSetupRow>> {
        let rows = sqlx::query(
            "SELECT user_id, secret, created_at, expires_at FROM mfa_pending \
             WHERE user_id > ? AND expires_at > ? ORDER BY user_id LIMIT ?",
        )
        .bind(after.unwrap_or(""))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        decode_all(&rows, |row| {
            Ok(PendingSetupRow {
                user_id: row.try_get("user_id")?,
                sealed_secret: row.try_get("secret")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
    }

    async fn sessions(&mut self, after: Option<&TokenHash>, now: i64, limit: u32) -> StoreResult<Vec<SessionRow>> {
        let rows = sqlx::query(
            "SELECT token_hash, public_id, user_id, created_at AS s_created_at, last_seen_at, expires_at, mfa, \
             ip, user_agent, seq FROM sessions \
             WHERE token_hash > ? AND expires_at > ? ORDER BY token_hash LIMIT ?",
        )
        .bind(after.map_or(&[][..], TokenHash::as_bytes))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        decode_all(&rows, |row| {
            Ok(SessionRow {
                record: session_from_row(row)?,
                seq: row.try_get("seq")?,
            })
        })
    }

    async fn events(&mut self, after: Option<i64>, limit: u32) -> StoreResult<Vec<EventRow>> {
        let rows = sqlx::query(
            "SELECT id, user_id, kind, at, ip, user_agent, request_id FROM security_events \
             WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after.unwrap_or(i64::MIN))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(map_err)?;
        decode_all(&rows, |row| {
            Ok(EventRow {
                id: row.try_get("id")?,
                user_id: row.try_get("user_id")?,
                record: event_from_row(row)?,
            })
        })
    }

    async fn finish(self: Box<Self>) -> StoreResult<()> {
        self.tx.commit().await.map_err(map_err)
    }
}

struct SqliteImport {
    tx: Transaction<'static, Sqlite>,
}

#[async_trait]
impl ImportTransaction for SqliteImport {
    async fn existing(&mut self) -> StoreResult<(i64, i64)> {
        let users = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&mut *self.tx)
            .await
            .map_err(map_err)?;
        let events = sqlx::query_scalar("SELECT COUNT(*) FROM security_events")
            .fetch_one(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok((users, events))
    }

    async fn insert_users(&mut self, rows: &[UserRow]) -> StoreResult<()> {
        for chunk in rows.chunks(IMPORT_BATCH_ROWS) {
            sqlx::QueryBuilder::<Sqlite>::new(
                "INSERT INTO users (id, email, password_hash, created_at, disabled_at, mfa_secret, mfa_enabled_at, \
                 mfa_last_step, backup_salt, mfa_failures, mfa_locked_until, password_failures, \
                 password_locked_until, last_login_network, mfa_totp_suspended_at) ",
            )
            .push_values(chunk, |mut values, user| {
                values
                    .push_bind(user.id.clone())
                    .push_bind(user.email.clone())
                    .push_bind(user.password_hash.clone())
                    .push_bind(user.created_at)
                    .push_bind(user.disabled_at)
                    .push_bind(user.mfa_secret.clone())
                    .push_bind(user.mfa_enabled_at)
                    .push_bind(user.mfa_last_step)
                    .push_bind(user.backup_salt.clone())
                    .push_bind(user.mfa_failures)
                    .push_bind(user.mfa_locked_until)
                    .push_bind(user.password_failures)
                    .push_bind(user.password_locked_until)
                    .push_bind(user.last_login_network.clone())
                    .push_bind(user.mfa_totp_suspended_at);
            })
            .build()
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        }
        Ok(())
    }

    async fn insert_backup_codes(&mut self, rows: &[BackupCodeRow]) -> StoreResult<()> {
        for chunk in rows.chunks(IMPORT_BATCH_ROWS) {
            sqlx::QueryBuilder::<Sqlite>::new("INSERT INTO backup_codes (user_id, code_hash) ")
                .push_values(chunk, |mut values, code| {
                    values.push_bind(code.user_id.clone()).push_bind(code.code_hash.clone());
                })
                .build()
                .execute(&mut *self.tx)
                .await
                .map_err(map_err)?;
        }
        Ok(())
    }

    async fn insert_pending_setups(&mut self, rows: &[PendingSetupRow]) -> StoreResult<()> {
        for chunk in rows.chunks(IMPORT_BATCH_ROWS) {
            sqlx::QueryBuilder::<Sqlite>::new("INSERT INTO mfa_pending (user_id, secret, created_at, expires_at) ")
                .push_values(chunk, |mut values, setup| {
                    values
                        .push_bind(setup.user_id.clone())
                        .push_bind(setup.sealed_secret.clone())
                        .push_bind(setup.created_at)
                        .push_bind(setup.expires_at);
                })
                .build()
                .execute(&mut *self.tx)
                .await
                .map_err(map_err)?;
        }
        Ok(())
    }

    async fn insert_sessions(&mut self, rows: &[SessionRow]) -> StoreResult<()> {
        for chunk in rows.chunks(IMPORT_BATCH_ROWS) {
            // The user's public facts are copied from the (already imported) user row, as on
            // every session insert (migration 0009); a missing user fails on `user_email`.
            let mut query = sqlx::QueryBuilder::<Sqlite>::new(
                "INSERT INTO sessions (token_hash, public_id, user_id, created_at, last_seen_at, expires_at, mfa, \
                 ip, user_agent, seq, user_email, user_created_at, user_disabled_at, user_mfa) \
                 SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, \
                 v.column9, v.column10, u.email, u.created_at, u.disabled_at, \
                 (u.mfa_enabled_at IS NOT NULL AND u.mfa_secret IS NOT NULL) FROM (",
            );
            query.push_values(chunk, |mut values, row| {
                let session = &row.record;
                values
                    .push_bind(session.token_hash.as_bytes().to_vec())
                    .push_bind(session.public_id.clone())
                    .push_bind(session.user_id.clone())
                    .push_bind(session.created_at)
                    .push_bind(session.last_seen_at)
                    .push_bind(session.expires_at)
                    .push_bind(i64::from(session.mfa))
                    .push_bind(session.ip.clone())
                    .push_bind(session.user_agent.clone())
                    .push_bind(row.seq);
            });
            query
                .push(") AS v LEFT JOIN users AS u ON u.id = v.column3")
                .build()
                .execute(&mut *self.tx)
                .await
                .map_err(map_err)?;
        }
        Ok(())
    }

    async fn insert_events(&mut self, rows: &[EventRow]) -> StoreResult<()> {
        for chunk in rows.chunks(IMPORT_BATCH_ROWS) {
            // A multi-row VALUES inserts in list order, so ids follow the file's order.
            sqlx::QueryBuilder::<Sqlite>::new(
                "INSERT INTO security_events (user_id, kind, at, ip, user_agent, request_id) ",
            )
            .push_values(chunk, |mut values, event| {
                values
                    .push_bind(event.user_id.clone())
                    .push_bind(event.record.kind.clone())
                    .push_bind(event.record.at)
                    .push_bind(event.record.ip.clone())
                    .push_bind(event.record.user_agent.clone())
                    .push_bind(event.record.request_id.clone());
            })
            .build()
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhook_cursor SET last_event_id = \
             MAX(last_event_id, (SELECT COALESCE(MAX(id), 0) FROM security_events)) WHERE id = 1",
        )
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        self.tx.commit().await.map_err(map_err)
    }
}
