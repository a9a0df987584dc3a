-- One instance delivers the webhook at a time: the holder of this lease. It renews the lease
-- while it works; another instance takes over once `lease_until` has passed (the holder died).
ALTER TABLE webhook_cursor ADD COLUMN lease_holder TEXT;
ALTER TABLE webhook_cursor ADD COLUMN lease_until BIGINT;
