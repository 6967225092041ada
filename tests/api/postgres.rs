//! The integration tests on PostgreSQL: each hub on a database of its own on the throwaway server of
//! the test process (`common::pg`). Without PostgreSQL binaries every test here is skipped (passes,
//! printing why), unless `HIVEHUB_TEST_REQUIRE_POSTGRES=1`.

pub type TestHub = crate::common::TestHubOn<crate::common::Postgres>;

/// The backend guard every test starts with (see `main.rs`): returns, passed, without PostgreSQL.
macro_rules! skip_unless_backend {
    () => {
        if crate::common::pg::skip() {
            return;
        }
    };
}

// The same list as in `sqlite.rs` (and `TEST_FILES` in `main.rs`).
#[path = "admin.rs"]
mod admin;
// Runs `hivehub serve` with `HIVEHUB__DATABASE__URL` of a database of the test's directory; its one
// assertion about the default SQLite file is made on SQLite only.
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

// PostgreSQL only (listed in `POSTGRES_ONLY_FILES` in `main.rs`): these tests need PostgreSQL itself
// (a dedicated server stopped and restarted under a running hub; `migrate-db` from SQLite into a
// database on the server), or several hub instances on one database (cluster mode).
#[path = "pg_only.rs"]
mod pg_only;
// Readiness and fast 503s while a server of its own is stopped.
#[path = "readiness.rs"]
mod readiness;
// Cluster mode: control across instances (takeover, revocations, deleted devices, node-lost).
#[path = "cluster_control.rs"]
mod cluster_control;
// Cluster mode: messages across instances (every transport, commands, kill -9 of an instance).
#[path = "cluster_messages.rs"]
mod cluster_messages;
// Cluster mode: plain MQTT topics and retained messages across instances.
#[path = "cluster_plain.rs"]
mod cluster_plain;

/// The harness itself: a dedicated server keeps its data and port across `stop` / `start`, and the
/// shared server gives every hub a database of its own.
mod harness {
    use crate::common::pg::{self, PgServer};
    use crate::common::sql::TestDb;

    #[tokio::test]
    async fn a_dedicated_server_keeps_its_data_across_a_restart() {
        skip_unless_backend!();
        let server = PgServer::dedicated();
        let name = server.create_database().await;
        let url = server.url(&name);
        let db = TestDb::connect(&url).await;
        db.execute("CREATE TABLE kept (id BIGINT PRIMARY KEY, label TEXT NOT NULL)", &[]).await;
        db.execute("INSERT INTO kept (id, label) VALUES ($1, $2)", &[7.into(), "seven".into()]).await;
        db.close().await;
        let port = server.port();

        server.stop();
        assert!(!server.is_running());
        let refused = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await;
        assert!(refused.is_err(), "still accepting connections after stop");

        server.start();
        assert!(server.is_running());
        assert_eq!(server.port(), port, "the URL stays valid");
        let db = TestDb::connect(&url).await;
        let rows = db.fetch_all("SELECT id, label FROM kept", &[]).await;
        assert_eq!(rows, vec![vec![serde_json::json!(7), serde_json::json!("seven")]]);
        db.close().await;

        // Dropping it stops it and removes its directory.
        let dir = server.data_dir();
        drop(server);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[tokio::test]
    async fn every_hub_gets_a_database_of_its_own_on_the_shared_server() {
        skip_unless_backend!();
        let (a, lease_a) = pg::DbLease::create().await;
        let (b, lease_b) = pg::DbLease::create().await;
        assert_ne!(a, b);
        let server = pg::shared().unwrap();
        assert!(a.starts_with(&format!("postgres://postgres@127.0.0.1:{}/hub_", server.port())), "{a}");
        for url in [&a, &b] {
            let db = TestDb::connect(url).await;
            assert_eq!(db.fetch_one("SELECT 1 + 1", &[]).await, vec![serde_json::json!(2)]);
            db.close().await;
        }
        // Dropped in the background once the lease is gone.
        drop((lease_a, lease_b));
        let admin = TestDb::connect(&server.url("postgres")).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        for url in [&a, &b] {
            let name = url.rsplit('/').next().unwrap();
            let count = "SELECT COUNT(*) FROM pg_database WHERE datname = $1";
            while admin.fetch_one(count, &[name.into()]).await != vec![serde_json::json!(0)] {
                assert!(std::time::Instant::now() < deadline, "{name} was not dropped");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        admin.close().await;
    }
}

/// Startup on PostgreSQL, where several instances may share one database.
mod startup {
    use hivehub::App;
    use serde_json::json;

    use crate::common::{settings_for, ADMIN_LOGIN, ADMIN_PASSWORD};

    /// Hubs starting at the same moment on one empty database set it up once: neither fails, there is
    /// one administrator, and one JWT secret (each hub accepts the other's tokens).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hubs_starting_together_on_an_empty_database_set_it_up_once() {
        skip_unless_backend!();
        let dir = tempfile::tempdir().unwrap();
        let database = super::TestHub::provision(dir.path()).await;
        let settings = settings_for(&database.url);
        let starts = (0..3).map(|_| App::start(settings.clone()));
        let hubs: Vec<App> =
            futures_util::future::join_all(starts).await.into_iter().map(|r| r.expect("every hub starts")).collect();
        let client = reqwest::Client::new();
        let mut tokens = Vec::new();
        for hub in &hubs {
            let login: serde_json::Value = client
                .post(format!("http://{}/api/rest/token", hub.http_addr))
                .json(&json!({"login": ADMIN_LOGIN, "password": ADMIN_PASSWORD}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            tokens.push(login["accessToken"].as_str().expect("the administrator logs in").to_string());
        }
        for hub in &hubs {
            for token in &tokens {
                let users: serde_json::Value = client
                    .get(format!("http://{}/api/rest/user", hub.http_addr))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let logins: Vec<&str> =
                    users.as_array().unwrap().iter().map(|u| u["login"].as_str().unwrap()).collect();
                assert_eq!(logins, [ADMIN_LOGIN], "one administrator, and every hub accepts every token");
            }
        }
        for hub in hubs {
            hub.shutdown().await;
        }
    }
}
