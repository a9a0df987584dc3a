-- Tessera schema, SQLite flavour. Times are unix seconds (INTEGER, UTC). Secrets never appear in
-- the clear: passwords and backup codes are argon2id hashes, tokens are SHA-256 hashes, TOTP
-- secrets are sealed with the master key (XChaCha20-Poly1305, user id as associated data).

CREATE TABLE users (
    id              TEXT    PRIMARY KEY,          -- UUIDv7, also the AEAD associated data
    email           TEXT    NOT NULL UNIQUE,      -- trimmed and lower-cased by the domain
    password_hash   TEXT    NOT NULL,             -- PHC string, argon2id
    created_at      INTEGER NOT NULL,
    disabled_at     INTEGER,                      -- set by an operator; login refused with 403
    -- MFA state: all NULL while MFA is off.
    mfa_secret      BLOB,                         -- sealed TOTP secret
    mfa_enabled_at  INTEGER,
    mfa_last_step   INTEGER,                      -- last accepted TOTP step: replay protection
    backup_salt     BLOB,                         -- one salt for the whole current backup-code set
    -- Second-factor throttle (shared by every endpoint that checks a code).
    mfa_failures    INTEGER NOT NULL DEFAULT 0,   -- consecutive failed (or in-flight) attempts
    mfa_locked_until INTEGER                      -- no attempt is evaluated before this time
);

-- A session is identified by the SHA-256 of its token; the token itself is never stored.
CREATE TABLE sessions (
    token_hash      BLOB    PRIMARY KEY,
    user_id         TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at      INTEGER NOT NULL,
    last_seen_at    INTEGER NOT NULL,             -- idle timeout runs from here
    expires_at      INTEGER NOT NULL,             -- absolute lifetime
    mfa             INTEGER NOT NULL              -- 1 when the second factor was presented
);
CREATE INDEX sessions_by_user ON sessions (user_id);

-- A started but not yet verified MFA setup; at most one per user, replaced by a new setup.
CREATE TABLE mfa_pending (
    user_id         TEXT    PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret          BLOB    NOT NULL,             -- sealed, like users.mfa_secret
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
);

-- The current backup codes, one row per unused code. Using a code deletes its row.
CREATE TABLE backup_codes (
    user_id         TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash       BLOB    NOT NULL,             -- argon2id(code, users.backup_salt)
    PRIMARY KEY (user_id, code_hash)
);

-- The `mfa_token` handed out by a password login when MFA is on: single use, short-lived,
-- never a session.
CREATE TABLE mfa_challenges (
    token_hash      BLOB    PRIMARY KEY,
    user_id         TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
);
CREATE INDEX mfa_challenges_by_user ON mfa_challenges (user_id);

-- Audit trail shown to the user (GET /api/user/profile/security-events) and kept for operators.
CREATE TABLE security_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         TEXT    REFERENCES users (id) ON DELETE CASCADE, -- NULL: unknown account
    kind            TEXT    NOT NULL,
    at              INTEGER NOT NULL,
    ip              TEXT,
    user_agent      TEXT,
    request_id      TEXT
);
CREATE INDEX security_events_by_user ON security_events (user_id, id);
