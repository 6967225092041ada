-- MQTT sessions: presence of every client id, and the dh/ event subscriptions of persistent
-- (clean session off) sessions, so a device gets the commands it missed — also after a restart.
CREATE TABLE mqtt_session (
    client_id TEXT PRIMARY KEY,
    user_id INTEGER NULL,
    clean INTEGER NOT NULL,
    connected INTEGER NOT NULL DEFAULT 0,
    connected_at INTEGER NULL,
    disconnected_at INTEGER NULL,
    disconnect_reason TEXT NULL
);

CREATE TABLE mqtt_subscription (
    client_id TEXT NOT NULL REFERENCES mqtt_session(client_id) ON DELETE CASCADE,
    filter TEXT NOT NULL,
    qos INTEGER NOT NULL,
    -- Commands stamped after this are owed to the session until confirmed or expired.
    since INTEGER NOT NULL,
    PRIMARY KEY (client_id, filter)
);
