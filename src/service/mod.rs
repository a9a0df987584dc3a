//! The use cases: register, login (with its second step), sessions, password change, the MFA
//! lifecycle and security events. Knows no HTTP: it takes plain values and a [`RequestMeta`],
//! returns values or a [`ServiceError`]. It owns the rules about *when* state may change; the
//! store makes each change atomic.
//!
//! - [`accounts`]: registration, login, sessions, password change.
//! - [`mfa`]: setup, verify, backup codes, disable, second-factor login, operator reset.
//! - [`sessions`]: the sessions a user sees and ends (list, end one, end all others).
//! - [`operator`]: the operator's `tessera user` commands (create, set-password, revoke-sessions,
//!   unlock, delete).
//! - [`hashing`]: the pool of threads that runs argon2, bounded in threads and memory.

pub mod accounts;
pub mod hashing;
pub mod mfa;
pub mod operator;
pub mod sessions;

pub use hashing::HashingPool;

use crate::clock::Clock;
use crate::domain::password::{self, Password, PasswordHashString};
use crate::domain::sealing::MasterKey;
use crate::domain::totp::TotpPolicy;
use crate::store::{NewEvent, Store, StoreError};
use std::sync::Arc;

/// Everything that can go wrong in a use case. The HTTP layer maps each variant to exactly one
/// problem type in one exhaustive `match`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Request members that failed validation: (member, message).
    #[error("validation failed")]
    Validation(Vec<(&'static str, String)>),
    #[error("the email is already registered")]
    EmailTaken,
    #[error("registration is closed")]
    RegistrationClosed,
    /// Failed password login: the same for unknown email and wrong password.
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("the account is disabled")]
    AccountDisabled,
    /// Missing, malformed, expired or revoked session token.
    #[error("authentication required")]
    Unauthenticated,
    /// Missing, malformed, expired or used `mfa_token`.
    #[error("invalid or expired mfa_token")]
    InvalidMfaToken,
    /// Wrong second factor at the second login step.
    #[error("invalid second factor")]
    SecondFactorRejected,
    /// Wrong TOTP code while enabling MFA.
    #[error("invalid MFA code")]
    InvalidMfaCode,
    /// Wrong password or code inside an authenticated request (one problem for both).
    #[error("invalid password or code")]
    InvalidPasswordOrCode,
    #[error("MFA is already enabled")]
    MfaAlreadyEnabled,
    #[error("MFA is not enabled")]
    MfaNotEnabled,
    #[error("no MFA setup in progress")]
    NoPendingSetup,
    /// TOTP codes are suspended after too many failures; backup codes still work.
    #[error("TOTP codes are suspended for this account")]
    TotpSuspended,
    /// The account changed between the check and the change (e.g. the password was changed by
    /// another request); nothing was written.
    #[error("the account changed while the request was processed")]
    StateChanged,
    /// The id names none of the user's live sessions (malformed, ended, or another user's).
    #[error("no such session")]
    SessionNotFound,
    /// Too many failed second-factor attempts: retry after this many seconds.
    #[error("too many attempts")]
    Throttled { retry_after_secs: i64 },
    #[error("the database is unavailable")]
    Unavailable,
    /// A bug or broken invariant; the message is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    fn invalid(member: &'static str, message: impl Into<String>) -> Self {
        Self::Validation(vec![(member, message.into())])
    }
}

impl From<StoreError> for ServiceError {
    // Two documented outcomes only: an unreachable database is 503, anything else a 500.
    // Conflicts are never mapped here: each call site that can conflict handles it first.
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => ServiceError::Unavailable,
            StoreError::Conflict => ServiceError::Internal("unexpected conflict".into()),
            StoreError::Other(message) => ServiceError::Internal(message),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// Who is asking, as far as the audit trail is concerned.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl RequestMeta {
    /// An event of no known account (a failed login with an unknown email).
    fn anonymous_event(&self, kind: &'static str, at: i64) -> NewEvent {
        NewEvent {
            user_id: None,
            ..self.event("", kind, at)
        }
    }

    fn event(&self, user_id: &str, kind: &'static str, at: i64) -> NewEvent {
        NewEvent {
            user_id: Some(user_id.to_owned()),
            kind,
            at,
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

/// Tunables of the use cases.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub session_idle_secs: i64,
    pub session_lifetime_secs: i64,
    pub registration_open: bool,
    pub mfa_issuer: String,
    pub totp: TotpPolicy,
    /// Lifetime of an `mfa_token` (5 minutes).
    pub challenge_ttl_secs: i64,
    /// Lifetime of a pending MFA setup (10 minutes).
    pub setup_ttl_secs: i64,
    /// Re-authentications (MFA setup, password change, regenerate, disable) per account and
    /// minute; success does not give any back. 0 switches the budget off.
    pub reauth_per_minute: u32,
    /// Threads of the hashing pool; 0 means one per core.
    pub hashing_threads: usize,
    /// Niceness of the hashing threads (see [`hashing::DEFAULT_NICE`]).
    pub hashing_nice: i32,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            session_idle_secs: 30 * 60,
            session_lifetime_secs: 12 * 60 * 60,
            registration_open: true,
            mfa_issuer: "Tessera".into(),
            totp: TotpPolicy::default(),
            challenge_ttl_secs: 5 * 60,
            setup_ttl_secs: 10 * 60,
            reauth_per_minute: 10,
            hashing_threads: 0,
            hashing_nice: hashing::DEFAULT_NICE,
        }
    }
}

/// The service: one per process, shared by the HTTP handlers and the CLI.
pub struct Service {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    key: MasterKey,
    hashing: HashingPool,
    config: ServiceConfig,
    /// Verified against when the email is unknown, so both failures cost the same. Computed in
    /// the background right after start, on the hashing pool (off the start path); a login that
    /// needs it earlier waits for that same computation, so it is hashed once.
    dummy_hash: Arc<tokio::sync::OnceCell<PasswordHashString>>,
    /// Password failures of emails that have no account, so that they lock like real ones.
    unknown_logins: UnknownLogins,
    /// Test seam: awaited between a use case's checks and its commit (see [`Checkpoint`]).
    checkpoint: std::sync::RwLock<Option<Checkpoint>>,
}

/// A pause point between the checks of a use case (password, code, state) and the store call
/// that commits on their strength. Tests install one to hold a request exactly there while
/// another request changes the account, and so drive check-then-act races deterministically.
/// Production never installs one: the cost is one uncontended read lock per change.
pub type Checkpoint =
    Arc<dyn Fn(&'static str) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// Consecutive failed logins of emails without an account, in memory and bounded: the answers
/// to an unknown email (401 ... then 429 with the same delays) must not differ from a known
/// one's, or the lock would tell which emails have accounts. Keyed by the SHA-256 of the
/// normalised email (the address itself is not kept); need not survive a restart.
#[derive(Debug, Default)]
pub struct UnknownLogins {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], crate::store::ThrottleRecord>>,
}

/// Emails without an account tracked at most; past it an arbitrary entry makes room (bounded
/// memory under spraying; an evicted email starts counting again).
const UNKNOWN_LOGINS_CAP: usize = 50_000;

impl UnknownLogins {
    /// The same reservation as the store's password throttle, in memory.
    fn reserve(&self, email: &str, now: i64) -> crate::store::AttemptReservation {
        use crate::store::AttemptReservation;
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(email.as_bytes()).into();
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !entries.contains_key(&key)
            && entries.len() >= UNKNOWN_LOGINS_CAP
            && let Some(evicted) = entries.keys().next().copied()
        {
            entries.remove(&evicted);
        }
        let entry = entries.entry(key).or_default();
        match entry.locked_until {
            Some(until) if until > now && until <= now + crate::domain::throttle::MAX_DELAY_SECS => {
                AttemptReservation::Locked { until }
            }
            _ => {
                entry.failures = entry.failures.saturating_add(1);
                let lock = crate::domain::throttle::password_lock_after(entry.failures);
                if lock > 0 {
                    entry.locked_until = Some(now + lock);
                }
                AttemptReservation::Granted {
                    failures: entry.failures,
                }
            }
        }
    }
}

async fn compute_dummy_hash(pool: &HashingPool) -> ServiceResult<PasswordHashString> {
    pool.run(|| {
        let mut random = [0u8; 24];
        rand::fill(&mut random[..]);
        password::hash(&Password::candidate(data_encoding::HEXLOWER.encode(&random)))
    })
    .await?
    .map_err(|err| ServiceError::Internal(err.to_string()))
}

impl Service {
    pub async fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        key: MasterKey,
        config: ServiceConfig,
    ) -> ServiceResult<Self> {
        let threads = match config.hashing_threads {
            0 => hashing::cores(),
            threads => threads,
        };
        let hashing = HashingPool::with_traffic(threads, config.hashing_nice, hashing::Traffic::default());
        let dummy_hash = Arc::new(tokio::sync::OnceCell::new());
        {
            let (cell, pool) = (Arc::clone(&dummy_hash), hashing.clone());
            // A failure here is retried by the first login that needs the hash.
            tokio::spawn(async move { drop(cell.get_or_try_init(|| compute_dummy_hash(&pool)).await) });
        }
        Ok(Self {
            store,
            clock,
            key,
            hashing,
            config,
            dummy_hash,
            unknown_logins: UnknownLogins::default(),
            checkpoint: std::sync::RwLock::new(None),
        })
    }

    /// The dummy hash of the unknown-email path (see the field); waits for the background
    /// computation started by [`Service::new`] if it has not finished yet.
    async fn dummy_hash(&self) -> ServiceResult<PasswordHashString> {
        let pool = &self.hashing;
        self.dummy_hash
            .get_or_try_init(|| compute_dummy_hash(pool))
            .await
            .cloned()
    }

    /// Installs (or removes) the test checkpoint; see [`Checkpoint`].
    pub fn set_checkpoint(&self, hook: Option<Checkpoint>) {
        *self.checkpoint.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = hook;
    }

    /// Awaits the installed checkpoint, if any, with the name of the change about to commit.
    async fn checkpoint(&self, name: &'static str) {
        let hook = self
            .checkpoint
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(hook) = hook {
            hook(name).await;
        }
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The count of requests in flight that the HTTP edge keeps and the hashing pool gives way
    /// to (see [`hashing::Traffic`]).
    pub fn traffic(&self) -> &hashing::Traffic {
        self.hashing.traffic()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The clock the service runs on (the HTTP edge uses it for rate-limit refills).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn now(&self) -> i64 {
        self.clock.now_unix()
    }

    /// `GET /readyz`: can the database answer?
    pub async fn ready(&self) -> ServiceResult<()> {
        self.store.ping().await.map_err(ServiceError::from)
    }

    async fn hash_password(&self, password: Password) -> ServiceResult<PasswordHashString> {
        self.hashing
            .run_in_memory(move |memory| password::hash_in(&password, memory.get()))
            .await?
            .map_err(|err| ServiceError::Internal(err.to_string()))
    }

    async fn verify_password(&self, password: Password, stored: PasswordHashString) -> ServiceResult<bool> {
        self.hashing
            .run_in_memory(move |memory| password::verify_in(&password, &stored, memory.get()))
            .await
    }
}
