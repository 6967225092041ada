//! SQL storage, one file per entity. Only this module knows SQL; the service layer calls `Store`
//! methods. The database URL picks the backend: SQLite (`sqlite://PATH`, WAL) or PostgreSQL
//! (`postgres://` / `postgresql://`). Entity files hold SQL both accept; `sql.rs` is the seam, and
//! the migrations live side by side in `migrations/sqlite/` and `migrations/postgres/`.

mod backup;
mod breaker;
mod cluster_node;
mod command;
mod configuration;
pub mod copy;
mod device;
mod memo;
mod mqtt_session;
mod network;
mod notification;
pub mod retained;
mod scope;
mod seed;
mod sql;
mod sqlite_batch;
pub mod tail;
mod user;
pub mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use cluster_node::OrphanSession;
pub use command::{CommandUpdate, NewCommand};
pub use device::{DeviceListQuery, DeviceUpdate};
pub use network::GroupListQuery;
pub use notification::{MessageQuery, NewNotification};
pub use scope::{DeviceScope, MessageFilter};
pub use seed::SeedOutcome;
pub use sql::Backend;
pub use user::{UserListQuery, UserUpdate};

pub(crate) use sql::{Db, Row, Sql, Tx};

use crate::config::DatabaseSettings;
use crate::error::StartupError;

#[derive(Clone)]
pub struct Store {
    pub(crate) db: Db,
    /// Memos of user and device lookups (SQLite only; see `memo.rs`).
    memos: Option<std::sync::Arc<memo::Memos>>,
    /// The connection that writes MQTT presence records (SQLite only; see
    /// `Store::mqtt_session_records`).
    presence: Option<std::sync::Arc<std::sync::Mutex<sqlite_batch::SqliteBatch>>>,
}

/// The accepted database URL forms, for error messages.
pub const URL_FORMS: &str = "sqlite://PATH, postgres://USER:PASSWORD@HOST:PORT/DATABASE or postgresql://...";

/// How long a request waits for a database connection before answering 503 (`acquire_timeout_secs`,
/// default 10): long enough that a burst queueing for the pool is served, short enough that an
/// unreachable database fails requests in seconds rather than minutes.
fn acquire_timeout(settings: &DatabaseSettings) -> Duration {
    Duration::from_secs(settings.acquire_timeout_secs.max(1))
}

impl Store {
    /// Opens (creating when missing) the database named by the URL and runs the embedded migrations.
    pub async fn open(settings: &DatabaseSettings) -> Result<Store, StartupError> {
        let url = settings.url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::open_postgres(url, settings).await;
        }
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).ok_or_else(|| {
            StartupError(format!("unsupported database url `{}` (accepted: {URL_FORMS})", redact(url)))
        })?;
        Self::open_sqlite(path, settings).await
    }

    async fn open_sqlite(path: &str, settings: &DatabaseSettings) -> Result<Store, StartupError> {
        let path = path.split('?').next().unwrap_or(path);
        if let Some(dir) = Path::new(path).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StartupError(format!("cannot create {}: {e}", dir.display())))?;
            }
        }
        let synchronous = match settings.synchronous.to_ascii_lowercase().as_str() {
            "full" => SqliteSynchronous::Full,
            "off" => SqliteSynchronous::Off,
            "extra" => SqliteSynchronous::Extra,
            _ => SqliteSynchronous::Normal,
        };
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(|e| StartupError(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30))
            .pragma("cache_size", "-32768")
            .pragma("temp_store", "memory")
            // `namePattern` / `loginPattern` are SQL LIKE, case-sensitive as in the reference (PostgreSQL).
            .pragma("case_sensitive_like", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections.max(2))
            .min_connections(1)
            .acquire_timeout(acquire_timeout(settings))
            // sqlx pings a pooled connection before handing it out unless told not to: for a file
            // that is a round trip to the connection's thread per query (4 % of the CPU of an MQTT
            // connect storm), and a connection to a local file does not go stale.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| StartupError(format!("cannot open {path}: {e}")))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StartupError(format!("migration failed: {e}")))?;
        let persistent = mqtt_session::persistent_client_ids(&pool)
            .await
            .map_err(|e| StartupError(format!("cannot read the stored MQTT sessions: {e}")))?;
        let memos = memo::Memos::new(persistent);
        let presence = sqlite_batch::SqliteBatch::open_sqlite(&pool)
            .await
            .map_err(|e| StartupError(format!("cannot open {path}: {e}")))?;
        let presence = Some(std::sync::Arc::new(std::sync::Mutex::new(presence)));
        Ok(Store { db: Db::Sqlite(pool), memos: Some(std::sync::Arc::new(memos)), presence })
    }

    async fn open_postgres(url: &str, settings: &DatabaseSettings) -> Result<Store, StartupError> {
        // sqlx names only `postgres://`; both schemes mean the same.
        let normalised = match url.strip_prefix("postgresql://") {
            Some(rest) => format!("postgres://{rest}"),
            None => url.to_string(),
        };
        let shown = redact(url);
        let options = PgConnectOptions::from_str(&normalised)
            .map_err(|e| StartupError(format!("bad database url `{shown}`: {e}")))?
            .application_name("hivehub");
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(2))
            .min_connections(1)
            .acquire_timeout(acquire_timeout(settings))
            .connect_with(options)
            .await
            .map_err(|e| StartupError(format!("cannot connect to PostgreSQL at `{shown}`: {e}")))?;
        // sqlx takes an advisory lock around the migrations: instances starting together apply them once.
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StartupError(format!("migration failed: {e}")))?;
        Ok(Store { db: Db::Postgres(breaker::Pg::new(pool)), memos: None, presence: None })
    }

    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    pub async fn close(&self) {
        self.db.close().await;
    }

    /// The connection pool's use now.
    pub fn pool_stats(&self) -> PoolStats {
        let (size, idle, max) = match &self.db {
            Db::Sqlite(pool) => (pool.size(), pool.num_idle(), pool.options().get_max_connections()),
            Db::Postgres(pg) => (pg.size(), pg.num_idle(), pg.options().get_max_connections()),
        };
        PoolStats { size, idle, max }
    }

    /// One round trip to the database (readiness checks).
    pub async fn ping(&self) -> crate::error::Result<()> {
        self.db.fetch_one(Sql::new("SELECT CAST(1 AS BIGINT)"), |r| r.i64(0)).await.map(|_| ())
    }
}

/// Connections of the pool: open, idle among them, and the limit.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    pub size: u32,
    pub idle: usize,
    pub max: u32,
}

/// A database URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// Parses a JSON TEXT column.
pub(crate) fn json_column(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok()).filter(|v: &serde_json::Value| !v.is_null())
}

/// Serialises an optional JSON document for a TEXT column.
pub(crate) fn json_text(value: &Option<serde_json::Value>) -> Option<String> {
    value.as_ref().filter(|v| !v.is_null()).map(|v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unsupported_url_names_the_accepted_forms() {
        let mut settings = crate::config::Settings::defaults().database;
        for url in ["mysql://root:secret@localhost/hub", "data/hivehub.db", "postgre://x@y/z"] {
            settings.url = url.into();
            let Err(e) = Store::open(&settings).await else { panic!("{url} accepted") };
            assert!(
                e.0.contains("sqlite://PATH") && e.0.contains("postgres://") && e.0.contains("postgresql://"),
                "{e}"
            );
            assert!(!e.0.contains("secret"), "the password is not shown: {e}");
        }
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact("postgres://hub:s3cret@db:5432/hub?sslmode=require"),
            "postgres://hub:***@db:5432/hub?sslmode=require"
        );
        assert_eq!(redact("postgres://hub@db/hub"), "postgres://hub@db/hub");
        assert_eq!(redact("sqlite://data/hivehub.db"), "sqlite://data/hivehub.db");
    }
}
