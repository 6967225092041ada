//! Cluster nodes: each instance's heartbeat, and the sessions of instances that stopped beating.

use super::{Sql, Store};
use crate::error::Result;

/// A session left connected by an instance that is gone.
#[derive(Debug, Clone)]
pub struct OrphanSession {
    pub client_id: String,
    pub user_id: Option<i64>,
}

impl Store {
    /// Records (or re-records) node `node_id` as alive at `now`.
    pub async fn node_register(&self, node_id: &str, now: i64) -> Result<()> {
        let sql = Sql::new(
            "INSERT INTO cluster_node (node_id, started_at, last_seen) VALUES ($1, $2, $2) \
             ON CONFLICT(node_id) DO UPDATE SET last_seen = excluded.last_seen",
        )
        .bind(node_id)
        .bind(now);
        self.db.execute(sql).await?;
        Ok(())
    }

    /// The heartbeat. `false`: the node's record is gone — the others took it for dead.
    pub async fn node_heartbeat(&self, node_id: &str, now: i64) -> Result<bool> {
        let sql = Sql::new("UPDATE cluster_node SET last_seen = $1 WHERE node_id = $2").bind(now).bind(node_id);
        Ok(self.db.execute(sql).await? > 0)
    }

    /// Forgets this node (a clean shutdown).
    pub async fn node_forget(&self, node_id: &str) -> Result<()> {
        self.db.execute(Sql::new("DELETE FROM cluster_node WHERE node_id = $1").bind(node_id)).await?;
        Ok(())
    }

    /// Forgets every node other than `me` silent since before `cutoff` (epoch ms), then marks the
    /// sessions no live node holds disconnected with reason `node-lost` at `now` and returns them. One
    /// transaction; when several survivors sweep at once, each session is returned by one of them (the
    /// update re-checks `connected` under the row lock).
    pub async fn nodes_sweep(&self, me: &str, cutoff: i64, now: i64) -> Result<Vec<OrphanSession>> {
        let mut tx = self.db.begin().await?;
        tx.execute(Sql::new("DELETE FROM cluster_node WHERE last_seen < $1 AND node_id <> $2").bind(cutoff).bind(me))
            .await?;
        let sql = Sql::new(
            "UPDATE mqtt_session SET connected = FALSE, disconnected_at = $1, disconnect_reason = 'node-lost' \
             WHERE connected = TRUE AND (node_id IS NULL OR node_id NOT IN (SELECT node_id FROM cluster_node)) \
             RETURNING client_id, user_id",
        )
        .bind(now);
        let orphans = tx.fetch_all(sql, |r| OrphanSession { client_id: r.text(0), user_id: r.opt_i64(1) }).await?;
        tx.commit().await?;
        Ok(orphans)
    }
}
