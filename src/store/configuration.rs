//! Configuration entries (name → string value).

use sqlx::Row;

use super::Store;
use crate::error::Result;
use crate::model::Configuration;

impl Store {
    pub async fn config_get(&self, name: &str) -> Result<Option<Configuration>> {
        let row = sqlx::query("SELECT name, value, entity_version FROM configuration WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Configuration { name: r.get(0), value: r.get(1), entity_version: r.get(2) }))
    }

    /// Creates or updates an entry and returns it.
    pub async fn config_put(&self, name: &str, value: &str) -> Result<Configuration> {
        let r = sqlx::query(
            "INSERT INTO configuration (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET \
             value = excluded.value, entity_version = configuration.entity_version + 1 \
             RETURNING name, value, entity_version",
        )
        .bind(name)
        .bind(value)
        .fetch_one(&self.pool)
        .await?;
        Ok(Configuration { name: r.get(0), value: r.get(1), entity_version: r.get(2) })
    }

    pub async fn config_delete(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM configuration WHERE name = ?").bind(name).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    /// A numeric configuration value, or `default` when missing or not a number.
    pub async fn config_i64(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self.config_get(name).await?.and_then(|c| c.value.trim().parse().ok()).unwrap_or(default))
    }
}
