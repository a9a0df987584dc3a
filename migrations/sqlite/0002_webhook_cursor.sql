-- Delivery position of the security-event webhook: the id of the last event delivered. The
-- events table is the outbox; a single row here makes delivery resume after a restart without
-- losing or repeating more than the one event in flight.
CREATE TABLE webhook_cursor (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id   INTEGER NOT NULL
);
