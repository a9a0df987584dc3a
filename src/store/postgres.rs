//! The PostgreSQL implementation of [`Store`]: for several Tessera instances on one database.
//!
//! PostgreSQL does not serialise writers the way SQLite's `BEGIN IMMEDIATE` does, and it runs
//! at READ COMMITTED here, so no method may read a state and then write on the strength of it.
//! Every guarantee comes from a statement that checks and changes in one step:
//!
//! - single-use things (backup codes, `mfa_token`s, pending setups) are consumed by a `DELETE`
//!   whose affected-row count says whether this transaction won; a concurrent `DELETE` of the
//!   same row waits for the winner and then finds nothing;
//! - the TOTP replay step advances by `UPDATE ... WHERE mfa_last_step < $step`, re-checked by
//!   PostgreSQL on the newest row version after waiting for a concurrent writer;
//! - the throttle counts an attempt by `UPDATE ... WHERE not locked RETURNING mfa_failures`; the
//!   row lock that update takes is held until the lock time is written in the same transaction.
//!
//! SERIALIZABLE is not used: its retries would surface to users as errors. ARCHITECTURE.md lists
//! which statement guarantees what on each backend.

use super::*;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::str::FromStr;
use std::time::Duration;

/// Migrations embedded at compile time; the same numbering as SQLite's.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connection settings besides the URL (which carries host, database, user and `sslmode`).
#[derive(Debug, Clone, Copy)]
pub struct PgSettings {
    /// Connections this instance keeps at most. All instances together must stay below the
    /// server's `max_connections`.
    pub pool_size: u32,
    /// Longest a statement may run, and longest a request waits for a pooled connection, before
    /// the request fails with 503 instead of hanging.
    pub statement_timeout: Duration,
}

impl Default for PgSettings {
    fn default() -> Self {
        Self {
            pool_size: 10,
            statement_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    options: PgConnectOptions,
}

fn map_err(err: sqlx::Error) -> StoreError {
    match err {
        // A connection that breaks while it is being set up shows as a protocol error (for
        // instance an SSLRequest answered by a closed socket): the server is not usable.
        sqlx::Error::PoolClosed
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err.to_string()),
        sqlx::Error::Database(ref db) if db.is_unique_violation() => StoreError::Conflict,
        // 57014 query_canceled (statement timeout), class 08 connection exceptions, 57P01..57P03
        // the server shutting down or not accepting connections yet: the database is unavailable.
        sqlx::Error::Database(ref db)
            if db
                .code()
                .is_some_and(|code| code == "57014" || code.starts_with("08") || code.starts_with("57P")) =>
        {
            StoreError::Unavailable(err.to_string())
        }
        other => StoreError::Other(other.to_string()),
    }
}

impl PgStore {
    /// Connects to the database named by a `postgres://` URL. The pool connects lazily, so an
    /// instance starts (and answers `/readyz` with 503) while the database is still down.
    pub async fn connect(url: &str, settings: PgSettings) -> StoreResult<Self> {
        let timeout_ms = settings.statement_timeout.as_millis().max(1).to_string();
        let options = PgConnectOptions::from_str(url)
            .map_err(|err| StoreError::Other(format!("invalid PostgreSQL URL: {err}")))?
            .application_name("tessera")
            .options([("statement_timeout", timeout_ms.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool_size.max(1))
            .acquire_timeout(settings.statement_timeout)
            // A connection that died with the server is noticed before it is handed out.
            .test_before_acquire(true)
            .connect_lazy_with(options.clone());
        Ok(Self { pool, options })
    }

    async fn begin(&self) -> StoreResult<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(map_err)
    }
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

fn user_from_row(row: &PgRow) -> Result<UserRecord, sqlx::Error> {
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

fn event_from_row(row: &PgRow) -> Result<EventRecord, sqlx::Error> {
    Ok(EventRecord {
        kind: row.try_get("kind")?,
        at: row.try_get("at")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
        request_id: row.try_get("request_id")?,
    })
}

fn session_from_row(row: &PgRow) -> Result<SessionRecord, sqlx::Error> {
    let hash: Vec<u8> = row.try_get("token_hash")?;
    Ok(SessionRecord {
        token_hash: TokenHash::from_slice(&hash)
            .ok_or_else(|| sqlx::Error::Decode("token hash is not 32 bytes".into()))?,
        public_id: row.try_get("public_id")?,
        user_id: row.try_get("user_id")?,
        created_at: row.try_get("s_created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        expires_at: row.try_get("expires_at")?,
        mfa: row.try_get("mfa")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
    })
}

type Tx = Transaction<'static, Postgres>;

async fn insert_event_in(tx: &mut Tx, event: &NewEvent) -> Result<(), sqlx::Error> {
    insert_event_kind_in(tx, event, event.kind).await
}

async fn insert_event_kind_in(tx: &mut Tx, event: &NewEvent, kind: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO security_events (user_id, kind, at, ip, user_agent, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&event.user_id)
    .bind(kind)
    .bind(event.at)
    .bind(&event.ip)
    .bind(&event.user_agent)
    .bind(&event.request_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Consumes a second-factor proof inside `tx`; false when it was already used. Both branches are
/// one conditional statement: a concurrent transaction consuming the same proof blocks on the
/// row and then finds the condition false.
async fn consume_proof(
    tx: &mut Tx,
    user_id: &str,
    proof: SecondFactorProof,
    event: &NewEvent,
) -> Result<bool, sqlx::Error> {
    let consumed = match proof {
        SecondFactorProof::TotpStep(step) => {
            sqlx::query(
                "UPDATE users SET mfa_last_step = $1 WHERE id = $2 AND mfa_enabled_at IS NOT NULL \
                 AND (mfa_last_step IS NULL OR mfa_last_step < $1)",
            )
            .bind(step)
            .bind(user_id)
            .execute(&mut **tx)
            .await?
            .rows_affected()
                == 1
        }
        SecondFactorProof::BackupCode(hash) => {
            let deleted = sqlx::query("DELETE FROM backup_codes WHERE user_id = $1 AND code_hash = $2")
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

/// Locks the user's row for the rest of the transaction. Every transaction that changes more
/// than one row of a user's state takes this lock first, so such transactions of one user run
/// one after the other and always lock rows in the same order (no deadlock between, say, a login
/// deleting its `mfa_token` and a code regeneration revoking the user's `mfa_token`s).
/// `FOR NO KEY UPDATE` still lets other transactions insert rows that reference the user.
async fn lock_user(tx: &mut Tx, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn reset_throttle_in(tx: &mut Tx, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET mfa_failures = 0, mfa_locked_until = NULL WHERE id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn revoke_other_sessions_in(tx: &mut Tx, user_id: &str, keep: &TokenHash) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND token_hash <> $2")
        .bind(user_id)
        .bind(keep.as_bytes())
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM mfa_challenges WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Deletes every session and pending `mfa_token` of the user.
async fn revoke_all_sessions_in(tx: &mut Tx, user_id: &str) -> Result<(), sqlx::Error> {
    for statement in [
        "DELETE FROM sessions WHERE user_id = $1",
        "DELETE FROM mfa_challenges WHERE user_id = $1",
    ] {
        sqlx::query(statement).bind(user_id).execute(&mut **tx).await?;
    }
    Ok(())
}

async fn insert_codes_in(tx: &mut Tx, user_id: &str, codes: &BackupCodeHashes) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM backup_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    let hashes: Vec<Vec<u8>> = codes.hashes.iter().map(|hash| hash.to_vec()).collect();
    sqlx::query("INSERT INTO backup_codes (user_id, code_hash) SELECT $1, hash FROM UNNEST($2::bytea[]) AS hash")
        .bind(user_id)
        .bind(&hashes)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE users SET backup_salt = $1 WHERE id = $2")
        .bind(&codes.salt)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Inserts the session after dropping the user's expired sessions and evicting the oldest
/// beyond [`MAX_SESSIONS_PER_USER`] - 1 (one `session_evicted` event each, with the metadata of
/// `event`, the login that caused it). The caller holds [`lock_user`]: session inserts of one
/// user run one after another, so the cap is exact and `seq` (the user's highest + 1) unique.
async fn insert_session_in(tx: &mut Tx, session: &SessionRecord, event: &NewEvent) -> Result<(), sqlx::Error> {
    // One statement for both clean-ups; the cap counts the live sessions only, and each row
    // deleted says whether it was live (an eviction) or expired.
    let deleted: Vec<bool> = sqlx::query_scalar(
        "DELETE FROM sessions WHERE user_id = $1 AND (expires_at <= $2 OR seq <= \
         (SELECT seq FROM sessions WHERE user_id = $1 AND expires_at > $2 ORDER BY seq DESC LIMIT 1 OFFSET $3)) \
         RETURNING expires_at > $2",
    )
    .bind(&session.user_id)
    .bind(session.created_at)
    .bind(MAX_SESSIONS_PER_USER - 1)
    .fetch_all(&mut **tx)
    .await?;
    let evicted = deleted.into_iter().filter(|live| *live).count();
    for _ in 0..evicted {
        insert_event_kind_in(tx, event, "session_evicted").await?;
    }
    // The public facts of the user are copied from the user row (migration 0009).
    let inserted = sqlx::query(
        "INSERT INTO sessions (token_hash, public_id, user_id, created_at, last_seen_at, expires_at, mfa, \
         ip, user_agent, seq, user_email, user_created_at, user_disabled_at, user_mfa) \
         SELECT $1, $2, u.id, $4, $5, $6, $7, $8, $9, \
         (SELECT COALESCE(MAX(seq), 0) + 1 FROM sessions WHERE user_id = $3), \
         u.email, u.created_at, u.disabled_at, (u.mfa_enabled_at IS NOT NULL AND u.mfa_secret IS NOT NULL) \
         FROM users AS u WHERE u.id = $3 FOR SHARE",
    )
    .bind(session.token_hash.as_bytes())
    .bind(&session.public_id)
    .bind(&session.user_id)
    .bind(session.created_at)
    .bind(session.last_seen_at)
    .bind(session.expires_at)
    .bind(session.mfa)
    .bind(&session.ip)
    .bind(&session.user_agent)
    .execute(&mut **tx)
    .await?;
    // The user row is locked by the caller, so it exists; no row here would be a lost session.
    if inserted.rows_affected() != 1 {
        return Err(sqlx::Error::RowNotFound);
    }
    Ok(())
}

/// Whether the acting session still exists; `FOR SHARE` keeps it so until commit (a logout
/// or revocation running meanwhile waits for this transaction, or has already removed it).
async fn session_exists_in(tx: &mut Tx, token_hash: &TokenHash) -> Result<bool, sqlx::Error> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM sessions WHERE token_hash = $1 FOR SHARE")
        .bind(token_hash.as_bytes())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(found.is_some())
}

/// The account-side part of a successful password login, conditional on what was checked:
/// the verified hash is still the stored one, MFA is in the expected state and the account is
/// enabled. Resets the password throttle and remembers the network. False: nothing changed.
async fn password_login_succeeded_in(
    tx: &mut Tx,
    user_id: &str,
    verified_hash: &str,
    network: Option<&str>,
    mfa_on: bool,
) -> Result<bool, sqlx::Error> {
    let mfa = if mfa_on { "IS NOT NULL" } else { "IS NULL" };
    let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET password_failures = 0, password_locked_until = NULL, \
         last_login_network = COALESCE($1, last_login_network) \
         WHERE id = $2 AND password_hash = $3 AND mfa_enabled_at {mfa} AND disabled_at IS NULL"
    )))
    .bind(network)
    .bind(user_id)
    .bind(verified_hash)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

async fn lift_totp_suspension_in(tx: &mut Tx, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET mfa_totp_suspended_at = NULL WHERE id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn clear_mfa_in(tx: &mut Tx, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET mfa_secret = NULL, mfa_enabled_at = NULL, mfa_last_step = NULL, \
         backup_salt = NULL, mfa_failures = 0, mfa_locked_until = NULL, mfa_totp_suspended_at = NULL \
         WHERE id = $1",
    )
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM backup_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> StoreResult<()> {
        // First one connection of its own, outside the pool: a refused or failed connection is
        // reported with its cause ("connection refused", "role does not exist") instead of the
        // pool's bare timeout, which is what an operator starting an instance needs to see.
        let probe = sqlx::ConnectOptions::connect(&self.options)
            .await
            .map_err(|err| match map_err(err) {
                StoreError::Unavailable(message) | StoreError::Other(message) => {
                    StoreError::Unavailable(format!("cannot connect to PostgreSQL: {message}"))
                }
                StoreError::Conflict => StoreError::Unavailable("cannot connect to PostgreSQL".into()),
            })?;
        let _ = sqlx::Connection::close(probe).await;
        // sqlx's migrator holds a PostgreSQL advisory lock while it runs, so instances started
        // together apply each migration once and the others wait for it.
        MIGRATOR.run(&self.pool).await.map_err(|err| match err {
            sqlx::migrate::MigrateError::Execute(inner) => match map_err(inner) {
                StoreError::Unavailable(message) => StoreError::Unavailable(message),
                other => StoreError::Other(format!("migration failed: {other}")),
            },
            other => StoreError::Other(format!("migration failed: {other}")),
        })
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(map_err)?;
        Ok(())
    }

    fn pool_status(&self) -> PoolStatus {
        let size = self.pool.size();
        // `num_idle` is a usize; a pool never holds more than u32::MAX connections.
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        PoolStatus {
            size,
            idle: idle.min(size),
        }
    }

    async fn any_sealed_secret(&self) -> StoreResult<Option<Vec<u8>>> {
        sqlx::query_scalar(
            "(SELECT mfa_secret FROM users WHERE mfa_secret IS NOT NULL LIMIT 1) \
             UNION ALL (SELECT secret FROM mfa_pending LIMIT 1) LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)
    }

    async fn insert_user(&self, user: &NewUser, event: &NewEvent) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)")
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
        let row = sqlx::query(select_user!("WHERE u.email = $1"))
            .bind(email)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.as_ref().map(user_from_row).transpose().map_err(map_err)
    }

    async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query(select_user!("WHERE u.id = $1"))
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
        sqlx::query_scalar("SELECT COUNT(*) FROM backup_codes WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn upgrade_password_hash(&self, user_id: &str, old_hash: &str, new_hash: &str) -> StoreResult<()> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2 AND password_hash = $3")
            .bind(new_hash)
            .bind(user_id)
            .bind(old_hash)
            .execute(&self.pool)
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
        let mut tx = self.begin().await?;
        lock_user(&mut tx, user_id).await.map_err(map_err)?;
        if !session_exists_in(&mut tx, keep).await.map_err(map_err)? {
            return Ok(Consumed::SessionGone);
        }
        if let Some(proof) = proof
            && !consume_proof(&mut tx, user_id, proof, event).await.map_err(map_err)?
        {
            return Ok(Consumed::Rejected);
        }
        let changed = sqlx::query(
            "UPDATE users SET password_hash = $1, mfa_failures = 0, mfa_locked_until = NULL \
             WHERE id = $2 AND password_hash = $3",
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
        let mut tx = self.begin().await?;
        // The conditional UPDATE locks the user row until commit: a password change or an MFA
        // enable running at the same time either waits for this session (and then revokes it)
        // or has committed first (and then this UPDATE finds the changed row and writes nothing).
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
        let mut tx = self.begin().await?;
        // The cap reads and deletes the user's other sessions: one insert of a user at a time.
        lock_user(&mut tx, &session.user_id).await.map_err(map_err)?;
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
            "JOIN sessions s ON s.user_id = u.id WHERE s.token_hash = $1 AND s.expires_at > $2 AND s.last_seen_at > $3"
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
            sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE token_hash = $2 AND last_seen_at < $1")
                .bind(now)
                .bind(token_hash.as_bytes())
                .execute(&self.pool)
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
        // (migration 0009). Read by position, in this order; nothing secret is selected. A
        // disabled account's sessions are not found (as on SQLite).
        let row = sqlx::query(
            "SELECT user_id, created_at, last_seen_at, expires_at, mfa, \
             user_email, user_created_at, user_mfa \
             FROM sessions WHERE token_hash = $1 AND expires_at > $2 AND last_seen_at > $3 \
             AND user_disabled_at IS NULL",
        )
        .bind(token_hash.as_bytes())
        .bind(now)
        .bind(now.saturating_sub(idle_secs))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else { return Ok(None) };
        let decode = |row: &PgRow| -> Result<SessionSummary, sqlx::Error> {
            Ok(SessionSummary {
                user_id: row.try_get(0)?,
                created_at: row.try_get(1)?,
                last_seen_at: row.try_get(2)?,
                expires_at: row.try_get(3)?,
                mfa: row.try_get(4)?,
                email: row.try_get(5)?,
                user_created_at: row.try_get(6)?,
                user_mfa_enabled: row.try_get(7)?,
            })
        };
        let mut summary = decode(&row).map_err(map_err)?;
        if now - summary.last_seen_at >= 60 {
            sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE token_hash = $2 AND last_seen_at < $1")
                .bind(now)
                .bind(token_hash.as_bytes())
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
            summary.last_seen_at = now;
        }
        Ok(Some(summary))
    }

    async fn delete_session(&self, token_hash: &TokenHash, event: &NewEvent) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let deleted = sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
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
        let mut tx = self.begin().await?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn list_events(&self, user_id: &str, limit: u32) -> StoreResult<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT kind, at, ip, user_agent, request_id FROM security_events WHERE user_id = $1 \
             ORDER BY id DESC LIMIT $2",
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
        // Only events of transactions older than every running transaction: those are final,
        // so no event can later appear before the returned ones in (txid, id) order.
        let rows = sqlx::query(
            "SELECT id, txid, user_id, kind, at, ip, user_agent, request_id FROM security_events \
             WHERE (txid, id) > ($1, $2) \
             AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
             ORDER BY txid, id LIMIT $3",
        )
        .bind(after.txid)
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
                    position: OutboxPosition {
                        txid: row.try_get("txid")?,
                        id,
                    },
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(map_err)
    }

    async fn webhook_cursor(&self) -> StoreResult<OutboxPosition> {
        sqlx::query(
            "INSERT INTO webhook_cursor (id, last_event_id, last_txid) \
             SELECT 1, COALESCE(MAX(id), 0), COALESCE(MAX(txid), 0) FROM security_events \
             ON CONFLICT (id) DO NOTHING",
        )
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        let row = sqlx::query("SELECT last_txid, last_event_id FROM webhook_cursor WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(OutboxPosition {
            txid: row.try_get("last_txid").map_err(map_err)?,
            id: row.try_get("last_event_id").map_err(map_err)?,
        })
    }

    async fn acquire_webhook_lease(&self, holder: &str, now: i64, ttl_secs: i64) -> StoreResult<bool> {
        let taken = sqlx::query(
            "UPDATE webhook_cursor SET lease_holder = $1, lease_until = $2 WHERE id = 1 \
             AND (lease_holder IS NULL OR lease_holder = $1 OR lease_until <= $3)",
        )
        .bind(holder)
        .bind(now.saturating_add(ttl_secs))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(taken == 1)
    }

    async fn set_webhook_cursor(&self, holder: &str, position: OutboxPosition) -> StoreResult<bool> {
        let moved = sqlx::query(
            "UPDATE webhook_cursor SET last_txid = $1, last_event_id = $2 WHERE id = 1 AND lease_holder = $3 \
             AND (last_txid, last_event_id) < ($1, $2)",
        )
        .bind(position.txid)
        .bind(position.id)
        .bind(holder)
        .execute(&self.pool)
        .await
        .map_err(map_err)?
        .rows_affected();
        if moved == 1 {
            return Ok(true);
        }
        // Nothing moved: either the cursor is already there (still ours) or the lease is gone.
        let held: Option<bool> = sqlx::query_scalar("SELECT lease_holder = $1 FROM webhook_cursor WHERE id = 1")
            .bind(holder)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .flatten();
        Ok(held == Some(true))
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
        let mut tx = self.begin().await?;
        // The UPDATE locks the row until commit: a concurrent reservation waits here, then
        // re-evaluates the lock condition against the lock time written below. Not locked, or
        // the lock is longer than any lock can be (the clock went backwards), or the attempt
        // comes from the network of the last successful login.
        let counted: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "UPDATE users SET {counter} = {counter} + 1 WHERE id = $1 \
             AND ({lock} IS NULL OR {lock} <= $2 OR {lock} > $3 \
             OR ($4::text IS NOT NULL AND last_login_network = $4::text)) \
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
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "UPDATE users SET {lock} = $1 WHERE id = $2"
                    )))
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
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {lock} FROM users WHERE id = $1")))
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
        let mut tx = self.begin().await?;
        let suspended = sqlx::query(
            "UPDATE users SET mfa_totp_suspended_at = $1 WHERE id = $2 \
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
        let mut tx = self.begin().await?;
        // One conditional UPDATE: concurrent takers queue on the row and re-check the count.
        // A window that started in the future (the clock went backwards) is not trusted.
        let taken: Option<i64> = sqlx::query_scalar(
            "UPDATE users SET \
             reauth_count = CASE WHEN reauth_window_start IS NULL OR reauth_window_start <= $2 - $3 \
               OR reauth_window_start > $2 THEN 1 ELSE reauth_count + 1 END, \
             reauth_window_start = CASE WHEN reauth_window_start IS NULL OR reauth_window_start <= $2 - $3 \
               OR reauth_window_start > $2 THEN $2 ELSE reauth_window_start END \
             WHERE id = $1 AND NOT (reauth_window_start IS NOT NULL AND reauth_window_start > $2 - $3 \
               AND reauth_window_start <= $2 AND reauth_count >= $4) \
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
                let start: Option<i64> = sqlx::query_scalar("SELECT reauth_window_start FROM users WHERE id = $1")
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
        let found: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM backup_codes WHERE user_id = $1 AND code_hash = $2")
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
        let mut tx = self.begin().await?;
        lock_user(&mut tx, user_id).await.map_err(map_err)?;
        if !session_exists_in(&mut tx, keep).await.map_err(map_err)? {
            return Ok(Consumed::SessionGone);
        }
        // The password was right: the re-authentication attempt succeeded.
        let mfa_off = sqlx::query(
            "UPDATE users SET mfa_failures = 0, mfa_locked_until = NULL WHERE id = $1 AND mfa_enabled_at IS NULL",
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
            "INSERT INTO mfa_pending (user_id, secret, created_at, expires_at) VALUES ($1, $2, $3, $4) \
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
        let row = sqlx::query(
            "SELECT secret, created_at, expires_at FROM mfa_pending WHERE user_id = $1 AND expires_at > $2",
        )
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
        let mut tx = self.begin().await?;
        lock_user(&mut tx, &enable.user_id).await.map_err(map_err)?;
        if !session_exists_in(&mut tx, &enable.keep_session)
            .await
            .map_err(map_err)?
        {
            return Ok(Consumed::SessionGone);
        }
        let consumed = sqlx::query("DELETE FROM mfa_pending WHERE user_id = $1 AND secret = $2 AND expires_at > $3")
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
            "UPDATE users SET mfa_secret = $1, mfa_enabled_at = $2, mfa_last_step = $3, \
             mfa_failures = 0, mfa_locked_until = NULL WHERE id = $4 AND mfa_enabled_at IS NULL",
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
        let mut tx = self.begin().await?;
        lock_user(&mut tx, user_id).await.map_err(map_err)?;
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
        let mut tx = self.begin().await?;
        lock_user(&mut tx, user_id).await.map_err(map_err)?;
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
        let mut tx = self.begin().await?;
        lock_user(&mut tx, user_id).await.map_err(map_err)?;
        clear_mfa_in(&mut tx, user_id).await.map_err(map_err)?;
        revoke_all_sessions_in(&mut tx, user_id).await.map_err(map_err)?;
        sqlx::query("DELETE FROM mfa_pending WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn set_disabled(&self, user_id: &str, disabled_at: Option<i64>, event: &NewEvent) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        lock_user(&mut tx, user_id).await.map_err(map_err)?;
        sqlx::query("UPDATE users SET disabled_at = $1 WHERE id = $2")
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
        let mut tx = self.begin().await?;
        lock_user(&mut tx, user_id).await.map_err(map_err)?;
        if !password_login_succeeded_in(&mut tx, user_id, verified_hash, network, true)
            .await
            .map_err(map_err)?
        {
            return Ok(Consumed::Stale);
        }
        // Expired challenges of this user are garbage; clearing them here keeps the table small.
        sqlx::query("DELETE FROM mfa_challenges WHERE user_id = $1 AND expires_at <= $2")
            .bind(user_id)
            .bind(created_at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query("INSERT INTO mfa_challenges (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
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
        sqlx::query_scalar("SELECT user_id FROM mfa_challenges WHERE token_hash = $1 AND expires_at > $2")
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
        let mut tx = self.begin().await?;
        lock_user(&mut tx, &session.user_id).await.map_err(map_err)?;
        let taken =
            sqlx::query("DELETE FROM mfa_challenges WHERE token_hash = $1 AND user_id = $2 AND expires_at > $3")
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
        let row = sqlx::query(select_user!(
            "JOIN mfa_challenges c ON c.user_id = u.id WHERE c.token_hash = $1 AND c.expires_at > $2"
        ))
        .bind(token_hash.as_bytes())
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
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
        let mut tx = self.begin().await?;
        // The user's row first (the one lock order of `lock_user`): this conditional UPDATE takes
        // it, and a concurrent transaction holding it makes this one wait and then re-evaluate
        // the lock, suspension and replay conditions against what that one committed.
        let advanced = sqlx::query(
            "UPDATE users SET mfa_last_step = $1, mfa_failures = 0, mfa_locked_until = NULL \
             WHERE id = $2 AND mfa_enabled_at IS NOT NULL AND mfa_totp_suspended_at IS NULL \
             AND (mfa_last_step IS NULL OR mfa_last_step < $1) \
             AND (mfa_locked_until IS NULL OR mfa_locked_until <= $3 OR mfa_locked_until > $4)",
        )
        .bind(step)
        .bind(&session.user_id)
        .bind(now)
        .bind(now.saturating_add(policy.max_secs))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?
        .rows_affected()
            == 1;
        if !advanced {
            // Why not: a lock is answered like a reservation the lock refuses (one read of it).
            let until: Option<i64> = sqlx::query_scalar("SELECT mfa_locked_until FROM users WHERE id = $1")
                .bind(&session.user_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?
                .flatten();
            return Ok(match until {
                Some(until) if until > now && until <= now.saturating_add(policy.max_secs) => {
                    TotpCompletion::Locked { until }
                }
                _ => TotpCompletion::Rejected,
            });
        }
        let taken =
            sqlx::query("DELETE FROM mfa_challenges WHERE token_hash = $1 AND user_id = $2 AND expires_at > $3")
                .bind(token_hash.as_bytes())
                .bind(&session.user_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?
                .rows_affected()
                == 1;
        if !taken {
            return Ok(TotpCompletion::Rejected);
        }
        insert_session_in(&mut tx, session, event).await.map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(TotpCompletion::Completed)
    }

    async fn list_sessions(&self, user_id: &str, now: i64, idle_secs: i64) -> StoreResult<Vec<SessionRecord>> {
        let rows = sqlx::query(
            "SELECT token_hash, public_id, user_id, created_at AS s_created_at, last_seen_at, expires_at, mfa, \
             ip, user_agent FROM sessions \
             WHERE user_id = $1 AND expires_at > $2 AND last_seen_at > $3 ORDER BY seq DESC",
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
        let mut tx = self.begin().await?;
        // One conditional DELETE decides: a concurrent one of the same session waits for this
        // commit and then finds nothing, so the event is recorded once.
        let deleted = sqlx::query(
            "DELETE FROM sessions WHERE public_id = $1 AND user_id = $2 AND expires_at > $3 AND last_seen_at > $4",
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
        let mut tx = self.begin().await?;
        lock_user(&mut tx, user_id).await.map_err(map_err)?;
        // The count comes from the rows this DELETE removed, not from an earlier read.
        let live: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM sessions WHERE user_id = $1 AND token_hash <> $2 \
             RETURNING expires_at, last_seen_at) \
             SELECT COUNT(*) FROM gone WHERE expires_at > $3 AND last_seen_at > $4",
        )
        .bind(user_id)
        .bind(keep.as_bytes())
        .bind(now)
        .bind(now.saturating_sub(idle_secs))
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("DELETE FROM mfa_challenges WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_event_in(&mut tx, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(u64::try_from(live).unwrap_or_default())
    }

    async fn begin_export(&self) -> StoreResult<Box<dyn ExportSnapshot>> {
        // REPEATABLE READ: every page reads the snapshot taken by the first statement, however
        // many instances write meanwhile; READ ONLY, so it can never fail with a serialisation
        // error and blocks no writer.
        let tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(map_err)?;
        Ok(Box::new(PgExport { tx }))
    }

    async fn begin_import(&self) -> StoreResult<Box<dyn ImportTransaction>> {
        let mut tx = self.begin().await?;
        // SHARE ROW EXCLUSIVE lets readers in and keeps every writer out until commit, so the
        // database found empty stays empty but for this import. (Waiting is bounded by the
        // statement timeout.)
        sqlx::query("LOCK TABLE users, security_events IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        Ok(Box::new(PgImport { tx }))
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
        let mut tx = self.begin().await?;
        // The row lock keeps a takeover out until commit: the dead row and the cursor move
        // belong to the holder that checked here.
        let held: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM webhook_cursor WHERE id = 1 AND lease_holder = $1 FOR UPDATE")
                .bind(holder)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        if held.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO webhook_dead_events (event_id, attempts, last_error, dead_at, requeued_at) \
             VALUES ($1, $2, $3, $4, NULL) ON CONFLICT (event_id) DO UPDATE SET attempts = excluded.attempts, \
             last_error = excluded.last_error, dead_at = excluded.dead_at, requeued_at = NULL",
        )
        .bind(event.id)
        .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
        .bind(last_error)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "UPDATE webhook_cursor SET last_txid = $1, last_event_id = $2 WHERE id = 1 \
             AND (last_txid, last_event_id) < ($1, $2)",
        )
        .bind(event.position.txid)
        .bind(event.position.id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn settle_redelivery(&self, holder: &str, event_id: i64) -> StoreResult<bool> {
        let deleted = sqlx::query(
            "DELETE FROM webhook_dead_events WHERE event_id = $1 AND requeued_at IS NOT NULL \
             AND EXISTS (SELECT 1 FROM webhook_cursor WHERE id = 1 AND lease_holder = $2)",
        )
        .bind(event_id)
        .bind(holder)
        .execute(&self.pool)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(deleted == 1)
    }

    async fn dead_webhook_events(&self, only_queued: bool, limit: u32) -> StoreResult<Vec<DeadEvent>> {
        let rows = sqlx::query(
            "SELECT e.id, e.txid, e.user_id, e.kind, e.at, e.ip, e.user_agent, e.request_id, \
             d.attempts, d.last_error, d.dead_at, d.requeued_at \
             FROM webhook_dead_events d JOIN security_events e ON e.id = d.event_id \
             WHERE (NOT $1 OR d.requeued_at IS NOT NULL) ORDER BY e.id LIMIT $2",
        )
        .bind(only_queued)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let id = row.try_get("id")?;
                let attempts: i32 = row.try_get("attempts")?;
                Ok(DeadEvent {
                    event: StoredEvent {
                        id,
                        user_id: row.try_get("user_id")?,
                        record: event_from_row(row)?,
                        position: OutboxPosition {
                            txid: row.try_get("txid")?,
                            id,
                        },
                    },
                    attempts: u32::try_from(attempts).unwrap_or(0),
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
            sqlx::query("UPDATE webhook_dead_events SET requeued_at = $1 WHERE event_id = $2 AND requeued_at IS NULL")
                .bind(now)
                .bind(event_id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?
                .rows_affected();
        if queued == 1 {
            return Ok(Redelivery::Queued);
        }
        // Nothing written: only the answer is left to find.
        let row = sqlx::query(
            "SELECT EXISTS (SELECT 1 FROM webhook_dead_events WHERE event_id = $1) AS dead, \
             EXISTS (SELECT 1 FROM security_events WHERE id = $1) AS known",
        )
        .bind(event_id)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        let dead: bool = row.try_get("dead").map_err(map_err)?;
        let known: bool = row.try_get("known").map_err(map_err)?;
        Ok(match (dead, known) {
            (true, _) => Redelivery::AlreadyQueued,
            (false, true) => Redelivery::NotDead,
            (false, false) => Redelivery::Unknown,
        })
    }

    async fn release_webhook_lease(&self, holder: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhook_cursor SET lease_holder = NULL, lease_until = NULL WHERE id = 1 AND lease_holder = $1",
        )
        .bind(holder)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn webhook_backlog(&self) -> StoreResult<WebhookBacklog> {
        let row = sqlx::query(
            "SELECT \
             (SELECT COUNT(*) FROM security_events e, webhook_cursor c \
              WHERE c.id = 1 AND (e.txid, e.id) > (c.last_txid, c.last_event_id)) \
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
        // One autocommit DELETE per batch: row locks are held for one batch only.
        let batch = i64::from(batch);
        let query = match kind {
            SweepKind::Sessions { idle_secs } => sqlx::query(
                "DELETE FROM sessions WHERE token_hash IN (SELECT token_hash FROM sessions \
                 WHERE expires_at <= $1 OR last_seen_at <= $2 LIMIT $3)",
            )
            .bind(now)
            .bind(now.saturating_sub(idle_secs))
            .bind(batch),
            SweepKind::Challenges => sqlx::query(
                "DELETE FROM mfa_challenges WHERE token_hash IN \
                 (SELECT token_hash FROM mfa_challenges WHERE expires_at <= $1 LIMIT $2)",
            )
            .bind(now)
            .bind(batch),
            SweepKind::PendingSetups => sqlx::query(
                "DELETE FROM mfa_pending WHERE user_id IN \
                 (SELECT user_id FROM mfa_pending WHERE expires_at <= $1 LIMIT $2)",
            )
            .bind(now)
            .bind(batch),
            SweepKind::Events {
                before,
                keep_undelivered,
            } => sqlx::query(
                "DELETE FROM security_events WHERE id IN (SELECT id FROM security_events WHERE at < $1 \
                 AND (NOT $2 OR ((txid, id) <= (SELECT last_txid, last_event_id FROM webhook_cursor WHERE id = 1) \
                 AND id NOT IN (SELECT event_id FROM webhook_dead_events))) ORDER BY at LIMIT $3)",
            )
            .bind(before)
            .bind(keep_undelivered)
            .bind(batch),
        };
        Ok(query.execute(&self.pool).await.map_err(map_err)?.rows_affected())
    }

    async fn operator_set_password(&self, user_id: &str, new_hash: &str, event: &NewEvent) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        lock_user(&mut tx, user_id).await.map_err(map_err)?;
        let changed = sqlx::query(
            "UPDATE users SET password_hash = $1, mfa_failures = 0, mfa_locked_until = NULL, \
             password_failures = 0, password_locked_until = NULL WHERE id = $2",
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
        let mut tx = self.begin().await?;
        lock_user(&mut tx, user_id).await.map_err(map_err)?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1::BIGINT FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if exists.is_none() {
            return Ok(None);
        }
        let sessions = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        let challenges = sqlx::query("DELETE FROM mfa_challenges WHERE user_id = $1")
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
        let mut tx = self.begin().await?;
        lock_user(&mut tx, user_id).await.map_err(map_err)?;
        let changed = sqlx::query(
            "UPDATE users SET mfa_failures = 0, mfa_locked_until = NULL, password_failures = 0, \
             password_locked_until = NULL, \
             mfa_totp_suspended_at = CASE WHEN $1 THEN NULL ELSE mfa_totp_suspended_at END \
             WHERE id = $2",
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
        let mut tx = self.begin().await?;
        // `FOR UPDATE`, not `lock_user`'s `FOR NO KEY UPDATE`: the row is going away, so rows that
        // would reference it (a login's session, a setup) must wait now, then find it gone,
        // rather than slip in and have this transaction upgrade its lock behind them.
        sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        // Children first (the foreign keys would cascade, but saying it keeps the list visible).
        for statement in [
            "DELETE FROM sessions WHERE user_id = $1",
            "DELETE FROM mfa_challenges WHERE user_id = $1",
            "DELETE FROM mfa_pending WHERE user_id = $1",
            "DELETE FROM backup_codes WHERE user_id = $1",
        ] {
            sqlx::query(statement)
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
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

// --- `tessera export` / `tessera import` ---

const SELECT_USER_ROW: &str = "SELECT id, email, password_hash, created_at, disabled_at, mfa_secret, mfa_enabled_at, \
     mfa_last_step, backup_salt, mfa_failures, mfa_locked_until, password_failures, password_locked_until, \
     last_login_network, mfa_totp_suspended_at FROM users";

fn user_row_from(row: &PgRow) -> Result<UserRow, sqlx::Error> {
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

fn decode_all<T>(rows: &[PgRow], decode: fn(&PgRow) -> Result<T, sqlx::Error>) -> StoreResult<Vec<T>> {
    rows.iter().map(decode).collect::<Result<_, _>>().map_err(map_err)
}

struct PgExport {
    tx: Tx,
}

// Keyset paging starts from a key below every real one ('' and the empty byte string sort
// first), so each page is one index range scan in the table's own collation.
#[async_trait]
impl ExportSnapshot for PgExport {
    async fn users(&mut self, after: Option<&str>, limit: u32) -> StoreResult<Vec<UserRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_USER_ROW} WHERE id > $1 ORDER BY id LIMIT $2"
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
            "SELECT user_id, code_hash FROM backup_codes WHERE (user_id, code_hash) > ($1, $2) \
             ORDER BY user_id, code_hash LIMIT $3",
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
             WHERE user_id > $1 AND expires_at > $2 ORDER BY user_id LIMIT $3",
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
             WHERE token_hash > $1 AND expires_at > $2 ORDER BY token_hash LIMIT $3",
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
             WHERE id > $1 ORDER BY id LIMIT $2",
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

struct PgImport {
    tx: Tx,
}

#[async_trait]
impl ImportTransaction for PgImport {
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

    // Each batch is one statement over arrays (`UNNEST`): PostgreSQL parses and plans it once,
    // and the bind-parameter count does not grow with the batch.
    async fn insert_users(&mut self, rows: &[UserRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, created_at, disabled_at, mfa_secret, mfa_enabled_at, \
             mfa_last_step, backup_salt, mfa_failures, mfa_locked_until, password_failures, password_locked_until, \
             last_login_network, mfa_totp_suspended_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bytea[], \
             $7::bigint[], $8::bigint[], $9::bytea[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], \
             $14::text[], $15::bigint[])",
        )
        .bind(rows.iter().map(|user| user.id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|user| user.email.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|user| user.password_hash.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|user| user.created_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|user| user.disabled_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|user| user.mfa_secret.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|user| user.mfa_enabled_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|user| user.mfa_last_step).collect::<Vec<_>>())
        .bind(rows.iter().map(|user| user.backup_salt.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|user| user.mfa_failures).collect::<Vec<_>>())
        .bind(rows.iter().map(|user| user.mfa_locked_until).collect::<Vec<_>>())
        .bind(rows.iter().map(|user| user.password_failures).collect::<Vec<_>>())
        .bind(rows.iter().map(|user| user.password_locked_until).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|user| user.last_login_network.clone())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|user| user.mfa_totp_suspended_at).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn insert_backup_codes(&mut self, rows: &[BackupCodeRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query("INSERT INTO backup_codes (user_id, code_hash) SELECT * FROM UNNEST($1::text[], $2::bytea[])")
            .bind(rows.iter().map(|code| code.user_id.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|code| code.code_hash.clone()).collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn insert_pending_setups(&mut self, rows: &[PendingSetupRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO mfa_pending (user_id, secret, created_at, expires_at) \
             SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::bigint[], $4::bigint[])",
        )
        .bind(rows.iter().map(|setup| setup.user_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|setup| setup.sealed_secret.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|setup| setup.created_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|setup| setup.expires_at).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn insert_sessions(&mut self, rows: &[SessionRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(
            // The user's public facts are copied from the (already imported) user row, as on
            // every session insert (migration 0009); a missing user fails on `user_email`.
            "INSERT INTO sessions (token_hash, public_id, user_id, created_at, last_seen_at, expires_at, mfa, ip, \
             user_agent, seq, user_email, user_created_at, user_disabled_at, user_mfa) \
             SELECT v.token_hash, v.public_id, v.user_id, v.created_at, v.last_seen_at, v.expires_at, v.mfa, v.ip, \
             v.user_agent, v.seq, u.email, u.created_at, u.disabled_at, \
             (u.mfa_enabled_at IS NOT NULL AND u.mfa_secret IS NOT NULL) \
             FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], \
             $7::boolean[], $8::text[], $9::text[], $10::bigint[]) \
             AS v(token_hash, public_id, user_id, created_at, last_seen_at, expires_at, mfa, ip, user_agent, seq) \
             LEFT JOIN users AS u ON u.id = v.user_id",
        )
        .bind(
            rows.iter()
                .map(|row| row.record.token_hash.as_bytes().to_vec())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|row| row.record.public_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|row| row.record.user_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|row| row.record.created_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|row| row.record.last_seen_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|row| row.record.expires_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|row| row.record.mfa).collect::<Vec<_>>())
        .bind(rows.iter().map(|row| row.record.ip.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|row| row.record.user_agent.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|row| row.seq).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn insert_events(&mut self, rows: &[EventRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // `WITH ORDINALITY` + `ORDER BY` makes the identity values follow the file's order.
        sqlx::query(
            "INSERT INTO security_events (user_id, kind, at, ip, user_agent, request_id) \
             SELECT user_id, kind, at, ip, user_agent, request_id FROM UNNEST($1::text[], $2::text[], \
             $3::bigint[], $4::text[], $5::text[], $6::text[]) \
             WITH ORDINALITY AS e (user_id, kind, at, ip, user_agent, request_id, position) ORDER BY position",
        )
        .bind(rows.iter().map(|event| event.user_id.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|event| event.record.kind.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|event| event.record.at).collect::<Vec<_>>())
        .bind(rows.iter().map(|event| event.record.ip.clone()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|event| event.record.user_agent.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|event| event.record.request_id.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhook_cursor SET last_txid = newest.txid, last_event_id = newest.id \
             FROM (SELECT txid, id FROM security_events ORDER BY txid DESC, id DESC LIMIT 1) AS newest \
             WHERE webhook_cursor.id = 1 \
             AND (webhook_cursor.last_txid, webhook_cursor.last_event_id) < (newest.txid, newest.id)",
        )
        .execute(&mut *self.tx)
        .await
        .map_err(map_err)?;
        self.tx.commit().await.map_err(map_err)
    }
}
