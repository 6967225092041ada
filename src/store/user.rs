//! Users and their network / device-type assignments.

use super::memo::Changes;
use super::{json_column, json_text, Row, Sql, Store};
use crate::error::Result;
use crate::model::{DeviceType, Network, User, STATUS_ACTIVE, STATUS_LOCKED_OUT};

const COLUMNS: &str = "id, login, password_hash, password_salt, role, status, login_attempts, last_login, \
                       data, intro_reviewed, all_device_types_available, locked_until";

fn user_from_row(r: &Row) -> User {
    let mut status = r.i64("status");
    let mut locked_until = r.opt_i64("locked_until");
    // A lockout after wrong passwords lifts by itself when its time has passed.
    if status == STATUS_LOCKED_OUT && locked_until.is_some_and(|t| t <= crate::time::now_ms()) {
        status = STATUS_ACTIVE;
    } else if status != STATUS_LOCKED_OUT {
        locked_until = None;
    }
    User {
        id: r.i64("id"),
        login: r.text("login"),
        password_hash: r.text("password_hash"),
        password_salt: r.text("password_salt"),
        role: r.i64("role"),
        status,
        locked_until,
        login_attempts: r.i64("login_attempts"),
        last_login: r.opt_i64("last_login"),
        data: json_column(r.opt_text("data")),
        intro_reviewed: r.bool("intro_reviewed"),
        all_device_types_available: r.bool("all_device_types_available"),
    }
}

pub(crate) fn group_from_row(r: &Row) -> Network {
    Network { id: r.i64("id"), name: r.text("name"), description: r.opt_text("description") }
}

#[derive(Debug, Default, Clone)]
pub struct UserListQuery {
    pub login: Option<String>,
    pub login_pattern: Option<String>,
    pub role: Option<i64>,
    pub status: Option<i64>,
    /// `id` or `login`.
    pub sort_field: Option<&'static str>,
    pub descending: bool,
    pub take: Option<i64>,
    pub skip: Option<i64>,
    /// Only this user (what a client-role caller may list).
    pub only_id: Option<i64>,
}

impl UserListQuery {
    fn push_where(&self, qb: &mut Sql) {
        qb.push(" WHERE 1=1");
        if let Some(id) = self.only_id {
            qb.push(" AND id = ");
            qb.push_bind(id);
        }
        if let Some(p) = &self.login_pattern {
            qb.push(" AND login LIKE ");
            qb.push_bind(p);
        } else if let Some(l) = &self.login {
            qb.push(" AND login = ");
            qb.push_bind(l);
        }
        if let Some(r) = self.role {
            qb.push(" AND role = ");
            qb.push_bind(r);
        }
        if let Some(s) = self.status {
            qb.push(" AND status = ");
            qb.push_bind(s);
        }
    }
}

/// Fields of a user insert/update that are written as given (the service layer validated them).
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    pub login: Option<String>,
    /// (hash, salt)
    pub password: Option<(String, String)>,
    pub role: Option<i64>,
    pub status: Option<i64>,
    pub data: Option<serde_json::Value>,
    pub intro_reviewed: Option<bool>,
}

impl Store {
    pub async fn user_get(&self, id: i64) -> Result<Option<User>> {
        // The statement is built only when the memo does not have the row.
        self.user_memo(id, || {
            let sql = Sql::new(format!("SELECT {COLUMNS} FROM dh_user WHERE id = $1")).bind(id);
            self.db.fetch_optional(sql, user_from_row)
        })
        .await
    }

    pub async fn user_by_login(&self, login: &str) -> Result<Option<User>> {
        let sql = Sql::new(format!("SELECT {COLUMNS} FROM dh_user WHERE login = $1")).bind(login);
        self.db.fetch_optional(sql, user_from_row).await
    }

    pub async fn user_list(&self, q: &UserListQuery) -> Result<Vec<User>> {
        let mut qb = Sql::new(format!("SELECT {COLUMNS} FROM dh_user"));
        q.push_where(&mut qb);
        qb.push(&format!(
            " ORDER BY {} {}, id",
            q.sort_field.unwrap_or("id"),
            if q.descending { "DESC" } else { "ASC" }
        ));
        push_paging(&mut qb, q.take, q.skip);
        self.db.fetch_all(qb, user_from_row).await
    }

    pub async fn user_count(&self, q: &UserListQuery) -> Result<i64> {
        let mut qb = Sql::new("SELECT COUNT(*) FROM dh_user");
        q.push_where(&mut qb);
        self.db.fetch_one(qb, |r| r.i64(0)).await
    }

    pub async fn user_insert(&self, u: &User) -> Result<User> {
        let sql = Sql::new(
            "INSERT INTO dh_user (login, password_hash, password_salt, role, status, data, intro_reviewed, \
             all_device_types_available) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(&u.login)
        .bind(&u.password_hash)
        .bind(&u.password_salt)
        .bind(u.role)
        .bind(u.status)
        .bind(json_text(&u.data))
        .bind(u.intro_reviewed)
        .bind(u.all_device_types_available);
        let id = self.db.fetch_one(sql, |r| r.i64(0)).await?;
        Ok(User { id, ..u.clone() })
    }

    /// Applies an update; `data` is always replaced (CONTRACT.md P10).
    pub async fn user_update(&self, id: i64, up: &UserUpdate) -> Result<()> {
        let mut qb = Sql::new("UPDATE dh_user SET entity_version = entity_version + 1, data = ");
        qb.push_bind(json_text(&up.data));
        if let Some(l) = &up.login {
            qb.push(", login = ").push_bind(l);
        }
        if let Some((h, s)) = &up.password {
            qb.push(", password_hash = ").push_bind(h);
            qb.push(", password_salt = ").push_bind(s);
        }
        if let Some(r) = up.role {
            qb.push(", role = ").push_bind(r);
        }
        if let Some(s) = up.status {
            qb.push(", status = ").push_bind(s);
            // A status set by an administrator never expires by itself.
            qb.push(", login_attempts = 0, locked_until = NULL");
        }
        if let Some(i) = up.intro_reviewed {
            qb.push(", intro_reviewed = ").push_bind(i);
        }
        qb.push(" WHERE id = ").push_bind(id);
        self.change_users(qb).await?;
        Ok(())
    }

    /// Replaces the password hash and salt of user `id` unless the stored hash is no longer `previous`
    /// (the password was changed meanwhile). Returns whether it was replaced.
    pub async fn user_set_password_hash(&self, id: i64, previous: &str, hash: &str, salt: &str) -> Result<bool> {
        let sql =
            Sql::new("UPDATE dh_user SET password_hash = $1, password_salt = $2 WHERE id = $3 AND password_hash = $4")
                .bind(hash)
                .bind(salt)
                .bind(id)
                .bind(previous);
        Ok(self.change_users(sql).await? > 0)
    }

    pub async fn user_delete(&self, id: i64) -> Result<bool> {
        Ok(self.change_users(Sql::new("DELETE FROM dh_user WHERE id = $1").bind(id)).await? > 0)
    }

    /// A successful password login: reset the failure counter, and set `last_login` when `now` is past
    /// the throttle window.
    pub async fn user_login_succeeded(&self, id: i64, now: i64, last_login_min_gap_ms: i64) -> Result<()> {
        let sql = Sql::new(
            "UPDATE dh_user SET login_attempts = 0, \
             status = CASE WHEN locked_until IS NOT NULL THEN 0 ELSE status END, locked_until = NULL, \
             last_login = CASE WHEN last_login IS NULL OR $1 - last_login >= $2 \
             THEN $1 ELSE last_login END WHERE id = $3",
        )
        .bind(now)
        .bind(last_login_min_gap_ms)
        .bind(id);
        self.change_users(sql).await?;
        Ok(())
    }

    /// Sets `last_login` (token refresh, WS authenticate), throttled.
    pub async fn user_touch_last_login(&self, id: i64, now: i64, min_gap_ms: i64) -> Result<()> {
        let sql = Sql::new(
            "UPDATE dh_user SET last_login = $1 WHERE id = $2 AND (last_login IS NULL OR $1 - last_login >= $3)",
        )
        .bind(now)
        .bind(id)
        .bind(min_gap_ms);
        self.change_users(sql).await?;
        Ok(())
    }

    /// A wrong password: count it, locking the account when the count reaches `max_attempts` (until
    /// `lock_until`, or for good when `None`). One statement, and only an active account counts, so
    /// concurrent failures lock it exactly once at exactly `max_attempts`.
    pub async fn user_login_failed(&self, id: i64, max_attempts: i64, lock_until: Option<i64>) -> Result<()> {
        let sql = Sql::new(
            "UPDATE dh_user SET \
               status = CASE WHEN login_attempts + 1 >= $1 THEN 1 ELSE 0 END, \
               locked_until = CASE WHEN login_attempts + 1 >= $1 THEN $2 ELSE NULL END, \
               login_attempts = CASE WHEN login_attempts + 1 >= $1 THEN 0 ELSE login_attempts + 1 END \
             WHERE id = $3 AND (status = 0 OR (status = 1 AND locked_until IS NOT NULL AND locked_until <= $4))",
        )
        .bind(max_attempts)
        .bind(lock_until)
        .bind(id)
        .bind(crate::time::now_ms());
        self.change_users(sql).await?;
        Ok(())
    }

    pub async fn user_set_all_device_types(&self, id: i64, all: bool) -> Result<()> {
        let db = self.db.clone();
        self.changing(Changes::Users, async move {
            let mut tx = db.begin().await?;
            let set = Sql::new("UPDATE dh_user SET all_device_types_available = $1 WHERE id = $2").bind(all).bind(id);
            tx.execute(set).await?;
            if all {
                tx.execute(Sql::new("DELETE FROM user_device_type WHERE user_id = $1").bind(id)).await?;
            }
            tx.commit().await
        })
        .await
    }

    /// Runs one statement that changes `dh_user` or `user_network` rows (and forgets the user memos,
    /// `memo.rs`).
    async fn change_users(&self, sql: Sql) -> Result<u64> {
        let db = self.db.clone();
        self.changing(Changes::Users, async move { db.execute(sql).await }).await
    }

    /// Networks assigned to a user, by id.
    pub async fn user_networks(&self, user_id: i64) -> Result<Vec<Network>> {
        let sql = Sql::new(
            "SELECT n.id, n.name, n.description FROM network n JOIN user_network un ON un.network_id = n.id \
             WHERE un.user_id = $1 ORDER BY n.id",
        )
        .bind(user_id);
        self.db.fetch_all(sql, group_from_row).await
    }

    pub async fn user_network_ids(&self, user_id: i64) -> Result<Vec<i64>> {
        self.user_networks_memo(user_id, || {
            let sql =
                Sql::new("SELECT network_id FROM user_network WHERE user_id = $1 ORDER BY network_id").bind(user_id);
            self.db.fetch_all(sql, |r| r.i64(0))
        })
        .await
    }

    pub async fn user_assign_network(&self, user_id: i64, network_id: i64) -> Result<()> {
        let sql = Sql::new("INSERT INTO user_network (user_id, network_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(user_id)
            .bind(network_id);
        self.change_users(sql).await?;
        Ok(())
    }

    pub async fn user_unassign_network(&self, user_id: i64, network_id: i64) -> Result<()> {
        let sql =
            Sql::new("DELETE FROM user_network WHERE user_id = $1 AND network_id = $2").bind(user_id).bind(network_id);
        self.change_users(sql).await?;
        Ok(())
    }

    /// Device types explicitly assigned to a user.
    pub async fn user_device_types(&self, user_id: i64) -> Result<Vec<DeviceType>> {
        let sql = Sql::new(
            "SELECT t.id, t.name, t.description FROM device_type t JOIN user_device_type ut \
             ON ut.device_type_id = t.id WHERE ut.user_id = $1 ORDER BY t.id",
        )
        .bind(user_id);
        self.db.fetch_all(sql, group_from_row).await
    }

    pub async fn user_assign_device_type(&self, user_id: i64, device_type_id: i64) -> Result<()> {
        let sql =
            Sql::new("INSERT INTO user_device_type (user_id, device_type_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(user_id)
                .bind(device_type_id);
        self.db.execute(sql).await?;
        Ok(())
    }

    pub async fn user_unassign_device_type(&self, user_id: i64, device_type_id: i64) -> Result<()> {
        let sql = Sql::new("DELETE FROM user_device_type WHERE user_id = $1 AND device_type_id = $2")
            .bind(user_id)
            .bind(device_type_id);
        self.db.execute(sql).await?;
        Ok(())
    }
}

/// `LIMIT`/`OFFSET` when given (SQLite needs a LIMIT for an OFFSET; PostgreSQL refuses a negative one).
pub(crate) fn push_paging(qb: &mut Sql, take: Option<i64>, skip: Option<i64>) {
    if take.is_some() || skip.is_some() {
        qb.push(" LIMIT ").push_bind(take.filter(|t| *t >= 0).unwrap_or(i64::MAX));
        qb.push(" OFFSET ").push_bind(skip.unwrap_or(0).max(0));
    }
}
