//! SQL storage, one file per entity. Only this module knows SQL; the service layer calls `Store`
//! methods. SQLite (WAL) today; a PostgreSQL backend is picked from the database URL once it exists —
//! its migrations go to `migrations/postgres/` beside `migrations/sqlite/`.

mod command;
mod configuration;
mod device;
mod mqtt_session;
mod network;
mod notification;
mod scope;
mod seed;
mod user;
pub mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use command::{CommandUpdate, NewCommand};
pub use device::{DeviceListQuery, DeviceUpdate};
pub use network::GroupListQuery;
pub use notification::{MessageQuery, NewNotification};
pub use scope::{DeviceScope, MessageFilter};
pub use seed::SeedOutcome;
pub use user::{UserListQuery, UserUpdate};

use crate::config::DatabaseSettings;
use crate::error::StartupError;

#[derive(Clone)]
pub struct Store {
    pub(crate) pool: SqlitePool,
}

impl Store {
    /// Opens (creating when missing) the database and runs the embedded migrations.
    pub async fn open(settings: &DatabaseSettings) -> Result<Store, StartupError> {
        let url = settings.url.trim();
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| StartupError(format!("unsupported database url `{url}` (expected sqlite://PATH)")))?;
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
            .connect_with(options)
            .await
            .map_err(|e| StartupError(format!("cannot open {path}: {e}")))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StartupError(format!("migration failed: {e}")))?;
        Ok(Store { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
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
