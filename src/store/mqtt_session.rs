//! MQTT session records: presence per client id and the stored subscriptions of persistent sessions.

use std::collections::HashSet;

use super::{Sql, Store};
use crate::error::{ApiError, Result};
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

/// A session connected on node `$5` (parameters: client id, user id, clean, at, node id).
pub(super) const RECORD_CONNECTED: &str =
    "INSERT INTO mqtt_session (client_id, user_id, clean, connected, connected_at, node_id) \
     VALUES ($1, $2, $3, TRUE, $4, $5) ON CONFLICT(client_id) DO UPDATE SET \
     user_id = excluded.user_id, clean = excluded.clean, connected = TRUE, \
     connected_at = excluded.connected_at, node_id = excluded.node_id";

/// A session of node `$4` disconnected, unless it connected elsewhere since (parameters: at, reason,
/// client id, node id).
pub(super) const RECORD_DISCONNECTED: &str =
    "UPDATE mqtt_session SET connected = FALSE, disconnected_at = $1, disconnect_reason = $2 \
     WHERE client_id = $3 AND connected = TRUE AND node_id = $4";

/// The client ids of the persistent sessions stored in a SQLite database (read once, at start).
pub(super) async fn persistent_client_ids(pool: &sqlx::SqlitePool) -> sqlx::Result<HashSet<String>> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT client_id FROM mqtt_session WHERE clean = FALSE").fetch_all(pool).await?;
    Ok(ids.into_iter().collect())
}

impl Store {
    /// Whether `client_id` may have a persistent session stored; `false` means it has none, so a
    /// clean session connecting with it need not read its record (a connect storm of clean
    /// sessions reads nothing).
    ///
    /// On SQLite this hub is the only writer of the database, and it knows every client id it ever
    /// stored persistent: the ones stored at start and the ones it makes persistent since, noted
    /// before the statement that does it, so a connection that checks meanwhile reads the record.
    /// A client id that turns clean again stays noted (it costs a read, never a wrong answer). On
    /// PostgreSQL other instances store sessions too: always `true`.
    pub fn mqtt_session_may_be_persistent(&self, client_id: &str) -> bool {
        let Some(memos) = &self.memos else { return true };
        memos.persistent_sessions.lock().unwrap_or_else(|e| e.into_inner()).contains(client_id)
    }

    /// Notes `client_id` as possibly persistent (before a statement that may make it so).
    fn note_persistent(&self, client_id: &str) {
        if let Some(memos) = &self.memos {
            let mut ids = memos.persistent_sessions.lock().unwrap_or_else(|e| e.into_inner());
            if !ids.contains(client_id) {
                ids.insert(client_id.to_string());
            }
        }
    }

    /// The stored session of `client_id`, if any.
    pub async fn mqtt_session_get(&self, client_id: &str) -> Result<Option<StoredSession>> {
        let sql = Sql::new("SELECT clean, owner, connected, user_id, node_id FROM mqtt_session WHERE client_id = $1")
            .bind(client_id);
        self.db
            .fetch_optional(sql, |r| StoredSession {
                clean: r.bool(0),
                owner: owner_of(r.opt_text(1)),
                live: r.bool(2).then(|| (r.opt_i64(3), r.opt_text(4))),
            })
            .await
    }

    /// Makes `owner` the owner of `client_id`'s session, unless another owner holds it persistent.
    /// One statement, so two connections racing for a client id cannot both win. `false`: refused.
    pub async fn mqtt_session_claim(&self, client_id: &str, owner: Option<i64>, clean: bool) -> Result<bool> {
        if !clean {
            self.note_persistent(client_id);
        }
        let sql = Sql::new(
            "INSERT INTO mqtt_session (client_id, user_id, clean, owner) VALUES ($1, $2, $3, $4) \
             ON CONFLICT(client_id) DO UPDATE SET owner = excluded.owner, clean = excluded.clean \
             WHERE mqtt_session.clean = TRUE OR mqtt_session.owner IS NULL OR mqtt_session.owner = excluded.owner",
        )
        .bind(client_id)
        .bind(owner)
        .bind(clean)
        .bind(owner_text(owner));
        Ok(self.db.execute(sql).await? > 0)
    }

    /// Hands a session to a new owner (an anonymous session that authenticated).
    pub async fn mqtt_session_set_owner(&self, client_id: &str, owner: Option<i64>) -> Result<()> {
        let sql =
            Sql::new("UPDATE mqtt_session SET owner = $1 WHERE client_id = $2").bind(owner_text(owner)).bind(client_id);
        self.db.execute(sql).await?;
        Ok(())
    }

    /// Forgets the stored subscriptions of a session (a clean session replaces a persistent one).
    pub async fn mqtt_subscriptions_clear(&self, client_id: &str) -> Result<()> {
        self.db.execute(Sql::new("DELETE FROM mqtt_subscription WHERE client_id = $1").bind(client_id)).await?;
        Ok(())
    }

    /// Writes a batch of presence changes of sessions on node `node_id` in one transaction, in order.
    /// The transaction starts with a write, so it takes the write lock up front instead of failing to
    /// upgrade a read. Returns, per record, whether it changed the record: a disconnect does not when
    /// the session has meanwhile connected on another instance (or was marked lost).
    ///
    /// On SQLite the batch runs on a connection of its own in one blocking step (`sqlite_batch.rs`):
    /// through sqlx every statement of it was a hand-off to sqlx's worker thread and back, most of the
    /// database's share of a connect storm.
    pub async fn mqtt_session_records(&self, node_id: &str, records: Vec<SessionRecord>) -> Result<Vec<bool>> {
        for r in &records {
            if let SessionRecord::Connected { client_id, clean: false, .. } = r {
                self.note_persistent(client_id);
            }
        }
        if let Some(direct) = &self.presence {
            let direct = direct.clone();
            let node_id = node_id.to_string();
            let write = move || direct.lock().unwrap_or_else(|e| e.into_inner()).session_records(&node_id, &records);
            return tokio::task::spawn_blocking(write).await.unwrap_or_else(|_| Err(ApiError::internal()));
        }
        let mut tx = self.db.begin().await?;
        let mut applied = Vec::with_capacity(records.len());
        for r in &records {
            let sql = match r {
                SessionRecord::Connected { client_id, user_id, clean, at } => Sql::new(RECORD_CONNECTED)
                    .bind(client_id.as_str())
                    .bind(*user_id)
                    .bind(*clean)
                    .bind(*at)
                    .bind(node_id),
                SessionRecord::Disconnected { client_id, at, reason } => {
                    Sql::new(RECORD_DISCONNECTED).bind(*at).bind(*reason).bind(client_id.as_str()).bind(node_id)
                }
            };
            applied.push(tx.execute(sql).await? > 0);
        }
        tx.commit().await?;
        Ok(applied)
    }

    pub async fn mqtt_subscriptions(&self, client_id: &str) -> Result<Vec<StoredSubscription>> {
        let sql = Sql::new("SELECT filter, qos, since FROM mqtt_subscription WHERE client_id = $1 ORDER BY filter")
            .bind(client_id);
        self.db.fetch_all(sql, |r| StoredSubscription { filter: r.text(0), qos: r.i64(1) as u8, since: r.i64(2) }).await
    }

    /// Stores (or refreshes the QoS of) a subscription; an existing one keeps its `since`.
    pub async fn mqtt_subscription_put(&self, client_id: &str, filter: &str, qos: u8, since: i64) -> Result<()> {
        let sql = Sql::new(
            "INSERT INTO mqtt_subscription (client_id, filter, qos, since) VALUES ($1, $2, $3, $4) \
             ON CONFLICT(client_id, filter) DO UPDATE SET qos = excluded.qos",
        )
        .bind(client_id)
        .bind(filter)
        .bind(qos as i64)
        .bind(since);
        self.db.execute(sql).await?;
        Ok(())
    }

    pub async fn mqtt_subscription_delete(&self, client_id: &str, filter: &str) -> Result<()> {
        let sql =
            Sql::new("DELETE FROM mqtt_subscription WHERE client_id = $1 AND filter = $2").bind(client_id).bind(filter);
        self.db.execute(sql).await?;
        Ok(())
    }
}
