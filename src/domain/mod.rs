//! Pure rules of the system: no IO, no clock reads (time is always a parameter), no async.
//!
//! - [`email`]: parsing and normalising an email address.
//! - [`password`]: the password policy (length, common passwords, the email's name) and argon2id
//!   hashing (PHC strings).
//! - [`token`]: session and MFA-challenge tokens (`tsr_...`, `tsm_...`) and their SHA-256 hashes.
//! - [`sealing`]: the master key and XChaCha20-Poly1305 sealing of TOTP secrets.
//! - [`totp`]: RFC 4226 / RFC 6238 one-time passwords with replay-aware verification.
//! - [`backup_code`]: one-time backup codes: generation, normalisation, hashing.
//! - [`throttle`]: the second-factor lockout policy (how long after how many failures).

pub mod backup_code;
pub mod email;
pub mod password;
pub mod sealing;
pub mod throttle;
pub mod token;
pub mod totp;
