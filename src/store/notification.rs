//! Device notifications: queries, history for polls, and the insert used by the group-commit writer.

use super::scope::MessageFilter;
use super::sql::needs_escape;
use super::{json_column, json_text, Backend, Db, Row, Sql, Store, Tx};
use crate::error::Result;
use crate::model::Notification;

const COLUMNS: &str = "id, device_id, network_id, device_type_id, notification, timestamp, parameters";

fn notification_from_row(r: &Row) -> Notification {
    Notification {
        id: r.i64("id"),
        notification: r.text("notification"),
        device_id: r.text("device_id"),
        network_id: r.opt_i64("network_id"),
        device_type_id: r.opt_i64("device_type_id"),
        timestamp: r.i64("timestamp"),
        parameters: json_column(r.opt_text("parameters")),
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
    pub(crate) fn push(&self, qb: &mut Sql, name_col: &str) {
        let time_col = if self.updated_only { "last_updated" } else { "timestamp" };
        qb.push(" WHERE device_id = ").push_bind(&self.device_id);
        if self.updated_only {
            qb.push(" AND is_updated = TRUE");
        }
        if let Some(s) = self.start {
            qb.push(&format!(" AND {time_col} > ")).push_bind(s);
        }
        if let Some(e) = self.end {
            qb.push(&format!(" AND {time_col} < ")).push_bind(e);
        }
        if let Some(names) = &self.names {
            if names.is_empty() {
                qb.push(" AND FALSE");
            } else {
                qb.push(&format!(" AND {name_col} IN ")).push_list(names);
            }
        }
        if let Some(s) = &self.status {
            qb.push(" AND status = ").push_bind(s);
        }
        let dir = if self.descending { "DESC" } else { "ASC" };
        let sort = if self.sort_field == "timestamp" { time_col } else { self.sort_field };
        qb.push(&format!(" ORDER BY {sort} {dir}, {time_col} {dir}, id {dir} LIMIT "));
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
        let sql = Sql::new(format!("SELECT {COLUMNS} FROM device_notification WHERE id = $1 AND device_id = $2"))
            .bind(id)
            .bind(device_id);
        self.db.fetch_optional(sql, notification_from_row).await
    }

    pub async fn notification_query(&self, q: &MessageQuery) -> Result<Vec<Notification>> {
        let mut qb = Sql::new(format!("SELECT {COLUMNS} FROM device_notification"));
        q.push(&mut qb, "notification");
        self.db.fetch_all(qb, notification_from_row).await
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
        let mut qb = Sql::new(format!("SELECT {COLUMNS} FROM device_notification WHERE timestamp > "));
        qb.push_bind(after);
        if let Some(u) = up_to {
            qb.push(" AND timestamp <= ").push_bind(u);
        }
        filter.push_conditions(&mut qb, "notification");
        qb.push(" ORDER BY timestamp, id");
        if let Some(l) = limit {
            qb.push(" LIMIT ").push_bind(l as i64);
        }
        self.db.fetch_all(qb, notification_from_row).await
    }

    /// Notifications with an id above `after`, by id (the commit tail, `tail.rs`).
    pub(crate) async fn notifications_after_id(&self, after: i64, limit: i64) -> Result<Vec<Notification>> {
        let sql = Sql::new(format!("SELECT {COLUMNS} FROM device_notification WHERE id > $1 ORDER BY id LIMIT $2"))
            .bind(after)
            .bind(limit);
        self.db.fetch_all(sql, notification_from_row).await
    }

    /// Deletes notifications stamped before `before` (retention), in bounded batches.
    pub async fn notifications_expire(&self, before: i64) -> Result<u64> {
        expire(&self.db, "device_notification", "timestamp", before).await
    }
}

/// Deletes rows of `table` with `col` before `before`, a bounded batch per statement: each batch is
/// a short transaction found through the `(timestamp, id)` index, so retention never holds a long
/// lock, and on PostgreSQL autovacuum reuses the freed space for new rows (the table stays at the
/// size of the retention window instead of bloating).
pub(crate) async fn expire(db: &Db, table: &str, col: &str, before: i64) -> Result<u64> {
    let mut total = 0;
    loop {
        let sql =
            Sql::new(format!("DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {col} < $1 LIMIT 5000)"))
                .bind(before);
        let n = db.execute(sql).await?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
    }
}

/// Inserts a batch of notifications inside the writer's transaction, in order. One result per row:
/// a row that fails fails alone. On PostgreSQL the batch is one `INSERT ... SELECT FROM UNNEST` (one
/// round trip for the lot); should it fail, a savepoint per row finds the failing rows and keeps the
/// rest. (SQLite batches go through `sqlite_batch.rs` instead, unless its connection failed to open.)
pub(crate) async fn insert_many(
    tx: &mut Tx,
    rows: &[&NewNotification],
    server_ts: i64,
    guarded: bool,
) -> Vec<Result<Notification>> {
    if tx.backend() == Backend::Postgres && rows.len() > 1 {
        if let Some(done) = insert_unnest(tx, rows, server_ts, guarded).await {
            return done;
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for n in rows {
        let r = match tx.savepoint(guarded).await {
            Ok(()) => insert(tx, n, server_ts).await,
            Err(e) => Err(e),
        };
        out.push(tx.end_savepoint(guarded, r).await);
    }
    out
}

/// One notification, stamped: the writer's statement (`RETURNING id` added on the sqlx path).
pub(super) const INSERT_ONE: &str = "INSERT INTO device_notification (device_id, network_id, device_type_id, \
     notification, timestamp, parameters) VALUES ($1, $2, $3, $4, $5, $6)";

/// The PostgreSQL bulk insert; `None` when the statement failed (the transaction is rolled back to
/// before it).
async fn insert_unnest(
    tx: &mut Tx,
    rows: &[&NewNotification],
    server_ts: i64,
    guarded: bool,
) -> Option<Vec<Result<Notification>>> {
    let Tx::Postgres(t) = tx else { return None };
    // Rare text that PostgreSQL needs escaped goes the row-by-row way, which escapes it.
    let escape = |n: &&NewNotification| {
        needs_escape(&n.device_id) || needs_escape(&n.notification) || params_need_escape(&n.parameters)
    };
    if rows.iter().any(escape) {
        return None;
    }
    let stamp = |n: &NewNotification| n.timestamp.unwrap_or(server_ts);
    let device_ids: Vec<&str> = rows.iter().map(|n| n.device_id.as_str()).collect();
    let networks: Vec<Option<i64>> = rows.iter().map(|n| n.network_id).collect();
    let types: Vec<Option<i64>> = rows.iter().map(|n| n.device_type_id).collect();
    let names: Vec<&str> = rows.iter().map(|n| n.notification.as_str()).collect();
    let stamps: Vec<i64> = rows.iter().map(|n| stamp(n)).collect();
    let params: Vec<Option<String>> = rows.iter().map(|n| json_text(&n.parameters)).collect();
    if guarded {
        sqlx::query("SAVEPOINT bulk").execute(&mut **t).await.ok()?;
    }
    // UNNEST yields the arrays in order and the identity default is drawn row by row in that order, so
    // the ids, sorted, belong to the rows in input order.
    let inserted = sqlx::query_scalar::<_, i64>(
        "INSERT INTO device_notification (device_id, network_id, device_type_id, notification, timestamp, parameters) \
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::text[]) \
         RETURNING id",
    )
    .bind(&device_ids)
    .bind(&networks)
    .bind(&types)
    .bind(&names)
    .bind(&stamps)
    .bind(&params)
    .fetch_all(&mut **t)
    .await;
    let mut ids = match inserted {
        Ok(ids) if ids.len() == rows.len() => ids,
        other => return bulk_failed(t, rows.len(), other.err(), guarded).await,
    };
    ids.sort_unstable();
    Some(rows.iter().zip(ids).map(|(n, id)| Ok(stored(n, id, stamp(n)))).collect())
}

/// A failed bulk insert of `rows` rows. Unguarded, the transaction is aborted: every row fails, and
/// the writer runs the batch again guarded. Guarded: `None` after rolling back to the savepoint, so
/// the rows go in one by one and only the failing ones fail.
pub(crate) async fn bulk_failed<T>(
    t: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    rows: usize,
    error: Option<sqlx::Error>,
    guarded: bool,
) -> Option<Vec<Result<T>>> {
    if !guarded {
        let e = error.map_or_else(crate::error::ApiError::internal, crate::error::ApiError::from);
        return Some((0..rows).map(|_| Err(e.clone())).collect());
    }
    sqlx::query("ROLLBACK TO SAVEPOINT bulk").execute(&mut **t).await.ok()?;
    None
}

/// Whether a JSON document's text would need PostgreSQL's escape (only a raw U+FFFF can: JSON text
/// writes U+0000 as `\u0000`).
pub(crate) fn params_need_escape(v: &Option<serde_json::Value>) -> bool {
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => needs_escape(s),
            serde_json::Value::Array(a) => a.iter().any(walk),
            serde_json::Value::Object(o) => o.iter().any(|(k, v)| needs_escape(k) || walk(v)),
            _ => false,
        }
    }
    v.as_ref().is_some_and(walk)
}

fn stored(n: &NewNotification, id: i64, timestamp: i64) -> Notification {
    into_stored(n.clone(), id, timestamp)
}

/// The stored notification, made of the insert's own fields (the SQLite writer's rows).
pub(super) fn into_stored(n: NewNotification, id: i64, timestamp: i64) -> Notification {
    Notification {
        id,
        notification: n.notification,
        device_id: n.device_id,
        network_id: n.network_id,
        device_type_id: n.device_type_id,
        timestamp,
        parameters: n.parameters,
    }
}

/// Inserts one notification inside the writer's transaction.
async fn insert(tx: &mut Tx, n: &NewNotification, server_ts: i64) -> Result<Notification> {
    let timestamp = n.timestamp.unwrap_or(server_ts);
    let sql = Sql::new(format!("{INSERT_ONE} RETURNING id"))
        .bind(&n.device_id)
        .bind(n.network_id)
        .bind(n.device_type_id)
        .bind(&n.notification)
        .bind(timestamp)
        .bind(json_text(&n.parameters));
    let id = tx.fetch_one(sql, |r| r.i64(0)).await?;
    Ok(stored(n, id, timestamp))
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
