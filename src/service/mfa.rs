//! The MFA lifecycle: setup, verify (enable), backup-code regeneration, disable, status, the
//! second login step, security events and the operator reset.
//!
//! Every code-checking path follows the same order: validate the input (malformed codes are a
//! validation problem and never count), reserve an attempt with the throttle (refused while the
//! account is locked, even for a right code), check the password and code, and only then let the
//! store consume the proof in the same transaction as the change it authorises. A failure
//! changes nothing but the throttle counters and the audit trail.

use super::accounts::{Authenticated, IssuedSession};
use super::{RequestMeta, Service, ServiceError, ServiceResult};
use crate::domain::backup_code::{self, BackupCodeSet, NormalizedBackupCode};
use crate::domain::email::Email;
use crate::domain::password::{Password, PasswordHashString};
use crate::domain::throttle;
use crate::domain::token::{PlainToken, TokenKind};
use crate::domain::totp::{self, TotpCode, TotpSecret};
use crate::store::{
    AttemptKind, AttemptReservation, BackupCodeHashes, Consumed, EnableMfa, EventRecord, LockPolicy,
    PendingSetupRecord, SecondFactorProof, TotpCompletion, UserRecord,
};

/// The second-factor throttle: four failed codes free, the fifth locks for 30 s, doubling to 15 minutes.
const SECOND_FACTOR_LOCKS: LockPolicy = LockPolicy {
    lock_secs: throttle::lock_after,
    max_secs: throttle::MAX_DELAY_SECS,
};

/// Whether the second factor of `user`, as read, is locked at `now` (a lock longer than the
/// maximum is not honoured, as in the store's reservation).
fn locked_at(user: &UserRecord, now: i64) -> bool {
    user.throttle
        .locked_until
        .is_some_and(|until| until > now && until <= now.saturating_add(SECOND_FACTOR_LOCKS.max_secs))
}

/// Number of backup codes in a set.
pub const BACKUP_CODE_COUNT: usize = 10;

/// A well-formed second factor: a 6-digit TOTP code or a backup code.
#[derive(Debug)]
pub enum SecondFactorInput {
    Totp(TotpCode),
    Backup(NormalizedBackupCode),
}

impl SecondFactorInput {
    /// Accepts a TOTP code or a backup code; anything else is a validation problem naming
    /// `member`, and is not counted as an attempt.
    pub fn parse(member: &'static str, input: &str) -> ServiceResult<Self> {
        if let Ok(code) = TotpCode::parse(input) {
            return Ok(Self::Totp(code));
        }
        match backup_code::normalize(input) {
            Ok(code) => Ok(Self::Backup(code)),
            Err(_) if input.trim().is_empty() => Err(ServiceError::invalid(member, "must not be empty")),
            Err(_) => Err(ServiceError::invalid(
                member,
                "must be a 6-digit code from the authenticator app or a backup code",
            )),
        }
    }
}

fn parse_totp(member: &'static str, input: &str) -> ServiceResult<TotpCode> {
    TotpCode::parse(input).map_err(|_| {
        if input.trim().is_empty() {
            ServiceError::invalid(member, "must not be empty")
        } else {
            ServiceError::invalid(member, "must be a 6-digit code from the authenticator app")
        }
    })
}

/// What `POST /api/user/profile/mfa/setup` hands out.
#[derive(Debug)]
pub struct SetupView {
    pub secret: String,
    pub otpauth_url: String,
    pub qr_code_svg: String,
    pub issuer: String,
    pub account_name: String,
    pub digits: u32,
    pub period: u64,
    pub expires_at: i64,
}

/// `GET /api/user/profile/mfa`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaStatus {
    pub enabled: bool,
    pub enabled_at: Option<i64>,
    pub pending_setup: bool,
    pub backup_codes_remaining: i64,
}

/// Freshly generated backup codes, in their display form. Shown once, never stored in the clear.
pub struct FreshBackupCodes(pub Vec<String>);

impl std::fmt::Debug for FreshBackupCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FreshBackupCodes({} codes, redacted)", self.0.len())
    }
}

/// Counts a consumed backup code in `tessera_backup_codes_used_total` when `used` is true (the
/// proof was a backup code and the store consumed it).
pub(super) fn count_backup_code_used(used: bool) {
    if used {
        metrics::counter!("tessera_backup_codes_used_total").increment(1);
    }
}

/// Audit metadata of the operator's CLI.
pub(super) fn operator_meta() -> RequestMeta {
    RequestMeta {
        ip: None,
        user_agent: Some("tessera-cli".into()),
        request_id: None,
    }
}

fn render_qr_svg(data: &str) -> ServiceResult<String> {
    let code = qrcode::QrCode::new(data.as_bytes())
        .map_err(|err| ServiceError::Internal(format!("QR encoding failed: {err}")))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build())
}

impl Service {
    /// Counts an attempt before evaluating it, or refuses while the account is locked.
    pub(super) async fn reserve_attempt(&self, user: &UserRecord, now: i64) -> ServiceResult<u32> {
        match self
            .store
            .reserve_attempt(&user.id, AttemptKind::SecondFactor, now, SECOND_FACTOR_LOCKS)
            .await?
        {
            AttemptReservation::Granted { failures } => Ok(failures),
            AttemptReservation::Locked { until } => Err(ServiceError::Throttled {
                retry_after_secs: (until - now).max(1),
            }),
        }
    }

    /// Takes one re-authentication from the account's per-minute budget (setup, password
    /// change, regenerate, disable), which success does not refill: a stolen or scripted session
    /// cannot keep the hashing pool busy.
    pub(super) async fn take_reauth(&self, user: &UserRecord, now: i64) -> ServiceResult<()> {
        let limit = self.config.reauth_per_minute;
        if limit == 0 {
            return Ok(());
        }
        match self.store.take_reauth(&user.id, now, 60, limit).await? {
            AttemptReservation::Granted { .. } => Ok(()),
            AttemptReservation::Locked { until } => Err(ServiceError::Throttled {
                retry_after_secs: (until - now).max(1),
            }),
        }
    }

    /// TOTP codes of a suspended account are refused before anything is counted or checked.
    pub(super) fn refuse_suspended_totp(&self, user: &UserRecord, factor: &SecondFactorInput) -> ServiceResult<()> {
        let suspended = user.mfa.as_ref().is_some_and(|mfa| mfa.totp_suspended_at.is_some());
        if suspended && matches!(factor, SecondFactorInput::Totp(_)) {
            return Err(ServiceError::TotpSuspended);
        }
        Ok(())
    }

    /// Records a failed second-factor attempt (and the lockout it caused) and returns `err`.
    pub(super) async fn second_factor_failed(
        &self,
        user_id: &str,
        failures: u32,
        meta: &RequestMeta,
        now: i64,
        err: ServiceError,
    ) -> ServiceError {
        self.attempt_failed(user_id, "second_factor_failed", failures, meta, now, err)
            .await
    }

    /// Records a failed counted attempt of kind `kind` (and the lockout it caused); returns `err`.
    pub(super) async fn attempt_failed(
        &self,
        user_id: &str,
        kind: &'static str,
        failures: u32,
        meta: &RequestMeta,
        now: i64,
        err: ServiceError,
    ) -> ServiceError {
        if let Err(store_err) = self.store.insert_event(&meta.event(user_id, kind, now)).await {
            return store_err.into();
        }
        if failures >= throttle::FREE_FAILURES {
            metrics::counter!("tessera_lockouts_total", "kind" => "second_factor").increment(1);
            crate::log_context::in_request(|| tracing::warn!(failures, "second factor locked after repeated failures"));
            if let Err(store_err) = self.store.insert_event(&meta.event(user_id, "mfa_lockout", now)).await {
                return store_err.into();
            }
        }
        if failures >= throttle::TOTP_SUSPEND_AFTER {
            let event = meta.event(user_id, "mfa_totp_suspended", now);
            match self.store.suspend_totp(user_id, &event).await {
                Ok(true) => {
                    metrics::counter!("tessera_lockouts_total", "kind" => "totp_suspended").increment(1);
                    crate::log_context::in_request(|| {
                        tracing::warn!(failures, "TOTP codes suspended after repeated failures")
                    });
                }
                Ok(false) => {}
                Err(store_err) => return store_err.into(),
            }
        }
        err
    }

    /// Checks a well-formed factor against the user's MFA state. `Some(proof)` means the store
    /// may consume it; the store still refuses a replayed step or a used backup code.
    pub(super) async fn check_second_factor(
        &self,
        user: &UserRecord,
        factor: &SecondFactorInput,
        now: i64,
    ) -> ServiceResult<Option<SecondFactorProof>> {
        let Some(mfa) = &user.mfa else {
            return Ok(None);
        };
        match factor {
            SecondFactorInput::Totp(code) => {
                let Some(secret) = self.open_secret(&mfa.sealed_secret, &user.id) else {
                    return Ok(None);
                };
                Ok(totp::verify(&secret, code, now, &self.config.totp, mfa.last_step).map(SecondFactorProof::TotpStep))
            }
            SecondFactorInput::Backup(code) => {
                let Ok(salt) = <[u8; 16]>::try_from(mfa.backup_salt.as_slice()) else {
                    return Ok(None);
                };
                let code = code.clone();
                let hash = self
                    .hashing
                    .run(move || backup_code::hash_code(&code, &salt))
                    .await?
                    .map_err(|err| ServiceError::Internal(err.to_string()))?;
                // Known before anything is generated or hashed for the change, so a wrong
                // backup code costs what a wrong password costs. The consuming change still
                // decides atomically (a parallel request may use the code first).
                if !self.store.backup_code_exists(&user.id, &hash).await? {
                    return Ok(None);
                }
                Ok(Some(SecondFactorProof::BackupCode(hash)))
            }
        }
    }

    /// Opens a sealed TOTP secret bound to `user_id`. A secret that does not open (another
    /// key, tampered, or copied from another user's row) verifies no code: the attempt fails like
    /// a wrong code, and the cause is logged for the operator.
    fn open_secret(&self, sealed: &[u8], user_id: &str) -> Option<TotpSecret> {
        match self.key.open(sealed, user_id.as_bytes()) {
            Ok(bytes) => Some(TotpSecret::from_bytes(bytes.to_vec())),
            Err(err) => {
                crate::log_context::in_request(
                    || tracing::error!(error = %err, "stored TOTP secret does not open for this user"),
                );
                None
            }
        }
    }

    async fn new_backup_codes(&self) -> ServiceResult<(FreshBackupCodes, BackupCodeHashes)> {
        self.hashing
            .run(|| {
                let set = BackupCodeSet::generate_os(BACKUP_CODE_COUNT)?;
                let hashes = set.hashes()?;
                let shown = set.codes.iter().map(|code| code.expose().to_string()).collect();
                Ok((
                    FreshBackupCodes(shown),
                    BackupCodeHashes {
                        salt: set.salt.to_vec(),
                        hashes,
                    },
                ))
            })
            .await?
            .map_err(|err: backup_code::BackupCodeError| ServiceError::Internal(err.to_string()))
    }

    pub(super) async fn password_matches(&self, user: &UserRecord, password: String) -> ServiceResult<bool> {
        self.verify_password(
            Password::candidate(password),
            PasswordHashString(user.password_hash.clone()),
        )
        .await
    }

    /// `POST /api/user/profile/mfa/setup`.
    pub async fn mfa_setup(
        &self,
        auth: &Authenticated,
        password: String,
        meta: &RequestMeta,
    ) -> ServiceResult<SetupView> {
        let user = &auth.user;
        if user.mfa.is_some() {
            return Err(ServiceError::MfaAlreadyEnabled);
        }
        let now = self.now();
        self.take_reauth(user, now).await?;
        // Re-authentication by password counts against the account's throttle too: a stolen
        // session must not become an unlimited password oracle.
        let failures = self.reserve_attempt(user, now).await?;
        if !self.password_matches(user, password).await? {
            let err = ServiceError::InvalidPasswordOrCode;
            return Err(self
                .attempt_failed(&user.id, "mfa_setup_failed", failures, meta, now, err)
                .await);
        }
        let secret = TotpSecret::generate_os()
            .map_err(|err| ServiceError::Internal(format!("OS random number generator failed: {err}")))?;
        let policy = &self.config.totp;
        let otpauth_url = totp::otpauth_url(&self.config.mfa_issuer, &user.email, &secret, policy);
        let qr_code_svg = render_qr_svg(&otpauth_url)?;
        let setup = PendingSetupRecord {
            sealed_secret: self.key.seal(secret.as_bytes(), user.id.as_bytes()),
            created_at: now,
            expires_at: now + self.config.setup_ttl_secs,
        };
        let event = meta.event(&user.id, "mfa_setup_started", now);
        self.checkpoint("mfa_setup").await;
        match self
            .store
            .put_pending_setup(&user.id, &setup, &auth.session.token_hash, &event)
            .await?
        {
            Consumed::Yes => {}
            Consumed::SessionGone => return Err(ServiceError::Unauthenticated),
            Consumed::Stale | Consumed::Rejected => return Err(ServiceError::MfaAlreadyEnabled),
        }
        Ok(SetupView {
            secret: secret.to_base32().to_string(),
            otpauth_url,
            qr_code_svg,
            issuer: self.config.mfa_issuer.clone(),
            account_name: user.email.clone(),
            digits: policy.digits,
            period: policy.period,
            expires_at: setup.expires_at,
        })
    }

    /// `POST /api/user/profile/mfa/verify` (seed): enables MFA with a code of the pending secret.
    pub async fn mfa_verify(
        &self,
        auth: &Authenticated,
        code: &str,
        meta: &RequestMeta,
    ) -> ServiceResult<FreshBackupCodes> {
        let code = parse_totp("code", code)?;
        let user = &auth.user;
        if user.mfa.is_some() {
            return Err(ServiceError::MfaAlreadyEnabled);
        }
        let now = self.now();
        let pending = self
            .store
            .pending_setup(&user.id, now)
            .await?
            .ok_or(ServiceError::NoPendingSetup)?;
        let failures = self.reserve_attempt(user, now).await?;
        let step = self
            .open_secret(&pending.sealed_secret, &user.id)
            .and_then(|secret| totp::verify(&secret, &code, now, &self.config.totp, None));
        let Some(step) = step else {
            return Err(self
                .second_factor_failed(&user.id, failures, meta, now, ServiceError::InvalidMfaCode)
                .await);
        };
        let (fresh, codes) = self.new_backup_codes().await?;
        let enable = EnableMfa {
            user_id: user.id.clone(),
            sealed_secret: pending.sealed_secret,
            step,
            codes,
            keep_session: auth.session.token_hash,
            now,
            event: meta.event(&user.id, "mfa_enabled", now),
        };
        self.checkpoint("mfa_verify").await;
        match self.store.enable_mfa(&enable).await? {
            Consumed::Yes => Ok(fresh),
            // Another request enabled MFA or replaced the setup in the meantime.
            Consumed::Rejected | Consumed::Stale => Err(ServiceError::NoPendingSetup),
            Consumed::SessionGone => Err(ServiceError::Unauthenticated),
        }
    }

    /// The common head of regenerate and disable: MFA must be on, the attempt is reserved,
    /// password and code are checked together (one generic error for either).
    async fn reauthenticate(
        &self,
        auth: &Authenticated,
        password: String,
        code: &str,
        meta: &RequestMeta,
        now: i64,
    ) -> ServiceResult<(SecondFactorProof, u32)> {
        let factor = SecondFactorInput::parse("code", code)?;
        let user = &auth.user;
        if user.mfa.is_none() {
            return Err(ServiceError::MfaNotEnabled);
        }
        self.refuse_suspended_totp(user, &factor)?;
        self.take_reauth(user, now).await?;
        let failures = self.reserve_attempt(user, now).await?;
        let password_ok = self.password_matches(user, password).await?;
        match self.check_second_factor(user, &factor, now).await? {
            Some(proof) if password_ok => Ok((proof, failures)),
            _ => Err(self
                .second_factor_failed(&user.id, failures, meta, now, ServiceError::InvalidPasswordOrCode)
                .await),
        }
    }

    /// `POST /api/user/profile/mfa/backup-codes` (seed): a fresh set; the old one dies.
    pub async fn regenerate_backup_codes(
        &self,
        auth: &Authenticated,
        password: String,
        code: &str,
        meta: &RequestMeta,
    ) -> ServiceResult<FreshBackupCodes> {
        let now = self.now();
        let (proof, failures) = self.reauthenticate(auth, password, code, meta, now).await?;
        let (fresh, codes) = self.new_backup_codes().await?;
        let user_id = &auth.user.id;
        let backup_code = matches!(proof, SecondFactorProof::BackupCode(_));
        let event = meta.event(user_id, "backup_codes_regenerated", now);
        self.checkpoint("regenerate_backup_codes").await;
        match self
            .store
            .replace_backup_codes(user_id, proof, &codes, &auth.session.token_hash, &event)
            .await?
        {
            Consumed::Yes => {
                count_backup_code_used(backup_code);
                Ok(fresh)
            }
            Consumed::Rejected => Err(self
                .second_factor_failed(user_id, failures, meta, now, ServiceError::InvalidPasswordOrCode)
                .await),
            Consumed::SessionGone => Err(ServiceError::Unauthenticated),
            Consumed::Stale => Err(ServiceError::StateChanged),
        }
    }

    /// `POST /api/user/profile/mfa/disable`.
    pub async fn mfa_disable(
        &self,
        auth: &Authenticated,
        password: String,
        code: &str,
        meta: &RequestMeta,
    ) -> ServiceResult<()> {
        let now = self.now();
        let (proof, failures) = self.reauthenticate(auth, password, code, meta, now).await?;
        let user_id = &auth.user.id;
        let backup_code = matches!(proof, SecondFactorProof::BackupCode(_));
        let event = meta.event(user_id, "mfa_disabled", now);
        self.checkpoint("mfa_disable").await;
        match self
            .store
            .disable_mfa(user_id, proof, &auth.session.token_hash, &event)
            .await?
        {
            Consumed::Yes => {
                count_backup_code_used(backup_code);
                Ok(())
            }
            Consumed::Rejected => Err(self
                .second_factor_failed(user_id, failures, meta, now, ServiceError::InvalidPasswordOrCode)
                .await),
            Consumed::SessionGone => Err(ServiceError::Unauthenticated),
            Consumed::Stale => Err(ServiceError::StateChanged),
        }
    }

    /// `GET /api/user/profile/mfa`.
    pub async fn mfa_status(&self, auth: &Authenticated) -> ServiceResult<MfaStatus> {
        self.status_of(&auth.user).await
    }

    /// MFA status of any user (also for `tessera user show`).
    pub async fn status_of(&self, user: &UserRecord) -> ServiceResult<MfaStatus> {
        let (pending_setup, backup_codes_remaining) = match user.mfa {
            Some(_) => (false, self.store.backup_codes_remaining(&user.id).await?),
            None => (self.store.pending_setup(&user.id, self.now()).await?.is_some(), 0),
        };
        Ok(MfaStatus {
            enabled: user.mfa.is_some(),
            enabled_at: user.mfa.as_ref().map(|m| m.enabled_at),
            pending_setup,
            backup_codes_remaining,
        })
    }

    /// `GET /api/user/profile/security-events`.
    pub async fn security_events(&self, auth: &Authenticated, limit: Option<u32>) -> ServiceResult<Vec<EventRecord>> {
        let limit = match limit {
            None => 50,
            Some(limit @ 1..=200) => limit,
            Some(_) => return Err(ServiceError::invalid("limit", "must be between 1 and 200")),
        };
        Ok(self.store.list_events(&auth.user.id, limit).await?)
    }

    /// `POST /api/auth/login/mfa`: the second login step.
    ///
    /// A right TOTP code takes one write transaction: the store checks the lock, the suspension
    /// and the replay guard in the same conditional statement that advances the step and resets
    /// the throttle, then consumes the `mfa_token` and creates the session (BENCHMARKS.md: the
    /// step's cost is its statements). The TOTP code is checked in memory before that, but no
    /// answer depends on it before the lock has been checked in a write transaction: a wrong
    /// code, a replayed step or a used `mfa_token` reserve an attempt before their 401, so
    /// parallel guesses cannot exceed the budget; a right code meeting a lock gets the 429 of a
    /// refused reservation after the same work (one transaction). While the account is locked
    /// as read, and for backup codes (an argon2 hash to check), the order is the general one:
    /// reserve, check, consume.
    pub async fn login_second_factor(
        &self,
        mfa_token: &str,
        code: &str,
        meta: &RequestMeta,
    ) -> ServiceResult<IssuedSession> {
        let factor = SecondFactorInput::parse("code", code)?;
        let token_hash =
            PlainToken::parse_hash(TokenKind::MfaChallenge, mfa_token).map_err(|_| ServiceError::InvalidMfaToken)?;
        let now = self.now();
        let user = match self.store.challenge_user_record(&token_hash, now).await? {
            Some(user) if user.mfa.is_some() => user,
            _ => return Err(ServiceError::InvalidMfaToken),
        };
        if user.disabled_at.is_some() {
            return Err(ServiceError::AccountDisabled);
        }
        self.refuse_suspended_totp(&user, &factor).inspect_err(|_| {
            metrics::counter!("tessera_logins_total", "outcome" => "totp_suspended").increment(1);
        })?;
        if matches!(factor, SecondFactorInput::Totp(_)) && !locked_at(&user, now) {
            if let Some(SecondFactorProof::TotpStep(step)) = self.check_second_factor(&user, &factor, now).await? {
                let (session, record) = self.new_session(&user, true, now, meta);
                let event = meta.event(&user.id, "login_succeeded", now);
                self.checkpoint("second_factor").await;
                match self
                    .store
                    .complete_challenge_with_totp(&token_hash, step, SECOND_FACTOR_LOCKS, &record, &event)
                    .await?
                {
                    TotpCompletion::Completed => {
                        metrics::counter!("tessera_logins_total", "outcome" => "second_factor_ok").increment(1);
                        return Ok(session);
                    }
                    TotpCompletion::Locked { until } => {
                        metrics::counter!("tessera_logins_total", "outcome" => "second_factor_locked").increment(1);
                        return Err(ServiceError::Throttled {
                            retry_after_secs: (until - now).max(1),
                        });
                    }
                    TotpCompletion::Rejected => {}
                }
            }
            // A wrong code, or a right one the store refused (replayed, suspended, the
            // `mfa_token` used meanwhile): counted like any failed attempt, or refused as locked.
            let failures = self.reserve_login_attempt(&user, now).await?;
            metrics::counter!("tessera_logins_total", "outcome" => "second_factor_failed").increment(1);
            return Err(self
                .second_factor_failed(&user.id, failures, meta, now, ServiceError::SecondFactorRejected)
                .await);
        }
        // A backup code (one argon2 hash to check), or a TOTP code while the account was locked
        // when read: reserve first, then check, then consume.
        let failures = self.reserve_login_attempt(&user, now).await?;
        let Some(proof) = self.check_second_factor(&user, &factor, now).await? else {
            metrics::counter!("tessera_logins_total", "outcome" => "second_factor_failed").increment(1);
            return Err(self
                .second_factor_failed(&user.id, failures, meta, now, ServiceError::SecondFactorRejected)
                .await);
        };
        let backup_code = matches!(proof, SecondFactorProof::BackupCode(_));
        let (session, record) = self.new_session(&user, true, now, meta);
        let event = meta.event(&user.id, "login_succeeded", now);
        self.checkpoint("second_factor").await;
        match self
            .store
            .complete_challenge(&token_hash, proof, &record, &event)
            .await?
        {
            Consumed::Yes => {
                metrics::counter!("tessera_logins_total", "outcome" => "second_factor_ok").increment(1);
                count_backup_code_used(backup_code);
                Ok(session)
            }
            Consumed::Rejected | Consumed::SessionGone | Consumed::Stale => {
                metrics::counter!("tessera_logins_total", "outcome" => "second_factor_failed").increment(1);
                Err(self
                    .second_factor_failed(&user.id, failures, meta, now, ServiceError::SecondFactorRejected)
                    .await)
            }
        }
    }

    /// [`Service::reserve_attempt`] for the second login step, counting a refusal as
    /// `second_factor_locked`.
    async fn reserve_login_attempt(&self, user: &UserRecord, now: i64) -> ServiceResult<u32> {
        self.reserve_attempt(user, now).await.inspect_err(|err| {
            if matches!(err, ServiceError::Throttled { .. }) {
                metrics::counter!("tessera_logins_total", "outcome" => "second_factor_locked").increment(1);
            }
        })
    }

    /// `tessera user reset-mfa EMAIL`: for a user who lost both phone and backup codes.
    pub async fn operator_reset_mfa(&self, email: &str) -> ServiceResult<UserRecord> {
        let user = self.existing_user(email).await?;
        let event = operator_meta().event(&user.id, "mfa_reset_by_operator", self.now());
        self.store.reset_mfa(&user.id, &event).await?;
        Ok(user)
    }

    /// `tessera user disable|enable EMAIL`: disabling refuses logins (403) and revokes sessions.
    pub async fn operator_set_disabled(&self, email: &str, disabled: bool) -> ServiceResult<UserRecord> {
        let user = self.existing_user(email).await?;
        let now = self.now();
        let kind = if disabled {
            "account_disabled_by_operator"
        } else {
            "account_enabled_by_operator"
        };
        let event = operator_meta().event(&user.id, kind, now);
        self.store
            .set_disabled(&user.id, disabled.then_some(now), &event)
            .await?;
        Ok(user)
    }

    async fn existing_user(&self, email: &str) -> ServiceResult<UserRecord> {
        let email = Email::parse(email).map_err(|err| ServiceError::invalid("email", err.to_string()))?;
        self.store
            .user_by_email(email.as_str())
            .await?
            .ok_or_else(|| ServiceError::invalid("email", "no such user"))
    }

    /// `tessera user list` / `show`.
    pub async fn users(&self) -> ServiceResult<Vec<UserRecord>> {
        Ok(self.store.list_users().await?)
    }

    pub async fn user_by_email(&self, email: &str) -> ServiceResult<Option<UserRecord>> {
        let email = Email::parse(email).map_err(|err| ServiceError::invalid("email", err.to_string()))?;
        Ok(self.store.user_by_email(email.as_str()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_any_input_never_panics_and_accepts_only_well_formed_codes(input in "\\PC{0,40}") {
            match SecondFactorInput::parse("code", &input) {
                Ok(SecondFactorInput::Totp(_)) => {
                    let digits: String = input.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
                    prop_assert!(digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()));
                }
                Ok(SecondFactorInput::Backup(_)) => {
                    let symbols: String = input.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
                    prop_assert_eq!(symbols.chars().count(), 13);
                }
                Err(ServiceError::Validation(members)) => prop_assert_eq!(members[0].0, "code"),
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_parsers(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = SecondFactorInput::parse("code", &text);
            let _ = parse_totp("code", &text);
        }
    }

    #[test]
    fn codes_are_totp_or_backup_codes_or_a_validation_problem() {
        assert!(matches!(
            SecondFactorInput::parse("code", "123 456"),
            Ok(SecondFactorInput::Totp(_))
        ));
        assert!(matches!(
            SecondFactorInput::parse("code", "ABCD-EFGH-JKMNP"),
            Ok(SecondFactorInput::Backup(_))
        ));
        for bad in ["", "12345", "1234567", "abcd-efgh-jkmn0"] {
            assert!(
                matches!(SecondFactorInput::parse("otp", bad), Err(ServiceError::Validation(m)) if m[0].0 == "otp")
            );
        }
    }
}
