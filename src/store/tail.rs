//! The commit tail (PostgreSQL): how committed notifications, commands and command updates reach the
//! subscribers of this instance — whichever instance sharing the database committed them.
//!
//! Every writer stamps its batches under the cluster-wide message clock (`writer.rs` `claim_stamp`),
//! so ids and update stamps grow in commit order across instances, and it sends
//! `NOTIFY hivehub_commit` in the committing transaction. The tail listens, and on each notification
//! reads what was committed after its cursors — notifications and commands by id, updates by
//! `(last_updated, id)` — and hands it to the bus in commit order. Its own commits go the same way, so a
//! subscriber sees every instance's messages once and in order by construction: nothing is delivered
//! twice (the cursor only moves forward) and nothing is skipped (rows are read only once committed, and
//! a failed read is retried from the same cursor).
//!
//! Reads cost database round trips on every commit of every instance, so a wake reads only the tables
//! that commits announced since (the NOTIFY payload names them, see [`commit_payload`]), and stops
//! when a read comes back short of a page instead of confirming with an empty read. Skipping a table
//! only postpones it — its cursor stays put — and every 100 ms all three are read whatever was
//! announced, so a notification missed while the listener reconnects delays rows by at most that.

use std::sync::atomic::{AtomicU8, Ordering};
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
/// The safety net: every table is read at least this often, announced or not.
const FULL_CHECK: Duration = Duration::from_millis(100);

/// Tables a commit wrote, as bits of its NOTIFY payload `"{stamp}:{tables}"`.
const NOTIFICATIONS: u8 = 1;
const COMMANDS: u8 = 2;
const UPDATES: u8 = 4;
const ALL: u8 = NOTIFICATIONS | COMMANDS | UPDATES;

/// The NOTIFY payload of a commit stamped `ts` that wrote `rows`: the stamp (for people reading
/// `pg_stat_activity` or a LISTEN session) and the tables written, so a tail reads only those.
pub fn commit_payload<'a>(ts: i64, rows: impl IntoIterator<Item = &'a Written>) -> String {
    let tables = rows.into_iter().fold(0, |t, w| {
        t | match w {
            Written::Notification(_) => NOTIFICATIONS,
            Written::Command(_) => COMMANDS,
            Written::CommandUpdated(_) => UPDATES,
        }
    });
    format!("{ts}:{tables}")
}

/// The tables a NOTIFY payload announces; every table when it does not say (an older instance
/// sharing the database sends only the stamp), so an unknown payload costs reads, never rows.
fn announced(payload: &str) -> u8 {
    payload.split_once(':').and_then(|(_, t)| t.parse::<u8>().ok()).filter(|t| *t != 0 && t & !ALL == 0).unwrap_or(ALL)
}

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
    // Tables announced and not read yet; the listener adds, the tail takes.
    let due = Arc::new(AtomicU8::new(0));
    let listen = tokio::spawn({
        let (wake, due) = (wake.clone(), due.clone());
        async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        due.fetch_or(announced(n.payload()), Ordering::AcqRel);
                        wake.notify_one();
                    }
                    // The connection was lost and is back (LISTEN again): what committed meanwhile was
                    // not announced, so read everything now.
                    Ok(None) => {
                        due.fetch_or(ALL, Ordering::AcqRel);
                        wake.notify_one();
                    }
                    // The listener reconnects on the next call; the periodic full read covers the gap.
                    Err(e) => {
                        tracing::warn!(error = %e, "commit listener lost its connection; reconnecting");
                        due.fetch_or(ALL, Ordering::AcqRel);
                        wake.notify_one();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    });
    let (delivered_tx, delivered) = watch::channel(cursor);
    let task = tokio::spawn(run(store, deliver, cursor, Wake { wake, due }, listen, delivered_tx, stop));
    Ok(Some(Tail { task, delivered }))
}

/// How the listener wakes the tail: the wake-up, and the tables announced since the last read.
struct Wake {
    wake: Arc<Notify>,
    due: Arc<AtomicU8>,
}

async fn run(
    store: Store,
    deliver: OnCommit,
    mut cursor: Cursor,
    Wake { wake, due }: Wake,
    listen: JoinHandle<()>,
    delivered: watch::Sender<Cursor>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next_full = tokio::time::Instant::now() + FULL_CHECK;
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(next_full) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        // Taken before reading: a commit announced from here on wakes the tail again (the Notify keeps
        // one permit), so its rows are read by this round or the next.
        let mut tables = due.swap(0, Ordering::AcqRel);
        if tokio::time::Instant::now() >= next_full {
            tables = ALL;
            next_full = tokio::time::Instant::now() + FULL_CHECK;
        }
        // Drain: a table whose read filled a page may have more.
        while tables != 0 {
            match read_after(&store, &mut cursor, tables).await {
                Ok((rows, full)) => {
                    if !rows.is_empty() {
                        let fan_out = std::panic::AssertUnwindSafe(|| deliver(&rows));
                        if std::panic::catch_unwind(fan_out).is_err() {
                            tracing::error!(rows = rows.len(), "fan-out of committed rows panicked");
                        }
                        delivered.send_replace(cursor);
                    }
                    tables = full;
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, "reading committed rows failed; retrying");
                    // Still due: read again on the next round, from the same cursor.
                    due.fetch_or(tables, Ordering::AcqRel);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    wake.notify_one();
                    break;
                }
            }
        }
    }
    listen.abort();
}

/// What was committed after `cursor` in `tables`: notifications and commands in id order (commit
/// order: ids are drawn under the message clock's lock), then command updates in stamp order. Not
/// sorted by the rows' timestamps, which clients may set. Moves the cursor only once every read
/// succeeded. Also returns the tables whose read filled a page (more may follow).
async fn read_after(store: &Store, cursor: &mut Cursor, tables: u8) -> Result<(Vec<Written>, u8)> {
    let notifications = match tables & NOTIFICATIONS {
        0 => Vec::new(),
        _ => store.notifications_after_id(cursor.notification_id, PAGE).await?,
    };
    let commands = match tables & COMMANDS {
        0 => Vec::new(),
        _ => store.commands_after_id(cursor.command_id, PAGE).await?,
    };
    let updates = match tables & UPDATES {
        0 => Vec::new(),
        _ => store.commands_updated_after(cursor.update, PAGE).await?,
    };
    let full = |n: usize, table: u8| if n as i64 >= PAGE { table } else { 0 };
    let more = full(notifications.len(), NOTIFICATIONS) | full(commands.len(), COMMANDS) | full(updates.len(), UPDATES);
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
    Ok((rows, more))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_announces_the_tables_it_wrote() {
        let n = Written::Notification(Arc::new(crate::model::Notification {
            id: 1,
            notification: "temp".into(),
            device_id: "d".into(),
            network_id: None,
            device_type_id: None,
            timestamp: 17,
            parameters: None,
        }));
        assert_eq!(announced(&commit_payload(17, [&n])), NOTIFICATIONS);
        assert_eq!(announced(&commit_payload(17, [])), ALL, "nothing announced reads everything");
    }

    #[test]
    fn a_payload_that_names_no_tables_reads_every_table() {
        for payload in ["1700000000000", "1700000000000:", "1700000000000:x", "1700000000000:8", "", "1:0"] {
            assert_eq!(announced(payload), ALL, "{payload:?}");
        }
        assert_eq!(announced("1:6"), COMMANDS | UPDATES);
    }
}
