//! The operator's account commands (`tessera user create|set-password|revoke-sessions|unlock|
//! delete`): the same rules as the HTTP use cases where they overlap (the password policy, one
//! normalised email per account), each change one store transaction with its audit event, whose
//! actor is the operator's CLI (`user_agent` `tessera-cli`, no address). Knows no terminal: the
//! CLI reads and prints.

use super::accounts::UserView;
use super::mfa::operator_meta;
use super::{Service, ServiceError, ServiceResult};
use crate::domain::email::Email;
use crate::domain::password::Password;
use crate::store::{NewUser, RevokedSessions, StoreError, UserRecord};

/// A password made up for `tessera user create` without one: 24 characters of lower-case
/// base32 (120 bits from the OS generator), in groups of six so it can be read out.
pub fn generated_password() -> String {
    let mut random = [0u8; 15];
    rand::fill(&mut random[..]);
    let text = data_encoding::BASE32_NOPAD.encode(&random).to_lowercase();
    let groups: Vec<&str> = text
        .as_bytes()
        .chunks(6)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    groups.join("-")
}

/// The account `tessera user create` made; `generated_password` is set when the operator gave
/// none (it is shown once and never stored in the clear).
#[derive(Debug)]
pub struct CreatedUser {
    pub user: UserView,
    pub generated_password: Option<String>,
}

fn no_such_user(email: &str) -> ServiceError {
    ServiceError::invalid("email", format!("no account with email {email}"))
}

impl Service {
    /// `tessera user create EMAIL`: like registration (same email and password rules, the same
    /// unique email), but also while registration is closed: this is how the first account of a
    /// closed installation is made. Event `user_created_by_operator`.
    pub async fn operator_create_user(&self, email: &str, password: Option<String>) -> ServiceResult<CreatedUser> {
        let email = Email::parse(email).map_err(|err| ServiceError::invalid("email", err.to_string()))?;
        let (password, generated) = match password {
            Some(password) => (
                Password::new(password, email.as_str())
                    .map_err(|err| ServiceError::invalid("password", err.to_string()))?,
                false,
            ),
            None => loop {
                // A random password passes the policy but for a freak match of the email's
                // local part; then another is drawn.
                if let Ok(password) = Password::new(generated_password(), email.as_str()) {
                    break (password, true);
                }
            },
        };
        if self.store.user_by_email(email.as_str()).await?.is_some() {
            return Err(ServiceError::EmailTaken);
        }
        let shown = generated.then(|| password.expose().to_owned());
        let password_hash = self.hash_password(password).await?;
        let now = self.now();
        let user = NewUser {
            id: uuid::Uuid::now_v7().to_string(),
            email: email.as_str().to_owned(),
            password_hash: password_hash.0,
            created_at: now,
        };
        let event = operator_meta().event(&user.id, "user_created_by_operator", now);
        match self.store.insert_user(&user, &event).await {
            Ok(()) => Ok(CreatedUser {
                user: UserView {
                    id: user.id,
                    email: user.email,
                    mfa_enabled: false,
                    created_at: now,
                },
                generated_password: shown,
            }),
            Err(StoreError::Conflict) => Err(ServiceError::EmailTaken),
            Err(err) => Err(err.into()),
        }
    }

    /// `tessera user set-password EMAIL`: the password policy applies; every session and pending
    /// second login step is revoked and both throttles are cleared (whoever was locked out gets a
    /// fresh start with the new password). Event `password_set_by_operator`.
    pub async fn operator_set_password(&self, email: &str, password: String) -> ServiceResult<UserRecord> {
        let user = self.operator_target(email).await?;
        let password =
            Password::new(password, &user.email).map_err(|err| ServiceError::invalid("password", err.to_string()))?;
        let hash = self.hash_password(password).await?;
        let event = operator_meta().event(&user.id, "password_set_by_operator", self.now());
        if !self.store.operator_set_password(&user.id, &hash.0, &event).await? {
            return Err(no_such_user(email));
        }
        Ok(user)
    }

    /// `tessera user revoke-sessions EMAIL`: every session and pending `mfa_token` ends.
    /// Event `sessions_revoked_by_operator`.
    pub async fn operator_revoke_sessions(&self, email: &str) -> ServiceResult<(UserRecord, RevokedSessions)> {
        let user = self.operator_target(email).await?;
        let event = operator_meta().event(&user.id, "sessions_revoked_by_operator", self.now());
        match self.store.operator_revoke_sessions(&user.id, &event).await? {
            Some(revoked) => Ok((user, revoked)),
            None => Err(no_such_user(email)),
        }
    }

    /// `tessera user unlock EMAIL`: clears the password throttle and the second-factor throttle
    /// (counts and locks); a TOTP suspension (50 failed codes) is lifted only when asked.
    /// Returns the account as it was before. Event `account_unlocked_by_operator`.
    pub async fn operator_unlock(&self, email: &str, lift_totp_suspension: bool) -> ServiceResult<UserRecord> {
        let user = self.operator_target(email).await?;
        let event = operator_meta().event(&user.id, "account_unlocked_by_operator", self.now());
        if !self
            .store
            .operator_unlock(&user.id, lift_totp_suspension, &event)
            .await?
        {
            return Err(no_such_user(email));
        }
        Ok(user)
    }

    /// `tessera user delete EMAIL`: the account and all that hangs off it, in one transaction;
    /// its security events stay, with `user_deleted` as the last.
    pub async fn operator_delete_user(&self, email: &str) -> ServiceResult<UserRecord> {
        let user = self.operator_target(email).await?;
        let event = operator_meta().event(&user.id, "user_deleted", self.now());
        if !self.store.operator_delete_user(&user.id, &event).await? {
            return Err(no_such_user(email));
        }
        Ok(user)
    }

    async fn operator_target(&self, email: &str) -> ServiceResult<UserRecord> {
        let parsed = Email::parse(email).map_err(|err| ServiceError::invalid("email", err.to_string()))?;
        self.store
            .user_by_email(parsed.as_str())
            .await?
            .ok_or_else(|| no_such_user(parsed.as_str()))
    }
}
