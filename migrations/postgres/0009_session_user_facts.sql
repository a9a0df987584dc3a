-- Session introspection reads the public facts of the session's user from the session row: see
-- the SQLite migration of the same number. Every session insert copies them from the user row in
-- the same statement, under `FOR SHARE` on that row (an update of the user waits for the login
-- to commit and then rewrites the new session too; a login that comes second reads the committed
-- facts); the trigger rewrites them on every session of the user when an update changes one.
ALTER TABLE sessions ADD COLUMN user_email TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN user_created_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN user_disabled_at BIGINT;
ALTER TABLE sessions ADD COLUMN user_mfa BOOLEAN NOT NULL DEFAULT FALSE;

UPDATE sessions AS s SET
    user_email = u.email,
    user_created_at = u.created_at,
    user_disabled_at = u.disabled_at,
    user_mfa = (u.mfa_enabled_at IS NOT NULL AND u.mfa_secret IS NOT NULL)
FROM users AS u WHERE u.id = s.user_id;

CREATE FUNCTION tessera_user_facts_to_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sessions SET
        user_email = NEW.email,
        user_created_at = NEW.created_at,
        user_disabled_at = NEW.disabled_at,
        user_mfa = (NEW.mfa_enabled_at IS NOT NULL AND NEW.mfa_secret IS NOT NULL)
    WHERE user_id = NEW.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER users_facts_to_sessions
AFTER UPDATE OF email, created_at, disabled_at, mfa_secret, mfa_enabled_at ON users
FOR EACH ROW
WHEN (OLD.email IS DISTINCT FROM NEW.email
   OR OLD.created_at IS DISTINCT FROM NEW.created_at
   OR OLD.disabled_at IS DISTINCT FROM NEW.disabled_at
   OR (OLD.mfa_enabled_at IS NOT NULL AND OLD.mfa_secret IS NOT NULL)
      IS DISTINCT FROM (NEW.mfa_enabled_at IS NOT NULL AND NEW.mfa_secret IS NOT NULL))
EXECUTE FUNCTION tessera_user_facts_to_sessions();
