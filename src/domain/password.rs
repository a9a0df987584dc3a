//! The password policy and argon2id hashing.
//!
//! Hashing is deliberately slow (m = 19456 KiB, t = 2, p = 1, per the OWASP password storage
//! sheet); callers run it on the bounded blocking pool of the service, never on an async worker.
//! This module does no scheduling itself.

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use std::fmt;
use zeroize::Zeroizing;

pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 256;

/// A plaintext password that passed the policy. `Debug` never shows it; memory is wiped on drop.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

/// Why a password is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordPolicyError {
    #[error("must be at least 8 characters")]
    TooShort,
    #[error("must be at most 256 characters")]
    TooLong,
}

impl Password {
    /// Applies the policy to a new password: 8 to 256 characters (Unicode scalar values).
    pub fn new(input: String) -> Result<Self, PasswordPolicyError> {
        let input = Zeroizing::new(input);
        let len = input.chars().count();
        if len < MIN_LEN {
            Err(PasswordPolicyError::TooShort)
        } else if len > MAX_LEN {
            Err(PasswordPolicyError::TooLong)
        } else {
            Ok(Self(input))
        }
    }

    /// Wraps a password offered for verification. No policy: a stored password may predate a
    /// policy change, and a wrong one must cost the same work as a right one.
    pub fn candidate(input: String) -> Self {
        Self(Zeroizing::new(input))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`). Not secret, but not for logs either.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHashString(pub String);

impl fmt::Debug for PasswordHashString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHashString([redacted])")
    }
}

/// Hashing failed; only possible with broken parameters or an exhausted RNG.
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashingError(String);

/// The argon2id instance with the parameters this service hashes new passwords with.
pub fn argon2id() -> Argon2<'static> {
    // The parameters are constants inside argon2's accepted range, so `Params::new` cannot fail;
    // falling back to the crate default (which is the same OWASP recommendation) keeps this
    // function total without an unwrap.
    let params = Params::new(19_456, 2, 1, Some(32)).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password with a fresh random salt.
pub fn hash(password: &Password) -> Result<PasswordHashString, HashingError> {
    argon2id()
        .hash_password(password.expose().as_bytes())
        .map(|hash| PasswordHashString(hash.to_string()))
        .map_err(|err| HashingError(err.to_string()))
}

/// Checks a password against a stored PHC string. A malformed stored hash verifies as false.
pub fn verify(password: &Password, stored: &PasswordHashString) -> bool {
    match PasswordHash::new(&stored.0) {
        Ok(parsed) => argon2id()
            .verify_password(password.expose().as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// True when a stored hash was made with other parameters than today's, so the service can
/// rehash it after a successful login.
pub fn needs_rehash(stored: &PasswordHashString) -> bool {
    !stored.0.starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_counts_characters_not_bytes() {
        assert_eq!(Password::new("short".into()).err(), Some(PasswordPolicyError::TooShort));
        assert!(Password::new("éééééééé".into()).is_ok());
        assert!(Password::new("a".repeat(256)).is_ok());
        assert_eq!(Password::new("a".repeat(257)).err(), Some(PasswordPolicyError::TooLong));
    }

    #[test]
    fn hash_verifies_only_the_same_password() {
        let password = Password::new("correct horse battery".into()).unwrap();
        let hash = hash(&password).unwrap();
        assert!(hash.0.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(!needs_rehash(&hash));
        assert!(verify(&password, &hash));
        assert!(!verify(&Password::candidate("correct horse battery!".into()), &hash));
        assert!(!verify(&password, &PasswordHashString("not a phc string".into())));
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let password = Password::new("hunter2hunter2".into()).unwrap();
        assert!(!format!("{password:?}").contains("hunter2"));
    }
}
