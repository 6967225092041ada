//! Integration tests: the real hub on port 0 with a fresh database, over real HTTP — the whole suite
//! once per database backend, in this one test binary.
//!
//! # One test body, two backends
//!
//! The test files (`admin.rs`, `messages.rs`, ...) are compiled twice, as modules of `sqlite.rs` and
//! of `postgres.rs` (`#[path = "admin.rs"] mod admin;`), so every test exists as
//! `sqlite::admin::...` and `postgres::admin::...` (`cargo test --test api sqlite::` runs one backend).
//! A test file takes what depends on the backend from `super::`:
//!
//! - `super::TestHub`: `common::TestHubOn<common::Sqlite>` or `common::TestHubOn<common::Postgres>`.
//!   Each hub gets a fresh database: a SQLite file in its temporary directory, or a database of its
//!   own (`hub_<n>`) on a throwaway PostgreSQL server the test process starts once (`common::pg`);
//!   `restart()` keeps the database. Raw SQL on the hub's database goes through `hub.db()` /
//!   `hub.sql_execute` / `hub.sql_fetch_all` / `hub.sql_fetch_one` (portable SQL, `$1` placeholders;
//!   `common::sql`), and `hub.database_settings()` are the settings the hub really uses.
//! - `skip_unless_backend!();`, the first line of every test: nothing on SQLite; on PostgreSQL, it
//!   returns at once (the test passes and prints `skipped: PostgreSQL binaries not found ...`) when
//!   there are no PostgreSQL binaries, and fails instead when `HIVEHUB_TEST_REQUIRE_POSTGRES=1` (CI).
//!   A test cannot be skipped from inside `TestHub::start` (a callee cannot return from its caller,
//!   and a panic is a failure), and the test attribute cannot be replaced without a proc-macro crate,
//!   so the skip is this one statement, a `macro_rules!` defined by each backend module before its
//!   module list (macros are scoped textually, so the test files see their backend's version). The
//!   test `every_test_starts_with_the_backend_guard` below checks that no test lacks it; without it a
//!   PostgreSQL variant fails at `TestHub::start` on a machine without PostgreSQL, saying so.
//!
//! A module that only makes sense on one backend is declared in that backend's list only (with a
//! comment there); a single assertion about SQLite defaults checks `super::TestHub::BACKEND`.
//!
//! Tests that need a PostgreSQL server of their own (to stop and restart it) use
//! `common::pg::PgServer::dedicated()` (see `postgres.rs`).

// The test files are compiled once per backend on purpose.
#![allow(clippy::duplicate_mod)]

mod common;
mod postgres;
mod sqlite;

/// The test files compiled for both backends (`sqlite.rs` and `postgres.rs` declare the same list).
const TEST_FILES: [(&str, &str); 17] = [
    ("admin.rs", include_str!("admin.rs")),
    ("binary.rs", include_str!("binary.rs")),
    ("cli.rs", include_str!("cli.rs")),
    ("config.rs", include_str!("config.rs")),
    ("firmware.rs", include_str!("firmware.rs")),
    ("fuzz.rs", include_str!("fuzz.rs")),
    ("lookups.rs", include_str!("lookups.rs")),
    ("messages.rs", include_str!("messages.rs")),
    ("metrics.rs", include_str!("metrics.rs")),
    ("mqtt.rs", include_str!("mqtt.rs")),
    ("mqtt_flow.rs", include_str!("mqtt_flow.rs")),
    ("mqtt_sessions.rs", include_str!("mqtt_sessions.rs")),
    ("net.rs", include_str!("net.rs")),
    ("openapi.rs", include_str!("openapi.rs")),
    ("retention.rs", include_str!("retention.rs")),
    ("security.rs", include_str!("security.rs")),
    ("ws.rs", include_str!("ws.rs")),
];

/// The test files declared in `postgres.rs` only (they need PostgreSQL itself, or several instances
/// on one database).
const POSTGRES_ONLY_FILES: [(&str, &str); 5] = [
    ("cluster_control.rs", include_str!("cluster_control.rs")),
    ("cluster_messages.rs", include_str!("cluster_messages.rs")),
    ("cluster_plain.rs", include_str!("cluster_plain.rs")),
    ("pg_only.rs", include_str!("pg_only.rs")),
    ("readiness.rs", include_str!("readiness.rs")),
];

/// The test files declared in `sqlite.rs` only (the console's browser tests: the console is a client
/// of the HTTP API, which behaves the same on both backends, and one browser run is enough).
const SQLITE_ONLY_FILES: [(&str, &str); 1] = [("console.rs", include_str!("console.rs"))];

/// Every `#[test]` / `#[tokio::test]` function of the test files starts with `skip_unless_backend!();`.
#[test]
fn every_test_starts_with_the_backend_guard() {
    let mut missing = Vec::new();
    for (file, text) in TEST_FILES.iter().chain(&POSTGRES_ONLY_FILES).chain(&SQLITE_ONLY_FILES) {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            if line != "#[test]" && !line.starts_with("#[tokio::test") {
                continue;
            }
            // The signature (after any other attributes) ends with `{`; the guard is the next line.
            let Some(sig) =
                (i + 1..lines.len()).find(|&j| lines[j].contains("fn ") && lines[j].trim_end().ends_with('{'))
            else {
                missing.push(format!("{file}:{}", i + 1));
                continue;
            };
            if lines.get(sig + 1).map(|l| l.trim()) != Some("skip_unless_backend!();") {
                missing.push(format!("{file}:{} {}", sig + 1, lines[sig].trim()));
            }
        }
    }
    assert!(missing.is_empty(), "tests without `skip_unless_backend!();` as their first line: {missing:#?}");
}

/// Every test file is in the list above (a new file must be declared in `sqlite.rs` and `postgres.rs`
/// and listed there).
#[test]
fn every_test_file_is_checked() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".rs") && !["main.rs", "sqlite.rs", "postgres.rs"].contains(&n.as_str()))
        .collect();
    files.sort();
    let mut listed: Vec<&str> =
        TEST_FILES.iter().chain(&POSTGRES_ONLY_FILES).chain(&SQLITE_ONLY_FILES).map(|(name, _)| *name).collect();
    listed.sort();
    assert_eq!(files, listed);
}
