//! The password policy and argon2id hashing.
//!
//! The policy for a newly chosen password (NIST SP 800-63B 5.1.1.2): 8 to 256 characters, not on
//! the embedded list of common passwords (compared case-insensitively), and not containing the
//! local part of the account's email. No composition rules: they are what 800-63B advises
//! against.
//!
//! Hashing is deliberately slow (m = 19456 KiB, t = 2, p = 1, per the OWASP password storage
//! sheet); callers run it on the bounded hashing pool of the service, never on an async worker.
//! This module does no scheduling itself. Each pool thread owns one [`HashingMemory`] (the
//! 19 MiB of argon2 working memory, allocated once) and hashes and verifies in it
//! ([`hash_in`], [`verify_in`]), so memory stays bounded by the pool's size and no hash pays for
//! a fresh allocation; [`hash`] and [`verify`] allocate their own for one-off callers.

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::collections::HashSet;
use std::fmt;
use std::sync::OnceLock;
use subtle::ConstantTimeEq;
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

/// The parameters this service hashes new passwords with: m = 19456 KiB, t = 2, p = 1, 32 bytes.
fn params() -> Params {
    // The parameters are constants inside argon2's accepted range, so `Params::new` cannot fail;
    // falling back to the crate default (which is the same OWASP recommendation) keeps this
    // function total without an unwrap.
    Params::new(19_456, 2, 1, Some(32)).unwrap_or_default()
}

/// The argon2id instance with the parameters this service hashes new passwords with.
pub fn argon2id() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
}

/// Salt bytes of a new hash (the PHC recommendation, and what the previous hasher chose).
const SALT_LEN: usize = 16;

/// The argon2 working memory of one hash with today's parameters (19456 blocks of 1 KiB),
/// allocated once and reused by every hash and verification run in it. argon2 overwrites every
/// block it reads in its first pass, so what a previous hash left there does not matter.
pub struct HashingMemory(Box<[Block]>);

impl HashingMemory {
    pub fn new() -> Self {
        Self(vec![Block::new(); params().block_count()].into_boxed_slice())
    }

    /// The blocks argon2 needs for `params`, when this memory is large enough to hold them.
    fn blocks_for(&mut self, params: &Params) -> Option<&mut [Block]> {
        self.0.get_mut(..params.block_count())
    }
}

impl Default for HashingMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for HashingMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashingMemory({} KiB)", self.0.len())
    }
}

/// Hashes a password with a fresh random salt, in its own freshly allocated memory.
pub fn hash(password: &Password) -> Result<PasswordHashString, HashingError> {
    hash_in(password, &mut HashingMemory::new())
}

/// Hashes a password with a fresh random salt, in `memory`. The PHC string is the one the
/// `password-hash` traits write: `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`.
pub fn hash_in(password: &Password, memory: &mut HashingMemory) -> Result<PasswordHashString, HashingError> {
    let failed = |err: &dyn fmt::Display| HashingError(err.to_string());
    let mut salt = [0u8; SALT_LEN];
    rand::fill(&mut salt[..]);
    let params = params();
    let mut out = Zeroizing::new([0u8; 32]);
    let blocks = memory
        .blocks_for(&params)
        .ok_or_else(|| HashingError("the hashing memory is smaller than the parameters need".into()))?;
    argon2id()
        .hash_password_into_with_memory(password.expose().as_bytes(), &salt, &mut out[..], blocks)
        .map_err(|err| failed(&err))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|err| failed(&err))?,
        salt: Some(Salt::new(&salt).map_err(|err| failed(&err))?),
        hash: Some(Output::new(&out[..]).map_err(|err| failed(&err))?),
    };
    Ok(PasswordHashString(phc.to_string()))
}

/// Checks a password against a stored PHC string, in its own freshly allocated memory.
pub fn verify(password: &Password, stored: &PasswordHashString) -> bool {
    verify_in(password, stored, &mut HashingMemory::new())
}

/// Checks a password against a stored PHC string: recomputes argon2 with the stored algorithm,
/// version, parameters and salt and compares in constant time. Hashes made with today's
/// parameters (or smaller ones) run in `memory`; a hash with a larger memory cost (older or
/// foreign parameters) gets a fresh allocation of its own. A malformed stored hash, or one of
/// an algorithm other than argon2, verifies as false.
pub fn verify_in(password: &Password, stored: &PasswordHashString, memory: &mut HashingMemory) -> bool {
    let Ok(parsed) = PasswordHash::new(&stored.0) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    // Also takes the output length from the stored hash.
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let hasher = Argon2::new(algorithm, version, params.clone());
    let mut out = Zeroizing::new(vec![0u8; expected.len()]);
    let pwd = password.expose().as_bytes();
    let computed = match memory.blocks_for(&params) {
        Some(blocks) => hasher.hash_password_into_with_memory(pwd, salt.as_ref(), &mut out[..], blocks),
        None => hasher.hash_password_into(pwd, salt.as_ref(), &mut out[..]),
    };
    computed.is_ok() && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
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

    /// Encoded by the reference implementation (Debian's `argon2` 0~20171227), not by this
    /// crate: `echo -n "correct horse battery" | argon2 tessera-fixed-salt -id -t 2 -k 19456 -p 1
    /// -l 32 -e` and, for the other lines, the flags their PHC strings name.
    const REFERENCE_TODAY: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$dGVzc2VyYS1maXhlZC1zYWx0$ERl3ebsc0ijhzU6zaKPD5LWXulJ1jC2JE2bdispkmUQ";
    /// Smaller memory, two lanes: runs in a prefix of the reused memory.
    const REFERENCE_SMALLER: &str =
        "$argon2id$v=19$m=4096,t=3,p=2$b3RoZXJzYWx0MQ$hIIhg9cAdBC9GULzpjjUX/MF37PfGO9mTa06uFKLUqI";
    /// Version 0x10 argon2d with a 16-byte output.
    const REFERENCE_OLD_VERSION: &str = "$argon2d$v=16$m=8192,t=1,p=1$b3RoZXJzYWx0MQ$O0uKTnw6V7ArPMscUiw/jg";
    /// The reference README's example (`password`, salt `somesalt`): 64 MiB, more than the reused
    /// memory holds, so it takes the fresh-allocation path.
    const REFERENCE_LARGER: &str = "$argon2i$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";

    fn stored(phc: &str) -> PasswordHashString {
        PasswordHashString(phc.into())
    }

    #[test]
    fn reference_vectors_verify_in_reused_memory() {
        let mut memory = HashingMemory::new();
        let right = Password::candidate("correct horse battery".into());
        let wrong = Password::candidate("correct horse batterz".into());
        for phc in [REFERENCE_TODAY, REFERENCE_SMALLER, REFERENCE_OLD_VERSION] {
            assert!(verify_in(&right, &stored(phc), &mut memory), "{phc}");
            assert!(!verify_in(&wrong, &stored(phc), &mut memory), "{phc}");
        }
        // The same memory again after other parameters used it: still right.
        assert!(verify_in(&right, &stored(REFERENCE_TODAY), &mut memory));
        assert!(verify_in(
            &Password::candidate("password".into()),
            &stored(REFERENCE_LARGER),
            &mut memory
        ));
        assert!(!verify_in(&right, &stored(REFERENCE_LARGER), &mut memory));
        assert!(!needs_rehash(&stored(REFERENCE_TODAY)));
        assert!(needs_rehash(&stored(REFERENCE_SMALLER)));
    }

    #[test]
    fn a_hash_made_in_reused_memory_verifies_in_fresh_memory_and_the_other_way() {
        let mut memory = HashingMemory::new();
        let password = Password::candidate("hash me twice".into());
        let first = hash_in(&password, &mut memory).unwrap();
        let second = hash_in(&password, &mut memory).unwrap();
        assert_ne!(first, second, "each hash has its own salt");
        for made in [&first, &second] {
            assert!(made.0.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
            assert!(!needs_rehash(made));
            assert!(verify(&password, made));
            assert!(verify_in(&password, made, &mut memory));
        }
        let fresh = hash(&password).unwrap();
        assert!(verify_in(&password, &fresh, &mut memory));
        // PHC: `$argon2id$v=19$<params>$<22 characters of salt>$<43 characters of hash>`.
        let fields: Vec<&str> = first.0.split('$').collect();
        assert_eq!(fields.len(), 6, "{fields:?}");
        assert_eq!((fields[4].len(), fields[5].len()), (22, 43), "{fields:?}");
    }

    #[test]
    fn malformed_or_foreign_stored_hashes_verify_as_false() {
        let mut memory = HashingMemory::new();
        let password = Password::candidate("correct horse battery".into());
        let truncated = &REFERENCE_TODAY[..REFERENCE_TODAY.len() - 10];
        let no_hash = REFERENCE_TODAY.rsplit_once('$').unwrap().0;
        let other_params = REFERENCE_TODAY.replace("t=2", "t=3");
        let other_salt = REFERENCE_TODAY.replace("dGVzc2VyYS1maXhlZC1zYWx0", "dGVzc2VyYS1maXhlZC1zYWx1");
        let bcrypt = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
        for bad in [
            "",
            "not a phc string",
            truncated,
            no_hash,
            &other_params,
            &other_salt,
            bcrypt,
        ] {
            assert!(!verify_in(&password, &stored(bad), &mut memory), "{bad}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let password = Password::new("hunter2hunter2".into(), EMAIL).unwrap();
        assert!(!format!("{password:?}").contains("hunter2"));
    }
}
