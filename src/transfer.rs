//! `tessera export` / `tessera import`: a whole installation as a stream of JSON lines, to move it
//! between SQLite and PostgreSQL (either way) without losing a user, a factor or a backup code.
//!
//! This module owns the file format and its checks; the store only hands out and takes rows
//! ([`ExportSnapshot`], [`ImportTransaction`]) and the command line only picks files, keys and
//! the database. It never opens a sealed secret for its content: secrets stay sealed under the
//! same master key and hashes stay hashes, so the file holds nothing in the clear. (It does hold
//! password and code hashes: it is as sensitive as the database itself.)
//!
//! # Format, version 1
//!
//! One JSON object per line, each with a `type`:
//!
//! 1. `header`: `format` (`"tessera-export"`), `version` (1), `source_backend` (`"sqlite"` or
//!    `"postgres"`), `exported_at` (RFC 3339) and `master_key_id` (hex of the 4-byte id of the
//!    master key that sealed the TOTP secrets; the key itself is never written).
//! 2. `user`: every column of the row: `id`, `email`, `password_hash` (PHC string),
//!    `created_at`, `disabled_at`, `mfa_secret` (sealed, base64), `mfa_enabled_at`,
//!    `mfa_last_step` (replay protection), `backup_salt` (base64), `mfa_failures`,
//!    `mfa_locked_until`, `password_failures`, `password_locked_until`, `last_login_network`,
//!    `mfa_totp_suspended_at` (the throttles and the code cap move with the account; the
//!    one-minute re-authentication window does not).
//! 3. `backup_code`: `user_id`, `code_hash` (base64 of the 32-byte argon2id hash) of each unused
//!    code.
//! 4. `pending_setup`: `user_id`, `secret` (sealed, base64), `created_at`, `expires_at`, for
//!    setups not yet expired.
//! 5. `session`: `token_hash` (base64 of the SHA-256), `public_id` (its name in the sessions
//!    API), `user_id`, `ip`, `user_agent`, `seq` (its place in the user's order), `created_at`, `last_seen_at`,
//!    `expires_at`, `mfa`, for sessions within their absolute lifetime: users stay signed in.
//! 6. `event`: `user_id` (null for unknown-account failures), `kind`, `at`, `ip`,
//!    `user_agent`, `request_id`, oldest first. Ids are not kept; the order is.
//! 7. `end`: the counts `users`, `factors` (users with MFA on), `backup_codes`,
//!    `pending_setups`, `sessions`, `events`; a file without it, or whose counts differ from its
//!    lines, is refused as truncated or damaged.
//!
//! Times are unix seconds, as stored. Not carried over: pending second login steps
//! (`mfa_token`s live 5 minutes; such a login starts again), expired sessions and setups, and
//! the webhook's delivery cursor (the new database's webhook starts after the imported events).
//!
//! # Guarantees
//!
//! Export reads one snapshot (one read transaction), page by page in primary-key order, so it
//! can run beside a serving instance and holds one page in memory at a time. Import checks the
//! master key before it touches the database, refuses a database that holds any user or event,
//! validates every line (reporting its number), and writes everything in one transaction:
//! a failed import leaves the database as it found it.

use crate::clock::rfc3339;
use crate::domain::email::Email;
use crate::domain::sealing::MasterKey;
use crate::domain::token::TokenHash;
use crate::store::{
    BackupCodeRow, EventRecord, EventRow, ExportSnapshot, ImportTransaction, PendingSetupRow, SessionRecord,
    SessionRow, Store, StoreError, UserRow,
};
use data_encoding::HEXLOWER;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::io::{BufRead, Read, Write};

/// The `format` of the header line.
pub const FORMAT: &str = "tessera-export";
/// The only version this build writes and reads.
pub const VERSION: u32 = 1;
/// Rows per read while exporting.
const PAGE_ROWS: u32 = 500;
/// Rows an import buffers before writing them (as multi-row inserts) into its transaction.
const FLUSH_ROWS: usize = 1000;
/// Longest line an import accepts; real lines are far shorter (a user agent is at most 32 KiB).
const MAX_LINE_BYTES: usize = 1 << 20;

/// What an export wrote or an import read. Also the `end` line of the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub users: u64,
    /// Users with MFA on.
    pub factors: u64,
    pub backup_codes: u64,
    pub pending_setups: u64,
    pub sessions: u64,
    pub events: u64,
}

impl Counts {
    /// Record lines so far (every line but the header and the end).
    pub fn records(&self) -> u64 {
        self.users + self.backup_codes + self.pending_setups + self.sessions + self.events
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} users ({} with MFA), {} backup codes, {} pending MFA setups, {} sessions, {} security events",
            self.users, self.factors, self.backup_codes, self.pending_setups, self.sessions, self.events
        )
    }
}

/// Why an export or import failed. Messages name line numbers, never secret values.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("cannot write the export: {0}")]
    Write(std::io::Error),
    #[error("cannot read the export: {0}")]
    Read(std::io::Error),
    #[error("the export is empty: no header line")]
    Empty,
    #[error("line {line}: {message}")]
    BadLine { line: u64, message: String },
    #[error("the export is truncated: it ends after line {line} without its \"end\" line")]
    Truncated { line: u64 },
    #[error("the export is truncated: line {line} is cut off")]
    CutOff { line: u64 },
    #[error("the export is damaged: its end line says {expected}, but it holds {found}")]
    CountMismatch { expected: Counts, found: Counts },
    #[error(
        "the export names master key {expected}, but the configured key is {configured}; configure the master key \
         of the exporting installation (TESSERA_SECRET_KEY or its key file)"
    )]
    WrongKey { expected: String, configured: String },
    #[error(
        "the target database is not empty ({users} users, {events} security events); import only into a new database"
    )]
    NotEmpty { users: i64, events: i64 },
    #[error("lines {first}-{last}: the database refused them: {source}")]
    Rejected { first: u64, last: u64, source: StoreError },
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

// ---- the lines ----

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Header(Header),
    User(UserLine),
    BackupCode(BackupCodeLine),
    PendingSetup(PendingSetupLine),
    Session(SessionLine),
    Event(EventLine),
    End(Counts),
}

/// The first line of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub source_backend: String,
    pub exported_at: String,
    pub master_key_id: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserLine {
    id: String,
    email: String,
    password_hash: String,
    created_at: i64,
    disabled_at: Option<i64>,
    #[serde(with = "base64_option")]
    mfa_secret: Option<Vec<u8>>,
    mfa_enabled_at: Option<i64>,
    mfa_last_step: Option<i64>,
    #[serde(with = "base64_option")]
    backup_salt: Option<Vec<u8>>,
    mfa_failures: i64,
    mfa_locked_until: Option<i64>,
    password_failures: i64,
    password_locked_until: Option<i64>,
    last_login_network: Option<String>,
    mfa_totp_suspended_at: Option<i64>,
}

impl fmt::Debug for UserLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserLine").field("id", &self.id).finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupCodeLine {
    user_id: String,
    #[serde(with = "base64_bytes")]
    code_hash: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingSetupLine {
    user_id: String,
    #[serde(with = "base64_bytes")]
    secret: Vec<u8>,
    created_at: i64,
    expires_at: i64,
}

impl fmt::Debug for PendingSetupLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingSetupLine")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionLine {
    #[serde(with = "base64_bytes")]
    token_hash: Vec<u8>,
    public_id: String,
    user_id: String,
    created_at: i64,
    last_seen_at: i64,
    expires_at: i64,
    mfa: bool,
    ip: Option<String>,
    user_agent: Option<String>,
    seq: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    user_id: Option<String>,
    kind: String,
    at: i64,
    ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
}

mod base64_bytes {
    use data_encoding::BASE64;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        BASE64
            .decode(text.as_bytes())
            .map_err(|_| D::Error::custom("not base64"))
    }
}

mod base64_option {
    use data_encoding::BASE64;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_some(&BASE64.encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| {
                BASE64
                    .decode(text.as_bytes())
                    .map_err(|_| D::Error::custom("not base64"))
            })
            .transpose()
    }
}

fn key_id(key: &MasterKey) -> String {
    HEXLOWER.encode(&key.id())
}

// ---- export ----

fn write_line(out: &mut dyn Write, line: &Line) -> Result<(), TransferError> {
    serde_json::to_writer(&mut *out, line)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(TransferError::Write)
}

/// Writes the whole database to `out` (header, records, end line) from one snapshot, a page at a
/// time; `progress` hears the counts after every page. `now` decides which sessions and setups
/// are still alive; `key` is the master key the database's secrets are sealed with.
pub async fn export(
    store: &dyn Store,
    key: &MasterKey,
    now: i64,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(&Counts),
) -> Result<Counts, TransferError> {
    let mut snapshot = store.begin_export().await?;
    let header = Header {
        format: FORMAT.to_owned(),
        version: VERSION,
        source_backend: store.backend().to_owned(),
        exported_at: rfc3339(now),
        master_key_id: key_id(key),
    };
    write_line(out, &Line::Header(header))?;
    let counts = export_records(snapshot.as_mut(), now, out, progress).await?;
    snapshot.finish().await?;
    write_line(out, &Line::End(counts))?;
    out.flush().map_err(TransferError::Write)?;
    Ok(counts)
}

async fn export_records(
    snapshot: &mut dyn ExportSnapshot,
    now: i64,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(&Counts),
) -> Result<Counts, TransferError> {
    let mut counts = Counts::default();

    let mut after: Option<String> = None;
    loop {
        let page = snapshot.users(after.as_deref(), PAGE_ROWS).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for user in page {
            counts.users += 1;
            counts.factors += u64::from(user.mfa_secret.is_some());
            write_line(out, &Line::User(UserLine::from(user)))?;
        }
        progress(&counts);
    }

    let mut after: Option<BackupCodeRow> = None;
    loop {
        let page = snapshot.backup_codes(after.as_ref(), PAGE_ROWS).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        for code in page {
            counts.backup_codes += 1;
            let line = BackupCodeLine {
                user_id: code.user_id,
                code_hash: code.code_hash,
            };
            write_line(out, &Line::BackupCode(line))?;
        }
        progress(&counts);
    }

    let mut after: Option<String> = None;
    loop {
        let page = snapshot.pending_setups(after.as_deref(), now, PAGE_ROWS).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.user_id.clone());
        for setup in page {
            counts.pending_setups += 1;
            let line = PendingSetupLine {
                user_id: setup.user_id,
                secret: setup.sealed_secret,
                created_at: setup.created_at,
                expires_at: setup.expires_at,
            };
            write_line(out, &Line::PendingSetup(line))?;
        }
        progress(&counts);
    }

    let mut after: Option<TokenHash> = None;
    loop {
        let page = snapshot.sessions(after.as_ref(), now, PAGE_ROWS).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.record.token_hash);
        for SessionRow { record: session, seq } in page {
            counts.sessions += 1;
            let line = SessionLine {
                token_hash: session.token_hash.as_bytes().to_vec(),
                public_id: session.public_id,
                user_id: session.user_id,
                created_at: session.created_at,
                last_seen_at: session.last_seen_at,
                expires_at: session.expires_at,
                mfa: session.mfa,
                ip: session.ip,
                user_agent: session.user_agent,
                seq,
            };
            write_line(out, &Line::Session(line))?;
        }
        progress(&counts);
    }

    let mut after: Option<i64> = None;
    loop {
        let page = snapshot.events(after, PAGE_ROWS).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for event in page {
            counts.events += 1;
            let line = EventLine {
                user_id: event.user_id,
                kind: event.record.kind,
                at: event.record.at,
                ip: event.record.ip,
                user_agent: event.record.user_agent,
                request_id: event.record.request_id,
            };
            write_line(out, &Line::Event(line))?;
        }
        progress(&counts);
    }
    Ok(counts)
}

impl From<UserRow> for UserLine {
    fn from(user: UserRow) -> Self {
        Self {
            id: user.id,
            email: user.email,
            password_hash: user.password_hash,
            created_at: user.created_at,
            disabled_at: user.disabled_at,
            mfa_secret: user.mfa_secret,
            mfa_enabled_at: user.mfa_enabled_at,
            mfa_last_step: user.mfa_last_step,
            backup_salt: user.backup_salt,
            mfa_failures: user.mfa_failures,
            mfa_locked_until: user.mfa_locked_until,
            password_failures: user.password_failures,
            password_locked_until: user.password_locked_until,
            last_login_network: user.last_login_network,
            mfa_totp_suspended_at: user.mfa_totp_suspended_at,
        }
    }
}

// ---- import ----

/// An export being read: its header is read (and checked) on [`ExportFile::open`], before
/// anything else happens, so the master key can be checked before the database is touched.
pub struct ExportFile<R> {
    lines: Lines<R>,
    header: Header,
}

/// The lines of an export, parsed one at a time, with the number of the last one read.
struct Lines<R> {
    reader: R,
    number: u64,
}

impl<R: BufRead> Lines<R> {
    /// A refusal of the last line read.
    fn bad(&self, message: impl Into<String>) -> TransferError {
        TransferError::BadLine {
            line: self.number,
            message: message.into(),
        }
    }

    /// The next line, parsed; `None` at the end of the input.
    fn next(&mut self) -> Result<Option<Line>, TransferError> {
        let mut bytes = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut bytes)
            .map_err(TransferError::Read)?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        if bytes.len() > MAX_LINE_BYTES {
            return Err(self.bad("longer than 1 MiB"));
        }
        // Every line the export writes ends with a newline: one without was cut off.
        if bytes.pop() != Some(b'\n') {
            return Err(TransferError::CutOff { line: self.number });
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| self.bad("not UTF-8"))?;
        serde_json::from_str(text)
            .map(Some)
            .map_err(|err| self.bad(format!("not a valid record: {err}")))
    }
}

impl<R: BufRead> ExportFile<R> {
    /// Reads and checks the header line.
    pub fn open(reader: R) -> Result<Self, TransferError> {
        let mut lines = Lines { reader, number: 0 };
        let header = match lines.next()? {
            None => return Err(TransferError::Empty),
            Some(Line::Header(header)) => header,
            Some(_) => return Err(lines.bad("the first line must be the header")),
        };
        if header.format != FORMAT {
            return Err(lines.bad(format!("not a Tessera export (format must be \"{FORMAT}\")")));
        }
        if header.version != VERSION {
            return Err(lines.bad(format!(
                "export format version {} is not supported (this build reads version {VERSION})",
                header.version
            )));
        }
        Ok(Self { lines, header })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Refuses a key other than the one the export names.
    pub fn check_key(&self, key: &MasterKey) -> Result<(), TransferError> {
        if self.header.master_key_id == key_id(key) {
            Ok(())
        } else {
            Err(TransferError::WrongKey {
                expected: self.header.master_key_id.clone(),
                configured: key_id(key),
            })
        }
    }

    fn bad(&self, message: impl Into<String>) -> TransferError {
        self.lines.bad(message)
    }

    /// Imports every record into `store`, which must hold no user and no event, in one
    /// transaction; `progress` hears the counts as batches are written. Nothing is written unless
    /// the whole file is valid and complete.
    pub async fn import_into(
        mut self,
        store: &dyn Store,
        key: &MasterKey,
        progress: &mut dyn FnMut(&Counts),
    ) -> Result<Counts, TransferError> {
        self.check_key(key)?;
        let mut tx = store.begin_import().await?;
        let (users, events) = tx.existing().await?;
        if users > 0 || events > 0 {
            return Err(TransferError::NotEmpty { users, events });
        }
        let mut batch = Batch::default();
        let mut seen = Seen::default();
        let mut counts = Counts::default();
        let expected = loop {
            let Some(line) = self.lines.next()? else {
                return Err(TransferError::Truncated {
                    line: self.lines.number,
                });
            };
            match line {
                Line::Header(_) => return Err(self.bad("a second header")),
                Line::End(expected) => break expected,
                Line::User(user) => {
                    let user = self.check_user(user, key, &mut seen)?;
                    counts.users += 1;
                    counts.factors += u64::from(user.mfa_secret.is_some());
                    batch.users.push(user);
                }
                Line::BackupCode(code) => {
                    self.check_user_known(&code.user_id, &seen)?;
                    if code.code_hash.len() != 32 {
                        return Err(self.bad("code_hash must be 32 bytes"));
                    }
                    counts.backup_codes += 1;
                    batch.backup_codes.push(BackupCodeRow {
                        user_id: code.user_id,
                        code_hash: code.code_hash,
                    });
                }
                Line::PendingSetup(setup) => {
                    self.check_user_known(&setup.user_id, &seen)?;
                    self.check_sealed(&setup.secret, &setup.user_id, key)?;
                    counts.pending_setups += 1;
                    batch.pending_setups.push(PendingSetupRow {
                        user_id: setup.user_id,
                        sealed_secret: setup.secret,
                        created_at: setup.created_at,
                        expires_at: setup.expires_at,
                    });
                }
                Line::Session(session) => {
                    self.check_user_known(&session.user_id, &seen)?;
                    let token_hash = TokenHash::from_slice(&session.token_hash)
                        .ok_or_else(|| self.bad("token_hash must be 32 bytes"))?;
                    counts.sessions += 1;
                    if session.public_id.is_empty() {
                        return Err(self.bad("public_id must not be empty"));
                    }
                    batch.sessions.push(SessionRow {
                        record: SessionRecord {
                            token_hash,
                            public_id: session.public_id,
                            user_id: session.user_id,
                            created_at: session.created_at,
                            last_seen_at: session.last_seen_at,
                            expires_at: session.expires_at,
                            mfa: session.mfa,
                            ip: session.ip,
                            user_agent: session.user_agent,
                        },
                        seq: session.seq,
                    });
                }
                Line::Event(event) => {
                    // An event may name an account that `tessera user delete` removed: its
                    // events stay as the audit trail, so no user line defines it.
                    if event.kind.is_empty() {
                        return Err(self.bad("kind must not be empty"));
                    }
                    counts.events += 1;
                    batch.events.push(EventRow {
                        id: 0,
                        user_id: event.user_id,
                        record: EventRecord {
                            kind: event.kind,
                            at: event.at,
                            ip: event.ip,
                            user_agent: event.user_agent,
                            request_id: event.request_id,
                        },
                    });
                }
            }
            batch.first_line.get_or_insert(self.lines.number);
            if batch.len() >= FLUSH_ROWS {
                batch.write(tx.as_mut(), self.lines.number).await?;
                progress(&counts);
            }
        };
        if expected != counts {
            return Err(TransferError::CountMismatch {
                expected,
                found: counts,
            });
        }
        if self.lines.next()?.is_some() {
            return Err(self.bad("nothing may follow the end line"));
        }
        batch.write(tx.as_mut(), self.lines.number).await?;
        progress(&counts);
        tx.commit().await?;
        Ok(counts)
    }

    fn check_user(&self, user: UserLine, key: &MasterKey, seen: &mut Seen) -> Result<UserRow, TransferError> {
        if user.id.is_empty() {
            return Err(self.bad("id must not be empty"));
        }
        match Email::parse(&user.email) {
            Ok(email) if email.as_str() == user.email => {}
            _ => return Err(self.bad("email is not a normalised email address")),
        }
        if !user.password_hash.starts_with('$') {
            return Err(self.bad("password_hash is not a PHC string"));
        }
        if user.mfa_secret.is_some() != user.mfa_enabled_at.is_some() {
            return Err(self.bad("mfa_secret and mfa_enabled_at must both be set or both be null"));
        }
        if let Some(secret) = &user.mfa_secret {
            self.check_sealed(secret, &user.id, key)?;
        }
        if user.mfa_failures < 0 || user.password_failures < 0 {
            return Err(self.bad("failure counts must not be negative"));
        }
        if !seen.users.insert(user.id.clone()) {
            return Err(self.bad("a second user with this id"));
        }
        if !seen.emails.insert(user.email.clone()) {
            return Err(self.bad("a second user with this email"));
        }
        Ok(UserRow {
            id: user.id,
            email: user.email,
            password_hash: user.password_hash,
            created_at: user.created_at,
            disabled_at: user.disabled_at,
            mfa_secret: user.mfa_secret,
            mfa_enabled_at: user.mfa_enabled_at,
            mfa_last_step: user.mfa_last_step,
            backup_salt: user.backup_salt,
            mfa_failures: user.mfa_failures,
            mfa_locked_until: user.mfa_locked_until,
            password_failures: user.password_failures,
            password_locked_until: user.password_locked_until,
            last_login_network: user.last_login_network,
            mfa_totp_suspended_at: user.mfa_totp_suspended_at,
        })
    }

    fn check_user_known(&self, user_id: &str, seen: &Seen) -> Result<(), TransferError> {
        if seen.users.contains(user_id) {
            Ok(())
        } else {
            Err(self.bad("names a user that no earlier line defines"))
        }
    }

    /// A sealed secret must open with the configured key and its user's id: one copied onto
    /// another user, or damaged, would otherwise surface only at that user's next login.
    fn check_sealed(&self, sealed: &[u8], user_id: &str, key: &MasterKey) -> Result<(), TransferError> {
        key.open(sealed, user_id.as_bytes())
            .map(drop)
            .map_err(|_| self.bad("the sealed TOTP secret does not open with the master key for this user"))
    }
}

/// Users seen so far (ids and emails): later lines may only name known users, and duplicates are
/// reported with their line instead of as a failed batch. About 100 bytes per user.
#[derive(Default)]
struct Seen {
    users: HashSet<String>,
    emails: HashSet<String>,
}

/// Rows read but not yet written, and the first line they came from.
#[derive(Default)]
struct Batch {
    first_line: Option<u64>,
    users: Vec<UserRow>,
    backup_codes: Vec<BackupCodeRow>,
    pending_setups: Vec<PendingSetupRow>,
    sessions: Vec<SessionRow>,
    events: Vec<EventRow>,
}

impl Batch {
    fn len(&self) -> usize {
        self.users.len() + self.backup_codes.len() + self.pending_setups.len() + self.sessions.len() + self.events.len()
    }

    /// Writes users first, since the other rows refer to them; events keep their order.
    async fn write(&mut self, tx: &mut dyn ImportTransaction, last_line: u64) -> Result<(), TransferError> {
        let first = self.first_line.take().unwrap_or(last_line);
        let rejected = |source| TransferError::Rejected {
            first,
            last: last_line,
            source,
        };
        tx.insert_users(&self.users).await.map_err(rejected)?;
        tx.insert_backup_codes(&self.backup_codes).await.map_err(rejected)?;
        tx.insert_pending_setups(&self.pending_setups).await.map_err(rejected)?;
        tx.insert_sessions(&self.sessions).await.map_err(rejected)?;
        tx.insert_events(&self.events).await.map_err(rejected)?;
        self.users.clear();
        self.backup_codes.clear();
        self.pending_setups.clear();
        self.sessions.clear();
        self.events.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = r#"{"type":"header","format":"tessera-export","version":1,"source_backend":"sqlite","exported_at":"2026-11-30T11:00:00Z","master_key_id":"01020304"}"#;

    fn open(text: &str) -> Result<ExportFile<&[u8]>, TransferError> {
        ExportFile::open(text.as_bytes())
    }

    fn message(result: Result<ExportFile<&[u8]>, TransferError>) -> String {
        match result {
            Ok(_) => panic!("accepted"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn a_header_of_this_format_and_version_opens_and_names_its_key() {
        let text = format!("{HEADER}\n");
        let file = open(&text).expect("opens");
        assert_eq!(file.header().master_key_id, "01020304");
        assert_eq!(file.header().source_backend, "sqlite");
        let key = MasterKey::from_bytes([7u8; 32]);
        assert!(matches!(file.check_key(&key), Err(TransferError::WrongKey { .. })));
    }

    #[test]
    fn anything_but_a_tessera_export_of_version_1_is_refused_on_line_1() {
        assert!(matches!(open(""), Err(TransferError::Empty)));
        let other_format = HEADER.replace("tessera-export", "something-else");
        assert!(message(open(&format!("{other_format}\n"))).starts_with("line 1: not a Tessera export"));
        let newer = HEADER.replace("\"version\":1", "\"version\":2");
        assert!(message(open(&format!("{newer}\n"))).contains("version 2 is not supported"));
        let not_first =
            r#"{"type":"end","users":0,"factors":0,"backup_codes":0,"pending_setups":0,"sessions":0,"events":0}"#;
        assert!(message(open(&format!("{not_first}\n"))).starts_with("line 1: the first line must be the header"));
        assert!(message(open("not json\n")).starts_with("line 1: not a valid record"));
    }

    #[test]
    fn unknown_members_and_unknown_types_are_refused() {
        let extra = HEADER.replace("\"version\":1", "\"version\":1,\"extra\":true");
        assert!(message(open(&format!("{extra}\n"))).contains("unknown field"));
        let text = format!(
            "{HEADER}\n{{\"type\":\"backup_code\",\"user_id\":\"u\",\"code_hash\":\"AAAA\",\"plain\":\"x\"}}\n\
             {{\"type\":\"challenge\"}}\n"
        );
        let mut file = open(&text).expect("opens");
        let err = file.lines.next().expect_err("extra member");
        assert!(
            err.to_string().starts_with("line 2: ") && err.to_string().contains("unknown field"),
            "{err}"
        );
        let err = file.lines.next().expect_err("unknown type");
        assert!(err.to_string().starts_with("line 3: "), "{err}");
    }

    #[test]
    fn a_cut_off_or_overlong_line_is_refused() {
        let cut = format!("{HEADER}\n{{\"type\":\"end\"");
        let mut file = open(&cut).expect("opens");
        assert!(matches!(file.lines.next(), Err(TransferError::CutOff { line: 2 })));
        let long = format!("{HEADER}\n{}\n", "x".repeat(MAX_LINE_BYTES + 1));
        let mut file = open(&long).expect("opens");
        let err = file.lines.next().expect_err("too long");
        assert_eq!(err.to_string(), "line 2: longer than 1 MiB");
    }

    #[test]
    fn bytes_are_base64_and_the_end_line_round_trips() {
        let line = Line::BackupCode(BackupCodeLine {
            user_id: "u".to_owned(),
            code_hash: vec![0xff; 32],
        });
        let text = serde_json::to_string(&line).expect("serialises");
        assert_eq!(
            text,
            format!(
                r#"{{"type":"backup_code","user_id":"u","code_hash":"{}"}}"#,
                BASE64_ALL_ONES
            )
        );
        let counts = Counts {
            users: 1,
            factors: 1,
            backup_codes: 10,
            pending_setups: 0,
            sessions: 2,
            events: 7,
        };
        let text = serde_json::to_string(&Line::End(counts)).expect("serialises");
        match serde_json::from_str::<Line>(&text).expect("parses") {
            Line::End(read) => assert_eq!(read, counts),
            other => panic!("{other:?}"),
        }
        assert_eq!(counts.records(), 20);
    }

    const BASE64_ALL_ONES: &str = "//////////////////////////////////////////8=";
}
