-- `sessions_by_public_id` goes, as in the SQLite migration of the same number: every statement
-- that finds a session by its public id also names the user, which `sessions_by_user_seq` serves
-- over the user's few sessions; public ids are random UUIDv4s, never looked up alone. One index
-- entry less per session insert and delete. (`mfa_challenges` keeps its shape here: a heap and
-- its primary-key index are PostgreSQL's only layout.)
DROP INDEX IF EXISTS sessions_by_public_id;
