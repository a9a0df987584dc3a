//! Tessera: accounts, sessions and TOTP multi-factor authentication with one-time backup codes.
//!
//! Map of the crate (data flows down, never up):
//!
//! - [`http`]: the axum edge: routes, extractors, RFC 7807 problems, request ids, cookies, OpenAPI.
//! - [`service`]: the use cases (register, login, sessions, MFA); owns transactions and the throttle.
//! - [`domain`]: pure rules (TOTP, backup codes, passwords, tokens, sealing); no IO, no clock reads.
//! - [`store`]: the persistence boundary: the [`store::Store`] trait, its SQLite and PostgreSQL implementations.
//! - [`config`]: configuration (defaults <- TOML file <- `TESSERA_*` env vars <- flags).
//! - [`backup`]: `tessera backup` / `tessera restore` of the SQLite database, and the lock `serve` holds on it.
//! - [`cli`]: the `tessera` command line: `serve`, `migrate`, `user ...`, `export`, `import`.
//! - [`clock`]: the one seam through which the current time enters the program.
//! - [`metrics`]: the Prometheus recorder and the separate `GET /metrics` listener.
//! - [`server`]: `run(listener, app, limits, shutdown)`, shared by the binary and the tests.
//! - [`transfer`]: `tessera export` / `tessera import`: the JSON-lines format that moves an installation.
//! - [`webhook`]: delivery of security events to a configured URL, signed, from an outbox.
//! - [`housekeeping`]: the background sweep of expired rows and of events past the retention.

pub mod backup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod housekeeping;
pub mod http;
pub mod log_context;
pub mod metrics;
pub mod server;
pub mod service;
pub mod store;
pub mod transfer;
pub mod webhook;
