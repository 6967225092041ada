-- In step with migrations/postgres/0004_plain_relay.sql, which creates the relay table of cluster mode
-- (plain MQTT publishes too large for a NOTIFY). A SQLite hub is one instance and relays nothing, so
-- it has no such table (and migrate-db has nothing of it to copy).
SELECT 1;
