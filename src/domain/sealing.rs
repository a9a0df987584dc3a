//! The master key and the sealing of secrets at rest (XChaCha20-Poly1305).
//!
//! A sealed value is `version (1) | key id (4) | nonce (24) | ciphertext + tag`. The key id is
//! the first four bytes of SHA-256 of the key, so a later key rotation can tell which key sealed
//! a row. The caller passes associated data (the user id for TOTP secrets): a sealed secret
//! copied onto another user's row does not open. This module reads no files and no environment;
//! loading the key is the configuration's job.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use data_encoding::BASE64;
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;
pub const KEY_LEN: usize = 32;

/// The 256-bit master key. `Debug` shows only its id.
#[derive(Clone)]
pub struct MasterKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    id: [u8; KEY_ID_LEN],
}

/// Why a key could not be loaded. Never contains the key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the secret key is not valid base64")]
    NotBase64,
    #[error("the secret key must be exactly 32 bytes (44 base64 characters), found {0} bytes")]
    WrongSize(usize),
}

/// Why a sealed value did not open. Deliberately says nothing about which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value was sealed with another key")]
    UnknownKey,
    #[error("sealed value failed authentication")]
    Tampered,
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let id_digest = Sha256::digest(bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&id_digest[..KEY_ID_LEN]);
        Self {
            key: Zeroizing::new(bytes),
            id,
        }
    }

    /// Parses the base64 form used by `TESSERA_SECRET_KEY` and the key file (white space around
    /// it is ignored, so a trailing newline in the file is fine).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let decoded = Zeroizing::new(BASE64.decode(text.trim().as_bytes()).map_err(|_| KeyError::NotBase64)?);
        let bytes: [u8; KEY_LEN] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongSize(decoded.len()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// A fresh random key (first start of a new data directory).
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rand::fill(&mut bytes[..]);
        let key = Self::from_bytes(bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        key
    }

    /// The base64 form, for writing the key file once.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(&self.key[..]))
    }

    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        self.id
    }

    /// True when `sealed` names this key as its sealer (it may still fail to open if tampered).
    pub fn sealed_this(&self, sealed: &[u8]) -> bool {
        sealed.len() > HEADER_LEN && sealed[0] == VERSION && sealed[1..1 + KEY_ID_LEN] == self.id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&Key::from(*self.key))
    }

    /// Seals `plaintext`, binding it to `associated_data`.
    pub fn seal(&self, plaintext: &[u8], associated_data: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let mut sealed = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        sealed.push(VERSION);
        sealed.extend_from_slice(&self.id);
        sealed.extend_from_slice(&nonce);
        let aad = [&sealed[..], associated_data].concat();
        // XChaCha20-Poly1305 fails only for messages beyond 256 GiB; our plaintexts are 20 bytes.
        let ciphertext = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Opens a value sealed by [`MasterKey::seal`] with the same associated data.
    pub fn open(&self, sealed: &[u8], associated_data: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if sealed.len() < HEADER_LEN + TAG_LEN || sealed[0] != VERSION {
            return Err(OpenError::Malformed);
        }
        if sealed[1..1 + KEY_ID_LEN] != self.id {
            return Err(OpenError::UnknownKey);
        }
        let (header, ciphertext) = sealed.split_at(HEADER_LEN);
        let nonce = XNonce::try_from(&header[1 + KEY_ID_LEN..]).map_err(|_| OpenError::Malformed)?;
        let aad = [header, associated_data].concat();
        self.cipher()
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Tampered)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(id={})", data_encoding::HEXLOWER.encode(&self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sealed_value_opens_with_same_key_and_associated_data() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"twenty byte secret!!", b"user-1");
        assert_eq!(sealed.len(), HEADER_LEN + 20 + TAG_LEN);
        assert_eq!(&key.open(&sealed, b"user-1").unwrap()[..], b"twenty byte secret!!");
    }

    #[test]
    fn sealed_value_bound_to_another_user_does_not_open() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"secret", b"user-1");
        assert_eq!(key.open(&sealed, b"user-2").err(), Some(OpenError::Tampered));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"secret", b"user-1");
        for index in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[index] ^= 0x01;
            assert!(
                key.open(&tampered, b"user-1").is_err(),
                "bit flip at {index} went unnoticed"
            );
        }
    }

    #[test]
    fn another_key_is_recognised_by_its_id() {
        let sealed = MasterKey::generate().seal(b"secret", b"u");
        assert_eq!(
            MasterKey::generate().open(&sealed, b"u").err(),
            Some(OpenError::UnknownKey)
        );
    }

    #[test]
    fn key_loading_refuses_wrong_sizes_and_never_prints_the_key() {
        assert_eq!(MasterKey::from_base64("not base64!").err(), Some(KeyError::NotBase64));
        assert_eq!(
            MasterKey::from_base64(&BASE64.encode(&[7u8; 16])).err(),
            Some(KeyError::WrongSize(16))
        );
        let key = MasterKey::generate();
        let text = key.to_base64();
        let again = MasterKey::from_base64(&format!("{}\n", &*text)).unwrap();
        assert_eq!(again.id(), key.id());
        assert!(!format!("{key:?}").contains(&text[..8]));
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(plaintext in proptest::collection::vec(any::<u8>(), 0..64),
                                aad in proptest::collection::vec(any::<u8>(), 0..40)) {
            let key = MasterKey::from_bytes([9u8; 32]);
            let sealed = key.seal(&plaintext, &aad);
            prop_assert_eq!(&key.open(&sealed, &aad).unwrap()[..], &plaintext[..]);
        }

        #[test]
        fn open_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let key = MasterKey::from_bytes([9u8; 32]);
            let _ = key.open(&bytes, b"u");
        }
    }
}
