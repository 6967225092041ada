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
#[path = "config.rs"]
mod config;
#[path = "firmware.rs"]
mod firmware;
#[path = "fuzz.rs"]
mod fuzz;
#[path = "messages.rs"]
mod messages;
#[path = "mqtt.rs"]
mod mqtt;
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
