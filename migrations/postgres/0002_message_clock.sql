-- The cluster-wide message clock: the stamp of the last committed batch of notifications, commands
-- and command updates. Every instance's writer takes a transaction-scoped advisory lock, moves this
-- forward (strictly) and commits, so commit order equals timestamp order across instances and a
-- client resuming from the timestamp of its last message never skips or repeats one.
CREATE TABLE message_clock (
    id BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    last_ts BIGINT NOT NULL
);
INSERT INTO message_clock (id, last_ts) VALUES (TRUE, GREATEST(
    (SELECT COALESCE(MAX(timestamp), 0) FROM device_notification),
    (SELECT COALESCE(MAX(last_updated), 0) FROM device_command)
));
