//! Device commands: queries, history for polls, and the insert/update used by the group-commit writer.

use super::notification::{bulk_failed, expire, params_need_escape, trim_to_whole_millis, MessageQuery};
use super::scope::MessageFilter;
use super::sql::needs_escape;
use super::{json_column, json_text, Backend, Row, Sql, Store, Tx};
use crate::error::Result;
use crate::model::Command;

const COLUMNS: &str = "id, device_id, network_id, device_type_id, command, timestamp, last_updated, user_id, \
                       parameters, lifetime, status, result, is_updated";

pub(super) fn command_from_row(r: &Row) -> Command {
    Command {
        id: r.i64("id"),
        command: r.text("command"),
        timestamp: r.i64("timestamp"),
        last_updated: r.i64("last_updated"),
        user_id: r.opt_i64("user_id"),
        device_id: r.text("device_id"),
        network_id: r.opt_i64("network_id"),
        device_type_id: r.opt_i64("device_type_id"),
        parameters: json_column(r.opt_text("parameters")),
        lifetime: r.opt_i64("lifetime"),
        status: r.opt_text("status"),
        result: json_column(r.opt_text("result")),
        is_updated: r.bool("is_updated"),
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
        let sql = Sql::new(format!("SELECT {COLUMNS} FROM device_command WHERE id = $1 AND device_id = $2"))
            .bind(id)
            .bind(device_id);
        self.db.fetch_optional(sql, command_from_row).await
    }

    pub async fn command_query(&self, q: &MessageQuery) -> Result<Vec<Command>> {
        let mut qb = Sql::new(format!("SELECT {COLUMNS} FROM device_command"));
        q.push(&mut qb, "command");
        self.db.fetch_all(qb, command_from_row).await
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
        let mut qb =
            Sql::new(format!("SELECT {COLUMNS} FROM device_command WHERE is_updated = FALSE AND timestamp > "));
        qb.push_bind(since);
        qb.push(" AND (lifetime IS NULL OR lifetime <= 0 OR timestamp + lifetime * 1000 > ").push_bind(now).push(")");
        filter.push_conditions(&mut qb, "command");
        qb.push(" ORDER BY timestamp, id LIMIT ").push_bind(limit as i64);
        self.db.fetch_all(qb, command_from_row).await
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
        let mut qb = Sql::new(format!("SELECT {COLUMNS} FROM device_command WHERE {col} > "));
        qb.push_bind(after);
        if updated {
            qb.push(" AND is_updated = TRUE");
        }
        if let Some(u) = up_to {
            qb.push(&format!(" AND {col} <= ")).push_bind(u);
        }
        filter.push_conditions(&mut qb, "command");
        qb.push(&format!(" ORDER BY {col}, id"));
        if let Some(l) = limit {
            qb.push(" LIMIT ").push_bind(l as i64);
        }
        self.db.fetch_all(qb, command_from_row).await
    }

    /// Commands with an id above `after`, by id (the commit tail, `tail.rs`).
    pub(crate) async fn commands_after_id(&self, after: i64, limit: i64) -> Result<Vec<Command>> {
        let sql = Sql::new(format!("SELECT {COLUMNS} FROM device_command WHERE id > $1 ORDER BY id LIMIT $2"))
            .bind(after)
            .bind(limit);
        self.db.fetch_all(sql, command_from_row).await
    }

    /// Commands updated after the cursor `(last_updated, id)`, in that order (the commit tail,
    /// `tail.rs`; PostgreSQL row comparison).
    pub(crate) async fn commands_updated_after(&self, after: (i64, i64), limit: i64) -> Result<Vec<Command>> {
        let sql = Sql::new(format!(
            "SELECT {COLUMNS} FROM device_command WHERE is_updated = TRUE AND (last_updated, id) > ($1, $2) \
             ORDER BY last_updated, id LIMIT $3"
        ))
        .bind(after.0)
        .bind(after.1)
        .bind(limit);
        self.db.fetch_all(sql, command_from_row).await
    }

    /// Deletes commands created before `before` (retention), in bounded batches.
    pub async fn commands_expire(&self, before: i64) -> Result<u64> {
        expire(&self.db, "device_command", "timestamp", before).await
    }
}

/// Inserts a batch of commands inside the writer's transaction, in order; a row that fails fails
/// alone (see `notification::insert_many`).
pub(crate) async fn insert_many(
    tx: &mut Tx,
    rows: &[&NewCommand],
    server_ts: i64,
    guarded: bool,
) -> Vec<Result<Command>> {
    if tx.backend() == Backend::Postgres && rows.len() > 1 {
        if let Some(done) = insert_unnest(tx, rows, server_ts, guarded).await {
            return done;
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for c in rows {
        let r = match tx.savepoint(guarded).await {
            Ok(()) => insert(tx, c, server_ts).await,
            Err(e) => Err(e),
        };
        out.push(tx.end_savepoint(guarded, r).await);
    }
    out
}

async fn insert_unnest(
    tx: &mut Tx,
    rows: &[&NewCommand],
    server_ts: i64,
    guarded: bool,
) -> Option<Vec<Result<Command>>> {
    let Tx::Postgres(t) = tx else { return None };
    // Rare text that PostgreSQL needs escaped goes the row-by-row way, which escapes it.
    let escape = |c: &&NewCommand| {
        needs_escape(&c.device_id)
            || needs_escape(&c.command)
            || c.status.as_deref().is_some_and(needs_escape)
            || params_need_escape(&c.parameters)
            || params_need_escape(&c.result)
    };
    if rows.iter().any(escape) {
        return None;
    }
    let stamp = |c: &NewCommand| c.timestamp.unwrap_or(server_ts);
    let device_ids: Vec<&str> = rows.iter().map(|c| c.device_id.as_str()).collect();
    let networks: Vec<Option<i64>> = rows.iter().map(|c| c.network_id).collect();
    let types: Vec<Option<i64>> = rows.iter().map(|c| c.device_type_id).collect();
    let names: Vec<&str> = rows.iter().map(|c| c.command.as_str()).collect();
    let stamps: Vec<i64> = rows.iter().map(|c| stamp(c)).collect();
    let users: Vec<Option<i64>> = rows.iter().map(|c| c.user_id).collect();
    let params: Vec<Option<String>> = rows.iter().map(|c| json_text(&c.parameters)).collect();
    let lifetimes: Vec<Option<i64>> = rows.iter().map(|c| c.lifetime).collect();
    let statuses: Vec<Option<&str>> = rows.iter().map(|c| c.status.as_deref()).collect();
    let results: Vec<Option<String>> = rows.iter().map(|c| json_text(&c.result)).collect();
    if guarded {
        sqlx::query("SAVEPOINT bulk").execute(&mut **t).await.ok()?;
    }
    // Ids drawn in UNNEST order: sorted, they belong to the rows in input order.
    let inserted = sqlx::query_scalar::<_, i64>(
        "INSERT INTO device_command (device_id, network_id, device_type_id, command, timestamp, last_updated, \
         user_id, parameters, lifetime, status, result, is_updated) \
         SELECT d, n, t, c, ts, ts, u, p, l, s, r, FALSE FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], \
         $4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::bigint[], $9::text[], $10::text[]) \
         AS x(d, n, t, c, ts, u, p, l, s, r) RETURNING id",
    )
    .bind(&device_ids)
    .bind(&networks)
    .bind(&types)
    .bind(&names)
    .bind(&stamps)
    .bind(&users)
    .bind(&params)
    .bind(&lifetimes)
    .bind(&statuses)
    .bind(&results)
    .fetch_all(&mut **t)
    .await;
    let mut ids = match inserted {
        Ok(ids) if ids.len() == rows.len() => ids,
        other => return bulk_failed(t, rows.len(), other.err(), guarded).await,
    };
    ids.sort_unstable();
    Some(rows.iter().zip(ids).map(|(c, id)| Ok(stored(c, id, stamp(c)))).collect())
}

fn stored(c: &NewCommand, id: i64, timestamp: i64) -> Command {
    into_stored(c.clone(), id, timestamp)
}

/// The stored command, made of the insert's own fields (the SQLite writer's rows).
pub(super) fn into_stored(c: NewCommand, id: i64, timestamp: i64) -> Command {
    Command {
        id,
        command: c.command,
        timestamp,
        last_updated: timestamp,
        user_id: c.user_id,
        device_id: c.device_id,
        network_id: c.network_id,
        device_type_id: c.device_type_id,
        parameters: c.parameters,
        lifetime: c.lifetime,
        status: c.status,
        result: c.result,
        is_updated: false,
    }
}

/// One command, stamped: the writer's statement (`RETURNING id` added on the sqlx path).
pub(super) const INSERT_ONE: &str = "INSERT INTO device_command (device_id, network_id, device_type_id, command, \
     timestamp, last_updated, user_id, parameters, lifetime, status, result, is_updated) \
     VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9, $10, FALSE)";

/// A device's update of a command, stamped `$1`: the writer's statement on both paths.
pub(super) static UPDATE_ONE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "UPDATE device_command SET is_updated = TRUE, last_updated = $1, \
         status = CASE WHEN $2 THEN $3 ELSE status END, result = CASE WHEN $4 THEN $5 ELSE result END \
         WHERE id = $6 AND device_id = $7 RETURNING {COLUMNS}"
    )
});

/// Inserts one command inside the writer's transaction.
async fn insert(tx: &mut Tx, c: &NewCommand, server_ts: i64) -> Result<Command> {
    let timestamp = c.timestamp.unwrap_or(server_ts);
    let sql = Sql::new(format!("{INSERT_ONE} RETURNING id"))
        .bind(&c.device_id)
        .bind(c.network_id)
        .bind(c.device_type_id)
        .bind(&c.command)
        .bind(timestamp)
        .bind(c.user_id)
        .bind(json_text(&c.parameters))
        .bind(c.lifetime)
        .bind(&c.status)
        .bind(json_text(&c.result));
    let id = tx.fetch_one(sql, |r| r.i64(0)).await?;
    Ok(stored(c, id, timestamp))
}

/// Applies a device's update inside the writer's transaction (in a savepoint of its own when
/// `guarded`); `None` when no such command.
pub(crate) async fn update(tx: &mut Tx, u: &CommandUpdate, server_ts: i64, guarded: bool) -> Result<Option<Command>> {
    tx.savepoint(guarded).await?;
    let sql = Sql::new(UPDATE_ONE.as_str())
        .bind(server_ts)
        .bind(u.status.is_some())
        .bind(&u.status)
        .bind(u.result.is_some())
        .bind(json_text(&u.result))
        .bind(u.command_id)
        .bind(&u.device_id);
    let r = tx.fetch_optional(sql, command_from_row).await;
    tx.end_savepoint(guarded, r).await
}
