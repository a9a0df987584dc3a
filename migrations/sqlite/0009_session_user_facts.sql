-- Session introspection (GET /api/auth/session) answers with the session and the public facts of
-- its user: email, creation time, whether the account is disabled and whether MFA is on. They
-- were read through a join with `users` on every request; they are now copied onto the session
-- row, so introspection is one primary-key read (BENCHMARKS.md: the join cost ~15,000
-- instructions and two random page reads per request).
--
-- How the copies stay right:
-- * every session insert copies them from the user row in the same statement
--   (`INSERT INTO sessions ... SELECT ... FROM users`), inside the login's transaction;
-- * the trigger below rewrites them on every session of the user, in the same transaction, when
--   an update changes one of them (MFA enabled, disabled or reset; an account disabled or
--   re-enabled). SQLite runs one writer at a time, so no session insert interleaves.
ALTER TABLE sessions ADD COLUMN user_email TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN user_created_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN user_disabled_at INTEGER;
ALTER TABLE sessions ADD COLUMN user_mfa INTEGER NOT NULL DEFAULT 0;

UPDATE sessions SET
    user_email = (SELECT u.email FROM users u WHERE u.id = sessions.user_id),
    user_created_at = (SELECT u.created_at FROM users u WHERE u.id = sessions.user_id),
    user_disabled_at = (SELECT u.disabled_at FROM users u WHERE u.id = sessions.user_id),
    user_mfa = (SELECT u.mfa_enabled_at IS NOT NULL AND u.mfa_secret IS NOT NULL FROM users u
                WHERE u.id = sessions.user_id);

CREATE TRIGGER users_facts_to_sessions
AFTER UPDATE OF email, created_at, disabled_at, mfa_secret, mfa_enabled_at ON users
WHEN OLD.email IS NOT NEW.email
  OR OLD.created_at IS NOT NEW.created_at
  OR OLD.disabled_at IS NOT NEW.disabled_at
  OR (OLD.mfa_enabled_at IS NOT NULL AND OLD.mfa_secret IS NOT NULL)
     IS NOT (NEW.mfa_enabled_at IS NOT NULL AND NEW.mfa_secret IS NOT NULL)
BEGIN
    UPDATE sessions SET
        user_email = NEW.email,
        user_created_at = NEW.created_at,
        user_disabled_at = NEW.disabled_at,
        user_mfa = (NEW.mfa_enabled_at IS NOT NULL AND NEW.mfa_secret IS NOT NULL)
    WHERE user_id = NEW.id;
END;
