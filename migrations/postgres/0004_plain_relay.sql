-- Cluster mode: plain (non-dh/) MQTT publishes cross instances as NOTIFY hivehub_plain. A NOTIFY
-- payload must stay under 8000 bytes, so a larger message is parked here and only its id is notified;
-- the receiving instances read it back. Rows are transient: deleted a minute after they were written.
CREATE TABLE mqtt_plain_relay (
    id BIGSERIAL PRIMARY KEY,
    -- The relay's encoding of the message (JSON with the payload in base64).
    message TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX mqtt_plain_relay_created_at ON mqtt_plain_relay (created_at);
