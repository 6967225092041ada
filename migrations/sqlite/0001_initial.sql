-- hivehub schema (SQLite). Timestamps are epoch milliseconds (UTC); JSON documents are TEXT.
CREATE TABLE dh_user (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    login TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    password_salt TEXT NOT NULL DEFAULT '',
    role INTEGER NOT NULL,
    status INTEGER NOT NULL,
    login_attempts INTEGER NOT NULL DEFAULT 0,
    last_login INTEGER NULL,
    data TEXT NULL,
    intro_reviewed INTEGER NOT NULL DEFAULT 0,
    all_device_types_available INTEGER NOT NULL DEFAULT 1,
    entity_version INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE network (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NULL,
    entity_version INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE user_network (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES dh_user(id) ON DELETE CASCADE,
    network_id INTEGER NOT NULL REFERENCES network(id) ON DELETE CASCADE,
    UNIQUE (user_id, network_id)
);
CREATE INDEX user_network_network ON user_network(network_id);

CREATE TABLE device_type (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NULL,
    entity_version INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE user_device_type (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES dh_user(id) ON DELETE CASCADE,
    device_type_id INTEGER NOT NULL REFERENCES device_type(id) ON DELETE CASCADE,
    UNIQUE (user_id, device_type_id)
);
CREATE INDEX user_device_type_type ON user_device_type(device_type_id);

CREATE TABLE device (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    network_id INTEGER NULL REFERENCES network(id) ON DELETE CASCADE,
    device_type_id INTEGER NULL REFERENCES device_type(id) ON DELETE CASCADE,
    data TEXT NULL,
    blocked INTEGER NOT NULL DEFAULT 0,
    entity_version INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX device_network ON device(network_id);
CREATE INDEX device_device_type ON device(device_type_id);

CREATE TABLE configuration (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    value TEXT NOT NULL,
    entity_version INTEGER NOT NULL DEFAULT 0
);

-- Messages keep the device's network and type as they were at insert time: they are part of the
-- message, not foreign keys.
CREATE TABLE device_notification (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    network_id INTEGER NULL,
    device_type_id INTEGER NULL,
    notification TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    parameters TEXT NULL
);
CREATE INDEX device_notification_device_ts ON device_notification(device_id, timestamp, id);
CREATE INDEX device_notification_ts ON device_notification(timestamp, id);

CREATE TABLE device_command (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    network_id INTEGER NULL,
    device_type_id INTEGER NULL,
    command TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    user_id INTEGER NULL,
    parameters TEXT NULL,
    lifetime INTEGER NULL,
    status TEXT NULL,
    result TEXT NULL,
    is_updated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX device_command_device_ts ON device_command(device_id, timestamp, id);
CREATE INDEX device_command_device_updated ON device_command(device_id, last_updated, id);
CREATE INDEX device_command_ts ON device_command(timestamp, id);
CREATE INDEX device_command_updated ON device_command(last_updated, id);
