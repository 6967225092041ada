//! Memos of the lookups every request makes — the caller's user (token → user), the target device
//! and, for non-administrators, the user's networks (authorization) — so that an insert does not pay
//! two or three database round trips before it even reaches the writer.
//!
//! Only on SQLite, where this process is the only hub writing the database (a SQLite file cannot be
//! shared by hub instances): every change of a user, network assignment or device row goes through
//! a `Store` method, which forgets the memo once its statement has run, so a memo is never staler than the
//! database. The one other writer, the admin CLI (`hivehub user lock`, ...), moves a change row that
//! the hub polls every second (`cluster/outside.rs`); the hub then forgets every memo before its live
//! sessions re-check their users, so such a change takes effect within that second. On PostgreSQL other instances change rows behind this one's back, so there is no memo
//! and every lookup reads the database, as before.
//!
//! Two races are closed:
//! - a lookup that read a row before a change committed must not store it after the change forgot
//!   the memo: every change bumps a generation, and a lookup stores its row only when the generation
//!   is still the one it saw before reading;
//! - a change whose caller gives up (a dropped request future) must still forget the memo after its
//!   statement ran — the statement may still commit on sqlx's worker thread — so changes run in a
//!   task of their own ([`Store::changing`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;

use super::Store;
use crate::error::{ApiError, Result};
use crate::model::{Device, User, STATUS_ACTIVE};

/// Entries a memo holds at most; when full it starts over (a lookup storm of many ids costs reads,
/// never memory).
const CAPACITY: usize = 100_000;

/// One memo: key → row, with the generation of the last change.
pub(crate) struct Memo<K, V> {
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    generation: u64,
    rows: HashMap<K, V>,
}

impl<K: Eq + Hash, V: Clone> Memo<K, V> {
    fn new() -> Self {
        Memo { inner: Mutex::new(Inner { generation: 0, rows: HashMap::new() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The remembered row, or the generation to pass to [`Memo::remember`] after reading it.
    pub fn get<Q>(&self, key: &Q) -> Result<V, u64>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let inner = self.lock();
        inner.rows.get(key).cloned().ok_or(inner.generation)
    }

    /// Remembers a row read when the generation was `seen`, unless something changed since.
    pub fn remember(&self, seen: u64, key: K, row: V) {
        let mut inner = self.lock();
        if inner.generation != seen {
            return;
        }
        if inner.rows.len() >= CAPACITY {
            inner.rows.clear();
        }
        inner.rows.insert(key, row);
    }

    /// Forgets every row (after a change).
    pub fn forget(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.rows.clear();
    }
}

/// What a change may make stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Changes {
    /// Users and their network assignments.
    Users,
    Devices,
    /// Users and devices (a network or device-type deletion, the first-start seed).
    Both,
}

/// The memos of a store; `None` in [`Store::memos`] on PostgreSQL.
pub(crate) struct Memos {
    pub users: Memo<i64, User>,
    /// User id → the networks assigned to it.
    pub user_networks: Memo<i64, Vec<i64>>,
    pub devices: Memo<String, Device>,
    /// The client ids that may have a persistent MQTT session stored: every one that has, and some
    /// that had (see `Store::mqtt_session_may_be_persistent`).
    pub persistent_sessions: Mutex<HashSet<String>>,
}

impl Memos {
    /// `persistent_sessions`: the client ids of the persistent sessions stored when the hub starts.
    pub fn new(persistent_sessions: HashSet<String>) -> Memos {
        Memos {
            users: Memo::new(),
            user_networks: Memo::new(),
            devices: Memo::new(),
            persistent_sessions: Mutex::new(persistent_sessions),
        }
    }

    fn forget(&self, what: Changes) {
        if what != Changes::Devices {
            self.users.forget();
            self.user_networks.forget();
        }
        if what != Changes::Users {
            self.devices.forget();
        }
    }
}

impl Store {
    /// Forgets every memo: another process (the admin CLI) changed rows of this database, as its
    /// change row says (`cluster/outside.rs`).
    pub fn forget_memos(&self) {
        if let Some(memos) = &self.memos {
            memos.forget(Changes::Both);
        }
    }

    /// Runs a change of user or device rows, then forgets what it may have made stale. With memos
    /// the change runs in a task of its own, so the memo is forgotten after the statement ran even
    /// when the caller stops waiting for it.
    pub(crate) async fn changing<T, F>(&self, what: Changes, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let Some(memos) = self.memos.clone() else { return work.await };
        tokio::spawn(async move {
            let done = work.await;
            memos.forget(what);
            done
        })
        .await
        .unwrap_or_else(|_| Err(ApiError::internal()))
    }

    /// `user_get` through the memo. Only active users are remembered: a lockout that lifts by
    /// itself with time is read fresh every time.
    pub(crate) async fn user_memo<R, F>(&self, id: i64, read: R) -> Result<Option<User>>
    where
        R: FnOnce() -> F,
        F: Future<Output = Result<Option<User>>>,
    {
        let Some(memos) = &self.memos else { return read().await };
        let seen = match memos.users.get(&id) {
            Ok(user) => return Ok(Some(user)),
            Err(generation) => generation,
        };
        let user = read().await?;
        if let Some(u) = user.as_ref().filter(|u| u.status == STATUS_ACTIVE) {
            memos.users.remember(seen, id, u.clone());
        }
        Ok(user)
    }

    /// `user_network_ids` through the memo.
    pub(crate) async fn user_networks_memo<R, F>(&self, user_id: i64, read: R) -> Result<Vec<i64>>
    where
        R: FnOnce() -> F,
        F: Future<Output = Result<Vec<i64>>>,
    {
        let Some(memos) = &self.memos else { return read().await };
        let seen = match memos.user_networks.get(&user_id) {
            Ok(ids) => return Ok(ids),
            Err(generation) => generation,
        };
        let ids = read().await?;
        memos.user_networks.remember(seen, user_id, ids.clone());
        Ok(ids)
    }

    /// `device_get` through the memo (existing devices only).
    pub(crate) async fn device_memo<R, F>(&self, device_id: &str, read: R) -> Result<Option<Device>>
    where
        R: FnOnce() -> F,
        F: Future<Output = Result<Option<Device>>>,
    {
        let Some(memos) = &self.memos else { return read().await };
        let seen = match memos.devices.get(device_id) {
            Ok(device) => return Ok(Some(device)),
            Err(generation) => generation,
        };
        let device = read().await?;
        if let Some(d) = &device {
            memos.devices.remember(seen, device_id.to_string(), d.clone());
        }
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_read_before_a_change_is_not_remembered_after_it() {
        let memo: Memo<i64, &str> = Memo::new();
        let Err(seen) = memo.get(&1) else { panic!("empty memo answered") };
        memo.forget(); // a change committed while the row was being read
        memo.remember(seen, 1, "old");
        assert!(memo.get(&1).is_err(), "the row read before the change was remembered");
        let Err(seen) = memo.get(&1) else { panic!() };
        memo.remember(seen, 1, "new");
        assert_eq!(memo.get(&1), Ok("new"));
        memo.forget();
        assert!(memo.get(&1).is_err());
    }
}
