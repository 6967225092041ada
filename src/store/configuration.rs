//! Configuration entries (name → string value).

use super::{Row, Sql, Store};
use crate::error::Result;
use crate::model::Configuration;

impl Store {
    pub async fn config_get(&self, name: &str) -> Result<Option<Configuration>> {
        let sql = Sql::new("SELECT name, value, entity_version FROM configuration WHERE name = $1").bind(name);
        self.db.fetch_optional(sql, configuration_from_row).await
    }

    /// Creates or updates an entry and returns it.
    pub async fn config_put(&self, name: &str, value: &str) -> Result<Configuration> {
        let sql = Sql::new(
            "INSERT INTO configuration (name, value) VALUES ($1, $2) ON CONFLICT(name) DO UPDATE SET \
             value = excluded.value, entity_version = configuration.entity_version + 1 \
             RETURNING name, value, entity_version",
        )
        .bind(name)
        .bind(value);
        self.db.fetch_one(sql, configuration_from_row).await
    }

    /// Stores `value` unless the entry already holds a non-empty value, and returns what the entry
    /// holds afterwards: of hubs racing to generate a value (the JWT secret, several instances
    /// starting on one empty database) the first one wins and every one gets the winner.
    pub async fn config_put_if_absent(&self, name: &str, value: &str) -> Result<Configuration> {
        let sql = Sql::new(
            "INSERT INTO configuration (name, value) VALUES ($1, $2) ON CONFLICT(name) DO UPDATE SET \
             value = excluded.value, entity_version = configuration.entity_version + 1 WHERE configuration.value = ''",
        )
        .bind(name)
        .bind(value);
        self.db.execute(sql).await?;
        let read = Sql::new("SELECT name, value, entity_version FROM configuration WHERE name = $1").bind(name);
        self.db.fetch_one(read, configuration_from_row).await
    }

    pub async fn config_delete(&self, name: &str) -> Result<bool> {
        Ok(self.db.execute(Sql::new("DELETE FROM configuration WHERE name = $1").bind(name)).await? > 0)
    }

    /// A numeric configuration value, or `default` when missing or not a number.
    pub async fn config_i64(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self.config_get(name).await?.and_then(|c| c.value.trim().parse().ok()).unwrap_or(default))
    }
}

fn configuration_from_row(r: &Row) -> Configuration {
    Configuration { name: r.text(0), value: r.text(1), entity_version: r.i64(2) }
}
