//! The integration tests on SQLite: each hub on a fresh SQLite file in its temporary directory.

pub type TestHub = crate::common::TestHubOn<crate::common::Sqlite>;

/// The backend guard every test starts with (see `main.rs`): SQLite is always there.
macro_rules! skip_unless_backend {
    () => {};
}

// The same list as in `postgres.rs` (and `TEST_FILES` in `main.rs`).
#[path = "admin.rs"]
mod admin;
#[path = "binary.rs"]
mod binary;
#[path = "cli.rs"]
mod cli;
#[path = "config.rs"]
mod config;
#[path = "firmware.rs"]
mod firmware;
#[path = "fuzz.rs"]
mod fuzz;
#[path = "lookups.rs"]
mod lookups;
#[path = "messages.rs"]
mod messages;
#[path = "metrics.rs"]
mod metrics;
#[path = "mqtt.rs"]
mod mqtt;
#[path = "mqtt_flow.rs"]
mod mqtt_flow;
#[path = "mqtt_sessions.rs"]
mod mqtt_sessions;
#[path = "net.rs"]
mod net;
#[path = "openapi.rs"]
mod openapi;
#[path = "retention.rs"]
mod retention;
#[path = "security.rs"]
mod security;
#[path = "ws.rs"]
mod ws;

// SQLite only (`SQLITE_ONLY_FILES` in `main.rs`): the admin console and its browser tests.
#[path = "console.rs"]
mod console;
