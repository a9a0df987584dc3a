//! Accounts and sessions: registration, password login, session introspection, logout and
//! password change.

use super::{RequestMeta, Service, ServiceError, ServiceResult};
use crate::domain::email::Email;
use crate::domain::password::{self, Password, PasswordHashString};
use crate::domain::token::{PlainToken, TokenKind};
use crate::store::{Consumed, NewUser, SessionRecord, StoreError, UserRecord};

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

fn parse_new_password(member: &'static str, input: String) -> ServiceResult<Password> {
    Password::new(input).map_err(|err| ServiceError::invalid(member, err.to_string()))
}

impl Service {
    /// `POST /api/auth/register`.
    pub async fn register(&self, email: &str, password: String, meta: &RequestMeta) -> ServiceResult<UserView> {
        let email = Email::parse(email);
        let password = Password::new(password);
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
    /// error after the same work (a verification against a dummy hash).
    pub async fn login(&self, email: &str, password: String, meta: &RequestMeta) -> ServiceResult<LoginOutcome> {
        let password = Password::candidate(password);
        let user = match Email::parse(email) {
            Ok(email) => self.store.user_by_email(email.as_str()).await?,
            Err(_) => None,
        };
        let stored = user.as_ref().map_or_else(
            || self.dummy_hash.clone(),
            |u| PasswordHashString(u.password_hash.clone()),
        );
        let rehash_source = password.clone();
        let matches = self.verify_password(password, stored.clone()).await?;
        let now = self.now();
        let user = match user {
            Some(user) if matches => user,
            Some(user) => {
                self.store
                    .insert_event(&meta.event(&user.id, "login_failed", now))
                    .await?;
                return Err(ServiceError::InvalidCredentials);
            }
            None => {
                // The same write as for a known account, so both failures cost the same time;
                // the unknown address is not stored.
                self.store
                    .insert_event(&meta.anonymous_event("login_failed_unknown_account", now))
                    .await?;
                return Err(ServiceError::InvalidCredentials);
            }
        };
        if user.disabled_at.is_some() {
            self.store
                .insert_event(&meta.event(&user.id, "login_refused_disabled", now))
                .await?;
            return Err(ServiceError::AccountDisabled);
        }
        if password::needs_rehash(&stored) {
            let upgraded = self.hash_password(rehash_source).await?;
            self.store
                .upgrade_password_hash(&user.id, &stored.0, &upgraded.0)
                .await?;
        }
        if user.mfa.is_some() {
            let mfa_token = PlainToken::generate(TokenKind::MfaChallenge);
            let expires_at = now + self.config.challenge_ttl_secs;
            self.store
                .insert_challenge(
                    &mfa_token.hash(),
                    &user.id,
                    now,
                    expires_at,
                    &meta.event(&user.id, "login_password_ok_mfa_required", now),
                )
                .await?;
            return Ok(LoginOutcome::MfaRequired { mfa_token, expires_at });
        }
        let (session, record) = self.new_session(&user, false, now, meta);
        self.store
            .insert_session(&record, &meta.event(&user.id, "login_succeeded", now))
            .await?;
        Ok(LoginOutcome::Session(session))
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
        let token = PlainToken::parse(TokenKind::Session, token).map_err(|_| ServiceError::Unauthenticated)?;
        let found = self
            .store
            .active_session(&token.hash(), self.now(), self.config.session_idle_secs)
            .await?;
        match found {
            Some((session, user)) if user.disabled_at.is_none() => Ok(Authenticated { user, session }),
            _ => Err(ServiceError::Unauthenticated),
        }
    }

    /// The idle deadline of a session: when it ends unless used again.
    pub fn idle_deadline(&self, session: &SessionRecord) -> i64 {
        (session.last_seen_at + self.config.session_idle_secs).min(session.expires_at)
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
        let new_password = parse_new_password("new_password", new_password)?;
        let user = &auth.user;
        let factor = match (&user.mfa, code) {
            (Some(_), Some(code)) => Some(super::mfa::SecondFactorInput::parse("code", &code)?),
            (Some(_), None) => {
                return Err(ServiceError::invalid("code", "is required while MFA is enabled"));
            }
            (None, _) => None,
        };
        let now = self.now();
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
        let event = meta.event(&user.id, "password_changed", now);
        match self
            .store
            .change_password(&user.id, proof, &new_hash.0, &auth.session.token_hash, &event)
            .await?
        {
            Consumed::Yes => Ok(()),
            Consumed::Rejected => Err(self
                .second_factor_failed(&user.id, failures, meta, now, ServiceError::InvalidPasswordOrCode)
                .await),
        }
    }
}
