//! Accounts and sessions: registration, password login, session introspection, logout and
//! password change.

use super::{RequestMeta, Service, ServiceError, ServiceResult};
use crate::domain::email::Email;
use crate::domain::password::{self, Password, PasswordHashString};
use crate::domain::throttle;
use crate::domain::token::{PlainToken, TokenKind};
use crate::store::{
    AttemptKind, AttemptReservation, Consumed, LockPolicy, NewUser, SecondFactorProof, SessionRecord, SessionSummary,
    StoreError, UserRecord,
};

/// The password throttle: 10 wrong passwords free, then 30 s doubling to 15 minutes.
const PASSWORD_LOCKS: LockPolicy = LockPolicy {
    lock_secs: throttle::password_lock_after,
    max_secs: throttle::MAX_DELAY_SECS,
};

/// How far in the future a stored session time may lie before it is distrusted: instances
/// behind one load balancer may disagree by a few seconds, a clock that jumped back by more
/// makes every session it wrote look seen "later than now".
pub const CLOCK_SKEW_SECS: i64 = 120;

/// The network an address belongs to for the password lock's exception: the /24 of an IPv4
/// address, the /48 of an IPv6 one (an owner's home or office, not a single address).
pub fn client_network(ip: &str) -> Option<String> {
    match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            Some(format!("{a}.{b}.{c}.0/24"))
        }
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => client_network(&v4.to_string()),
            None => {
                let s = v6.segments();
                Some(format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2]))
            }
        },
    }
}

/// The public view of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub mfa_enabled: bool,
    pub created_at: i64,
}

impl From<&UserRecord> for UserView {
    fn from(user: &UserRecord) -> Self {
        Self {
            id: user.id.clone(),
            email: user.email.clone(),
            mfa_enabled: user.mfa.is_some(),
            created_at: user.created_at,
        }
    }
}

/// A session token handed out once, with what the client needs to know about it.
#[derive(Debug)]
pub struct IssuedSession {
    pub token: PlainToken,
    pub expires_at: i64,
    pub user: UserView,
}

/// What a password login leads to.
#[derive(Debug)]
pub enum LoginOutcome {
    Session(IssuedSession),
    /// MFA is on: the client must call the second step with this single-use token.
    MfaRequired {
        mfa_token: PlainToken,
        expires_at: i64,
    },
}

/// A request authenticated by a live session.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user: UserRecord,
    pub session: SessionRecord,
}

fn parse_new_password(member: &'static str, input: String, email: &str) -> ServiceResult<Password> {
    Password::new(input, email).map_err(|err| ServiceError::invalid(member, err.to_string()))
}

impl Service {
    /// `POST /api/auth/register`.
    pub async fn register(&self, email: &str, password: String, meta: &RequestMeta) -> ServiceResult<UserView> {
        let email = Email::parse(email);
        // With a malformed email only the rules that need no email apply.
        let password = Password::new(password, email.as_ref().map_or("", Email::as_str));
        let mut problems = Vec::new();
        if let Err(err) = &email {
            problems.push(("email", err.to_string()));
        }
        if let Err(err) = &password {
            problems.push(("password", err.to_string()));
        }
        let (Ok(email), Ok(password)) = (email, password) else {
            return Err(ServiceError::Validation(problems));
        };
        if !self.config.registration_open {
            return Err(ServiceError::RegistrationClosed);
        }
        // Cheap pre-check so a taken email costs no hashing; the unique index decides races.
        if self.store.user_by_email(email.as_str()).await?.is_some() {
            return Err(ServiceError::EmailTaken);
        }
        let password_hash = self.hash_password(password).await?;
        let now = self.now();
        let user = NewUser {
            id: uuid::Uuid::now_v7().to_string(),
            email: email.as_str().to_owned(),
            password_hash: password_hash.0,
            created_at: now,
        };
        match self
            .store
            .insert_user(&user, &meta.event(&user.id, "user_registered", now))
            .await
        {
            Ok(()) => Ok(UserView {
                id: user.id,
                email: user.email,
                mfa_enabled: false,
                created_at: now,
            }),
            Err(StoreError::Conflict) => Err(ServiceError::EmailTaken),
            Err(err) => Err(err.into()),
        }
    }

    /// `POST /api/auth/login`: the first factor. Unknown email and wrong password are the same
    /// error after the same work (a verification against a dummy hash), and lock the same way.
    ///
    /// Order: reserve a password attempt (counted before argon2, refused while the password
    /// step is locked, even for the right password), verify, then create the session (or the
    /// `mfa_token`) only while the verified hash is still the stored one and MFA is still in
    /// the state that was read.
    pub async fn login(&self, email: &str, password: String, meta: &RequestMeta) -> ServiceResult<LoginOutcome> {
        let password = Password::candidate(password);
        let email = Email::parse(email).ok();
        let user = match &email {
            Some(email) => self.store.user_by_email(email.as_str()).await?,
            None => None,
        };
        let now = self.now();
        let network = meta.ip.as_deref().and_then(client_network);
        let reservation = match &user {
            Some(user) => {
                let kind = AttemptKind::Password {
                    network: network.as_deref(),
                };
                self.store.reserve_attempt(&user.id, kind, now, PASSWORD_LOCKS).await?
            }
            None => {
                // The same statement as for a known account (it matches no row), so both cost
                // the same time; the count itself lives in memory.
                let kind = AttemptKind::Password {
                    network: network.as_deref(),
                };
                self.store.reserve_attempt("", kind, now, PASSWORD_LOCKS).await?;
                let key = email.as_ref().map_or("", |email| email.as_str());
                self.unknown_logins.reserve(key, now)
            }
        };
        let failures = match reservation {
            AttemptReservation::Granted { failures } => failures,
            AttemptReservation::Locked { until } => {
                metrics::counter!("tessera_logins_total", "outcome" => "locked").increment(1);
                return Err(ServiceError::Throttled {
                    retry_after_secs: (until - now).max(1),
                });
            }
        };
        let stored = match &user {
            Some(u) => PasswordHashString(u.password_hash.clone()),
            None => self.dummy_hash().await?,
        };
        let rehash_source = password.clone();
        let matches = self.verify_password(password, stored.clone()).await?;
        let user = match user {
            Some(user) if matches => user,
            Some(user) => {
                metrics::counter!("tessera_logins_total", "outcome" => "wrong_password").increment(1);
                self.store
                    .insert_event(&meta.event(&user.id, "login_failed", now))
                    .await?;
                if throttle::password_lock_after(failures) > 0 {
                    metrics::counter!("tessera_lockouts_total", "kind" => "password").increment(1);
                    crate::log_context::in_request(|| {
                        tracing::warn!(failures, "password step locked after repeated failures")
                    });
                    self.store
                        .insert_event(&meta.event(&user.id, "password_lockout", now))
                        .await?;
                }
                return Err(ServiceError::InvalidCredentials);
            }
            None => {
                metrics::counter!("tessera_logins_total", "outcome" => "unknown_account").increment(1);
                // The same write as for a known account, so both failures cost the same time;
                // the unknown address is not stored.
                self.store
                    .insert_event(&meta.anonymous_event("login_failed_unknown_account", now))
                    .await?;
                return Err(ServiceError::InvalidCredentials);
            }
        };
        if user.disabled_at.is_some() {
            metrics::counter!("tessera_logins_total", "outcome" => "disabled").increment(1);
            self.store
                .insert_event(&meta.event(&user.id, "login_refused_disabled", now))
                .await?;
            return Err(ServiceError::AccountDisabled);
        }
        let verified = if password::needs_rehash(&stored) {
            let upgraded = self.hash_password(rehash_source).await?;
            self.store
                .upgrade_password_hash(&user.id, &stored.0, &upgraded.0)
                .await?;
            upgraded
        } else {
            stored
        };
        self.checkpoint("login").await;
        let outcome = if user.mfa.is_some() {
            let mfa_token = PlainToken::generate(TokenKind::MfaChallenge);
            let expires_at = now + self.config.challenge_ttl_secs;
            let event = meta.event(&user.id, "login_password_ok_mfa_required", now);
            let stored = self
                .store
                .insert_challenge(
                    &mfa_token.hash(),
                    &user.id,
                    now,
                    expires_at,
                    &verified.0,
                    network.as_deref(),
                    &event,
                )
                .await?;
            (stored, LoginOutcome::MfaRequired { mfa_token, expires_at })
        } else {
            let (session, record) = self.new_session(&user, false, now, meta);
            let event = meta.event(&user.id, "login_succeeded", now);
            let stored = self
                .store
                .login_session(&record, &verified.0, network.as_deref(), &event)
                .await?;
            (stored, LoginOutcome::Session(session))
        };
        match outcome {
            (Consumed::Yes, outcome) => {
                let counted = match outcome {
                    LoginOutcome::Session(_) => "success",
                    LoginOutcome::MfaRequired { .. } => "mfa_required",
                };
                metrics::counter!("tessera_logins_total", "outcome" => counted).increment(1);
                Ok(outcome)
            }
            // The password was changed, MFA switched or the account disabled after the check:
            // the old password must not open a session any more.
            (_, _) => {
                metrics::counter!("tessera_logins_total", "outcome" => "wrong_password").increment(1);
                Err(ServiceError::InvalidCredentials)
            }
        }
    }

    /// A new session of `user`, opened by the request `meta` describes (its address and user
    /// agent are shown in the user's session list). Its public id is a random UUID, independent
    /// of the token.
    pub(super) fn new_session(
        &self,
        user: &UserRecord,
        mfa: bool,
        now: i64,
        meta: &RequestMeta,
    ) -> (IssuedSession, SessionRecord) {
        let token = PlainToken::generate(TokenKind::Session);
        let expires_at = now + self.config.session_lifetime_secs;
        let mut random = [0u8; 16];
        rand::fill(&mut random[..]);
        let record = SessionRecord {
            token_hash: token.hash(),
            public_id: uuid::Builder::from_random_bytes(random).into_uuid().to_string(),
            user_id: user.id.clone(),
            created_at: now,
            last_seen_at: now,
            expires_at,
            mfa,
            ip: meta.ip.clone(),
            user_agent: meta.user_agent.clone(),
        };
        (
            IssuedSession {
                token,
                expires_at,
                user: UserView::from(user),
            },
            record,
        )
    }

    /// Resolves a bearer token to its live session (the hot path of every host application).
    pub async fn authenticate(&self, token: &str) -> ServiceResult<Authenticated> {
        let token_hash =
            PlainToken::parse_hash(TokenKind::Session, token).map_err(|_| ServiceError::Unauthenticated)?;
        let found = self
            .store
            .active_session(&token_hash, self.now(), self.config.session_idle_secs)
            .await?;
        let now = self.now();
        match found {
            // A session created or seen "later than now" comes from a clock that went backwards
            // (or a tampered row): its idle and absolute limits can't be trusted.
            Some((session, _))
                if session.created_at > now + CLOCK_SKEW_SECS || session.last_seen_at > now + CLOCK_SKEW_SECS =>
            {
                Err(ServiceError::Unauthenticated)
            }
            Some((session, user)) if user.disabled_at.is_none() => Ok(Authenticated { user, session }),
            _ => Err(ServiceError::Unauthenticated),
        }
    }

    /// [`Service::authenticate`] for introspection (`GET /api/auth/session`): the same rules
    /// (expiry, idle limit, clock skew, disabled accounts) on a lean read of only what the
    /// answer shows.
    pub async fn introspect(&self, token: &str) -> ServiceResult<SessionSummary> {
        let token_hash =
            PlainToken::parse_hash(TokenKind::Session, token).map_err(|_| ServiceError::Unauthenticated)?;
        let found = self
            .store
            .active_session_summary(&token_hash, self.now(), self.config.session_idle_secs)
            .await?;
        let now = self.now();
        match found {
            Some(summary)
                if summary.created_at <= now + CLOCK_SKEW_SECS && summary.last_seen_at <= now + CLOCK_SKEW_SECS =>
            {
                Ok(summary)
            }
            _ => Err(ServiceError::Unauthenticated),
        }
    }

    /// The idle deadline of a session: when it ends unless used again.
    pub fn idle_deadline(&self, session: &SessionRecord) -> i64 {
        self.idle_deadline_of(session.last_seen_at, session.expires_at)
    }

    /// [`Service::idle_deadline`] from the two times it depends on.
    pub fn idle_deadline_of(&self, last_seen_at: i64, expires_at: i64) -> i64 {
        (last_seen_at + self.config.session_idle_secs).min(expires_at)
    }

    /// `POST /api/auth/logout`: revokes the session server-side.
    pub async fn logout(&self, auth: &Authenticated, meta: &RequestMeta) -> ServiceResult<()> {
        let event = meta.event(&auth.user.id, "logout", self.now());
        self.store.delete_session(&auth.session.token_hash, &event).await?;
        Ok(())
    }

    /// `POST /api/user/profile/password`: needs the current password, and a code when MFA is on.
    /// Revokes every other session of the user.
    pub async fn change_password(
        &self,
        auth: &Authenticated,
        current_password: String,
        new_password: String,
        code: Option<String>,
        meta: &RequestMeta,
    ) -> ServiceResult<()> {
        let new_password = parse_new_password("new_password", new_password, &auth.user.email)?;
        let user = &auth.user;
        let factor = match (&user.mfa, code) {
            (Some(_), Some(code)) => Some(super::mfa::SecondFactorInput::parse("code", &code)?),
            (Some(_), None) => {
                return Err(ServiceError::invalid("code", "is required while MFA is enabled"));
            }
            (None, _) => None,
        };
        if let Some(factor) = &factor {
            self.refuse_suspended_totp(user, factor)?;
        }
        let now = self.now();
        self.take_reauth(user, now).await?;
        let (proof, failures) = match factor {
            Some(factor) => {
                let failures = self.reserve_attempt(user, now).await?;
                let password_matches = self.password_matches(user, current_password).await?;
                match self.check_second_factor(user, &factor, now).await? {
                    Some(proof) if password_matches => (Some(proof), failures),
                    _ => {
                        return Err(self
                            .second_factor_failed(&user.id, failures, meta, now, ServiceError::InvalidPasswordOrCode)
                            .await);
                    }
                }
            }
            None => {
                // Counted like a code: a stolen session must not allow unlimited password guesses.
                let failures = self.reserve_attempt(user, now).await?;
                if !self.password_matches(user, current_password).await? {
                    let err = ServiceError::InvalidPasswordOrCode;
                    return Err(self
                        .attempt_failed(&user.id, "password_change_failed", failures, meta, now, err)
                        .await);
                }
                (None, failures)
            }
        };
        let new_hash = self.hash_password(new_password).await?;
        let backup_code = matches!(proof, Some(SecondFactorProof::BackupCode(_)));
        let event = meta.event(&user.id, "password_changed", now);
        self.checkpoint("change_password").await;
        match self
            .store
            .change_password(
                &user.id,
                proof,
                &user.password_hash,
                &new_hash.0,
                &auth.session.token_hash,
                &event,
            )
            .await?
        {
            Consumed::Yes => {
                super::mfa::count_backup_code_used(backup_code);
                Ok(())
            }
            Consumed::Rejected => Err(self
                .second_factor_failed(&user.id, failures, meta, now, ServiceError::InvalidPasswordOrCode)
                .await),
            Consumed::SessionGone => Err(ServiceError::Unauthenticated),
            Consumed::Stale => Err(ServiceError::StateChanged),
        }
    }
}
