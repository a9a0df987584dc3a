//! `cargo bench --bench domain`: the domain's per-request work, each beside the bare primitive
//! it wraps, in one criterion group per pair so the report reads as a ratio:
//!
//! | group | Tessera | bare primitive |
//! |---|---|---|
//! | `totp` | `totp::verify`, 3-step window (skew 1), code not found (all three computed) | one HMAC-SHA1 of an 8-byte counter |
//! | `token_hash` | `PlainToken::parse` + `hash` of a session token | one SHA-256 of 47 bytes |
//! | `unseal` | `MasterKey::open` of a sealed TOTP secret | one XChaCha20-Poly1305 open of 20 bytes |
//! | `backup_code` | `normalize` + `hash_code` + lookup among 10 stored hashes | one argon2id hash (same parameters) |
//!
//! Argon2 takes tens of milliseconds, so the `backup_code` group takes few samples.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use criterion::{Criterion, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::hint::black_box;
use std::time::Duration;
use tessera::domain::backup_code::{self, ARGON2_M_COST_KIB, ARGON2_P_COST, ARGON2_T_COST, HASH_LEN};
use tessera::domain::sealing::MasterKey;
use tessera::domain::token::{PlainToken, TokenKind};
use tessera::domain::totp::{self, TotpCode, TotpPolicy, TotpSecret};

const NOW: i64 = 1_764_500_000;

fn totp(c: &mut Criterion) {
    let secret = TotpSecret::from_bytes(vec![0x5a; 20]);
    let policy = TotpPolicy::default();
    // A code that matches none of the three steps: verify computes all three either way (no
    // early exit), and a miss cannot be optimised into a hit.
    let expected = totp::hotp(
        secret.as_bytes(),
        totp::step_at(NOW, 30) as u64,
        6,
        totp::Algorithm::Sha1,
    );
    let code = TotpCode::parse(&format!("{:06}", (expected + 1) % 1_000_000)).unwrap();
    let mut group = c.benchmark_group("totp");
    group.bench_function("tessera_verify_3_steps", |b| {
        b.iter(|| totp::verify(black_box(&secret), black_box(&code), black_box(NOW), &policy, None))
    });
    group.bench_function("bare_hmac_sha1", |b| {
        b.iter(|| {
            let mut mac = <Hmac<sha1::Sha1> as hmac::KeyInit>::new_from_slice(black_box(&[0x5au8; 20])).unwrap();
            mac.update(&black_box(58_816_666u64).to_be_bytes());
            mac.finalize().into_bytes()
        })
    });
    group.finish();
}

fn token_hash(c: &mut Criterion) {
    let token = PlainToken::generate(TokenKind::Session);
    let text = token.expose().to_owned();
    let mut group = c.benchmark_group("token_hash");
    group.bench_function("tessera_parse_and_hash", |b| {
        b.iter(|| PlainToken::parse(TokenKind::Session, black_box(&text)).unwrap().hash())
    });
    group.bench_function("bare_sha256", |b| b.iter(|| Sha256::digest(black_box(text.as_bytes()))));
    group.finish();
}

fn unseal(c: &mut Criterion) {
    let key = MasterKey::from_bytes([7; 32]);
    let user_id = "0193a3c4-5e6f-7a7b-8c9d-0e1f2a3b4c5d";
    let sealed = key.seal(&[0x5a; 20], user_id.as_bytes());
    let cipher = XChaCha20Poly1305::new(&Key::from([7u8; 32]));
    let nonce = XNonce::from([9u8; 24]);
    let aad = [&[1u8; 29][..], user_id.as_bytes()].concat();
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: &[0x5a; 20],
                aad: &aad,
            },
        )
        .unwrap();
    let mut group = c.benchmark_group("unseal");
    group.bench_function("tessera_master_key_open", |b| {
        b.iter(|| key.open(black_box(&sealed), black_box(user_id.as_bytes())).unwrap())
    });
    group.bench_function("bare_xchacha20poly1305_open", |b| {
        b.iter(|| {
            cipher
                .decrypt(
                    black_box(&nonce),
                    Payload {
                        msg: black_box(&ciphertext),
                        aad: &aad,
                    },
                )
                .unwrap()
        })
    });
    group.finish();
}

fn backup_code(c: &mut Criterion) {
    let set = backup_code::BackupCodeSet::generate_os(10).unwrap();
    let salt = set.salt;
    let typed = set.codes[4].expose().to_uppercase();
    let stored = set.hashes().unwrap();
    let params = argon2::Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, Some(HASH_LEN)).unwrap();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut group = c.benchmark_group("backup_code");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("tessera_normalize_hash_lookup", |b| {
        b.iter(|| {
            let code = backup_code::normalize(black_box(&typed)).unwrap();
            let hash = backup_code::hash_code(&code, &salt).unwrap();
            stored.contains(&hash)
        })
    });
    group.bench_function("bare_argon2id", |b| {
        b.iter(|| {
            let mut out = [0u8; HASH_LEN];
            argon
                .hash_password_into(black_box(b"abcdefghijkmn"), &salt, &mut out)
                .unwrap();
            out
        })
    });
    group.finish();
}

criterion_group!(benches, totp, token_hash, unseal, backup_code);
criterion_main!(benches);
