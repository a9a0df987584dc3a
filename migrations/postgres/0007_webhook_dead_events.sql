-- Webhook events that exhausted their delivery attempts ("dead"), and what housekeeping sweeps
-- (see the SQLite migration of the same number).
CREATE TABLE webhook_dead_events (
    event_id        BIGINT  PRIMARY KEY REFERENCES security_events (id) ON DELETE CASCADE,
    attempts        INTEGER NOT NULL,
    last_error      TEXT    NOT NULL,
    dead_at         BIGINT  NOT NULL,
    requeued_at     BIGINT
);
CREATE INDEX webhook_dead_events_requeued ON webhook_dead_events (requeued_at) WHERE requeued_at IS NOT NULL;

CREATE INDEX security_events_by_at ON security_events (at);
