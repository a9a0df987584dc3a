-- Webhook events that exhausted their delivery attempts ("dead"), and what housekeeping sweeps.
--
-- An event whose delivery failed `attempts` times in a row is recorded here and the cursor moves
-- past it in the same transaction, so it no longer holds back the events behind it. `requeued_at`
-- is set by `tessera events redeliver ID`: the delivering instance then tries the event again
-- (the row is deleted once delivered, or marked dead again, requeued_at NULL, when the new
-- attempts fail too). `last_error` is a status code or a transport error, never a secret.
CREATE TABLE webhook_dead_events (
    event_id        INTEGER PRIMARY KEY REFERENCES security_events (id) ON DELETE CASCADE,
    attempts        INTEGER NOT NULL,
    last_error      TEXT    NOT NULL,
    dead_at         INTEGER NOT NULL,
    requeued_at     INTEGER
);
CREATE INDEX webhook_dead_events_requeued ON webhook_dead_events (requeued_at) WHERE requeued_at IS NOT NULL;

-- Housekeeping deletes security events past the retention by age, in small batches: each batch
-- finds its rows through this index instead of scanning the table.
CREATE INDEX security_events_by_at ON security_events (at);
