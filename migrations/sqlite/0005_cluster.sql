-- Cluster mode: the instances sharing this database, each with a heartbeat; the instance holding
-- each live MQTT session; and retained plain-topic messages, which every instance serves.
CREATE TABLE cluster_node (
    node_id TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL,
    -- Epoch ms of the last heartbeat; an instance silent past [cluster] node_timeout_secs is dead
    -- and its sessions are marked disconnected (reason 'node-lost') by a survivor.
    last_seen INTEGER NOT NULL
);
-- The instance a connected session lives on (NULL: recorded before cluster mode).
ALTER TABLE mqtt_session ADD COLUMN node_id TEXT NULL;
CREATE TABLE mqtt_retained (
    topic TEXT PRIMARY KEY,
    -- Base64 of the payload bytes.
    payload TEXT NOT NULL,
    qos INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
