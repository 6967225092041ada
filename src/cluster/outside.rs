//! Changes made by another process on the hub's database — the admin CLI (`hivehub user lock`,
//! `passwd`, ...) — that running hubs must follow at once: their live sessions of that user re-check
//! it and close when it is locked, and REST requests see the change once the hub has forgotten its
//! memos of user rows (`store/memo.rs`; at once on PostgreSQL, which has none, within the poll interval
//! on SQLite). A remembered credential only counts while the stored password hash is unchanged.
//!
//! On PostgreSQL the change travels as an ordinary control event (`pg_notify` on
//! `hivehub_control`), which every instance already listens to. SQLite has no NOTIFY: the CLI writes
//! a new value into the configuration row [`CHANGE_ROW`] and every hub on that file polls the row
//! (one indexed read a second); when it moves, every live session re-checks its user.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::control::{Control, Envelope, CHANNEL};
use crate::error::Result;
use crate::hub::Hub;
use crate::store::{Db, Sql, Store};

/// The configuration row another process changes to say "users' rights changed" (SQLite).
pub const CHANGE_ROW: &str = "hivehub.user_rights_changed";

/// How often a hub on SQLite looks at [`CHANGE_ROW`].
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Tells every hub running on this database that `user`'s rights may have shrunk, before returning.
/// `from` names the sender (never a hub's node id, so no hub takes it for its own echo).
pub async fn announce_user_rights(store: &Store, from: &str, user: i64) -> Result<()> {
    match &store.db {
        Db::Postgres(_) => {
            let payload = Envelope { from: from.to_string(), control: Control::UserRights { user } }.encode();
            store.db.execute(Sql::new("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(payload.as_str())).await?;
        }
        Db::Sqlite(_) => {
            // Any new value will do: a hub only compares it with the last one it saw.
            let value = format!("{} {:016x} user {user}", crate::time::now_ms(), rand::random::<u64>());
            store.config_put(CHANGE_ROW, &value).await?;
        }
    }
    Ok(())
}

/// On SQLite, watches [`CHANGE_ROW`] until `stop`; `None` on PostgreSQL (control events carry it).
pub fn spawn_watch(hub: Arc<Hub>, store: Store, mut stop: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
    if !matches!(store.db, Db::Sqlite(_)) {
        return None;
    }
    Some(tokio::spawn(async move {
        let read = || async { store.config_get(CHANGE_ROW).await.map(|c| c.map(|c| c.value)) };
        let mut seen = read().await.ok().flatten();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL_EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            // A failed read is retried on the next tick; the change is still in the row then.
            let Ok(now) = read().await else { continue };
            if now != seen {
                tracing::debug!(change = ?now, "users' rights changed by another process; re-checking every live session");
                // The memos of user and device lookups first: the re-checks below read through them.
                store.forget_memos();
                hub.apply_everything_may_have_changed();
                seen = now;
            }
        }
    }))
}
