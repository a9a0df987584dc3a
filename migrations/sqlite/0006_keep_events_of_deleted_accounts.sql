-- `tessera user delete` removes an account and everything that hangs off it, but its security
-- events stay: they are the audit trail (who logged in, when, what an operator did), and the
-- deletion itself is recorded as `user_deleted`. So `security_events.user_id` no longer
-- references `users` (it used to cascade). SQLite cannot drop a foreign key: the table is
-- rebuilt with the same columns, ids and AUTOINCREMENT sequence (ids are never reused: the
-- webhook cursor points into them).
CREATE TABLE security_events_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         TEXT,                         -- NULL: unknown account; may name a deleted one
    kind            TEXT    NOT NULL,
    at              INTEGER NOT NULL,
    ip              TEXT,
    user_agent      TEXT,
    request_id      TEXT
);
INSERT INTO security_events_new (id, user_id, kind, at, ip, user_agent, request_id)
    SELECT id, user_id, kind, at, ip, user_agent, request_id FROM security_events;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'security_events_new', seq FROM sqlite_sequence WHERE name = 'security_events'
    AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'security_events_new');
UPDATE sqlite_sequence
    SET seq = MAX(seq, (SELECT seq FROM sqlite_sequence WHERE name = 'security_events'))
    WHERE name = 'security_events_new'
    AND EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'security_events');
DROP TABLE security_events;
ALTER TABLE security_events_new RENAME TO security_events;
CREATE INDEX security_events_by_user ON security_events (user_id, id);
