-- What a user sees of their sessions (GET /api/user/profile/sessions) and how they end one.
--
-- `public_id` names a session in the API: a random UUID, unrelated to the token and its hash, so
-- listing sessions never hands out anything that authenticates or identifies a token. `ip` and
-- `user_agent` are those of the login that opened the session. `seq` numbers a user's sessions
-- in creation order (each insert takes the user's highest + 1 inside its write transaction):
-- the cap of 100 live sessions per account evicts the lowest, and ties of `created_at` (logins
-- in the same second) stay ordered.
--
-- SQLite cannot add NOT NULL columns without a default: the store always sets `public_id` and
-- `seq`, and the sessions that exist now are given theirs below.
ALTER TABLE sessions ADD COLUMN public_id TEXT;
ALTER TABLE sessions ADD COLUMN ip TEXT;
ALTER TABLE sessions ADD COLUMN user_agent TEXT;
ALTER TABLE sessions ADD COLUMN seq INTEGER;

-- A random version-4 UUID per existing session (each randomblob() call is made per row).
UPDATE sessions SET public_id = lower(
    hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' ||
    substr('89ab', 1 + abs(random()) % 4, 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))
);
UPDATE sessions SET seq = (
    SELECT COUNT(*) FROM sessions AS older
    WHERE older.user_id = sessions.user_id
      AND (older.created_at < sessions.created_at
           OR (older.created_at = sessions.created_at AND older.rowid <= sessions.rowid))
);

CREATE UNIQUE INDEX sessions_by_public_id ON sessions (public_id);
CREATE UNIQUE INDEX sessions_by_user_seq ON sessions (user_id, seq);
