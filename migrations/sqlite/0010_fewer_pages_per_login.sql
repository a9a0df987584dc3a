-- Fewer pages written per login (BENCHMARKS.md: the second login step's cost is the pages it
-- writes, about 13 with the schema before this migration, 11 after).
--
-- `sessions_by_public_id` goes: every statement that finds a session by its public id also
-- names the user (`... WHERE public_id = ? AND user_id = ?`), which `sessions_by_user_seq`
-- serves over the user's few sessions (at most MAX_SESSIONS_PER_USER). Its uniqueness was never
-- relied on: public ids are random UUIDv4s (122 random bits) and only ever looked up per user.
-- The index cost one page per session insert and delete.
DROP INDEX IF EXISTS sessions_by_public_id;

-- `mfa_challenges` becomes a WITHOUT ROWID table: the row lives in the primary-key B-tree
-- instead of a rowid table plus an index on `token_hash`, so a challenge inserted (the password
-- step) or consumed (the second step) writes one page less.
CREATE TABLE mfa_challenges_new (
    token_hash      BLOB    PRIMARY KEY,
    user_id         TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO mfa_challenges_new (token_hash, user_id, created_at, expires_at)
    SELECT token_hash, user_id, created_at, expires_at FROM mfa_challenges;
DROP TABLE mfa_challenges;
ALTER TABLE mfa_challenges_new RENAME TO mfa_challenges;
CREATE INDEX mfa_challenges_by_user ON mfa_challenges (user_id);
