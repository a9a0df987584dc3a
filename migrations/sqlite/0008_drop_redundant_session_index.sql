-- `sessions_by_user (user_id)` duplicated the leading column of `sessions_by_user_seq (user_id,
-- seq)` (migration 0005), which serves every lookup by user. Each session insert and delete
-- maintained both; now one (BENCHMARKS.md: the second login step's cost is the pages it writes).
DROP INDEX IF EXISTS sessions_by_user;
