//! Device notifications: queries, history for polls, and the insert used by the group-commit writer.

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::scope::MessageFilter;
use super::{json_column, json_text, Store};
use crate::error::Result;
use crate::model::Notification;

const COLUMNS: &str = "id, device_id, network_id, device_type_id, notification, timestamp, parameters";

fn notification_from_row(r: &SqliteRow) -> Notification {
    Notification {
        id: r.get("id"),
        notification: r.get("notification"),
        device_id: r.get("device_id"),
        network_id: r.get("network_id"),
        device_type_id: r.get("device_type_id"),
        timestamp: r.get("timestamp"),
        parameters: json_column(r.get("parameters")),
    }
}

/// A notification to store; the writer assigns id and (unless given) the timestamp.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub device_id: String,
    pub network_id: Option<i64>,
    pub device_type_id: Option<i64>,
    pub notification: String,
    pub timestamp: Option<i64>,
    pub parameters: Option<serde_json::Value>,
}

/// `GET /device/{id}/notification|command` query (both message kinds).
#[derive(Debug, Clone, Default)]
pub struct MessageQuery {
    pub device_id: String,
    /// Exclusive bounds on `timestamp`.
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub names: Option<Vec<String>>,
    /// Commands only.
    pub status: Option<String>,
    /// Commands only: only updated commands, ranged and sorted by `last_updated`.
    pub updated_only: bool,
    /// `timestamp`, `notification`/`command` or `status`.
    pub sort_field: &'static str,
    pub descending: bool,
    pub take: i64,
    pub skip: i64,
}

impl MessageQuery {
    pub(crate) fn push(&self, qb: &mut QueryBuilder<'_, Sqlite>, name_col: &str) {
        let time_col = if self.updated_only { "last_updated" } else { "timestamp" };
        qb.push(" WHERE device_id = ").push_bind(self.device_id.clone());
        if self.updated_only {
            qb.push(" AND is_updated = 1");
        }
        if let Some(s) = self.start {
            qb.push(format!(" AND {time_col} > ")).push_bind(s);
        }
        if let Some(e) = self.end {
            qb.push(format!(" AND {time_col} < ")).push_bind(e);
        }
        if let Some(names) = &self.names {
            qb.push(format!(" AND {name_col} IN ("));
            let mut sep = qb.separated(", ");
            for n in names {
                sep.push_bind(n.clone());
            }
            qb.push(")");
        }
        if let Some(s) = &self.status {
            qb.push(" AND status = ").push_bind(s.clone());
        }
        let dir = if self.descending { "DESC" } else { "ASC" };
        let sort = if self.sort_field == "timestamp" { time_col } else { self.sort_field };
        qb.push(format!(" ORDER BY {sort} {dir}, {time_col} {dir}, id {dir} LIMIT "));
        qb.push_bind(self.take).push(" OFFSET ").push_bind(self.skip);
    }
}

/// Trims a history page so it never ends in the middle of a millisecond: a client resuming from the
/// last timestamp it received must not skip the rest of that millisecond. `rows` holds up to
/// `limit + 1` rows in ascending cursor order; returns `None` when a refetch of the whole first
/// millisecond is needed (more rows share it than `limit`).
pub(crate) fn trim_to_whole_millis<T>(mut rows: Vec<T>, limit: usize, cursor: impl Fn(&T) -> i64) -> Option<Vec<T>> {
    if rows.len() <= limit {
        return Some(rows);
    }
    let boundary = cursor(&rows[limit]);
    rows.truncate(limit);
    while rows.last().is_some_and(|r| cursor(r) == boundary) {
        rows.pop();
    }
    if rows.is_empty() {
        None
    } else {
        Some(rows)
    }
}

impl Store {
    pub async fn notification_get(&self, device_id: &str, id: i64) -> Result<Option<Notification>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM device_notification WHERE id = ? AND device_id = ?"))
            .bind(id)
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(notification_from_row))
    }

    pub async fn notification_query(&self, q: &MessageQuery) -> Result<Vec<Notification>> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM device_notification"));
        q.push(&mut qb, "notification");
        let rows = qb.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(notification_from_row).collect())
    }

    /// Notifications matching `filter` stamped strictly after `after`, oldest first, at most `limit`
    /// rows unless one millisecond alone holds more (see `trim_to_whole_millis`).
    pub async fn notifications_since(
        &self,
        filter: &MessageFilter,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Notification>> {
        let page = self.notifications_page(filter, after, None, Some(limit + 1)).await?;
        match trim_to_whole_millis(page, limit, |n| n.timestamp) {
            Some(rows) => Ok(rows),
            None => {
                let first = self.notifications_page(filter, after, None, Some(1)).await?;
                let ms = first.first().map(|n| n.timestamp).unwrap_or(after);
                self.notifications_page(filter, after, Some(ms), None).await
            }
        }
    }

    async fn notifications_page(
        &self,
        filter: &MessageFilter,
        after: i64,
        up_to: Option<i64>,
        limit: Option<usize>,
    ) -> Result<Vec<Notification>> {
        let mut qb =
            QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM device_notification WHERE timestamp > "));
        qb.push_bind(after);
        if let Some(u) = up_to {
            qb.push(" AND timestamp <= ").push_bind(u);
        }
        filter.push_conditions(&mut qb, "notification");
        qb.push(" ORDER BY timestamp, id");
        if let Some(l) = limit {
            qb.push(" LIMIT ").push_bind(l as i64);
        }
        let rows = qb.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(notification_from_row).collect())
    }

    /// Deletes notifications stamped before `before` (retention), in bounded batches.
    pub async fn notifications_expire(&self, before: i64) -> Result<u64> {
        expire(&self.pool, "device_notification", "timestamp", before).await
    }
}

pub(crate) async fn expire(pool: &sqlx::SqlitePool, table: &str, col: &str, before: i64) -> Result<u64> {
    let mut total = 0;
    loop {
        let n = sqlx::query(&format!(
            "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {col} < ? LIMIT 5000)"
        ))
        .bind(before)
        .execute(pool)
        .await?
        .rows_affected();
        total += n;
        if n == 0 {
            return Ok(total);
        }
    }
}

/// Inserts one notification inside the writer's transaction.
pub(crate) async fn insert(conn: &mut SqliteConnection, n: &NewNotification, server_ts: i64) -> Result<Notification> {
    let timestamp = n.timestamp.unwrap_or(server_ts);
    let id: i64 = sqlx::query(
        "INSERT INTO device_notification (device_id, network_id, device_type_id, notification, timestamp, parameters) \
         VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(&n.device_id)
    .bind(n.network_id)
    .bind(n.device_type_id)
    .bind(&n.notification)
    .bind(timestamp)
    .bind(json_text(&n.parameters))
    .fetch_one(&mut *conn)
    .await?
    .get(0);
    Ok(Notification {
        id,
        notification: n.notification.clone(),
        device_id: n.device_id.clone(),
        network_id: n.network_id,
        device_type_id: n.device_type_id,
        timestamp,
        parameters: n.parameters.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::trim_to_whole_millis;

    #[test]
    fn pages_end_on_a_millisecond_boundary() {
        let id = |x: &i64| *x;
        assert_eq!(trim_to_whole_millis(vec![1, 2, 3], 3, id), Some(vec![1, 2, 3]));
        assert_eq!(trim_to_whole_millis(vec![1, 2, 3, 4], 3, id), Some(vec![1, 2, 3]));
        assert_eq!(trim_to_whole_millis(vec![1, 2, 3, 3], 3, id), Some(vec![1, 2]));
        assert_eq!(trim_to_whole_millis(vec![5, 5, 5, 5], 3, id), None);
    }
}
