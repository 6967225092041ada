//! The commit tail (PostgreSQL): how committed notifications, commands and command updates reach the
//! subscribers of this instance — whichever instance sharing the database committed them.
//!
//! Every writer stamps its batches under the cluster-wide message clock (`writer.rs` `claim_stamp`),
//! so ids and update stamps grow in commit order across instances, and it sends
//! `NOTIFY hivehub_commit` in the committing transaction. The tail listens, and on each notification
//! (or every 100 ms, should one be missed while the listener reconnects) reads what was committed
//! after its cursors — notifications and commands by id, updates by `(last_updated, id)` — and hands it
//! to the bus in commit order. Its own commits go the same way, so a subscriber sees every instance's
//! messages once and in order by construction: nothing is delivered twice (the cursor only moves
//! forward) and nothing is skipped (rows are read only once committed, and a failed read is retried
//! from the same cursor).

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::writer::{OnCommit, Written};
use super::{Db, Sql, Store};
use crate::error::Result;

/// The channel the writers notify on commit.
pub const CHANNEL: &str = "hivehub_commit";
/// Rows read per table and round.
const PAGE: i64 = 2_000;
/// The safety-net period when no notification arrives.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// How far the tail has delivered: the writer answers its callers only once their rows are delivered
/// to this instance's subscribers, as it does on SQLite by handing them over itself — so a client
/// that subscribes after its insert was answered never gets that insert live on top of its replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    pub notification_id: i64,
    pub command_id: i64,
    /// `(last_updated, id)` of the last delivered update.
    pub update: (i64, i64),
}

impl Cursor {
    /// Whether everything up to `other` has been delivered.
    pub fn covers(&self, other: &Cursor) -> bool {
        self.notification_id >= other.notification_id
            && self.command_id >= other.command_id
            && self.update >= other.update
    }
}

/// A running tail: its task and how far it has delivered.
pub struct Tail {
    pub task: JoinHandle<()>,
    pub delivered: watch::Receiver<Cursor>,
}

/// Starts the tail from what is committed now (older rows are history, not news). `None` on SQLite.
pub async fn spawn(store: Store, deliver: OnCommit, stop: watch::Receiver<bool>) -> Result<Option<Tail>> {
    let Db::Postgres(pool) = &store.db else { return Ok(None) };
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    let cursor = store
        .db
        .fetch_one(
            Sql::new(
                "SELECT (SELECT COALESCE(MAX(id), 0) FROM device_notification), \
                 (SELECT COALESCE(MAX(id), 0) FROM device_command), \
                 (SELECT COALESCE(MAX(last_updated), 0) FROM device_command WHERE is_updated = TRUE)",
            ),
            |r| Cursor { notification_id: r.i64(0), command_id: r.i64(1), update: (r.i64(2), i64::MAX) },
        )
        .await?;
    let wake = Arc::new(Notify::new());
    let listen = tokio::spawn({
        let wake = wake.clone();
        async move {
            loop {
                match listener.recv().await {
                    Ok(_) => wake.notify_one(),
                    // The listener reconnects on the next call; the idle check covers the gap.
                    Err(e) => {
                        tracing::warn!(error = %e, "commit listener lost its connection; reconnecting");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    });
    let (delivered_tx, delivered) = watch::channel(cursor);
    let task = tokio::spawn(run(store, deliver, cursor, wake, listen, delivered_tx, stop));
    Ok(Some(Tail { task, delivered }))
}

async fn run(
    store: Store,
    deliver: OnCommit,
    mut cursor: Cursor,
    wake: Arc<Notify>,
    listen: JoinHandle<()>,
    delivered: watch::Sender<Cursor>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(IDLE_CHECK) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        // Drain: several commits may have come in one wake-up.
        loop {
            match read_after(&store, &mut cursor).await {
                Ok(rows) if rows.is_empty() => break,
                Ok(rows) => {
                    let fan_out = std::panic::AssertUnwindSafe(|| deliver(&rows));
                    if std::panic::catch_unwind(fan_out).is_err() {
                        tracing::error!(rows = rows.len(), "fan-out of committed rows panicked");
                    }
                    delivered.send_replace(cursor);
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, "reading committed rows failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
    listen.abort();
}

/// What was committed after `cursor`: notifications and commands in id order (commit order: ids are
/// drawn under the message clock's lock), then command updates in stamp order. Not sorted by the
/// rows' timestamps, which clients may set. Moves the cursor only once all three reads succeeded.
async fn read_after(store: &Store, cursor: &mut Cursor) -> Result<Vec<Written>> {
    let notifications = store.notifications_after_id(cursor.notification_id, PAGE).await?;
    let commands = store.commands_after_id(cursor.command_id, PAGE).await?;
    let updates = store.commands_updated_after(cursor.update, PAGE).await?;
    let mut rows = Vec::with_capacity(notifications.len() + commands.len() + updates.len());
    for n in notifications {
        cursor.notification_id = cursor.notification_id.max(n.id);
        rows.push(Written::Notification(Arc::new(n)));
    }
    for c in commands {
        cursor.command_id = cursor.command_id.max(c.id);
        rows.push(Written::Command(Arc::new(c)));
    }
    for c in updates {
        cursor.update = cursor.update.max((c.last_updated, c.id));
        rows.push(Written::CommandUpdated(Arc::new(c)));
    }
    Ok(rows)
}
