//! One-time passwords from a shared secret: HOTP (RFC 4226) and TOTP
//! (RFC 6238), the TOTP shared secret, the parsed code a user types in, and
//! the `otpauth://` provisioning URL shown as a QR code.
//!
//! This module owns the arithmetic and the secret-handling rules: constant
//! time comparison of codes, replay protection by step number, redacted
//! `Debug`, zeroize on drop. It must not do IO, read the clock (time is always
//! passed in as unix seconds), persist anything or decide rate limits; the
//! caller stores `last_accepted_step` and the secret.
//!
//! [`CodeFormatError`] lives here and is shared with `backup_code`.

// Panics in an authentication path are a denial-of-service vector; keep the
// production code free of them (tests may unwrap).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

use core::fmt;

use hmac::{Hmac, KeyInit, Mac, digest::block_api::EagerHash};
use rand::{CryptoRng, TryRng, rngs::SysError, rngs::SysRng};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

/// Hash function used inside HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA-1: what RFC 6238 defaults to and what [`verify`] uses,
    /// because authenticator apps widely ignore the other choices.
    Sha1,
    /// HMAC-SHA-256.
    Sha256,
    /// HMAC-SHA-512.
    Sha512,
}

/// Why a typed-in code (TOTP or backup code) was refused before any secret
/// was consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeFormatError {
    /// Nothing but separators / whitespace was given.
    Empty,
    /// Wrong length or a character outside the allowed set.
    Malformed,
}

impl fmt::Display for CodeFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "code is empty",
            Self::Malformed => "code is malformed",
        })
    }
}

impl std::error::Error for CodeFormatError {}

/// Returned by [`hotp`] in the (unreachable) case that HMAC could not be
/// keyed. Real HOTP values are at most 31 bits (RFC 4226 §5.3 masks the top
/// bit), so `u32::MAX` can never equal a genuine code: an impossible error
/// turns into "code does not match" instead of a panic.
const NEVER_MATCHES: u32 = u32::MAX;

/// RFC 4226 HOTP: HMAC(key, counter) with dynamic truncation, reduced modulo
/// `10^digits`.
///
/// Any key length is accepted (HMAC hashes long keys and pads short ones).
/// `digits >= 10` returns the full 31-bit truncated value. Never panics: if
/// HMAC could not be keyed (impossible with hmac 0.13) it returns
/// `u32::MAX`, which no real code can equal.
#[must_use]
pub fn hotp(key: &[u8], counter: u64, digits: u32, algorithm: Algorithm) -> u32 {
    let truncated = match algorithm {
        Algorithm::Sha1 => dynamic_truncation::<sha1::Sha1>(key, counter),
        Algorithm::Sha256 => dynamic_truncation::<sha2::Sha256>(key, counter),
        Algorithm::Sha512 => dynamic_truncation::<sha2::Sha512>(key, counter),
    };
    match truncated {
        // 10^digits overflowing u32 means digits >= 10, which is wider than
        // the 31-bit value: nothing to reduce.
        Some(value) => match 10u32.checked_pow(digits) {
            Some(modulus) => value % modulus,
            None => value,
        },
        None => NEVER_MATCHES,
    }
}

/// HMAC + RFC 4226 §5.3 dynamic truncation, giving the 31-bit value.
///
/// `None` only if HMAC rejected the key, which hmac 0.13 never does
/// (`HmacCore::new_from_slice` always returns `Ok`); the `Result` is still
/// handled so that a future change cannot become a panic.
fn dynamic_truncation<D>(key: &[u8], counter: u64) -> Option<u32>
where
    D: EagerHash,
    Hmac<D>: KeyInit + Mac,
{
    let mut mac = <Hmac<D> as KeyInit>::new_from_slice(key).ok()?;
    mac.update(&counter.to_be_bytes());
    let tag = mac.finalize().into_bytes();
    let offset = usize::from(tag.last()? & 0x0f);
    let window: [u8; 4] = tag.get(offset..offset.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(window) & 0x7fff_ffff)
}

/// TOTP time step containing `unix_seconds`: `floor(unix_seconds / period)`.
///
/// Floor (not truncating) division keeps steps monotonic across the epoch.
/// Never panics: a `period` of 0 is treated as 1 (a nonsensical policy must
/// not crash the login path) and periods above `i64::MAX` saturate.
#[must_use]
pub fn step_at(unix_seconds: i64, period: u64) -> i64 {
    let period = i64::try_from(period).unwrap_or(i64::MAX).max(1);
    unix_seconds.div_euclid(period)
}

/// Length of a freshly generated TOTP secret: 160 bits, the size RFC 4226
/// §4 recommends and the output size of SHA-1.
pub const SECRET_LEN: usize = 20;

/// The TOTP shared secret (raw key bytes). Zeroized on drop; `Debug` is
/// redacted. Serialise it with [`TotpSecret::to_base32`] only to show it to
/// the user or store it encrypted.
pub struct TotpSecret {
    bytes: Zeroizing<Vec<u8>>,
}

impl TotpSecret {
    /// A new 160-bit secret from a cryptographically secure RNG (for example
    /// `rand::rng()` or a seeded `rand::rngs::StdRng` in tests).
    #[must_use]
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_LEN]);
        rng.fill_bytes(&mut bytes);
        Self { bytes }
    }

    /// A new 160-bit secret straight from the operating system RNG.
    ///
    /// # Errors
    /// The OS RNG is fallible (`getrandom` can fail); that error is returned
    /// rather than panicking.
    pub fn generate_os() -> Result<Self, SysError> {
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_LEN]);
        SysRng.try_fill_bytes(&mut bytes)?;
        Ok(Self { bytes })
    }

    /// Wraps existing key bytes (e.g. decrypted from storage). Takes
    /// ownership so the only copy ends up zeroized.
    #[must_use]
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            bytes: Zeroizing::new(bytes),
        }
    }

    /// The raw key bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// RFC 4648 base32, upper case, no padding: the form authenticator apps
    /// expect. Returned in a zeroizing string because it *is* the secret.
    #[must_use]
    pub fn to_base32(&self) -> Zeroizing<String> {
        let encoding = &data_encoding::BASE32_NOPAD;
        // Exact capacity up front so `encode_append` never reallocates and
        // leaves no stray, un-zeroized copy behind.
        let mut out = Zeroizing::new(String::with_capacity(encoding.encode_len(self.bytes.len())));
        encoding.encode_append(&self.bytes, &mut out);
        out
    }

    /// Parses unpadded RFC 4648 base32. Upper and lower case are accepted;
    /// padding, whitespace, non-zero trailing bits and the empty string are
    /// not (strict, so that a stored secret has exactly one spelling).
    #[must_use]
    pub fn from_base32(input: &str) -> Option<Self> {
        if input.is_empty() {
            return None;
        }
        let mut upper = Zeroizing::new(Vec::with_capacity(input.len()));
        upper.extend(input.bytes().map(|b| b.to_ascii_uppercase()));
        let encoding = &data_encoding::BASE32_NOPAD;
        let len = encoding.decode_len(upper.len()).ok()?;
        // Decode into a zeroizing buffer ourselves: `Encoding::decode` would
        // drop its partially filled Vec un-zeroized on error.
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        let written = encoding.decode_mut(&upper, &mut bytes).ok()?;
        bytes.truncate(written);
        Some(Self { bytes })
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A syntactically valid 6-digit code as typed by the user. Holds no secret
/// of the account, but it is a live credential for ~30 s, so it is redacted
/// and zeroized like one.
pub struct TotpCode {
    value: u32,
}

impl TotpCode {
    /// Number of digits a user types.
    pub const DIGITS: u32 = 6;

    /// Trims, removes inner ASCII spaces and dashes (people copy `123 456`
    /// or `123-456`), then requires exactly six ASCII digits. Non-ASCII
    /// digits (e.g. full-width) are refused rather than folded.
    ///
    /// # Errors
    /// [`CodeFormatError::Empty`] when nothing but separators was given,
    /// [`CodeFormatError::Malformed`] otherwise.
    pub fn parse(input: &str) -> Result<Self, CodeFormatError> {
        let mut value: u32 = 0;
        let mut count: u32 = 0;
        for c in input.trim().chars() {
            if c == ' ' || c == '-' {
                continue;
            }
            // Checking the count before accumulating keeps `value` below
            // 10^6, so the arithmetic cannot overflow.
            // `to_digit` accepts only ASCII '0'..='9' for radix 10, so
            // full-width and other Unicode digits are refused here.
            let Some(digit) = c.to_digit(10) else {
                value.zeroize();
                return Err(CodeFormatError::Malformed);
            };
            if count == Self::DIGITS {
                value.zeroize();
                return Err(CodeFormatError::Malformed);
            }
            value = value * 10 + digit;
            count += 1;
        }
        match count {
            0 => Err(CodeFormatError::Empty),
            Self::DIGITS => Ok(Self { value }),
            _ => {
                value.zeroize();
                Err(CodeFormatError::Malformed)
            }
        }
    }

    /// The code as a number (leading zeros are not significant).
    #[must_use]
    pub fn as_u32(&self) -> u32 {
        self.value
    }
}

impl fmt::Debug for TotpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Drop for TotpCode {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

/// TOTP parameters. The defaults are the ones every authenticator app
/// understands; changing them breaks enrolled devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpPolicy {
    /// Seconds per step.
    pub period: u64,
    /// Code length. [`verify`] only accepts [`TotpCode::DIGITS`] (6).
    pub digits: u32,
    /// Steps accepted either side of the current one, for clock drift and
    /// typing time. Verification costs `2 * skew_steps + 1` HMACs.
    pub skew_steps: u32,
}

impl Default for TotpPolicy {
    fn default() -> Self {
        Self {
            period: 30,
            digits: 6,
            skew_steps: 1,
        }
    }
}

/// Checks `code` against the SHA-1 TOTP of `secret` for the steps
/// `T - skew ..= T + skew`, with `T = step_at(now_unix, period)`.
///
/// Returns the matching step, which the caller must store as the new
/// `last_accepted_step`; a step not strictly greater than
/// `last_accepted_step` is refused, so a code cannot be replayed (nor an
/// older code used after a newer one). Every candidate is computed and
/// compared in constant time without early exit, so timing reveals neither
/// whether nor where a match occurred. If several steps match (an HOTP
/// collision), the greatest eligible one is returned.
///
/// Returns `None` if `policy.digits` is not 6 (a 6-digit [`TotpCode`] cannot
/// be compared with longer codes) or for steps before the epoch.
#[must_use]
pub fn verify(
    secret: &TotpSecret,
    code: &TotpCode,
    now_unix: i64,
    policy: &TotpPolicy,
    last_accepted_step: Option<i64>,
) -> Option<i64> {
    if policy.digits != TotpCode::DIGITS {
        return None;
    }
    let current = step_at(now_unix, policy.period);
    let skew = i64::from(policy.skew_steps);
    let mut found = Choice::from(0);
    let mut best: i64 = 0;
    // Ascending order plus "select on hit" leaves the greatest hit in `best`.
    for offset in -skew..=skew {
        // Steps outside the representable / non-negative range are skipped;
        // which ones are skipped depends only on public inputs.
        let Some(step) = current.checked_add(offset) else {
            continue;
        };
        let Ok(counter) = u64::try_from(step) else {
            continue;
        };
        let expected = hotp(secret.as_bytes(), counter, policy.digits, Algorithm::Sha1);
        // The step number and the last accepted step are public; only the
        // code comparison involves secret-derived data.
        let fresh = Choice::from(u8::from(last_accepted_step.is_none_or(|last| step > last)));
        let hit = expected.ct_eq(&code.value) & fresh;
        best = i64::conditional_select(&best, &step, hit);
        found |= hit;
    }
    if bool::from(found) { Some(best) } else { None }
}

/// `otpauth://` URL in Google's Key Uri Format, to be rendered as a QR code:
/// `otpauth://totp/{issuer}:{account}?secret=…&issuer=…&algorithm=SHA1&digits=…&period=…`.
///
/// Issuer and account are percent-encoded keeping only RFC 3986 unreserved
/// characters, so a `:` inside either cannot be confused with the label
/// separator. An empty issuer omits the prefix and the parameter. The result
/// contains the secret: do not log it.
#[must_use]
pub fn otpauth_url(issuer: &str, account_name: &str, secret: &TotpSecret, policy: &TotpPolicy) -> String {
    let secret_b32 = secret.to_base32();
    let issuer_enc = percent_encode(issuer);
    let mut url = String::with_capacity(128);
    url.push_str("otpauth://totp/");
    if !issuer.is_empty() {
        url.push_str(&issuer_enc);
        url.push(':');
    }
    url.push_str(&percent_encode(account_name));
    url.push_str("?secret=");
    url.push_str(&secret_b32);
    if !issuer.is_empty() {
        url.push_str("&issuer=");
        url.push_str(&issuer_enc);
    }
    url.push_str("&algorithm=SHA1&digits=");
    url.push_str(&policy.digits.to_string());
    url.push_str("&period=");
    url.push_str(&policy.period.to_string());
    url
}

/// Percent-encodes every byte of the UTF-8 input except RFC 3986 unreserved
/// characters (`A-Z a-z 0-9 - . _ ~`); hex digits are upper case.
fn percent_encode(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for b in input.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(hex_upper(b >> 4));
            out.push(hex_upper(b & 0x0f));
        }
    }
    out
}

/// Upper-case hex digit for a nibble (`n < 16`).
fn hex_upper(n: u8) -> char {
    char::from(if n < 10 { b'0' + n } else { b'A' + (n - 10) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEED_SHA1: &[u8] = b"12345678901234567890";
    const SEED_SHA256: &[u8] = b"12345678901234567890123456789012";
    const SEED_SHA512: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    /// RFC 6238 Appendix B: (time, algorithm, 8-digit TOTP).
    const RFC6238: [(i64, Algorithm, &str); 18] = [
        (59, Algorithm::Sha1, "94287082"),
        (59, Algorithm::Sha256, "46119246"),
        (59, Algorithm::Sha512, "90693936"),
        (1111111109, Algorithm::Sha1, "07081804"),
        (1111111109, Algorithm::Sha256, "68084774"),
        (1111111109, Algorithm::Sha512, "25091201"),
        (1111111111, Algorithm::Sha1, "14050471"),
        (1111111111, Algorithm::Sha256, "67062674"),
        (1111111111, Algorithm::Sha512, "99943326"),
        (1234567890, Algorithm::Sha1, "89005924"),
        (1234567890, Algorithm::Sha256, "91819424"),
        (1234567890, Algorithm::Sha512, "93441116"),
        (2000000000, Algorithm::Sha1, "69279037"),
        (2000000000, Algorithm::Sha256, "90698825"),
        (2000000000, Algorithm::Sha512, "38618901"),
        (20000000000, Algorithm::Sha1, "65353130"),
        (20000000000, Algorithm::Sha256, "77737706"),
        (20000000000, Algorithm::Sha512, "47863826"),
    ];

    /// The same vectors reduced to 6 digits (last six of the 8-digit value),
    /// written out rather than derived so the `digits` reduction is tested.
    const RFC6238_SIX: [&str; 18] = [
        "287082", "119246", "693936", "081804", "084774", "091201", "050471", "062674", "943326", "005924", "819424",
        "441116", "279037", "698825", "618901", "353130", "737706", "863826",
    ];

    fn seed(algorithm: Algorithm) -> &'static [u8] {
        match algorithm {
            Algorithm::Sha1 => SEED_SHA1,
            Algorithm::Sha256 => SEED_SHA256,
            Algorithm::Sha512 => SEED_SHA512,
        }
    }

    fn totp(key: &[u8], time: i64, digits: u32, algorithm: Algorithm) -> u32 {
        let step = u64::try_from(step_at(time, 30)).unwrap();
        hotp(key, step, digits, algorithm)
    }

    #[test]
    fn rfc6238_appendix_b_eight_digits() {
        for (time, algorithm, expected) in RFC6238 {
            let got = format!("{:08}", totp(seed(algorithm), time, 8, algorithm));
            assert_eq!(got, expected, "time {time} {algorithm:?}");
        }
    }

    #[test]
    fn rfc6238_appendix_b_six_digits() {
        for ((time, algorithm, eight), six) in RFC6238.into_iter().zip(RFC6238_SIX) {
            assert_eq!(&eight[2..], six, "table consistency");
            let got = format!("{:06}", totp(seed(algorithm), time, 6, algorithm));
            assert_eq!(got, six, "time {time} {algorithm:?}");
        }
    }

    #[test]
    fn rfc6238_sha1_vectors_verify_through_public_api() {
        let secret = TotpSecret::from_bytes(SEED_SHA1.to_vec());
        let policy = TotpPolicy {
            skew_steps: 0,
            ..TotpPolicy::default()
        };
        for ((time, algorithm, _), six) in RFC6238.into_iter().zip(RFC6238_SIX) {
            if algorithm != Algorithm::Sha1 {
                continue;
            }
            let code = TotpCode::parse(six).unwrap();
            assert_eq!(
                verify(&secret, &code, time, &policy, None),
                Some(step_at(time, 30)),
                "time {time}"
            );
        }
    }

    #[test]
    fn rfc4226_appendix_d() {
        let expected = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (counter, want) in (0u64..).zip(expected) {
            assert_eq!(hotp(SEED_SHA1, counter, 6, Algorithm::Sha1), want, "count {counter}");
        }
    }

    #[test]
    fn hotp_edge_parameters_do_not_panic() {
        assert_eq!(hotp(b"", 0, 0, Algorithm::Sha1), 0);
        // Long keys are hashed by HMAC, not rejected.
        let long_key = [7u8; 500];
        assert!(hotp(&long_key, u64::MAX, 6, Algorithm::Sha512) < 1_000_000);
        // digits >= 10: the 31-bit truncated value itself.
        let full = hotp(SEED_SHA1, 0, 10, Algorithm::Sha1);
        assert!(full < 1 << 31);
        assert_eq!(full % 1_000_000, 755224);
        assert_eq!(hotp(SEED_SHA1, 0, u32::MAX, Algorithm::Sha1), full);
    }

    #[test]
    fn step_at_floors_and_never_panics() {
        assert_eq!(step_at(0, 30), 0);
        assert_eq!(step_at(29, 30), 0);
        assert_eq!(step_at(30, 30), 1);
        assert_eq!(step_at(59, 30), 1);
        assert_eq!(step_at(-1, 30), -1);
        assert_eq!(step_at(-30, 30), -1);
        assert_eq!(step_at(-31, 30), -2);
        assert_eq!(step_at(1111111111, 30), 37037037);
        assert_eq!(step_at(i64::MIN, 30), i64::MIN.div_euclid(30));
        assert_eq!(step_at(i64::MAX, 0), i64::MAX);
        // floor(-2^63 / (2^63 - 1)) = -2 once the period saturates.
        assert_eq!(step_at(i64::MIN, u64::MAX), -2);
        assert_eq!(step_at(10, u64::MAX), 0);
    }

    const NOW: i64 = 1111111111; // step 37037037, 1 s into the step

    fn code_at(secret: &TotpSecret, time: i64) -> TotpCode {
        TotpCode::parse(&format!("{:06}", totp(secret.as_bytes(), time, 6, Algorithm::Sha1))).unwrap()
    }

    #[test]
    fn skew_window_is_one_step_each_side() {
        let secret = TotpSecret::from_bytes(SEED_SHA1.to_vec());
        let policy = TotpPolicy::default();
        let t = step_at(NOW, 30);
        // Sanity: the five codes around NOW are distinct, so a match below
        // cannot be an accidental collision with a neighbouring step.
        let codes: Vec<u32> = (-2..=2).map(|k| code_at(&secret, NOW + 30 * k).as_u32()).collect();
        for (i, a) in codes.iter().enumerate() {
            assert!(!codes[i + 1..].contains(a));
        }

        let at = |time| verify(&secret, &code_at(&secret, time), NOW, &policy, None);
        assert_eq!(at(NOW), Some(t));
        assert_eq!(at(NOW - 30), Some(t - 1));
        assert_eq!(at(NOW + 30), Some(t + 1));
        assert_eq!(at(NOW - 60), None);
        assert_eq!(at(NOW + 60), None);

        // Step boundaries: 1111111109 is in step 37037036, so its code is
        // T-1 relative to NOW.
        assert_eq!(at(1111111109), Some(t - 1));
        // Explicit time for T+1: 1111111140 (first second of 37037038).
        assert_eq!(at(1111111140), Some(t + 1));
        assert_eq!(at(1111111170), None);
        assert_eq!(at(1111111049), None);
    }

    #[test]
    fn zero_skew_accepts_only_current_step() {
        let secret = TotpSecret::from_bytes(SEED_SHA1.to_vec());
        let policy = TotpPolicy {
            skew_steps: 0,
            ..TotpPolicy::default()
        };
        let t = step_at(NOW, 30);
        assert_eq!(verify(&secret, &code_at(&secret, NOW), NOW, &policy, None), Some(t));
        assert_eq!(verify(&secret, &code_at(&secret, NOW - 30), NOW, &policy, None), None);
        assert_eq!(verify(&secret, &code_at(&secret, NOW + 30), NOW, &policy, None), None);
    }

    #[test]
    fn replay_protection() {
        let secret = TotpSecret::from_bytes(SEED_SHA1.to_vec());
        let policy = TotpPolicy::default();
        let t = step_at(NOW, 30);
        let current = code_at(&secret, NOW);
        let earlier = code_at(&secret, NOW - 30);
        let later = code_at(&secret, NOW + 30);

        assert_eq!(verify(&secret, &current, NOW, &policy, Some(t - 1)), Some(t));
        // Same step again: refused.
        assert_eq!(verify(&secret, &current, NOW, &policy, Some(t)), None);
        // Earlier step after a later one was accepted: refused.
        assert_eq!(verify(&secret, &earlier, NOW, &policy, Some(t)), None);
        // Later step: accepted.
        assert_eq!(verify(&secret, &later, NOW, &policy, Some(t)), Some(t + 1));
        assert_eq!(verify(&secret, &later, NOW, &policy, Some(t + 1)), None);
    }

    #[test]
    fn verify_rejects_wrong_code_digits_policy_and_pre_epoch() {
        let secret = TotpSecret::from_bytes(SEED_SHA1.to_vec());
        let policy = TotpPolicy::default();
        let good = code_at(&secret, NOW);
        let wrong = TotpCode::parse(&format!("{:06}", (good.as_u32() + 1) % 1_000_000)).unwrap();
        assert_eq!(verify(&secret, &wrong, NOW, &policy, None), None);
        let eight = TotpPolicy {
            digits: 8,
            ..TotpPolicy::default()
        };
        assert_eq!(verify(&secret, &good, NOW, &eight, None), None);
        // Before the epoch every candidate step is negative: no match, no
        // panic, also at the extremes.
        assert_eq!(verify(&secret, &good, -100, &policy, None), None);
        assert_eq!(verify(&secret, &good, i64::MIN, &policy, None), None);
        let one_second = TotpPolicy {
            period: 1,
            skew_steps: 3,
            ..TotpPolicy::default()
        };
        assert_eq!(verify(&secret, &good, i64::MAX, &one_second, None), None);
    }

    #[test]
    fn parse_accepts_common_spellings() {
        assert_eq!(TotpCode::parse("123456").unwrap().as_u32(), 123456);
        assert_eq!(TotpCode::parse(" 123 456 ").unwrap().as_u32(), 123456);
        assert_eq!(TotpCode::parse("123-456").unwrap().as_u32(), 123456);
        assert_eq!(TotpCode::parse("\t012345\n").unwrap().as_u32(), 12345);
        assert_eq!(TotpCode::parse("000000").unwrap().as_u32(), 0);
    }

    #[test]
    fn parse_rejects_bad_input() {
        for bad in ["12345", "1234567", "12a456", "１２３４５６", "12\t3456", "+12345"] {
            assert_eq!(
                TotpCode::parse(bad).map(|c| c.as_u32()),
                Err(CodeFormatError::Malformed),
                "{bad:?}"
            );
        }
        for empty in ["", "   ", " - - "] {
            assert_eq!(
                TotpCode::parse(empty).map(|c| c.as_u32()),
                Err(CodeFormatError::Empty),
                "{empty:?}"
            );
        }
    }

    #[test]
    fn otpauth_url_exact() {
        let secret = TotpSecret::from_bytes(SEED_SHA1.to_vec());
        let url = otpauth_url("Tessera", "alice@example.com", &secret, &TotpPolicy::default());
        assert_eq!(
            url,
            "otpauth://totp/Tessera:alice%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Tessera&algorithm=SHA1&digits=6&period=30"
        );
        let url = otpauth_url(
            "ACME Co: Ops",
            "bob smith:ops~1",
            &secret,
            &TotpPolicy {
                period: 60,
                digits: 6,
                skew_steps: 1,
            },
        );
        assert_eq!(
            url,
            "otpauth://totp/ACME%20Co%3A%20Ops:bob%20smith%3Aops~1\
             ?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=ACME%20Co%3A%20Ops\
             &algorithm=SHA1&digits=6&period=60"
        );
        assert_eq!(
            otpauth_url("", "é", &secret, &TotpPolicy::default()),
            "otpauth://totp/%C3%A9?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn base32_known_value_and_strictness() {
        let secret = TotpSecret::from_bytes(SEED_SHA1.to_vec());
        assert_eq!(&*secret.to_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let lower = TotpSecret::from_base32("gezdgnbvgy3tqojqgezdgnbvgy3tqojq").unwrap();
        assert_eq!(lower.as_bytes(), SEED_SHA1);
        assert!(TotpSecret::from_base32("").is_none());
        assert!(TotpSecret::from_base32("GEZDGNBV GY3TQOJQ").is_none());
        assert!(TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ=").is_none());
        assert!(TotpSecret::from_base32("GEZDGNBVGY3TQOJ1").is_none());
        // "MZ" has non-zero trailing bits ("MY" is the canonical "f").
        assert!(TotpSecret::from_base32("MZ").is_none());
        assert_eq!(TotpSecret::from_base32("MY").unwrap().as_bytes(), b"f");
    }

    #[test]
    fn generate_makes_160_bit_secrets() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = TotpSecret::generate(&mut rng);
        let b = TotpSecret::generate(&mut rng);
        assert_eq!(a.as_bytes().len(), 20);
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_eq!(a.to_base32().len(), 32);
        let os = TotpSecret::generate_os().unwrap();
        assert_eq!(os.as_bytes().len(), 20);
        let thread = TotpSecret::generate(&mut rand::rng());
        assert_ne!(os.as_bytes(), thread.as_bytes());
    }

    #[test]
    fn debug_is_redacted() {
        let secret = TotpSecret::from_bytes(SEED_SHA1.to_vec());
        let code = TotpCode::parse("123456").unwrap();
        for shown in [format!("{secret:?}"), format!("{code:?}"), format!("{secret:#?}")] {
            assert_eq!(shown, "[redacted]");
            assert!(!shown.chars().any(|c| c.is_ascii_digit()));
        }
    }

    #[test]
    fn code_format_error_display() {
        assert_eq!(CodeFormatError::Empty.to_string(), "code is empty");
        assert_eq!(CodeFormatError::Malformed.to_string(), "code is malformed");
    }

    proptest! {
        #[test]
        fn base32_round_trip(bytes in proptest::collection::vec(any::<u8>(), 1..80)) {
            let secret = TotpSecret::from_bytes(bytes.clone());
            let encoded = secret.to_base32();
            prop_assert!(!encoded.contains('='));
            prop_assert!(encoded.chars().all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)));
            let back = TotpSecret::from_base32(&encoded).unwrap();
            prop_assert_eq!(back.as_bytes(), &bytes[..]);
            let back_lower = TotpSecret::from_base32(&encoded.to_ascii_lowercase()).unwrap();
            prop_assert_eq!(back_lower.as_bytes(), &bytes[..]);
        }

        #[test]
        fn parse_round_trips_any_six_digit_value(n in 0u32..1_000_000) {
            prop_assert_eq!(TotpCode::parse(&format!("{n:06}")).unwrap().as_u32(), n);
            let spaced = format!(" {:03} {:03} ", n / 1000, n % 1000);
            prop_assert_eq!(TotpCode::parse(&spaced).unwrap().as_u32(), n);
        }
    }
}
