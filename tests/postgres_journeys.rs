//! The HTTP journey and adversarial suites, run again on PostgreSQL: every test of
//! `foundation.rs`, `mfa.rs`, `abuse.rs`, `hardening.rs` and `sessions.rs` gets its own freshly
//! created database on the server named by `TESSERA_TEST_DATABASE_URL` (see `tests/common`). The
//! binary's name is what tells the harness to use PostgreSQL.
// Each suite file declares `mod common;`, so the harness is compiled once per suite here.
#![allow(clippy::duplicate_mod)]

#[path = "abuse.rs"]
mod abuse;
#[path = "foundation.rs"]
mod foundation;
#[path = "hardening.rs"]
mod hardening;
#[path = "mfa.rs"]
mod mfa;
#[path = "sessions.rs"]
mod sessions;
