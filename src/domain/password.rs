//! The password policy and argon2id hashing.
//!
//! The policy for a newly chosen password (NIST SP 800-63B 5.1.1.2): 8 to 256 characters, not on
//! the embedded list of common passwords (compared case-insensitively), and not containing the
//! local part of the account's email. No composition rules: they are what 800-63B advises
//! against.
//!
//! Hashing is deliberately slow (m = 19456 KiB, t = 2, p = 1, per the OWASP password storage
//! sheet); callers run it on the bounded blocking pool of the service, never on an async worker.
//! This module does no scheduling itself.

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;
use unicode_normalization::UnicodeNormalization;
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
    #[error("is too common: it is on a list of frequently used and breached passwords")]
    Common,
    #[error("must not contain the name part of the email address")]
    ContainsEmail,
}

/// The 30,000 most common passwords in rank order, one per line, lower-case, zlib-compressed
/// (about 126 KiB). Source: the `passwords` frequency list of zxcvbn 4.4.28 (PyPI package
/// `zxcvbn`, a port of Dropbox's zxcvbn), MIT licence; it was compiled from leaked password
/// corpora. Regenerate with that package's `FREQUENCY_LISTS["passwords"]`.
static COMMON_PASSWORDS_ZLIB: &[u8] = include_bytes!("common-passwords.zlib");

/// Email local parts shorter than this are not looked for in a password: a one- or
/// two-letter name occurs in most passwords by chance and would refuse good ones.
const MIN_LOCAL_PART_CHECKED: usize = 3;

/// The common-password list, decompressed once on first use.
fn common_passwords() -> &'static HashSet<String> {
    static LIST: OnceLock<HashSet<String>> = OnceLock::new();
    LIST.get_or_init(|| {
        // The data is a constant of this build; the unit tests prove it decompresses, so the
        // empty fallback is never taken by a released binary.
        let bytes = miniz_oxide::inflate::decompress_to_vec_zlib(COMMON_PASSWORDS_ZLIB).unwrap_or_default();
        String::from_utf8_lossy(&bytes).lines().map(str::to_owned).collect()
    })
}

/// Lower-cased and NFC-normalised, as the list and normalised emails are written.
fn folded(text: &str) -> String {
    text.nfc().collect::<String>().to_lowercase()
}

impl Password {
    /// Applies the policy to a newly chosen password of the account with the (normalised)
    /// `email`: 8 to 256 characters (Unicode scalar values), not a common password, not
    /// containing the email's local part.
    pub fn new(input: String, email: &str) -> Result<Self, PasswordPolicyError> {
        let input = Zeroizing::new(input);
        let len = input.chars().count();
        if len < MIN_LEN {
            return Err(PasswordPolicyError::TooShort);
        }
        if len > MAX_LEN {
            return Err(PasswordPolicyError::TooLong);
        }
        let folded_input = Zeroizing::new(folded(&input));
        if common_passwords().contains(folded_input.as_str()) {
            return Err(PasswordPolicyError::Common);
        }
        let local = folded(email.rsplit_once('@').map_or("", |(local, _)| local));
        if local.chars().count() >= MIN_LOCAL_PART_CHECKED && folded_input.contains(&local) {
            return Err(PasswordPolicyError::ContainsEmail);
        }
        Ok(Self(input))
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

    const EMAIL: &str = "alice@example.com";

    #[test]
    fn policy_counts_characters_not_bytes() {
        assert_eq!(
            Password::new("short".into(), EMAIL).err(),
            Some(PasswordPolicyError::TooShort)
        );
        assert!(Password::new("éèéèéèéè".into(), EMAIL).is_ok());
        assert!(Password::new("ab".repeat(128), EMAIL).is_ok());
        assert_eq!(
            Password::new("a".repeat(257), EMAIL).err(),
            Some(PasswordPolicyError::TooLong)
        );
    }

    #[test]
    fn the_embedded_list_holds_at_least_the_10000_most_common_passwords() {
        let list = common_passwords();
        assert!(list.len() >= 10_000, "{}", list.len());
        for common in ["password", "12345678", "qwertyuiop", "baseball", "iloveyou"] {
            assert!(list.contains(common), "{common}");
        }
    }

    #[test]
    fn common_passwords_are_refused_in_any_case() {
        for common in ["password", "PassWord", "12345678", "QWERTYUIOP", "sunshine", "trustno1"] {
            assert_eq!(
                Password::new(common.into(), EMAIL).err(),
                Some(PasswordPolicyError::Common),
                "{common}"
            );
        }
        assert!(Password::new("correct horse battery staple".into(), EMAIL).is_ok());
    }

    #[test]
    fn a_password_containing_the_email_name_is_refused() {
        for bad in ["alice2024!", "My name is ALICE", "xxalicexx"] {
            assert_eq!(
                Password::new(bad.into(), EMAIL).err(),
                Some(PasswordPolicyError::ContainsEmail),
                "{bad}"
            );
        }
        // NFC on both sides: a decomposed é matches a precomposed one.
        assert_eq!(
            Password::new("hello jose\u{301} 99".into(), "jos\u{e9}@example.com").err(),
            Some(PasswordPolicyError::ContainsEmail)
        );
        // Too short a name to look for; another name entirely.
        assert!(Password::new("jo is my name".into(), "jo@example.com").is_ok());
        assert!(Password::new("bob's long passphrase".into(), EMAIL).is_ok());
    }

    #[test]
    fn hash_verifies_only_the_same_password() {
        let password = Password::new("correct horse battery".into(), EMAIL).unwrap();
        let hash = hash(&password).unwrap();
        assert!(hash.0.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(!needs_rehash(&hash));
        assert!(verify(&password, &hash));
        assert!(!verify(&Password::candidate("correct horse battery!".into()), &hash));
        assert!(!verify(&password, &PasswordHashString("not a phc string".into())));
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let password = Password::new("hunter2hunter2".into(), EMAIL).unwrap();
        assert!(!format!("{password:?}").contains("hunter2"));
    }
}
