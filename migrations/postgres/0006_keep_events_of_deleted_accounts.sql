-- `tessera user delete` removes an account and everything that hangs off it, but its security
-- events stay: they are the audit trail (who logged in, when, what an operator did), and the
-- deletion itself is recorded as `user_deleted`. So `security_events.user_id` no longer
-- references `users` (it used to cascade); it may name a deleted account.
ALTER TABLE security_events DROP CONSTRAINT IF EXISTS security_events_user_id_fkey;
