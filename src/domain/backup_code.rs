//! Single-use backup (recovery) codes: their alphabet and shape, generation
//! of a set, normalisation of what a user types, and argon2id hashing for
//! storage.
//!
//! This module must not do IO, read the clock, store anything or mark codes
//! as used: the caller persists the salt and the hashes, consumes an attempt
//! by deleting the row whose hash equals the attempt's hash (one atomic
//! statement; comparing argon2 outputs of 65-bit secrets through an index
//! reveals nothing usable), and rate-limits attempts. Plain codes
//! exist only inside [`BackupCode`] (redacted `Debug`, zeroized on drop) and
//! are shown to the user once.
//!
//! Hashing uses ONE random salt per generated set rather than one per code,
//! so checking an attempt costs exactly one argon2id evaluation whatever the
//! number of codes. That is safe because each code already carries 65 bits
//! of entropy; the salt only has to stop precomputation across accounts.

// Panics in an authentication path are a denial-of-service vector; keep the
// production code free of them (tests may unwrap).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

use core::fmt;

use argon2::{Argon2, Params};
use rand::{CryptoRng, TryRng, rngs::SysError, rngs::SysRng};
use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

use super::totp::CodeFormatError;

/// The 32 symbols of a code: lower-case letters and digits without the
/// easily confused `0`, `o`, `1` and `l`. 32 symbols = 5 bits each.
pub const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
/// Symbols per code: 13 × 5 = 65 bits.
pub const CODE_LEN: usize = 13;
/// Bytes of the per-set salt.
pub const SALT_LEN: usize = 16;
/// Bytes of a stored hash.
pub const HASH_LEN: usize = 32;
/// argon2id memory cost in KiB (OWASP's 19 MiB / t=2 / p=1 recommendation).
pub const ARGON2_M_COST_KIB: u32 = 19_456;
/// argon2id passes.
pub const ARGON2_T_COST: u32 = 2;
/// argon2id lanes.
pub const ARGON2_P_COST: u32 = 1;

/// How often generation redraws a code that duplicates one already in the
/// set. An honest 65-bit RNG essentially never needs a second draw, so
/// running out means the RNG is broken; we report that instead of looping.
const MAX_DRAWS_PER_CODE: usize = 8;

/// Generation or hashing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupCodeError {
    /// The operating system RNG failed.
    Rng(SysError),
    /// The RNG kept repeating itself, so distinct codes could not be drawn.
    DegenerateRng,
    /// argon2 rejected its parameters or inputs (not expected with the
    /// fixed parameters used here).
    Hash(argon2::Error),
}

impl fmt::Display for BackupCodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rng(e) => write!(f, "operating system RNG failed: {e}"),
            Self::DegenerateRng => f.write_str("RNG produced repeated backup codes"),
            Self::Hash(e) => write!(f, "backup code hashing failed: {e}"),
        }
    }
}

impl std::error::Error for BackupCodeError {}

/// A backup code in canonical form: exactly [`CODE_LEN`] symbols from
/// [`ALPHABET`], no separators. This is what gets hashed. Equality is
/// constant time; `Debug` is redacted; zeroized on drop.
#[derive(Clone)]
pub struct NormalizedBackupCode {
    symbols: [u8; CODE_LEN],
}

impl NormalizedBackupCode {
    /// The canonical ASCII bytes (input to the hash).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; CODE_LEN] {
        &self.symbols
    }

    /// The display form `xxxx-xxxx-xxxxx`, in a zeroizing string.
    #[must_use]
    pub fn to_dashed(&self) -> Zeroizing<String> {
        // Exact capacity: no reallocation, so no un-zeroized copies.
        let mut out = Zeroizing::new(String::with_capacity(CODE_LEN + 2));
        for (i, &b) in self.symbols.iter().enumerate() {
            if i == 4 || i == 8 {
                out.push('-');
            }
            out.push(char::from(b));
        }
        out
    }
}

impl ConstantTimeEq for NormalizedBackupCode {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.symbols[..].ct_eq(&other.symbols[..])
    }
}

impl PartialEq for NormalizedBackupCode {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for NormalizedBackupCode {}

impl fmt::Debug for NormalizedBackupCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Drop for NormalizedBackupCode {
    fn drop(&mut self) {
        self.symbols.zeroize();
    }
}

/// A freshly generated plain backup code, to be shown to the user once.
/// `Debug` is redacted; zeroized on drop (through its inner value).
pub struct BackupCode {
    code: NormalizedBackupCode,
}

impl BackupCode {
    /// The code as shown to the user: `xxxx-xxxx-xxxxx`.
    #[must_use]
    pub fn expose(&self) -> Zeroizing<String> {
        self.code.to_dashed()
    }

    /// The canonical form, e.g. for [`hash_code`].
    #[must_use]
    pub fn normalized(&self) -> &NormalizedBackupCode {
        &self.code
    }
}

impl fmt::Debug for BackupCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Canonicalises user input: removes all Unicode whitespace and `-`,
/// lower-cases ASCII, then requires exactly [`CODE_LEN`] symbols from
/// [`ALPHABET`]. Excluded look-alikes (`0 o 1 l`) are rejected rather than
/// guessed at, because a guess would silently turn a typo into a wasted
/// attempt against a different code.
///
/// # Errors
/// [`CodeFormatError::Empty`] when only separators were given,
/// [`CodeFormatError::Malformed`] otherwise.
pub fn normalize(input: &str) -> Result<NormalizedBackupCode, CodeFormatError> {
    let mut symbols = Zeroizing::new([0u8; CODE_LEN]);
    let mut count = 0usize;
    for c in input.chars() {
        if c.is_whitespace() || c == '-' {
            continue;
        }
        // Non-ASCII stays non-ASCII after `to_ascii_lowercase` and fails the
        // alphabet check, so no Unicode case folding is needed.
        let Some(b) = u8::try_from(c.to_ascii_lowercase())
            .ok()
            .filter(|b| ALPHABET.contains(b))
        else {
            return Err(CodeFormatError::Malformed);
        };
        let Some(slot) = symbols.get_mut(count) else {
            return Err(CodeFormatError::Malformed);
        };
        *slot = b;
        count += 1;
    }
    match count {
        0 => Err(CodeFormatError::Empty),
        CODE_LEN => Ok(NormalizedBackupCode { symbols: *symbols }),
        _ => Err(CodeFormatError::Malformed),
    }
}

/// A freshly generated set of distinct codes and the salt all of them are
/// hashed with. Store `salt` and [`BackupCodeSet::hashes`]; show `codes`
/// once and drop them.
#[derive(Debug)]
pub struct BackupCodeSet {
    /// Random salt shared by every code of the set (not secret; store it).
    pub salt: [u8; SALT_LEN],
    /// The distinct plain codes, to be shown once.
    pub codes: Vec<BackupCode>,
}

impl BackupCodeSet {
    /// Draws a salt and `count` distinct codes from a cryptographically
    /// secure RNG (e.g. `rand::rng()`). Meant for small sets (the
    /// distinctness check is quadratic).
    ///
    /// # Errors
    /// [`BackupCodeError::DegenerateRng`] if the RNG keeps repeating itself.
    pub fn generate<R: CryptoRng + ?Sized>(count: usize, rng: &mut R) -> Result<Self, BackupCodeError> {
        Self::generate_with(count, |buf| {
            rng.fill_bytes(buf);
            Ok(())
        })
    }

    /// As [`BackupCodeSet::generate`], reading the operating system RNG.
    ///
    /// # Errors
    /// [`BackupCodeError::Rng`] if the OS RNG fails,
    /// [`BackupCodeError::DegenerateRng`] as for `generate`.
    pub fn generate_os(count: usize) -> Result<Self, BackupCodeError> {
        Self::generate_with(count, |buf| SysRng.try_fill_bytes(buf).map_err(BackupCodeError::Rng))
    }

    fn generate_with(
        count: usize,
        mut fill: impl FnMut(&mut [u8]) -> Result<(), BackupCodeError>,
    ) -> Result<Self, BackupCodeError> {
        let mut salt = [0u8; SALT_LEN];
        fill(&mut salt)?;
        let mut codes: Vec<BackupCode> = Vec::new();
        while codes.len() < count {
            let mut draws = 0;
            let code = loop {
                if draws == MAX_DRAWS_PER_CODE {
                    return Err(BackupCodeError::DegenerateRng);
                }
                draws += 1;
                let candidate = random_code(&mut fill)?;
                // Generation sees no attacker input, so a plain comparison
                // is fine here.
                if !codes.iter().any(|c| c.code.symbols == candidate.symbols) {
                    break candidate;
                }
            };
            codes.push(BackupCode { code });
        }
        Ok(Self { salt, codes })
    }

    /// argon2id hashes of the codes, in the same order, all with
    /// `self.salt`. Costs one argon2id evaluation (~20 ms optimised) per code.
    ///
    /// # Errors
    /// [`BackupCodeError::Hash`] if argon2 fails (not expected).
    pub fn hashes(&self) -> Result<Vec<[u8; HASH_LEN]>, BackupCodeError> {
        let hasher = hasher()?;
        self.codes
            .iter()
            .map(|c| hash_with(&hasher, &c.code, &self.salt))
            .collect()
    }
}

/// One code from [`CODE_LEN`] random bytes, each reduced to 5 bits. 256 is
/// a multiple of 32, so the masking is unbiased.
fn random_code(
    fill: &mut impl FnMut(&mut [u8]) -> Result<(), BackupCodeError>,
) -> Result<NormalizedBackupCode, BackupCodeError> {
    let mut random = Zeroizing::new([0u8; CODE_LEN]);
    fill(&mut random[..])?;
    let mut symbols = [0u8; CODE_LEN];
    for (slot, &r) in symbols.iter_mut().zip(random.iter()) {
        // `r & 0x1f` < 32 == ALPHABET.len(): the index is always in bounds.
        #[allow(clippy::indexing_slicing)]
        {
            *slot = ALPHABET[usize::from(r & 0x1f)];
        }
    }
    Ok(NormalizedBackupCode { symbols })
}

/// argon2id v1.3 with the module's fixed cost parameters.
fn hasher() -> Result<Argon2<'static>, BackupCodeError> {
    let params =
        Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, Some(HASH_LEN)).map_err(BackupCodeError::Hash)?;
    Ok(Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params))
}

fn hash_with(
    hasher: &Argon2<'_>,
    code: &NormalizedBackupCode,
    salt: &[u8; SALT_LEN],
) -> Result<[u8; HASH_LEN], BackupCodeError> {
    let mut out = [0u8; HASH_LEN];
    hasher
        .hash_password_into(code.as_bytes(), salt, &mut out)
        .map_err(BackupCodeError::Hash)?;
    Ok(out)
}

/// argon2id (m = 19456 KiB, t = 2, p = 1, 32-byte output) of the canonical
/// code with the set's salt. Hash an attempt once with this, then look the
/// hash up among the stored ones.
///
/// # Errors
/// [`BackupCodeError::Hash`] if argon2 fails (not expected).
pub fn hash_code(code: &NormalizedBackupCode, salt: &[u8; SALT_LEN]) -> Result<[u8; HASH_LEN], BackupCodeError> {
    hash_with(&hasher()?, code, salt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::convert::Infallible;
    use proptest::prelude::*;
    use rand::{SeedableRng, TryCryptoRng, rngs::StdRng};

    fn in_alphabet(s: &str) -> bool {
        s.bytes().all(|b| ALPHABET.contains(&b))
    }

    /// `^[alphabet]{4}-[alphabet]{4}-[alphabet]{5}$`
    fn has_display_shape(s: &str) -> bool {
        let parts: Vec<&str> = s.split('-').collect();
        parts.len() == 3
            && parts[0].len() == 4
            && parts[1].len() == 4
            && parts[2].len() == 5
            && parts.iter().all(|p| in_alphabet(p))
    }

    #[test]
    fn alphabet_is_32_distinct_unambiguous_symbols() {
        assert_eq!(ALPHABET.len(), 32);
        let mut seen = std::collections::BTreeSet::new();
        for &b in ALPHABET {
            assert!(b.is_ascii_lowercase() || b.is_ascii_digit());
            assert!(seen.insert(b), "duplicate {}", char::from(b));
        }
        for excluded in [b'0', b'o', b'1', b'l'] {
            assert!(!ALPHABET.contains(&excluded));
        }
    }

    #[test]
    fn generated_set_has_ten_distinct_well_formed_codes() {
        let mut rng = StdRng::seed_from_u64(1);
        let set = BackupCodeSet::generate(10, &mut rng).unwrap();
        assert_eq!(set.codes.len(), 10);
        let shown: std::collections::BTreeSet<String> = set.codes.iter().map(|c| c.expose().to_string()).collect();
        assert_eq!(shown.len(), 10);
        for code in &set.codes {
            assert!(has_display_shape(&code.expose()), "{}", &*code.expose());
            assert_eq!(normalize(&code.expose()).unwrap(), *code.normalized());
        }
        let os = BackupCodeSet::generate_os(10).unwrap();
        assert_eq!(os.codes.len(), 10);
        assert_ne!(os.salt, set.salt);
        assert!(BackupCodeSet::generate(0, &mut rand::rng()).unwrap().codes.is_empty());
    }

    /// Always returns zero bytes: a broken "crypto" RNG.
    struct ZeroRng;

    impl TryRng for ZeroRng {
        type Error = Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Infallible> {
            Ok(0)
        }
        fn try_next_u64(&mut self) -> Result<u64, Infallible> {
            Ok(0)
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
            dst.fill(0);
            Ok(())
        }
    }

    impl TryCryptoRng for ZeroRng {}

    #[test]
    fn degenerate_rng_is_reported_not_looped_on() {
        let one = BackupCodeSet::generate(1, &mut ZeroRng).unwrap();
        assert_eq!(&*one.codes[0].expose(), "aaaa-aaaa-aaaaa");
        assert_eq!(
            BackupCodeSet::generate(2, &mut ZeroRng).map(|s| s.codes.len()),
            Err(BackupCodeError::DegenerateRng)
        );
    }

    #[test]
    fn normalize_accepts_case_dashes_and_whitespace() {
        let canonical = normalize("abcd-efgh-ijkmn").unwrap();
        assert_eq!(&*canonical.to_dashed(), "abcd-efgh-ijkmn");
        assert_eq!(canonical.as_bytes(), b"abcdefghijkmn");
        for variant in [
            "abcdefghijkmn",
            "ABCD-EFGH-IJKMN",
            "AbCd-eFgH-iJkMn",
            "  abcd efgh ijkmn  ",
            "\tabcd-efgh-ijkmn\n",
            "ab cd\t-ef gh-ij km n",
            "abcd--efgh---ijkmn",
            "\u{00a0}abcd\u{2003}efgh\u{3000}ijkmn",
        ] {
            assert_eq!(normalize(variant).unwrap(), canonical, "{variant:?}");
            assert!(normalize(variant).is_ok());
        }
    }

    #[test]
    fn normalize_rejects_bad_input() {
        for bad in [
            "abcd-efgh-ijkm",   // 12
            "abcd-efgh-ijkmnp", // 14
            "abcd-efgh-ijk0n",  // zero
            "abcd-efgh-ijkon",  // o
            "abcd-efgh-ijk1n",  // one
            "abcd-efgh-ijkln",  // l
            "ABCD-EFGH-IJKLN",  // L lower-cases to excluded l
            "abcd-efgh-ijkmé",  // non-ASCII
            "abcd-efgh-ijkmｎ", // full-width n
            "abcd_efgh_ijkmn",  // wrong separator
            "123456",           // a TOTP code
        ] {
            assert_eq!(normalize(bad), Err(CodeFormatError::Malformed), "{bad:?}");
            assert!(normalize(bad).is_err());
        }
        for empty in ["", "  ", "- -\t-"] {
            assert_eq!(normalize(empty), Err(CodeFormatError::Empty), "{empty:?}");
        }
    }

    #[test]
    fn debug_is_redacted() {
        let set = BackupCodeSet::generate(2, &mut StdRng::seed_from_u64(3)).unwrap();
        let code = &set.codes[0];
        assert_eq!(format!("{code:?}"), "[redacted]");
        assert_eq!(format!("{:?}", code.normalized()), "[redacted]");
        let whole = format!("{set:?}");
        for c in &set.codes {
            assert!(!whole.contains(&*c.expose()));
            assert!(!whole.contains(core::str::from_utf8(c.normalized().as_bytes()).unwrap()));
        }
    }

    #[test]
    fn hash_is_argon2id_with_fixed_params() {
        // Pin the parameters: changing them would invalidate stored hashes.
        let code = normalize("abcd-efgh-ijkmn").unwrap();
        let salt = [7u8; SALT_LEN];
        let mut expected = [0u8; HASH_LEN];
        Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            Params::new(19456, 2, 1, Some(32)).unwrap(),
        )
        .hash_password_into(b"abcdefghijkmn", &salt, &mut expected)
        .unwrap();
        assert_eq!(hash_code(&code, &salt).unwrap(), expected);
    }

    #[test]
    fn error_display() {
        assert_eq!(
            BackupCodeError::DegenerateRng.to_string(),
            "RNG produced repeated backup codes"
        );
        assert!(
            BackupCodeError::Hash(argon2::Error::SaltTooShort)
                .to_string()
                .starts_with("backup code hashing failed")
        );
    }

    /// Separators a user might put before a symbol.
    const SEPARATORS: [&str; 6] = ["", " ", "-", "\t", "  ", " - "];

    /// Re-spells a canonical code with per-symbol case and separators.
    fn mangle(code: &NormalizedBackupCode, upper: &[bool], seps: &[usize], pad: bool) -> String {
        let mut out = String::new();
        if pad {
            out.push_str(" \t");
        }
        for ((&b, &up), &sep) in code.as_bytes().iter().zip(upper).zip(seps) {
            out.push_str(SEPARATORS[sep % SEPARATORS.len()]);
            let c = char::from(b);
            out.push(if up { c.to_ascii_uppercase() } else { c });
        }
        if pad {
            out.push_str("-\n ");
        }
        out
    }

    fn mangling() -> impl Strategy<Value = (Vec<bool>, Vec<usize>, bool)> {
        (
            proptest::collection::vec(any::<bool>(), CODE_LEN),
            proptest::collection::vec(0usize..SEPARATORS.len(), CODE_LEN),
            any::<bool>(),
        )
    }

    proptest! {
        #[test]
        fn any_spelling_normalises_to_the_same_code(
            seed in any::<u64>(),
            (upper, seps, pad) in mangling(),
        ) {
            let set = BackupCodeSet::generate(1, &mut StdRng::seed_from_u64(seed)).unwrap();
            let code = set.codes[0].normalized();
            let typed = mangle(code, &upper, &seps, pad);
            prop_assert_eq!(&normalize(&typed).unwrap(), code);
            prop_assert!(has_display_shape(&set.codes[0].expose()));
        }
    }

    proptest! {
        // argon2id is deliberately slow (~20 ms optimised): few cases.
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn any_spelling_hashes_the_same_and_salt_matters(
            seed in any::<u64>(),
            (upper, seps, pad) in mangling(),
            other_salt in any::<[u8; SALT_LEN]>(),
        ) {
            let set = BackupCodeSet::generate(1, &mut StdRng::seed_from_u64(seed)).unwrap();
            let code = set.codes[0].normalized();
            let typed = normalize(&mangle(code, &upper, &seps, pad)).unwrap();
            let stored = hash_code(code, &set.salt).unwrap();
            prop_assert_eq!(hash_code(&typed, &set.salt).unwrap(), stored);
            prop_assume!(other_salt != set.salt);
            prop_assert_ne!(hash_code(code, &other_salt).unwrap(), stored);
        }

        #[test]
        fn set_member_is_found_and_stranger_is_not(
            seed in any::<u64>(),
            pick in 0usize..3,
            other_seed in any::<u64>(),
        ) {
            let set = BackupCodeSet::generate(3, &mut StdRng::seed_from_u64(seed)).unwrap();
            let stored = set.hashes().unwrap();
            prop_assert_eq!(stored.len(), 3);
            let attempt = normalize(&set.codes[pick].expose()).unwrap();
            let attempt_hash = hash_code(&attempt, &set.salt).unwrap();
            prop_assert_eq!(stored.iter().position(|h| *h == attempt_hash), Some(pick));

            let stranger_set =
                BackupCodeSet::generate(1, &mut StdRng::seed_from_u64(other_seed)).unwrap();
            let stranger = stranger_set.codes[0].normalized();
            prop_assume!(set.codes.iter().all(|c| c.normalized() != stranger));
            let stranger_hash = hash_code(stranger, &set.salt).unwrap();
            prop_assert!(!stored.contains(&stranger_hash));
        }
    }
}
