//! The writer's transactions on SQLite, run on the writer's own thread over a connection of its own
//! (rusqlite, on the same libsqlite3 as sqlx): a batch is `BEGIN IMMEDIATE`, one cached prepared
//! statement per row, `COMMIT` — all in the calling thread.
//!
//! Why not sqlx here: sqlx runs each SQLite statement on a worker thread of its own, so every
//! statement of a batch (begin, inserts, commit) is a hand-off between two threads and back. Under
//! load both sides wait for a CPU behind busy connection tasks: a commit of 45 rows took 4.8 ms and
//! the writer spent 97 % of its time committing (mqtt-fleet bench), while SQLite itself inserts a row
//! in a few microseconds. Here a batch is a few hundred microseconds of SQLite work and nothing else.
//!
//! The presence records of MQTT sessions (`Store::mqtt_session_records`) take the same path on a
//! connection of their own, for the same reason. Every other statement still goes through sqlx's
//! pool; SQLite serialises the writers of its file (`busy_timeout` on both sides), and WAL lets
//! readers go on meanwhile.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::command::{self, CommandUpdate, NewCommand};
use super::mqtt_session;
use super::notification::{self, NewNotification};
use super::writer::{JsonColumns, WriteOp, Written};
use super::{Db, Row, Store};
use crate::error::{ApiError, Result};
use crate::model::SessionRecord;

/// As long as the pool's connections wait for a lock (`store/mod.rs`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the checkpointer copies the WAL's new pages into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Pages (4 KiB) the WAL may reach before the message writer checkpoints it itself, in line with a
/// commit: a safety net for when the checkpointer cannot keep up (SQLite's default is 1,000).
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 16_384;

/// The writer's own connection to the store's SQLite file.
pub(crate) struct SqliteBatch {
    conn: Connection,
    /// The message writer's WAL checkpoints, run beside it (dropped with it).
    _checkpointer: Option<Checkpointer>,
}

impl SqliteBatch {
    /// Opens the message writer's connection to the store's SQLite file, with the pool's durability
    /// setting and a checkpointer of its own; `None` on PostgreSQL.
    pub(crate) async fn open(store: &Store) -> Option<Result<SqliteBatch>> {
        let Db::Sqlite(pool) = &store.db else { return None };
        Some(Self::open_writer(pool).await)
    }

    async fn open_writer(pool: &sqlx::SqlitePool) -> Result<SqliteBatch> {
        let mut batch = Self::open_sqlite(pool).await?;
        batch._checkpointer = Some(Checkpointer::start(&pool.connect_options().get_filename().to_string_lossy())?);
        batch.conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
        Ok(batch)
    }

    pub(crate) async fn open_sqlite(pool: &sqlx::SqlitePool) -> Result<SqliteBatch> {
        // The pool's connections were opened with `[database] synchronous`; the writer's commits are
        // the ones it is about, so the writer copies it from them.
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(pool).await?;
        let path = pool.connect_options().get_filename().to_owned();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "synchronous", synchronous)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "cache_size", -32768)?;
        conn.set_prepared_statement_cache_capacity(8);
        Ok(SqliteBatch { conn, _checkpointer: None })
    }

    /// Commits `ops` in one transaction stamped `ts`, in order (ids follow it). A row that fails
    /// fails alone (SQLite undoes just its statement); if the commit fails, every row fails.
    pub(crate) fn commit(&mut self, ops: Vec<(WriteOp, JsonColumns)>, ts: i64) -> Vec<Result<Written>> {
        let n = ops.len();
        let fail_all = |e: ApiError| (0..n).map(|_| Err(e.clone())).collect();
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            return fail_all(e.into());
        }
        let results: Vec<Result<Written>> = ops.into_iter().map(|(op, json)| self.apply(op, json, ts)).collect();
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            // A failed COMMIT may leave the transaction open (SQLITE_BUSY); nothing of it is kept.
            let _ = self.conn.execute_batch("ROLLBACK");
            return fail_all(e.into());
        }
        results
    }

    /// Writes presence changes of sessions on node `node_id` in one transaction, in order (see
    /// `Store::mqtt_session_records`); per record, whether it changed the record.
    pub(crate) fn session_records(&mut self, node_id: &str, records: &[SessionRecord]) -> Result<Vec<bool>> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut applied = Vec::with_capacity(records.len());
        for r in records {
            let changed = match r {
                SessionRecord::Connected { client_id, user_id, clean, at } => tx
                    .prepare_cached(mqtt_session::RECORD_CONNECTED)?
                    .execute(params![client_id, user_id, clean, at, node_id])?,
                SessionRecord::Disconnected { client_id, at, reason } => tx
                    .prepare_cached(mqtt_session::RECORD_DISCONNECTED)?
                    .execute(params![at, reason, client_id, node_id])?,
            };
            applied.push(changed > 0);
        }
        tx.commit()?;
        Ok(applied)
    }

    fn apply(&self, op: WriteOp, json: JsonColumns, ts: i64) -> Result<Written> {
        match op {
            WriteOp::Notification(n) => self.insert_notification(n, json, ts),
            WriteOp::Command(c) => self.insert_command(c, json, ts),
            WriteOp::CommandUpdate(u) => self.update_command(&u, json, ts),
        }
    }

    fn insert_notification(&self, n: NewNotification, json: JsonColumns, ts: i64) -> Result<Written> {
        let timestamp = n.timestamp.unwrap_or(ts);
        let mut insert = self.conn.prepare_cached(notification::INSERT_ONE)?;
        insert.execute(params![
            n.device_id,
            n.network_id,
            n.device_type_id,
            n.notification,
            timestamp,
            json.parameters
        ])?;
        let id = self.conn.last_insert_rowid();
        Ok(Written::Notification(Arc::new(notification::into_stored(n, id, timestamp))))
    }

    fn insert_command(&self, c: NewCommand, json: JsonColumns, ts: i64) -> Result<Written> {
        let timestamp = c.timestamp.unwrap_or(ts);
        let mut insert = self.conn.prepare_cached(command::INSERT_ONE)?;
        insert.execute(params![
            c.device_id,
            c.network_id,
            c.device_type_id,
            c.command,
            timestamp,
            c.user_id,
            json.parameters,
            c.lifetime,
            c.status,
            json.result
        ])?;
        let id = self.conn.last_insert_rowid();
        Ok(Written::Command(Arc::new(command::into_stored(c, id, timestamp))))
    }

    fn update_command(&self, u: &CommandUpdate, json: JsonColumns, ts: i64) -> Result<Written> {
        let mut update = self.conn.prepare_cached(&command::UPDATE_ONE)?;
        let updated = update
            .query_row(
                params![ts, u.status.is_some(), u.status, u.result.is_some(), json.result, u.command_id, u.device_id],
                |r| Ok(command::command_from_row(&Row::Rusqlite(r))),
            )
            .optional()?;
        match updated {
            Some(c) => Ok(Written::CommandUpdated(Arc::new(c))),
            None => Err(ApiError::command_not_found(u.command_id)),
        }
    }
}

/// Checkpoints the WAL from a thread and connection of its own. By default the connection whose
/// commit takes the WAL past 1,000 pages copies them into the database file and syncs it, in line:
/// with the message writer that was a 16–19 ms `fsync` every few hundred commits, stalling every
/// message behind it (`bench mqtt-latency`: p90 0.5 ms, p99 16 ms on every path). A passive
/// checkpoint waits for no reader or writer and blocks none; the writer keeps appending meanwhile.
struct Checkpointer {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Checkpointer {
    fn start(path: &str) -> Result<Checkpointer> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let run = move || {
            while !stopped.load(std::sync::atomic::Ordering::Acquire) {
                std::thread::sleep(CHECKPOINT_EVERY);
                // One row: (busy, WAL pages, pages checkpointed).
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!(error = %e, "WAL checkpoint failed; the next one retries");
                }
            }
        };
        std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(run).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot start the WAL checkpointer: {e}"),
            )
        })?;
        Ok(Checkpointer { stop })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
    }
}
