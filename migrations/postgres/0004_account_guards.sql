-- The same columns and meaning as migrations/sqlite/0004_account_guards.sql.
-- Guards around the password and the second factor (hardening):
-- password_failures / password_locked_until: consecutive wrong passwords at login, counted
--   before the argon2 check; from the 10th on the password step is locked (30 s doubling to 15
--   minutes) except for attempts from last_login_network.
-- last_login_network: the network (/24 for IPv4, /48 for IPv6) of the last successful password
--   login; the owner signing in from there is not locked out by a stranger elsewhere.
-- mfa_totp_suspended_at: set after 50 consecutive failed codes; TOTP codes are refused until an
--   operator reset or a successful backup-code login.
-- reauth_window_start / reauth_count: re-authentications (setup, password change, regenerate,
--   disable) in the current one-minute window, which success does not reset.
ALTER TABLE users ADD COLUMN password_failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN password_locked_until BIGINT;
ALTER TABLE users ADD COLUMN last_login_network TEXT;
ALTER TABLE users ADD COLUMN mfa_totp_suspended_at BIGINT;
ALTER TABLE users ADD COLUMN reauth_window_start BIGINT;
ALTER TABLE users ADD COLUMN reauth_count BIGINT NOT NULL DEFAULT 0;
