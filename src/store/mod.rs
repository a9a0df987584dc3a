//! The persistence boundary: one [`Store`] trait, one implementation per backend.
//!
//! Every state change that must be atomic (consume a code, advance the replay step, count a
//! failure, rotate sessions) is a single method here, implemented as one statement or one
//! transaction, so the service never does read-then-write on security state. The store knows
//! rows, not rules: it does not hash, seal, or decide policy.

pub mod postgres;
pub mod sqlite;

use crate::domain::token::TokenHash;
use async_trait::async_trait;

/// Errors of the persistence layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (closed pool, timeout, I/O): the service answers 503.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule was violated (e.g. the email is taken).
    #[error("conflict with existing data")]
    Conflict,
    /// Anything else: a bug or a corrupt database. Logged, answered 500.
    #[error("database error: {0}")]
    Other(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// An account row.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
    pub mfa: Option<MfaRecord>,
    /// The second-factor throttle (codes, and password re-authentication through a session).
    pub throttle: ThrottleRecord,
    /// The password throttle of the login's first step.
    pub password_throttle: ThrottleRecord,
}

/// MFA state of a user with MFA on.
#[derive(Clone)]
pub struct MfaRecord {
    pub sealed_secret: Vec<u8>,
    pub enabled_at: i64,
    pub last_step: Option<i64>,
    pub backup_salt: Vec<u8>,
    /// Set after too many consecutive failed codes: TOTP codes are refused, backup codes work.
    pub totp_suspended_at: Option<i64>,
}

impl std::fmt::Debug for MfaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaRecord")
            .field("enabled_at", &self.enabled_at)
            .field("last_step", &self.last_step)
            .field("totp_suspended_at", &self.totp_suspended_at)
            .finish_non_exhaustive()
    }
}

/// Consecutive-failure counters of a user (one for the second factor, one for the password).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottleRecord {
    pub failures: u32,
    pub locked_until: Option<i64>,
}

/// A new account.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub created_at: i64,
}

/// A session row.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub token_hash: TokenHash,
    /// The session's name in the API (a random UUID): neither the token nor its hash.
    pub public_id: String,
    pub user_id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub mfa: bool,
    /// Client address and user agent of the login that opened the session.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A live session and the public facts of its user: what session introspection answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub user_id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    /// The session was opened with the second factor.
    pub mfa: bool,
    pub email: String,
    pub user_created_at: i64,
    /// MFA is on for the account (the same rule as [`UserRecord::mfa`] being `Some`).
    pub user_mfa_enabled: bool,
}

/// Sessions kept per account. Inserting a session (a login) first evicts the oldest ones beyond
/// `MAX_SESSIONS_PER_USER - 1`, in the same transaction, each with a `session_evicted` event.
pub const MAX_SESSIONS_PER_USER: i64 = 100;

/// How often `tessera serve` runs [`Store::checkpoint`].
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// A pending (not yet verified) MFA setup.
#[derive(Clone)]
pub struct PendingSetupRecord {
    pub sealed_secret: Vec<u8>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A security event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// `None` for a failed login with an unknown email (the address itself is not kept).
    pub user_id: Option<String>,
    pub kind: &'static str,
    pub at: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

/// A recorded security event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub kind: String,
    pub at: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

/// A recorded event with its position in the outbox, for the webhook.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: i64,
    pub user_id: Option<String>,
    pub record: EventRecord,
    /// Where the event stands in the outbox's delivery order.
    pub position: OutboxPosition,
}

/// A place in the webhook outbox's delivery order: events are delivered in `(txid, id)` order.
/// On SQLite `txid` is always 0 (writers are serialised, so ids are in commit order); on
/// PostgreSQL it is the inserting transaction's id, and only events of transactions older than
/// every running one are handed out, so a late commit never lands behind the cursor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct OutboxPosition {
    pub txid: i64,
    pub id: i64,
}

/// Proof of the second factor, checked by the service and consumed by the store in the same
/// transaction as the change it authorises.
#[derive(Debug, Clone, Copy)]
pub enum SecondFactorProof {
    /// A TOTP code matched this step; accepted only if greater than the stored last step.
    TotpStep(i64),
    /// A backup code with this hash; accepted only if the row still exists (then deleted).
    BackupCode([u8; 32]),
}

/// Which consecutive-failure counter an attempt counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind<'a> {
    /// A code (TOTP or backup), or a password re-authentication through a session.
    SecondFactor,
    /// The password of a login. An attempt from `network`, when it is the network of the
    /// account's last successful login, is evaluated even while the password step is locked.
    Password { network: Option<&'a str> },
}

/// How long a lock lasts after how many failures, and the longest any lock may be. A stored
/// lock longer than `max_secs` from now (a clock that went backwards) is not honoured.
#[derive(Debug, Clone, Copy)]
pub struct LockPolicy {
    pub lock_secs: fn(u32) -> i64,
    pub max_secs: i64,
}

/// The outcome of asking to evaluate one more attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptReservation {
    /// Go ahead; this attempt is counted as the `failures`-th until a success resets the count.
    Granted { failures: u32 },
    /// The account is locked until this time; nothing is evaluated.
    Locked { until: i64 },
}

/// What a store method that consumes a proof reports when the proof was already used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    Yes,
    /// The step was not newer than the last accepted one, the backup code was gone, or the
    /// challenge expired or was used: nothing was written.
    Rejected,
    /// The session acting for the request no longer exists (logged out, revoked): nothing was
    /// written.
    SessionGone,
    /// The account changed between the check and the change (the password hash that was
    /// verified is no longer the stored one, MFA was turned on or off, the account was
    /// disabled): nothing was written.
    Stale,
}

/// What [`Store::complete_challenge_with_totp`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpCompletion {
    /// The session was created; the step, the challenge and the throttle were updated.
    Completed,
    /// The second factor is locked until then: nothing was written.
    Locked { until: i64 },
    /// The step was not newer than the last accepted one, TOTP codes are suspended, MFA is off,
    /// or the challenge expired or was used: nothing was written.
    Rejected,
}

/// A fresh backup-code set, as stored.
#[derive(Clone)]
pub struct BackupCodeHashes {
    pub salt: Vec<u8>,
    pub hashes: Vec<[u8; 32]>,
}

/// Enabling MFA: everything `verify` writes, in one transaction.
#[derive(Clone)]
pub struct EnableMfa {
    pub user_id: String,
    /// The pending setup being consumed, identified by its sealed secret.
    pub sealed_secret: Vec<u8>,
    pub step: i64,
    pub codes: BackupCodeHashes,
    pub keep_session: TokenHash,
    pub now: i64,
    pub event: NewEvent,
}

/// Connections of the store's pool at one moment (for `tessera_database_connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections open, in use or idle.
    pub size: u32,
    /// Open connections waiting in the pool, not lent to a query.
    pub idle: u32,
}

impl PoolStatus {
    /// Connections lent to a query or transaction right now.
    pub fn in_use(&self) -> u32 {
        self.size.saturating_sub(self.idle)
    }
}

/// The persistence interface. Implementations must make each method atomic.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`, for logs and operator messages.
    fn backend(&self) -> &'static str;
    /// Applies the embedded migrations of this backend that have not run yet. Safe to call from
    /// several processes at once (PostgreSQL takes an advisory lock; SQLite a write lock).
    async fn migrate(&self) -> StoreResult<()>;
    /// Closes the pool: later calls fail as [`StoreError::Unavailable`].
    async fn close(&self);
    /// Moves what the write-ahead log holds into the database file, without blocking writers
    /// or readers (SQLite's PASSIVE checkpoint), so that the writer rarely has to (`tessera
    /// serve` calls it every [`CHECKPOINT_INTERVAL`]). Returns the log's frames and how many of
    /// them are now in the database file. PostgreSQL checkpoints by itself: (0, 0).
    async fn checkpoint(&self) -> StoreResult<(i64, i64)> {
        Ok((0, 0))
    }
    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;
    /// The pool's open and idle connections, read without touching the database.
    fn pool_status(&self) -> PoolStatus;
    /// Any one sealed TOTP secret (enabled or pending), to check the master key at start.
    async fn any_sealed_secret(&self) -> StoreResult<Option<Vec<u8>>>;

    // --- accounts ---
    async fn insert_user(&self, user: &NewUser, event: &NewEvent) -> StoreResult<()>;
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>>;
    async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRecord>>;
    async fn list_users(&self) -> StoreResult<Vec<UserRecord>>;
    /// Unused backup codes of the user (kept out of the user row: session lookups don't need it).
    async fn backup_codes_remaining(&self, user_id: &str) -> StoreResult<i64>;
    /// Replaces the hash only if it is still `old_hash` (parameter upgrade after login).
    async fn upgrade_password_hash(&self, user_id: &str, old_hash: &str, new_hash: &str) -> StoreResult<()>;
    /// Sets a new password while `keep` still exists and `old_hash` is still the stored hash;
    /// consumes the proof if any, revokes every session but `keep`, resets the throttle and
    /// records the event.
    async fn change_password(
        &self,
        user_id: &str,
        proof: Option<SecondFactorProof>,
        old_hash: &str,
        new_hash: &str,
        keep: &TokenHash,
        event: &NewEvent,
    ) -> StoreResult<Consumed>;

    // --- sessions ---
    /// Inserts the session; drops the user's expired sessions and evicts the oldest beyond
    /// [`MAX_SESSIONS_PER_USER`] (recording `session_evicted` for each) in the same transaction.
    async fn insert_session(&self, session: &SessionRecord, event: &NewEvent) -> StoreResult<()>;
    /// The one-factor session of a password login: created only while `verified_hash` is still
    /// the stored hash, MFA is off and the account is enabled (`Stale` otherwise). Resets the
    /// password throttle and remembers `network` as the last login's.
    async fn login_session(
        &self,
        session: &SessionRecord,
        verified_hash: &str,
        network: Option<&str>,
        event: &NewEvent,
    ) -> StoreResult<Consumed>;
    /// The session and its user if the session is neither expired nor idle past `idle_secs`;
    /// refreshes `last_seen_at` (at most once a minute, to keep the hot path read-mostly).
    async fn active_session(
        &self,
        token_hash: &TokenHash,
        now: i64,
        idle_secs: i64,
    ) -> StoreResult<Option<(SessionRecord, UserRecord)>>;
    /// [`Store::active_session`] for introspection: the same rules (expiry, idle limit, the
    /// once-a-minute `last_seen_at` refresh), but only the columns the answer needs; no password
    /// hash, secret or throttle state is read. `None` as well when the account is disabled (its
    /// sessions are revoked when it is, and the copy of `disabled_at` on the row is checked too).
    async fn active_session_summary(
        &self,
        token_hash: &TokenHash,
        now: i64,
        idle_secs: i64,
    ) -> StoreResult<Option<SessionSummary>>;
    /// Deletes the session; true if it existed.
    async fn delete_session(&self, token_hash: &TokenHash, event: &NewEvent) -> StoreResult<bool>;

    // --- security events ---
    async fn insert_event(&self, event: &NewEvent) -> StoreResult<()>;
    async fn list_events(&self, user_id: &str, limit: u32) -> StoreResult<Vec<EventRecord>>;
    /// Events past `after` in delivery order (the webhook outbox), at most `limit`.
    async fn events_after(&self, after: OutboxPosition, limit: u32) -> StoreResult<Vec<StoredEvent>>;
    /// The position of the last event the webhook delivered; on first use, the newest event's
    /// (so enabling the webhook does not replay history).
    async fn webhook_cursor(&self) -> StoreResult<OutboxPosition>;
    /// Takes or renews the delivery lease for `holder` until `now + ttl_secs`; true when
    /// `holder` has it. Another holder's lease is only taken once it has expired.
    async fn acquire_webhook_lease(&self, holder: &str, now: i64, ttl_secs: i64) -> StoreResult<bool>;
    /// Moves the cursor forward to `position`, only while `holder` holds the lease; false when
    /// the lease was lost (another instance took over) and nothing was written.
    async fn set_webhook_cursor(&self, holder: &str, position: OutboxPosition) -> StoreResult<bool>;

    // --- throttles ---
    /// Counts one more attempt of `kind` before it is evaluated, unless that counter is locked;
    /// sets the lock the policy prescribes. One conditional update, so a burst of parallel
    /// attempts cannot all slip through.
    async fn reserve_attempt(
        &self,
        user_id: &str,
        kind: AttemptKind<'_>,
        now: i64,
        policy: LockPolicy,
    ) -> StoreResult<AttemptReservation>;
    /// Suspends TOTP codes of a user with MFA on (after too many failures); records `event`
    /// when it newly did. True if it newly did.
    async fn suspend_totp(&self, user_id: &str, event: &NewEvent) -> StoreResult<bool>;
    /// Takes one re-authentication from the user's budget of `limit` per `window_secs`
    /// (`Granted { failures: n }` with n the count in the window, or `Locked { until }` when
    /// the window is used up). Success does not give any back.
    async fn take_reauth(
        &self,
        user_id: &str,
        now: i64,
        window_secs: i64,
        limit: u32,
    ) -> StoreResult<AttemptReservation>;
    /// Whether the user has an unused backup code with this hash (a read; using it is
    /// the consuming change's business).
    async fn backup_code_exists(&self, user_id: &str, hash: &[u8; 32]) -> StoreResult<bool>;

    // --- MFA lifecycle ---
    /// Stores (or replaces) the pending setup and resets the throttle (the password was right),
    /// while the session `keep` exists (`SessionGone`) and MFA is off (`Stale`).
    async fn put_pending_setup(
        &self,
        user_id: &str,
        setup: &PendingSetupRecord,
        keep: &TokenHash,
        event: &NewEvent,
    ) -> StoreResult<Consumed>;
    async fn pending_setup(&self, user_id: &str, now: i64) -> StoreResult<Option<PendingSetupRecord>>;
    /// Consumes the pending setup and turns MFA on with the first accepted step and the backup
    /// codes; revokes the other sessions; resets the throttle. Rejected if the setup is gone,
    /// expired or replaced, or MFA is already on; `SessionGone` if the acting session ended.
    async fn enable_mfa(&self, enable: &EnableMfa) -> StoreResult<Consumed>;
    /// Consumes the proof and replaces the whole backup-code set; revokes other sessions.
    /// `SessionGone` (nothing written) if `keep` no longer exists.
    async fn replace_backup_codes(
        &self,
        user_id: &str,
        proof: SecondFactorProof,
        codes: &BackupCodeHashes,
        keep: &TokenHash,
        event: &NewEvent,
    ) -> StoreResult<Consumed>;
    /// Consumes the proof and deletes secret, codes and challenges; revokes other sessions.
    /// `SessionGone` (nothing written) if `keep` no longer exists.
    async fn disable_mfa(
        &self,
        user_id: &str,
        proof: SecondFactorProof,
        keep: &TokenHash,
        event: &NewEvent,
    ) -> StoreResult<Consumed>;
    /// Operator reset: MFA off, pending setup and challenges gone, all sessions revoked.
    async fn reset_mfa(&self, user_id: &str, event: &NewEvent) -> StoreResult<()>;
    /// Operator: sets or clears `disabled_at`; disabling also revokes sessions and challenges.
    async fn set_disabled(&self, user_id: &str, disabled_at: Option<i64>, event: &NewEvent) -> StoreResult<()>;

    // --- second-factor login ---
    /// The `mfa_token` of a password login: stored only while `verified_hash` is still the
    /// stored hash, MFA is on and the account is enabled (`Stale` otherwise). Resets the
    /// password throttle and remembers `network` as the last login's.
    #[allow(clippy::too_many_arguments)]
    async fn insert_challenge(
        &self,
        token_hash: &TokenHash,
        user_id: &str,
        created_at: i64,
        expires_at: i64,
        verified_hash: &str,
        network: Option<&str>,
        event: &NewEvent,
    ) -> StoreResult<Consumed>;
    /// The user id of a challenge that is still valid at `now`.
    async fn challenge_user(&self, token_hash: &TokenHash, now: i64) -> StoreResult<Option<String>>;
    /// Consumes the challenge and the proof, resets the throttle (and, for a backup code, lifts
    /// a TOTP suspension) and creates the session (with the eviction of [`Store::insert_session`]).
    async fn complete_challenge(
        &self,
        token_hash: &TokenHash,
        proof: SecondFactorProof,
        session: &SessionRecord,
        event: &NewEvent,
    ) -> StoreResult<Consumed>;
    /// The user of a challenge that is still valid at `now`, in one read (the second login
    /// step's only read: the challenge joined with its user).
    async fn challenge_user_record(&self, token_hash: &TokenHash, now: i64) -> StoreResult<Option<UserRecord>>;
    /// The second login step with a TOTP code the service found right, in ONE transaction and
    /// without a reservation before it: only while the second factor is not locked at
    /// `session.created_at` (a lock longer than `policy.max_secs` is not honoured, as in
    /// [`Store::reserve_attempt`]), TOTP codes are not suspended and `step` is newer than the
    /// last accepted one, it advances the step and resets the throttle (one `UPDATE`), consumes
    /// the challenge and creates the session (with the eviction of [`Store::insert_session`])
    /// and `event`. Otherwise nothing is written: `Locked` while the second factor is locked
    /// (the same answer, after the same work, as a reservation refused by the lock), else
    /// `Rejected`, and the caller reserves an attempt as for a wrong code. (SQLite commits the
    /// steps waiting at the same moment together, each in a savepoint of its own: still all
    /// or nothing per step, answered only after the commit.)
    async fn complete_challenge_with_totp(
        &self,
        token_hash: &TokenHash,
        step: i64,
        policy: LockPolicy,
        session: &SessionRecord,
        event: &NewEvent,
    ) -> StoreResult<TotpCompletion>;

    // --- sessions the user sees and ends ---
    /// The user's live sessions (not expired, not idle past `idle_secs` at `now`), newest first.
    async fn list_sessions(&self, user_id: &str, now: i64, idle_secs: i64) -> StoreResult<Vec<SessionRecord>>;
    /// Deletes the live session `public_id` if it belongs to `user_id`, with the event; false
    /// (and nothing written) when the user has no such live session.
    async fn delete_user_session(
        &self,
        user_id: &str,
        public_id: &str,
        now: i64,
        idle_secs: i64,
        event: &NewEvent,
    ) -> StoreResult<bool>;
    /// Deletes every session of the user but `keep`, and the pending `mfa_token`s, with the
    /// event; returns how many of the deleted sessions were live.
    async fn revoke_other_sessions(
        &self,
        user_id: &str,
        keep: &TokenHash,
        now: i64,
        idle_secs: i64,
        event: &NewEvent,
    ) -> StoreResult<u64>;

    // --- moving an installation (`tessera export` / `tessera import`) ---
    /// Opens a read-only transaction over one consistent snapshot of the whole database, for
    /// `tessera export`. Writers are not blocked (SQLite WAL reader; PostgreSQL REPEATABLE READ).
    async fn begin_export(&self) -> StoreResult<Box<dyn ExportSnapshot>>;
    /// Opens the one write transaction of `tessera import`. Concurrent writers wait until it
    /// ends (SQLite `BEGIN IMMEDIATE`; PostgreSQL locks `users` and `security_events` against
    /// writes), so the emptiness check it offers stays true until commit. Dropping it without
    /// [`ImportTransaction::commit`] rolls everything back.
    async fn begin_import(&self) -> StoreResult<Box<dyn ImportTransaction>>;

    // --- webhook dead events and housekeeping (`crate::webhook`, `crate::housekeeping`) ---
    /// Records `event` as dead after `attempts` failed deliveries (or marks a redelivered one
    /// dead again, clearing its queue mark) and moves the cursor past it, in one transaction,
    /// only while `holder` holds the lease; false (nothing written) when the lease was lost.
    async fn bury_webhook_event(
        &self,
        holder: &str,
        event: &StoredEvent,
        attempts: u32,
        last_error: &str,
        now: i64,
    ) -> StoreResult<bool>;
    /// Deletes the dead-event row of a requeued event that has now been delivered, only while
    /// `holder` holds the lease; false when nothing was deleted (lease lost, row gone).
    async fn settle_redelivery(&self, holder: &str, event_id: i64) -> StoreResult<bool>;
    /// Dead events, oldest event first: all of them, or only those queued for redelivery.
    async fn dead_webhook_events(&self, only_queued: bool, limit: u32) -> StoreResult<Vec<DeadEvent>>;
    /// Queues a dead event for redelivery (`tessera events redeliver`); writes nothing unless
    /// the answer is [`Redelivery::Queued`].
    async fn requeue_dead_event(&self, event_id: i64, now: i64) -> StoreResult<Redelivery>;
    /// Gives up the delivery lease if `holder` has it (a graceful stop), so another instance
    /// takes over at once instead of after the lease's lifetime.
    async fn release_webhook_lease(&self, holder: &str) -> StoreResult<()>;
    /// What the webhook has left to do, for the metrics.
    async fn webhook_backlog(&self) -> StoreResult<WebhookBacklog>;
    /// Deletes at most `batch` rows that `kind` names as garbage at `now`, in one short
    /// statement; returns how many. Housekeeping calls it until it returns less than `batch`.
    async fn sweep(&self, kind: SweepKind, now: i64, batch: u32) -> StoreResult<u64>;
    // --- operator commands (`tessera user set-password|revoke-sessions|unlock|delete`) ---
    // Each is one transaction that starts by locking the user's row (PostgreSQL) or the database
    // (SQLite `BEGIN IMMEDIATE`); `false` / `None` when the account no longer exists, and then
    // nothing, not even the event, is written.
    /// Sets a new password hash, revokes every session and pending `mfa_token`, clears both
    /// throttles (not a TOTP suspension) and records the event.
    async fn operator_set_password(&self, user_id: &str, new_hash: &str, event: &NewEvent) -> StoreResult<bool>;
    /// Deletes every session and pending `mfa_token` of the user and records the event.
    async fn operator_revoke_sessions(&self, user_id: &str, event: &NewEvent) -> StoreResult<Option<RevokedSessions>>;
    /// Clears the password throttle and the second-factor throttle, and, with `lift_totp_suspension`,
    /// a TOTP suspension; records the event.
    async fn operator_unlock(&self, user_id: &str, lift_totp_suspension: bool, event: &NewEvent) -> StoreResult<bool>;
    /// Deletes the account and every row that hangs off it (sessions, `mfa_token`s, pending setup,
    /// backup codes; the MFA secret and the throttles are columns of the account row). Its security
    /// events stay, as the audit trail, and `event` (`user_deleted`) is added to them.
    async fn operator_delete_user(&self, user_id: &str, event: &NewEvent) -> StoreResult<bool>;
}

/// A webhook event that failed every delivery attempt.
#[derive(Debug, Clone)]
pub struct DeadEvent {
    pub event: StoredEvent,
    /// Failed attempts in total, over every redelivery.
    pub attempts: u32,
    /// The last failure: an HTTP status or a transport error (never the URL or a secret).
    pub last_error: String,
    pub dead_at: i64,
    /// Set while the event waits for redelivery.
    pub requeued_at: Option<i64>,
}

/// The answer of [`Store::requeue_dead_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    Queued,
    AlreadyQueued,
    /// The event exists but is not dead (delivered, or still on its way).
    NotDead,
    /// No event has this id.
    Unknown,
}

/// Counts of [`Store::webhook_backlog`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookBacklog {
    /// Events past the cursor plus dead events queued for redelivery.
    pub pending: i64,
    /// Dead events not queued for redelivery.
    pub dead: i64,
}

/// What one [`Store::sweep`] call deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepKind {
    /// Sessions past their lifetime or idle for `idle_secs` (the ones no request accepts).
    Sessions { idle_secs: i64 },
    /// Expired `mfa_token`s of password logins.
    Challenges,
    /// Expired pending MFA setups.
    PendingSetups,
    /// Security events older than `before`. With `keep_undelivered` (a webhook is configured),
    /// only events the webhook has passed and that are not dead: none before its cursor exists.
    Events { before: i64, keep_undelivered: bool },
}

impl SweepKind {
    /// The `kind` label of `tessera_housekeeping_deleted_total`.
    pub fn label(&self) -> &'static str {
        match self {
            SweepKind::Sessions { .. } => "sessions",
            SweepKind::Challenges => "mfa_tokens",
            SweepKind::PendingSetups => "pending_setups",
            SweepKind::Events { .. } => "security_events",
        }
    }
}

/// What [`Store::operator_revoke_sessions`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevokedSessions {
    /// Session rows (expired ones included: they are gone as well).
    pub sessions: u64,
    /// Pending second login steps (`mfa_token`s).
    pub challenges: u64,
}

// --- rows of `tessera export` / `tessera import` ---
//
// These mirror the tables column for column, so an installation moves without interpreting
// (or losing) anything; the file format around them lives in `crate::transfer`.

/// Every column of a `users` row, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
    /// Sealed TOTP secret (user id as associated data); `None` while MFA is off.
    pub mfa_secret: Option<Vec<u8>>,
    pub mfa_enabled_at: Option<i64>,
    pub mfa_last_step: Option<i64>,
    pub backup_salt: Option<Vec<u8>>,
    pub mfa_failures: i64,
    pub mfa_locked_until: Option<i64>,
    pub password_failures: i64,
    pub password_locked_until: Option<i64>,
    /// The network of the last successful password login (the password lock spares it).
    pub last_login_network: Option<String>,
    pub mfa_totp_suspended_at: Option<i64>,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("mfa_enabled_at", &self.mfa_enabled_at)
            .finish_non_exhaustive()
    }
}

/// A `sessions` row: the session and its place in the user's creation order (what the cap of
/// [`MAX_SESSIONS_PER_USER`] evicts by).
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub record: SessionRecord,
    pub seq: i64,
}

/// One unused backup code: `backup_codes` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupCodeRow {
    pub user_id: String,
    pub code_hash: Vec<u8>,
}

/// An `mfa_pending` row.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingSetupRow {
    pub user_id: String,
    pub sealed_secret: Vec<u8>,
    pub created_at: i64,
    pub expires_at: i64,
}

impl std::fmt::Debug for PendingSetupRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSetupRow")
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A `security_events` row. `id` only orders the export; an import numbers events anew, in the
/// order it receives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: i64,
    pub user_id: Option<String>,
    pub record: EventRecord,
}

/// Reads of [`Store::begin_export`]: pages in primary-key order (keyset paging: each call
/// continues after the last key of the previous page), all inside one snapshot.
#[async_trait]
pub trait ExportSnapshot: Send {
    /// Users with an id after `after`, by id.
    async fn users(&mut self, after: Option<&str>, limit: u32) -> StoreResult<Vec<UserRow>>;
    /// Backup codes after `after`, by (user id, code hash).
    async fn backup_codes(&mut self, after: Option<&BackupCodeRow>, limit: u32) -> StoreResult<Vec<BackupCodeRow>>;
    /// Pending setups still valid at `now`, after the user id `after`, by user id.
    async fn pending_setups(&mut self, after: Option<&str>, now: i64, limit: u32) -> StoreResult<Vec<PendingSetupRow>>;
    /// Sessions whose absolute lifetime has not ended at `now`, after `after`, by token hash.
    async fn sessions(&mut self, after: Option<&TokenHash>, now: i64, limit: u32) -> StoreResult<Vec<SessionRow>>;
    /// Security events after the id `after`, by id (the order each user saw them in).
    async fn events(&mut self, after: Option<i64>, limit: u32) -> StoreResult<Vec<EventRow>>;
    /// Ends the read transaction.
    async fn finish(self: Box<Self>) -> StoreResult<()>;
}

/// Writes of [`Store::begin_import`], all in one transaction.
#[async_trait]
pub trait ImportTransaction: Send {
    /// How many users and security events the database holds (an import needs both at zero).
    async fn existing(&mut self) -> StoreResult<(i64, i64)>;
    async fn insert_users(&mut self, rows: &[UserRow]) -> StoreResult<()>;
    async fn insert_backup_codes(&mut self, rows: &[BackupCodeRow]) -> StoreResult<()>;
    async fn insert_pending_setups(&mut self, rows: &[PendingSetupRow]) -> StoreResult<()>;
    async fn insert_sessions(&mut self, rows: &[SessionRow]) -> StoreResult<()>;
    /// Inserts events in the order given; they get new ids in that order.
    async fn insert_events(&mut self, rows: &[EventRow]) -> StoreResult<()>;
    /// Moves an existing webhook cursor past the imported events (they are history, not news:
    /// the webhook must not deliver them again), then commits.
    async fn commit(self: Box<Self>) -> StoreResult<()>;
}
