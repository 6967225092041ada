//! MQTT session records: presence per client id and the stored subscriptions of persistent sessions.

use sqlx::Row;

use super::Store;
use crate::error::Result;
use crate::model::{SessionRecord, StoredSession, StoredSubscription};

/// The `owner` column: the user id, or `anonymous`.
fn owner_text(owner: Option<i64>) -> String {
    owner.map_or_else(|| "anonymous".to_string(), |id| id.to_string())
}

fn owner_of(text: Option<String>) -> Option<Option<i64>> {
    match text.as_deref() {
        None => None,
        Some("anonymous") => Some(None),
        // An unreadable owner owns the session for nobody: refuse rather than hand it out.
        Some(other) => Some(Some(other.parse().unwrap_or(i64::MIN))),
    }
}

impl Store {
    /// The stored session of `client_id`, if any.
    pub async fn mqtt_session_get(&self, client_id: &str) -> Result<Option<StoredSession>> {
        let row = sqlx::query("SELECT clean, owner FROM mqtt_session WHERE client_id = ?")
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| StoredSession { clean: r.get::<bool, _>(0), owner: owner_of(r.get(1)) }))
    }

    /// Makes `owner` the owner of `client_id`'s session, unless another owner holds it persistent.
    /// One statement, so two connections racing for a client id cannot both win. `false`: refused.
    pub async fn mqtt_session_claim(&self, client_id: &str, owner: Option<i64>, clean: bool) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO mqtt_session (client_id, user_id, clean, owner) VALUES (?, ?, ?, ?) \
             ON CONFLICT(client_id) DO UPDATE SET owner = excluded.owner, clean = excluded.clean \
             WHERE mqtt_session.clean = 1 OR mqtt_session.owner IS NULL OR mqtt_session.owner = excluded.owner",
        )
        .bind(client_id)
        .bind(owner)
        .bind(clean)
        .bind(owner_text(owner))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Hands a session to a new owner (an anonymous session that authenticated).
    pub async fn mqtt_session_set_owner(&self, client_id: &str, owner: Option<i64>) -> Result<()> {
        sqlx::query("UPDATE mqtt_session SET owner = ? WHERE client_id = ?")
            .bind(owner_text(owner))
            .bind(client_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets the stored subscriptions of a session (a clean session replaces a persistent one).
    pub async fn mqtt_subscriptions_clear(&self, client_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM mqtt_subscription WHERE client_id = ?").bind(client_id).execute(&self.pool).await?;
        Ok(())
    }

    /// Writes a batch of presence changes in one transaction, in order. The transaction starts with a
    /// write, so it takes the write lock up front instead of failing to upgrade a read.
    pub async fn mqtt_session_records(&self, records: &[SessionRecord]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for r in records {
            match r {
                SessionRecord::Connected { client_id, user_id, clean, at } => {
                    sqlx::query(
                        "INSERT INTO mqtt_session (client_id, user_id, clean, connected, connected_at) \
                         VALUES (?, ?, ?, 1, ?) ON CONFLICT(client_id) DO UPDATE SET user_id = excluded.user_id, \
                         clean = excluded.clean, connected = 1, connected_at = excluded.connected_at",
                    )
                    .bind(client_id)
                    .bind(user_id)
                    .bind(clean)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                }
                SessionRecord::Disconnected { client_id, at, reason } => {
                    sqlx::query(
                        "UPDATE mqtt_session SET connected = 0, disconnected_at = ?, disconnect_reason = ? \
                         WHERE client_id = ?",
                    )
                    .bind(at)
                    .bind(*reason)
                    .bind(client_id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
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
