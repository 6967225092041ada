//! MQTT session records: presence per client id and the stored subscriptions of persistent sessions.

use sqlx::Row;

use super::Store;
use crate::error::Result;

/// A stored `dh/` subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub filter: String,
    pub qos: u8,
    pub since: i64,
}

impl Store {
    /// Records a connection. A clean session forgets what a previous persistent one stored; returns
    /// whether a persistent session existed (MQTT's "session present").
    pub async fn mqtt_session_connected(
        &self,
        client_id: &str,
        user_id: Option<i64>,
        clean: bool,
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let previous: Option<bool> = sqlx::query("SELECT clean FROM mqtt_session WHERE client_id = ?")
            .bind(client_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get::<bool, _>(0));
        if clean {
            sqlx::query("DELETE FROM mqtt_subscription WHERE client_id = ?").bind(client_id).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO mqtt_session (client_id, user_id, clean, connected, connected_at) VALUES (?, ?, ?, 1, ?) \
             ON CONFLICT(client_id) DO UPDATE SET user_id = excluded.user_id, clean = excluded.clean, connected = 1, \
             connected_at = excluded.connected_at",
        )
        .bind(client_id)
        .bind(user_id)
        .bind(clean)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(!clean && previous == Some(false))
    }

    pub async fn mqtt_session_disconnected(&self, client_id: &str, now: i64, reason: &str) -> Result<()> {
        sqlx::query(
            "UPDATE mqtt_session SET connected = 0, disconnected_at = ?, disconnect_reason = ? WHERE client_id = ?",
        )
        .bind(now)
        .bind(reason)
        .bind(client_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn mqtt_subscriptions(&self, client_id: &str) -> Result<Vec<StoredSubscription>> {
        let rows = sqlx::query("SELECT filter, qos, since FROM mqtt_subscription WHERE client_id = ? ORDER BY filter")
            .bind(client_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| StoredSubscription { filter: r.get(0), qos: r.get::<i64, _>(1) as u8, since: r.get(2) })
            .collect())
    }

    /// Stores (or refreshes the QoS of) a subscription; an existing one keeps its `since`.
    pub async fn mqtt_subscription_put(&self, client_id: &str, filter: &str, qos: u8, since: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO mqtt_subscription (client_id, filter, qos, since) VALUES (?, ?, ?, ?) \
             ON CONFLICT(client_id, filter) DO UPDATE SET qos = excluded.qos",
        )
        .bind(client_id)
        .bind(filter)
        .bind(qos as i64)
        .bind(since)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn mqtt_subscription_delete(&self, client_id: &str, filter: &str) -> Result<()> {
        sqlx::query("DELETE FROM mqtt_subscription WHERE client_id = ? AND filter = ?")
            .bind(client_id)
            .bind(filter)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
