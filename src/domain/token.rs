//! Bearer tokens: session tokens (`tsr_...`) and second-factor challenge tokens (`tsm_...`).
//!
//! A token is 256 random bits, base64url without padding, behind a fixed prefix that says what
//! it is (and lets secret scanners find leaked ones). Only its SHA-256 ([`TokenHash`]) is stored,
//! so a copy of the database does not hold usable tokens. Lookups go by hash through a unique
//! index: comparing hashes of a 256-bit secret leaks nothing an attacker can use, which is why
//! no constant-time comparison is needed at that step.

use data_encoding::{BASE64URL_NOPAD, HEXLOWER};
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::Zeroizing;

/// What a token is for; each kind has its own prefix and can never be used as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Session,
    MfaChallenge,
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Session => "tsr_",
            TokenKind::MfaChallenge => "tsm_",
        }
    }
}

const RANDOM_BYTES: usize = 32;
/// Length of the base64url form of 32 bytes without padding.
const ENCODED_LEN: usize = 43;

/// The 6-bit value of a base64url character (RFC 4648 section 5), `None` for any other byte.
fn base64url_value(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// A token in the clear: exists only between creation and the response that hands it out, or
/// between parsing a request header and hashing it.
pub struct PlainToken(Zeroizing<String>);

/// Why a string is not a token of the expected kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid token")]
pub struct TokenFormatError;

impl PlainToken {
    /// Makes a new random token of `kind` from the thread-local CSPRNG (seeded by the OS).
    pub fn generate(kind: TokenKind) -> Self {
        let mut bytes = Zeroizing::new([0u8; RANDOM_BYTES]);
        rand::fill(&mut bytes[..]);
        Self(Zeroizing::new(format!(
            "{}{}",
            kind.prefix(),
            BASE64URL_NOPAD.encode(&bytes[..])
        )))
    }

    /// Accepts exactly `prefix + 43 base64url characters` that decode to 32 bytes.
    pub fn parse(kind: TokenKind, input: &str) -> Result<Self, TokenFormatError> {
        Self::check(kind, input)?;
        Ok(Self(Zeroizing::new(input.to_owned())))
    }

    /// [`PlainToken::parse`] then [`PlainToken::hash`], without copying the token: what a
    /// lookup by token needs (every authenticated request).
    pub fn parse_hash(kind: TokenKind, input: &str) -> Result<TokenHash, TokenFormatError> {
        Self::check(kind, input)?;
        Ok(TokenHash::of(input))
    }

    fn check(kind: TokenKind, input: &str) -> Result<(), TokenFormatError> {
        let body = input.strip_prefix(kind.prefix()).ok_or(TokenFormatError)?;
        if body.len() != ENCODED_LEN {
            return Err(TokenFormatError);
        }
        // Checked without decoding (a token is parsed on every authenticated request): 43
        // characters of the base64url alphabet are 258 bits, of which the last character's two
        // lowest must be zero for the text to be the one encoding of 32 bytes, as the decoder
        // requires (a test holds the two equal).
        let (last, rest) = body.as_bytes().split_last().ok_or(TokenFormatError)?;
        let canonical = rest.iter().all(|&byte| base64url_value(byte).is_some())
            && base64url_value(*last).is_some_and(|value| value & 0b11 == 0);
        if canonical { Ok(()) } else { Err(TokenFormatError) }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for PlainToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainToken([redacted])")
    }
}

/// SHA-256 of a token: what the store keeps and looks up by.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// SHA-256 of a token's whole text.
    fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Debug for TokenHash {
    // The first bytes of a hash identify a session in logs without revealing the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}..)", HEXLOWER.encode(&self.0[..4]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What `parse` accepted before it stopped decoding: 43 characters that decode to 32 bytes.
    fn decodes_to_32_bytes(body: &str) -> bool {
        body.len() == ENCODED_LEN
            && BASE64URL_NOPAD
                .decode(body.as_bytes())
                .is_ok_and(|bytes| bytes.len() == RANDOM_BYTES)
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_what_decodes_to_32_bytes(
            body in "[A-Za-z0-9_+/=. -]{43}|[A-Za-z0-9_-]{42}[A-Za-z0-9_-]|[A-Za-z0-9_-]{40,45}"
        ) {
            let input = format!("tsr_{body}");
            prop_assert_eq!(
                PlainToken::parse(TokenKind::Session, &input).is_ok(),
                decodes_to_32_bytes(&body),
                "{}", body
            );
        }
    }

    #[test]
    fn every_last_character_is_accepted_exactly_when_it_decodes() {
        let stem = "A".repeat(ENCODED_LEN - 1);
        for byte in 0u8..=255 {
            let Ok(last) = std::str::from_utf8(&[byte]).map(str::to_owned) else {
                continue;
            };
            let body = format!("{stem}{last}");
            assert_eq!(
                PlainToken::parse(TokenKind::Session, &format!("tsr_{body}")).is_ok(),
                decodes_to_32_bytes(&body),
                "{byte}"
            );
        }
    }

    #[test]
    fn generated_tokens_have_prefix_length_and_parse_back() {
        let token = PlainToken::generate(TokenKind::Session);
        assert!(token.expose().starts_with("tsr_"));
        assert_eq!(token.expose().len(), 4 + ENCODED_LEN);
        let parsed = PlainToken::parse(TokenKind::Session, token.expose()).unwrap();
        assert_eq!(parsed.hash(), token.hash());
        assert_eq!(
            PlainToken::parse_hash(TokenKind::Session, token.expose()),
            Ok(token.hash())
        );
        assert_ne!(PlainToken::generate(TokenKind::Session).hash(), token.hash());
    }

    #[test]
    fn a_token_of_one_kind_is_not_a_token_of_the_other() {
        let challenge = PlainToken::generate(TokenKind::MfaChallenge);
        assert_eq!(
            PlainToken::parse(TokenKind::Session, challenge.expose()).err(),
            Some(TokenFormatError)
        );
    }

    #[test]
    fn hash_is_sha256_of_the_whole_token() {
        let token = PlainToken::parse(TokenKind::Session, &format!("tsr_{}", "A".repeat(43))).unwrap();
        let expected: [u8; 32] = Sha256::digest(format!("tsr_{}", "A".repeat(43)).as_bytes()).into();
        assert_eq!(token.hash().0, expected);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let token = PlainToken::generate(TokenKind::Session);
        let body = &token.expose()[4..];
        assert!(!format!("{token:?}").contains(body));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_only_accepts_the_exact_shape(input in "\\PC{0,80}") {
            let hashed = PlainToken::parse_hash(TokenKind::Session, &input);
            if let Ok(token) = PlainToken::parse(TokenKind::Session, &input) {
                prop_assert!(input.starts_with("tsr_"));
                prop_assert_eq!(input.len(), 47);
                prop_assert_eq!(token.expose(), input.as_str());
                prop_assert_eq!(hashed.ok(), Some(token.hash()));
            } else {
                prop_assert!(hashed.is_err());
            }
        }

        #[test]
        fn any_32_bytes_make_a_parseable_token(bytes in proptest::array::uniform32(any::<u8>())) {
            let text = format!("tsr_{}", BASE64URL_NOPAD.encode(&bytes));
            prop_assert!(PlainToken::parse(TokenKind::Session, &text).is_ok());
        }
    }
}
