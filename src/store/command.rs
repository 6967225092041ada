//! Device commands: queries, history for polls, and the insert/update used by the group-commit writer.

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::notification::{expire, trim_to_whole_millis, MessageQuery};
use super::scope::MessageFilter;
use super::{json_column, json_text, Store};
use crate::error::Result;
use crate::model::Command;

const COLUMNS: &str = "id, device_id, network_id, device_type_id, command, timestamp, last_updated, user_id, \
                       parameters, lifetime, status, result, is_updated";

fn command_from_row(r: &SqliteRow) -> Command {
    Command {
        id: r.get("id"),
        command: r.get("command"),
        timestamp: r.get("timestamp"),
        last_updated: r.get("last_updated"),
        user_id: r.get("user_id"),
        device_id: r.get("device_id"),
        network_id: r.get("network_id"),
        device_type_id: r.get("device_type_id"),
        parameters: json_column(r.get("parameters")),
        lifetime: r.get("lifetime"),
        status: r.get("status"),
        result: json_column(r.get("result")),
        is_updated: r.get("is_updated"),
    }
}

/// A command to store; the writer assigns id and (unless given) the timestamp.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub device_id: String,
    pub network_id: Option<i64>,
    pub device_type_id: Option<i64>,
    pub command: String,
    pub timestamp: Option<i64>,
    pub user_id: Option<i64>,
    pub parameters: Option<serde_json::Value>,
    pub lifetime: Option<i64>,
    pub status: Option<String>,
    pub result: Option<serde_json::Value>,
}

/// A device's answer to a command: absent fields stay unchanged.
#[derive(Debug, Clone)]
pub struct CommandUpdate {
    pub device_id: String,
    pub command_id: i64,
    pub status: Option<String>,
    pub result: Option<serde_json::Value>,
}

impl Store {
    pub async fn command_get(&self, device_id: &str, id: i64) -> Result<Option<Command>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM device_command WHERE id = ? AND device_id = ?"))
            .bind(id)
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(command_from_row))
    }

    pub async fn command_query(&self, q: &MessageQuery) -> Result<Vec<Command>> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM device_command"));
        q.push(&mut qb, "command");
        let rows = qb.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(command_from_row).collect())
    }

    /// Commands matching `filter` after the cursor, oldest first: by `timestamp` for new commands, by
    /// `last_updated` among updated ones when `updated` is set. Same paging rule as notifications.
    pub async fn commands_since(
        &self,
        filter: &MessageFilter,
        after: i64,
        limit: usize,
        updated: bool,
    ) -> Result<Vec<Command>> {
        let cursor = move |c: &Command| if updated { c.last_updated } else { c.timestamp };
        let page = self.commands_page(filter, after, None, Some(limit + 1), updated).await?;
        match trim_to_whole_millis(page, limit, cursor) {
            Some(rows) => Ok(rows),
            None => {
                let first = self.commands_page(filter, after, None, Some(1), updated).await?;
                let ms = first.first().map(cursor).unwrap_or(after);
                self.commands_page(filter, after, Some(ms), None, updated).await
            }
        }
    }

    /// Commands owed to a persistent MQTT session: matching `filter`, created after `since`, not yet
    /// confirmed by an update, and not past their `lifetime` at `now`; oldest first.
    pub async fn commands_pending(
        &self,
        filter: &MessageFilter,
        since: i64,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Command>> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {COLUMNS} FROM device_command WHERE is_updated = 0 AND timestamp > "
        ));
        qb.push_bind(since);
        qb.push(" AND (lifetime IS NULL OR lifetime <= 0 OR timestamp + lifetime * 1000 > ").push_bind(now).push(")");
        filter.push_conditions(&mut qb, "command");
        qb.push(" ORDER BY timestamp, id LIMIT ").push_bind(limit as i64);
        let rows = qb.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(command_from_row).collect())
    }

    async fn commands_page(
        &self,
        filter: &MessageFilter,
        after: i64,
        up_to: Option<i64>,
        limit: Option<usize>,
        updated: bool,
    ) -> Result<Vec<Command>> {
        let col = if updated { "last_updated" } else { "timestamp" };
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM device_command WHERE {col} > "));
        qb.push_bind(after);
        if updated {
            qb.push(" AND is_updated = 1");
        }
        if let Some(u) = up_to {
            qb.push(format!(" AND {col} <= ")).push_bind(u);
        }
        filter.push_conditions(&mut qb, "command");
        qb.push(format!(" ORDER BY {col}, id"));
        if let Some(l) = limit {
            qb.push(" LIMIT ").push_bind(l as i64);
        }
        let rows = qb.build().fetch_all(&self.pool).await?;
        Ok(rows.iter().map(command_from_row).collect())
    }

    /// Deletes commands created before `before` (retention), in bounded batches.
    pub async fn commands_expire(&self, before: i64) -> Result<u64> {
        expire(&self.pool, "device_command", "timestamp", before).await
    }
}

/// Inserts one command inside the writer's transaction.
pub(crate) async fn insert(conn: &mut SqliteConnection, c: &NewCommand, server_ts: i64) -> Result<Command> {
    let timestamp = c.timestamp.unwrap_or(server_ts);
    let id: i64 = sqlx::query(
        "INSERT INTO device_command (device_id, network_id, device_type_id, command, timestamp, last_updated, \
         user_id, parameters, lifetime, status, result, is_updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0) \
         RETURNING id",
    )
    .bind(&c.device_id)
    .bind(c.network_id)
    .bind(c.device_type_id)
    .bind(&c.command)
    .bind(timestamp)
    .bind(timestamp)
    .bind(c.user_id)
    .bind(json_text(&c.parameters))
    .bind(c.lifetime)
    .bind(&c.status)
    .bind(json_text(&c.result))
    .fetch_one(&mut *conn)
    .await?
    .get(0);
    Ok(Command {
        id,
        command: c.command.clone(),
        timestamp,
        last_updated: timestamp,
        user_id: c.user_id,
        device_id: c.device_id.clone(),
        network_id: c.network_id,
        device_type_id: c.device_type_id,
        parameters: c.parameters.clone(),
        lifetime: c.lifetime,
        status: c.status.clone(),
        result: c.result.clone(),
        is_updated: false,
    })
}

/// Applies a device's update inside the writer's transaction; `None` when no such command.
pub(crate) async fn update(conn: &mut SqliteConnection, u: &CommandUpdate, server_ts: i64) -> Result<Option<Command>> {
    let row = sqlx::query(&format!(
        "UPDATE device_command SET is_updated = 1, last_updated = ?, \
         status = CASE WHEN ? THEN ? ELSE status END, result = CASE WHEN ? THEN ? ELSE result END \
         WHERE id = ? AND device_id = ? RETURNING {COLUMNS}"
    ))
    .bind(server_ts)
    .bind(u.status.is_some())
    .bind(&u.status)
    .bind(u.result.is_some())
    .bind(json_text(&u.result))
    .bind(u.command_id)
    .bind(&u.device_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.as_ref().map(command_from_row))
}
