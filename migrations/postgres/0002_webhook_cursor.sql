-- Delivery position of the security-event webhook (see the SQLite migration of the same
-- number). Here the position is the (txid, id) pair of the last delivered event, the order in
-- which PostgreSQL's outbox is read.
CREATE TABLE webhook_cursor (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id    BIGINT  NOT NULL,
    last_txid        BIGINT  NOT NULL DEFAULT 0
);
