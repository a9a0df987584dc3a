-- One instance delivers the webhook at a time: the holder of this lease. It renews the lease
-- while it works; another instance takes over once `lease_until` has passed (the holder died).
-- `last_txid` mirrors PostgreSQL's outbox order and stays 0 here: SQLite serialises writers, so
-- event ids are already in commit order.
ALTER TABLE webhook_cursor ADD COLUMN last_txid INTEGER NOT NULL DEFAULT 0;
ALTER TABLE webhook_cursor ADD COLUMN lease_holder TEXT;
ALTER TABLE webhook_cursor ADD COLUMN lease_until INTEGER;
