-- What a user sees of their sessions and how they end one: see the SQLite migration of the same
-- number for the meaning of each column. Here the columns that are always set are NOT NULL.
-- `seq` is the user's highest + 1, computed under the user row lock every session insert takes
-- (`lock_user`), so it is unique per user without a sequence.
ALTER TABLE sessions ADD COLUMN public_id TEXT;
ALTER TABLE sessions ADD COLUMN ip TEXT;
ALTER TABLE sessions ADD COLUMN user_agent TEXT;
ALTER TABLE sessions ADD COLUMN seq BIGINT;

UPDATE sessions SET public_id = gen_random_uuid()::text;
UPDATE sessions AS s SET seq = numbered.n
FROM (
    SELECT token_hash, row_number() OVER (PARTITION BY user_id ORDER BY created_at, token_hash) AS n
    FROM sessions
) AS numbered
WHERE s.token_hash = numbered.token_hash;

ALTER TABLE sessions ALTER COLUMN public_id SET NOT NULL;
ALTER TABLE sessions ALTER COLUMN seq SET NOT NULL;
CREATE UNIQUE INDEX sessions_by_public_id ON sessions (public_id);
CREATE UNIQUE INDEX sessions_by_user_seq ON sessions (user_id, seq);
